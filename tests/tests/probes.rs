//! `kvmprof probes` explains, for this kernel, which hook each stage uses and why the
//! better ones were rejected.
use kvmprof_tests::{assert_clean_error, bin, kvmprof, skip_without_kvm, stderr};

#[test]
fn probes_names_the_backend_and_explains_every_rejected_hook() {
    if skip_without_kvm("probes_names_the_backend_and_explains_every_rejected_hook") {
        return;
    }
    let out = kvmprof(&["probes", "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stages = plan["stages"].as_array().unwrap();
    for s in stages {
        assert!(
            s["why"].as_str().is_some_and(|w| !w.is_empty()),
            "no reason given for the choice in {s}"
        );
        if s["mode"] == "unavailable" || s["mode"] == "tracepoint" {
            assert!(
                !s["rejected"].as_array().unwrap().is_empty() || s["stage"] == "vmm",
                "no reason given for {s}"
            );
        }
    }
    let kprobes = std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists();
    let text = String::from_utf8(kvmprof(&["probes"]).stdout).unwrap();
    if !kprobes {
        assert!(text.contains("kprobes are not available"), "{text}");
    }
    // The load attempt's outcome is stated, and the plan agrees with it: a refusal gives
    // the kernel's reason and no stage uses fentry; where allowed, none is refused for it.
    let fentry = text
        .lines()
        .find_map(|l| l.strip_prefix("fentry: "))
        .unwrap_or_else(|| panic!("no fentry line in {text}"));
    let uses_fentry = stages.iter().any(|s| s["mode"] == "fentry");
    if let Some(why) = fentry.strip_prefix("refused (") {
        assert!(
            why.len() > 5 && why.contains(')'),
            "no reason given: {fentry}"
        );
        assert!(!uses_fentry, "fentry was refused but planned: {plan}");
        assert!(text.contains("- fentry: refused by the kernel"), "{text}");
    } else {
        assert!(
            fentry.starts_with("allowed") || fentry.starts_with("not tried"),
            "unexpected fentry outcome: {fentry}"
        );
        assert!(!text.contains("fentry: refused by the kernel"), "{text}");
    }
}

#[test]
fn probes_without_root_says_it_needs_root() {
    if skip_without_kvm("probes_without_root_says_it_needs_root") {
        return;
    }
    // Run as `nobody`, with no supplementary groups, the way a user would forget sudo.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin("kvmprof"))
        .arg("probes")
        .output();
    let Ok(out) = out else {
        eprintln!("skipped probes_without_root_says_it_needs_root: no setpriv");
        return;
    };
    kvmprof_tests::assert_clean_error(&out, "kvmprof probes must run as root");
    assert!(!stderr(&out).contains("tracefs"), "{}", stderr(&out));
}

#[test]
fn forcing_an_impossible_hook_mode_fails_clearly() {
    if skip_without_kvm("forcing_an_impossible_hook_mode_fails_clearly") {
        return;
    }
    if std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        eprintln!("skipped forcing_an_impossible_hook_mode_fails_clearly: this kernel has kprobes");
        return;
    }
    let out = kvmprof(&["probes", "--hooks", "kprobe"]);
    kvmprof_tests::assert_clean_error(&out, "--hooks kprobe is impossible here");
}

#[test]
fn forcing_fentry_where_trampolines_are_refused_fails_clearly() {
    if skip_without_kvm("forcing_fentry_where_trampolines_are_refused_fails_clearly") {
        return;
    }
    let out = kvmprof(&["probes", "--hooks", "fentry"]);
    if out.status.success() {
        eprintln!(
            "skipped forcing_fentry_where_trampolines_are_refused_fails_clearly: this kernel allows fentry"
        );
        return;
    }
    kvmprof_tests::assert_clean_error(
        &out,
        "--hooks fentry is impossible here: fentry: refused by the kernel",
    );
}

/// `probes | head -c 10` and `probes > /dev/full`: a reader that went away is no error, a
/// full disk is one line; neither panics (issue 19, item 7).
#[test]
fn probes_on_a_closed_pipe_or_a_full_disk_does_not_panic() {
    if skip_without_kvm("probes_on_a_closed_pipe_or_a_full_disk_does_not_panic") {
        return;
    }
    let run = |redirect: &str| {
        std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "set -o pipefail; {} probes {redirect}",
                bin("kvmprof").display()
            ))
            .output()
            .expect("run bash")
    };
    // `true` is gone long before probes has its plan, so every byte meets a closed pipe.
    let out = run("| true");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    assert_clean_error(&run("> /dev/full"), "No space left on device");
}

/// Loading is paid at every start, mostly in the verifier: ~760 000 instructions walked on
/// this host before the tally's bucket index lost its branches, ~105 000 since. The bound
/// catches a change that makes a program's paths multiply again.
#[test]
fn probes_lists_the_programs_it_loaded_and_what_verifying_them_cost() {
    let name = "probes_lists_the_programs_it_loaded_and_what_verifying_them_cost";
    if skip_without_kvm(name) {
        return;
    }
    let (total, text) = verified(&[]);
    if total == 0 {
        println!("SKIP {name}: this kernel does not count verified instructions (before 5.16)");
        return;
    }
    assert!(
        total < 300_000,
        "the verifier walked {total} instructions:\n{text}"
    );
}

#[test]
fn debug_bpf_loads_the_anomaly_log_only_when_asked() {
    let name = "debug_bpf_loads_the_anomaly_log_only_when_asked";
    if skip_without_kvm(name) {
        return;
    }
    let (plain, _) = verified(&[]);
    let (debug, text) = verified(&["--debug-bpf"]);
    if plain == 0 {
        println!("SKIP {name}: this kernel does not count verified instructions (before 5.16)");
        return;
    }
    // The log sites are behind a load-time constant: pruned without the flag, verified with.
    assert!(
        debug > plain,
        "--debug-bpf verified {debug} instructions, without it {plain}:\n{text}"
    );
}

/// `kvmprof probes ARGS`: the total of instructions verified (0 where the kernel does not
/// count them) and the text, once its list of programs is checked.
fn verified(args: &[&str]) -> (u64, String) {
    let out = kvmprof(&[&["probes"], args].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("programs loaded: "))
        .unwrap_or_else(|| panic!("no programs line in {text}"));
    let (programs, total) = line
        .strip_prefix("programs loaded: ")
        .and_then(|r| r.split_once(", instructions verified: "))
        .unwrap_or_else(|| panic!("unexpected programs line: {line}"));
    let programs: usize = programs.parse().unwrap();
    let total: u64 = total.parse().unwrap();
    let listed = text.lines().skip_while(|l| *l != line).skip(1).count();
    assert!(programs > 0 && listed == programs, "{text}");
    (total, text)
}
