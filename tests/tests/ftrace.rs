//! `import-ftrace` on a function_graph capture recorded inside the SVM VM (Debian 6.1,
//! `set_graph_function=kvm_arch_vcpu_ioctl_run`, `vcpu_enter_guest` inlined) while the test
//! VMM made 5 userspace PIO, 20 ioeventfd PIO and 2 MMIO exits, then one HLT.
use kvmprof_tests::{kvmprof, report_json, scratch, stderr};

#[test]
fn a_trace_recorded_in_the_svm_vm_imports_with_the_guest_exits_and_their_stages() {
    let data = scratch("ftrace-vm").join("vm.data");
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../kvmprof/tests/fixtures/ftrace/svm_vm_testvmm.txt"
    );
    let out = kvmprof(&["import-ftrace", fixture, "-o", data.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = report_json(&data, "reason");
    assert_eq!(r["header"]["vendor"], "svm");
    let group = |label: &str| {
        r["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["label"] == label)
            .unwrap_or_else(|| panic!("no {label} row in {r}"))
            .clone()
    };
    let io = group("io");
    assert_eq!(io["count"], 25, "5 userspace + 20 in-kernel PIO exits");
    assert_eq!(group("hlt")["count"], 1);
    assert!(
        group("npf")["count"].as_u64().unwrap() >= 2,
        "2 MMIO exits are NPFs"
    );
    let stages: Vec<&str> = io["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["cycle", "vendor_run", "handler", "fast_pio"]);
    let p50 = |s: usize| io["stages"][s]["p50_ns"].as_u64().unwrap();
    assert!(p50(3) <= p50(2) && p50(2) <= p50(0) && p50(1) <= p50(0));
}
