//! `kvmprof funcs` judges every function of its catalogue by what the running kernel says
//! itself: /proc/kallsyms, `available_filter_functions`, BTF (read here with bpftool, an
//! oracle independent of kvmprof's own BTF parser) and whether fentry and kprobes work.
use std::{collections::HashSet, path::Path, process::Command};

use kvmprof_tests::{assert_clean_error, kvmprof, scratch, skip_without_kvm, stderr};
use serde_json::Value;

/// Names of the BTF FUNCs of vmlinux and the KVM modules, by bpftool.
fn btf_funcs() -> Option<HashSet<String>> {
    let mut out = HashSet::new();
    for entry in std::fs::read_dir("/sys/kernel/btf").ok()? {
        let path = entry.ok()?.path();
        let name = path.file_name()?.to_str()?.to_string();
        if !matches!(name.as_str(), "vmlinux" | "kvm" | "kvm_amd" | "kvm_intel") {
            continue;
        }
        // `-B`: modules' BTF is split on vmlinux's (bpftool 7 has no `base` keyword).
        let mut cmd = Command::new("bpftool");
        cmd.args(["-B", "/sys/kernel/btf/vmlinux", "btf", "dump", "file"])
            .arg(&path);
        let dump = cmd.output().ok().filter(|o| o.status.success())?;
        for line in String::from_utf8_lossy(&dump.stdout).lines() {
            if let Some(rest) = line.split_once("] FUNC '").map(|(_, r)| r) {
                out.insert(rest.split('\'').next()?.to_string());
            }
        }
    }
    Some(out)
}

#[test]
fn funcs_judges_every_catalogue_function_by_the_kernel_s_own_lists() {
    if skip_without_kvm("funcs_judges_every_catalogue_function_by_the_kernel_s_own_lists") {
        return;
    }
    let out = kvmprof(&["funcs", "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("funcs JSON");
    let funcs = v["functions"].as_array().expect("functions");
    assert_eq!(funcs.len(), 311, "the built-in catalogue");
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").expect("kallsyms");
    let syms: HashSet<&str> = kallsyms
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (_, ty, name) = (it.next()?, it.next()?, it.next()?);
            ty.eq_ignore_ascii_case("t").then_some(name)
        })
        .collect();
    let btf = btf_funcs();
    if btf.is_none() {
        eprintln!("funcs: bpftool cannot dump BTF here; BTF verdicts not checked");
    }
    let ftrace: Option<HashSet<String>> =
        std::fs::read_to_string("/sys/kernel/tracing/available_filter_functions")
            .ok()
            .map(|t| {
                t.lines()
                    .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                    .collect()
            });
    let fentry = v["fentry"] == "allowed";
    let kprobes = v["kprobes"] == true;
    assert_eq!(
        kprobes,
        Path::new("/sys/bus/event_source/devices/kprobe").exists()
    );
    for f in funcs {
        let name = f["name"].as_str().expect("name");
        let in_syms = syms.contains(name);
        assert_eq!(f["symbol"].is_string(), in_syms, "{f}");
        let clone = syms.iter().any(|s| {
            s.split_once('.')
                .is_some_and(|(b, rest)| b == name && !rest.starts_with("cold"))
        });
        if let Some(btf) = &btf {
            assert_eq!(f["btf"].is_string(), btf.contains(name), "{f}");
        }
        match &ftrace {
            Some(t) => assert_eq!(f["ftrace"], t.contains(name), "{f}"),
            None => assert!(f["ftrace"].is_null(), "{f}"),
        }
        let traceable = f["ftrace"] != false;
        let expected = match (in_syms, f["btf"].is_string() && traceable && fentry, clone) {
            (true, true, _) => "fentry",
            (true, false, _) if kprobes => "kprobe",
            (false, _, true) if kprobes => "clone",
            _ => "none",
        };
        assert_eq!(f["hook"], expected, "{f}");
        assert!(f["why"].as_str().is_some_and(|w| !w.is_empty()), "{f}");
    }
}

#[test]
fn a_catalogue_that_is_not_one_is_a_one_line_error() {
    let dir = scratch("funcs-bad");
    let bad = dir.join("bad.txt");
    std::fs::write(&bad, "kvm_emulate_halt\nnot-a-name\n").unwrap();
    assert_clean_error(
        &kvmprof(&["funcs", "--catalogue", bad.to_str().unwrap()]),
        "line 2: 'not-a-name' is not a function name",
    );
    let binary = dir.join("bin.txt");
    std::fs::write(&binary, b"\xff\xfe").unwrap();
    assert_clean_error(
        &kvmprof(&["funcs", "--catalogue", binary.to_str().unwrap()]),
        "not UTF-8 text",
    );
    assert_clean_error(
        &kvmprof(&["funcs", "--catalogue", "/dev/zero"]),
        "over 4 MiB, not a list of function names",
    );
}

/// `record --func` with names it cannot time: each refused in one line before anything runs
/// (or, for a function the kernel lacks, before the VMM is released), never an empty report.
#[test]
fn record_func_refuses_what_it_cannot_time_in_one_line() {
    if skip_without_kvm("record_func_refuses_what_it_cannot_time_in_one_line") {
        return;
    }
    let data = scratch("record_func_refuses").join("k.data");
    let data = data.to_str().expect("utf-8 path");
    let vmm = kvmprof_tests::bin("kvmprof-testvmm");
    let vmm = vmm.to_str().expect("utf-8 path");
    let record = |funcs: &[&str]| {
        let mut args = vec!["record", "-o", data];
        for f in funcs {
            args.extend(["--func", f]);
        }
        args.extend(["--", vmm, "--pio-user", "1"]);
        kvmprof(&args)
    };
    assert_clean_error(
        &record(&["kvmprof_no_such_function"]),
        "--func kvmprof_no_such_function: cannot be hooked on this kernel",
    );
    assert_clean_error(&record(&["not-a/name"]), "is not a kernel function name");
    let five = ["kvm_emulate_halt"; 5];
    assert_clean_error(&record(&five), "at most 4 functions");
    assert_clean_error(
        &record(&["kvm_emulate_halt", "kvm_emulate_halt"]),
        "is given twice",
    );
    // `top` and `serve` do not show timed functions: refused, not ignored.
    assert_clean_error(
        &kvmprof(&["top", "--batch", "--func", "kvm_emulate_halt"]),
        "--func is shown by `record`",
    );
}
