//! Runs real guests. Needs a usable /dev/kvm (root, or the kvm group);
//! without one each test prints why it is skipped and passes.

use std::fs::{self, OpenOptions};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use kvmprof_testvmm::{
    run, run_until, Counts, ExitCounts, Ready, StopHandle, Workload, MMIO_ADDR, PIO_DEVICE_PORTS,
    PIO_IN_PORT, PIO_KERNEL_PORT_BASE, PIO_USER_PORT,
};

/// Returns early from the test, passing, when KVM can't be used here.
macro_rules! require_kvm {
    () => {
        if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/kvm") {
            eprintln!("skipped: cannot open /dev/kvm: {e}");
            return;
        }
    };
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("testvmm-{}-{name}", std::process::id()))
}

#[test]
fn counts_are_exact() {
    require_kvm!();
    let w = Workload {
        vcpus: 2,
        pio_user: 1000,
        pio_kernel: 5000,
        mmio_user: 300,
        pio_in: 50,
        ..Workload::default()
    };
    let c = run(&w).unwrap();
    let want = ExitCounts {
        pio_user: 1000,
        pio_kernel: 5000,
        mmio_user: 300,
        pio_in: 50,
        hlt: 1,
        ..ExitCounts::default()
    };
    for (i, v) in c.vcpus.iter().enumerate() {
        assert_eq!(v.exits, want, "vCPU {i}");
        assert_eq!(v.index as usize, i);
        assert_eq!(v.thread, format!("CPU {i}/KVM"));
        assert_eq!(v.pio_kernel_port, PIO_KERNEL_PORT_BASE + i as u16);
    }
    assert_eq!(c.total.total(), 2 * 6351);
    assert!(c.other_reasons.is_empty());
    assert_eq!(c.ports.pio_user, PIO_USER_PORT);
    assert_eq!(c.ports.pio_in, PIO_IN_PORT);
    assert_eq!(c.ports.mmio_addr, MMIO_ADDR);
    assert!(c.wall_ns > 0);
}

/// The device loop: with KVM's in-kernel irqchip the ELCR reads and writes stay in the
/// kernel (only the loop's own ports reach the VMM), every vCPU runs, and the round ends
/// with an `out` to the done port instead of `hlt`.
#[test]
fn the_device_loop_keeps_elcr_in_the_kernel_and_ends_with_an_out() {
    require_kvm!();
    let w = Workload {
        vcpus: 2,
        pio_user: 10,
        pio_device: 300,
        ..Workload::default()
    };
    let c = run(&w).unwrap();
    let want = ExitCounts {
        pio_user: 10,
        pio_mixed_in: 300,
        pio_mixed_out: 300,
        pio_device: 1200,
        done: 1,
        ..ExitCounts::default()
    };
    for (i, v) in c.vcpus.iter().enumerate() {
        assert_eq!(v.exits, want, "vCPU {i}: {:?}", v.other_reasons);
    }
    assert_eq!(c.total.userspace(), 2 * 611);
    assert_eq!(c.total.total(), 2 * 1811);
    assert_eq!(c.ports.pio_device, PIO_DEVICE_PORTS);
}

/// The halt loop: vCPU 0 `hlt`s with interrupts on, KVM keeps each in the kernel (no exit
/// the VMM sees) until the VMM's IRQ0 pulse wakes it, so a round takes about
/// halts × halt tick; the other vCPU does not halt but ends as vCPU 0 does, with an `out`.
#[test]
fn halts_stay_in_the_kernel_until_the_vmms_interrupt() {
    require_kvm!();
    let w = Workload {
        vcpus: 2,
        pio_user: 10,
        pio_kernel: 20,
        halts: 50,
        halt_tick_us: 2000,
        ..Workload::default()
    };
    let t0 = Instant::now();
    let c = run(&w).unwrap();
    assert!(t0.elapsed() < Duration::from_secs(10));
    let want = |halts| ExitCounts {
        pio_user: 10,
        pio_kernel: 20,
        done: 1,
        halts,
        ..ExitCounts::default()
    };
    assert_eq!(c.vcpus[0].exits, want(50), "{:?}", c.vcpus[0].other_reasons);
    assert_eq!(c.vcpus[1].exits, want(0), "{:?}", c.vcpus[1].other_reasons);
    // Not exits: outside the totals the profilers' exact counts compare against.
    assert_eq!(c.total.halts, 50);
    assert_eq!(c.total.userspace(), 2 * 11);
    assert_eq!(c.total.total(), 2 * 31);
    // Each halt waited for a pulse (pulses before the guest's first `hlt` merge into one).
    assert!(
        c.vcpus[0].run_ns >= 40 * 2_000_000,
        "{} ns for 50 halts at 2 ms",
        c.vcpus[0].run_ns
    );
}

/// Halts in endless rounds: exactly `halts` per completed round, whenever the pulses come,
/// and a stop gets vCPU 0 out of a halt.
#[test]
fn halts_count_whole_rounds_and_a_halted_vcpu_stops() {
    require_kvm!();
    let w = Workload {
        vcpus: 2,
        pio_user: 3,
        pio_device: 2,
        halts: 7,
        halt_tick_us: 300,
        forever: true,
        duration_ms: Some(300),
        ..Workload::default()
    };
    let t0 = Instant::now();
    let c = run(&w).unwrap();
    assert!(t0.elapsed() < Duration::from_secs(10));
    let (v0, v1) = (&c.vcpus[0].exits, &c.vcpus[1].exits);
    assert!(v0.done >= 2, "{v0:?}");
    assert_eq!(v0.halts, 7 * v0.done);
    assert_eq!(v1.halts, 0);
    assert!(v1.done > 0, "{v1:?}");
    assert_eq!(c.total.other, 0, "{:?}", c.other_reasons);
    assert_eq!(c.total.hlt, 0);
}

#[test]
fn empty_workload_only_halts() {
    require_kvm!();
    let c = run(&Workload {
        vcpus: 3,
        ..Workload::default()
    })
    .unwrap();
    assert_eq!(
        c.total,
        ExitCounts {
            hlt: 3,
            ..ExitCounts::default()
        }
    );
}

/// Per vCPU, the counts must match whole rounds plus a prefix of the next.
fn assert_consistent_rounds(c: &Counts, w: &Workload) {
    for v in &c.vcpus {
        let e = v.exits;
        let rounds = e.hlt;
        assert_eq!(e.other, 0, "{:?}", v.other_reasons);
        for (what, n, per_round) in [
            ("pio_user", e.pio_user, w.pio_user),
            ("pio_kernel", e.pio_kernel, w.pio_kernel),
            ("mmio_user", e.mmio_user, w.mmio_user),
            ("pio_in", e.pio_in, w.pio_in),
        ] {
            assert!(
                (rounds * per_round..=(rounds + 1) * per_round).contains(&n),
                "vCPU {}: {what} = {n} after {rounds} rounds of {per_round}",
                v.index
            );
        }
    }
}

#[test]
fn forever_stops_at_the_duration() {
    require_kvm!();
    let w = Workload {
        vcpus: 2,
        pio_user: 20,
        pio_kernel: 100,
        mmio_user: 5,
        pio_in: 5,
        forever: true,
        duration_ms: Some(300),
        ..Workload::default()
    };
    let t0 = Instant::now();
    let c = run(&w).unwrap();
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(c.total.hlt >= 2, "{:?}", c.total);
    assert_consistent_rounds(&c, &w);
}

#[test]
fn stop_handle_interrupts_in_kernel_loop() {
    require_kvm!();
    // One endless round of in-kernel exits: no userspace exit to stop at,
    // so only the kick can get the vCPU out.
    let w = Workload {
        pio_kernel: u64::from(u32::MAX),
        ..Workload::default()
    };
    let stop = StopHandle::new();
    let stopper = {
        let stop = stop.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(200));
            stop.request();
        })
    };
    let c = run_until(&w, &stop).unwrap();
    stopper.join().unwrap();
    assert_eq!(c.total.hlt, 0);
    assert!(c.total.pio_kernel > 0);
    assert_eq!(c.total.userspace(), 0);
}

#[test]
fn stop_during_start_delay_runs_nothing() {
    require_kvm!();
    let stop = StopHandle::new();
    stop.request();
    let w = Workload {
        pio_user: 10,
        start_delay_ms: 60_000,
        ..Workload::default()
    };
    let c = run_until(&w, &stop).unwrap();
    assert_eq!(c.total.total(), 0);
}

#[test]
fn rate_caps_exits_per_second() {
    require_kvm!();
    // 100 user exits + 1 hlt at 1000/s: about 0.1 s instead of ~1 ms.
    let w = Workload {
        pio_user: 100,
        rate: Some(1000),
        ..Workload::default()
    };
    let c = run(&w).unwrap();
    assert_eq!(c.total.pio_user, 100);
    assert!(c.wall_ns >= 90_000_000, "{} ns", c.wall_ns);
    assert!(c.exits_per_sec <= 1100.0, "{}", c.exits_per_sec);
}

#[test]
fn ready_file_names_the_threads_before_the_guest_starts() {
    require_kvm!();
    let path = temp_path("ready");
    let _ = fs::remove_file(&path);
    let w = Workload {
        vcpus: 2,
        pio_user: 10,
        start_delay_ms: 300,
        ready_file: Some(path.clone()),
        ..Workload::default()
    };
    let watcher = {
        let path = path.clone();
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !path.exists() {
                assert!(Instant::now() < deadline, "no ready file");
                thread::sleep(Duration::from_millis(5));
            }
            let ready: Ready = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
            // The threads exist and are named by now; the guest waits for the delay.
            let comms: Vec<String> = ready
                .vcpus
                .iter()
                .map(|v| fs::read_to_string(format!("/proc/self/task/{}/comm", v.tid)).unwrap())
                .collect();
            (ready, comms)
        })
    };
    let c = run(&w).unwrap();
    let (ready, comms) = watcher.join().unwrap();
    fs::remove_file(&path).unwrap();
    assert_eq!(ready.pid, std::process::id());
    assert_eq!(comms, ["CPU 0/KVM\n", "CPU 1/KVM\n"]);
    let tids: Vec<i32> = c.vcpus.iter().map(|v| v.tid).collect();
    assert_eq!(ready.vcpus.iter().map(|v| v.tid).collect::<Vec<_>>(), tids);
}

#[test]
fn binary_prints_counts_on_sigterm() {
    require_kvm!();
    let ready = temp_path("bin-ready");
    let _ = fs::remove_file(&ready);
    let child = Command::new(env!("CARGO_BIN_EXE_kvmprof-testvmm"))
        .args([
            "--vcpus",
            "2",
            "--pio-user",
            "7",
            "--pio-kernel",
            "50",
            "--mmio",
            "3",
            "--pio-in",
            "2",
        ])
        .args(["--rate", "2000", "--forever", "--ready-file"])
        .arg(&ready)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "no ready file");
        thread::sleep(Duration::from_millis(5));
    }
    thread::sleep(Duration::from_millis(300));
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    fs::remove_file(&ready).unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let c: Counts = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c.vcpus.len(), 2);
    assert!(c.total.hlt > 0, "{:?}", c.total);
    let w = Workload {
        pio_user: 7,
        pio_kernel: 50,
        mmio_user: 3,
        pio_in: 2,
        ..Workload::default()
    };
    assert_consistent_rounds(&c, &w);
}

#[test]
fn exit_log_has_one_timed_line_per_kvm_run_call() {
    require_kvm!();
    let path = temp_path("exit-log");
    let w = Workload {
        vcpus: 2,
        pio_user: 3,
        pio_kernel: 5,
        mmio_user: 1,
        exit_log: Some(path.clone()),
        ..Workload::default()
    };
    run(&w).unwrap();
    let text = fs::read_to_string(&path).unwrap();
    let _ = fs::remove_file(&path);
    for vcpu in ["0", "1"] {
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .filter(|f| f[0] == vcpu)
            .collect();
        let outcomes: Vec<&str> = lines.iter().map(|f| f[3]).collect();
        // In-kernel exits never return from KVM_RUN: only the VMM's exits are lines.
        assert_eq!(
            outcomes,
            ["pio_user", "pio_user", "pio_user", "mmio_user", "hlt"],
            "vCPU {vcpu}"
        );
        let mut last = 0u64;
        for f in &lines {
            let (call, ret): (u64, u64) = (f[1].parse().unwrap(), f[2].parse().unwrap());
            assert!(last <= call && call <= ret, "{f:?}");
            last = ret;
        }
    }
}
