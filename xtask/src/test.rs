//! `cargo xtask test`: everything CI runs, in order of cost, stopping at the first failure.

use anyhow::Result;

use crate::util::{cargo, run};
use crate::vmtest;

/// Returns the exit code for xtask (vmtest's, once the cargo steps passed).
pub fn run_all() -> Result<u8> {
    // The eBPF crate is not a default member: it builds only for the BPF target (through
    // kvmprof's build.rs), so these commands cover the default members, not `--workspace`.
    // The integration tests in `tests/` run the built `kvmprof` and `kvmprof-testvmm`
    // binaries, which `cargo test` does not build for another package: `cargo build` does.
    for args in [
        &["fmt", "--all", "--check"][..],
        &["clippy", "--all-targets", "--", "-D", "warnings"],
        &["build", "--bins"],
        &["test"],
    ] {
        println!("== cargo {}", args.join(" "));
        run(cargo().args(args))?;
    }
    println!("== cargo xtask vmtest");
    vmtest::run(&vmtest::Options {
        shell_cmd: None,
        only: Vec::new(),
        kernel: None,
        build: true,
    })
}
