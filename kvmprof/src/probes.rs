//! `kvmprof probes`: the attach plan for this host, stage by stage.
use std::fmt::Write;

use crate::{kernel::Facts, plan::Plan};

pub fn render(plan: &Plan, facts: &Facts) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "kernel {}  backend {}",
        facts.release,
        plan.vendor.label()
    );
    let _ = writeln!(
        s,
        "fentry: {}   kprobes: {}",
        match &facts.fentry {
            None => "not tried".to_string(),
            Some(Ok(())) => "allowed".to_string(),
            Some(Err(e)) => format!("refused ({e})"),
        },
        if facts.kprobes {
            "available"
        } else {
            "absent (no CONFIG_KPROBES)"
        }
    );
    let _ = writeln!(s, "cycle source: {}", plan.cycle_source());
    let _ = writeln!(s, "tracepoints: {}\n", plan.tracepoints.join(", "));
    let _ = writeln!(s, "{:<11} {:<12} SYMBOL", "STAGE", "MODE");
    for sp in &plan.stages {
        let _ = writeln!(
            s,
            "{:<11} {:<12} {}",
            sp.stage.name(),
            sp.mode.name(),
            sp.symbol
        );
        for r in &sp.rejected {
            let _ = writeln!(s, "{:<24} - {r}", "");
        }
    }
    s
}
