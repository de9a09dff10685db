//! Halts laid out (issue 22): a guest that halts a known number of times, woken each time by
//! an interrupt from its VMM, gets that many halts in the report (per vCPU), each split into
//! the time polled, blocked and waiting for a CPU after the wake-up. The exact poll counts
//! against KVM's own `halt_attempted_poll` / `halt_successful_poll` are checked in the VMs of
//! `cargo xtask vmtest` (`kvmprof_halts`), where debugfs is readable.
use kvmprof_tests::{made, record_testvmm, report_json, scratch, skip_without_kvm};
use serde_json::Value;

/// The test VMM wakes its halted vCPU every millisecond.
const HALTS: u64 = 300;

#[test]
fn a_guest_that_halts_gets_each_halt_laid_out() {
    if skip_without_kvm("a_guest_that_halts_gets_each_halt_laid_out") {
        return;
    }
    let data = scratch("halts").join("k.data");
    let counts = record_testvmm(
        &data,
        &[],
        &["--vcpus", "2", "--pio-user", "10", "--halts", "300"],
    );
    assert_eq!(counts["total"]["halts"], HALTS, "the guest's own count");
    let r = report_json(&data, "vcpu");
    let rows = r["header"]["halts"]["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("no halts in the report: {}", r["header"]));
    // Only vCPU 0 halts (it alone takes the PIC's interrupts).
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["vcpu"], 0, "{row}");
    let n = |k: &str| row[k].as_u64().unwrap_or_else(|| panic!("no {k}: {row}"));
    // KVM keeps a halt in the kernel only when no interrupt is pending at the `hlt`: a wake-up
    // that came while the guest was still on its way back to `hlt` ends that halt at once,
    // without `kvm_vcpu_halt`. The VMM pulses every millisecond, the guest takes microseconds.
    assert!(
        n("halts") <= HALTS && n("halts") * 100 >= HALTS * 90,
        "{} halts laid out of {HALTS} made: {row}",
        n("halts")
    );
    assert_eq!(n("blocked") + n("poll_won"), n("halts"), "{row}");
    assert!(n("poll_won") <= n("polled"), "{row}");
    assert!(n("split") * 100 >= n("halts") * 90, "{row}");
    // A blocked halt waits for the next pulse: a millisecond less the time to get back to
    // `hlt`, and never more than a few (the pulses keep coming).
    let phase = |name: &str| -> &Value {
        row["phases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no phase {name}: {row}"))
    };
    let block = phase("block");
    let blocked_ns = block["sum_ns"].as_u64().unwrap();
    let per_block = blocked_ns / n("blocked").max(1);
    assert!(
        (200_000..3_000_000).contains(&per_block),
        "{per_block} ns blocked per blocked halt: {row}"
    );
    // Every halt's phases fit in it.
    let phases: u64 = row["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["sum_ns"].as_u64().unwrap())
        .sum();
    assert!(phases <= n("halt_ns"), "{row}");
    // The exits are still the VMM's own, exactly where the backend shows them all.
    if r["header"]["vendor"] == "pvm" {
        assert_eq!(r["total_exits"].as_u64(), Some(made(&counts["total"])));
    }
    let text =
        String::from_utf8(kvmprof_tests::kvmprof(&["report", "-i", data.to_str().unwrap()]).stdout)
            .unwrap();
    assert!(text.contains("halts KVM kept in the kernel"), "{text}");
}
