//! Developer and CI tasks for kvmprof, run as `cargo xtask <command>`.

mod bench;
mod bench_vmx;
mod check_detail;
mod check_device;
mod check_func;
mod check_funcs;
mod check_halts;
mod check_hypercall_abi;
mod check_serve_detail;
mod checks;
mod deb;
mod setup;
mod soak;
mod test;
mod util;
mod vm;
mod vmtest;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Developer and CI tasks for kvmprof")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the build and the tests need (Debian packages, the SVM kernel, nightly
    /// rust-src, bpf-linker, virtme-ng) and mount tracefs; does nothing when all is there.
    Setup,
    /// The full test suite as CI runs it: setup, fmt, clippy, cargo test, deb --check, soak
    /// (small), then vmtest.
    Test,
    /// Set up, build kvmprof and run it: `kvmprof demo` without arguments, else the given
    /// kvmprof command (`cargo xtask run -- record --pid qemu`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the .deb (target/debian/) with cargo-deb, installing cargo-deb if missing.
    Deb {
        /// Then install it with dpkg, check the binary, man pages, completions and systemd
        /// unit as installed, and remove it (needs root; skipped otherwise).
        #[arg(long)]
        check: bool,
    },
    /// The platform matrix: boot the newest Debian 6.1 and 6.12 kernels with AMD SVM (QEMU
    /// TCG) and with Intel VMX (Bochs), and run the checks there, kvmprof's with each hook mode.
    Vmtest(VmtestArgs),
    /// Compare guest exit rates of the test VMM alone, under kvmprof and under bpftrace.
    Bench(BenchArgs),
    /// One `kvmprof serve` while many short-lived VMMs (test VMMs of 1-8 vCPUs with busy MMIO
    /// ranges, QEMU SeaBIOS boots) come and go; checks every exit served exactly and memory
    /// flat, and prints the memory curve.
    Soak(SoakArgs),
}

#[derive(clap::Args)]
struct SoakArgs {
    /// VMMs in all.
    #[arg(long, default_value_t = 2000)]
    vmms: usize,
    /// VMMs running at once.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Every Nth VMM is a QEMU SeaBIOS boot (0: none).
    #[arg(long, default_value_t = 25)]
    qemu_every: usize,
    /// Print serve's memory every this many VMMs; the level after the first such round is
    /// the one the end is held to (within 10 %).
    #[arg(long, default_value_t = 100)]
    checkpoint: usize,
    /// Use the release binaries as they are instead of building them first.
    #[arg(long)]
    no_build: bool,
}

#[derive(clap::Args)]
struct VmtestArgs {
    /// Run this shell command in one VM (SVM 6.1 unless --backend/--kernel-series say
    /// otherwise) instead of the checks; output goes to the terminal (under Bochs once it has
    /// ended); $KVMPROF and $TESTVMM hold the paths of the release binaries there.
    #[arg(long, value_name = "CMD")]
    shell_cmd: Option<String>,
    /// With --shell-cmd in the SVM VM: QEMU runs the guest's clock on emulated instructions
    /// (`-icount shift=0,sleep=off`: one instruction a nanosecond, idle time skipped), so
    /// guest-clock times are instruction counts, deterministic as in Bochs.
    #[arg(long, requires = "shell_cmd")]
    icount: bool,
    /// Run only the checks whose name contains this text (repeatable).
    #[arg(long, value_name = "TEXT")]
    only: Vec<String>,
    /// Boot only this backend: svm (QEMU TCG) or vmx (Bochs) [default: both].
    #[arg(long, value_enum)]
    backend: Option<vm::Backend>,
    /// Boot only this kernel series (the newest of it apt offers) [default: 6.1 and 6.12].
    #[arg(long, value_enum)]
    kernel_series: Option<vm::Series>,
    /// Run kvmprof's checks with only this hook mode [default: auto and kprobe].
    #[arg(long, value_enum)]
    hooks: Option<checks::Hooks>,
    /// Use the release binaries as they are instead of building them first.
    #[arg(long)]
    no_build: bool,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Exits per measured run [default: 200000 user-space PIO exits, the ioeventfd workload
    /// 4x as many; with --vmx 20000 of each]
    #[arg(long)]
    exits: Option<u64>,
    /// Alternating rounds; each cell is the median [default: 7; with --vmx 3, as its figures
    /// repeat to a few instructions]
    #[arg(long)]
    rounds: Option<usize>,
    /// Intel VMX in Bochs instead (kernel 6.1): emulated instructions per exit, alone, under
    /// kvmprof (default and kprobe hooks) and under `perf kvm stat record`, and kvmprof idle.
    #[arg(long)]
    vmx: bool,
    /// With --vmx: also measure this kvmprof binary's default `record` (the code before a change).
    #[arg(long, value_name = "PATH", requires = "vmx")]
    before: Option<PathBuf>,
    /// With --vmx: the script that boots Bochs [default: $VMX_BOCHS, else
    /// /work/shared/tools/vmx-bochs.sh]
    #[arg(long, value_name = "PATH", requires = "vmx")]
    bochs_script: Option<PathBuf>,
    /// With --vmx: only these modes, space-separated, of alone, default, stages (`--stages`),
    /// kprobe (`--hooks kprobe`), perf, before [default: all]
    #[arg(long, value_name = "LIST", requires = "vmx")]
    modes: Option<String>,
    /// With --vmx: skip the `--bpf-stats on` recordings (programs per exit)
    #[arg(long, requires = "vmx")]
    no_stats: bool,
    /// Use the release binaries as they are instead of building them first.
    #[arg(long)]
    no_build: bool,
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command and returns the exit code. A non-zero `Ok` means it ran and reported its
/// own failures (failed checks), so `main` adds no message after the summary line.
fn run(command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Setup => setup::run().map(|()| 0),
        Command::Test => test::run_all(),
        Command::Run { args } => test::run_kvmprof(&args),
        Command::Deb { check } => deb::run(check),
        Command::Vmtest(a) => vmtest::run(&vmtest::Options {
            shell_cmd: a.shell_cmd,
            icount: a.icount,
            only: a.only,
            backend: a.backend,
            series: a.kernel_series,
            hooks: a.hooks,
            build: !a.no_build,
        }),
        Command::Bench(a) if a.vmx => bench_vmx::run(&bench_vmx::Options {
            rounds: a.rounds.unwrap_or(3),
            exits: a.exits.unwrap_or(20_000),
            build: !a.no_build,
            before: a.before,
            bochs_script: a
                .bochs_script
                .unwrap_or_else(bench_vmx::default_bochs_script),
            modes: a.modes,
            stats: !a.no_stats,
        })
        .map(|()| 0),
        Command::Soak(a) => soak::run(&soak::Options {
            vmms: a.vmms,
            parallel: a.parallel,
            qemu_every: a.qemu_every,
            checkpoint: a.checkpoint,
            build: !a.no_build,
        }),
        Command::Bench(a) => bench::run(
            a.exits.unwrap_or(200_000),
            a.rounds.unwrap_or(7),
            !a.no_build,
        )
        .map(|()| 0),
    }
}
