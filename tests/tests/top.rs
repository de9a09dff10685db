//! `kvmprof top` as a person uses it: the real binary, full-screen in a tmux pane (keys sent
//! with send-keys, the screen read with capture-pane), watching real test VMMs.
use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use kvmprof_tests::{
    bin, made, scratch, skip_without_kvm, wait_until, PIO_IN_PORT, PIO_KERNEL_PORT_BASE,
    PIO_USER_PORT, SLOW_INS,
};
use serde_json::Value;

/// Skips (printing why) without root, /dev/kvm or tmux.
fn skip(test: &str) -> bool {
    if skip_without_kvm(test) {
        return true;
    }
    let tmux = Command::new("tmux").arg("-V").output();
    if !tmux.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped {test}: no tmux (cargo xtask setup installs it)");
        return true;
    }
    false
}

/// The test VMM under a name no other process on the machine has, so that `top -p NAME`
/// sees only this test's VMMs (other tests run test VMMs at the same time). A symbolic
/// link: the kernel names a process after the file name it was started by, and a copy
/// could still be open for writing in a child forked meanwhile (ETXTBSY).
fn vmm_named(dir: &Path, test: &str) -> (PathBuf, String) {
    // /proc/PID/comm keeps 15 characters.
    let name = format!("{test}{}", std::process::id() % 100_000);
    let path = dir.join(&name);
    std::os::unix::fs::symlink(bin("kvmprof-testvmm"), &path).expect("link the test VMM");
    (path, name)
}

/// A test VMM, killed on drop.
struct Vmm {
    child: Child,
    pid: u32,
}

impl Vmm {
    /// Starts `exe` with `args` and waits until its vCPU threads exist.
    fn start(exe: &Path, args: &[&str], ready: &Path) -> Vmm {
        let _ = std::fs::remove_file(ready);
        let child = Command::new(exe)
            .args(args)
            .arg("--ready-file")
            .arg(ready)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the test VMM");
        let pid = child.id();
        let ready = wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(ready).is_ok_and(|t| t.ends_with('\n'))
        });
        assert!(ready, "timed out waiting until the test VMM is ready");
        Vmm { child, pid }
    }

    /// Waits for the VMM to end by itself; its exits: those its guest made on purpose and
    /// any other.
    fn wait(mut self) -> u64 {
        let out = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap())
            .wait_with_output()
            .expect("wait for the test VMM");
        assert!(out.status.success(), "test VMM failed");
        let counts: Value = serde_json::from_slice(&out.stdout).expect("test VMM counts");
        let total = &counts["total"];
        made(total) + total["other"].as_u64().expect("other exits")
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kvmprof top ARGS` in a detached tmux session on its own server, killed on drop.
struct Pane {
    socket: String,
}

impl Pane {
    fn open(test: &str, width: u16, height: u16, args: &[&str]) -> Pane {
        let socket = format!("kvmprof-{test}-{}", std::process::id());
        // The shell keeps the pane open after kvmprof ends, to show how it ended.
        let command = format!(
            "{} top {}; echo \"kvmprof exited with $?\"; sleep 600",
            bin("kvmprof").display(),
            args.join(" ")
        );
        let pane = Pane { socket };
        let (w, h) = (width.to_string(), height.to_string());
        pane.tmux(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            &w,
            "-y",
            &h,
            &command,
        ]);
        pane
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("run tmux");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sends one key (tmux names: `End`, `PageDown`, `Escape`, `Space`) or literal text.
    fn keys(&self, keys: &str) {
        self.tmux(&["send-keys", "-t", "top", keys]);
        // An Escape followed at once by another key reads as Alt+key.
        sleep(Duration::from_millis(300));
    }

    fn text(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "top", "-l", text]);
        sleep(Duration::from_millis(300));
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "top"])
    }

    /// Presses `key` until the screen shows what it does: once more after 10 s without it,
    /// three times at most. A key sent right after a resize was once never seen in CI (the
    /// screen after 30 s still had the old order), and passed in every run here.
    fn press_until(&self, key: &str, what: &str, ready: impl Fn(&str) -> bool) -> String {
        for _ in 0..2 {
            self.keys(key);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                let screen = self.screen();
                if ready(&screen) {
                    return screen;
                }
                sleep(Duration::from_millis(200));
            }
        }
        self.keys(key);
        self.wait_for(what, ready)
    }

    /// The screen once `ready` holds for it; fails with the screen after 30 s (attaching on
    /// a loaded host has taken over 10).
    fn wait_for(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let screen = self.screen();
            if ready(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the screen:\n{screen}"
            );
            sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Pane {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// The labels of the table rows whose label starts with `prefix` (labels are followed by
/// at least two spaces).
fn labels(screen: &str, prefix: &str) -> Vec<String> {
    screen
        .lines()
        .filter(|l| l.trim_start_matches("✗ ").starts_with(prefix))
        .map(|l| l.split("  ").next().unwrap_or_default().to_owned())
        .collect()
}

/// The footer (last line).
fn footer(screen: &str) -> &str {
    screen.trim_end().lines().last().unwrap_or_default()
}

/// The `exits N` of the title line.
fn exits(screen: &str) -> u64 {
    let title = screen.lines().next().unwrap_or_default();
    let n = title
        .split("exits ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next());
    n.and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exit count in {title}"))
}

/// Waits until the first row shown is row `first` (from 1).
fn scrolled_to(pane: &Pane, first: usize) {
    pane.wait_for(&format!("row {first} on top"), |s| position(s).0 == first);
}

/// `rows A-B of N` of the footer.
fn position(screen: &str) -> (usize, usize, usize) {
    let f = footer(screen);
    let rest = f
        .split("rows ")
        .nth(1)
        .unwrap_or_else(|| panic!("no position in the footer: {f}"));
    let mut words = rest.split_whitespace();
    let range = words.next().unwrap();
    let (a, b) = range.split_once('-').unwrap();
    assert_eq!(words.next(), Some("of"));
    let n = words.next().unwrap().parse().unwrap();
    (a.parse().unwrap(), b.parse().unwrap(), n)
}

#[test]
fn top_scrolls_filters_pauses_and_lists_every_key_in_a_terminal() {
    let test = "top_scrolls_filters_pauses_and_lists_every_key_in_a_terminal";
    if skip(test) {
        return;
    }
    let dir = scratch("top-keys");
    let (exe, _) = vmm_named(&dir, "tkeys");
    // 24 vCPUs: more rows than an 80x24 screen holds.
    let vmm = Vmm::start(
        &exe,
        &[
            "--vcpus",
            "24",
            "--pio-user",
            "2",
            "--pio-kernel",
            "3",
            "--rate",
            "40",
            "--forever",
            "--duration",
            "120",
        ],
        &dir.join("ready"),
    );
    let pid = vmm.pid.to_string();
    let pane = Pane::open("keys", 80, 24, &["-p", &pid]);
    let row = format!("pid {pid} vcpu ");
    pane.wait_for("the first rates", |s| {
        s.contains("KVM_EXIT_IO") && !s.contains("rate -/s")
    });

    // Rows by vCPU: 24 rows, and the header shrinks so that the screen is full of rows.
    pane.keys("v");
    let s = pane.wait_for("24 vCPU rows", |s| {
        s.contains("rows 1-") && s.contains("of 24")
    });
    let (first, last, n) = position(&s);
    let page = last;
    assert_eq!((first, n), (1, 24), "{s}");
    assert_eq!(labels(&s, &row).len(), page, "{s}");
    assert!(
        page >= 18,
        "the header gave way to rows: {page} of 23 lines\n{s}"
    );
    assert!(!s.contains("hooks "), "{s}");

    // Paused, the rows hold still, so scrolling shows the rest of them.
    pane.keys("Space");
    let paused = pane.wait_for("the pause", |s| footer(s).contains("PAUSED"));
    let top_rows: BTreeSet<String> = labels(&paused, &row).into_iter().collect();
    pane.keys("End");
    let end = pane.wait_for("the last page", |s| position(s).1 == 24);
    assert_eq!(position(&end), (24 - page + 1, 24, 24), "{end}");
    let end_rows: BTreeSet<String> = labels(&end, &row).into_iter().collect();
    let all: BTreeSet<String> = (0..24).map(|v| format!("{row}{v}")).collect();
    assert_eq!(
        &top_rows | &end_rows,
        all,
        "the first and the last page show every vCPU\n{paused}\n{end}"
    );
    assert!(!end_rows.is_subset(&top_rows), "End scrolled\n{end}");
    pane.keys("Home");
    scrolled_to(&pane, 1);
    pane.keys("Down");
    pane.keys("Down");
    scrolled_to(&pane, 3);
    pane.keys("Up");
    scrolled_to(&pane, 2);
    pane.keys("PageUp");
    scrolled_to(&pane, 1);
    // A page down, or as far as the last row allows.
    pane.keys("PageDown");
    scrolled_to(&pane, (1 + page).min(24 - page + 1));

    // The display is frozen while paused; recording goes on.
    let before = exits(&pane.screen());
    sleep(Duration::from_millis(1500));
    let still = pane.screen();
    assert_eq!(
        exits(&still),
        before,
        "a paused display does not change\n{still}"
    );
    pane.keys("Space");
    let resumed = pane.wait_for("new counts", |s| exits(s) > before);
    assert!(!footer(&resumed).contains("PAUSED"), "{resumed}");
    // ~24 × 40 exits/s went on while paused (1.5 s and more): they are all counted.
    assert!(
        exits(&resumed) >= before + 24 * 40,
        "{before} then\n{resumed}"
    );

    // `/` filters the rows by regex.
    pane.keys("/");
    pane.text("vcpu (3|17)$");
    pane.wait_for("the filter typed", |s| footer(s).contains("/vcpu (3|17)$█"));
    pane.keys("Enter");
    let s = pane.wait_for("filtered rows", |s| labels(s, &row).len() == 2);
    let shown: BTreeSet<String> = labels(&s, &row).into_iter().collect();
    let want: BTreeSet<String> = [3, 17].iter().map(|v| format!("{row}{v}")).collect();
    assert_eq!(shown, want, "{s}");
    assert!(footer(&s).contains("/vcpu (3|17)$/"), "{s}");
    // A bad regex is refused with the reason, and the filter stays as it was.
    pane.keys("/");
    pane.keys("BSpace");
    pane.text("(");
    pane.keys("Enter");
    let s = pane.wait_for("the regex error", |s| footer(s).contains("unclosed group"));
    assert_eq!(labels(&s, &row).len(), 2, "{s}");
    pane.keys("Escape");
    // Esc first closes the edit, then clears the filter.
    pane.keys("Escape");
    pane.wait_for("every row again", |s| labels(s, &row).len() == page);

    // `?` lists every key, Esc among them, and Esc closes the list.
    pane.keys("?");
    let help = pane.wait_for("the help", |s| s.contains("kvmprof top: keys"));
    for key in [
        "↑ ↓",
        "PgUp PgDn",
        "Home End",
        "/",
        "space",
        "s ",
        "I ",
        "r v p",
        "z ",
        "Enter d",
        "? h",
        "Esc",
        "q  Ctrl-C",
        "✗",
    ] {
        assert!(
            help.contains(&format!("│ {key}")),
            "no {key} in the help:\n{help}"
        );
    }
    pane.keys("Escape");
    let s = pane.wait_for("the help closed", |s| !s.contains("kvmprof top: keys"));
    assert_eq!(labels(&s, &row).len(), page, "top still runs:\n{s}");

    // Wide: more latency columns and the whole summary; the reverse order is shown.
    assert!(!s.contains("p99.9") && !s.contains("mean"), "{s}");
    pane.tmux(&["resize-window", "-t", "top", "-x", "200", "-y", "50"]);
    pane.wait_for("the wide screen", |s| s.contains("mean"));
    let wide = pane.press_until("I", "the reverse order", |s| {
        footer(s).contains("sort exits/s ↑")
    });
    for column in ["p50", "p90", "p99", "p99.9", "max", "mean"] {
        assert!(
            wide.contains(&format!(" {column} ")) || wide.contains(&format!(" {column}\n")),
            "no {column}:\n{wide}"
        );
    }
    assert!(wide.contains("\nhooks "), "{wide}");
    assert!(footer(&wide).contains("sort exits/s ↑"), "{wide}");
    assert_eq!(labels(&wide, &row).len(), 24, "{wide}");

    // `z` resets: totals count from zero again.
    pane.keys("r");
    let before = exits(&pane.screen());
    pane.keys("z");
    let s = pane.wait_for("the reset", |s| footer(s).contains("since reset"));
    assert!(exits(&s) < before, "{before} then\n{s}");

    // `d` opens the keys of the first row shown, here the in-kernel port exits' ports; Esc
    // closes them, then clears the filter.
    pane.keys("/");
    pane.text("in-kernel");
    pane.keys("Enter");
    pane.wait_for("the in-kernel row alone", |s| !s.contains("KVM_EXIT_IO"));
    pane.keys("d");
    let s = pane.wait_for("the keys panel", |s| {
        s.contains("keys of the first row shown")
    });
    assert!(s.contains("pio (in-kernel): keys (top "), "{s}");
    assert!(s.contains(" pio "), "{s}");
    pane.keys("Escape");
    let s = pane.wait_for("the panel closed", |s| {
        !s.contains("keys of the first row shown")
    });
    assert!(footer(&s).contains("/in-kernel/"), "{s}");

    pane.keys("q");
    pane.wait_for("kvmprof to quit", |s| s.contains("kvmprof exited with 0"));
    drop(vmm);
}

#[test]
fn top_by_name_follows_a_vmm_started_later_and_marks_it_when_it_exits() {
    let test = "top_by_name_follows_a_vmm_started_later_and_marks_it_when_it_exits";
    if skip(test) {
        return;
    }
    let dir = scratch("top-follow");
    let (exe, name) = vmm_named(&dir, "tfollow");
    let first = Vmm::start(
        &exe,
        &[
            "--pio-user",
            "2",
            "--rate",
            "50",
            "--forever",
            "--duration",
            "120",
        ],
        &dir.join("ready-1"),
    );
    let pane = Pane::open("follow", 80, 24, &["-p", &name]);
    pane.keys("p");
    let first_row = format!("{} {name}", first.pid);
    pane.wait_for("the first VMM's row", |s| {
        s.contains("PROCESS") && s.contains(&first_row)
    });

    // Started after `top`: matched by name, traced from its first exit. The delay before
    // its first KVM_RUN leaves `top` time to add it to the kernel's filter.
    let later = Vmm::start(
        &exe,
        &[
            "--vcpus",
            "2",
            "--pio-user",
            "3",
            "--pio-kernel",
            "2",
            "--rate",
            "100",
            "--forever",
            "--start-delay",
            "1s",
            "--duration",
            "3",
        ],
        &dir.join("ready-2"),
    );
    let later_pid = later.pid;
    let later_row = format!("{later_pid} {name}");
    pane.wait_for("the later VMM's row", |s| s.contains(&later_row));
    let made = later.wait();

    // Marked as exited, with every exit it made counted...
    let mark = format!("✗ {later_row}");
    let total = |s: &str| -> Option<u64> {
        let row = s.lines().find(|l| l.starts_with(&mark))?;
        row.split_whitespace().nth(4)?.parse().ok()
    };
    let s = pane.wait_for("the exited mark", |s| s.contains(&mark));
    assert!(s.contains(&format!("exited: {later_row}")), "{s}");
    pane.wait_for(&format!("all {made} exits counted"), |s| {
        total(s) == Some(made)
    });
    // ... then gone after the grace period, while the first VMM stays.
    let s = pane.wait_for("the exited row to leave", |s| !s.contains(&later_row));
    assert!(s.contains(&first_row), "{s}");
    assert!(!s.contains("kvmprof exited"), "top runs on: {s}");
    drop(first);
}

#[test]
fn top_batch_counts_exactly_the_exits_over_the_slow_threshold_and_lists_the_latest() {
    let test = "top_batch_counts_exactly_the_exits_over_the_slow_threshold_and_lists_the_latest";
    if skip_without_kvm(test) {
        return;
    }
    let dir = scratch("top-slow");
    // The slow workload, waiting 8 s before its first KVM_RUN so that `top` is attached
    // by then, even on a loaded host (attaching every hook has taken over 3 s there).
    let vmm_args = [&SLOW_INS[..], &["--start-delay", "8s"]].concat();
    let vmm = Vmm::start(&bin("kvmprof-testvmm"), &vmm_args, &dir.join("ready"));
    let started = Instant::now();
    let pid = vmm.pid.to_string();
    let mut top = Command::new(bin("kvmprof"))
        .args(["top", "--batch", "--delay", "200ms", "--slow", "vmm=40ms"])
        .args(["-p", &pid])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kvmprof top");
    let mut lines = BufReader::new(top.stdout.take().expect("top's stdout")).lines();
    let first = lines.next().expect("a first frame").expect("read top");
    assert!(first.starts_with("kvmprof top"), "{first}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "top attached after the VMM began"
    );
    vmm.wait();
    // `top -p PID` prints a last frame when its process exits, then ends.
    let rest: Vec<String> = lines.map(|l| l.expect("read top")).collect();
    let out = top.wait_with_output().expect("wait for kvmprof top");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = rest
        .rsplit(|l| l.starts_with("kvmprof top"))
        .next()
        .expect("a last frame");
    let text = last.join("\n");
    assert!(
        last.contains(&"slow  8 exits with vmm > 40.0ms".to_owned()),
        "{text}"
    );
    // The latest 5, as `report` lists them.
    assert_eq!(
        text.matches(format!("pio {PIO_IN_PORT:#x} in").as_str())
            .count(),
        5,
        "{text}"
    );
}

#[test]
fn top_batch_detail_lists_each_rows_ports_with_exact_counts() {
    let test = "top_batch_detail_lists_each_rows_ports_with_exact_counts";
    if skip_without_kvm(test) {
        return;
    }
    let dir = scratch("top-detail");
    // As above: the VMM waits until `top` is surely attached.
    let args = [
        "--vcpus",
        "1",
        "--pio-user",
        "200",
        "--pio-kernel",
        "300",
        "--start-delay",
        "8s",
    ];
    let vmm = Vmm::start(&bin("kvmprof-testvmm"), &args, &dir.join("ready"));
    let pid = vmm.pid.to_string();
    let top = Command::new(bin("kvmprof"))
        .args(["top", "--batch", "--detail", "--delay", "500ms", "-p", &pid])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kvmprof top");
    vmm.wait();
    let out = top.wait_with_output().expect("wait for kvmprof top");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.rsplit("kvmprof top").next().expect("a last frame");
    // pid, space, key, dir, count: once per key, under its reason's row.
    let count = |port: u64| -> Vec<String> {
        last.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|c| c.len() > 4 && c[1] == "pio" && c[2] == format!("{port:#x}"))
            .map(|c| format!("{} {}", c[3], c[4]))
            .collect()
    };
    assert_eq!(count(PIO_USER_PORT), ["out 200"], "{last}");
    assert_eq!(count(PIO_KERNEL_PORT_BASE), ["out 300"], "{last}");
    assert!(last.contains(": keys (top "), "{last}");
}
