//! Bad input gets one clear line on stderr and a non-zero exit, never a panic.
use std::{os::unix::process::CommandExt, process::Command};

use kvmprof_tests::{assert_clean_error, bin, kvmprof, scratch};

#[test]
fn unknown_pid_is_a_clear_error() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped unknown_pid_is_a_clear_error: not root (preflight would answer first)");
        return;
    }
    assert_clean_error(
        &kvmprof(&["record", "--pid", "4194999"]),
        "no process with pid 4194999",
    );
}

#[test]
fn a_name_matching_nothing_is_a_clear_error() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped a_name_matching_nothing_is_a_clear_error: not root");
        return;
    }
    assert_clean_error(
        &kvmprof(&["record", "--pid", "no-such-vmm-xyz"]),
        "no running process matches",
    );
}

#[test]
fn recording_without_root_is_refused() {
    if unsafe { libc::geteuid() } != 0 {
        // Already unprivileged: the refusal is what we get directly.
        assert_clean_error(&kvmprof(&["record", "--pid", "1"]), "must run as root");
        return;
    }
    let out = Command::new(bin("kvmprof"))
        .args(["record", "--pid", "1"])
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run kvmprof as nobody");
    assert_clean_error(&out, "must run as root");
}

#[test]
fn a_missing_data_file_is_a_clear_error() {
    assert_clean_error(
        &kvmprof(&["report", "-i", "/nonexistent/kvmprof.data"]),
        "/nonexistent/kvmprof.data",
    );
}

#[test]
fn a_garbage_data_file_is_a_clear_error() {
    let f = scratch("garbage").join("g.data");
    std::fs::write(&f, "this is not a kvmprof data file\n\x00\x01\x02").unwrap();
    assert_clean_error(&kvmprof(&["report", "-i", f.to_str().unwrap()]), "g.data");
}

#[test]
fn an_unknown_duration_unit_is_a_clear_error() {
    let out = kvmprof(&["record", "--pid", "1", "--duration", "10x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid duration unit"));
}

/// A data file cut anywhere is reported as damaged, never read as a shorter recording.
#[test]
fn a_truncated_data_file_is_a_clear_error_wherever_it_is_cut() {
    let dir = scratch("truncated");
    let full = dir.join("full.data");
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../kvmprof/tests/fixtures/ftrace/amd.txt"
    );
    let out = kvmprof(&["import-ftrace", fixture, "-o", full.to_str().unwrap()]);
    assert!(out.status.success(), "{}", kvmprof_tests::stderr(&out));
    let bytes = std::fs::read(&full).unwrap();
    let cut = dir.join("cut.data");
    let step = (bytes.len() / 40).max(1);
    for len in (0..bytes.len()).step_by(step) {
        std::fs::write(&cut, &bytes[..len]).unwrap();
        assert_clean_error(
            &kvmprof(&["report", "-i", cut.to_str().unwrap()]),
            "cut.data",
        );
    }
    let ok = kvmprof(&["report", "-i", full.to_str().unwrap()]);
    assert!(ok.status.success());
}

/// Recording a process that runs no vCPU says so, instead of leaving an empty report.
#[test]
fn recording_a_process_that_runs_no_vcpu_is_an_error_not_an_empty_report() {
    if kvmprof_tests::skip_without_kvm(
        "recording_a_process_that_runs_no_vcpu_is_an_error_not_an_empty_report",
    ) {
        return;
    }
    let mut sleeper = Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("start sleep");
    let data = scratch("novcpu").join("k.data");
    let out = kvmprof(&[
        "record",
        "--pid",
        &sleeper.id().to_string(),
        "--duration",
        "1s",
        "-o",
        data.to_str().unwrap(),
    ]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let err = kvmprof_tests::stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("no VM exits recorded from"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
