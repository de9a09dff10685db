//! `cargo xtask bench --vmx`: what recording costs per exit on Intel VMX, in emulated
//! instructions. Boots the Debian 6.1 kernel in Bochs (Debian's build emulates VMX) with the
//! reference script of PLATFORM.md (`vmx-bochs.sh`) and runs `xtask/scripts/vmx-cost.sh`
//! inside: with `clock: sync=none` the guest clock counts emulated instructions exactly and
//! the guest has one CPU, so the test VMM's own time per exit × IPS is every instruction spent
//! per exit — its vCPU thread's and the profiler's threads' alike. Deterministic to a few
//! instructions, hence few rounds. One boot takes minutes; a whole run ~15–30.
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::{run as run_cmd, target_dir, workspace_root};

/// Emulated instructions per guest-clock second.
const IPS: u64 = 50_000_000;

pub struct Options {
    pub rounds: usize,
    /// Exits per run of each workload.
    pub exits: u64,
    pub build: bool,
    /// A kvmprof binary to measure beside this tree's (the code before a change).
    pub before: Option<PathBuf>,
    /// The Bochs boot script (PLATFORM.md's reference recipe).
    pub bochs_script: PathBuf,
    /// The modes to run (`vmx-cost.sh`'s MODES), default all.
    pub modes: Option<String>,
    /// One `--bpf-stats on` recording per workload: the programs per exit.
    pub stats: bool,
}

pub fn run(o: &Options) -> Result<()> {
    if o.build {
        crate::vmtest::build_release_binaries()?;
    }
    if !o.bochs_script.is_file() {
        bail!(
            "no Bochs boot script at {} (--bochs-script)",
            o.bochs_script.display()
        );
    }
    let release = target_dir().join("release");
    let work = target_dir().join("vmx-bochs");
    fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
    let perf = crate::util::which("perf").context("perf is not installed (linux-perf)")?;
    let mut bins = vec![
        release.join("kvmprof"),
        release.join("kvmprof-testvmm"),
        perf,
    ];
    // The guest finds files by their name in /payload: the older build goes in renamed.
    let before = work.join("kvmprof-before");
    let _ = fs::remove_file(&before);
    if let Some(b) = &o.before {
        fs::copy(b, &before).with_context(|| format!("copy {}", b.display()))?;
        bins.push(before);
    }
    let script = workspace_root().join("xtask/scripts/vmx-cost.sh");
    // vmx-bochs.sh passes no environment into the guest: the knobs go in a wrapper payload.
    let payload = work.join("payload.sh");
    let modes = o.modes.as_deref().unwrap_or("");
    fs::write(
        &payload,
        format!(
            "IPS={IPS} ROUNDS={} EXITS={} MODES='{modes}' STATS={} sh /payload/vmx-cost.sh\n",
            o.rounds,
            o.exits,
            u8::from(o.stats)
        ),
    )?;
    bins.push(script);
    let mut cmd = Command::new("bash");
    cmd.arg(&o.bochs_script)
        .args(&bins)
        .env("PAYLOAD", &payload)
        .env("VMX_WORK", &work)
        .env("IPS", IPS.to_string())
        .env("TAG", "bench");
    println!(
        "booting Bochs (Intel VMX, kernel 6.1): {} rounds of {} exits",
        o.rounds, o.exits
    );
    // The script fails when the guest did not reach its end; the output says how far it got.
    let booted = run_cmd(&mut cmd);
    let out = fs::read_to_string(work.join("out-bench/payload.txt")).unwrap_or_default();
    booted?;
    report(&out)
}

/// Prints the table of medians from the payload's `@@` lines; fails on a miscount.
fn report(out: &str) -> Result<()> {
    let mut cells: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    let mut alone: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut failed = Vec::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.first().copied() {
            Some("@@RUN") if f.len() >= 6 => {
                let n = f[5]
                    .trim_start_matches("instr_per_exit=")
                    .parse()
                    .unwrap_or(0);
                if f[1] == "alone" {
                    alone.entry(f[2].to_string()).or_default().push(n);
                } else {
                    cells
                        .entry((f[2].to_string(), f[1].to_string()))
                        .or_default()
                        .push(n);
                }
                println!("{line}");
            }
            Some("@@STATS" | "@@IDLE" | "@@COST") => println!("{line}"),
            Some("@@FAIL") => failed.push(line.to_string()),
            _ => {}
        }
    }
    let idle: Vec<String> = out
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("@@IDLE ")?;
            let mut it = rest.split_whitespace();
            let bin = it.next()?;
            let num = |s: Option<&str>| s?.split('=').nth(1)?.parse::<f64>().ok();
            let (cpu, over) = (num(it.next())?, num(it.next())?);
            Some(format!("{bin} {:.3} %", 100.0 * cpu / over.max(1.0)))
        })
        .collect();
    println!("\nemulated instructions per exit (median of rounds; the exit alone, then what each mode adds):");
    println!("| workload | alone | mode | + instructions |");
    println!("|---|---|---|---|");
    for ((w, mode), v) in &cells {
        let a = median(alone.get(w).cloned().unwrap_or_default());
        println!(
            "| {w} | {a} | {mode} | +{} |",
            median(v.clone()).saturating_sub(a)
        );
    }
    println!(
        "kvmprof idle (share of the emulated CPU while the VM makes no exit): {}",
        idle.join("; ")
    );
    if !out.contains("@@DONE") {
        bail!("the guest did not finish the benchmark (see target/vmx-bochs/out-bench/serial.txt)");
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(())
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// The default Bochs script: the shared reference recipe, or `$VMX_BOCHS`.
pub fn default_bochs_script() -> PathBuf {
    std::env::var_os("VMX_BOCHS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new("/work/shared/tools/vmx-bochs.sh").to_path_buf())
}
