//! Developer and CI tasks for kvmprof, run as `cargo xtask <command>`.

mod bench;
mod check_device;
mod check_funcs;
mod checks;
mod deb;
mod setup;
mod test;
mod util;
mod vm;
mod vmtest;

use std::process::ExitCode;

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
    /// The full test suite as CI runs it: setup, fmt, clippy, cargo test, deb --check, then
    /// vmtest.
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
}

#[derive(clap::Args)]
struct VmtestArgs {
    /// Run this shell command in one VM (SVM 6.1 unless --backend/--kernel-series say
    /// otherwise) instead of the checks; output goes to the terminal (under Bochs once it has
    /// ended); $KVMPROF and $TESTVMM hold the paths of the release binaries there.
    #[arg(long, value_name = "CMD")]
    shell_cmd: Option<String>,
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
    /// User-space PIO exits per measured run (the ioeventfd workload makes 4x as many).
    #[arg(long, default_value_t = 200_000)]
    exits: u64,
    /// Alternating rounds; each cell is the median.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
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
            only: a.only,
            backend: a.backend,
            series: a.kernel_series,
            hooks: a.hooks,
            build: !a.no_build,
        }),
        Command::Bench(a) => bench::run(a.exits, a.rounds, !a.no_build).map(|()| 0),
    }
}
