//! The VM check of `--detail` on a Xen guest's hypercalls (issue 21): the test VMM asks KVM to
//! handle Xen hypercalls, as a VMM of Xen guests does, and its guest makes a known number of
//! Xen `sched_op`s, which KVM answers in the kernel (`kvm:kvm_xen_hypercall`, not
//! `kvm:kvm_hypercall`). `record --detail` must file each under Xen's number, named, and
//! none under KVM's hypercalls; the hypercall reason's exits and the hypercall instruction's
//! RIP must hold the same count. Skipped, with the VMM's reason, where the kernel's KVM has
//! no Xen support (Debian's 6.1: CONFIG_KVM_XEN unset).
use anyhow::{Context, Result};
use kvmprof_testvmm::{Counts, Workload};

use crate::checks::{ensure_as_made, parse_json, port_sum, Captured, Check, Notes, SKIP_RC};

const XEN: Workload = Workload {
    vcpus: 1,
    pio_user: 10,
    hypercall: 200,
    xen_hypercalls: true,
    ..Workload::IDLE
};

/// The hypercall exit reason: VMCALL (Intel VMX), VMMCALL (AMD SVM).
fn hypercall_reason(vendor: crate::checks::Vendor) -> (&'static str, u64) {
    match vendor {
        crate::checks::Vendor::Vmx => ("vmx", 18),
        crate::checks::Vendor::Svm => ("svm", 0x81),
    }
}

/// One hypercall from a VMM asking for Xen's ABI, which a kernel without CONFIG_KVM_XEN
/// refuses (skip); then `record --detail -- VMM`, printing `{"vmm", "report"}`.
pub fn script() -> String {
    let dir = "/run/kvmprof-xen";
    let args = kvmprof_testvmm::cli::args(&XEN);
    format!(
        "mkdir -p {dir}\n\
         if ! \"$TESTVMM\" --hypercall 1 --xen-hypercalls > /dev/null 2> {dir}/probe.err; then\n\
         \x20 grep -q CONFIG_KVM_XEN {dir}/probe.err && {{ tail -n 1 {dir}/probe.err; exit {SKIP_RC}; }}\n\
         \x20 cat {dir}/probe.err >&2; exit 1\n\
         fi\n\
         \"$KVMPROF\" record --detail -o {dir}/k.data -- \"$TESTVMM\" \
         --start-delay 1500 --end-delay 1500 {args} > {dir}/vmm.json\n\
         \"$KVMPROF\" report -i {dir}/k.data --format json > {dir}/report.json\n\
         printf '{{\"vmm\": %s, \"report\": %s}}\\n' \"$(cat {dir}/vmm.json)\" \"$(cat {dir}/report.json)\"\n"
    )
}

pub fn verify(check: &Check, c: &Captured) -> Result<Notes> {
    let json = parse_json(&c.stdout)?;
    let made: Counts =
        serde_json::from_value(json["vmm"].clone()).context("not the test VMM's counts")?;
    let report = &json["report"];
    let rows = report["ports"].as_array().context("report has no ports")?;
    let (t, at) = (&made.total, &made.ports);
    let nr = u64::from(at.hypercall_nr);
    let xen_row = rows
        .iter()
        .find(|p| p["space"] == "xen_hypercall" && p["addr"] == nr);
    let space_total = |space: &str| -> u64 {
        rows.iter()
            .filter(|p| p["space"] == space)
            .filter_map(|p| p["count"].as_u64())
            .sum()
    };
    let (space, code) = hypercall_reason(check.vendor);
    let reason_exits: u64 = report["groups"]
        .as_array()
        .context("report has no groups")?
        .iter()
        .filter(|g| g["reason"]["space"] == space && g["reason"]["code"] == code)
        .filter_map(|g| g["count"].as_u64())
        .sum();
    let rip = *at
        .rips
        .get("hypercall")
        .context("the VMM names no hypercall RIP")?;
    let at_rip: u64 = report["rips"]
        .as_array()
        .context("report has no rips")?
        .iter()
        .filter(|r| r["rip"] == rip)
        .filter_map(|r| r["count"].as_u64())
        .sum();
    ensure_as_made(&[
        (
            format!("xen_hypercall {nr}"),
            port_sum(rows, "xen_hypercall", nr, false, "count"),
            t.hypercall,
        ),
        (
            "xen_hypercall rows in all".into(),
            space_total("xen_hypercall"),
            t.hypercall,
        ),
        ("KVM hypercall rows".into(), space_total("hypercall"), 0),
        (
            format!("exits of reason {code:#x}"),
            reason_exits,
            t.hypercall,
        ),
        ("exits at the hypercall RIP".into(), at_rip, t.hypercall),
        (
            "lost".into(),
            report["lost"].as_u64().unwrap_or(u64::MAX),
            0,
        ),
    ])?;
    let name = xen_row.and_then(|r| r["name"].as_str()).unwrap_or("");
    anyhow::ensure!(
        at.hypercall_abi == "xen" && name == "__HYPERVISOR_sched_op",
        "Xen's hypercall {nr} (the VMM's ABI {:?}) is named {name:?}, not __HYPERVISOR_sched_op",
        at.hypercall_abi
    );
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::{no_counts, Vendor};
    use serde_json::json;

    fn made() -> Counts {
        let mut made = no_counts();
        made.total.pio_user = 10;
        made.total.hypercall = 200;
        made.ports.hypercall_nr = kvmprof_testvmm::XEN_SCHED_OP;
        made.ports.hypercall_abi = "xen".into();
        made.ports.rips = [("hypercall".to_string(), kvmprof_testvmm::HYPERCALL_RIP)].into();
        made
    }

    fn captured(space: &str, count: u64, name: &str) -> Captured {
        let report = json!({
            "lost": 0,
            "ports": [{"space": space, "addr": 29, "write": false, "count": count, "name": name}],
            "groups": [{"reason": {"space": "svm", "code": 0x81}, "count": 200}],
            "rips": [{"rip": kvmprof_testvmm::HYPERCALL_RIP, "count": 200}],
        });
        let vmm = serde_json::to_value(made()).unwrap();
        Captured {
            rc: 0,
            stdout: json!({"vmm": vmm, "report": report}).to_string(),
            stderr: String::new(),
            elapsed: std::time::Duration::ZERO,
        }
    }

    fn check() -> Check {
        Check {
            name: "kvmprof_xen_hypercalls",
            hooks: None,
            vendor: Vendor::Svm,
            script: String::new(),
            verify,
        }
    }

    #[test]
    fn xen_hypercalls_must_be_filed_under_xens_number_and_named() {
        let ok = captured("xen_hypercall", 200, "__HYPERVISOR_sched_op");
        assert!(verify(&check(), &ok).is_ok());
        let short = verify(
            &check(),
            &captured("xen_hypercall", 199, "__HYPERVISOR_sched_op"),
        );
        let e = format!("{:#}", short.unwrap_err());
        assert!(e.contains("xen_hypercall 29 = 199"), "{e}");
        // Filed as KVM's own hypercall 29: wrong ABI.
        let kvm = verify(&check(), &captured("hypercall", 200, "")).unwrap_err();
        assert!(
            format!("{kvm:#}").contains("KVM hypercall rows = 200"),
            "{kvm:#}"
        );
        let unnamed = verify(&check(), &captured("xen_hypercall", 200, "")).unwrap_err();
        assert!(format!("{unnamed:#}").contains("named \"\""), "{unnamed:#}");
    }
}
