//! The cheap per-exit path (batched records, userspace exits completed in the kernel),
//! `record --slow` and kvmprof's own cost, against real guests of the test VMM.
use std::process::Command;

use kvmprof_tests::{
    bin, kvmprof, made, report_json, scratch, skip_without_kvm, stderr, KVM_EXIT_IO,
};
use serde_json::Value;

/// Runs `kvmprof record [extra] -o DATA -- testvmm VMM_ARGS` and returns the test VMM's
/// own counts.
fn record(data: &std::path::Path, extra: &[&str], vmm_args: &[&str]) -> Value {
    let out = Command::new(bin("kvmprof"))
        .arg("record")
        .args(extra)
        .args(["-o", data.to_str().unwrap(), "--"])
        .arg(bin("kvmprof-testvmm"))
        .args(vmm_args)
        .output()
        .expect("run kvmprof record");
    assert!(out.status.success(), "record failed: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("test VMM counts on stdout")
}

#[test]
fn without_an_exits_file_every_exit_is_still_counted_exactly() {
    if skip_without_kvm("without_an_exits_file_every_exit_is_still_counted_exactly") {
        return;
    }
    let data = scratch("noexits").join("k.data");
    // More in-kernel exits than a batch holds, and userspace exits that end the run.
    let counts = record(
        &data,
        &[],
        &[
            "--vcpus",
            "2",
            "--pio-user",
            "700",
            "--pio-kernel",
            "3001",
            "--mmio",
            "130",
            "--pio-in",
            "33",
        ],
    );
    let r = report_json(&data, "vcpu");
    assert_eq!(r["lost"], 0);
    if r["header"]["vendor"] == "pvm" {
        assert_eq!(
            r["total_exits"].as_u64().unwrap(),
            made(&counts["total"]),
            "{r}"
        );
    } else {
        assert!(
            r["total_exits"].as_u64().unwrap() >= made(&counts["total"]),
            "{r}"
        );
    }
    for v in counts["vcpus"].as_array().unwrap() {
        let idx = v["index"].as_u64().unwrap();
        let per_vcpu = made(v);
        let row = r["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["vcpu"] == idx)
            .unwrap_or_else(|| panic!("no row for vCPU {idx}: {r}"));
        if r["header"]["vendor"] == "pvm" {
            assert_eq!(row["count"].as_u64().unwrap(), per_vcpu, "vCPU {idx}");
        }
    }
}

#[test]
fn slow_lists_exactly_the_exits_over_the_threshold() {
    if skip_without_kvm("slow_lists_exactly_the_exits_over_the_threshold") {
        return;
    }
    let dir = scratch("slow");
    let (data, exits) = (dir.join("k.data"), dir.join("exits.jsonl"));
    // The VMM takes 120 ms to answer each `in` and microseconds for everything else:
    // exactly vcpus × pio_in round trips are over 40 ms.
    let counts = record(
        &data,
        &["--slow", "vmm=40ms", "--exits", exits.to_str().unwrap()],
        &[
            "--vcpus",
            "2",
            "--pio-user",
            "200",
            "--pio-in",
            "4",
            "--pio-in-delay",
            "120ms",
        ],
    );
    let want = counts["total"]["pio_in"].as_u64().unwrap();
    assert_eq!(want, 8);
    let r = report_json(&data, "reason");
    let slow = &r["header"]["slow"];
    assert_eq!(slow["count"].as_u64(), Some(want), "{slow}");
    let listed = slow["exits"].as_array().unwrap();
    assert_eq!(listed.len() as u64, want);
    for e in listed {
        assert_eq!(e["userspace_reason"].as_u64(), Some(KVM_EXIT_IO), "{e}");
        assert_eq!(e["access"]["Pio"]["port"], 0x3fd, "{e}");
        assert_eq!(e["access"]["Pio"]["write"], false, "{e}");
        let vmm = e["stages"][5].as_u64().unwrap();
        assert!(vmm >= 120_000_000, "{e}");
    }
    // The same exits as the per-exit export (`exits::Line`, stages by name) says are over
    // the threshold.
    let over = std::fs::read_to_string(&exits)
        .unwrap()
        .lines()
        .filter(|l| {
            let e: Value = serde_json::from_str(l).unwrap();
            e["stages"]["vmm"]
                .as_u64()
                .is_some_and(|ns| ns > 40_000_000)
        })
        .count();
    assert_eq!(over as u64, want);
    // And the text report lists them.
    let text = kvmprof(&["report", "-i", data.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("Slow exits (vmm > 40.0ms): 8"), "{text}");
    assert_eq!(text.matches("pio 0x3fd in").count(), 8, "{text}");
}

#[test]
fn the_report_shows_kvmprofs_own_bpf_cost() {
    if skip_without_kvm("the_report_shows_kvmprofs_own_bpf_cost") {
        return;
    }
    let data = scratch("owncost").join("k.data");
    let counts = record(&data, &[], &["--vcpus", "1", "--pio-kernel", "2000"]);
    let r = report_json(&data, "reason");
    let cost = &r["header"]["own_cost"];
    let programs = cost["programs"]
        .as_array()
        .expect("BPF run time per program");
    // `raw_kvm_pio` where the kernel's BTF prototype allows a raw tracepoint.
    let pio = programs
        .iter()
        .find(|p| p["name"] == "kvm_pio" || p["name"] == "raw_kvm_pio")
        .unwrap_or_else(|| panic!("no kvm_pio in {cost}"));
    // Every in-kernel exit ran kvm_pio at least once (other VMMs on the host add runs).
    assert!(
        pio["runs"].as_u64().unwrap() >= counts["total"]["pio_kernel"].as_u64().unwrap(),
        "{cost}"
    );
    assert!(pio["run_ns"].as_u64().unwrap() > 0, "{cost}");
    let text = kvmprof(&["report", "-i", data.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("kvmprof's own cost: BPF ") && text.contains("kvm_pio "),
        "{text}"
    );
}
