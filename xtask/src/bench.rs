//! `cargo xtask bench`: what profiling costs the profiled VM, in one run.
//!
//! 1. Kernel BPF run time per exit, per kvmprof program, from runs of their own: `kvmprof
//!    record --bpf-stats on` keeps the kernel's BPF run-time statistics on throughout and
//!    puts each program's run time in its data file (`kvmprof report --format json`,
//!    `header.own_cost`); divided by the exits the test VMM made. Steady even on a loaded
//!    machine, unlike throughput. The timed runs below use the default (`sampled`, 1 s in
//!    10: what a user gets), since the statistics themselves slow the VM down.
//! 2. Throughput: the test VMM makes a known number of exits and times them itself (first
//!    KVM_RUN to last return), alone, under `kvmprof record`, `kvmprof top --batch`, `kvmprof
//!    record --exits`, a bpftrace counting one-liner and a bpftrace `hist()` one-liner.
//!    kvmprof starts the VMM (`record -- CMD`) and bpftrace too (`-c CMD`), so both are
//!    attached before its first exit; `top` starts no command: it watches every VMM of the
//!    host and the VMM starts once top's first frame is out. The modes take turns within each round so that load from elsewhere on the
//!    machine spreads over all of them; each cell is the median of the rounds.
//! 3. kvmprof's own CPU and peak RSS, and the events it lost.
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::util::{cargo, display, run as run_cmd, spawn_piped, target_dir, which};

/// No run takes more than seconds; one that hangs is killed and fails its column.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// bpftrace counting the tracepoints that fire once per exit under PVM (`kvm_pio` for
/// every PIO exit, in-kernel ones too; `kvm_userspace_exit` for each return to the VMM).
const BPFTRACE_COUNT: &str = "tracepoint:kvm:kvm_pio /pid == cpid/ { @pio = count(); } \
     tracepoint:kvm:kvm_userspace_exit /pid == cpid/ { @userspace_exit = count(); }";

/// bpftrace timing the interval between PIO exits per thread into a `hist()`: the least a
/// user would write to get a latency distribution.
const BPFTRACE_HIST: &str = "tracepoint:kvm:kvm_pio /pid == cpid/ { \
     if (@s[tid]) { @cycle = hist(nsecs - @s[tid]); } @s[tid] = nsecs; }";

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
    Kvmprof {
        bin: PathBuf,
        exits_file: bool,
        /// `--bpf-stats on`: for the BPF run time per exit, never for throughput.
        bpf_stats_on: bool,
    },
    Top {
        bin: PathBuf,
    },
    Bpftrace {
        bin: PathBuf,
        script: &'static str,
    },
}

/// kvmprof's account of one recording.
struct Recorded {
    exits: u64,
    lost: u64,
    duration_ns: u64,
    /// (program, run time ns) from the kernel's BPF run-time stats.
    programs: Vec<(String, u64)>,
    cpu_ns: u64,
    peak_rss_bytes: u64,
}

/// One timed run: the VMM's own count of its exits and of the time they took.
struct Sample {
    exits: u64,
    wall_ns: u64,
    /// What the profiler said it saw, to show that it profiled the run.
    note: String,
    recorded: Option<Recorded>,
}

impl Sample {
    fn exits_per_sec(&self) -> f64 {
        self.exits as f64 * 1e9 / self.wall_ns.max(1) as f64
    }
}

pub fn run(exits: u64, rounds: usize, build: bool) -> Result<()> {
    if build {
        println!("building: cargo build --release -p kvmprof-testvmm -p kvmprof");
        run_cmd(cargo().args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "kvmprof-testvmm",
            "-p",
            "kvmprof",
        ]))?;
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

    let kvmprof = kvmprof_binary(&release);
    let bpftrace =
        which("bpftrace").ok_or_else(|| "not installed (run `cargo xtask setup`)".to_string());
    // A column whose tool is missing is skipped, with the reason, instead of the whole bench.
    let columns = [
        Column {
            name: "alone",
            mode: Ok(Mode::Alone),
        },
        Column {
            name: "record",
            mode: kvmprof.clone().map(|bin| Mode::Kvmprof {
                bin,
                exits_file: false,
                bpf_stats_on: false,
            }),
        },
        Column {
            name: "top -b",
            mode: kvmprof.clone().map(|bin| Mode::Top { bin }),
        },
        Column {
            name: "--exits",
            mode: kvmprof.clone().map(|bin| Mode::Kvmprof {
                bin,
                exits_file: true,
                bpf_stats_on: false,
            }),
        },
        Column {
            name: "bt count",
            mode: bpftrace.clone().map(|bin| Mode::Bpftrace {
                bin,
                script: BPFTRACE_COUNT,
            }),
        },
        Column {
            name: "bt hist",
            mode: bpftrace.map(|bin| Mode::Bpftrace {
                bin,
                script: BPFTRACE_HIST,
            }),
        },
    ];
    for c in &columns {
        if let Err(why) = &c.mode {
            println!("{} column skipped: {why}", c.name);
        }
    }

    // The ioeventfd workload gets 4x the exits: they are about 4x as fast.
    let workloads = [
        Workload {
            name: "in-kernel PIO",
            args: kvmprof_testvmm::cli::args(&kvmprof_testvmm::Workload {
                pio_kernel: exits * 4,
                ..kvmprof_testvmm::Workload::IDLE
            }),
        },
        Workload {
            name: "user PIO",
            args: kvmprof_testvmm::cli::args(&kvmprof_testvmm::Workload {
                pio_user: exits,
                ..kvmprof_testvmm::Workload::IDLE
            }),
        },
    ];
    println!(
        "bench: {rounds} alternating rounds of {} workloads x {} modes, 1 vCPU, median per cell",
        workloads.len(),
        columns.len()
    );
    // Untimed: the run-time statistics on throughout slow the VM down.
    let stats_on = kvmprof.map(|bin| Mode::Kvmprof {
        bin,
        exits_file: false,
        bpf_stats_on: true,
    });
    let mut rows = Vec::new();
    let mut bpf_rows = Vec::new();
    for w in &workloads {
        let mut cells: Vec<Cell> = columns.iter().map(|_| Ok(Vec::new())).collect();
        let mut bpf: Cell = stats_on.as_ref().map(|_| Vec::new()).map_err(Clone::clone);
        for _ in 0..rounds {
            if let (Ok(mode), Ok(samples)) = (&stats_on, bpf.as_mut()) {
                match run_once(&testvmm, &w.args, mode, &scratch) {
                    Ok(s) => samples.push(s),
                    Err(e) => bpf = Err(format!("{e:#}")),
                }
            }
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
        bpf_rows.push((w.name, bpf));
    }
    print_bpf_cost(&bpf_rows);
    print_table(&rows, &columns);
    print_own_cost(&rows);
    Ok(())
}

/// The kvmprof binary; kvmprof may not build or run yet, which only skips its columns
/// (with the reason) instead of the whole bench.
fn kvmprof_binary(release: &Path) -> Result<PathBuf, String> {
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
    let (stdout, note, recorded) = match mode {
        Mode::Alone => (
            finish(Command::new(testvmm).args(&vmm_args))?.0,
            String::new(),
            None,
        ),
        Mode::Kvmprof {
            bin,
            exits_file,
            bpf_stats_on,
        } => {
            let (stdout, rec) =
                kvmprof_run(bin, testvmm, &vmm_args, *exits_file, *bpf_stats_on, scratch)?;
            let note = format!("kvmprof recorded {} exits, {} lost", rec.exits, rec.lost);
            (stdout, note, Some(rec))
        }
        Mode::Top { bin } => {
            let (stdout, last_frame) = top_run(bin, testvmm, &vmm_args)?;
            (stdout, format!("top's last frame: {last_frame}"), None)
        }
        Mode::Bpftrace { bin, script } => {
            let (stdout, _) = finish(
                Command::new(bin)
                    .args(["-e", script, "-c"])
                    .arg(format!("{} {args}", testvmm.display())),
            )?;
            // bpftrace prints its maps when the command ends: counts on one line, a hist()
            // over many (only its name is kept), per-thread timestamps (left out).
            let maps: Vec<&str> = stdout
                .lines()
                .filter(|l| l.starts_with('@') && !l.starts_with("@s["))
                .map(|l| l.trim_end_matches(": ").trim_end_matches(':'))
                .collect();
            (
                stdout.clone(),
                format!("bpftrace: {}", maps.join(", ")),
                None,
            )
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
        recorded,
    })
}

/// `kvmprof record -- VMM`, then `kvmprof report` for what it recorded and what it cost.
fn kvmprof_run(
    kvmprof: &Path,
    testvmm: &Path,
    vmm_args: &[&str],
    exits_file: bool,
    bpf_stats_on: bool,
    scratch: &Path,
) -> Result<(String, Recorded)> {
    let data = scratch.join("bench.data");
    let mut record = Command::new(kvmprof);
    record.arg("record").arg("-o").arg(&data);
    if bpf_stats_on {
        record.args(["--bpf-stats", "on"]);
    }
    if exits_file {
        record.arg("--exits").arg(scratch.join("bench.exits.jsonl"));
    }
    record.arg("--").arg(testvmm).args(vmm_args);
    let (stdout, _) = finish(&mut record)?;
    let (report, _) = finish(
        Command::new(kvmprof)
            .args(["report", "--format", "json", "-i"])
            .arg(&data),
    )?;
    let r: Value = serde_json::from_str(&report).context("`kvmprof report` JSON")?;
    let cost = &r["header"]["own_cost"];
    let programs = cost["programs"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| Some((p["name"].as_str()?.to_owned(), p["run_ns"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    let rec = Recorded {
        exits: r["total_exits"]
            .as_u64()
            .context("`kvmprof report --format json` gave no total_exits")?,
        lost: r["lost"].as_u64().unwrap_or(0),
        duration_ns: r["header"]["duration_ns"].as_u64().unwrap_or(0),
        programs,
        cpu_ns: cost["cpu_ns"].as_u64().unwrap_or(0),
        peak_rss_bytes: cost["peak_rss_bytes"].as_u64().unwrap_or(0),
    };
    Ok((stdout, rec))
}

/// `kvmprof top --batch` (default 1 s refresh) while the VMM runs. `top` starts no command,
/// so it watches every VMM of the host (run the bench on a quiet machine) and the VMM starts
/// once top's first frame is out, i.e. once every hook is attached; SIGINT stops top after
/// its next frame. Returns the VMM's stdout and the first line of top's last frame.
fn top_run(kvmprof: &Path, testvmm: &Path, vmm_args: &[&str]) -> Result<(String, String)> {
    let frames = Shared::default();
    let mut cmd = Command::new(kvmprof);
    cmd.args(["top", "--batch"]);
    let mut top = spawn_piped(&mut cmd, frames.clone(), Vec::new())?;
    let t0 = Instant::now();
    while frames.text().is_empty() && !top.ended()? && t0.elapsed() < RUN_LIMIT {
        std::thread::sleep(Duration::from_millis(50));
    }
    let vmm = if frames.text().is_empty() {
        Err(anyhow::anyhow!("`kvmprof top --batch` printed no frame"))
    } else {
        finish(Command::new(testvmm).args(vmm_args)).map(|(out, _)| out)
    };
    // One more frame, so that the last one shows the VMM's exits.
    let count = |f: &Shared| f.text().matches("kvmprof top").count();
    let (seen, t0) = (count(&frames), Instant::now());
    while count(&frames) == seen && !top.ended()? && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Best effort: if top is gone already, its status below says why.
    let _ = Command::new("kill")
        .args(["-INT", &top.id().to_string()])
        .status();
    let (status, frames, err) = top.wait(RUN_LIMIT)?;
    outcome(&cmd, (status, frames.text().into_bytes(), err))?;
    let last = frames
        .text()
        .lines()
        .rev()
        .find(|l| l.starts_with("kvmprof top"))
        .unwrap_or("none")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    Ok((vmm?, last))
}

/// Output that can be read while a child still writes it.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Shared {
    fn text(&self) -> String {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl io::Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
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

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// The samples of one workload under one column, or why its runs failed.
type Cell = Result<Vec<Sample>, String>;
type Row<'a> = (&'a str, Vec<Cell>);

/// kvmprof's recordings in a cell.
fn recordings(cell: Option<&Cell>) -> Vec<(&Sample, &Recorded)> {
    cell.and_then(|c| c.as_ref().ok())
        .map(|s| {
            s.iter()
                .filter_map(|s| s.recorded.as_ref().map(|r| (s, r)))
                .collect()
        })
        .unwrap_or_default()
}

/// Per program, the median over rounds of its BPF run time divided by the VMM's exits, from
/// the `record --bpf-stats on` runs of each workload.
fn print_bpf_cost(rows: &[(&str, Cell)]) {
    println!(
        "\nkvmprof BPF run time per exit (kernel run-time stats, median of rounds; separate, \
         untimed `record --bpf-stats on` runs: the timed ones below use the default, sampled):"
    );
    for (name, cell) in rows {
        let recs = recordings(Some(cell));
        if let Err(e) = cell {
            println!("  {name:<14} failed: {e}");
            continue;
        }
        if recs.is_empty() {
            println!("  {name:<14} -");
            continue;
        }
        let mut names: Vec<&str> = recs
            .iter()
            .flat_map(|(_, r)| r.programs.iter().map(|(n, _)| n.as_str()))
            .collect();
        names.sort_unstable();
        names.dedup();
        let per = |prog: Option<&str>| {
            median(
                recs.iter()
                    .map(|(s, r)| {
                        let ns: u64 = r
                            .programs
                            .iter()
                            .filter(|(n, _)| prog.is_none_or(|p| p == n))
                            .map(|(_, ns)| ns)
                            .sum();
                        ns as f64 / s.exits.max(1) as f64
                    })
                    .collect(),
            )
            .unwrap_or(0.0)
        };
        let mut line = format!("  {name:<14} {:>5.0} ns/exit =", per(None));
        for n in names {
            let _ = write!(line, " {n} {:.0}", per(Some(n)));
        }
        println!("{line}");
    }
}

/// Per column: exits/s, the ratio to the baseline and what it adds per exit.
fn print_table(rows: &[Row], columns: &[Column]) {
    println!("\nthroughput (the VMM's own exits/s; ratio to alone; added ns per exit):");
    let mut header = format!("{:<14} {:>10} {:>7}", "workload", "alone/s", "ns/exit");
    for c in columns.iter().skip(1) {
        let _ = write!(header, " | {:>9} {:>5} {:>6}", c.name, "ratio", "+ns");
    }
    println!("{header}");
    let mut notes = Vec::new();
    for (name, cells) in rows {
        let rate = |c: &Cell| {
            c.as_ref()
                .ok()
                .and_then(|s| median(s.iter().map(Sample::exits_per_sec).collect()))
        };
        let base = rate(&cells[0]);
        let mut line = match base {
            Some(b) => format!("{name:<14} {b:>10.0} {:>7.0}", 1e9 / b),
            None => format!("{name:<14} {:>10} {:>7}", "-", "-"),
        };
        for (column, cell) in columns.iter().zip(cells).skip(1) {
            match (&column.mode, cell, rate(cell), base) {
                (Err(_), ..) => {
                    let _ = write!(line, " | {:>9} {:>5} {:>6}", "skipped", "-", "-");
                }
                (_, Err(e), ..) => {
                    let _ = write!(line, " | {:>9} {:>5} {:>6}", "failed", "-", "-");
                    notes.push(format!("{name}, {}: {e}", column.name));
                }
                (_, Ok(samples), Some(r), Some(b)) => {
                    let added = 1e9 / r - 1e9 / b;
                    let _ = write!(line, " | {r:>9.0} {:>5.2} {added:>6.0}", r / b);
                    if let Some(last) = samples.last() {
                        notes.push(format!(
                            "{name}, {}: the VMM made {} exits; {}",
                            column.name, last.exits, last.note
                        ));
                    }
                }
                _ => {
                    let _ = write!(line, " | {:>9} {:>5} {:>6}", "-", "-", "-");
                }
            }
        }
        println!("{line}");
    }
    for note in notes {
        println!("  {note}");
    }
}

/// kvmprof's CPU (share of a core, and per 100k exits/s), peak RSS and lost events.
fn print_own_cost(rows: &[Row]) {
    println!("\nkvmprof's own cost (`record`, median of rounds):");
    for (name, cells) in rows {
        // The `record` column: the default --bpf-stats, as timed.
        let recs = recordings(cells.get(1));
        if recs.is_empty() {
            continue;
        }
        let share = median(
            recs.iter()
                .map(|(_, r)| r.cpu_ns as f64 / r.duration_ns.max(1) as f64)
                .collect(),
        )
        .unwrap_or(0.0);
        // The exit rate while recording, from kvmprof's own count and duration.
        let per_100k = median(
            recs.iter()
                .map(|(_, r)| {
                    let rate = r.exits as f64 * 1e9 / r.duration_ns.max(1) as f64;
                    r.cpu_ns as f64 / r.duration_ns.max(1) as f64 / (rate / 1e5).max(1e-9)
                })
                .collect(),
        )
        .unwrap_or(0.0);
        let rss = recs
            .iter()
            .map(|(_, r)| r.peak_rss_bytes)
            .max()
            .unwrap_or(0);
        let lost: u64 = recs.iter().map(|(_, r)| r.lost).sum();
        let exact = recs.iter().filter(|(s, r)| s.exits == r.exits).count();
        println!(
            "  {name:<14} CPU {:.1}% of a core ({:.2}% per 100k exits/s), peak RSS {:.0} MiB, \
             lost {lost}, exact count in {exact}/{} runs",
            share * 100.0,
            per_100k * 100.0,
            rss as f64 / (1 << 20) as f64,
            recs.len()
        );
    }
}
