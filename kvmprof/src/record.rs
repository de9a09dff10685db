//! `kvmprof record`, `kvmprof demo` and the hidden `kvmprof guest`.
use std::{
    fs::File,
    io::{BufWriter, Write},
    ops::ControlFlow,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{
    cli::{By, DemoArgs, Format, GuestArgs, RecordArgs},
    datafile,
    live::{self, Outcome, Session, Stop},
    model::Exit,
    plan::HookPref,
    report,
    slow::SlowExits,
    spawn::spawn_held,
    target::{self, Target},
};

pub async fn record(a: RecordArgs) -> Result<()> {
    target::preflight()?;
    let mut targets = target::resolve(&a.pids)?;
    let held = if a.command.is_empty() {
        None
    } else {
        let h = spawn_held(&a.command)?;
        let prog = Path::new(&a.command[0]);
        let name = prog.file_name().unwrap_or(prog.as_os_str());
        targets.push(Target {
            pid: h.pid(),
            name: name.to_string_lossy().into_owned(),
        });
        Some(h)
    };
    let session = Session::start(options(
        targets.clone(),
        a.hooks.hooks,
        a.duration,
        a.interval,
    ))?;
    announce(&session, &targets);
    let child = held.map(|h| h.release());
    let mut slow = a.slow.clone().map(SlowExits::new);
    let out = run_with_exits(session, a.exits.as_deref(), slow.as_mut()).await?;
    if let Some(mut c) = child {
        if out.stop != Stop::TargetsExited {
            // We stopped first (duration or signal): the command we started ends with us.
            // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        let _ = c.wait();
    }
    finish(&out, &targets, &a.output, slow)
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
    eprintln!(
        "kvmprof: recording {} on {}; Ctrl-C to stop",
        names.join(", "),
        session.plan().vendor.label()
    );
}

/// Runs the session, writing every exit to `exits` (JSON Lines) and keeping the slow ones
/// when asked.
async fn run_with_exits(
    session: Session,
    exits: Option<&Path>,
    mut slow: Option<&mut SlowExits>,
) -> Result<Outcome> {
    let mut w = match exits {
        Some(p) => Some(BufWriter::new(
            File::create(p).with_context(|| format!("create {}", p.display()))?,
        )),
        None => None,
    };
    let sink = |e: &Exit| -> Result<()> {
        if let Some(s) = slow.as_deref_mut() {
            s.offer(e);
        }
        if let Some(w) = w.as_mut() {
            serde_json::to_writer(&mut *w, e)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    };
    let out = session.run(|_, _| ControlFlow::Continue(()), sink).await?;
    if let Some(mut w) = w {
        w.flush().context("write the exits file")?;
    }
    Ok(out)
}

/// Says why recording stopped, writes the data file and a one-line summary.
fn finish(out: &Outcome, targets: &[Target], path: &Path, slow: Option<SlowExits>) -> Result<()> {
    match &out.stop {
        Stop::TargetsExited => {
            for t in &out.exited {
                eprintln!(
                    "kvmprof: process {} ({}) exited after {:.1} s; keeping what was recorded",
                    t.pid,
                    t.name,
                    out.elapsed.as_secs_f64()
                );
            }
        }
        Stop::Signal(sig) => eprintln!("kvmprof: {sig}: stopping, keeping what was recorded"),
        Stop::Duration | Stop::Caller => {}
    }
    let mut header = datafile::Header::live(out, targets);
    header.slow = slow;
    datafile::write(path, &header, &out.aggregate)
        .with_context(|| format!("write {}", path.display()))?;
    eprintln!(
        "kvmprof: {} exits in {:.2} s, {} lost, written to {}",
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
    let exe = std::env::current_exe().context("locate the kvmprof executable")?;
    let argv: Vec<String> = vec![
        exe.to_string_lossy().into_owned(),
        "guest".into(),
        "--vcpus".into(),
        a.vcpus.to_string(),
        "--counts".into(),
        counts_path(&a.output).to_string_lossy().into_owned(),
    ];
    let held = spawn_held(&argv)?;
    let t = Target {
        pid: held.pid(),
        name: "kvmprof guest".into(),
    };
    let session = Session::start(options(
        vec![t.clone()],
        a.hooks.hooks,
        None,
        Duration::from_secs(1),
    ))?;
    announce(&session, std::slice::from_ref(&t));
    let mut child = held.release();
    let out = session
        .run(|_, _| ControlFlow::Continue(()), |_| Ok(()))
        .await;
    let status = child.wait().context("wait for the demo guest")?;
    let out = out?;
    if !status.success() {
        bail!("the demo guest failed ({status})");
    }
    finish(&out, &[t], &a.output, None)?;
    let (header, agg) = datafile::read(&a.output)?;
    print!(
        "{}",
        report::render(&header, &agg, By::Reason, Format::Table)
    );
    let path = counts_path(&a.output);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let counts: kvmprof_testvmm::Counts =
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    let t = &counts.total;
    println!(
        "\nThe guest counted its own exits: {} PIO out + {} PIO in to the VMM, {} PIO in the \
         kernel (ioeventfd), {} MMIO, {} HLT = {}; kvmprof saw {} ({} lost).",
        t.pio_user,
        t.pio_in,
        t.pio_kernel,
        t.mmio_user,
        t.hlt,
        t.total(),
        agg.total_exits(),
        agg.lost()
    );
    Ok(())
}

fn counts_path(data: &Path) -> PathBuf {
    data.with_extension("guest.json")
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
        Some(p) => std::fs::write(p, json).with_context(|| format!("write {}", p.display()))?,
        None => println!("{json}"),
    }
    Ok(())
}
