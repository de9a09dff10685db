//! `kvmprof record` against real guests of the test VMM on this kernel: every exit the
//! guest causes must be reported, exactly, with its reason, vCPU, port and latencies.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read},
    process::{Command, Stdio},
    thread::sleep,
    time::Duration,
};

use kvmprof_tests::{
    bin, kvmprof, made, report_json, scratch, skip_without_kvm, stderr, wait_until, KVM_EXIT_HLT,
    KVM_EXIT_IO, KVM_EXIT_MMIO, MMIO_ADDR, PIO_DEVICE_PORTS, PIO_DONE_PORT, PIO_IN_PORT,
    PIO_MIXED_IN_PORT, PIO_MIXED_OUT_PORT, PIO_USER_PORT,
};
use serde_json::Value;

/// Counts of one vCPU, tallied from `--exits` by what the test VMM does.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    pio_user: u64,
    pio_in: u64,
    pio_kernel: u64,
    mmio: u64,
    hlt: u64,
}

fn tally(exits_jsonl: &str, kernel_ports: &[u64]) -> BTreeMap<u64, Tally> {
    let mut by_vcpu: BTreeMap<u64, Tally> = BTreeMap::new();
    for line in exits_jsonl.lines() {
        let e: Value = serde_json::from_str(line).expect("exit JSON");
        let vcpu = e["vcpu"].as_u64().expect("every exit has a vCPU");
        let user = e["userspace_reason"].as_u64();
        let t = by_vcpu.entry(vcpu).or_default();
        assert_eq!(e["schema_version"], 2);
        if e["access"] == "pio" {
            let (port, write) = (e["port"].as_u64().unwrap(), e["write"].as_bool().unwrap());
            match (port, write, user) {
                (PIO_USER_PORT, true, Some(KVM_EXIT_IO)) => t.pio_user += 1,
                (PIO_IN_PORT, false, Some(KVM_EXIT_IO)) => t.pio_in += 1,
                (p, true, None) if kernel_ports.contains(&p) => t.pio_kernel += 1,
                _ => {}
            }
        } else if e["access"] == "mmio" {
            if e["gpa"] == MMIO_ADDR && e["write"] == true && user == Some(KVM_EXIT_MMIO) {
                t.mmio += 1;
            }
        } else if user == Some(KVM_EXIT_HLT) {
            t.hlt += 1;
        }
    }
    by_vcpu
}

#[test]
fn record_reports_every_exit_of_the_test_vmm_exactly() {
    if skip_without_kvm("record_reports_every_exit_of_the_test_vmm_exactly") {
        return;
    }
    let dir = scratch("exact");
    let (data, exits) = (dir.join("k.data"), dir.join("exits.jsonl"));
    let vmm = bin("kvmprof-testvmm");
    let out = Command::new(bin("kvmprof"))
        .args([
            "record",
            "-o",
            data.to_str().unwrap(),
            "--exits",
            exits.to_str().unwrap(),
            "--",
        ])
        .arg(&vmm)
        .args([
            "--vcpus",
            "2",
            "--pio-user",
            "1000",
            "--pio-kernel",
            "5000",
            "--mmio",
            "300",
            "--pio-in",
            "50",
        ])
        .output()
        .expect("run kvmprof record");
    assert!(out.status.success(), "record failed: {}", stderr(&out));
    let counts: Value = serde_json::from_slice(&out.stdout).expect("test VMM counts on stdout");
    let kernel_ports: Vec<u64> = counts["ports"]["pio_kernel"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();

    // Per vCPU and per kind, from the per-exit export.
    let seen = tally(&std::fs::read_to_string(&exits).unwrap(), &kernel_ports);
    for v in counts["vcpus"].as_array().unwrap() {
        let idx = v["index"].as_u64().unwrap();
        let want = Tally {
            pio_user: v["pio_user"].as_u64().unwrap(),
            pio_in: v["pio_in"].as_u64().unwrap(),
            pio_kernel: v["pio_kernel"].as_u64().unwrap(),
            mmio: v["mmio_user"].as_u64().unwrap(),
            hlt: v["hlt"].as_u64().unwrap(),
        };
        assert_eq!(
            want,
            Tally {
                pio_user: 1000,
                pio_in: 50,
                pio_kernel: 5000,
                mmio: 300,
                hlt: 1
            }
        );
        assert_eq!(seen.get(&idx), Some(&want), "vCPU {idx}");
    }

    // The report: per vCPU totals, no loss, sane latencies.
    let by_vcpu = report_json(&data, "vcpu");
    assert_eq!(by_vcpu["lost"], 0);
    let made = made(&counts["total"]);
    let reported = by_vcpu["total_exits"].as_u64().unwrap();
    if by_vcpu["header"]["vendor"] == "pvm" {
        // Under PVM only I/O and userspace exits are visible, and the guest makes no other.
        assert_eq!(reported, made);
    } else {
        // Hardware backends also show exits the guest does not cause on purpose (timers).
        assert!(reported >= made, "{reported} < {made}");
    }
    let duration = by_vcpu["duration_ns"].as_u64().unwrap();
    for g in by_vcpu["groups"].as_array().unwrap() {
        for s in g["stages"].as_array().unwrap() {
            let (p50, max) = (s["p50_ns"].as_u64().unwrap(), s["max_ns"].as_u64().unwrap());
            assert!(
                p50 > 0 && max >= p50 && max < duration,
                "{} {s}",
                g["label"]
            );
        }
    }

    // By reason: the userspace round trip is measured for every PIO exit that returned.
    let by_reason = report_json(&data, "reason");
    let groups = by_reason["groups"].as_array().unwrap();
    let io = groups
        .iter()
        .find(|g| {
            g["userspace"].as_u64().unwrap_or(0) >= 2100
                && g["label"].as_str().unwrap().contains("IO")
                || g["label"] == "io"
        })
        .unwrap_or_else(|| panic!("no IO row in {by_reason}"));
    let vmm = io["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "vmm")
        .expect("vmm stage");
    assert!(vmm["samples"].as_u64().unwrap() >= 2100);
}

#[test]
fn record_by_name_stops_when_the_process_exits_and_keeps_the_data() {
    if skip_without_kvm("record_by_name_stops_when_the_process_exits_and_keeps_the_data") {
        return;
    }
    let dir = scratch("exits");
    let data = dir.join("k.data");
    let mut vmm = Command::new(bin("kvmprof-testvmm"))
        .args([
            "--vcpus",
            "1",
            "--pio-user",
            "1",
            "--rate",
            "20",
            // Runs long enough for kvmprof to attach every hook on a loaded machine
            // (nothing counts before that), then exits.
            "--forever",
            "--duration",
            "10s",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("start test VMM");
    let out = kvmprof(&[
        "record",
        "--pid",
        &vmm.id().to_string(),
        "-o",
        data.to_str().unwrap(),
    ]);
    let _ = vmm.wait();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("exited after"), "{err}");
    let r = report_json(&data, "reason");
    assert!(r["total_exits"].as_u64().unwrap() >= 20, "{r}");
}

#[test]
fn ctrl_c_stops_recording_and_keeps_everything_recorded() {
    if skip_without_kvm("ctrl_c_stops_recording_and_keeps_everything_recorded") {
        return;
    }
    let dir = scratch("sigint");
    let data = dir.join("k.data");
    let mut rec = Command::new(bin("kvmprof"))
        .args(["record", "-o", data.to_str().unwrap(), "--"])
        .arg(bin("kvmprof-testvmm"))
        .args([
            "--vcpus",
            "1",
            "--pio-user",
            "100",
            "--rate",
            "200",
            "--forever",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kvmprof record");
    // The VMM runs once every hook is attached and kvmprof says "recording".
    let mut announced = String::new();
    let mut err = BufReader::new(rec.stderr.take().expect("kvmprof stderr"));
    err.read_line(&mut announced).expect("kvmprof stderr");
    sleep(Duration::from_secs(3));
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(rec.id() as i32, libc::SIGINT) };
    let mut rest = String::new();
    err.read_to_string(&mut rest).expect("kvmprof stderr");
    let status = rec.wait().unwrap();
    assert!(status.success(), "{announced}{rest}");
    assert!(rest.contains("SIGINT"), "{rest}");
    let r = report_json(&data, "reason");
    assert_eq!(r["lost"], 0);
    assert!(r["total_exits"].as_u64().unwrap() > 100, "{r}");
}

/// A VMM whose name the kernel cut inside a character (`comm` keeps 15 bytes: "vmm-", five
/// é and half of the sixth) is found by pid and by name, recorded, and shown lossily
/// (issue 19, item 2); before, its name failed to read as UTF-8 and the process was "gone".
#[test]
fn a_vmm_whose_name_is_cut_inside_a_character_is_recorded() {
    if skip_without_kvm("a_vmm_whose_name_is_cut_inside_a_character_is_recorded") {
        return;
    }
    let dir = scratch("utf8");
    let exe = dir.join("vmm-éééééééé");
    std::fs::copy(bin("kvmprof-testvmm"), &exe).expect("copy the test VMM");
    let mut vmm = Command::new(&exe)
        .args([
            "--vcpus",
            "1",
            "--pio-user",
            "1",
            "--rate",
            "50",
            "--forever",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("start test VMM");
    let pid = vmm.id().to_string();
    // spawn() returns once the kernel released the parent from vfork, which is before exec
    // renames the child: until then /proc shows the test thread's name.
    let comm = format!("/proc/{pid}/comm");
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read(&comm)
            .is_ok_and(|c| c.starts_with(b"vmm-"))),
        "the test VMM never took its name"
    );
    let record = |spec: &str, name: &str| {
        let data = dir.join(name);
        let out = kvmprof(&[
            "record",
            "--pid",
            spec,
            "-d",
            "2s",
            "-o",
            data.to_str().unwrap(),
        ]);
        (out, data)
    };
    let (by_pid, data) = record(&pid, "pid.data");
    let (by_name, _) = record("vmm-éé", "name.data");
    let _ = vmm.kill();
    let _ = vmm.wait();
    assert!(by_pid.status.success(), "{}", stderr(&by_pid));
    assert!(by_name.status.success(), "{}", stderr(&by_name));
    let r = report_json(&data, "pid");
    assert!(r["total_exits"].as_u64().unwrap() > 0, "{r}");
    let text = kvmprof(&["report", data.to_str().unwrap(), "--by", "pid"]);
    let text = String::from_utf8(text.stdout).expect("the report is UTF-8");
    assert!(
        text.contains(&format!("{pid} (vmm-ééééé\u{fffd})")),
        "{text}"
    );
}

/// `record -- WRAPPER VMM`: the VMM a shell or `timeout` starts as a child is followed from
/// its first exit and counted exactly, and kvmprof names it (issue 19, item 4). Before, only
/// the wrapper was traced: 0 exits, "it never ran a vCPU".
#[test]
fn record_follows_the_vmm_a_wrapper_starts() {
    if skip_without_kvm("record_follows_the_vmm_a_wrapper_starts") {
        return;
    }
    let dir = scratch("wrapper");
    let vmm = bin("kvmprof-testvmm");
    let args = "--vcpus 2 --pio-user 300 --pio-kernel 2000 --mmio 100 --pio-in 20";
    // `; exit $?` keeps the shell from exec'ing the VMM in its own place.
    let shell = format!("'{}' {args}; exit $?", vmm.display());
    let wrappers: [Vec<String>; 2] = [
        vec!["sh".into(), "-c".into(), shell],
        ["timeout", "20", vmm.to_str().unwrap()]
            .into_iter()
            .map(String::from)
            .chain(args.split(' ').map(String::from))
            .collect(),
    ];
    for (i, wrapper) in wrappers.iter().enumerate() {
        let data = dir.join(format!("w{i}.data"));
        let out = Command::new(bin("kvmprof"))
            .args(["record", "-o", data.to_str().unwrap(), "--"])
            .args(wrapper)
            .output()
            .expect("run kvmprof record");
        let err = stderr(&out);
        assert!(out.status.success(), "{wrapper:?}: {err}");
        // Named as kvmprof last saw them (every 20 ms): on a loaded host a VMM this short
        // may come and go unnamed, so only the note is required.
        assert!(
            err.contains("followed the processes the command started: "),
            "{wrapper:?}: {err}"
        );
        let counts: Value = serde_json::from_slice(&out.stdout).expect("test VMM counts");
        let r = report_json(&data, "reason");
        assert_eq!(r["lost"], 0);
        let reported = r["total_exits"].as_u64().unwrap();
        let made = made(&counts["total"]);
        if r["header"]["vendor"] == "pvm" {
            assert_eq!(reported, made, "{wrapper:?}");
        } else {
            assert!(reported >= made, "{wrapper:?}: {reported} < {made}");
        }
    }
}

/// `record -d 1ms`: a window that short usually holds no exit of a VMM that runs; kvmprof
/// says so, not that the VMM "never ran a vCPU" (issue 19, item 7).
#[test]
fn a_window_too_short_for_an_exit_is_called_that() {
    if skip_without_kvm("a_window_too_short_for_an_exit_is_called_that") {
        return;
    }
    let dir = scratch("short");
    let out = kvmprof_tests::record_command(
        &dir.join("k.data"),
        &["-d", "1ms"],
        &[
            "--vcpus",
            "1",
            "--pio-user",
            "1",
            "--rate",
            "10",
            "--forever",
        ],
    )
    .output()
    .expect("run kvmprof record");
    let err = stderr(&out);
    if !out.status.success() {
        assert!(
            err.contains("began and ended in the 1.00ms window: a window that short"),
            "{err}"
        );
    }
    assert!(!err.contains("never ran"), "{err}");
}

/// A KVM_RUN that a signal interrupts returns EINTR, not an exit reason: it is named so
/// ("interrupted by a signal"), its errno kept in `--exits`, and there are as many as the
/// test VMM saw (issue 19, item 7; before, they showed as KVM_EXIT_UNKNOWN). The test VMM
/// stops its vCPUs at `--duration` by signalling their threads, mostly inside KVM_RUN.
#[test]
fn a_kvm_run_interrupted_by_a_signal_is_named_and_keeps_its_errno() {
    if skip_without_kvm("a_kvm_run_interrupted_by_a_signal_is_named_and_keeps_its_errno") {
        return;
    }
    let dir = scratch("eintr");
    let (data, exits, log) = (
        dir.join("k.data"),
        dir.join("exits.jsonl"),
        dir.join("run.log"),
    );
    let out = kvmprof_tests::record_command(
        &data,
        &["--exits", exits.to_str().unwrap()],
        &[
            "--vcpus",
            "2",
            "--pio-kernel",
            "100000",
            "--forever",
            "--duration",
            "1s",
            "--exit-log",
            log.to_str().unwrap(),
        ],
    )
    .output()
    .expect("run kvmprof record");
    assert!(out.status.success(), "{}", stderr(&out));
    let interrupted = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| l.ends_with(" interrupted"))
        .count();
    // The test VMM's "interrupted" is what KVM_RUN reports for its kick: EINTR (or EAGAIN),
    // or a return with KVM_EXIT_INTR (10). Those that carry EINTR must be named so.
    let lines = std::fs::read_to_string(&exits).unwrap();
    let kicked: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["errno"] == -4 || e["errno"] == -11 || e["userspace_reason"] == 10)
        .collect();
    assert!(
        interrupted >= 1,
        "the test VMM's vCPUs were never interrupted"
    );
    let report = String::from_utf8(kvmprof(&["report", data.to_str().unwrap()]).stdout).unwrap();
    let calls = std::fs::read_to_string(&log).unwrap();
    let calls: Vec<&str> = calls.lines().collect();
    // On a mismatch: kvmprof's side, then the VMM's KVM_RUN calls (vCPU, call, return, outcome).
    assert_eq!(
        kicked.len(),
        interrupted,
        "{kicked:?}\n{}\n{report}\n{calls:?}",
        stderr(&out)
    );
    let named: Vec<&Value> = kicked.iter().filter(|e| e["errno"] == -4).collect();
    assert!(!named.is_empty(), "no EINTR among {kicked:?}");
    for e in &named {
        assert_eq!(
            e["reason"]["name"], "interrupted by a signal (EINTR)",
            "{e}"
        );
        assert_eq!(e["reason"]["space"], "errno", "{e}");
    }
    assert!(
        report.contains("interrupted by a signal (EINTR)"),
        "{report}"
    );
    assert!(!report.contains("KVM_EXIT_UNKNOWN"), "{report}");
}

/// A steady VMM gives a steady time series: the partial first and last intervals are divided
/// by the part of them the window covers, none starts at the window's end, and an interval
/// shorter than the 100 ms tally read is refused (issue 19, item 6; before, 28.5k → 83.9k →
/// 79.9k → 46.6k for a steady 80k/s).
#[test]
fn a_steady_vmm_gives_a_steady_time_series() {
    if skip_without_kvm("a_steady_vmm_gives_a_steady_time_series") {
        return;
    }
    let dir = scratch("series");
    let data = dir.join("k.data");
    let o = kvmprof(&["record", "--interval", "10ms", "--pid", "1"]);
    assert!(
        stderr(&o).contains("--interval 10.0ms is not a multiple of the 100ms"),
        "{}",
        stderr(&o)
    );
    let mut vmm = Command::new(bin("kvmprof-testvmm"))
        .args([
            "--vcpus",
            "1",
            "--pio-user",
            "1",
            "--rate",
            "2000",
            "--forever",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("start test VMM");
    let out = kvmprof(&[
        "record",
        "--pid",
        &vmm.id().to_string(),
        "-d",
        "3.5s",
        "-o",
        data.to_str().unwrap(),
    ]);
    let _ = vmm.kill();
    let _ = vmm.wait();
    assert!(out.status.success(), "{}", stderr(&out));
    let o = kvmprof(&[
        "report",
        data.to_str().unwrap(),
        "--intervals",
        "--format",
        "json",
    ]);
    let r: Value = serde_json::from_slice(&o.stdout).expect("report JSON");
    let duration = r["header"]["duration_ns"].as_u64().unwrap();
    let rows = r["intervals"]["rows"].as_array().expect("rows");
    assert!(rows.len() >= 4, "{rows:?}");
    let rates: Vec<f64> = rows
        .iter()
        .map(|row| row["rate_per_s"].as_f64().unwrap())
        .collect();
    let whole: f64 = rates[1..rates.len() - 1].iter().sum::<f64>() / (rates.len() - 2) as f64;
    for row in rows {
        assert!(row["offset_ns"].as_u64().unwrap() < duration, "{row}");
        // Every interval, partial or not, near the steady rate (the test VMM's sleeps
        // wobble). Exits tallied in the kernel are filed under the interval of the read that
        // takes them: a read that a loaded host runs late moves the exits since the boundary
        // into the interval before (seen: 99 exits, 50 ms of them, out of a 105 ms last
        // interval into the one before), hence 100 ms of exits of slack besides the 15 %.
        let samples = row["samples"].as_f64().unwrap();
        let expected = whole * row["length_ns"].as_f64().unwrap() / 1e9;
        assert!(
            (samples - expected).abs() <= 0.15 * expected + 0.1 * whole,
            "{samples} exits where {expected:.0} were due at {whole:.0}/s: {rows:?}"
        );
    }
    let covered: u64 = rows
        .iter()
        .map(|row| row["length_ns"].as_u64().unwrap())
        .sum();
    assert_eq!(covered, duration, "{rows:?}");
}

/// In-kernel port reads and writes right after exits to the VMM — the test VMM's device loop:
/// ELCR reads and writes KVM's in-kernel PIC answers, after an `in` and after an `out` the
/// VMM answers — are each filed under their port, direction and side, exactly. Under PVM a
/// read to the VMM is traced only on its completion, after re-entry, and the in-kernel
/// write before it was filed as the exit to the VMM (issue 19, item 1).
#[test]
fn in_kernel_port_io_right_after_exits_to_the_vmm_is_filed_exactly() {
    if skip_without_kvm("in_kernel_port_io_right_after_exits_to_the_vmm_is_filed_exactly") {
        return;
    }
    let data = scratch("device").join("k.data");
    let out = Command::new(bin("kvmprof"))
        .args(["record", "-o", data.to_str().unwrap(), "--"])
        .arg(bin("kvmprof-testvmm"))
        .args(["--vcpus", "2", "--pio-device", "5000", "--pio-kernel", "3"])
        .output()
        .expect("run kvmprof record");
    assert!(out.status.success(), "record failed: {}", stderr(&out));
    let counts: Value = serde_json::from_slice(&out.stdout).expect("test VMM counts on stdout");
    let t = &counts["total"];
    let n = |k: &str| t[k].as_u64().unwrap_or_else(|| panic!("no {k} in {t}"));
    assert_eq!(
        (
            n("pio_mixed_in"),
            n("pio_mixed_out"),
            n("pio_device"),
            n("done")
        ),
        (10000, 10000, 40000, 2)
    );
    let r = report_json(&data, "reason");
    assert_eq!(r["lost"], 0);
    let ports = r["ports"].as_array().expect("ports");
    let row = |addr: u64, write: bool| -> (u64, u64) {
        ports
            .iter()
            .filter(|p| p["space"] == "pio" && p["addr"] == addr && p["write"] == write)
            .fold((0, 0), |(c, u), p| {
                (
                    c + p["count"].as_u64().unwrap(),
                    u + p["userspace"].as_u64().unwrap(),
                )
            })
    };
    let [elcr1, elcr2] = PIO_DEVICE_PORTS.map(u64::from);
    assert_eq!(
        row(u64::from(PIO_MIXED_IN_PORT), false),
        (10000, 10000),
        "{ports:?}"
    );
    assert_eq!(row(u64::from(PIO_MIXED_OUT_PORT), true), (10000, 10000));
    assert_eq!(row(u64::from(PIO_DONE_PORT), true), (2, 2));
    for (addr, write) in [(elcr1, false), (elcr1, true), (elcr2, false), (elcr2, true)] {
        assert_eq!(row(addr, write), (10000, 0), "{addr:#x} write={write}");
    }
}
