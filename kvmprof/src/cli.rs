//! Command-line interface: the commands and their options.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use kvmprof_common::duration;

use crate::data::cost::BpfStats;
use crate::data::group::By;
use crate::data::model::Stage;
use crate::host::plan::HookPref;
use crate::sinks::report::Format;

/// The program's name, also the name its completions complete (`kvmprof generate`).
pub const NAME: &str = "kvmprof";

/// `kvmprof --version`: the crate version and the commit it was built from (`build.rs`), so a
/// packaged binary says which source it is.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("KVMPROF_GIT_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = NAME,
    version = VERSION,
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
    /// Print per-reason, per-vCPU or per-process latency distributions from data files
    /// (several are merged, e.g. one per host).
    Report(ReportArgs),
    /// Write a recording as a standalone .hlog, a .hgrm percentile distribution, CSV or JSON.
    Export(ExportArgs),
    /// Compare two recordings per reason and stage: counts, rates, percentiles, ratios B/A.
    Diff(DiffArgs),
    /// Draw percentile distributions (several files overlaid) or the time series of a
    /// recording, as SVG or PNG.
    Plot(PlotArgs),
    /// Live top-style view of VM exits.
    Top(TopArgs),
    /// Serve exit counts and latency histograms of every VM on /metrics for Prometheus.
    Serve(ServeArgs),
    /// Show which hook each stage uses on this kernel, and why the others were rejected.
    Probes(ProbesArgs),
    /// List KVM functions (a catalogue of x86.c's by default) and how each can be hooked on
    /// this kernel: fentry, kprobe, a compiler clone, or not at all (inlined).
    Funcs(FuncsArgs),
    /// Run the built-in demo guest and profile it (no VM needed).
    #[cfg(feature = "demo")]
    Demo(DemoArgs),
    /// Convert ftrace/trace-cmd function_graph text into a kvmprof data file.
    ImportFtrace(ImportArgs),
    /// Draw where exit-handling time goes (folded stacks + SVG) from function_graph traces.
    Flamegraph(FlameArgs),
    /// Run the built-in test guest (used by `demo`, tests and benchmarks).
    #[cfg(feature = "demo")]
    #[command(hide = true)]
    Guest(GuestArgs),
    /// Write the man pages or the shell completions of this command line into a directory.
    // Hidden: it is for packaging (`cargo xtask deb`), not for users. It lives in the binary
    // because the CLI definition does: `Cli` refers to the profiler's own types, so neither
    // xtask nor a build script can build it, and the binary renders exactly what it parses.
    #[command(hide = true)]
    Generate(GenerateArgs),
}

#[derive(Args)]
pub struct HookArgs {
    /// How to hook the exit-cycle stages: auto picks fentry, then kprobe, then tracepoints.
    #[arg(long, value_enum, default_value = "auto")]
    hooks: Hooks,
    /// Also time the exit handler and `kvm_fast_pio` (the deep breakdown): four more BPF
    /// programs on every exit. Without it: cycle, vendor run and VMM round trip.
    #[arg(long)]
    stages: bool,
    /// Also file MSR exits by MSR index and direction, CPUID exits by leaf and subleaf,
    /// hypercalls by number (KVM's, Xen's, Hyper-V's), EPT violations and NPFs by guest page,
    /// fault-in or MMIO (`kvm:kvm_msr`, `kvm:kvm_cpuid`, `kvm:kvm_hypercall`,
    /// `kvm:kvm_xen_hypercall`, `kvm:kvm_hv_hypercall`, `kvm:kvm_page_fault`: a program on
    /// those exits only) and count every exit by guest RIP (a second program on
    /// `kvm:kvm_exit`). Intel VMX and AMD SVM. `top` shows them in a row's panel (Enter) and,
    /// with --batch, after each frame; `serve` as kvmprof_exit_detail_total.
    #[arg(long)]
    detail: bool,
    /// Also time a KVM function inside the exits that call it (repeat for up to 4; `kvmprof
    /// funcs` lists what this kernel can hook): per exit reason, the exits that called it,
    /// calls per exit and the time in it per exit. fentry/fexit where the kernel allows,
    /// else kprobe/kretprobe. `record` only.
    #[arg(long = "func", value_name = "NAME", value_parser = func_name)]
    funcs: Vec<String>,
    /// Log the eBPF programs' rare anomalies to stderr (a refused kernel read, a stage return
    /// without its entry, no room for a thread's state, a full ring buffer), each with its
    /// thread. Off, the log sites are not even loaded.
    #[arg(long)]
    debug_bpf: bool,
}

impl HookArgs {
    /// The planner's preference.
    pub fn pref(&self) -> HookPref {
        match self.hooks {
            Hooks::Auto => HookPref::Auto,
            Hooks::Fentry => HookPref::Fentry,
            Hooks::Kprobe => HookPref::Kprobe,
            Hooks::Tracepoint => HookPref::Tracepoint,
        }
    }

    /// `--stages`: the deep breakdown.
    pub fn deep(&self) -> bool {
        self.stages
    }

    /// `--detail`: MSRs, CPUID leaves, hypercalls and guest RIPs.
    pub fn detail(&self) -> bool {
        self.detail
    }

    /// `--func`: the KVM functions to time.
    pub fn funcs(&self) -> &[String] {
        &self.funcs
    }

    /// Refuses `--func` for a command (`top`, `serve`) whose views do not show it.
    pub fn no_func(&self, command: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.funcs.is_empty(),
            "--func is shown by `record` (then `report`); `{command}` does not show timed \
             functions"
        );
        Ok(())
    }

    /// `--debug-bpf`: the programs' anomaly log.
    pub fn debug_bpf(&self) -> bool {
        self.debug_bpf
    }
}

/// `--hooks` values (the planner's [`HookPref`] stays free of clap).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Hooks {
    Auto,
    Fentry,
    Kprobe,
    Tracepoint,
}

#[derive(Args)]
pub struct BpfStatsArgs {
    /// When to switch the kernel's BPF run-time statistics on, to show kvmprof's own BPF
    /// ns per exit: sampled 1 s in every 10 (from 1 s after the start); on for the whole
    /// run (costs the VMs ~5% of their exit rate on fast in-kernel exits); off.
    #[arg(long = "bpf-stats", value_enum, default_value = "sampled")]
    bpf_stats: BpfStatsFlag,
}

impl BpfStatsArgs {
    pub fn mode(&self) -> BpfStats {
        match self.bpf_stats {
            BpfStatsFlag::Sampled => BpfStats::Sampled,
            BpfStatsFlag::On => BpfStats::On,
            BpfStatsFlag::Off => BpfStats::Off,
        }
    }
}

/// `--bpf-stats` values (the data file's [`BpfStats`] stays free of clap).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BpfStatsFlag {
    Sampled,
    On,
    Off,
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
    /// Also write every exit as one JSON object per line (raw data for your own analysis):
    /// reason with its name, `space`/`port` or `space`/`gpa` of the access, stages by name,
    /// and a `schema_version`.
    #[arg(long, value_name = "FILE")]
    pub exits: Option<PathBuf>,
    /// List every exit slower than this in the report: `10ms` compares each exit's cycle
    /// and handler, `STAGE=10ms` that stage (the names `--stage` takes).
    #[arg(long, value_name = "[STAGE=]DURATION", value_parser = crate::data::slow::parse_rule)]
    pub slow: Option<crate::data::slow::Rule>,
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
    #[arg(long, value_parser = parse_period, default_value = "1s")]
    pub interval: Duration,
    #[command(flatten)]
    pub hooks: HookArgs,
    #[command(flatten)]
    pub bpf_stats: BpfStatsArgs,
}

#[derive(Args)]
pub struct ReportArgs {
    /// Data files or HdrHistogram interval logs (.hlog) to read; several are merged.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Data file to read (same as a FILE; default kvmprof.data when no file is given).
    #[arg(short, long = "input", value_name = "FILE")]
    pub inputs: Vec<PathBuf>,
    /// Group rows by exit reason, vCPU or process.
    #[arg(long, value_enum, default_value = "reason")]
    pub by: By,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Also print the time series the file stores: per interval, rate, p50, p99, max.
    #[arg(long)]
    pub intervals: bool,
}

impl ReportArgs {
    /// The files to read: positional and `-i` alike, `kvmprof.data` when none.
    pub fn paths(&self) -> Vec<PathBuf> {
        input_paths(&self.files, &self.inputs)
    }
}

/// Positional files and `-i` files together, `kvmprof.data` when none is given.
pub fn input_paths(files: &[PathBuf], inputs: &[PathBuf]) -> Vec<PathBuf> {
    let all: Vec<PathBuf> = files.iter().chain(inputs).cloned().collect();
    if all.is_empty() {
        vec![PathBuf::from(crate::recording::datafile::DEFAULT_PATH)]
    } else {
        all
    }
}

/// Which reasons and stages a command looks at.
#[derive(Args, Clone)]
pub struct SelectArgs {
    /// Only this exit reason: its name (`io`, `hlt`, `KVM_EXIT_IO`) or `<space>:<code>`
    /// (`svm:0x7b`). Repeatable; default all.
    #[arg(long = "reason", value_name = "REASON")]
    pub reasons: Vec<String>,
    /// Only this stage. Repeatable.
    #[arg(long = "stage", value_name = "STAGE")]
    pub stages: Vec<Stage>,
}

impl SelectArgs {
    pub fn selection(&self) -> crate::data::series::Selection {
        crate::data::series::Selection {
            reasons: self.reasons.clone(),
            stages: self.stages.clone(),
        }
    }
}

/// `--stage NAME`: clap lists the names in the help and in the error for a wrong one.
impl ValueEnum for Stage {
    fn value_variants<'a>() -> &'a [Self] {
        &Stage::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Hlog,
    Hgrm,
    Csv,
    Json,
}

#[derive(Args)]
pub struct ExportArgs {
    /// Data file or .hlog to read (repeatable: several are merged).
    #[arg(
        short,
        long = "input",
        value_name = "FILE",
        default_value = "kvmprof.data"
    )]
    pub inputs: Vec<PathBuf>,
    /// hlog: standalone interval log; hgrm: percentile distribution of the chosen reasons
    /// in one stage; csv: a row per group and stage; json: every series and its histogram.
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Where to write (`-`: stdout).
    #[arg(short, long, default_value = "-")]
    pub output: PathBuf,
    #[command(flatten)]
    pub select: SelectArgs,
    /// CSV rows: group by exit reason, vCPU or process.
    #[arg(long, value_enum, default_value = "reason")]
    pub by: By,
    /// CSV: one row per interval, group and stage; JSON: add every interval's histogram.
    #[arg(long)]
    pub intervals: bool,
    /// Unit of the values in a .hgrm.
    #[arg(long, value_enum, default_value = "us")]
    pub unit: crate::sinks::export::Unit,
}

#[derive(Args)]
pub struct DiffArgs {
    /// The baseline recording.
    pub a: PathBuf,
    /// The recording compared with it.
    pub b: PathBuf,
    #[command(flatten)]
    pub select: SelectArgs,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(Args)]
pub struct PlotArgs {
    /// Data files or .hlog files; their curves are overlaid.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Image to write: .svg or .png.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Plot rate and p99 per interval instead of the percentile distribution.
    #[arg(long)]
    pub time_series: bool,
    #[command(flatten)]
    pub select: SelectArgs,
    /// Title of the plot (default: what is plotted).
    #[arg(long)]
    pub title: Option<String>,
}

#[derive(Args)]
pub struct TopArgs {
    /// Processes to watch (pid or name); default: every process using KVM.
    #[arg(short, long = "pid", value_name = "PID|NAME")]
    pub pids: Vec<String>,
    /// Refresh interval.
    #[arg(long, value_parser = parse_period, default_value = "1s")]
    pub delay: Duration,
    /// Print plain-text frames instead of the full-screen view (like `top -b`).
    #[arg(short, long)]
    pub batch: bool,
    /// Stop after this many frames.
    #[arg(short = 'n', long)]
    pub iterations: Option<u64>,
    /// Count the exits slower than this and show the latest ones, as `record --slow` lists
    /// them: `10ms` compares each exit's cycle and handler, `STAGE=10ms` that stage.
    #[arg(long, value_name = "[STAGE=]DURATION", value_parser = crate::data::slow::parse_rule)]
    pub slow: Option<crate::data::slow::Rule>,
    #[command(flatten)]
    pub hooks: HookArgs,
    #[command(flatten)]
    pub bpf_stats: BpfStatsArgs,
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address to serve /metrics on.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub listen: SocketAddr,
    /// Serve only these processes (pid, or name matched like pgrep: processes that start
    /// later under it are added). Default: every VMM on the host, including later ones.
    #[arg(short, long = "pid", value_name = "PID|NAME")]
    pub pids: Vec<String>,
    /// Leave out the vCPU label of exit counts (bounded cardinality on big hosts).
    #[arg(long)]
    pub no_vcpu_label: bool,
    /// How long a VM that exited stays on /metrics (so its final counts get scraped).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub grace: Duration,
    /// With --detail: how many keys (ports, addresses, MSRs, leaves, hypercalls) of each VM
    /// get a series of their own; the rest are summed per reason under key="other".
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub detail_top: usize,
    #[command(flatten)]
    pub hooks: HookArgs,
    #[command(flatten)]
    pub bpf_stats: BpfStatsArgs,
}

#[derive(Args)]
pub struct FuncsArgs {
    /// Functions to judge, one name per line (`#` comments); default: the built-in
    /// catalogue of KVM's arch/x86/kvm/x86.c.
    #[arg(long, value_name = "FILE")]
    pub catalogue: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(Args)]
pub struct ProbesArgs {
    #[command(flatten)]
    pub hooks: HookArgs,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[cfg(feature = "demo")]
#[derive(Args)]
pub struct DemoArgs {
    /// Data file to write.
    #[arg(short, long, default_value = "kvmprof-demo.data")]
    pub output: PathBuf,
    /// Number of vCPUs of the demo guest (1 to 64).
    #[arg(long, default_value_t = 2, value_parser = kvmprof_testvmm::cli::vcpus)]
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

#[cfg(feature = "demo")]
#[derive(Args)]
pub struct GuestArgs {
    /// Exits per round; unless given, those of the demo (see `cmd::demo::DEMO`).
    #[command(flatten)]
    pub workload: kvmprof_testvmm::cli::WorkloadArgs,
    /// Write the guest's exit counts (JSON) here instead of stdout.
    #[arg(long)]
    pub counts: Option<PathBuf>,
}

/// `30`, `30s`, `2m`, `1h`, `500ms`, at most a year (`kvmprof_common::duration`).
#[derive(Args)]
pub struct GenerateArgs {
    /// What to write: `man` (one page per command: kvmprof.1, kvmprof-record.1, ...) or
    /// `completions` (kvmprof.bash, _kvmprof for zsh, kvmprof.fish).
    #[arg(value_enum)]
    pub what: Generated,
    /// Directory to write into (created if missing).
    pub dir: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Generated {
    Man,
    Completions,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    duration::parse(s, duration::Bare::Secs).map_err(|e| e.to_string())
}

/// A [`parse_duration`] that repeats something, so it must be at least a millisecond.
pub fn parse_period(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(1) {
        return Err(format!("'{s}' is too short (at least 1ms)"));
    }
    Ok(d)
}

/// A `--func` name: a C identifier (what kallsyms and BTF can hold), so that a typo or a
/// path fails here in one line rather than as a missing symbol.
fn func_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!("'{s}' is not a kernel function name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_is_an_option_of_record_top_and_serve() {
        let cli = Cli::try_parse_from(["kvmprof", "top", "--detail"]).expect("parses");
        let Cmd::Top(top) = cli.cmd else {
            panic!("top")
        };
        assert!(top.hooks.detail());
        let cli = Cli::try_parse_from(["kvmprof", "serve", "--detail", "--detail-top", "3"])
            .expect("parses");
        let Cmd::Serve(serve) = cli.cmd else {
            panic!("serve")
        };
        assert!(serve.hooks.detail() && serve.detail_top == 3);
        let cli =
            Cli::try_parse_from(["kvmprof", "record", "--detail", "-p", "1"]).expect("parses");
        let Cmd::Record(rec) = cli.cmd else {
            panic!("record")
        };
        assert!(rec.hooks.detail());
    }

    #[test]
    fn durations_take_ms_s_m_h_or_bare_seconds() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn absurd_durations_are_errors_not_panics() {
        for s in [
            "99999999999999999999",
            "99999999999999999999h",
            "1e400",
            "8785h",
        ] {
            let e = parse_duration(s).unwrap_err();
            assert!(e.contains("too long") || e.contains("invalid"), "{s}: {e}");
        }
        assert_eq!(
            parse_duration("99999999999999999999").unwrap_err(),
            "duration '99999999999999999999' is too long (at most a year, 8784h)"
        );
        assert_eq!(parse_duration("8784h"), Ok(duration::MAX));
        for s in [".", "..", "1.2.3", "-1", "NaN", "inf"] {
            assert!(parse_duration(s).is_err(), "{s}");
        }
        assert_eq!(
            parse_period("0").unwrap_err(),
            "'0' is too short (at least 1ms)"
        );
        assert_eq!(parse_period("1ms"), Ok(Duration::from_millis(1)));
    }
}
