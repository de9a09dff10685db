//! `cargo xtask test`: everything CI runs, in order of cost, stopping at the first failure;
//! (between the cargo tests and vmtest, the package is built, installed, checked and removed,
//! and the soak runs at its small size);
//! `cargo xtask run`: build kvmprof and run it (the demo guest when no arguments are given).

use anyhow::Result;

use crate::util::{cargo, run};
use crate::vmtest;

/// Returns the exit code for xtask (vmtest's, once the cargo steps passed).
pub fn run_all() -> Result<u8> {
    // Installs whatever a fresh machine lacks; prints only "ok" lines when all is there.
    crate::setup::run()?;
    // The eBPF crate is not a default member: it builds only for the BPF target (through
    // kvmprof's build.rs), so these commands cover the default members, not `--workspace`.
    // The integration tests in `tests/` run the built `kvmprof` and `kvmprof-testvmm`
    // binaries, which `cargo test` does not build for another package: `cargo build` does.
    for args in [
        &["fmt", "--all", "--check"][..],
        // --workspace also lints the eBPF crate, which type-checks on the host.
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        // Without the demo guest (a build for hosts that never run it): code only the demo
        // used must not linger there either.
        &[
            "clippy",
            "-p",
            "kvmprof",
            "--no-default-features",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &["build", "--bins"],
        &["test"],
        // The eBPF exit state machine's unit tests run on the host (not a default member).
        &["test", "-p", "kvmprof-ebpf"],
    ] {
        println!("== cargo {}", args.join(" "));
        run(cargo().args(args))?;
    }
    println!("== cargo xtask deb --check");
    crate::deb::run(true)?;
    // The soak's small size (~1.5 min): the full one (2000 VMMs) is a benchmark.
    println!("== cargo xtask soak --vmms 120 --checkpoint 40");
    let soak = crate::soak::run(&crate::soak::Options {
        vmms: 120,
        parallel: 4,
        qemu_every: 25,
        checkpoint: 40,
        build: true,
    })?;
    if soak != 0 {
        return Ok(soak);
    }
    println!("== cargo xtask vmtest");
    vmtest::run(&vmtest::Options {
        shell_cmd: None,
        icount: false,
        only: Vec::new(),
        backend: None,
        series: None,
        hooks: None,
        build: true,
    })
}

/// Builds kvmprof (release) and runs it with `args`, or `demo` without any; kvmprof needs
/// root, which `cargo xtask` already has on the machines this project runs on.
pub fn run_kvmprof(args: &[String]) -> Result<u8> {
    crate::setup::run()?;
    run(cargo().args(["build", "--release", "-p", "kvmprof"]))?;
    let exe = crate::util::target_dir().join("release/kvmprof");
    let args: Vec<String> = if args.is_empty() {
        vec!["demo".into()]
    } else {
        args.to_vec()
    };
    let status = std::process::Command::new(&exe).args(&args).status()?;
    Ok(status.code().unwrap_or(1).clamp(0, 255) as u8)
}
