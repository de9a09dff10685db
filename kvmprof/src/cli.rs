//! Command-line interface: the commands and their options.
use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::plan::HookPref;

#[derive(Parser)]
#[command(
    name = "kvmprof",
    version,
    about = "eBPF profiler of KVM VM exits",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Record the VM exits of VMM processes into a data file (Ctrl-C stops and keeps all).
    Record(RecordArgs),
    /// Print per-reason, per-vCPU or per-process latency distributions from a data file.
    Report(ReportArgs),
    /// Live top-style view of VM exits.
    Top(TopArgs),
    /// Show which hook each stage uses on this kernel, and why the others were rejected.
    Probes(ProbesArgs),
    /// Run the built-in demo guest and profile it (no VM needed).
    Demo(DemoArgs),
    /// Convert ftrace/trace-cmd function_graph text into a kvmprof data file.
    ImportFtrace(ImportArgs),
    /// Draw where exit-handling time goes (folded stacks + SVG) from function_graph traces.
    Flamegraph(FlameArgs),
    /// Run the built-in test guest (used by `demo`, tests and benchmarks).
    #[command(hide = true)]
    Guest(GuestArgs),
}

#[derive(Args)]
pub struct HookArgs {
    /// How to hook the exit-cycle stages: auto picks fentry, then kprobe, then tracepoints.
    #[arg(long, value_enum, default_value = "auto")]
    pub hooks: HookPref,
}

#[derive(Args)]
pub struct RecordArgs {
    /// Process to profile: a pid or a name matched like pgrep (`qemu`). Repeatable.
    #[arg(
        short,
        long = "pid",
        value_name = "PID|NAME",
        required_unless_present = "command"
    )]
    pub pids: Vec<String>,
    /// Also write every exit as one JSON object per line (raw data for your own analysis).
    #[arg(long, value_name = "FILE")]
    pub exits: Option<PathBuf>,
    /// List every exit slower than this in the report: `10ms` compares each exit's cycle
    /// and handler, `STAGE=10ms` that stage (cycle, vendor_run, handler, fast_pio,
    /// kvm_run, vmm).
    #[arg(long, value_name = "[STAGE=]DURATION", value_parser = crate::slow::parse_rule)]
    pub slow: Option<crate::slow::Rule>,
    /// Start this VMM command and record it from its first instruction (after `--`).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
    /// Stop after this long (`30`, `10s`, `2m`, `500ms`); default: until Ctrl-C or exit.
    #[arg(short, long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Data file to write.
    #[arg(short, long, default_value = "kvmprof.data")]
    pub output: PathBuf,
    /// Length of each histogram interval in the data file's interval log.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub interval: Duration,
    #[command(flatten)]
    pub hooks: HookArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum By {
    Reason,
    Vcpu,
    Pid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Args)]
pub struct ReportArgs {
    /// Data file to read.
    #[arg(short, long, default_value = "kvmprof.data")]
    pub input: PathBuf,
    /// Group rows by exit reason, vCPU or process.
    #[arg(long, value_enum, default_value = "reason")]
    pub by: By,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(Args)]
pub struct TopArgs {
    /// Processes to watch (pid or name); default: every process using KVM.
    #[arg(short, long = "pid", value_name = "PID|NAME")]
    pub pids: Vec<String>,
    /// Refresh interval.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub delay: Duration,
    /// Print plain-text frames instead of the full-screen view (like `top -b`).
    #[arg(short, long)]
    pub batch: bool,
    /// Stop after this many frames.
    #[arg(short = 'n', long)]
    pub iterations: Option<u64>,
    #[command(flatten)]
    pub hooks: HookArgs,
}

#[derive(Args)]
pub struct ProbesArgs {
    #[command(flatten)]
    pub hooks: HookArgs,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(Args)]
pub struct DemoArgs {
    /// Data file to write.
    #[arg(short, long, default_value = "kvmprof-demo.data")]
    pub output: PathBuf,
    /// Number of vCPUs of the demo guest.
    #[arg(long, default_value_t = 2)]
    pub vcpus: u32,
    #[command(flatten)]
    pub hooks: HookArgs,
}

#[derive(Args)]
pub struct ImportArgs {
    /// function_graph trace files (ftrace `trace` or `trace-cmd report` output).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    #[arg(short, long, default_value = "kvmprof.data")]
    pub output: PathBuf,
}

#[derive(Args)]
pub struct FlameArgs {
    /// function_graph trace files.
    #[arg(short, long = "input", required = true)]
    pub inputs: Vec<PathBuf>,
    /// SVG to write.
    #[arg(short, long, default_value = "kvmprof-exits.svg")]
    pub output: PathBuf,
    /// Also write the folded stacks here.
    #[arg(long)]
    pub folded: Option<PathBuf>,
}

#[derive(Args)]
pub struct GuestArgs {
    #[arg(long, default_value_t = 2)]
    pub vcpus: u32,
    #[arg(long, default_value_t = 1000)]
    pub pio_user: u64,
    #[arg(long, default_value_t = 5000)]
    pub pio_kernel: u64,
    #[arg(long, default_value_t = 300)]
    pub mmio: u64,
    #[arg(long, default_value_t = 50)]
    pub pio_in: u64,
    /// Write the guest's exit counts (JSON) here instead of stdout.
    #[arg(long)]
    pub counts: Option<PathBuf>,
}

/// `30`, `30s`, `2m`, `1h`, `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration '{s}' (try 10s, 2m, 500ms)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1e3,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration unit '{unit}' in '{s}' (use ms, s, m or h)"
            ))
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration '{s}'"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("").is_err());
    }
}
