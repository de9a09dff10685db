//! `cargo xtask bench`: what profiling costs the profiled VM. The test VMM makes a known number
//! of exits and times them itself (from its first KVM_RUN to its last return), alone, under
//! `kvmprof record --pid`, and under bpftrace counting the KVM tracepoints with `-c CMD` (what
//! a user would reach for on this host, where `perf kvm stat` needs `kvm:kvm_exit`, which does
//! not fire under PVM). Both profilers are attached before the VMM's first exit, so every exit
//! of a run is profiled; the notes under the table show what each counted. The modes take
//! turns within each round so that load from elsewhere on the machine spreads over all of
//! them; each cell is the median.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::util::{cargo, display, run as run_cmd, spawn_piped, target_dir, which};

/// Rounds per cell: the median of three shrugs off one disturbed run.
const ROUNDS: usize = 3;

/// No run takes more than seconds; one that hangs is killed and fails its column.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// The VMM waits this long before its first KVM_RUN, so that `kvmprof record --pid` is attached
/// when the exits start. Its own timing starts at the first KVM_RUN, so the wait is not measured.
const ATTACH_DELAY: &str = "1s";

/// What bpftrace counts: the tracepoints that fire once per exit under PVM (`kvm_pio` for
/// every PIO exit, in-kernel ones too; `kvm_userspace_exit` for each return to the VMM).
const BPFTRACE_SCRIPT: &str = "tracepoint:kvm:kvm_pio /pid == cpid/ { @pio = count(); } \
     tracepoint:kvm:kvm_userspace_exit /pid == cpid/ { @userspace_exit = count(); }";

/// A column of the table; `Err` holds why it is skipped.
struct Column {
    name: &'static str,
    mode: Result<Mode, String>,
}

struct Workload {
    name: &'static str,
    args: String,
}

/// A way to run the VMM.
enum Mode {
    Alone,
    Kvmprof(PathBuf),
    Bpftrace(PathBuf),
}

/// One timed run: the VMM's own count of its exits and of the time they took.
struct Sample {
    exits: u64,
    wall_ns: u64,
    /// What the profiler said it saw, to show that it profiled the run.
    note: String,
}

impl Sample {
    fn exits_per_sec(&self) -> f64 {
        self.exits as f64 * 1e9 / self.wall_ns.max(1) as f64
    }
}

pub fn run(exits: u64, build: bool) -> Result<()> {
    if build {
        println!("building: cargo build --release -p kvmprof-testvmm");
        run_cmd(cargo().args(["build", "--release", "-p", "kvmprof-testvmm"]))?;
    }
    let release = target_dir().join("release");
    let testvmm = release.join("kvmprof-testvmm");
    if !testvmm.is_file() {
        bail!(
            "{} is missing: build it or drop --no-build",
            testvmm.display()
        );
    }
    let scratch = target_dir().join("xtask").join("bench");
    std::fs::create_dir_all(&scratch)
        .with_context(|| format!("cannot create {}", scratch.display()))?;

    // A column whose tool is missing is skipped, with the reason, instead of the whole bench.
    let columns = [
        Column {
            name: "alone",
            mode: Ok(Mode::Alone),
        },
        Column {
            name: "kvmprof",
            mode: kvmprof_binary(&release, build).map(Mode::Kvmprof),
        },
        Column {
            name: "bpftrace",
            mode: which("bpftrace")
                .map(Mode::Bpftrace)
                .ok_or_else(|| "not installed (run `cargo xtask setup`)".to_string()),
        },
    ];
    for c in &columns {
        if let Err(why) = &c.mode {
            println!("{} column skipped: {why}", c.name);
        }
    }

    // The ioeventfd workload gets 4x the exits: they are about 4x as fast, so both take as long.
    let workloads = [
        Workload {
            name: "user PIO",
            args: format!("--vcpus 1 --pio-user {exits}"),
        },
        Workload {
            name: "ioeventfd PIO",
            args: format!("--vcpus 1 --pio-kernel {}", exits * 4),
        },
    ];
    println!(
        "bench: {} rounds of {} workloads, 1 vCPU each, median per cell",
        ROUNDS,
        workloads.len()
    );
    let mut rows = Vec::new();
    for w in &workloads {
        let mut cells: Vec<Cell> = columns.iter().map(|_| Ok(Vec::new())).collect();
        for _ in 0..ROUNDS {
            for (column, cell) in columns.iter().zip(cells.iter_mut()) {
                let (Ok(mode), Ok(samples)) = (&column.mode, cell.as_mut()) else {
                    continue;
                };
                match run_once(&testvmm, &w.args, mode, &scratch) {
                    Ok(s) => samples.push(s),
                    // The baseline must work; a profiler that fails only loses its column.
                    Err(e) if matches!(mode, Mode::Alone) => return Err(e),
                    Err(e) => *cell = Err(format!("{e:#}")),
                }
            }
        }
        rows.push((w.name, cells));
    }
    print_table(&rows, &columns);
    Ok(())
}

/// The kvmprof binary, built if asked; kvmprof may not build or run yet, which only skips its
/// column (with the reason) instead of the whole bench.
fn kvmprof_binary(release: &Path, build: bool) -> Result<PathBuf, String> {
    if build {
        println!("building: cargo build --release -p kvmprof");
        let mut cmd = cargo();
        cmd.args(["build", "--release", "--quiet", "-p", "kvmprof"]);
        let out = cmd.output().map_err(|e| format!("cannot run cargo: {e}"))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let first_error = stderr.lines().find(|l| l.starts_with("error"));
            return Err(format!(
                "`cargo build -p kvmprof` failed: {}",
                first_error.unwrap_or("(no error line)")
            ));
        }
    }
    let kvmprof = release.join("kvmprof");
    let help = Command::new(&kvmprof).args(["record", "--help"]).output();
    match help {
        Ok(out) if out.status.success() => Ok(kvmprof),
        _ => Err(format!(
            "`{} record --help` does not run",
            kvmprof.display()
        )),
    }
}

fn run_once(testvmm: &Path, args: &str, mode: &Mode, scratch: &Path) -> Result<Sample> {
    let vmm_args: Vec<&str> = args.split_whitespace().collect();
    let (stdout, note) = match mode {
        Mode::Alone => (
            finish(Command::new(testvmm).args(&vmm_args))?.0,
            String::new(),
        ),
        Mode::Kvmprof(kvmprof) => kvmprof_run(kvmprof, testvmm, &vmm_args, scratch)?,
        Mode::Bpftrace(bpftrace) => {
            let (stdout, _) = finish(
                Command::new(bpftrace)
                    .args(["-e", BPFTRACE_SCRIPT, "-c"])
                    .arg(format!("{} {args}", testvmm.display())),
            )?;
            // bpftrace prints its maps (`@pio: 200000`) when the command ends.
            let maps: Vec<&str> = stdout.lines().filter(|l| l.starts_with('@')).collect();
            let note = format!("bpftrace counted {}", maps.join(", "));
            (stdout, note)
        }
    };
    // The VMM prints one JSON line; bpftrace adds its own lines around it on the same stdout.
    let json: Value = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .context("the test VMM printed no JSON")
        .and_then(|l| serde_json::from_str(l).context("the test VMM printed bad JSON"))?;
    let exits = json["total"]
        .as_object()
        .context("no `total` in the test VMM's JSON")?
        .values()
        .filter_map(Value::as_u64)
        .sum();
    let wall_ns = json["wall_ns"]
        .as_u64()
        .context("no `wall_ns` in the test VMM's JSON")?;
    Ok(Sample {
        exits,
        wall_ns,
        note,
    })
}

/// `kvmprof record --pid` on the running VMM, then `kvmprof report` for what it recorded.
/// Returns the VMM's stdout and a note with kvmprof's count of exits.
fn kvmprof_run(
    kvmprof: &Path,
    testvmm: &Path,
    vmm_args: &[&str],
    scratch: &Path,
) -> Result<(String, String)> {
    let data = scratch.join("bench.data");
    let mut vmm_cmd = Command::new(testvmm);
    vmm_cmd.args(vmm_args).args(["--start-delay", ATTACH_DELAY]);
    let vmm = spawn_piped(&mut vmm_cmd, Vec::new(), Vec::new())?;
    let mut record = Command::new(kvmprof);
    record
        .args(["record", "--pid", &vmm.id().to_string(), "-o"])
        .arg(&data);
    let recording = spawn_piped(&mut record, Vec::new(), Vec::new())?;
    let (stdout, _) = outcome(&vmm_cmd, vmm.wait(RUN_LIMIT)?)?;
    // kvmprof stops by itself once the VMM has exited.
    outcome(&record, recording.wait(RUN_LIMIT)?)?;
    let (report, _) = finish(
        Command::new(kvmprof)
            .args(["report", "--format", "json", "-i"])
            .arg(&data),
    )?;
    let recorded = serde_json::from_str::<Value>(&report)
        .ok()
        .and_then(|r| r["total_exits"].as_u64())
        .context("`kvmprof report --format json` gave no total_exits")?;
    Ok((stdout, format!("kvmprof recorded {recorded} exits")))
}

/// Runs a command to its end and returns its stdout and stderr.
fn finish(cmd: &mut Command) -> Result<(String, String)> {
    let running = spawn_piped(cmd, Vec::new(), Vec::new())?;
    outcome(cmd, running.wait(RUN_LIMIT)?)
}

/// A finished command's stdout and stderr, or an error with the last line of its stderr.
fn outcome(
    cmd: &Command,
    (status, out, err): (ExitStatus, Vec<u8>, Vec<u8>),
) -> Result<(String, String)> {
    let (out, err) = (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    );
    if !status.success() {
        let why = err.lines().rev().find(|l| !l.trim().is_empty());
        bail!(
            "`{}` ({status}): {}",
            display(cmd),
            why.unwrap_or("").trim()
        );
    }
    Ok((out, err))
}

fn median(samples: &[Sample]) -> Option<f64> {
    let mut rates: Vec<f64> = samples.iter().map(Sample::exits_per_sec).collect();
    rates.sort_by(f64::total_cmp);
    rates.get(rates.len() / 2).copied()
}

/// The samples of one workload under one column, or why its runs failed.
type Cell = Result<Vec<Sample>, String>;
type Row<'a> = (&'a str, Vec<Cell>);

/// The table: per profiler its exits/s, the ratio to the baseline and what it adds per exit
/// (the difference of the ns/exit, the profiler's cost on the exit path).
fn print_table(rows: &[Row], columns: &[Column]) {
    let mut header = format!("{:<14} {:>12} {:>8}", "workload", "alone/s", "ns/exit");
    for c in columns.iter().skip(1) {
        let _ = write!(
            header,
            " | {:>12} {:>6} {:>8}",
            format!("{}/s", c.name),
            "ratio",
            "+ns/exit"
        );
    }
    println!("{header}");
    let mut notes = Vec::new();
    for (name, cells) in rows {
        let base = cells[0].as_ref().ok().and_then(|s| median(s));
        let mut line = match base {
            Some(b) => format!("{name:<14} {b:>12.0} {:>8.0}", 1e9 / b),
            None => format!("{name:<14} {:>12} {:>8}", "-", "-"),
        };
        for (column, cell) in columns.iter().zip(cells).skip(1) {
            if column.mode.is_err() {
                let _ = write!(line, " | {:>12} {:>6} {:>8}", "skipped", "-", "-");
                continue;
            }
            match (cell, base) {
                (Ok(samples), Some(b)) if !samples.is_empty() => {
                    let r = median(samples).unwrap_or(0.0);
                    let added = 1e9 / r - 1e9 / b;
                    let _ = write!(line, " | {r:>12.0} {:>6.2} {added:>8.0}", r / b);
                    if let Some(last) = samples.last().filter(|s| !s.note.is_empty()) {
                        notes.push(format!(
                            "{name}: the VMM made {} exits; {}",
                            last.exits, last.note
                        ));
                    }
                }
                (Err(e), _) => {
                    let _ = write!(line, " | {:>12} {:>6} {:>8}", "failed", "-", "-");
                    notes.push(format!("{name}: {e}"));
                }
                _ => {
                    let _ = write!(line, " | {:>12} {:>6} {:>8}", "-", "-", "-");
                }
            }
        }
        println!("{line}");
    }
    for note in notes {
        println!("  {note}");
    }
}
