//! `kvmprof record`, `kvmprof demo` and the hidden `kvmprof guest`.
use std::{
    cell::RefCell,
    ops::ControlFlow,
    path::{Path, PathBuf},
    process::Child,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{
    cli::{By, DemoArgs, Format, GuestArgs, RecordArgs},
    datafile::{self, End, Header, Writer},
    diag::{self, note},
    exits,
    live::{self, Outcome, Session, Status, Stop},
    model::Exit,
    output::{self, Output},
    plan::HookPref,
    report,
    slow::SlowExits,
    spawn::{self, spawn_held},
    target::{self, Target},
};

/// How long after an interval ends it is written: exits are drained every 20 ms and
/// joined at the next exit of their thread, so most of its late ones are in by then.
const WRITE_AFTER: Duration = Duration::from_millis(250);

pub async fn record(a: RecordArgs) -> Result<()> {
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
    let session = Session::start(options(
        targets.clone(),
        a.hooks.hooks,
        a.duration,
        a.interval,
    ))?;
    let mut rec = Recorder::start(&session, data, exits, &targets, a.interval)?;
    rec.slow = a.slow.clone().map(SlowExits::new);
    announce(&session, &targets);
    let child = held.map(|h| (h.name().to_owned(), h.release()));
    let result = rec.run(session).await;
    let ended = child.map(|(name, c)| {
        // The command ends with the recording unless it ended it.
        let ended_first = matches!(&result, Ok((out, _)) if out.stop == Stop::TargetsExited);
        end_child(name, c, !ended_first)
    });
    let (out, rec) = result?;
    finish(&out, &targets, rec, ended.as_ref())
}

fn options(
    targets: Vec<Target>,
    hooks: HookPref,
    duration: Option<Duration>,
    interval: Duration,
) -> live::Options {
    live::Options {
        targets,
        hooks,
        duration,
        tick: Duration::from_millis(100),
        interval,
    }
}

fn announce(session: &Session, targets: &[Target]) {
    let names: Vec<String> = targets
        .iter()
        .map(|t| format!("{} ({})", t.pid, t.name))
        .collect();
    note!(
        "recording {} on {}; Ctrl-C to stop",
        names.join(", "),
        session.plan().vendor.label()
    );
}

/// A command we started, once it ended: its pid, name and how it ended.
struct Ended {
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
struct Recorder {
    data: Writer<Output>,
    path: PathBuf,
    exits: Option<ExitLines>,
    /// `--slow`: the exits over its threshold, listed in the end record.
    slow: Option<SlowExits>,
    /// The first write error; it stops the recording.
    error: Option<anyhow::Error>,
}

impl Recorder {
    /// Writes the data file's header: from now on a killed recording leaves a readable file.
    fn start(
        session: &Session,
        data: Output,
        exits: Option<Output>,
        targets: &[Target],
        interval: Duration,
    ) -> Result<Recorder> {
        let path = data.path().to_owned();
        let header = Header::live(
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
            exits,
            slow: None,
            error: None,
        })
    }

    async fn run(self, session: Session) -> Result<(Outcome, Recorder)> {
        let cell = RefCell::new(self);
        let out = session
            .run(
                |_, st| cell.borrow_mut().tick(st),
                |e| cell.borrow_mut().add(e),
            )
            .await;
        let mut rec = cell.into_inner();
        if let Some(e) = rec.error.take() {
            return Err(e);
        }
        Ok((out?, rec))
    }

    fn add(&mut self, e: &Exit) -> Result<()> {
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
        let until = datafile::monotonic_now().saturating_sub(WRITE_AFTER.as_nanos() as u64);
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

    /// Writes the rest and the end record.
    fn finish(self, out: &Outcome) -> Result<()> {
        let end = End {
            duration_ns: u64::try_from(out.elapsed.as_nanos()).unwrap_or(u64::MAX),
            stop: stop_label(&out.stop),
            lost: out.counters.lost,
            unobserved: Some(out.counters.unobserved),
            own_cost: Some(out.own_cost.clone()),
            slow: self.slow,
        };
        self.data
            .finish(&end)
            .and_then(Output::finish)
            .with_context(|| format!("write {}", self.path.display()))?;
        self.exits.map_or(Ok(()), ExitLines::finish)
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
/// prints a one-line summary.
fn finish(out: &Outcome, targets: &[Target], rec: Recorder, child: Option<&Ended>) -> Result<()> {
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
    let path = rec.path.clone();
    rec.finish(out)?;
    note!(
        "{} exits in {:.2} s, {} lost, written to {}",
        out.aggregate.total_exits(),
        out.elapsed.as_secs_f64(),
        out.counters.lost,
        path.display()
    );
    if out.aggregate.total_exits() == 0 {
        let names: Vec<String> = targets
            .iter()
            .map(|t| format!("{} ({})", t.pid, t.name))
            .collect();
        bail!(
            "no VM exits recorded from {}: it never ran a vCPU (KVM_RUN) while recording",
            names.join(", ")
        );
    }
    Ok(())
}

/// Runs the built-in guest, records it from its first instruction to its end, and prints
/// the report next to the guest's own count of its exits: a first look and a self-check.
pub async fn demo(a: DemoArgs) -> Result<()> {
    target::preflight()?;
    let data = output::open(&a.output)?;
    let exe = std::env::current_exe().context("locate the kvmprof executable")?;
    // The guest's counts go to a scratch file of ours, never next to `-o` (which may be
    // /dev/null).
    let counts = std::env::temp_dir().join(format!("kvmprof-demo-{}.json", std::process::id()));
    let argv: Vec<String> = vec![
        exe.to_string_lossy().into_owned(),
        "guest".into(),
        "--vcpus".into(),
        a.vcpus.to_string(),
        "--counts".into(),
        counts.to_string_lossy().into_owned(),
    ];
    let held = spawn_held(&argv)?;
    let t = Target {
        pid: held.pid(),
        name: "kvmprof guest".into(),
    };
    let interval = Duration::from_secs(1);
    let session = Session::start(options(vec![t.clone()], a.hooks.hooks, None, interval))?;
    let rec = Recorder::start(&session, data, None, std::slice::from_ref(&t), interval)?;
    announce(&session, std::slice::from_ref(&t));
    let mut child = held.release();
    let result = rec.run(session).await;
    let status = child.wait().context("wait for the demo guest");
    let guest = read_counts(&counts);
    let _ = std::fs::remove_file(&counts);
    let (status, (out, rec)) = (status?, result?);
    if !status.success() {
        bail!("the demo guest {}", spawn::describe(status));
    }
    finish(&out, &[t], rec, None)?;
    let guest = guest?;
    // What was recorded, as `report` reads it back; a device or FIFO cannot be read back,
    // so then the recording itself.
    let (header, agg) = if std::fs::metadata(&a.output).is_ok_and(|m| m.is_file()) {
        datafile::read(&a.output)?
    } else {
        let mut h = Header::live(&out.plan, &out.facts, out.started, out.window.start_ns, &[]);
        h.duration_ns = u64::try_from(out.elapsed.as_nanos()).unwrap_or(u64::MAX);
        (h, out.aggregate)
    };
    let t = &guest.total;
    diag::stdout(&format!(
        "{}\nThe guest counted its own exits: {} PIO out + {} PIO in to the VMM, {} PIO in the \
         kernel (ioeventfd), {} MMIO, {} HLT = {}; kvmprof saw {} ({} lost).\n",
        report::render(&header, &agg, By::Reason, Format::Table),
        t.pio_user,
        t.pio_in,
        t.pio_kernel,
        t.mmio_user,
        t.hlt,
        t.total(),
        agg.total_exits(),
        agg.lost()
    ))
}

fn read_counts(path: &Path) -> Result<kvmprof_testvmm::Counts> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
}

/// The built-in test guest (`kvmprof-testvmm` as a library).
pub fn guest(a: &GuestArgs) -> Result<()> {
    let w = kvmprof_testvmm::Workload {
        vcpus: a.vcpus,
        pio_user: a.pio_user,
        pio_kernel: a.pio_kernel,
        mmio_user: a.mmio,
        pio_in: a.pio_in,
        ..Default::default()
    };
    let counts = kvmprof_testvmm::run(&w)?;
    let json = serde_json::to_string_pretty(&counts)?;
    match &a.counts {
        Some(p) => output::write_file(p, json.as_bytes()),
        None => diag::stdout(&format!("{json}\n")),
    }
}
