//! `kvmprof record`: records VMM processes (or a command it starts) into a data file.
use std::{
    cell::RefCell,
    fs,
    ops::ControlFlow,
    path::PathBuf,
    process::Child,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};

use crate::{
    cli::{HookArgs, RecordArgs},
    data::cost::BpfStats,
    data::model::Exit,
    data::slow::SlowExits,
    data::target::{self as process, Target},
    host::kernel::Facts,
    host::plan::Plan,
    live::attach,
    live::spawn::{self, spawn_held},
    live::target,
    live::{self, Outcome, Seen, Session, Status, Stop},
    recording::datafile::{End, Writer},
    recording::exits,
    recording::header::{Header, HookUse, Source},
    util::diag::note,
    util::output::{self, Output},
    util::units,
};

/// How long after an interval ends it is written: exits are drained every 20 ms and
/// joined at the next exit of their thread, so most of its late ones are in by then.
const WRITE_AFTER: Duration = Duration::from_millis(250);

/// The shortest time between two reads of the kernel's tallies. An interval must be a whole
/// number of reads: a 10 ms interval would get 100 ms of exits, then none, and a 150 ms one
/// alternately one read and two.
const TALLY_PERIOD: Duration = Duration::from_millis(100);

/// The time between two reads when the interval is whole seconds (the default 1 s): a read
/// costs about the same however many exits it takes, and read every 100 ms it was most of
/// what `record` cost per exit under an emulated CPU (docs/benchmarks.md). The reads also
/// notice that the targets ended: `record` stops at most this long after they did.
const TALLY_PERIOD_WHOLE: Duration = Duration::from_secs(1);

/// How often `record` reads the tallies for intervals of `interval`.
fn tally_period(interval: Duration) -> Duration {
    if interval
        .as_nanos()
        .is_multiple_of(TALLY_PERIOD_WHOLE.as_nanos())
    {
        TALLY_PERIOD_WHOLE
    } else {
        TALLY_PERIOD
    }
}

pub async fn record(a: RecordArgs) -> Result<()> {
    if !a
        .interval
        .as_nanos()
        .is_multiple_of(TALLY_PERIOD.as_nanos())
    {
        bail!(
            "--interval {} is not a multiple of the {} between two reads of the kernel's \
             tallies: give 100ms, 200ms, …, 1s, …",
            units::ns(u64::try_from(a.interval.as_nanos()).unwrap_or(u64::MAX)),
            units::ns(TALLY_PERIOD.as_nanos() as u64)
        );
    }
    target::preflight()?;
    // Every output is opened before anything is attached: a bad path fails now.
    let data = output::open(&a.output)?;
    let exits = a.exits.as_deref().map(output::open).transpose()?;
    if exits.as_ref().is_some_and(|x| x.same_file(&data)) {
        bail!("--exits and -o name the same file: {}", a.output.display());
    }
    let mut targets = target::resolve_vmms(&a.pids)?;
    let held = if a.command.is_empty() {
        None
    } else {
        let h = spawn_held(&a.command)?;
        targets.push(Target {
            pid: h.pid(),
            name: h.name().to_owned(),
        });
        Some(h)
    };
    let records = attach::Records {
        every_exit: a.exits.is_some(),
        ..a.slow
            .as_ref()
            .map(attach::Records::over)
            .unwrap_or_default()
    };
    let session = Session::start(options(
        targets.clone(),
        held.is_some(),
        &a.hooks,
        a.duration,
        a.interval,
        records,
        a.bpf_stats.mode(),
    ))?;
    let mut rec = Recorder::start(&session, data, exits, &targets, a.interval)?;
    rec.slow = a.slow.clone().map(SlowExits::new);
    announce(&session, &targets, held.is_some());
    let child = held.map(|h| (h.name().to_owned(), h.release()));
    let result = rec.run(session).await;
    let ended = child.map(|(name, c)| {
        // The command ends with the recording unless it ended it.
        let ended_first = matches!(&result, Ok((out, _)) if out.stop == Stop::TargetsExited);
        end_child(name, c, !ended_first)
    });
    let (out, rec) = result?;
    finish(&out, &targets, rec, ended.as_ref()).map(drop)
}

pub(super) fn options(
    targets: Vec<Target>,
    children: bool,
    hooks: &HookArgs,
    duration: Option<Duration>,
    interval: Duration,
    records: attach::Records,
    bpf_stats: BpfStats,
) -> live::Options {
    live::Options {
        targets,
        children,
        hooks: hooks.pref(),
        stages: hooks.deep(),
        debug_bpf: hooks.debug_bpf(),
        detail: hooks.detail(),
        funcs: hooks.funcs().to_vec(),
        duration,
        records,
        tick: tally_period(interval),
        interval,
        bpf_stats,
        sleep_when_idle: true,
        histograms: false,
    }
}

/// "recording …; Ctrl-C to stop", saying whether the processes the targets start are traced
/// too (`children`).
pub(super) fn announce(session: &Session, targets: &[Target], children: bool) {
    note!(
        "recording {}{} on {}; Ctrl-C to stop",
        process::list(targets),
        if children {
            " and the processes it starts"
        } else {
            ""
        },
        session.plan().vendor.label()
    );
}

/// A command we started, once it ended: its pid, name and how it ended.
pub(super) struct Ended {
    pid: u32,
    name: String,
    how: String,
}

/// Stops a command we started (when we stopped first), waits for it and says how it ended.
fn end_child(name: String, mut c: Child, stop_it: bool) -> Ended {
    if stop_it {
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    }
    let how = match c.wait() {
        Ok(status) => spawn::describe(status),
        Err(e) => format!("could not be waited for: {e}"),
    };
    Ended {
        pid: c.id(),
        name,
        how,
    }
}

/// Writes the recording as it goes: the data file (header at the start, each interval once
/// it has passed, the end record last) and the `--exits` JSON Lines.
pub(super) struct Recorder {
    data: Writer<Output>,
    path: PathBuf,
    /// The header written at the start.
    header: Header,
    exits: Option<ExitLines>,
    /// `--slow`: the exits over its threshold, listed in the end record.
    slow: Option<SlowExits>,
    /// The first write error; it stops the recording.
    error: Option<anyhow::Error>,
}

impl Recorder {
    /// Writes the data file's header: from now on a killed recording leaves a readable file.
    pub(super) fn start(
        session: &Session,
        data: Output,
        exits: Option<Output>,
        targets: &[Target],
        interval: Duration,
    ) -> Result<Recorder> {
        let path = data.path().to_owned();
        let header = live_header(
            session.plan(),
            session.facts(),
            session.started(),
            session.start_ts_ns(),
            targets,
        );
        let interval_ns = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
        let mut w = Writer::new(data, interval_ns);
        w.write_header(&header, header.start_ts_ns)
            .with_context(|| format!("write {}", path.display()))?;
        let exits = exits.map(ExitLines::start).transpose()?;
        Ok(Recorder {
            data: w,
            path,
            header,
            exits,
            slow: None,
            error: None,
        })
    }

    pub(super) async fn run(self, session: Session) -> Result<(Outcome, Recorder)> {
        let cell = RefCell::new(self);
        let out = session
            .run(
                |_, st| cell.borrow_mut().tick(st),
                |seen| cell.borrow_mut().add(seen),
            )
            .await;
        let mut rec = cell.into_inner();
        if let Some(e) = rec.error.take() {
            return Err(e);
        }
        Ok((out?, rec))
    }

    fn add(&mut self, seen: Seen) -> Result<()> {
        let e = match seen {
            // Tallies hold no exit over a --slow threshold, and none at all with --exits.
            Seen::Tally(t) => {
                self.data.add_tally(t);
                return Ok(());
            }
            Seen::Exit(e) => e,
        };
        self.data.add(e);
        if let Some(s) = &mut self.slow {
            s.offer(e);
        }
        match &mut self.exits {
            Some(x) => x.add(e),
            None => Ok(()),
        }
    }

    /// Writes what time has completed; a write error stops the recording.
    fn tick(&mut self, st: &Status) -> ControlFlow<()> {
        let until =
            kvmprof_common::clock::monotonic_ns().saturating_sub(WRITE_AFTER.as_nanos() as u64);
        let result = self
            .data
            .write_before(until, st.counters.lost)
            .with_context(|| format!("write {}", self.path.display()))
            .and_then(|()| self.exits.as_mut().map_or(Ok(()), ExitLines::flush));
        match result {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                self.error = Some(e);
                ControlFlow::Break(())
            }
        }
    }

    /// Writes the rest and the end record; returns the header with the recording's length.
    fn finish(self, out: &Outcome) -> Result<Header> {
        let end = End {
            duration_ns: u64::try_from(out.elapsed.as_nanos()).unwrap_or(u64::MAX),
            stop: stop_label(&out.stop),
            lost: out.counters.lost,
            unobserved: Some(out.counters.unobserved),
            read_failed: Some(out.counters.read_failed),
            unmatched: Some(out.counters.unmatched),
            no_state: Some(out.counters.no_state),
            own_cost: Some(out.own_cost.clone()),
            slow: self.slow,
            kvm_stats: Some(out.kvm_stats.clone()),
            halts: out.halts.clone(),
            funcs: out.funcs.clone(),
        };
        self.data
            .finish(&end)
            .and_then(Output::finish)
            .with_context(|| format!("write {}", self.path.display()))?;
        self.exits.map_or(Ok(()), ExitLines::finish)?;
        Ok(Header {
            duration_ns: end.duration_ns,
            ..self.header
        })
    }
}

fn stop_label(stop: &Stop) -> String {
    match stop {
        Stop::Duration => "duration".to_owned(),
        Stop::Signal(sig) => (*sig).to_owned(),
        Stop::TargetsExited => "targets exited".to_owned(),
        Stop::Caller => "stopped".to_owned(),
    }
}

/// `--exits`: one JSON object per exit and line. Only whole lines are ever handed to the
/// file, so a killed recording leaves whole lines.
struct ExitLines {
    out: Output,
    buf: Vec<u8>,
}

/// Lines are written once this much waits, and at every tick.
const EXIT_LINES_BUFFER: usize = 1 << 20;

impl ExitLines {
    fn start(mut out: Output) -> Result<ExitLines> {
        // The recording has begun: an old file is replaced even if no exit comes.
        out.begin()
            .with_context(|| format!("write {}", out.path().display()))?;
        Ok(ExitLines {
            out,
            buf: Vec::new(),
        })
    }

    fn add(&mut self, e: &Exit) -> Result<()> {
        serde_json::to_writer(&mut self.buf, &exits::Line::from(e))?;
        self.buf.push(b'\n');
        if self.buf.len() >= EXIT_LINES_BUFFER {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        use std::io::Write as _;
        let r = self
            .out
            .write_all(&self.buf)
            .and_then(|()| self.out.flush());
        self.buf.clear();
        r.with_context(|| format!("write {}", self.out.path().display()))
    }

    fn finish(mut self) -> Result<()> {
        self.flush()?;
        self.out.finish()
    }
}

/// Says why recording stopped (and how a command we started ended), ends the data file and
/// prints a one-line summary; returns the recording's header.
pub(super) fn finish(
    out: &Outcome,
    targets: &[Target],
    rec: Recorder,
    child: Option<&Ended>,
) -> Result<Header> {
    match &out.stop {
        Stop::TargetsExited => {
            for t in &out.exited {
                let how = child
                    .filter(|c| c.pid == t.pid)
                    .map_or("exited", |c| c.how.as_str());
                note!(
                    "process {} ({}) {how} after {:.1} s; keeping what was recorded",
                    t.pid,
                    t.name,
                    out.elapsed.as_secs_f64()
                );
            }
        }
        Stop::Signal(sig) => note!("{sig}: stopping, keeping what was recorded"),
        Stop::Duration | Stop::Caller => {}
    }
    if let Some(c) = child.filter(|_| out.stop != Stop::TargetsExited) {
        note!(
            "{} (pid {}), ended with the recording, {}",
            c.name,
            c.pid,
            c.how
        );
    }
    if !out.followed.is_empty() {
        note!(
            "followed the processes the command started: {}",
            process::list(&out.followed)
        );
    }
    let path = rec.path.clone();
    let header = rec.finish(out)?;
    note!(
        "{} exits in {:.2} s, {} lost, written to {}",
        out.aggregate.total_exits(),
        out.elapsed.as_secs_f64(),
        out.counters.lost,
        path.display()
    );
    if out.aggregate.total_exits() == 0 {
        // Only a VMM that ran no vCPU makes no exit for a second; a shorter window can fall
        // between two exits of one that runs.
        let why = if out.elapsed < Duration::from_secs(1) {
            "a window that short can fall between two exits: give a longer --duration"
        } else {
            "it ran no vCPU (KVM_RUN) meanwhile"
        };
        bail!(
            "no VM exit of {} began and ended in the {} window: {why}",
            process::list(targets.iter().chain(&out.followed)),
            units::ns(u64::try_from(out.elapsed.as_nanos()).unwrap_or(u64::MAX))
        );
    }
    Ok(header)
}

/// The header of a live recording whose window opened at `started` (wall clock), which is
/// `start_ts_ns` on the records' clock.
fn live_header(
    plan: &Plan,
    facts: &Facts,
    started: SystemTime,
    start_ts_ns: u64,
    targets: &[Target],
) -> Header {
    let since_epoch = started.duration_since(UNIX_EPOCH).unwrap_or_default();
    Header {
        source: Source::Live,
        host: hostname(),
        kernel: facts.release.clone(),
        vendor: plan.vendor,
        hooks: plan
            .stages
            .iter()
            .map(|s| HookUse {
                stage: s.stage,
                symbol: s.symbol.clone(),
                mode: s.mode_label(),
            })
            .collect(),
        tracepoints: plan.tracepoint_notes.clone(),
        cycle_source: plan.cycle_source().to_owned(),
        processes: targets.to_vec(),
        start_unix_ns: u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX),
        start_ts_ns,
        duration_ns: 0,
        ..Header::default()
    }
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}
