//! `kvmprof probes`: the attach plan for this host, stage by stage.
use std::fmt::Write;

use anyhow::{bail, Result};

use crate::{
    cli::ProbesArgs, host::kernel::Facts, host::plan::Plan, live, sinks::report::Format,
    util::output,
};

pub fn command(a: &ProbesArgs) -> Result<()> {
    // Without root, the first thing to fail is mounting tracefs, whose error would send
    // the user looking at mounts rather than at sudo.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "kvmprof probes must run as root (it reads kernel symbols and test-loads eBPF \
             programs)"
        );
    }
    // What is planned is loaded and attached (tracing no process, the window closed), so a
    // hook the kernel refuses is shown with its fallback, never as usable.
    let (facts, plan, attached, _) = live::attach_for_host(
        a.hooks.pref(),
        a.hooks.deep(),
        a.hooks.debug_bpf(),
        a.hooks.detail(),
        a.hooks.funcs(),
        Default::default(),
        live::Tracing {
            filter: true,
            pids: &[],
            children: false,
        },
    )?;
    let text = match a.format {
        Format::Table => render(&plan, &facts) + &render_loaded(&attached),
        Format::Json => {
            serde_json::to_string_pretty(&plan)?
                + "
"
        }
    };
    output::stdout(text.as_bytes()).map(drop)
}

/// The programs loaded for the plan and how many instructions the verifier walked for each:
/// what loading costs (seconds on an emulated CPU when it was ~800 000 in all).
fn render_loaded(ebpf: &aya::Ebpf) -> String {
    let mut loaded: Vec<(&str, Option<u32>)> = ebpf
        .programs()
        .filter_map(|(name, p)| {
            let info = p.info().ok()?;
            Some((name, info.verified_instruction_count()))
        })
        .collect();
    loaded.sort();
    let total: u64 = loaded.iter().filter_map(|(_, n)| *n).map(u64::from).sum();
    let mut s = format!(
        "\nprograms loaded: {}, instructions verified: {total}\n",
        loaded.len()
    );
    for (name, n) in loaded {
        let n = n.map_or("? (kernel before 5.16)".to_string(), |n| n.to_string());
        let _ = writeln!(s, "  {name:<26} {n}");
    }
    s
}

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
    let btf: Vec<String> = facts
        .btf_funcs
        .iter()
        .map(|(f, t)| format!("{f} ({})", t.module.as_deref().unwrap_or("vmlinux")))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let _ = writeln!(
        s,
        "functions with BTF: {}",
        if btf.is_empty() {
            "none".to_string()
        } else {
            btf.join(", ")
        }
    );
    let _ = writeln!(s, "tracepoints:");
    for n in &plan.tracepoint_notes {
        let _ = writeln!(s, "  {n}");
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "{:<11} {:<12} SYMBOL", "STAGE", "MODE");
    for sp in &plan.stages {
        let _ = writeln!(
            s,
            "{:<11} {:<12} {}",
            sp.stage.name(),
            sp.mode.name(),
            sp.symbol
        );
        let _ = writeln!(s, "{:<24} + {}", "", sp.why);
        for r in &sp.rejected {
            let _ = writeln!(s, "{:<24} - {r}", "");
        }
    }
    s
}
