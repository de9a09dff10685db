//! The `sched_wait` stage against the kernel's own account: with the test VMM's vCPU thread
//! and a CPU hog pinned to one CPU, kvmprof's summed `sched_wait` of the vCPU thread over
//! the recording equals the change of that thread's `run_delay` (second field of
//! `/proc/<pid>/task/<tid>/schedstat`) over the same window, within 10 %; with the VMM alone
//! on its CPU it is near 0. "Alone" on a machine whose other work may use every CPU: the
//! vCPU thread runs SCHED_FIFO for that recording, so no normal task can take its CPU.
//!
//! `run_delay` is read every millisecond while kvmprof records, with the time on
//! CLOCK_MONOTONIC (the clock of the data file's window), and taken at the window's two
//! edges from those samples.
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, sleep},
    time::{Duration, Instant},
};

use kvmprof_tests::{bin, kvmprof, report_json, scratch, skip_without_kvm, stderr};
use serde_json::Value;

/// The CPU the vCPU thread and the hog share: the last one, away from CPU 0's housekeeping.
fn shared_cpu() -> Option<usize> {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    (n >= 2).then(|| n as usize - 1)
}

/// Pins the calling thread (`pid` 0) or thread `tid` to `cpu`.
fn pin(tid: libc::pid_t, cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and sched_setaffinity only read
    // and write the set passed to them.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Gives thread `tid` the real-time policy SCHED_FIFO (priority 1) or back the normal one.
fn realtime(tid: u32, on: bool) -> std::io::Result<()> {
    let (policy, prio) = if on {
        (libc::SCHED_FIFO, 1)
    } else {
        (libc::SCHED_OTHER, 0)
    };
    let param = libc::sched_param {
        sched_priority: prio,
    };
    // SAFETY: sched_setscheduler only reads the parameter passed to it.
    if unsafe { libc::sched_setscheduler(tid as libc::pid_t, policy, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec passed to it.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// A busy loop pinned to one CPU until dropped.
struct Hog {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Hog {
    fn on(cpu: usize) -> Hog {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = thread::spawn(move || {
            pin(0, cpu).expect("pin the hog");
            let mut x = 0u64;
            while !s.load(Ordering::Relaxed) {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        });
        Hog {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The test VMM running `--forever`, its one vCPU thread pinned to `cpu`.
struct Vmm {
    child: Child,
    pid: u32,
    tid: u32,
}

impl Vmm {
    fn start(dir: &Path, cpu: usize, extra: &[&str]) -> Vmm {
        let ready = dir.join("ready.json");
        let _ = std::fs::remove_file(&ready);
        let child = Command::new(bin("kvmprof-testvmm"))
            .args(["--pio-user", "50", "--pio-kernel", "200", "--forever"])
            .args(extra)
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::null())
            .spawn()
            .expect("start the test VMM");
        let t0 = Instant::now();
        let v: Value = loop {
            if let Some(v) = std::fs::read_to_string(&ready)
                .ok()
                .and_then(|t| serde_json::from_str(t.trim()).ok())
            {
                break v;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "test VMM not ready");
            sleep(Duration::from_millis(10));
        };
        let pid = v["pid"].as_u64().expect("pid") as u32;
        let tid = v["vcpus"][0]["tid"].as_u64().expect("vCPU tid") as u32;
        pin(tid as libc::pid_t, cpu).expect("pin the vCPU thread");
        Vmm { child, pid, tid }
    }

    /// The thread's run_delay (ns) now, `None` once it is gone.
    fn run_delay(&self) -> Option<u64> {
        let path = format!("/proc/{}/task/{}/schedstat", self.pid, self.tid);
        std::fs::read_to_string(path)
            .ok()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// `(CLOCK_MONOTONIC ns, run_delay ns)` samples.
type Samples = Vec<(u64, u64)>;

/// run_delay at `t`, interpolated between the samples around it.
fn at(samples: &Samples, t: u64) -> u64 {
    let after = samples
        .iter()
        .position(|&(ts, _)| ts >= t)
        .expect("run_delay sampled past the window's end");
    assert!(after > 0, "run_delay not sampled before the window opened");
    let ((t0, v0), (t1, v1)) = (samples[after - 1], samples[after]);
    if t1 == t0 {
        return v1;
    }
    v0 + ((v1 - v0) as u128 * (t - t0) as u128 / (t1 - t0) as u128) as u64
}

/// What one recording of the pinned VMM says: kvmprof's summed `sched_wait` of the vCPU
/// thread, the kernel's run_delay over the window, and the window's length.
struct Measured {
    kvmprof_ns: u64,
    run_delay_ns: u64,
    window_ns: u64,
}

/// Records the VMM by pid for 3 s while sampling its vCPU thread's run_delay.
fn record(dir: &Path, vmm: &Vmm) -> Measured {
    let data = dir.join("k.data");
    let _ = std::fs::remove_file(&data);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, path) = (
            stop.clone(),
            format!("/proc/{}/task/{}/schedstat", vmm.pid, vmm.tid),
        );
        thread::spawn(move || {
            let mut out = Samples::new();
            while !stop.load(Ordering::Relaxed) {
                let v = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| t.split_whitespace().nth(1).and_then(|f| f.parse().ok()));
                let Some(v) = v else { break };
                out.push((monotonic_ns(), v));
                sleep(Duration::from_millis(1));
            }
            out
        })
    };
    let o = kvmprof(&[
        "record",
        "--pid",
        &vmm.pid.to_string(),
        "--duration",
        "3s",
        "-o",
        data.to_str().expect("utf-8 path"),
    ]);
    // A few samples past the window's end.
    sleep(Duration::from_millis(20));
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().expect("sampler");
    assert!(o.status.success(), "record failed: {}", stderr(&o));
    let r = report_json(&data, "vcpu");
    let (start, window_ns) = (
        r["header"]["start_ts_ns"].as_u64().expect("start_ts_ns"),
        r["header"]["duration_ns"].as_u64().expect("duration_ns"),
    );
    let run_delay_ns = at(&samples, start + window_ns) - at(&samples, start);
    let groups = r["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 1, "one vCPU: {groups:#?}");
    let kvmprof_ns = groups[0]["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .find(|s| s["stage"] == "sched_wait")
        .map_or(0, |s| s["sum_ns"].as_u64().expect("sum_ns"));
    Measured {
        kvmprof_ns,
        run_delay_ns,
        window_ns,
    }
}

/// Whether this kernel times the `sched_wait` stage (`kvmprof probes`).
fn sched_timed() -> Result<(), String> {
    let o = kvmprof(&["probes"]);
    let text = String::from_utf8_lossy(&o.stdout);
    match text.lines().find(|l| l.starts_with("sched_wait")) {
        Some(l) if l.contains("tracepoint") => Ok(()),
        Some(l) => Err(format!("sched_wait not timed here: {l}")),
        None => Err(format!("no sched_wait line in `kvmprof probes`: {text}")),
    }
}

/// Exits a second of the paced test VMM alone (each followed by a sleep and a wake-up).
const PACE: u64 = 2000;
/// Most wake-up-to-run latency per wake-up, on average, that the alone recording may show.
const WAKE_UP_NS: u64 = 20_000;

#[test]
fn summed_sched_wait_of_a_pinned_vcpu_thread_is_the_kernels_run_delay() {
    let name = "sched_wait_is_run_delay";
    if skip_without_kvm(name) {
        return;
    }
    let Some(cpu) = shared_cpu() else {
        eprintln!("skipped {name}: one CPU only (the hog would starve kvmprof too)");
        return;
    };
    if let Err(why) = sched_timed() {
        eprintln!("skipped {name}: {why}");
        return;
    }
    let dir = scratch(name);

    // Alone: the shared machine's other work (builds, other VMs) may run on any CPU, so the
    // vCPU thread is made real-time for this recording: no normal task can take its CPU.
    // Paced to a fraction of the CPU, so that the kernel's RT throttle (5 % of each second
    // kept for normal tasks) never holds it back.
    let alone = {
        let vmm = Vmm::start(&dir, cpu, &["--rate", &PACE.to_string()]);
        assert!(vmm.run_delay().is_some(), "schedstat of the vCPU thread");
        realtime(vmm.tid, true).expect("SCHED_FIFO for the vCPU thread");
        record(&dir, &vmm)
    };
    // Contended: never sleeping, sharing its CPU with a busy loop.
    let contended = {
        let vmm = Vmm::start(&dir, cpu, &[]);
        let _hog = Hog::on(cpu);
        sleep(Duration::from_millis(200));
        record(&dir, &vmm)
    };
    let ms = |ns: u64| ns as f64 / 1e6;
    eprintln!(
        "alone: kvmprof sched_wait {:.1} ms, run_delay {:.1} ms; with a hog: kvmprof {:.1} ms, run_delay {:.1} ms (windows {:.0} ms)",
        ms(alone.kvmprof_ns),
        ms(alone.run_delay_ns),
        ms(contended.kvmprof_ns),
        ms(contended.run_delay_ns),
        ms(contended.window_ns),
    );

    // Sharing its CPU, the thread waits for a large part of the window.
    assert!(
        contended.run_delay_ns > contended.window_ns / 10,
        "the hog hardly delayed the vCPU thread: {:.1} ms",
        ms(contended.run_delay_ns)
    );
    let diff = contended.kvmprof_ns.abs_diff(contended.run_delay_ns);
    assert!(
        diff * 10 <= contended.run_delay_ns,
        "kvmprof's sched_wait {:.1} ms vs run_delay {:.1} ms: over 10 % apart",
        ms(contended.kvmprof_ns),
        ms(contended.run_delay_ns)
    );
    // Alone: near 0. What remains is the few microseconds from each wake-up (the VMM sleeps
    // to keep its pace) to the switch onto the CPU, which run_delay leaves out when the
    // wake-up preempts (the scheduler then skips the clock update that would count it). So
    // the bound is per wake-up, not a share of the window: on this 2-core machine that
    // latency is ~5 us, 30 ms in all at 2000 wake-ups a second, right at 1 % of the window
    // (the bound these asserts had, which held on a faster machine and now failed one run
    // in two).
    let wakeups = PACE * alone.window_ns / 1_000_000_000;
    let per_wakeup = |ns: u64| ns / wakeups.max(1);
    assert!(
        per_wakeup(alone.kvmprof_ns) <= WAKE_UP_NS,
        "alone, kvmprof's sched_wait is {:.1} ms of a {:.0} ms window, {} ns per wake-up",
        ms(alone.kvmprof_ns),
        ms(alone.window_ns),
        per_wakeup(alone.kvmprof_ns)
    );
    assert!(
        per_wakeup(alone.kvmprof_ns.abs_diff(alone.run_delay_ns)) <= WAKE_UP_NS,
        "alone: kvmprof's sched_wait {:.1} ms vs run_delay {:.1} ms",
        ms(alone.kvmprof_ns),
        ms(alone.run_delay_ns)
    );
    assert!(
        alone.kvmprof_ns * 4 < contended.kvmprof_ns,
        "alone {:.1} ms is not far below contended {:.1} ms",
        ms(alone.kvmprof_ns),
        ms(contended.kvmprof_ns)
    );
}
