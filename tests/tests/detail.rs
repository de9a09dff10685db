//! `record --detail` on this host's kernel. The MSR, CPUID, hypercall and RIP rows themselves
//! are checked where `kvm:kvm_exit` fires, in the SVM and VMX VMs (`cargo xtask vmtest`,
//! `kvmprof_detail`); here, under PVM, `--detail` must say in one line why it files nothing,
//! and every exit must still be counted exactly.
use kvmprof_tests::{made, record_command, report_json, scratch, skip_without_kvm, stderr};

#[test]
fn detail_where_kvm_exit_does_not_fire_says_why_and_keeps_every_exit() {
    let name = "detail_without_kvm_exit";
    if skip_without_kvm(name) {
        return;
    }
    let data = scratch(name).join("k.data");
    let out = record_command(
        &data,
        &["--detail"],
        &[
            "--pio-user",
            "200",
            "--pio-kernel",
            "300",
            "--msr-read",
            "50",
        ],
    )
    .output()
    .expect("run kvmprof record");
    assert!(out.status.success(), "record failed: {}", stderr(&out));
    let report = report_json(&data, "reason");
    if report["header"]["vendor"] != "pvm" {
        eprintln!("skipped {name}: kvm:kvm_exit fires on this backend (the VM checks cover it)");
        return;
    }
    let err = stderr(&out);
    let warning: Vec<&str> = err.lines().filter(|l| l.contains("--detail")).collect();
    assert_eq!(warning.len(), 1, "{err}");
    assert!(warning[0].contains("does not fire on PVM"), "{err}");
    let vmm: serde_json::Value = serde_json::from_slice(&out.stdout).expect("VMM counts");
    assert_eq!(report["total_exits"].as_u64(), Some(made(&vmm["total"])));
    assert_eq!(report["lost"], 0);
    assert!(report.get("rips").is_none(), "no RIPs without kvm_exit");
}
