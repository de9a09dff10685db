//! The kernel's tally (`kvmprof_common::tally`): exits are counted and bucketed in the kernel,
//! and still reported exactly, per vCPU and per port; `--exits` and `--slow` bring the exits
//! they name one by one.
use kvmprof_tests::{
    made, record_testvmm, report_json, scratch, skip_without_kvm, PIO_IN_PORT,
    PIO_KERNEL_PORT_BASE, SLOW_INS,
};
use serde_json::Value;

const WORKLOAD: [&str; 10] = [
    "--vcpus",
    "2",
    "--pio-user",
    "300",
    "--pio-kernel",
    "5000",
    "--mmio",
    "40",
    "--pio-in",
    "20",
];

fn tallied(r: &Value) -> u64 {
    r["header"]["own_cost"]["tallied"].as_u64().unwrap()
}

/// The ports table's count for `port` (every direction and reason).
fn port_count(r: &Value, port: u64) -> u64 {
    r["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["space"] == "pio" && p["addr"] == port)
        .map(|p| p["count"].as_u64().unwrap())
        .sum()
}

#[test]
fn exits_tallied_in_the_kernel_are_still_counted_exactly() {
    if skip_without_kvm("exits_tallied_in_the_kernel_are_still_counted_exactly") {
        return;
    }
    let data = scratch("tally").join("k.data");
    let counts = record_testvmm(&data, &[], &WORKLOAD);
    let r = report_json(&data, "vcpu");
    assert_eq!(r["lost"], 0);
    if r["header"]["vendor"] != "pvm" {
        eprintln!("skipping exact counts: only PVM guests make no exits of their own");
        return;
    }
    let total = r["total_exits"].as_u64().unwrap();
    assert_eq!(total, made(&counts["total"]), "{r}");
    // Nearly all came tallied: only exits still held when the VMM ended come one by one.
    assert!(
        tallied(&r) + 4 >= total,
        "tallied {} of {total}",
        tallied(&r)
    );
    for v in counts["vcpus"].as_array().unwrap() {
        let idx = v["index"].as_u64().unwrap();
        let row = r["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["vcpu"] == idx)
            .unwrap_or_else(|| panic!("no row for vCPU {idx}: {r}"));
        assert_eq!(row["count"].as_u64().unwrap(), made(v), "vCPU {idx}");
        // Each vCPU's in-kernel port is its own.
        assert_eq!(
            port_count(&r, PIO_KERNEL_PORT_BASE + idx),
            v["pio_kernel"].as_u64().unwrap(),
            "vCPU {idx}"
        );
    }
    assert_eq!(
        port_count(&r, PIO_IN_PORT),
        counts["total"]["pio_in"].as_u64().unwrap()
    );
    // Tallied stages have distributions, not one value: the in-kernel cycle has a p50
    // below its max, and the userspace exits their VMM round trip.
    let by_reason = report_json(&data, "reason");
    let groups = by_reason["groups"].as_array().unwrap();
    let stage = |reason: &str, stage: &str| -> Value {
        groups
            .iter()
            .filter(|g| g["label"].as_str().unwrap_or("").contains(reason))
            .flat_map(|g| g["stages"].as_array().unwrap().iter())
            .find(|s| s["stage"] == stage)
            .unwrap_or_else(|| panic!("no {stage} of {reason}: {by_reason}"))
            .clone()
    };
    let cycle = stage("pio (in-kernel)", "cycle");
    assert!(cycle["p50_ns"].as_u64().unwrap() <= cycle["max_ns"].as_u64().unwrap());
    assert_eq!(
        cycle["samples"].as_u64().unwrap(),
        port_count(&r, PIO_KERNEL_PORT_BASE) + port_count(&r, PIO_KERNEL_PORT_BASE + 1)
    );
    let vmm = stage("KVM_EXIT_IO", "vmm");
    assert!(vmm["samples"].as_u64().unwrap() > 0, "{vmm}");
}

#[test]
fn with_an_exits_file_every_exit_comes_one_by_one() {
    if skip_without_kvm("with_an_exits_file_every_exit_comes_one_by_one") {
        return;
    }
    let dir = scratch("tally-exits");
    let (data, exits) = (dir.join("k.data"), dir.join("exits.jsonl"));
    let counts = record_testvmm(&data, &["--exits", exits.to_str().unwrap()], &WORKLOAD);
    let r = report_json(&data, "vcpu");
    assert_eq!(tallied(&r), 0, "{r}");
    let lines = std::fs::read_to_string(&exits).unwrap().lines().count() as u64;
    assert_eq!(lines, r["total_exits"].as_u64().unwrap());
    if r["header"]["vendor"] == "pvm" {
        assert_eq!(lines, made(&counts["total"]));
    }
}

#[test]
fn slow_exits_come_one_by_one_and_the_rest_is_tallied() {
    if skip_without_kvm("slow_exits_come_one_by_one_and_the_rest_is_tallied") {
        return;
    }
    let data = scratch("tally-slow").join("k.data");
    // The slow workload, plus in-kernel exits to tally.
    let vmm_args = [&SLOW_INS[..], &["--pio-kernel", "2000"]].concat();
    let counts = record_testvmm(&data, &["--slow", "vmm=40ms"], &vmm_args);
    let want = counts["total"]["pio_in"].as_u64().unwrap();
    let r = report_json(&data, "reason");
    assert_eq!(r["header"]["slow"]["count"].as_u64(), Some(want), "{r}");
    if r["header"]["vendor"] == "pvm" {
        let total = r["total_exits"].as_u64().unwrap();
        assert_eq!(total, made(&counts["total"]));
        // The slow ones came as records; all but a few held at the end of the rest tallied.
        assert!(
            tallied(&r) + want <= total,
            "tallied {} of {total}",
            tallied(&r)
        );
        assert!(
            tallied(&r) + want + 4 >= total,
            "tallied {} of {total}",
            tallied(&r)
        );
    }
}

/// Issue 18: a guest that writes a range of MMIO addresses (a device's register window)
/// gets a row per address, each with exactly its writes, tallied in the kernel: the kinds of
/// exit stay few however many addresses there are.
#[test]
fn a_busy_mmio_range_is_counted_address_by_address() {
    if skip_without_kvm("a_busy_mmio_range_is_counted_address_by_address") {
        return;
    }
    const SPAN: u64 = 64;
    let data = scratch("tally-span").join("k.data");
    let counts = record_testvmm(
        &data,
        &[],
        &["--vcpus", "2", "--mmio", "256", "--mmio-span", "64"],
    );
    let r = report_json(&data, "vcpu");
    assert_eq!(r["lost"], 0);
    let writes = counts["total"]["mmio_user"].as_u64().unwrap();
    assert_eq!(writes, 2 * 256);
    let rows: Vec<&Value> = r["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["space"] == "mmio")
        .collect();
    for k in 0..SPAN {
        let addr = kvmprof_tests::MMIO_ADDR + k;
        let n: u64 = rows
            .iter()
            .filter(|p| p["addr"] == addr && p["folded"] == false)
            .map(|p| p["count"].as_u64().unwrap())
            .sum();
        assert_eq!(n, writes / SPAN, "address {addr:#x}: {rows:?}");
    }
    let in_rows: u64 = rows.iter().map(|p| p["count"].as_u64().unwrap()).sum();
    assert_eq!(in_rows, writes, "{rows:?}");
    assert!(tallied(&r) * 100 >= made(&counts["total"]) * 99, "{r}");
}
