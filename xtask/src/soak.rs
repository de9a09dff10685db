//! `cargo xtask soak`: one `kvmprof serve` while many short-lived VMMs start, exit and are
//! replaced, several at once: test VMMs of 1-8 vCPUs writing busy MMIO address ranges, and
//! real QEMU SeaBIOS boots. At the end every test VMM's exits are on `/metrics` exactly (its
//! own counts), the served totals equal what the VMMs were served, nothing was lost or sent one
//! by one, every VMM has left `/metrics`, and the memory of serve (RSS and BPF maps) and of a
//! `top --batch` beside it is within 10 % of its level after the first `checkpoint` VMMs.
//! Prints the memory curve as it goes.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use kvmprof_tests::metrics::{exits_by_pid, sample_sum};
use kvmprof_testvmm::Workload;

use crate::util::{cargo, run as run_cmd, target_dir, which};

pub struct Options {
    pub vmms: usize,
    pub parallel: usize,
    pub qemu_every: usize,
    pub checkpoint: usize,
    pub build: bool,
}

/// Long enough for the scraper (every 250 ms) to see each VMM's final counts, which serve
/// refreshes once a second.
const GRACE: Duration = Duration::from_secs(3);
/// How long a QEMU boot runs before it is stopped: SeaBIOS has booted (and found no disk).
const QEMU_RUN: Duration = Duration::from_secs(2);
/// MMIO spans the test VMMs cycle through: one register up to a 4 KiB page per VMM.
const SPANS: [u32; 4] = [1, 16, 256, 4096];

/// One VMM started by the soak: its pid, and its own exit count (a test VMM's).
struct Started {
    pid: u64,
    own: Option<u64>,
}

pub fn run(o: &Options) -> Result<u8> {
    ensure!(
        o.parallel >= 1 && o.vmms >= o.checkpoint && o.checkpoint >= 1,
        "give at least one VMM at once and --vmms >= --checkpoint >= 1"
    );
    if !Path::new("/dev/kvm").exists() {
        println!("soak skipped: this machine has no /dev/kvm");
        return Ok(0);
    }
    if o.build {
        println!("building: cargo build --release -p kvmprof -p kvmprof-testvmm");
        run_cmd(cargo().args(["build", "--release", "--quiet", "-p", "kvmprof"]))?;
        run_cmd(cargo().args(["build", "--release", "--quiet", "-p", "kvmprof-testvmm"]))?;
    }
    let release = target_dir().join("release");
    let scratch = target_dir().join("xtask/soak");
    std::fs::create_dir_all(&scratch).with_context(|| format!("create {}", scratch.display()))?;
    let qemu = which("qemu-system-x86_64");
    let qemu_every = match (&qemu, o.qemu_every) {
        (Some(_), n) => n,
        (None, _) => {
            println!("no QEMU boots: qemu-system-x86_64 is not installed");
            0
        }
    };
    let kvmprof = release.join("kvmprof");
    let (mut serve, url) = start_serve(&kvmprof, &scratch)?;
    // `top` beside it, printing frames nobody reads: its memory must stay flat too.
    let mut top = Daemon::start(
        &kvmprof,
        &["top", "--batch", "--delay", "1s", "--bpf-stats", "off"],
        scratch.join("top.log"),
    )?;
    let seen = Arc::new(Mutex::new(HashMap::<u64, u64>::new()));
    let stop_scraper = Arc::new(AtomicBool::new(false));
    let scraper = {
        let (url, seen, stop) = (url.clone(), seen.clone(), stop_scraper.clone());
        thread::spawn(move || scrape(&url, &seen, &stop))
    };

    let testvmm = release.join("kvmprof-testvmm");
    let started = Mutex::new(Vec::<Started>::new());
    let next = AtomicUsize::new(0);
    let t0 = Instant::now();
    let mut curve = Vec::new();
    println!(
        "{:>6} {:>9} {:>9} {:>9} {:>10} {:>8}",
        "VMMs", "serve MiB", "maps MiB", "top MiB", "exits", "seconds"
    );
    // Rounds of `checkpoint` VMMs; after the first and the last every VMM has left /metrics,
    // so those two levels compare like with like.
    let mut baseline = None;
    while next.load(Ordering::Relaxed) < o.vmms {
        let upto = (next.load(Ordering::Relaxed) + o.checkpoint).min(o.vmms);
        thread::scope(|s| {
            for _ in 0..o.parallel {
                s.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= upto {
                            next.fetch_min(upto, Ordering::Relaxed);
                            return Ok(());
                        }
                        let one = match &qemu {
                            Some(q) if qemu_every > 0 && i % qemu_every == qemu_every - 1 => {
                                boot_qemu(q, i)?
                            }
                            _ => run_testvmm(&testvmm, i)?,
                        };
                        started.lock().expect("lock").push(one);
                    }
                });
            }
        });
        let done = next.load(Ordering::Relaxed);
        if baseline.is_none() || done == o.vmms {
            // Gone from /metrics and freed: the grace period and a refresh.
            thread::sleep(GRACE + Duration::from_secs(2));
        }
        serve.check_running()?;
        top.check_running()?;
        let point = (done, serve.rss_mib()?, serve.map_mib()?, top.rss_mib()?);
        let exits: u64 = seen.lock().expect("lock").values().sum();
        println!(
            "{:>6} {:>9.1} {:>9.1} {:>9.1} {:>10} {:>8.0}",
            point.0,
            point.1,
            point.2,
            point.3,
            exits,
            t0.elapsed().as_secs_f64()
        );
        baseline.get_or_insert(point);
        curve.push(point);
    }
    stop_scraper.store(true, Ordering::Relaxed);
    scraper.join().expect("scraper thread");
    let last = get(&url).context("/metrics at the end")?;
    let seen = seen.lock().expect("lock");
    let started = started.into_inner().expect("lock");

    let mut failures = Vec::new();
    let (mut own_total, mut qemus) = (0u64, 0usize);
    for s in &started {
        let served = seen.get(&s.pid).copied().unwrap_or(0);
        match s.own {
            Some(own) if own != served => failures.push(format!(
                "test VMM {}: made {own} exits, /metrics served {served}",
                s.pid
            )),
            Some(own) => own_total += own,
            None if served == 0 => failures.push(format!("QEMU {}: no exit served", s.pid)),
            None => qemus += 1,
        }
    }
    let served_total: u64 = started.iter().filter_map(|s| seen.get(&s.pid)).sum();
    let sample = |name: &str| sample_sum(&last, name);
    let (tallied, one_by_one) = (
        sample("kvmprof_self_exits_total{path=\"tallied\"}"),
        sample("kvmprof_self_exits_total{path=\"one_by_one\"}"),
    );
    let lost = sample("kvmprof_lost_exits_total");
    let left = exits_by_pid(&last);
    let lingering = started.iter().filter(|s| left.contains_key(&s.pid)).count();
    println!(
        "{} VMMs ({} test VMMs, {qemus} QEMU boots) in {:.0} s: {own_total} test VMM exits, \
         {served_total} served in all; kvmprof: {tallied} tallied, {one_by_one} one by one, \
         {lost} lost; {lingering} VMMs still on /metrics",
        started.len(),
        started.iter().filter(|s| s.own.is_some()).count(),
        t0.elapsed().as_secs_f64()
    );
    if tallied + one_by_one != served_total as f64 {
        failures.push(format!(
            "kvmprof handled {} exits but served {served_total} for these VMMs",
            tallied + one_by_one
        ));
    }
    for (what, n) in [("lost", lost), ("sent one by one", one_by_one)] {
        if n != 0.0 {
            failures.push(format!("{n} exits {what}"));
        }
    }
    if lingering > 0 {
        failures.push(format!(
            "{lingering} VMMs still on /metrics after the grace period"
        ));
    }
    let (first, end) = (baseline.expect("a round"), *curve.last().expect("a round"));
    for (what, a, b) in [
        ("serve's RSS", first.1, end.1),
        ("serve's BPF map memory", first.2, end.2),
        ("top's RSS", first.3, end.3),
    ] {
        if b > a * 1.10 {
            failures.push(format!(
                "{what} grew from {a:.1} MiB after {} VMMs to {b:.1} MiB after {}",
                first.0, end.0
            ));
        }
    }
    drop((serve, top));
    if failures.is_empty() {
        println!("soak: ok");
        Ok(0)
    } else {
        for f in &failures {
            println!("soak: FAILED: {f}");
        }
        Ok(1)
    }
}

/// Test VMM `i`: 1-8 vCPUs, each ~0.5 s of port, in-kernel port and MMIO exits, the MMIO
/// writes spread over one of [`SPANS`].
fn run_testvmm(testvmm: &Path, i: usize) -> Result<Started> {
    let w = Workload {
        vcpus: 1 + (i % 8) as u32,
        pio_user: 100,
        pio_kernel: 1000,
        mmio_user: 200,
        mmio_span: SPANS[(i / 8) % SPANS.len()],
        pio_in: 20,
        ..Workload::IDLE
    };
    let out = Command::new(testvmm)
        .args(kvmprof_testvmm::cli::args(&w).split_whitespace())
        // Paced so that each lives long enough for serve to read its vCPU ids from /proc.
        .args(["--rate", "700"])
        .stdin(Stdio::null())
        .output()
        .context("run the test VMM")?;
    if !out.status.success() {
        bail!(
            "the test VMM failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let counts: kvmprof_testvmm::Counts =
        serde_json::from_slice(&out.stdout).context("the test VMM's counts")?;
    ensure!(
        counts.total.other == 0,
        "the test VMM's guest went off script: {:?}",
        counts.other_reasons
    );
    let (pid, own) = (counts.pid.into(), counts.total.total());
    Ok(Started {
        pid,
        own: Some(own),
    })
}

/// QEMU `i` boots SeaBIOS (no disk) for [`QEMU_RUN`], then is stopped with SIGTERM.
fn boot_qemu(qemu: &Path, i: usize) -> Result<Started> {
    let mut child = Command::new(qemu)
        .args(["-accel", "kvm", "-cpu", "qemu64", "-m", "128"])
        .args(["-display", "none", "-net", "none", "-name"])
        .arg(format!("soak-{i}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start qemu-system-x86_64")?;
    let pid = child.id().into();
    thread::sleep(QEMU_RUN);
    stop(&mut child);
    Ok(Started { pid, own: None })
}

/// SIGTERM, then SIGKILL after 10 s.
fn stop(child: &mut Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A kvmprof session left running (`serve`, `top`), stopped when dropped.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(kvmprof: &Path, args: &[&str], log: PathBuf) -> Result<Daemon> {
        let file = std::fs::File::create(&log)?;
        let child = Command::new(kvmprof)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("start {} {}", kvmprof.display(), args.join(" ")))?;
        Ok(Daemon { child, log })
    }

    fn check_running(&mut self) -> Result<()> {
        if let Some(st) = self.child.try_wait()? {
            bail!(
                "{} exited ({st}): {}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        Ok(())
    }

    fn rss_mib(&self) -> Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("VmRSS")?;
        Ok(kib / 1024.0)
    }

    /// The memory of its BPF maps: the `memlock` of each map fd it holds.
    fn map_mib(&self) -> Result<f64> {
        let pid = self.child.id();
        let mut bytes = 0u64;
        for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
            let fd = fd?;
            let is_map = std::fs::read_link(fd.path())
                .is_ok_and(|t| t.to_string_lossy() == "anon_inode:bpf-map");
            if !is_map {
                continue;
            }
            let info = format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy());
            let info = std::fs::read_to_string(info).unwrap_or_default();
            bytes += info
                .lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
        Ok(bytes as f64 / (1024.0 * 1024.0))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// `kvmprof serve` on a free loopback port, once `/metrics` answers.
fn start_serve(kvmprof: &Path, scratch: &Path) -> Result<(Daemon, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let listen = format!("127.0.0.1:{port}");
    let grace = format!("{}s", GRACE.as_secs());
    let args = [
        "serve",
        "--listen",
        &listen,
        "--bpf-stats",
        "off",
        "--grace",
        &grace,
    ];
    let mut serve = Daemon::start(kvmprof, &args, scratch.join("serve.log"))?;
    let url = format!("http://{listen}/metrics");
    let t0 = Instant::now();
    while get(&url).is_none() {
        serve.check_running()?;
        ensure!(
            t0.elapsed() < Duration::from_secs(60),
            "/metrics never answered"
        );
        thread::sleep(Duration::from_millis(100));
    }
    Ok((serve, url))
}

/// Keeps the highest exit count `/metrics` showed for each pid (counters only grow) until
/// `stop`: a VMM's series leave after the grace period, its count stays here.
fn scrape(url: &str, seen: &Mutex<HashMap<u64, u64>>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        if let Some(m) = get(url) {
            let mut seen = seen.lock().expect("lock");
            for (pid, n) in exits_by_pid(&m) {
                let e = seen.entry(pid).or_default();
                *e = (*e).max(n);
            }
        }
        thread::sleep(Duration::from_millis(250));
    }
}

fn get(url: &str) -> Option<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        // Loopback only: never through a proxy from the environment.
        .proxy(None)
        .build()
        .into();
    agent.get(url).call().ok()?.body_mut().read_to_string().ok()
}
