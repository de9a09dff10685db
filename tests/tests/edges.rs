//! A recording survives the edges: kvmprof killed mid-recording, a closed stderr, outputs
//! that are device nodes or symlinks, and the command it started.
use std::{
    io::{BufRead, BufReader},
    os::unix::fs::FileTypeExt,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use kvmprof_tests::{
    kvmprof, record_command, record_testvmm, report_json, scratch, skip_without_kvm, stderr,
    wait_until,
};
use serde_json::Value;

/// `kvmprof record -o DATA [extra] -- testvmm --forever` with the VMM's ready file.
fn record_forever(dir: &Path, extra: &[&str]) -> (Child, PathBuf, PathBuf) {
    let (data, ready) = (dir.join("k.data"), dir.join("ready.json"));
    let vmm_args = [
        "--vcpus",
        "1",
        "--pio-user",
        "100",
        "--rate",
        "1000",
        "--forever",
        "--ready-file",
        ready.to_str().unwrap(),
    ];
    let rec = record_command(&data, extra, &vmm_args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kvmprof record");
    (rec, data, ready)
}

/// The pid the test VMM wrote to its ready file.
fn vmm_pid(ready: &Path) -> u32 {
    assert!(
        wait_until(Duration::from_secs(30), || ready.exists()),
        "the test VMM never started"
    );
    let text = std::fs::read_to_string(ready).unwrap();
    let v: Value = serde_json::from_str(text.trim()).expect("ready JSON");
    v["pid"].as_u64().expect("pid") as u32
}

/// Kills the test VMM when the test ends, so a failing test leaves no `--forever` VMM.
struct Reap(u32);

impl Drop for Reap {
    fn drop(&mut self) {
        if running(self.0) {
            // SAFETY: kill(2) of the test VMM this test started (through kvmprof).
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
}

/// Running: it exists and is not a zombie.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next());
        !matches!(state, Some("Z" | "X"))
    })
}

fn sigkill(child: &mut Child) {
    // SAFETY: kill(2) of our own child, not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
}

fn checkpoints(data: &Path) -> usize {
    std::fs::read_to_string(data)
        .map(|t| t.matches("\n#[kvmprof-checkpoint] ").count())
        .unwrap_or(0)
}

#[test]
fn a_recording_killed_with_sigkill_leaves_a_file_report_reads_up_to_the_cut() {
    if skip_without_kvm("a_recording_killed_with_sigkill_leaves_a_file_report_reads_up_to_the_cut")
    {
        return;
    }
    let dir = scratch("sigkill");
    let exits = dir.join("exits.jsonl");
    let (mut rec, data, ready) = record_forever(&dir, &["--exits", exits.to_str().unwrap()]);
    let vmm = vmm_pid(&ready);
    let _reap = Reap(vmm);
    // Two whole intervals written, then kill -9 mid-recording.
    assert!(
        wait_until(Duration::from_secs(30), || checkpoints(&data) >= 2),
        "no interval written"
    );
    sigkill(&mut rec);

    let out = kvmprof(&["report", "-i", data.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.lines().count(), 1, "one warning line: {err}");
    assert!(err.contains("was cut after line"), "{err}");
    assert!(err.contains("reporting its first"), "{err}");
    let r = report_json(&data, "reason");
    let total = r["total_exits"].as_u64().unwrap();
    assert!(total > 0, "{r}");
    assert_eq!(r["lost"], 0);
    assert!(r["header"]["cut"]["kept_lines"].as_u64().is_some(), "{r}");
    assert!(r["duration_ns"].as_u64().unwrap() >= 1_000_000_000, "{r}");

    // --exits holds whole lines only, at least every exit of the data file.
    let text = std::fs::read_to_string(&exits).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'), "a cut line");
    for line in text.lines() {
        serde_json::from_str::<Value>(line).expect("a whole JSON line");
    }
    assert!(text.lines().count() as u64 >= total);
    // The VMM we started goes with us (parent-death signal).
    assert!(
        wait_until(Duration::from_secs(10), || !running(vmm)),
        "test VMM {vmm} outlived kvmprof"
    );
}

#[test]
fn the_command_started_by_record_dies_when_kvmprof_is_killed() {
    if skip_without_kvm("the_command_started_by_record_dies_when_kvmprof_is_killed") {
        return;
    }
    let dir = scratch("pdeathsig");
    let (mut rec, _, ready) = record_forever(&dir, &[]);
    let vmm = vmm_pid(&ready);
    let _reap = Reap(vmm);
    assert!(running(vmm));
    sigkill(&mut rec);
    let gone = wait_until(Duration::from_secs(10), || !running(vmm));
    assert!(gone, "test VMM {vmm} kept running after kill -9 of kvmprof");
}

#[test]
fn record_shows_how_its_command_ended() {
    if skip_without_kvm("record_shows_how_its_command_ended") {
        return;
    }
    let dir = scratch("status");
    let (mut rec, _, ready) = record_forever(&dir, &[]);
    let vmm = vmm_pid(&ready);
    let _reap = Reap(vmm);
    // Recording has begun once an interval is written (or, failing that, after 5 s).
    wait_until(Duration::from_secs(5), || {
        checkpoints(&dir.join("k.data")) >= 1
    });
    // SAFETY: kill(2) of the VMM kvmprof started for us.
    unsafe { libc::kill(vmm as i32, libc::SIGKILL) };
    if !wait_until(Duration::from_secs(20), || {
        rec.try_wait().is_ok_and(|s| s.is_some())
    }) {
        sigkill(&mut rec);
    }
    let out = rec.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "process {vmm} (kvmprof-testvmm) was killed by signal 9 after"
        )),
        "{err}"
    );

    let data = dir.join("ok.data");
    let out = record_command(&data, &[], &["--pio-user", "10"])
        .output()
        .expect("run kvmprof record");
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(") exited with status 0"), "{err}");
}

#[test]
fn a_closed_stderr_pipe_does_not_lose_the_recording() {
    if skip_without_kvm("a_closed_stderr_pipe_does_not_lose_the_recording") {
        return;
    }
    let dir = scratch("epipe");
    let data = dir.join("k.data");
    // `kvmprof record … 2>&1 | head -1`: read the first line, then close the pipe.
    let mut rec = record_command(&data, &[], &["--pio-user", "200", "--rate", "200"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kvmprof record");
    let mut first = String::new();
    let mut pipe = BufReader::new(rec.stderr.take().unwrap());
    pipe.read_line(&mut first).unwrap();
    assert!(first.contains("recording"), "{first}");
    drop(pipe);
    let status = rec.wait().unwrap();
    assert!(
        status.success(),
        "kvmprof failed on a closed stderr: {status}"
    );
    // Every `out` the guest made, plus its one HLT.
    assert_exits(&data, 201);
}

/// The report of `data` counts the `made` exits of the test VMM: exactly under PVM, where
/// only its exits are visible; at least as many on hardware backends, which add timers.
fn assert_exits(data: &Path, made: u64) {
    let r = report_json(data, "reason");
    let total = r["total_exits"].as_u64().expect("total_exits");
    if r["header"]["vendor"] == "pvm" {
        assert_eq!(total, made, "{r}");
    } else {
        assert!(total >= made, "{r}");
    }
}

fn mknod_null(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: mknod with a valid path; makes a /dev/null-like character device (1, 3).
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
    assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
}

fn is_char_device(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_char_device())
}

#[test]
fn a_device_node_survives_every_output_option_and_symlinks_are_followed() {
    if skip_without_kvm("a_device_node_survives_every_output_option_and_symlinks_are_followed") {
        return;
    }
    let dir = scratch("devnode");
    let dev = dir.join("null");
    mknod_null(&dev);
    let d = dev.to_str().unwrap();
    record_testvmm(&dev, &["--exits", d], &["--pio-user", "10"]);
    assert!(is_char_device(&dev), "record -o replaced the device node");

    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../kvmprof/tests/fixtures/ftrace/amd.txt"
    );
    let out = kvmprof(&["import-ftrace", fixture, "-o", d]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        is_char_device(&dev),
        "import-ftrace -o replaced the device node"
    );
    let out = kvmprof(&["flamegraph", "-i", fixture, "-o", d, "--folded", d]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        is_char_device(&dev),
        "flamegraph -o replaced the device node"
    );

    // A symlink is followed: the link stays, its target gets the data.
    let (real, link) = (dir.join("real.data"), dir.join("link.data"));
    std::fs::write(&real, "old").unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    record_testvmm(&link, &[], &["--pio-user", "10"]);
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_exits(&real, 11);
}

#[test]
fn an_output_in_a_missing_directory_fails_before_recording() {
    if skip_without_kvm("an_output_in_a_missing_directory_fails_before_recording") {
        return;
    }
    let dir = scratch("nodir");
    let data = dir.join("missing").join("k.data");
    let ready = dir.join("ready.json");
    let started = Instant::now();
    let out = record_command(
        &data,
        &[],
        &["--pio-user", "10", "--ready-file", ready.to_str().unwrap()],
    )
    .output()
    .expect("run kvmprof record");
    kvmprof_tests::assert_clean_error(&out, "does not exist");
    assert!(
        !ready.exists(),
        "the command ran before the output was checked"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}
