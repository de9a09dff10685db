//! A live recording session: preflight, plan, attach, then drain the ring buffer into an
//! [`Aggregate`] until the duration ends, a signal arrives, the targets exit or the caller
//! stops. Shared by `record`, `top` and `demo`.
use std::{
    ops::ControlFlow,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use kvmprof_common::{counter, Batch, ThreadState};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use crate::{
    aggregate::Aggregate,
    attach,
    collect::{self, VcpuResolver},
    kernel::Facts,
    model::Exit,
    plan::{self, HookPref, Plan},
    selfcost::{self, OwnCost, RunTimeStats},
    target::{self, Target},
};

/// How often the ring buffer is drained without a wake-up from the kernel.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

pub struct Options {
    pub targets: Vec<Target>,
    pub hooks: HookPref,
    pub duration: Option<Duration>,
    /// How often `on_tick` runs and target liveness is checked.
    pub tick: Duration,
    /// Interval of the histograms in the data file's interval log.
    pub interval: Duration,
}

/// Why recording stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    Duration,
    Signal(&'static str),
    /// Every target process exited.
    TargetsExited,
    /// The `on_tick` callback asked to stop (e.g. `q` in `top`).
    Caller,
}

/// Kernel-side counters (`kvmprof_common::counter`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub lost: u64,
    pub no_state: u64,
    pub unmatched: u64,
}

/// What the caller sees at each tick.
pub struct Status<'a> {
    pub plan: &'a Plan,
    pub elapsed: Duration,
    pub counters: Counters,
    pub exited: &'a [Target],
    /// kvmprof's own cost so far.
    pub own_cost: OwnCost,
}

pub struct Outcome {
    pub aggregate: Aggregate,
    pub plan: Plan,
    pub facts: Facts,
    pub counters: Counters,
    pub stop: Stop,
    pub started: SystemTime,
    pub elapsed: Duration,
    pub exited: Vec<Target>,
    pub own_cost: OwnCost,
}

/// Plans for this kernel, including the one fact only a load attempt reveals (fentry).
pub fn plan_for_host(hooks: HookPref) -> Result<(Facts, Plan)> {
    let mut facts = Facts::gather(&plan::candidate_functions())?;
    if hooks != HookPref::Kprobe && hooks != HookPref::Tracepoint {
        facts.fentry = attach::probe_fentry(&facts);
    }
    let plan = plan::plan(&facts, hooks)?;
    Ok((facts, plan))
}

/// An attached session, not yet draining. Splitting start from run lets callers announce
/// "recording" only once every hook is in place, and release a held child (`record -- CMD`).
pub struct Session {
    opts: Options,
    facts: Facts,
    plan: Plan,
    // Held only to keep the programs attached; dropping it detaches them.
    ebpf: aya::Ebpf,
    ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    held: Held,
    stats: Result<RunTimeStats, String>,
}

/// What the kernel still holds when recording ends: per-CPU batches not yet full, and
/// userspace exits waiting per thread for a round trip that will not come.
struct Held {
    batches: PerCpuArray<MapData, Batch>,
    threads: Array<MapData, ThreadState>,
    spill: HashMap<MapData, u64, ThreadState>,
}

impl Held {
    fn take(ebpf: &mut aya::Ebpf) -> Result<Held> {
        let mut map = |name: &str| ebpf.take_map(name).with_context(|| format!("{name} map"));
        Ok(Held {
            batches: PerCpuArray::try_from(map("BATCHES")?)?,
            threads: Array::try_from(map("THREADS")?)?,
            spill: HashMap::try_from(map("THREADS_SPILL")?)?,
        })
    }

    /// Reads it all; only once the programs are detached, so nothing changes meanwhile.
    fn drain(&self, vcpus: &mut VcpuResolver, out: &mut Vec<Exit>) -> Result<()> {
        for b in self.batches.get(&0, 0).context("read BATCHES")?.iter() {
            collect::push_batch(b, vcpus, out);
        }
        for st in self.threads.iter() {
            collect::push_pending(&st.context("read THREADS")?, vcpus, out);
        }
        for kv in self.spill.iter() {
            let (_, st) = kv.context("read THREADS_SPILL")?;
            collect::push_pending(&st, vcpus, out);
        }
        Ok(())
    }
}

impl Session {
    pub fn start(opts: Options) -> Result<Session> {
        target::preflight()?;
        let (facts, plan) = plan_for_host(opts.hooks)?;
        // On before the programs load, so that every run of theirs is timed.
        let stats = RunTimeStats::enable();
        let pids: Vec<u32> = opts.targets.iter().map(|t| t.pid).collect();
        let mut ebpf = attach::load_for(&plan, &facts, &pids)?;
        let ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("EVENTS map")?)?;
        let counters = PerCpuArray::try_from(ebpf.take_map("COUNTERS").context("COUNTERS map")?)?;
        let held = Held::take(&mut ebpf)?;
        attach::attach(&mut ebpf, &plan, &pids)?;
        Ok(Session {
            opts,
            facts,
            plan,
            ebpf,
            ring,
            counters,
            held,
            stats,
        })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Drains until a stop condition; `sink` also sees every exit (for `--exits`).
    pub async fn run(
        self,
        mut on_tick: impl FnMut(&Aggregate, &Status) -> ControlFlow<()>,
        mut sink: impl FnMut(&Exit) -> Result<()>,
    ) -> Result<Outcome> {
        let Session {
            opts,
            facts,
            plan,
            ebpf,
            ring,
            counters,
            held,
            stats,
        } = self;
        let cpu0 = selfcost::cpu_ns();
        let own_cost = |ebpf: &aya::Ebpf| OwnCost {
            programs: selfcost::programs(ebpf),
            cpu_ns: selfcost::cpu_ns().saturating_sub(cpu0),
            peak_rss_bytes: selfcost::peak_rss_bytes(),
            note: stats.as_ref().err().cloned(),
        };
        let started = SystemTime::now();
        let t0 = Instant::now();
        let mut agg = Aggregate::new(opts.interval.as_nanos() as u64);
        let mut vcpus = VcpuResolver::default();
        // SAFETY: the ring buffer map owns its fd and outlives the registration (both are
        // dropped together at the end of this function).
        let mut ring = unsafe { AsyncFd::register(ring) }.context("poll ring buffer")?;
        let mut batch: Vec<Exit> = Vec::new();
        let mut tick = tokio::time::interval(opts.tick);
        // The kernel wakes us only when a lot is waiting (see `WAKEUP_BYTES` in
        // kvmprof-ebpf), so drain on a timer too.
        let mut poll = tokio::time::interval(DRAIN_EVERY);
        let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
        let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
        let mut exited: Vec<Target> = Vec::new();

        let stop = loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard?;
                    drain(guard.get_inner_mut(), &mut vcpus, &mut batch);
                    guard.clear_ready();
                    absorb(&mut batch, &mut sink, &mut agg)?;
                }
                _ = poll.tick() => {
                    drain(ring.get_mut(), &mut vcpus, &mut batch);
                    absorb(&mut batch, &mut sink, &mut agg)?;
                }
                _ = tick.tick() => {
                    for t in &opts.targets {
                        if !target::alive(t.pid) && !exited.contains(t) {
                            exited.push(t.clone());
                        }
                    }
                    if !opts.targets.is_empty() && exited.len() == opts.targets.len() {
                        break Stop::TargetsExited;
                    }
                    if opts.duration.is_some_and(|d| t0.elapsed() >= d) {
                        break Stop::Duration;
                    }
                    let status = Status {
                        plan: &plan,
                        elapsed: t0.elapsed(),
                        counters: read_counters(&counters),
                        exited: &exited,
                        own_cost: own_cost(&ebpf),
                    };
                    if on_tick(&agg, &status).is_break() {
                        break Stop::Caller;
                    }
                }
                _ = sigint.recv() => break Stop::Signal("SIGINT"),
                _ = sigterm.recv() => break Stop::Signal("SIGTERM"),
            }
        };
        let elapsed = t0.elapsed();
        let own_cost = own_cost(&ebpf);
        drop(stats);
        // Detach first so no record can arrive after the final drain.
        drop(ebpf);
        drain(ring.get_mut(), &mut vcpus, &mut batch);
        held.drain(&mut vcpus, &mut batch)?;
        absorb(&mut batch, &mut sink, &mut agg)?;
        let counters = read_counters(&counters);
        agg.add_lost(counters.lost);
        Ok(Outcome {
            aggregate: agg,
            plan,
            facts,
            counters,
            stop,
            started,
            elapsed,
            exited,
            own_cost,
        })
    }
}

/// Hands drained exits to the per-exit sink and the aggregate.
fn absorb(
    batch: &mut Vec<Exit>,
    sink: &mut impl FnMut(&Exit) -> Result<()>,
    agg: &mut Aggregate,
) -> Result<()> {
    for e in batch.drain(..) {
        sink(&e)?;
        agg.add(&e);
    }
    Ok(())
}

fn drain(ring: &mut RingBuf<MapData>, vcpus: &mut VcpuResolver, out: &mut Vec<Exit>) {
    while let Some(item) = ring.next() {
        collect::batch_exits(&item, vcpus, out);
    }
}

fn read_counters(map: &PerCpuArray<MapData, u64>) -> Counters {
    let sum = |i: u32| map.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0);
    Counters {
        lost: sum(counter::LOST),
        no_state: sum(counter::NO_STATE),
        unmatched: sum(counter::UNMATCHED),
    }
}
