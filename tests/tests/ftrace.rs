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

/// The seed file holds an AMD and an Intel capture, one after the other.
const TWO_VENDORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../kvmprof/tests/fixtures/ftrace/amd_and_intel.txt"
);

#[test]
fn a_file_with_captures_of_two_vendors_imports_as_one_data_file_per_vendor() {
    let dir = scratch("ftrace-two-vendors");
    let data = dir.join("seed.data");
    let out = kvmprof(&["import-ftrace", TWO_VENDORS, "-o", data.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("1 exits (AMD SVM) written to"), "{err}");
    assert!(err.contains("1 exits (Intel VMX) written to"), "{err}");
    assert!(!data.exists(), "no data file mixes the two hosts");
    for (file, vendor, reason) in [
        ("seed.svm.data", "svm", "io"),
        ("seed.vmx.data", "vmx", "IO_INSTRUCTION"),
    ] {
        let r = report_json(&dir.join(file), "reason");
        assert_eq!(r["header"]["vendor"], vendor, "{file}");
        let groups = r["groups"].as_array().unwrap();
        let labels: Vec<_> = groups
            .iter()
            .map(|g| g["label"].as_str().unwrap())
            .collect();
        assert_eq!(labels, [reason], "{file}: {r}");
        assert_eq!(groups[0]["count"], 1);
    }
}

#[test]
fn a_flame_graph_of_two_vendors_shows_each_under_its_own_root() {
    let dir = scratch("flame-two-vendors");
    let (svg, folded) = (dir.join("both.svg"), dir.join("both.folded"));
    let out = kvmprof(&[
        "flamegraph",
        "-i",
        TWO_VENDORS,
        "-o",
        svg.to_str().unwrap(),
        "--folded",
        folded.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("VM exit path (Intel VMX, AMD SVM)"), "title");
    let folded = std::fs::read_to_string(&folded).unwrap();
    let total = |root: &str| -> u64 {
        folded
            .lines()
            .filter(|l| l.starts_with(root))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
            .sum()
    };
    // each vendor's stacks add up to its capture's one cycle
    assert_eq!((total("AMD SVM;"), total("Intel VMX;")), (7915, 7717));
}
