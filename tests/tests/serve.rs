//! `kvmprof serve` against real guests of the test VMM, scraped by a real Prometheus server
//! (Debian package `prometheus`): exact exit counts, a p99 that Prometheus computes from the
//! served buckets, and VMs that come and go. Loopback only; every wait is bounded and every
//! process started here is stopped when its guard drops.
use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use kvmprof_tests::{
    assert_clean_error, bin, kvmprof, made,
    metrics::{sample_sum, served_exits},
    report_json, scratch, skip_without_kvm, wait_for, wait_until,
};
use serde_json::Value;

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// Held by the tests that run dozens of busy test VMMs: each `serve` sees every VMM on the
/// host, so run side by side they fill each other's tally slots and memory.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        // Loopback only: never through a proxy from the environment.
        .proxy(None)
        .build()
        .into()
}

/// The body of a GET, `None` when nothing answers (yet).
fn get(url: &str, query: &[(&str, &str)]) -> Option<String> {
    let mut req = http().get(url);
    for (k, v) in query {
        req = req.query(*k, *v);
    }
    let mut resp = req.call().ok()?;
    if resp.status() != 200 {
        return None;
    }
    resp.body_mut().read_to_string().ok()
}

/// Stops a child with SIGTERM (then SIGKILL after 10 s) when dropped.
struct Guard {
    child: Child,
    what: &'static str,
    log: PathBuf,
}

impl Guard {
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status within 10 s (`None`: it had to be killed).
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("{} did not stop on SIGTERM within 10 s", self.what);
        None
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

fn spawn(what: &'static str, cmd: &mut Command, log: PathBuf) -> Guard {
    let out = fs::File::create(&log).expect("log file");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log fd"))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    Guard { child, what, log }
}

/// `kvmprof serve` on a free port, once `/metrics` answers (every hook is attached by then).
fn start_serve(dir: &Path, extra: &[&str]) -> (Guard, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut serve = spawn(
        "kvmprof serve",
        Command::new(bin("kvmprof"))
            .args(["serve", "--listen", &listen])
            .args(extra),
        dir.join("serve.log"),
    );
    let url = format!("http://{listen}/metrics");
    let up = wait_for(Duration::from_secs(60), || {
        if let Ok(Some(st)) = serve.child.try_wait() {
            panic!("kvmprof serve exited ({st}): {}", serve.log());
        }
        get(&url, &[])
    });
    assert!(up.is_some(), "/metrics never answered: {}", serve.log());
    (serve, url)
}

/// Runs the test VMM to completion; its counts (JSON, with its pid) come back.
fn run_vmm(vcpus: &str) -> Value {
    let out = Command::new(bin("kvmprof-testvmm"))
        // The rate keeps the VMM alive for about a second, long enough for kvmprof to read
        // each vCPU's id from /proc while it still exists.
        .args([
            "--vcpus",
            vcpus,
            "--pio-user",
            "300",
            "--pio-kernel",
            "2000",
        ])
        .args(["--mmio", "100", "--pio-in", "20", "--rate", "500"])
        .output()
        .expect("run the test VMM");
    assert!(out.status.success(), "test VMM failed");
    serde_json::from_slice(&out.stdout).expect("test VMM counts")
}

/// Under PVM (this host) exactly the exits the VMM made are visible; hardware backends also
/// show exits the guest does not cause on purpose.
fn pvm() -> bool {
    let probes = kvmprof(&["probes", "--format", "json"]);
    serde_json::from_slice::<Value>(&probes.stdout).is_ok_and(|p| p["vendor"] == "pvm")
}

/// A real Prometheus on a free loopback port, scraping `metrics_url` every second (rules
/// evaluated every second too), with its own storage in `dir`; its query API's URL.
fn start_prometheus(dir: &Path, metrics_url: &str, rule_files: &[PathBuf]) -> (Guard, String) {
    let target = metrics_url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    let prom_addr = format!("127.0.0.1:{}", free_port());
    let config = dir.join("prometheus.yml");
    let mut rules = String::new();
    if !rule_files.is_empty() {
        rules.push_str("rule_files:\n");
        for f in rule_files {
            rules.push_str(&format!("  - '{}'\n", f.display()));
        }
    }
    fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             {rules}\
             scrape_configs:\n  - job_name: kvmprof\n    static_configs:\n      \
             - targets: ['{target}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let prom = spawn(
        "prometheus",
        Command::new(PROMETHEUS).args([
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
            &format!("--web.listen-address={prom_addr}"),
        ]),
        dir.join("prometheus.log"),
    );
    (prom, format!("http://{prom_addr}/api/v1/query"))
}

#[test]
fn prometheus_gets_the_exact_exit_count_and_the_p99_bucket_of_the_test_vmm() {
    let test = "prometheus_gets_the_exact_exit_count_and_the_p99_bucket_of_the_test_vmm";
    if skip_without_kvm(test) {
        return;
    }
    if !Path::new(PROMETHEUS).exists() {
        eprintln!("skipped {test}: no {PROMETHEUS} (Debian package prometheus)");
        return;
    }
    let dir = scratch("serve-prom");
    let (_serve, metrics_url) = start_serve(&dir, &["--grace", "120s"]);
    let (_prom, api) = start_prometheus(&dir, &metrics_url, &[]);
    let query = |q: &str| -> Option<f64> {
        let body: Value = serde_json::from_str(&get(&api, &[("query", q)])?).ok()?;
        body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };

    // kvmprof's own p99 of the same exits: a `record` of the VMM beside `serve`.
    let data = dir.join("k.data");
    let out = Command::new(bin("kvmprof"))
        .args(["record", "-o", data.to_str().unwrap(), "--"])
        .arg(bin("kvmprof-testvmm"))
        .args(["--vcpus", "2", "--pio-user", "300", "--pio-kernel", "2000"])
        .args(["--mmio", "100", "--pio-in", "20", "--rate", "500"])
        .output()
        .expect("run kvmprof record");
    assert!(
        out.status.success(),
        "record: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts: Value = serde_json::from_slice(&out.stdout).expect("test VMM counts");
    let pid = counts["pid"].as_u64().expect("VMM pid");
    let made = made(&counts["total"]);

    let total = format!("sum(kvmprof_exits_total{{pid=\"{pid}\"}})");
    let seen = wait_for(Duration::from_secs(60), || {
        query(&total).filter(|&n| n as u64 >= made)
    })
    .or_else(|| query(&total));
    // One more scrape: the count must not move past what the VMM made.
    sleep(Duration::from_secs(2));
    let seen_later = query(&total);
    if pvm() {
        assert_eq!(seen, Some(made as f64), "Prometheus' count of pid {pid}");
        assert_eq!(seen_later, Some(made as f64));
    } else {
        assert!(seen.is_some_and(|n| n as u64 >= made), "{seen:?} < {made}");
    }

    let report = report_json(&data, "pid");
    let group = report["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .find(|g| g["stages"].is_array())
        .expect("a group");
    let cycle = group["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "cycle")
        .expect("record measured the cycle");
    let p99_ns = cycle["p99_ns"].as_u64().expect("the cycle's p99");
    let p99 = p99_ns as f64 / 1e9;
    let record_mean_ns = cycle["mean_ns"].as_f64().expect("the cycle's mean");

    let quantile = format!(
        "histogram_quantile(0.99, sum by (le) \
         (kvmprof_exit_latency_seconds_bucket{{pid=\"{pid}\",stage=\"cycle\"}}))"
    );
    let q = query(&quantile).expect("Prometheus computes the p99");
    // The bucket of kvmprof's own p99, from the bounds `serve` publishes.
    let metrics = get(&metrics_url, &[]).expect("/metrics");
    let mut bounds: Vec<f64> = metrics
        .lines()
        .filter(|l| l.starts_with("kvmprof_exit_latency_seconds_bucket{le=\""))
        .filter_map(|l| l.split('"').nth(1)?.parse().ok())
        .filter(|b: &f64| b.is_finite())
        .collect();
    bounds.sort_by(f64::total_cmp);
    bounds.dedup();
    let hi = bounds
        .iter()
        .copied()
        .find(|&b| b >= p99)
        .expect("p99 below 50 ms");
    let lo = bounds
        .iter()
        .copied()
        .rev()
        .find(|&b| b < p99)
        .unwrap_or(0.0);
    // `record` and `serve` time the same exits with their own programs, whose timestamps
    // differ by the other session's run time at each hook: tens of ns on a fast host,
    // hundreds on a slow nested one. That gap is measured, as the difference of the two
    // sessions' mean cycles; a p99 within it (thrice, for the tail, and at least 1% of the
    // bound) of a bound may fall on either side of it, so the neighbouring bucket counts too.
    let series = format!("{{pid=\"{pid}\",stage=\"cycle\"}}");
    let serve_mean_ns = query(&format!(
        "sum(kvmprof_exit_latency_seconds_sum{series}) / sum(kvmprof_exit_latency_seconds_count{series})"
    ))
    .expect("serve's mean cycle")
        * 1e9;
    let gap = (serve_mean_ns - record_mean_ns).abs() / 1e9;
    let near = |b: f64| (p99 - b).abs() <= (3.0 * gap).max(b / 100.0);
    let lo = if near(lo) {
        bounds
            .iter()
            .copied()
            .rev()
            .find(|&b| b < lo)
            .unwrap_or(0.0)
    } else {
        lo
    };
    let hi = if near(hi) {
        bounds.iter().copied().find(|&b| b > hi).unwrap_or(hi)
    } else {
        hi
    };
    eprintln!(
        "pid {pid}: {made} exits; record p99 {p99_ns} ns; Prometheus p99 {q:e} s; \
         bucket ({lo:e}, {hi:e}]; mean cycle record {record_mean_ns:.0} ns, serve {serve_mean_ns:.0} ns"
    );
    assert!(
        lo <= q && q <= hi,
        "Prometheus p99 {q:e} s outside ({lo:e}, {hi:e}], the bucket of kvmprof's p99 {p99:e} s"
    );
}

#[test]
fn a_vmm_that_exits_leaves_metrics_after_the_grace_period_and_a_new_one_appears() {
    let test = "a_vmm_that_exits_leaves_metrics_after_the_grace_period_and_a_new_one_appears";
    if skip_without_kvm(test) {
        return;
    }
    let dir = scratch("serve-grace");
    let grace = Duration::from_secs(8);
    // Run-time stats on throughout: every exit's BPF runs are counted (sampled, only 1 s in 10).
    let (mut serve, url) = start_serve(&dir, &["--grace", "8s", "--bpf-stats", "on"]);
    let exact = pvm();

    let first = run_vmm("1");
    let exited = Instant::now();
    let (pid, want) = (first["pid"].as_u64().unwrap(), made(&first["total"]));
    let metrics = wait_for(Duration::from_secs(6), || {
        get(&url, &[]).filter(|m| served_exits(m, pid) >= want)
    })
    .expect("the VMM's exits are served after it exited, within the grace period");
    assert!(
        exited.elapsed() < grace,
        "too slow to check within the grace period"
    );
    if exact {
        assert_eq!(served_exits(&metrics, pid), want);
    }
    assert!(
        metrics.contains(&format!(
            "pid=\"{pid}\",process=\"kvmprof-testvmm\",guest=\"\""
        )),
        "VM labels: {metrics}"
    );

    let gone = wait_for(Duration::from_secs(30), || {
        get(&url, &[]).filter(|m| !m.contains(&format!("pid=\"{pid}\"")))
    });
    assert!(
        gone.is_some(),
        "pid {pid} still served 30 s after it exited"
    );
    let after = exited.elapsed();
    // Expired at the first 1 s tick past the grace period; the VMM's exit was seen up to a
    // tick before the test saw it.
    assert!(
        after + Duration::from_secs(1) >= grace,
        "pid {pid} dropped {after:?} after it exited, before the {grace:?} grace period"
    );

    let second = run_vmm("2");
    let (pid2, want2) = (second["pid"].as_u64().unwrap(), made(&second["total"]));
    let metrics = wait_for(Duration::from_secs(6), || {
        get(&url, &[]).filter(|m| served_exits(m, pid2) >= want2)
    })
    .expect("a VMM started later is served");
    if exact {
        assert_eq!(served_exits(&metrics, pid2), want2);
    }
    assert!(
        metrics.contains(&format!(
            "pid=\"{pid2}\",process=\"kvmprof-testvmm\",guest=\"\",vcpu=\"1\""
        )),
        "per-vCPU counts: {metrics}"
    );
    assert!(metrics.contains("kvmprof_lost_exits_total 0"));
    assert!(metrics.contains("kvmprof_self_cpu_seconds_total{mode=\"user\"}"));
    // kvmprof's own BPF cost: every exit the VMMs made ran at least one of its programs
    // (other VMMs on the host only add runs), and that took some time.
    let runs = sample_sum(&metrics, "kvmprof_self_bpf_runs_total{program=");
    let bpf_s = sample_sum(&metrics, "kvmprof_self_bpf_seconds_total{program=");
    eprintln!(
        "own BPF cost: {runs} runs, {bpf_s} s, {:.0} ns per exit of the test VMMs",
        bpf_s * 1e9 / (want + want2) as f64
    );
    assert!(
        runs >= (want + want2) as f64,
        "{runs} BPF program runs for {} exits: {metrics}",
        want + want2
    );
    assert!(bpf_s > 0.0, "no BPF run time: {metrics}");
    assert!(
        metrics.contains("kvmprof_self_bpf_per_exit_seconds{bpf_stats=\"on\"} "),
        "{metrics}"
    );

    let status = serve.stop().expect("serve stops on SIGTERM");
    assert!(
        status.success(),
        "serve on SIGTERM: {status}; {}",
        serve.log()
    );
    assert!(
        serve.log().contains("every hook detached"),
        "{}",
        serve.log()
    );
}

#[test]
fn serve_refuses_a_listen_address_in_use() {
    if skip_without_kvm("serve_refuses_a_listen_address_in_use") {
        return;
    }
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().unwrap().to_string();
    let o = kvmprof(&["serve", "--listen", &addr]);
    assert_clean_error(&o, &format!("listen on {addr}"));
}

#[test]
fn serve_by_name_follows_a_vmm_that_starts_later() {
    if skip_without_kvm("serve_by_name_follows_a_vmm_that_starts_later") {
        return;
    }
    let dir = scratch("serve-follow");
    // A VMM that exists at start (the name must match something) and makes no exit.
    let idle = spawn(
        "idle test VMM",
        Command::new(bin("kvmprof-testvmm")).args(["--pio-user", "1", "--start-delay", "120s"]),
        dir.join("idle.log"),
    );
    let (mut serve, url) = start_serve(&dir, &["--pid", "kvmprof-testvmm", "--grace", "60s"]);
    // Started after `serve`; its first exit waits 3 s, past the tick that adds it.
    let later = Command::new(bin("kvmprof-testvmm"))
        .args(["--vcpus", "2", "--pio-user", "300", "--pio-kernel", "2000"])
        .args(["--mmio", "100", "--pio-in", "20", "--rate", "500"])
        .args(["--start-delay", "3s"])
        .output()
        .expect("run the test VMM");
    assert!(later.status.success(), "test VMM failed");
    let counts: Value = serde_json::from_slice(&later.stdout).expect("test VMM counts");
    let (pid, want) = (counts["pid"].as_u64().unwrap(), made(&counts["total"]));
    let metrics = wait_for(Duration::from_secs(6), || {
        get(&url, &[]).filter(|m| served_exits(m, pid) >= want)
    })
    .unwrap_or_else(|| panic!("pid {pid} not served: {}", serve.log()));
    if pvm() {
        assert_eq!(served_exits(&metrics, pid), want);
    }
    assert!(
        serve.log().contains(&format!("watching pid {pid} too")),
        "{}",
        serve.log()
    );
    drop(idle);
    let status = serve.stop().expect("serve stops on SIGTERM");
    assert!(status.success(), "{}", serve.log());
}

#[test]
fn serve_labels_a_qemu_vm_with_its_libvirt_style_guest_name() {
    let test = "serve_labels_a_qemu_vm_with_its_libvirt_style_guest_name";
    if skip_without_kvm(test) {
        return;
    }
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped {test}: qemu-system-x86_64 not installed");
        return;
    }
    let dir = scratch("serve-qemu");
    let (_serve, url) = start_serve(&dir, &[]);
    // How libvirt starts a domain: `-name guest=DOMAIN,debug-threads=on`.
    let guest = format!("serve-test-{}", std::process::id());
    let qemu = spawn(
        "qemu",
        Command::new("qemu-system-x86_64")
            .args([
                "-accel", "kvm", "-cpu", "qemu64", "-m", "128", "-display", "none",
            ])
            .args(["-serial", "none", "-monitor", "none", "-no-reboot"])
            .args(["-name", &format!("guest={guest},debug-threads=on")]),
        dir.join("qemu.log"),
    );
    let labels = format!(
        "pid=\"{}\",process=\"qemu-system-x86\",guest=\"{guest}\",vcpu=\"0\"",
        qemu.child.id()
    );
    // SeaBIOS makes port and MMIO exits from its first instructions.
    let served = wait_for(Duration::from_secs(20), || {
        get(&url, &[]).filter(|m| m.contains(&labels))
    });
    assert!(served.is_some(), "no series with {labels}: {}", qemu.log());
}

/// Issue 18: the kernel's tally slots (512) and histogram rows (1024) of exited threads are
/// given back. 16 test VMMs of 8 vCPUs make ~40 kinds of exit each, 640 in all, more than the
/// slots: without giving back, the VMMs after the 12th would send their exits one by one.
/// Every exit is still served exactly, none lost.
#[test]
fn tally_slots_of_exited_vmms_are_given_back_and_no_exit_is_lost_or_counted_twice() {
    let test = "tally_slots_of_exited_vmms_are_given_back_and_no_exit_is_lost_or_counted_twice";
    if skip_without_kvm(test) {
        return;
    }
    if !pvm() {
        eprintln!("skipped {test}: exact counts need PVM (hardware backends add exits)");
        return;
    }
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch("serve-recycle");
    let (mut serve, url) = start_serve(&dir, &["--grace", "600s"]);
    let one_by_one = |m: &str| sample_sum(m, "kvmprof_self_exits_total{path=\"one_by_one\"}");
    let before = one_by_one(&get(&url, &[]).expect("metrics"));
    let mut made_all = 0;
    let mut vmms = Vec::new();
    for _ in 0..16 {
        let out = Command::new(bin("kvmprof-testvmm"))
            .args(["--vcpus", "8", "--pio-user", "50", "--pio-kernel", "200"])
            // ~0.5 s each: slots are given back at each read (every second), so a burst
            // of such VMMs within one second would need them all at once.
            .args(["--mmio", "30", "--pio-in", "5", "--rate", "500"])
            .output()
            .expect("run the test VMM");
        assert!(out.status.success(), "test VMM failed");
        let counts: Value = serde_json::from_slice(&out.stdout).expect("test VMM counts");
        made_all += made(&counts["total"]);
        vmms.push((counts["pid"].as_u64().unwrap(), made(&counts["total"])));
    }
    let metrics = wait_for(Duration::from_secs(10), || {
        get(&url, &[]).filter(|m| vmms.iter().all(|&(pid, n)| served_exits(m, pid) >= n))
    })
    .unwrap_or_else(|| get(&url, &[]).unwrap_or_default());
    for &(pid, n) in &vmms {
        assert_eq!(served_exits(&metrics, pid), n, "pid {pid}");
    }
    assert_eq!(sample_sum(&metrics, "kvmprof_lost_exits_total"), 0.0);
    // Other VMMs on the host may send a few (a stage over 4.3 s); these send thousands
    // when their slots are not given back.
    let sent = one_by_one(&metrics) - before;
    assert!(
        sent * 100.0 < made_all as f64,
        "{sent} of these {made_all} exits came one by one: {}",
        serve.log()
    );
    serve.stop();
}

/// Issue 18: `serve`'s memory stays flat while VMs come and go. Rounds of 8 busy test VMMs
/// of 8 vCPUs (each ~150 series of histograms while it runs) exit and leave `/metrics` after
/// the grace period; once the allocator has warmed up (two rounds), serve's resident memory
/// does not keep growing. Kept per VM that left, the histograms alone grow it by megabytes
/// per VMM.
#[test]
fn serve_memory_stays_flat_while_vmms_come_and_go() {
    let test = "serve_memory_stays_flat_while_vmms_come_and_go";
    if skip_without_kvm(test) {
        return;
    }
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    const ROUNDS: usize = 6;
    const WARM_UP: usize = 2;
    let dir = scratch("serve-memory");
    let (mut serve, url) = start_serve(&dir, &["--grace", "1s", "--bpf-stats", "off"]);
    let rss_kb = |pid: u32| -> u64 {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS of serve")
    };
    let mut curve = Vec::new();
    for _ in 0..ROUNDS {
        let mut pids = Vec::new();
        for _ in 0..8 {
            let out = Command::new(bin("kvmprof-testvmm"))
                .args(["--vcpus", "8", "--pio-user", "2000", "--pio-kernel", "5000"])
                .args(["--mmio", "500", "--pio-in", "100"])
                .output()
                .expect("run the test VMM");
            assert!(out.status.success(), "test VMM failed");
            let counts: Value = serde_json::from_slice(&out.stdout).expect("test VMM counts");
            pids.push(counts["pid"].as_u64().expect("pid"));
        }
        // Served first (the last VMM's exits may still be on their way), then gone.
        let last = *pids.last().expect("a VMM");
        let served = wait_until(Duration::from_secs(10), || {
            get(&url, &[]).is_some_and(|m| served_exits(&m, last) > 0)
        });
        assert!(served, "VMM {last} never served: {}", serve.log());
        let gone = wait_until(Duration::from_secs(30), || {
            get(&url, &[]).is_some_and(|m| pids.iter().all(|&p| served_exits(&m, p) == 0))
        });
        assert!(
            gone,
            "the round's VMMs are still on /metrics: {}",
            serve.log()
        );
        curve.push(rss_kb(serve.child.id()));
    }
    eprintln!("serve RSS after each round of 8 VMMs (KiB): {curve:?}");
    // The allocator keeps some of what was freed and other tests' VMMs come and go in the
    // same serve (it sees every VMM on the host): single rounds jump by a quarter, so the
    // lower of the last two rounds is held to 140 % of the higher warm-up round (a warm-up
    // round can dip as well: 199, 67, then 170-179 MiB beside the other tests). Seen: flat
    // alone (134, 127, 140, 129, 129 MiB after round 2) and beside the other tests (63 → 80
    // MiB); with the closing histograms of VMs that left kept, 181 → 289, 323 MiB.
    let base = curve[..WARM_UP].iter().copied().max().unwrap_or(0);
    let end = curve[ROUNDS - 2].min(curve[ROUNDS - 1]);
    assert!(
        end * 10 <= base * 14,
        "serve's memory grew from {base} KiB in the first {WARM_UP} rounds to {end} KiB: {curve:?}"
    );
    serve.stop();
}

/// The fleet artefacts in `packaging/`: every query of the Grafana dashboard (panels and
/// template variables, with the variables filled in) returns data from a real Prometheus
/// scraping `kvmprof serve` while the test VMM runs, and every alerting and recording rule
/// evaluates without error. (Whether the alerts fire when they should is promtool's test,
/// tests/prometheus/kvmprof-alerts.test.yml.)
#[test]
fn every_dashboard_query_returns_data_and_every_rule_evaluates_against_a_real_prometheus() {
    let test =
        "every_dashboard_query_returns_data_and_every_rule_evaluates_against_a_real_prometheus";
    if skip_without_kvm(test) {
        return;
    }
    if !Path::new(PROMETHEUS).exists() {
        eprintln!("skipped {test}: no {PROMETHEUS} (Debian package prometheus)");
        return;
    }
    let packaging = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging");
    let dir = scratch("serve-dashboard");
    // BPF statistics throughout: the own-cost panel divides by the exits they measured.
    let (_serve, metrics_url) = start_serve(&dir, &["--grace", "120s", "--bpf-stats", "on"]);
    let (_prom, api) =
        start_prometheus(&dir, &metrics_url, &[packaging.join("kvmprof-alerts.yml")]);
    let result = |q: &str| -> Option<Vec<Value>> {
        let body: Value = serde_json::from_str(&get(&api, &[("query", q)])?).ok()?;
        body["data"]["result"].as_array().cloned()
    };

    let counts = run_vmm("2");
    let (pid, want) = (counts["pid"].as_u64().unwrap(), made(&counts["total"]));
    let total = format!("sum(kvmprof_exits_total{{pid=\"{pid}\"}})");
    let seen = wait_for(Duration::from_secs(60), || {
        result(&total)?
            .first()?
            .pointer("/value/1")?
            .as_str()?
            .parse::<f64>()
            .ok()
            .filter(|&n| n as u64 >= want)
    });
    assert!(
        seen.is_some(),
        "pid {pid}'s {want} exits never reached Prometheus"
    );
    // A few more scrapes: every rate() window then holds two samples of each series.
    sleep(Duration::from_secs(3));

    let dashboard: Value = serde_json::from_str(
        &fs::read_to_string(packaging.join("kvmprof-dashboard.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    // The variables as a user would set them: this VM, every host, reason, the cycle stage.
    let pid_value = pid.to_string();
    let fill = |q: &str| {
        [
            ("$__rate_interval", "1m"),
            ("$instance", ".*"),
            ("$pid", pid_value.as_str()),
            ("$reason", ".*"),
            ("$stage", "cycle"),
        ]
        .iter()
        .fold(q.to_string(), |q, (var, value)| q.replace(var, value))
    };
    let mut queries: Vec<(String, String)> = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?");
            queries.push((title.into(), fill(target["expr"].as_str().expect("expr"))));
        }
    }
    // Grafana's label_values(METRIC, LABEL) is the values of LABEL among METRIC's series.
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        let Some(q) = var["query"]["query"].as_str() else {
            continue;
        };
        let Some(args) = q
            .strip_prefix("label_values(")
            .and_then(|a| a.strip_suffix(')'))
        else {
            continue;
        };
        let (metric, label) = args.rsplit_once(',').expect("label_values(METRIC, LABEL)");
        let name = format!("variable {}", var["name"].as_str().unwrap_or("?"));
        queries.push((
            name,
            fill(&format!("group by ({}) ({metric})", label.trim())),
        ));
    }
    assert!(queries.len() >= 10, "{queries:?}");
    let empty: Vec<String> = queries
        .iter()
        .filter(|(_, q)| result(q).is_none_or(|r| r.is_empty()))
        .map(|(panel, q)| format!("{panel}: {q}"))
        .collect();
    eprintln!("{} dashboard queries evaluated", queries.len());
    assert!(
        empty.is_empty(),
        "queries without data:\n{}",
        empty.join("\n")
    );

    // Every rule of the file loaded and evaluated at least once, without error.
    let rules_api = api.replace("/query", "/rules");
    let evaluated = |r: &Value| {
        r["health"] == "ok"
            && r["lastEvaluation"]
                .as_str()
                .is_some_and(|t| !t.starts_with("0001"))
    };
    let rules = wait_for(Duration::from_secs(10), || {
        let body: Value = serde_json::from_str(&get(&rules_api, &[])?).ok()?;
        let rules: Vec<Value> = body["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        rules.iter().all(evaluated).then_some(rules)
    });
    let rules = rules.unwrap_or_else(|| {
        panic!(
            "rules not all evaluated without error: {}",
            get(&rules_api, &[]).unwrap_or_default()
        )
    });
    eprintln!("{} rules evaluated without error", rules.len());
    let file = fs::read_to_string(packaging.join("kvmprof-alerts.yml")).expect("rules");
    let in_file = file
        .lines()
        .filter(|l| {
            ["- alert:", "- record:"]
                .iter()
                .any(|k| l.trim().starts_with(k))
        })
        .count();
    assert_eq!(
        rules.len(),
        in_file,
        "rules of packaging/kvmprof-alerts.yml"
    );
}

/// `(labels, value)` of each `kvmprof_exit_detail_total` series of `pid`.
fn detail_series(metrics: &str, pid: u64) -> Vec<(String, u64)> {
    let mine = format!("kvmprof_exit_detail_total{{pid=\"{pid}\",");
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(&mine))
        .filter_map(|l| {
            let (labels, n) = l.rsplit_once(' ')?;
            Some((
                labels.trim_end_matches('}').to_owned(),
                n.parse::<f64>().ok()? as u64,
            ))
        })
        .collect()
}

/// `serve --detail`: a VM's first `--detail-top` keys have series, exact, and with `other`
/// each reason's series add up to its exits.
#[test]
fn serve_detail_exports_the_top_keys_exactly_and_the_rest_as_other() {
    let test = "serve_detail_exports_the_top_keys_exactly_and_the_rest_as_other";
    if skip_without_kvm(test) {
        return;
    }
    let dir = scratch("serve-detail");
    // The VMM waits until `serve` is surely attached, and after its last exit stays long
    // enough for a scrape to hold every exit: `serve --pid` ends with its process.
    let mut vmm = Command::new(bin("kvmprof-testvmm"))
        .args(["--vcpus", "1", "--pio-user", "300", "--pio-kernel", "2000"])
        .args(["--mmio", "100", "--pio-in", "20"])
        .args(["--start-delay", "8s", "--end-delay", "4s"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the test VMM");
    let pid = u64::from(vmm.id());
    let (serve, url) = start_serve(
        &dir,
        &["--pid", &pid.to_string(), "--detail", "--detail-top", "2"],
    );
    let mut metrics = String::new();
    while vmm.try_wait().expect("the test VMM").is_none() {
        if let Some(m) = get(&url, &[]) {
            metrics = m;
        }
        sleep(Duration::from_millis(300));
    }
    let out = vmm.wait_with_output().expect("wait for the test VMM");
    assert!(out.status.success(), "test VMM failed");
    let counts: Value = serde_json::from_slice(&out.stdout).expect("test VMM counts");
    let t = &counts["total"];
    if pvm() {
        assert_eq!(served_exits(&metrics, pid), made(t), "{}", serve.log());
    }
    let series = detail_series(&metrics, pid);
    let keyed: Vec<&(String, u64)> = series
        .iter()
        .filter(|(l, _)| !l.contains("key=\"other\""))
        .collect();
    assert_eq!(keyed.len(), 2, "{metrics}");
    let ports = &counts["ports"];
    let hex = |v: &Value| format!("{:#x}", v.as_u64().unwrap_or(u64::MAX));
    let known = [
        (
            format!(
                "space=\"pio\",key=\"{}\",dir=\"out\"",
                hex(&ports["pio_user"])
            ),
            &t["pio_user"],
        ),
        (
            format!(
                "space=\"pio\",key=\"{}\",dir=\"out\"",
                hex(&ports["pio_kernel"][0])
            ),
            &t["pio_kernel"],
        ),
        (
            format!("space=\"pio\",key=\"{}\",dir=\"in\"", hex(&ports["pio_in"])),
            &t["pio_in"],
        ),
        (
            format!(
                "space=\"mmio\",key=\"{}\",dir=\"write\"",
                hex(&ports["mmio_addr"])
            ),
            &t["mmio_user"],
        ),
    ];
    for (labels, n) in &keyed {
        let (_, made) = known
            .iter()
            .find(|(k, _)| labels.ends_with(k.as_str()))
            .unwrap_or_else(|| panic!("unknown key {labels}"));
        if pvm() {
            assert_eq!(Some(*n), made.as_u64(), "{labels}");
        }
    }
    // Each reason's series add up to its exits.
    let reason = |l: &str| {
        l.split("reason=\"")
            .nth(1)?
            .split('"')
            .next()
            .map(str::to_owned)
    };
    let mut reasons: Vec<String> = series.iter().filter_map(|(l, _)| reason(l)).collect();
    reasons.dedup();
    let exits = format!("kvmprof_exits_total{{pid=\"{pid}\",");
    for r in reasons {
        let of = |metric: &str| -> u64 {
            metrics
                .lines()
                .filter(|l| l.starts_with(metric) && reason(l).as_deref() == Some(r.as_str()))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .map(|n| n as u64)
                .sum()
        };
        let keys = of(&format!("kvmprof_exit_detail_total{{pid=\"{pid}\","));
        assert_eq!(keys, of(&exits), "reason {r}:\n{metrics}");
    }
    drop(serve);
}
