//! The VM check of in-kernel port I/O that is not an ioeventfd write: the test VMM's device
//! loop (`--pio-device`), whose reads and writes of the PIC's ELCR KVM's in-kernel irqchip
//! answers right after a read and after a write that go to the VMM. kvmprof must file each
//! port and direction exactly: the ELCR ones in the kernel, the loop's own to the VMM.
use anyhow::{ensure, Context, Result};
use kvmprof_testvmm::Workload;
use serde_json::Value;

use crate::checks::{ensure_as_made, expect_counts, port_sum, Captured, Check, Hooks, Notes};

/// Two vCPUs, 300 iterations each: 600 exits to the VMM and 1200 in-kernel ones per vCPU,
/// plus the out that ends the round.
const DEVICE: Workload = Workload {
    vcpus: 2,
    pio_device: 300,
    ..Workload::IDLE
};

/// `record -- VMM` of the device loop; prints `{"vmm", "report"}`.
pub fn script(hooks: Hooks) -> String {
    let dir = format!("/run/kvmprof-device-{hooks}");
    let args = kvmprof_testvmm::cli::args(&DEVICE);
    format!(
        "mkdir -p {dir}\n\
         \"$KVMPROF\" record --hooks {hooks} -o {dir}/k.data -- \"$TESTVMM\" {args} > {dir}/vmm.json\n\
         \"$KVMPROF\" report -i {dir}/k.data --format json > {dir}/report.json\n\
         printf '{{\"vmm\": %s, \"report\": %s}}\\n' \"$(cat {dir}/vmm.json)\" \"$(cat {dir}/report.json)\"\n"
    )
}

/// Every port and direction of the loop in the report as the test VMM made them, with the
/// ELCR ones never to the VMM, and the io group's totals; 0 lost.
pub fn verify(check: &Check, c: &Captured) -> Result<Notes> {
    let (json, made) = crate::checks::vmm_json(&c.stdout)?;
    let t = &made.total;
    ensure!(
        t.other == 0 && made.vcpus.len() == DEVICE.vcpus as usize,
        "the test VMM went off script: {:?}",
        made.other_reasons
    );
    let per_vcpu = DEVICE.pio_device;
    let short: Vec<String> = made
        .vcpus
        .iter()
        .filter(|v| v.exits.pio_mixed_out < per_vcpu || v.exits.done < 1)
        .map(|v| {
            format!(
                "vCPU {}: {} of {per_vcpu} iterations",
                v.index, v.exits.pio_mixed_out
            )
        })
        .collect();
    let report = &json["report"];
    expect_counts(report, &[("lost", 0)], "report")?;
    let ports = report["ports"].as_array().context("report has no ports")?;
    let port =
        |addr: u16, write: bool, field: &str| port_sum(ports, "pio", addr.into(), write, field);
    let at = &made.ports;
    let [elcr1, elcr2] = [at.pio_device[0], at.pio_device[1]];
    // The pair on the first ELCR port precedes each out to the VMM; the rest are the second's.
    let first = t.pio_mixed_out;
    let second = t.pio_device / 2 - first;
    let mut expected = vec![
        (
            format!("{:#x} in", at.pio_mixed_in),
            port(at.pio_mixed_in, false, "count"),
            t.pio_mixed_in,
        ),
        (
            format!("{:#x} out", at.pio_mixed_out),
            port(at.pio_mixed_out, true, "count"),
            t.pio_mixed_out,
        ),
        (
            format!("{:#x} out", at.done),
            port(at.done, true, "count"),
            t.done,
        ),
        (format!("{elcr1:#x} in"), port(elcr1, false, "count"), first),
        (format!("{elcr1:#x} out"), port(elcr1, true, "count"), first),
        (
            format!("{elcr2:#x} in"),
            port(elcr2, false, "count"),
            second,
        ),
        (
            format!("{elcr2:#x} out"),
            port(elcr2, true, "count"),
            second,
        ),
        (
            format!("{:#x} in to the VMM", at.pio_mixed_in),
            port(at.pio_mixed_in, false, "userspace"),
            t.pio_mixed_in,
        ),
        (
            format!("{:#x} out to the VMM", at.pio_mixed_out),
            port(at.pio_mixed_out, true, "userspace"),
            t.pio_mixed_out,
        ),
    ];
    for (addr, write) in [(elcr1, false), (elcr1, true), (elcr2, false), (elcr2, true)] {
        expected.push((
            format!("{addr:#x} {} to the VMM", if write { "out" } else { "in" }),
            port(addr, write, "userspace"),
            0,
        ));
    }
    let groups = report["groups"]
        .as_array()
        .context("report has no groups")?;
    let io = groups
        .iter()
        .find(|g| g["label"] == check.vendor.io_label())
        .with_context(|| format!("report has no {} group", check.vendor.io_label()))?;
    let number = |v: &Value| v.as_u64().unwrap_or(0);
    expected.push((
        "io exits".into(),
        number(&io["count"]),
        t.pio_mixed_in + t.pio_mixed_out + t.done + t.pio_device,
    ));
    expected.push((
        "io exits to the VMM".into(),
        number(&io["userspace"]),
        t.pio_mixed_in + t.pio_mixed_out + t.done,
    ));
    ensure_as_made(&expected)?;
    let mut notes = vec![format!(
        "ELCR {} reads and writes in the kernel, {} exits to the VMM around them, each port exact",
        t.pio_device,
        t.pio_mixed_in + t.pio_mixed_out
    )];
    if !short.is_empty() {
        notes.push(format!(
            "the test VMM fell short of its plan: {}",
            short.join("; ")
        ));
    }
    Ok(notes)
}
