//! The VM check of halts laid out (issue 22): a guest that halts a known number of times,
//! woken each time by an interrupt from the test VMM, recorded from its start. KVM's own
//! counters of the VM (debugfs, read by kvmprof over the window) are the oracle: its HLT
//! exits are the guest's halts, and kvmprof's polled and won halts are KVM's
//! `halt_attempted_poll` and `halt_successful_poll`, exactly.
use anyhow::{ensure, Context, Result};
use kvmprof_testvmm::{Counts, Workload};

use crate::checks::{parse_json, Captured, Check, Notes};

const HALTS: Workload = Workload {
    halts: 200,
    pio_user: 10,
    ..Workload::IDLE
};

/// `record -- VMM` of the halting guest; prints `{"vmm", "report"}`. The VMM waits 1.5 s
/// before its first KVM_RUN, so that kvmprof has read the new VM's counters (every second)
/// before its first halt.
pub fn script() -> String {
    let dir = "/run/kvmprof-halts";
    let args = kvmprof_testvmm::cli::args(&HALTS);
    format!(
        "mkdir -p {dir}\n\
         \"$KVMPROF\" record -o {dir}/k.data -- \"$TESTVMM\" --start-delay 1500 {args} > {dir}/vmm.json\n\
         \"$KVMPROF\" report -i {dir}/k.data --format json > {dir}/report.json\n\
         printf '{{\"vmm\": %s, \"report\": %s}}\\n' \"$(cat {dir}/vmm.json)\" \"$(cat {dir}/report.json)\"\n"
    )
}

pub fn verify(check: &Check, c: &Captured) -> Result<Notes> {
    let json = parse_json(&c.stdout)?;
    let made: Counts =
        serde_json::from_value(json["vmm"].clone()).context("not the test VMM's counts")?;
    ensure!(
        made.total.halts == HALTS.halts && made.total.other == 0,
        "the guest halted {} times of {} ({:?})",
        made.total.halts,
        HALTS.halts,
        made.other_reasons
    );
    let report = &json["report"];
    let stats = &report["kvm_stats"];
    ensure!(
        stats.is_object(),
        "no KVM counters in the report: {}",
        report["header"]["kvm_stats"]
    );
    let kvm = |k: &str| {
        stats[k]
            .as_u64()
            .with_context(|| format!("no {k} among KVM's counters"))
    };
    let rows = report["header"]["halts"]["rows"]
        .as_array()
        .context("no halts in the report")?;
    let sum = |k: &str| -> u64 { rows.iter().filter_map(|r| r[k].as_u64()).sum() };
    let hlt_exits: u64 = report["groups"]
        .as_array()
        .context("report has no groups")?
        .iter()
        .filter(|g| g["label"] == check.vendor.hlt_label())
        .filter_map(|g| g["count"].as_u64())
        .sum();
    for (what, kvmprof, kvm) in [
        (
            "HLT exits (kvmprof) / the guest's halts",
            hlt_exits,
            HALTS.halts,
        ),
        (
            "HLT exits: kvmprof / KVM's halt_exits",
            hlt_exits,
            kvm("halt_exits")?,
        ),
        (
            "polled halts: kvmprof / KVM's halt_attempted_poll",
            sum("polled"),
            kvm("halt_attempted_poll")?,
        ),
        (
            "won polls: kvmprof / KVM's halt_successful_poll",
            sum("poll_won"),
            kvm("halt_successful_poll")?,
        ),
    ] {
        ensure!(kvmprof == kvm, "{what}: {kvmprof} against {kvm}");
    }
    let (halts, split) = (sum("halts"), sum("split"));
    ensure!(
        halts <= HALTS.halts && halts * 10 >= HALTS.halts * 9 && split * 10 >= halts * 9,
        "{halts} halts laid out ({split} split) of {} made",
        HALTS.halts
    );
    Ok(vec![format!(
        "{hlt_exits} HLT exits, {halts} halts laid out ({split} split), {} polled, {} won \
         (KVM: {} / {})",
        sum("polled"),
        sum("poll_won"),
        kvm("halt_attempted_poll")?,
        kvm("halt_successful_poll")?
    )])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_runs_the_halting_guest_from_its_start() {
        let s = script();
        assert!(
            s.contains("--start-delay 1500") && s.contains("--halts 200"),
            "{s}"
        );
    }
}
