//! A live recording session: preflight, plan, attach, open the window, then drain the ring
//! buffer into an [`Aggregate`] until the duration ends, a signal arrives, the targets exit
//! or the caller stops; then close the window, detach and drain the rest. Shared by
//! `record`, `top` and `demo`.
//!
//! The window (`kvmprof_common::Window`) is one switch in a map that every program checks
//! against its event's time: it opens only once every hook is attached and closes before any
//! is detached, so all programs start and stop counting at the same instants, and those
//! instants are the recording's stated start and end (see docs/design.md, "The window").

pub mod attach;
pub mod bpflog;
pub mod collect;
pub mod follow;
mod funcs;
pub mod kvmstats;
pub mod mapped;
mod rips;
pub mod sched;
pub mod selfcost;
pub mod spawn;
pub mod tally;
pub mod target;
pub mod vmname;

use std::{
    ops::ControlFlow,
    os::fd::{FromRawFd, OwnedFd, RawFd},
    task::Poll,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context, Result};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use kvmprof_common::{
    clock::monotonic_ns, counter, halt::HaltTally, names::map, Batch, ThreadState, Window,
};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::SignalKind,
};

use crate::data::cost::{BpfStats, OwnCost};
use crate::data::funcs::FuncHook;
use crate::data::halts::Halts;
use crate::data::target::Target;
use crate::{
    data::aggregate::Aggregate,
    data::model::{Exit, Tally},
    host::kernel::Facts,
    host::plan::{HookPref, Plan},
};
use collect::Collector;
use selfcost::Sampling;

/// How far ahead of the map write the window opens or closes. A program reads its event's
/// time before the window, so an event at or after the instant written sees the new value
/// as long as the write lands before that instant; this leaves the write ample time.
const SWITCH_AHEAD: Duration = Duration::from_millis(20);

/// Time without a new exit after which a session that may sleep does
/// ([`Options::sleep_when_idle`]), in whole ticks.
const QUIET: Duration = Duration::from_millis(500);

/// Time allowed after the window closes for programs that read the window just before it
/// closed to finish writing their records, before the programs are detached.
const SETTLE: Duration = Duration::from_millis(5);

pub struct Options {
    pub targets: Vec<Target>,
    /// Trace the processes the targets create, and theirs (`record -- CMD`).
    pub children: bool,
    pub hooks: HookPref,
    /// `--stages`: the deep breakdown (handler and `kvm_fast_pio`) too.
    pub stages: bool,
    /// `--debug-bpf`: the programs log their anomalies, written to stderr.
    pub debug_bpf: bool,
    /// `--detail`: MSR, CPUID and hypercall exits filed by index, leaf and number, and every
    /// exit counted by guest RIP.
    pub detail: bool,
    /// `--func`: KVM functions timed inside the exits that call them.
    pub funcs: Vec<String>,
    pub duration: Option<Duration>,
    /// How often `on_tick` runs, the kernel's tallies are read and target liveness is
    /// checked. Ticks fall just after multiples of it on the records' clock: with a tick that
    /// divides [`Options::interval`], each tally read holds the exits of one interval.
    pub tick: Duration,
    /// Interval of the histograms in the data file's interval log.
    pub interval: Duration,
    /// Which exits come one by one rather than tallied in the kernel.
    pub records: attach::Records,
    /// When the kernel's BPF run-time statistics are on (`--bpf-stats`).
    pub bpf_stats: BpfStats,
    /// Stop ticking while no exit comes: the first event in the window wakes the session
    /// again (`Window::asleep`), as does a target's exit. For callers whose ticks only move
    /// exits along (`record`), not those that show time passing (`top`, `serve`).
    pub sleep_when_idle: bool,
    /// Keep the stages' histograms in the live aggregate (`top`, `serve` show them);
    /// without, it holds counts only ([`Aggregate::counting`]: `record`).
    pub histograms: bool,
}

/// What the kernel handed over: one exit, or a tally of exits of one kind.
#[derive(Clone, Copy, Debug)]
pub enum Seen<'a> {
    Exit(&'a Exit),
    Tally(&'a Tally),
}

impl Seen<'_> {
    /// The process whose exits these are.
    pub fn pid(&self) -> u32 {
        match self {
            Seen::Exit(e) => e.pid,
            Seen::Tally(t) => t.exit.pid,
        }
    }
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
    /// Events dropped after a refused read.
    pub read_failed: u64,
    /// Exits already under way when the window opened: not recorded (see `Window`).
    pub unobserved: u64,
    /// Exits of processes not traced, since the programs were attached.
    pub untraced_exits: u64,
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
    pub counters: Counters,
    pub stop: Stop,
    /// The window's length: exactly the span the recording's exits began and ended in.
    pub elapsed: Duration,
    pub exited: Vec<Target>,
    pub followed: Vec<Target>,
    pub own_cost: OwnCost,
    /// KVM's own counters over the window.
    pub kvm_stats: crate::data::kvmstats::KvmStats,
    /// The halts KVM kept in the kernel, laid out; `None` when there were none.
    pub halts: Option<crate::data::halts::Halts>,
    /// `--func`'s functions, laid out; `None` when none was asked for.
    pub funcs: Option<crate::data::funcs::Funcs>,
}

/// The processes a session traces: only `pids` (none at all when `filter` is set and `pids`
/// is empty, for `probes`; every process without `filter`), and the processes they create
/// when `children`.
pub struct Tracing<'a> {
    pub filter: bool,
    pub pids: &'a [u32],
    pub children: bool,
}

/// Plans for this kernel and attaches the plan, loading the object once per attempt: when
/// the kernel refuses a program, the plan is made again without it (the next hook for that
/// stage or tracepoint, and why, in the plan) and the object loaded afresh, since the plan
/// fixes its load-time configuration. Fails only when nothing less preferred is left.
/// Tracing what `tracing` says.
pub fn attach_for_host(
    hooks: HookPref,
    deep: bool,
    debug_bpf: bool,
    detail: bool,
    funcs: &[String],
    records: attach::Records,
    tracing: Tracing,
) -> Result<(Facts, Plan, aya::Ebpf, Vec<FuncHook>)> {
    let Tracing {
        filter,
        pids,
        children,
    } = tracing;
    let (mut facts, mut plan) = crate::host::plan_for_host(hooks, deep)?;
    loop {
        let mut ebpf = attach::load_for(&plan, &facts, filter, records, debug_bpf, funcs.len())?;
        let asked = attach::Asked {
            detail,
            funcs,
            hooks,
        };
        let err = match attach::attach(&mut ebpf, &plan, &facts, pids, children, &asked) {
            Ok(f) => return Ok((facts, plan, ebpf, f)),
            Err(e) => e,
        };
        // Detach what this attempt attached before the next one.
        drop(ebpf);
        let refused = err.downcast::<attach::Refused>()?;
        if facts.refused.contains_key(&refused.program) {
            return Err(refused.into());
        }
        facts
            .refused
            .insert(refused.program.clone(), refused.why.clone());
        let next = crate::host::plan_from(&facts, hooks, deep)?;
        if next == plan {
            // Nothing less preferred for that hook (a classic tracepoint).
            return Err(refused.into());
        }
        plan = next;
    }
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
    switch: Array<MapData, Window>,
    window: Window,
    /// The targets can grow (see [`Session::pid_filter`]): their exit does not stop it.
    open: bool,
    held: Held,
    tallies: tally::Reader,
    /// `--func`: the kernel's tallies and how each function was hooked.
    funcs: Option<(funcs::Reader, Vec<FuncHook>)>,
    stats: Sampling,
    kvm: kvmstats::Window,
    /// `--debug-bpf`: the programs' anomaly log.
    log: Option<bpflog::BpfLog>,
}

/// What the kernel holds outside the ring buffer: per-CPU batches not yet full, userspace
/// exits waiting per thread for their VMM round trip, and the threads' halt tallies.
struct Held {
    batches: PerCpuArray<MapData, Batch>,
    threads: Array<MapData, ThreadState>,
    spill: HashMap<MapData, u64, ThreadState>,
    halts: HashMap<MapData, u64, HaltTally>,
    /// Threads with a halt tally whose vCPU was named already (see [`Held::name_halters`]).
    halters: std::cell::RefCell<std::collections::HashSet<u64>>,
}

impl Held {
    fn take(ebpf: &mut aya::Ebpf) -> Result<Held> {
        let mut map = |name: &str| ebpf.take_map(name).with_context(|| format!("{name} map"));
        Ok(Held {
            batches: PerCpuArray::try_from(map(map::BATCHES)?)?,
            threads: Array::try_from(map(map::THREADS)?)?,
            spill: HashMap::try_from(map(map::THREADS_SPILL)?)?,
            halts: HashMap::try_from(map(map::HALTS)?)?,
            halters: Default::default(),
        })
    }

    fn batches(&self) -> Result<Vec<Batch>> {
        Ok(self.batches.get(&0, 0).context("read BATCHES")?.to_vec())
    }

    /// While the programs run: the records of batches on CPUs gone quiet would otherwise
    /// wait for the next exit there, or for the end. Two copies; see [`Batch`].
    fn take_quiet(&self, c: &mut Collector, out: &mut Vec<Exit>) -> Result<()> {
        let first = self.batches()?;
        let later = self.batches()?;
        c.per_cpu(&first, Some(&later), out);
        Ok(())
    }

    /// Everything left; only once the programs are detached, so nothing changes meanwhile.
    fn drain(&self, c: &mut Collector, out: &mut Vec<Exit>) -> Result<()> {
        c.per_cpu(&self.batches()?, None, out);
        for st in self.threads.iter() {
            c.held(&st.context("read THREADS")?, out);
        }
        for kv in self.spill.iter() {
            let (_, st) = kv.context("read THREADS_SPILL")?;
            c.held(&st, out);
        }
        Ok(())
    }

    /// Names the vCPU of each thread that began to halt, while it still runs: at the end its
    /// process may be gone, and with it the `/proc` entries that name it.
    fn name_halters(&self, c: &mut Collector) -> Result<()> {
        let mut named = self.halters.borrow_mut();
        for tag in self.halts.keys() {
            let tag = tag.context("read HALTS")?;
            if !named.insert(tag) {
                continue;
            }
            if let Ok(t) = self.halts.get(&tag, 0) {
                if t.vcpu_id < 0 {
                    c.vcpus.resolve(t.pid, t.vcpu_fd, t.tid);
                }
            }
        }
        Ok(())
    }

    /// The halts tallied per thread, per VM and vCPU; `None` when there were none.
    fn halts(&self, c: &mut Collector) -> Result<Option<Halts>> {
        let tallies = self
            .halts
            .iter()
            .map(|kv| kv.map(|(_, t)| t))
            .collect::<Result<Vec<_>, _>>()
            .context("read HALTS")?;
        let halts = Halts::from_kernel(&tallies, |pid, fd, tid| c.vcpus.resolve(pid, fd, tid));
        Ok(Some(halts).filter(|h| !h.rows.is_empty()))
    }
}

/// The in-kernel process filter, to watch processes found after recording began.
pub struct PidFilter(aya::maps::HashMap<MapData, u32, u8>);

impl PidFilter {
    pub fn add(&mut self, pid: u32) -> Result<()> {
        self.0
            .insert(pid, kvmprof_common::pids::GIVEN, 0)
            .with_context(|| format!("watch pid {pid}"))
    }

    /// Stops watching `pid`: a daemon that follows names (`serve --pid qemu`) drops processes
    /// that exited, so the filter (1024 entries) never fills over months of VM restarts.
    pub fn remove(&mut self, pid: u32) -> Result<()> {
        self.0
            .remove(&pid)
            .with_context(|| format!("unwatch pid {pid}"))
    }
}

impl Session {
    /// Attaches every hook, then opens the window; returns once it is open, so a held child
    /// released afterwards is recorded from its first exit.
    pub fn start(opts: Options) -> Result<Session> {
        if opts.duration == Some(Duration::ZERO) {
            bail!("--duration 0 would record an empty window; give a positive duration");
        }
        target::preflight()?;
        let stats = Sampling::new(opts.bpf_stats);
        let pids: Vec<u32> = opts.targets.iter().map(|t| t.pid).collect();
        let (facts, plan, mut ebpf, func_hooks) = attach_for_host(
            opts.hooks,
            opts.stages,
            opts.debug_bpf,
            opts.detail,
            &opts.funcs,
            opts.records,
            Tracing {
                filter: !pids.is_empty(),
                pids: &pids,
                children: opts.children,
            },
        )?;
        let ring = RingBuf::try_from(ebpf.take_map(map::EVENTS).context("EVENTS map")?)?;
        let counters =
            PerCpuArray::try_from(ebpf.take_map(map::COUNTERS).context("COUNTERS map")?)?;
        let held = Held::take(&mut ebpf)?;
        let tallies = tally::Reader::take(&mut ebpf, opts.detail)?;
        let funcs = (!func_hooks.is_empty())
            .then(|| funcs::Reader::take(&mut ebpf))
            .transpose()?;
        let mut switch = Array::try_from(ebpf.take_map(map::WINDOW).context("WINDOW map")?)?;
        let window = open_window(&mut switch, opts.duration)?;
        let kvm = kvmstats::Window::open(&pids);
        let log = if opts.debug_bpf {
            Some(bpflog::BpfLog::take(&mut ebpf)?)
        } else {
            None
        };
        Ok(Session {
            opts,
            facts,
            plan,
            ebpf,
            ring,
            counters,
            switch,
            window,
            open: false,
            held,
            tallies,
            funcs: funcs.map(|r| (r, func_hooks)),
            stats,
            kvm,
            log,
        })
    }

    /// Hands out the pid filter (only effective when started with targets), for `top -p
    /// NAME` to add processes that start later; the session then runs on when every target
    /// has exited, since more may come.
    pub fn pid_filter(&mut self) -> Result<PidFilter> {
        let map = self.ebpf.take_map(map::PIDS).context("PIDS map")?;
        self.open = true;
        Ok(PidFilter(aya::maps::HashMap::try_from(map)?))
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn facts(&self) -> &Facts {
        &self.facts
    }

    /// Wall-clock start of the recording, as [`Outcome::started`] will say.
    pub fn started(&self) -> SystemTime {
        wall_clock_at(self.window.start_ns)
    }

    /// The window's start on the records' clock (CLOCK_MONOTONIC ns).
    pub fn start_ts_ns(&self) -> u64 {
        self.window.start_ns
    }

    /// Drains until a stop condition; `sink` also sees every exit and tally (for the data
    /// file, `--exits`, `--slow`). `on_tick`
    /// may change the aggregate (`serve` forgets VMs that exited).
    pub async fn run(
        self,
        mut on_tick: impl FnMut(&mut Aggregate, &Status) -> ControlFlow<()>,
        mut sink: impl FnMut(Seen) -> Result<()>,
    ) -> Result<Outcome> {
        let Session {
            opts,
            facts: _,
            plan,
            ebpf,
            ring,
            counters,
            mut switch,
            mut window,
            open,
            held,
            mut tallies,
            funcs,
            mut stats,
            mut kvm,
            mut log,
        } = self;
        let cpu0 = selfcost::cpu_ns();
        let own_cost = |ebpf: &aya::Ebpf, stats: &Sampling, exits| OwnCost {
            cpu_ns: selfcost::cpu_ns().saturating_sub(cpu0),
            peak_rss_bytes: selfcost::peak_rss_bytes(),
            tallied: 0,
            filtered: !opts.targets.is_empty(),
            ..stats.cost(
                || selfcost::programs(ebpf),
                exits,
                || read_counters(&counters).untraced_exits,
            )
        };
        let t0 = Instant::now();
        // A set duration was announced to the kernel with the start: wake just after it.
        let deadline = match window.stop_ns {
            0 => None,
            stop => Some(tokio::time::Instant::now() + until(stop) + SETTLE),
        };
        let duration_over = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(duration_over);
        let interval_ns = opts.interval.as_nanos() as u64;
        let mut agg = if opts.histograms {
            Aggregate::new(interval_ns)
        } else {
            Aggregate::counting(interval_ns)
        };
        let mut collector = Collector::default();
        // SAFETY: the ring buffer map owns its fd and outlives the registration (both are
        // dropped together at the end of this function).
        let mut ring = unsafe { AsyncFd::register(ring) }.context("poll ring buffer")?;
        let mut batch: Vec<Exit> = Vec::new();
        // Exits that came tallied rather than one by one, for the own-cost line.
        let mut tallied_exits = 0u64;
        let mut one_by_one = 0u64;
        // The one timer: the kernel wakes us only when a lot is waiting (see `WAKEUP_BYTES`
        // in kvmprof-ebpf), when it makes a tally slot and when it follows a new child, so
        // the rest is taken on the tick. A timer of its own to drain more often woke the
        // reader 50 times a second: under an emulated CPU a wake-up costs more than what it
        // drains (docs/benchmarks.md). (Missed ticks burst, as by default: the tally reads
        // stay on the grid. A sleep misses none: waking resets the timer.)
        let mut tick = tokio::time::interval_at(on_grid(opts.tick), opts.tick);
        // While asleep: the pidfds of the targets and followed processes still running, so
        // that a sleeping session notices their end.
        let mut ends: Option<Ends> = None;
        let mut asleep = false;
        // Whether exits came since the last tick, and how many ticks came without.
        let mut moved = false;
        let mut quiet = 0u32;
        let quiet_ticks = (QUIET.as_nanos() / opts.tick.as_nanos().max(1)).max(1) as u32;
        let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
        let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
        let mut exited: Vec<Target> = Vec::new();
        let mut followed: Vec<Target> = Vec::new();

        // Everything the kernel has, taken on each tick and before going to sleep, and
        // counted for the own-cost line.
        macro_rules! take_all {
            () => {{
                let n = take_all(
                    &mut ring,
                    &held,
                    &mut tallies,
                    &mut collector,
                    &mut batch,
                    &mut sink,
                    &mut agg,
                )?;
                tallied_exits += n.tallied;
                one_by_one += n.records;
                n
            }};
        }

        let stop = loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard?;
                    drain(guard.get_inner_mut(), &mut collector, &mut batch);
                    guard.clear_ready();
                    let n = absorb(&mut batch, &mut sink, &mut agg)?;
                    one_by_one += n;
                    moved |= n > 0;
                    let slots = std::mem::take(&mut collector.new_slots);
                    tallies.discover(&slots, &mut collector.vcpus)?;
                    if asleep {
                        asleep = false;
                        quiet = 0;
                        // Back on the grid (each tally read one interval's exits).
                        tick.reset_at(on_grid(opts.tick));
                    }
                    // A note may say the kernel followed a new child: name it while it runs
                    // (`sh -c` runs for milliseconds).
                    if opts.children {
                        follow_children(&ebpf, &mut followed)?;
                    }
                }
                _ = next_end(&mut ends), if asleep => {
                    // The tick checks which target ended.
                    asleep = false;
                    tick.reset_at(on_grid(opts.tick));
                }
                _ = &mut duration_over => break Stop::Duration,
                _ = tick.tick(), if !asleep => {
                    // Names again: a child is named before its exec (`sh`, `timeout`).
                    if opts.children {
                        follow_children(&ebpf, &mut followed)?;
                    }
                    moved |= take_all!().any();
                    // Sampled run-time stats switch here, just after the tallies were read:
                    // a sample's exit count is off by the exits batched in the kernel at its
                    // edges, a few against ~1 s of exits.
                    stats.poll(
                        Duration::from_nanos(monotonic_ns().saturating_sub(window.start_ns)),
                        || selfcost::programs(&ebpf),
                        || selfcost::Exits {
                            traced: agg.total_exits(),
                            untraced: read_counters(&counters).untraced_exits,
                        },
                    );
                    if let Some(log) = &mut log {
                        log.flush();
                    }
                    for t in opts.targets.iter().chain(&followed) {
                        if !target::alive(t.pid) && !exited.contains(t) {
                            exited.push(t.clone());
                        }
                    }
                    kvm.poll(&pids_of(&opts.targets, &followed), false);
                    let all = opts.targets.len() + followed.len();
                    if !open && !opts.targets.is_empty() && exited.len() == all {
                        break Stop::TargetsExited;
                    }
                    let exits = agg.total_exits();
                    let status = Status {
                        plan: &plan,
                        elapsed: t0.elapsed(),
                        counters: read_counters(&counters),
                        exited: &exited,
                        own_cost: OwnCost {
                            tallied: tallied_exits,
                            one_by_one,
                            ..own_cost(&ebpf, &stats, Some(exits))
                        },
                    };
                    if on_tick(&mut agg, &status).is_break() {
                        break Stop::Caller;
                    }
                    stats.forgot(exits.saturating_sub(agg.total_exits()));
                    quiet = if std::mem::take(&mut moved) { 0 } else { quiet + 1 };
                    // A process whose end cannot be watched (it is ending) keeps us awake.
                    if opts.sleep_when_idle && quiet >= quiet_ticks {
                        ends = Ends::open(
                            opts.targets
                                .iter()
                                .chain(&followed)
                                .filter(|t| !exited.contains(t)),
                        );
                    }
                    if ends.is_some() && quiet >= quiet_ticks {
                        kvm.read_now(&pids_of(&opts.targets, &followed));
                        // Say so to the kernel, then look once more: an exit whose program
                        // read the switch before this write wakes no one, and is taken
                        // here (or, if its program was still running, at the next wake-up
                        // or at the end).
                        write_switch_asleep(&mut switch, window, true)?;
                        asleep = !take_all!().any();
                        quiet = 0;
                    }
                }
                _ = sigint.recv() => break Stop::Signal("SIGINT"),
                _ = sigterm.recv() => break Stop::Signal("SIGTERM"),
            }
        };
        // Stopped before a set end (signal, targets exited, caller): close the window now.
        let ahead = SWITCH_AHEAD.as_nanos() as u64;
        if window.stop_ns == 0 || window.stop_ns > monotonic_ns() + ahead {
            window.stop_ns = close_window(&mut switch, window)?;
        }
        tokio::time::sleep(until(window.stop_ns)).await;
        if opts.children {
            follow_children(&ebpf, &mut followed)?;
        }
        kvm.poll(&pids_of(&opts.targets, &followed), true);
        tokio::time::sleep(SETTLE).await;
        // `on`: divided by all the recording's exits, drained below.
        let mut own_cost = own_cost(&ebpf, &stats, None);
        drop(stats);
        // Every program is off now; detaching them one by one can no longer add records.
        drop(ebpf);
        if let Some(log) = &mut log {
            log.flush();
        }
        collector.end_at(window.stop_ns);
        drain(ring.get_mut(), &mut collector, &mut batch);
        held.drain(&mut collector, &mut batch)?;
        let halts = held.halts(&mut collector)?;
        let funcs = match funcs {
            Some((reader, hooks)) => reader.funcs(hooks)?,
            None => None,
        };
        one_by_one += absorb(&mut batch, &mut sink, &mut agg)?;
        tallied_exits += absorb_tallies(&mut tallies, &mut collector, &mut sink, &mut agg)?;
        own_cost.tallied = tallied_exits;
        own_cost.one_by_one = one_by_one;
        let counters = read_counters(&counters);
        agg.add_lost(counters.lost);
        Ok(Outcome {
            aggregate: agg,
            plan,
            counters,
            stop,
            elapsed: Duration::from_nanos(window.stop_ns - window.start_ns),
            exited,
            followed,
            own_cost,
            kvm_stats: kvm.stats(),
            halts,
            funcs,
        })
    }
}

/// The next instant just after a multiple of `period` on the records' clock
/// (CLOCK_MONOTONIC, which tokio's clock also is).
fn on_grid(period: Duration) -> tokio::time::Instant {
    // After the boundary, not on it: a read a little late files a few exits of the next
    // interval in the last one, a read early would file the whole read in the next.
    const AFTER: u64 = 1_000_000;
    let p = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX).max(1);
    let now = monotonic_ns();
    let next = (now / p + 1).saturating_mul(p).saturating_add(AFTER);
    tokio::time::Instant::now() + Duration::from_nanos(next - now)
}

fn pids_of(targets: &[Target], followed: &[Target]) -> Vec<u32> {
    targets.iter().chain(followed).map(|t| t.pid).collect()
}

/// Adds the processes the kernel began to follow since the last call (`PIDS` entries
/// [`kvmprof_common::pids::FOLLOWED`]) to `followed`, named while they still run.
fn follow_children(ebpf: &aya::Ebpf, followed: &mut Vec<Target>) -> Result<()> {
    let pids: aya::maps::HashMap<_, u32, u8> =
        aya::maps::HashMap::try_from(ebpf.map(map::PIDS).context("PIDS map")?)?;
    // A child is named before its exec (`sh`, `timeout`): names are read again while it runs.
    for t in followed.iter_mut() {
        if let Some(name) = target::process_name(t.pid) {
            t.name = name;
        }
    }
    for kv in pids.iter() {
        let (pid, why) = kv.context("read PIDS")?;
        if why == kvmprof_common::pids::FOLLOWED && !followed.iter().any(|t| t.pid == pid) {
            followed.push(Target {
                pid,
                // A child that came and went between two ticks has no name left to read.
                name: target::process_name(pid).unwrap_or_else(|| "?".to_owned()),
            });
        }
    }
    followed.sort_by_key(|t| t.pid);
    Ok(())
}

/// Hands drained exits to the sink and the aggregate; returns how many.
fn absorb(
    batch: &mut Vec<Exit>,
    sink: &mut impl FnMut(Seen) -> Result<()>,
    agg: &mut Aggregate,
) -> Result<u64> {
    let n = batch.len() as u64;
    for e in batch.drain(..) {
        sink(Seen::Exit(&e))?;
        agg.add(&e);
    }
    Ok(n)
}

/// What [`take_all`] took.
struct Taken {
    /// Exits that came one by one, and tallied.
    records: u64,
    tallied: u64,
}

impl Taken {
    fn any(&self) -> bool {
        self.records > 0 || self.tallied > 0
    }
}

/// Takes everything the kernel has for us while the programs run: the ring, the batches of
/// CPUs gone quiet (the last exits of a VMM that exited are in batches of CPUs that may see
/// no exit again: its threads' held exits went there at their end) and the tallies.
fn take_all(
    ring: &mut AsyncFd<RingBuf<MapData>>,
    held: &Held,
    tallies: &mut tally::Reader,
    collector: &mut Collector,
    batch: &mut Vec<Exit>,
    sink: &mut impl FnMut(Seen) -> Result<()>,
    agg: &mut Aggregate,
) -> Result<Taken> {
    drain(ring.get_mut(), collector, batch);
    held.take_quiet(collector, batch)?;
    held.name_halters(collector)?;
    let records = absorb(batch, sink, agg)?;
    let tallied = absorb_tallies(tallies, collector, sink, agg)?;
    Ok(Taken { records, tallied })
}

/// The targets' pidfds, readable once their process ends: a sleeping session still notices.
struct Ends(Vec<AsyncFd<OwnedFd>>);

impl Ends {
    /// `None` when a target's pidfd cannot be had (it already ended, or no `pidfd_open`).
    fn open<'a>(targets: impl Iterator<Item = &'a Target>) -> Option<Ends> {
        let open = |pid: u32| {
            // SAFETY: a plain system call; it returns a new descriptor or -1.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
            let fd = RawFd::try_from(fd).ok().filter(|&fd| fd >= 0)?;
            // SAFETY: the descriptor was just made and nothing else owns it; the AsyncFd
            // owns it from here and closes it when dropped.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: as above, no other owner can close it under the registration.
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok()
        };
        targets
            .map(|t| open(t.pid))
            .collect::<Option<_>>()
            .map(Ends)
    }
}

/// Until one of the targets ends (forgetting it, so that it wakes only once); never without
/// targets or pidfds.
async fn next_end(ends: &mut Option<Ends>) {
    let Some(Ends(fds)) = ends else {
        return std::future::pending().await;
    };
    std::future::poll_fn(
        |cx| match fds.iter().position(|fd| fd.poll_read_ready(cx).is_ready()) {
            Some(i) => {
                fds.swap_remove(i);
                Poll::Ready(())
            }
            None => Poll::Pending,
        },
    )
    .await
}

/// Reads what the kernel tallied since the last read and hands it to the sink and the
/// aggregate; returns the exits it counts.
fn absorb_tallies(
    tallies: &mut tally::Reader,
    collector: &mut Collector,
    sink: &mut impl FnMut(Seen) -> Result<()>,
    agg: &mut Aggregate,
) -> Result<u64> {
    let mut tallied = Vec::new();
    tallies.read(&mut collector.vcpus, &mut tallied)?;
    let mut exits = 0;
    for t in tallied.drain(..) {
        sink(Seen::Tally(&t))?;
        agg.add_tally(&t);
        exits += t.count;
    }
    Ok(exits)
}

fn drain(ring: &mut RingBuf<MapData>, collector: &mut Collector, out: &mut Vec<Exit>) {
    while let Some(item) = ring.next() {
        collector.ring(&item, out);
    }
}

fn read_counters(map: &PerCpuArray<MapData, u64>) -> Counters {
    let sum = |i: u32| map.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0);
    Counters {
        lost: sum(counter::LOST),
        no_state: sum(counter::NO_STATE),
        unmatched: sum(counter::UNMATCHED),
        read_failed: sum(counter::READ_FAILED),
        unobserved: sum(counter::UNOBSERVED),
        untraced_exits: sum(counter::UNTRACED_EXITS),
    }
}

/// How long until monotonic instant `ns` (zero if past).
fn until(ns: u64) -> Duration {
    Duration::from_nanos(ns.saturating_sub(monotonic_ns()))
}

/// Wall-clock time of monotonic instant `ns`.
fn wall_clock_at(ns: u64) -> SystemTime {
    let now_mono = monotonic_ns();
    let now = SystemTime::now();
    if ns >= now_mono {
        now + Duration::from_nanos(ns - now_mono)
    } else {
        now - Duration::from_nanos(now_mono - ns)
    }
}

/// Writes the window's switch-on instant (and its end, when the duration is set) a little
/// ahead of now, and waits for it: once this returns every hook counts, and none counted
/// before.
fn open_window(switch: &mut Array<MapData, Window>, duration: Option<Duration>) -> Result<Window> {
    let start_ns = monotonic_ns() + SWITCH_AHEAD.as_nanos() as u64;
    let stop_ns = match duration {
        Some(d) => start_ns.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        None => 0,
    };
    let w = Window {
        start_ns,
        stop_ns,
        asleep: 0,
    };
    write_switch(switch, w, start_ns)?;
    std::thread::sleep(until(start_ns));
    Ok(w)
}

/// Closes an open-ended window a little ahead of now; returns the end instant.
fn close_window(switch: &mut Array<MapData, Window>, w: Window) -> Result<u64> {
    let stop_ns = monotonic_ns() + SWITCH_AHEAD.as_nanos() as u64;
    write_switch(switch, Window { stop_ns, ..w }, stop_ns)?;
    Ok(stop_ns)
}

/// Tells the programs whether the reader sleeps: the first event in the window wakes it.
fn write_switch_asleep(switch: &mut Array<MapData, Window>, w: Window, asleep: bool) -> Result<()> {
    let w = Window {
        asleep: u64::from(asleep),
        ..w
    };
    switch.set(0, w, 0).context("set the recording window")
}

/// Writes the switch and says so if the write landed after `edge`, the instant it announced.
fn write_switch(switch: &mut Array<MapData, Window>, w: Window, edge: u64) -> Result<()> {
    switch.set(0, w, 0).context("set the recording window")?;
    let after = monotonic_ns();
    if after > edge {
        // Only under extreme load. The end edge stays exact (records are filtered by time);
        // at the start, exits of the late part show up as "unobserved start".
        eprintln!(
            "kvmprof: warning: the recording window was switched {} µs late",
            (after - edge) / 1000
        );
    }
    Ok(())
}
