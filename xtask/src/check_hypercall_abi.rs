//! The VM checks of `--detail` on Xen's and Hyper-V's hypercalls (issue 21): the test VMM
//! sets the VM up as a VMM of Xen guests (KVM asked to handle Xen hypercalls) or of Windows
//! guests (Hyper-V's CPUID signature, a guest OS id) does, and its guest makes a known number
//! of that ABI's hypercalls, which KVM answers in the kernel (`kvm:kvm_xen_hypercall`,
//! `kvm:kvm_hv_hypercall`; neither fires `kvm:kvm_hypercall`). `record --detail` must file
//! each under that ABI's number, named, and none under KVM's hypercalls; the hypercall
//! reason's exits and the hypercall instruction's RIP must hold the same count. Skipped, with
//! the VMM's reason, where the kernel's KVM lacks the ABI (Debian's 6.1: CONFIG_KVM_XEN unset).
use anyhow::{Context, Result};
use kvmprof_testvmm::{HypercallAbi, Workload};

use crate::checks::{ensure_as_made, port_sum, Captured, Check, Notes, Vendor, SKIP_RC};

/// The workload of `abi`'s check: one vCPU, a few userspace exits, 200 hypercalls.
const fn workload(abi: HypercallAbi) -> Workload {
    Workload {
        vcpus: 1,
        pio_user: 10,
        hypercall: 200,
        hypercall_abi: abi,
        ..Workload::IDLE
    }
}

/// The report's space of `abi`'s hypercalls, and the name of the test VMM's.
fn space_and_name(abi: HypercallAbi) -> (&'static str, &'static str) {
    match abi {
        HypercallAbi::Kvm => ("hypercall", ""),
        HypercallAbi::Xen => ("xen_hypercall", "__HYPERVISOR_sched_op"),
        HypercallAbi::Hyperv => ("hv_hypercall", "HVCALL_NOTIFY_LONG_SPIN_WAIT"),
    }
}

/// The hypercall exit reason: VMCALL (Intel VMX), VMMCALL (AMD SVM).
fn hypercall_reason(vendor: Vendor) -> (&'static str, u64) {
    match vendor {
        Vendor::Vmx => ("vmx", 18),
        Vendor::Svm => ("svm", 0x81),
    }
}

/// One hypercall from a VMM set up for `abi`, which a kernel without the ABI refuses with a
/// line naming its CONFIG_KVM_* option (skip); then `record --detail -- VMM`, printing
/// `{"vmm", "report"}`.
pub fn script(abi: HypercallAbi) -> String {
    let dir = format!("/run/kvmprof-{}-hypercalls", abi.name());
    let args = kvmprof_testvmm::cli::args(&workload(abi));
    let probe = format!("--hypercall 1 --hypercall-abi {}", abi.name());
    format!(
        "mkdir -p {dir}\n\
         if ! \"$TESTVMM\" {probe} > /dev/null 2> {dir}/probe.err; then\n\
         \x20 grep -q CONFIG_KVM_ {dir}/probe.err && {{ tail -n 1 {dir}/probe.err; exit {SKIP_RC}; }}\n\
         \x20 cat {dir}/probe.err >&2; exit 1\n\
         fi\n\
         \"$KVMPROF\" record --detail -o {dir}/k.data -- \"$TESTVMM\" \
         --start-delay 1500 --end-delay 1500 {args} > {dir}/vmm.json\n\
         \"$KVMPROF\" report -i {dir}/k.data --format json > {dir}/report.json\n\
         printf '{{\"vmm\": %s, \"report\": %s}}\\n' \"$(cat {dir}/vmm.json)\" \"$(cat {dir}/report.json)\"\n"
    )
}

pub fn verify_xen(check: &Check, c: &Captured) -> Result<Notes> {
    verify(HypercallAbi::Xen, check, c)
}

pub fn verify_hyperv(check: &Check, c: &Captured) -> Result<Notes> {
    verify(HypercallAbi::Hyperv, check, c)
}

fn verify(abi: HypercallAbi, check: &Check, c: &Captured) -> Result<Notes> {
    let (json, made) = crate::checks::vmm_json(&c.stdout)?;
    let report = &json["report"];
    let rows = report["ports"].as_array().context("report has no ports")?;
    let (t, at) = (&made.total, &made.ports);
    let (space, want_name) = space_and_name(abi);
    let nr = u64::from(at.hypercall_nr);
    let space_total = |space: &str| -> u64 {
        rows.iter()
            .filter(|p| p["space"] == space)
            .filter_map(|p| p["count"].as_u64())
            .sum()
    };
    let (reason_space, code) = hypercall_reason(check.vendor);
    let reason_exits: u64 = report["groups"]
        .as_array()
        .context("report has no groups")?
        .iter()
        .filter(|g| g["reason"]["space"] == reason_space && g["reason"]["code"] == code)
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
            format!("{space} {nr:#x}"),
            port_sum(rows, space, nr, false, "count"),
            t.hypercall,
        ),
        (
            format!("{space} rows in all"),
            space_total(space),
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
    let name = rows
        .iter()
        .find(|p| p["space"] == space && p["addr"] == nr)
        .and_then(|r| r["name"].as_str())
        .unwrap_or("");
    anyhow::ensure!(
        at.hypercall_abi == abi && name == want_name,
        "{space} {nr:#x} (the VMM's ABI {:?}) is named {name:?}, not {want_name}",
        at.hypercall_abi
    );
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::no_counts;
    use serde_json::json;

    fn captured(abi: HypercallAbi, space: &str, count: u64, name: &str) -> Captured {
        let mut made = no_counts();
        made.total.pio_user = 10;
        made.total.hypercall = 200;
        made.ports.hypercall_nr = match abi {
            HypercallAbi::Xen => kvmprof_testvmm::XEN_SCHED_OP,
            _ => kvmprof_testvmm::HV_NOTIFY_LONG_SPIN_WAIT,
        };
        made.ports.hypercall_abi = abi;
        made.ports.rips = [("hypercall".to_string(), kvmprof_testvmm::HYPERCALL_RIP)].into();
        let nr = made.ports.hypercall_nr;
        let report = json!({
            "lost": 0,
            "ports": [{"space": space, "addr": nr, "write": false, "count": count, "name": name}],
            "groups": [{"reason": {"space": "svm", "code": 0x81}, "count": 200}],
            "rips": [{"rip": kvmprof_testvmm::HYPERCALL_RIP, "count": 200}],
        });
        let vmm = serde_json::to_value(made).unwrap();
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
            verify: verify_xen,
        }
    }

    #[test]
    fn each_abis_hypercalls_must_be_filed_under_its_number_and_named() {
        let xen =
            |space, n, name| verify_xen(&check(), &captured(HypercallAbi::Xen, space, n, name));
        assert!(xen("xen_hypercall", 200, "__HYPERVISOR_sched_op").is_ok());
        let e = format!(
            "{:#}",
            xen("xen_hypercall", 199, "__HYPERVISOR_sched_op").unwrap_err()
        );
        assert!(e.contains("xen_hypercall 0x1d = 199"), "{e}");
        // Filed as KVM's own hypercall 29: the wrong ABI.
        let e = format!("{:#}", xen("hypercall", 200, "").unwrap_err());
        assert!(e.contains("KVM hypercall rows = 200"), "{e}");
        let e = format!("{:#}", xen("xen_hypercall", 200, "").unwrap_err());
        assert!(e.contains("named \"\""), "{e}");

        let hv = |space, name| {
            verify_hyperv(&check(), &captured(HypercallAbi::Hyperv, space, 200, name))
        };
        assert!(hv("hv_hypercall", "HVCALL_NOTIFY_LONG_SPIN_WAIT").is_ok());
        let e = format!(
            "{:#}",
            hv("xen_hypercall", "HVCALL_NOTIFY_LONG_SPIN_WAIT").unwrap_err()
        );
        assert!(e.contains("hv_hypercall 0x8 = 0"), "{e}");
    }
}
