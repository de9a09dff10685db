//! The edges of a live recording: attached to a VMM that is already running and stopped by
//! `--duration` or SIGINT, the recording holds exactly the exits that began and ended inside
//! the window its header states, and nothing outside it (docs/design.md, "The window").
//!
//! The test VMM logs every KVM_RUN call with CLOCK_MONOTONIC times (`--exit-log`), the
//! clock of the window in the data file, so the exits surely inside the window can be
//! counted; an exit straddling an edge is ambiguous (at most one per vCPU and edge).
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use kvmprof_tests::{
    assert_clean_error, bin, kvmprof, report_json, scratch, skip_without_kvm, KVM_EXIT_HLT,
    KVM_EXIT_IO, PIO_USER_PORT,
};
use serde_json::Value;

/// A test VMM running `--forever`.
struct RunningVmm {
    child: Child,
    log: PathBuf,
}

impl RunningVmm {
    /// Each round one `out` to the VMM and one `hlt`, paced at `rate` exits/s per vCPU.
    fn paced(dir: &Path, vcpus: u32, rate: u64) -> RunningVmm {
        let (vcpus, rate) = (vcpus.to_string(), rate.to_string());
        RunningVmm::start(
            dir,
            &["--vcpus", &vcpus, "--pio-user", "1", "--rate", &rate],
        )
    }

    fn start(dir: &Path, workload: &[&str]) -> RunningVmm {
        let (log, ready) = (dir.join("exits.log"), dir.join("ready.json"));
        let child = Command::new(bin("kvmprof-testvmm"))
            .args(workload)
            .arg("--forever")
            .arg("--exit-log")
            .arg(&log)
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::null())
            .spawn()
            .expect("start the test VMM");
        let t0 = Instant::now();
        while !ready.exists() {
            assert!(t0.elapsed() < Duration::from_secs(10), "test VMM not ready");
            sleep(Duration::from_millis(10));
        }
        // Well under way before kvmprof attaches.
        sleep(Duration::from_millis(300));
        RunningVmm { child, log }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Stops the VMM and returns its KVM_RUN calls: (call_ns, return_ns, outcome).
    fn stop(mut self) -> Vec<(u64, u64, String)> {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("wait for the test VMM");
        assert!(status.success(), "test VMM failed: {status}");
        std::fs::read_to_string(&self.log)
            .expect("exit log")
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                    f[3].to_owned(),
                )
            })
            .collect()
    }
}

/// Guest exits of the log surely inside `[start, end)`, and those straddling an edge.
fn sure_and_ambiguous(calls: &[(u64, u64, String)], start: u64, end: u64) -> (u64, u64) {
    let (mut sure, mut ambiguous) = (0, 0);
    for (call, ret, outcome) in calls {
        if outcome == "interrupted" {
            continue;
        }
        assert!(
            outcome == "pio_user" || outcome == "hlt",
            "test VMM off script: {outcome}"
        );
        if *call >= start && *ret < end {
            sure += 1;
        } else if *ret >= start && *call < end {
            ambiguous += 1;
        }
    }
    (sure, ambiguous)
}

/// The window a data file states, on CLOCK_MONOTONIC: (start, end).
fn window(r: &Value) -> (u64, u64) {
    let h = &r["header"];
    let start = h["start_ts_ns"].as_u64().expect("start_ts_ns");
    (
        start,
        start + h["duration_ns"].as_u64().expect("duration_ns"),
    )
}

/// No measured stage of any group is longer than the window.
fn assert_no_stage_exceeds(r: &Value) {
    let (start, end) = window(r);
    for g in r["groups"].as_array().expect("groups") {
        for s in g["stages"].as_array().expect("stages") {
            let max = s["max_ns"].as_u64().expect("max_ns");
            assert!(
                max <= end - start,
                "{} of {} lasted {max} ns, longer than the {} ns window",
                s["stage"],
                g["label"],
                end - start
            );
        }
    }
}

/// Checks a recording of [`RunningVmm`] against its exit log.
fn assert_exactly_the_window(data: &Path, calls: &[(u64, u64, String)]) {
    let r = report_json(data, "reason");
    let (start, end) = window(&r);
    let count = r["total_exits"].as_u64().expect("total_exits");
    let (sure, ambiguous) = sure_and_ambiguous(calls, start, end);
    assert!(
        sure <= count && count <= sure + ambiguous,
        "kvmprof counted {count} exits; the VMM made {sure} inside the stated window \
         (+{ambiguous} straddling an edge)"
    );
    assert!(sure > 0, "nothing happened in the window");
    for g in r["groups"].as_array().expect("groups") {
        let reason = &g["reason"];
        assert_eq!(reason["space"], "userspace", "exit of another reason: {g}");
        let code = reason["code"].as_u64();
        assert!(
            code == Some(KVM_EXIT_IO) || code == Some(KVM_EXIT_HLT),
            "exit of another reason: {g}"
        );
        assert_eq!(g["userspace"], g["count"], "phantom in-kernel exits: {g}");
    }
    for p in r["ports"].as_array().expect("ports") {
        assert_eq!(
            (&p["addr"], &p["write"]),
            (&Value::from(PIO_USER_PORT), &Value::from(true))
        );
    }
    assert_no_stage_exceeds(&r);
    assert_eq!(r["lost"], 0);
}

#[test]
fn attached_and_stopped_by_duration_records_exactly_the_exits_of_the_window() {
    if skip_without_kvm("attached_and_stopped_by_duration_records_exactly_the_exits_of_the_window")
    {
        return;
    }
    let dir = scratch("window-duration");
    let vmm = RunningVmm::paced(&dir, 2, 1000);
    let data = dir.join("k.data");
    let o = kvmprof(&[
        "record",
        "--pid",
        &vmm.pid(),
        "--duration",
        "1s",
        "-o",
        data.to_str().unwrap(),
    ]);
    let calls = vmm.stop();
    assert!(o.status.success(), "{}", kvmprof_tests::stderr(&o));
    assert_exactly_the_window(&data, &calls);
    let r = report_json(&data, "reason");
    assert_eq!(
        r["header"]["duration_ns"], 1_000_000_000,
        "the stated window"
    );
}

#[test]
fn attached_and_stopped_by_sigint_records_exactly_the_exits_of_the_window() {
    if skip_without_kvm("attached_and_stopped_by_sigint_records_exactly_the_exits_of_the_window") {
        return;
    }
    let dir = scratch("window-sigint");
    let vmm = RunningVmm::paced(&dir, 2, 1000);
    let data = dir.join("k.data");
    let mut rec = Command::new(bin("kvmprof"))
        .args(["record", "--pid", &vmm.pid(), "-o", data.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kvmprof");
    let mut err = BufReader::new(rec.stderr.take().expect("stderr"));
    let mut line = String::new();
    err.read_line(&mut line).expect("kvmprof stderr");
    assert!(line.contains("recording"), "{line}");
    sleep(Duration::from_millis(800));
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(rec.id() as i32, libc::SIGINT) };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).expect("kvmprof stderr");
    let status = rec.wait().expect("wait for kvmprof");
    let calls = vmm.stop();
    assert!(status.success(), "{line}{rest}");
    assert!(rest.contains("SIGINT"), "{rest}");
    assert_exactly_the_window(&data, &calls);
}

#[test]
fn a_zero_duration_is_refused_and_a_tiny_one_records_only_its_window() {
    if skip_without_kvm("a_zero_duration_is_refused_and_a_tiny_one_records_only_its_window") {
        return;
    }
    let dir = scratch("window-tiny");
    let vmm = RunningVmm::paced(&dir, 1, 2000);
    let data = dir.join("k.data");
    let zero = kvmprof(&["record", "--pid", &vmm.pid(), "-d", "0", "-o", "/dev/null"]);
    let tiny = kvmprof(&[
        "record",
        "--pid",
        &vmm.pid(),
        "-d",
        "20ms",
        "-o",
        data.to_str().unwrap(),
    ]);
    let calls = vmm.stop();
    assert_clean_error(&zero, "--duration 0");
    assert!(tiny.status.success(), "{}", kvmprof_tests::stderr(&tiny));
    let r = report_json(&data, "reason");
    assert_eq!(r["header"]["duration_ns"], 20_000_000);
    assert_exactly_the_window(&data, &calls);
}

#[test]
fn an_exit_under_way_at_the_start_is_counted_apart_never_timed_from_zero() {
    if skip_without_kvm("an_exit_under_way_at_the_start_is_counted_apart_never_timed_from_zero") {
        return;
    }
    let dir = scratch("window-midrun");
    // One round of in-kernel (ioeventfd) exits lasting minutes: the vCPU thread is inside
    // KVM_RUN, mid-exit, whenever kvmprof attaches.
    let vmm = RunningVmm::start(&dir, &["--vcpus", "1", "--pio-kernel", "4000000000"]);
    let data = dir.join("k.data");
    let o = kvmprof(&[
        "record",
        "--pid",
        &vmm.pid(),
        "-d",
        "500ms",
        "-o",
        data.to_str().unwrap(),
    ]);
    vmm.stop();
    assert!(o.status.success(), "{}", kvmprof_tests::stderr(&o));
    let r = report_json(&data, "vcpu");
    assert_no_stage_exceeds(&r);
    assert_eq!(
        r["header"]["unobserved"], 1,
        "the one exit under way when the window opened"
    );
    let groups = r["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 1, "every exit has its vCPU: {groups:?}");
    assert_eq!(groups[0]["vcpu"], 0);
}

#[test]
fn attached_to_a_running_qemu_no_stage_outlasts_the_window() {
    if skip_without_kvm("attached_to_a_running_qemu_no_stage_outlasts_the_window") {
        return;
    }
    // A boot sector that never stops writing to port 0x80 with a spin loop in between: the
    // vCPU is inside KVM_RUN when kvmprof attaches, and exits go on in the window (an idle
    // SeaBIOS makes no exit that PVM shows).
    let dir = scratch("window-qemu");
    let boot = dir.join("boot.img");
    let debugcon = dir.join("debugcon");
    let code = [
        // First a byte on QEMU's debug console (port 0xe9): the boot sector runs. SeaBIOS
        // takes seconds to get there, without an exit PVM shows (booted from a floppy, it
        // gave up on a loaded host and never ran it; from the IDE disk it does in ~3 s).
        0xb0, 0x6b, // mov al, 'k'
        0xe6, 0xe9, // out 0xe9, al
        0xba, 0x80, 0x00, // mov dx, 0x80
        0xee, // l: out dx, al
        0xb9, 0xff, 0xff, // mov cx, 0xffff
        0xe2, 0xfe, // d: loop d
        0xeb, 0xf8, // jmp l
    ];
    let mut sector = code.to_vec();
    sector.resize(510, 0);
    sector.extend([0x55, 0xaa]);
    std::fs::write(&boot, sector).expect("write boot sector");
    let Ok(mut qemu) = Command::new("qemu-system-x86_64")
        .args([
            "-accel", "kvm", "-cpu", "qemu64", "-m", "128", "-display", "none",
        ])
        .args([
            "-serial",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
            "-drive",
        ])
        .arg(format!("file={},format=raw,if=ide", boot.display()))
        .arg("-debugcon")
        .arg(format!("file:{}", debugcon.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        eprintln!("skipped attached_to_a_running_qemu_no_stage_outlasts_the_window: qemu-system-x86_64 not installed");
        return;
    };
    let running = kvmprof_tests::wait_until(Duration::from_secs(60), || {
        std::fs::metadata(&debugcon).is_ok_and(|m| m.len() > 0)
    });
    assert!(running, "the boot sector never ran");
    // Well inside its loop, and the vCPU inside KVM_RUN, when kvmprof attaches.
    sleep(Duration::from_millis(500));
    let data = dir.join("q.data");
    let o = kvmprof(&[
        "record",
        "--pid",
        &qemu.id().to_string(),
        "--duration",
        "2s",
        "-o",
        data.to_str().unwrap(),
    ]);
    let _ = qemu.kill();
    let _ = qemu.wait();
    assert!(o.status.success(), "{}", kvmprof_tests::stderr(&o));
    let r = report_json(&data, "reason");
    assert!(r["total_exits"].as_u64() > Some(0), "{r}");
    assert_no_stage_exceeds(&r);
    assert!(
        r["header"]["unobserved"].as_u64().is_some(),
        "the header counts the exits under way at the start: {}",
        r["header"]
    );
}
