//! `kvmprof serve`: records like `kvmprof record` and serves `/metrics`; [`crate::serve`]
//! holds the pieces and why the daemon works as it does.
use std::{
    ops::ControlFlow,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::oneshot};

use crate::serve::{
    exporter::Exporter,
    http,
    snapshot::{DetailSeries, Snapshot},
    vms::Vms,
};
use crate::{
    cli::ServeArgs,
    data::target::Target,
    live::attach,
    live::follow::Follow,
    live::target,
    live::{self, Stop},
};

/// How often `/metrics` is refreshed from the aggregate and exited VMMs are looked for.
const TICK: Duration = Duration::from_secs(1);

/// Length of the aggregate's time-series intervals: `serve` writes no interval log, and a
/// day keeps the closed intervals of a long-running daemon to a few hundred bytes per series
/// and day.
const SERIES_INTERVAL: Duration = Duration::from_secs(86_400);

/// How long open scrapes may take to finish once collection has stopped.
const SHUTDOWN: Duration = Duration::from_secs(2);

pub async fn serve(a: ServeArgs) -> Result<()> {
    if a.grace < TICK {
        bail!("--grace must be at least {} s", TICK.as_secs());
    }
    target::preflight()?;
    let targets = target::resolve_watched(&a.pids)?;
    a.hooks.no_func("serve")?;
    // Bind before loading anything: a port in use is the likeliest mistake.
    let listener = TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("listen on {}", a.listen))?;
    let mut session = live::Session::start(live::Options {
        targets: targets.clone(),
        children: false,
        hooks: a.hooks.pref(),
        stages: a.hooks.deep(),
        debug_bpf: a.hooks.debug_bpf(),
        detail: a.hooks.detail(),
        funcs: Vec::new(),
        duration: None,
        tick: TICK,
        interval: SERIES_INTERVAL,
        records: attach::Records::default(),
        bpf_stats: a.bpf_stats.mode(),
        sleep_when_idle: false,
        histograms: true,
    })?;

    let names = target::names(&a.pids);
    let mut follow = if names.is_empty() {
        None
    } else {
        let pids = targets.iter().map(|t| t.pid);
        // Every process is matched again at every tick: a tick is a second already.
        Some(Follow::new(
            names,
            session.pid_filter()?,
            pids,
            Duration::ZERO,
        ))
    };

    let exporter = Exporter::default();
    let mut registry = Registry::default();
    registry.register_collector(Box::new(exporter.clone()));
    let (stop_http, stopped) = oneshot::channel();
    let server = tokio::spawn(http::run(listener, Arc::new(registry), stopped));
    eprintln!(
        "kvmprof: serving http://{}/metrics for {} (SIGTERM or Ctrl-C stops)",
        a.listen,
        watching(&targets)
    );

    // Both callbacks run on this task, one at a time; the cell lets them share the VM list.
    let vms = std::cell::RefCell::new(Vms::new(a.grace));
    let mut detail = DetailSeries::new(a.detail_top);
    let outcome = session
        .run(
            |agg, st| {
                if let Some(f) = follow.as_mut() {
                    follow_names(f);
                }
                let mut vms = vms.borrow_mut();
                if vms.expire(agg, Instant::now(), target::alive) > 0 {
                    crate::util::memory::give_back();
                }
                let snap = Snapshot {
                    own_cost: st.own_cost.clone(),
                    detail: if a.hooks.detail() {
                        detail.take(agg, vms.known())
                    } else {
                        Vec::new()
                    },
                    ..Snapshot::take(agg, vms.known(), !a.no_vcpu_label, st.counters.lost)
                };
                match exporter.snapshot.lock() {
                    Ok(mut s) => *s = snap,
                    // Only a panicking scrape poisons the lock; the scrape reports the error.
                    Err(_) => return ControlFlow::Break(()),
                }
                ControlFlow::Continue(())
            },
            |seen| {
                vms.borrow_mut().saw(seen.pid());
                Ok(())
            },
        )
        .await;

    let _ = stop_http.send(());
    let served = tokio::time::timeout(SHUTDOWN, server).await;
    let outcome = outcome?;
    say_why_stopped(&outcome.stop)?;
    match served {
        Ok(Ok(Ok(()))) | Err(_) => Ok(()),
        Ok(Ok(Err(e))) => Err(anyhow!("HTTP server on {}: {e}", a.listen)),
        Ok(Err(e)) => Err(anyhow!("HTTP server task: {e}")),
    }
}

/// What the daemon watches, for its first line.
fn watching(targets: &[Target]) -> String {
    if targets.is_empty() {
        "every VMM on this host".to_string()
    } else {
        let pids: Vec<String> = targets.iter().map(|t| t.pid.to_string()).collect();
        format!("pid {}", pids.join(", "))
    }
}

/// Watches the processes that now match a `--pid` name, and says which.
fn follow_names(f: &mut Follow) {
    match f.drop_exited().and_then(|()| f.add_new()) {
        Ok(added) => {
            for t in added {
                eprintln!("kvmprof: watching pid {} too", t.pid);
            }
        }
        // Say so and go on serving what is watched already.
        Err(e) => eprintln!("kvmprof: following --pid names: {e:#}"),
    }
}

fn say_why_stopped(stop: &Stop) -> Result<()> {
    match stop {
        Stop::Signal(sig) => eprintln!("kvmprof: {sig}: stopped, every hook detached"),
        Stop::TargetsExited => eprintln!("kvmprof: every watched process exited"),
        Stop::Caller => bail!("the metrics snapshot lock was poisoned"),
        Stop::Duration => {}
    }
    Ok(())
}
