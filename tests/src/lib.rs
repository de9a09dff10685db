//! Helpers for the integration tests in `tests/`: they drive the built `kvmprof` and
//! `kvmprof-testvmm` binaries against the running kernel, as a user would.
//!
//! Tests that need root and `/dev/kvm` call [`skip_without_kvm`] first: on a machine
//! without them they print why and return, rather than fail or pass silently.
pub mod metrics;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    thread::sleep,
    time::{Duration, Instant},
};

/// KVM_EXIT_* codes, as `--exits` lines carry them in `userspace_reason`.
pub const KVM_EXIT_IO: u64 = kvm_bindings::KVM_EXIT_IO as u64;
pub const KVM_EXIT_HLT: u64 = kvm_bindings::KVM_EXIT_HLT as u64;
pub const KVM_EXIT_MMIO: u64 = kvm_bindings::KVM_EXIT_MMIO as u64;

/// Where the test VMM's guest goes: as `u64`, the type kvmprof's JSON numbers read as.
pub const PIO_USER_PORT: u64 = kvmprof_testvmm::PIO_USER_PORT as u64;
pub const PIO_IN_PORT: u64 = kvmprof_testvmm::PIO_IN_PORT as u64;
pub const PIO_KERNEL_PORT_BASE: u64 = kvmprof_testvmm::PIO_KERNEL_PORT_BASE as u64;
pub const MMIO_ADDR: u64 = kvmprof_testvmm::MMIO_ADDR;
pub use kvmprof_testvmm::{PIO_DEVICE_PORTS, PIO_DONE_PORT, PIO_MIXED_IN_PORT, PIO_MIXED_OUT_PORT};

/// Test VMM flags for a workload with a known number of slow exits: the VMM takes 120 ms to
/// answer each `in` and microseconds for everything else, so exactly 2 vCPUs × 4 round trips
/// are over 40 ms (`--slow vmm=40ms`).
pub const SLOW_INS: [&str; 8] = [
    "--vcpus",
    "2",
    "--pio-user",
    "200",
    "--pio-in",
    "4",
    "--pio-in-delay",
    "120ms",
];

/// A built binary of this workspace (`cargo xtask test` builds them before testing).
pub fn bin(name: &str) -> PathBuf {
    // Test executables live in target/<profile>/deps; binaries one level up.
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace` first (`cargo xtask test` does)",
        path.display()
    );
    path
}

/// Returns the reason when root or `/dev/kvm` is missing, after printing it.
pub fn skip_without_kvm(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let why = if unsafe { libc::geteuid() } != 0 {
        Some("not root")
    } else if !Path::new("/dev/kvm").exists() {
        Some("no /dev/kvm")
    } else {
        None
    };
    match why {
        Some(w) => {
            eprintln!("skipped {test}: {w}");
            true
        }
        None => false,
    }
}

/// A fresh scratch directory for one test.
pub fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kvmprof-test-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

pub fn kvmprof(args: &[&str]) -> Output {
    Command::new(bin("kvmprof"))
        .args(args)
        .output()
        .expect("run kvmprof")
}

/// `kvmprof record [extra] -o DATA -- kvmprof-testvmm VMM_ARGS`, for the caller to set its
/// stdio and run or spawn. The test VMM's counts come out on its stdout: `record -- CMD`
/// passes the command's stdout through.
pub fn record_command(data: &Path, extra: &[&str], vmm_args: &[&str]) -> Command {
    let mut cmd = Command::new(bin("kvmprof"));
    cmd.arg("record")
        .args(extra)
        .arg("-o")
        .arg(data)
        .arg("--")
        .arg(bin("kvmprof-testvmm"))
        .args(vmm_args);
    cmd
}

/// Runs [`record_command`] to its end, which must succeed; returns the test VMM's own counts.
pub fn record_testvmm(data: &Path, extra: &[&str], vmm_args: &[&str]) -> serde_json::Value {
    let out = record_command(data, extra, vmm_args)
        .output()
        .expect("run kvmprof record");
    assert!(out.status.success(), "record failed: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("test VMM counts on stdout")
}

/// Stderr as text, for assertions and failure messages.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `kvmprof report --format json` of a data file.
pub fn report_json(data: &Path, by: &str) -> serde_json::Value {
    let o = kvmprof(&[
        "report",
        "-i",
        data.to_str().expect("utf-8 path"),
        "--by",
        by,
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "report failed: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("report JSON")
}

/// Polls `f` every 50 ms until it gives a value or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if t0.elapsed() > limit {
            return None;
        }
        sleep(Duration::from_millis(50));
    }
}

/// Polls `done` every 50 ms until it holds or `limit` passes; whether it held.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    wait_for(limit, || done().then_some(())).is_some()
}

/// The exits the test VMM's guest makes on purpose, from its counts (`total` or one entry
/// of `vcpus`): every kind but `other`, the exits hardware backends add (timers, ...).
pub fn made(counts: &serde_json::Value) -> u64 {
    [
        "pio_user",
        "pio_in",
        "pio_kernel",
        "mmio_user",
        "hlt",
        "pio_mixed_in",
        "pio_mixed_out",
        "pio_device",
        "done",
    ]
    .iter()
    .map(|k| {
        counts[*k]
            .as_u64()
            .unwrap_or_else(|| panic!("no {k} in {counts}"))
    })
    .sum()
}

/// Asserts a clean failure: non-zero exit, one line on stderr that contains `needle`, no panic.
pub fn assert_clean_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert!(!err.contains("panicked"), "panicked: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "expected one line, got: {err}"
    );
    assert!(err.contains(needle), "expected '{needle}' in: {err}");
}
