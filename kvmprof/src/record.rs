//! `kvmprof record`, `kvmprof demo` and the hidden `kvmprof guest`.
use std::{
    ops::ControlFlow,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{
    cli::{DemoArgs, GuestArgs, RecordArgs},
    datafile,
    live::{self, Outcome, Stop},
    target::{self, Target},
};

pub async fn record(a: RecordArgs) -> Result<()> {
    target::preflight()?;
    let targets = target::resolve(&a.pids)?;
    let names: Vec<String> = targets.iter().map(|t| format!("{} ({})", t.pid, t.name)).collect();
    eprintln!("kvmprof: recording {}; Ctrl-C to stop", names.join(", "));
    let opts = live::Options {
        targets: targets.clone(),
        hooks: a.hooks.hooks,
        duration: a.duration,
        tick: Duration::from_millis(100),
        interval: a.interval,
    };
    let out = live::run(opts, |_, _| ControlFlow::Continue(())).await?;
    finish(&out, &targets, &a.output)
}

/// Says why recording stopped, writes the data file and a one-line summary.
fn finish(out: &Outcome, targets: &[Target], path: &std::path::Path) -> Result<()> {
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
    let header = datafile::Header::live(out, targets);
    datafile::write(path, &header, &out.aggregate)
        .with_context(|| format!("write {}", path.display()))?;
    eprintln!(
        "kvmprof: {} exits in {:.2} s, {} lost, written to {}",
        out.aggregate.total_exits(),
        out.elapsed.as_secs_f64(),
        out.counters.lost,
        path.display()
    );
    Ok(())
}

/// Runs the built-in guest in a child process, records it to the end and prints the report
/// next to the counts the guest itself made, so the first look is also a self-check.
pub async fn demo(a: DemoArgs) -> Result<()> {
    target::preflight()?;
    let exe = std::env::current_exe().context("locate the kvmprof executable")?;
    let child = Command::new(exe)
        .args(["guest", "--vcpus", &a.vcpus.to_string(), "--start-delay", "2s"])
        .stdout(Stdio::piped())
        .spawn()
        .context("start the demo guest")?;
    let t = Target { pid: child.id(), name: "kvmprof-guest".into() };
    eprintln!("kvmprof: demo guest {} with {} vCPUs; recording it to the end", t.pid, a.vcpus);
    let opts = live::Options {
        targets: vec![t.clone()],
        hooks: a.hooks.hooks,
        duration: None,
        tick: Duration::from_millis(50),
        interval: Duration::from_secs(1),
    };
    let out = live::run(opts, |_, _| ControlFlow::Continue(())).await?;
    let guest = child.wait_with_output().context("wait for the demo guest")?;
    if !guest.status.success() {
        bail!("the demo guest failed ({})", guest.status);
    }
    finish(&out, &[t], &a.output)?;
    let (header, agg) = datafile::read(&a.output)?;
    print!("{}", crate::report::render(&header, &agg, crate::cli::By::Reason, crate::cli::Format::Table));
    println!("\nThe guest's own count of the exits it caused:\n{}", String::from_utf8_lossy(&guest.stdout).trim());
    Ok(())
}

/// The built-in test guest (`kvmprof-testvmm` as a library): prints its exact counts.
pub fn guest(a: &GuestArgs) -> Result<()> {
    let w = kvmprof_testvmm::Workload {
        vcpus: a.vcpus,
        pio_user: a.pio_user,
        pio_kernel: a.pio_kernel,
        mmio_user: a.mmio,
        pio_in: a.pio_in,
        start_delay_ms: a.start_delay.as_millis() as u64,
        ..Default::default()
    };
    let counts = kvmprof_testvmm::run(&w)?;
    println!("{}", serde_json::to_string_pretty(&counts)?);
    Ok(())
}
