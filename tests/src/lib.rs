//! Helpers for the integration tests in `tests/`: they drive the built `kvmprof` and
//! `kvmprof-testvmm` binaries against the running kernel, as a user would.
//!
//! Tests that need root and `/dev/kvm` call [`skip_without_kvm`] first: on a machine
//! without them they print why and return, rather than fail or pass silently.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

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
