//! The VM check of halts laid out (issue 22): a guest that halts a known number of times,
//! woken each time by an interrupt from the test VMM, recorded from its start, twice. KVM's
//! own counters of the VM (debugfs, read by kvmprof over the window) are the oracle.
//! - Slow (a pulse every 5 ms): every `hlt` is a HLT exit, and nearly every one a halt KVM
//!   waits in, long enough that KVM never polls. The HLT exits are the guest's halts and
//!   KVM's `halt_exits`, exactly.
//! - Fast (every 100 µs): halts shorter than KVM's longest poll (200 µs) open the polling
//!   window. kvmprof's polled and won halts are KVM's `halt_attempted_poll` and
//!   `halt_successful_poll`, exactly, and some polled.
use anyhow::{ensure, Context, Result};
use kvmprof_testvmm::Workload;
use serde_json::Value;

use crate::checks::{parse_json, Captured, Check, Notes};

const HALTS: Workload = Workload {
    halts: 200,
    pio_user: 10,
    ..Workload::IDLE
};

/// The two recordings: name, pulse period, halts.
const RUNS: [(&str, &str, u64); 2] = [("slow", "5ms", 200), ("fast", "100us", 1000)];

/// `record -- VMM` of the halting guest at each pulse period; prints `{"<run>": {"vmm",
/// "report"}, ...}`. kvmprof reads a VM's counters every second while exits come, and once
/// more before it sleeps for want of exits: the VMM waits 1.5 s before its first KVM_RUN and
/// keeps the VM 2.5 s after its guest stopped, so that reads before the first halt and after
/// the last bound them.
pub fn script() -> String {
    let dir = "/run/kvmprof-halts";
    let mut s = format!("mkdir -p {dir}\nsep=''\nprintf '{{'\n");
    for (run, tick, halts) in RUNS {
        let args = kvmprof_testvmm::cli::args(&Workload { halts, ..HALTS });
        s += &format!(
            "\"$KVMPROF\" record -o {dir}/{run}.data -- \"$TESTVMM\" --start-delay 1500 \
             --end-delay 2500 --halt-tick {tick} {args} > {dir}/{run}.json\n\
             \"$KVMPROF\" report -i {dir}/{run}.data --format json > {dir}/{run}-report.json\n\
             printf '%s\"{run}\": {{\"vmm\": %s, \"report\": %s}}' \"$sep\" \"$(cat {dir}/{run}.json)\" \
             \"$(cat {dir}/{run}-report.json)\"\n\
             sep=', '\n"
        );
    }
    s + "printf '}\\n'\n"
}

pub fn verify(check: &Check, c: &Captured) -> Result<Notes> {
    let json = parse_json(&c.stdout)?;
    let mut notes = Vec::new();
    for (run, _, halts) in RUNS {
        let r = Run::of(&json[run], halts).with_context(|| format!("{run} run"))?;
        let (laid_out, split) = (r.sum("halts"), r.sum("split"));
        // A `hlt` whose wake-up came before the guest was back at it never waits in KVM: a
        // HLT exit, but no halt to lay out.
        ensure!(
            laid_out <= halts,
            "{run}: {laid_out} halts laid out of {halts} made"
        );
        let (polled, won) = (r.sum("polled"), r.sum("poll_won"));
        let (kvm_polled, kvm_won) = (
            r.kvm("halt_attempted_poll")?,
            r.kvm("halt_successful_poll")?,
        );
        ensure!(
            polled == kvm_polled && won == kvm_won,
            "{run}: kvmprof {polled} polled, {won} won; KVM's halt_attempted_poll {kvm_polled}, \
             halt_successful_poll {kvm_won}"
        );
        let hlt = r.hlt_exits(check)?;
        if run == "slow" {
            let kvm_hlt = r.kvm("halt_exits")?;
            // Each halt blocks for most of 5 ms: the scheduler hooks see it leave its CPU.
            // (At 100 µs a wake-up often comes before it has: blocked, not split.)
            ensure!(
                hlt == halts
                    && kvm_hlt == halts
                    && laid_out * 10 >= halts * 8
                    && split * 10 >= laid_out * 9,
                "slow: {hlt} HLT exits (KVM: {kvm_hlt}), {laid_out} halts laid out ({split} \
                 split), of {halts}"
            );
        } else {
            // Whether a poll wins depends on how fast the emulated CPU gets back to `hlt`
            // (none did under Bochs): only the polls must be there to compare.
            ensure!(polled > 0, "fast: no halt polled: nothing to compare");
        }
        notes.push(format!(
            "{run}: {hlt} HLT exits, {laid_out} halts laid out ({split} split), {polled} polled, \
             {won} won (KVM: {kvm_polled} / {kvm_won})"
        ));
    }
    Ok(notes)
}

/// One recording of the halting guest.
struct Run<'a> {
    report: &'a Value,
    rows: &'a [Value],
}

impl<'a> Run<'a> {
    fn of(json: &'a Value, halts: u64) -> Result<Run<'a>> {
        let made = crate::checks::vmm_counts(&json["vmm"])?;
        ensure!(
            made.total.halts == halts && made.total.other == 0,
            "the guest halted {} times of {halts} ({:?})",
            made.total.halts,
            made.other_reasons
        );
        let report = &json["report"];
        ensure!(
            report["kvm_stats"].is_object(),
            "no KVM counters in the report: {}",
            report["header"]["kvm_stats"]
        );
        let rows = report["header"]["halts"]["rows"]
            .as_array()
            .context("no halts in the report")?;
        Ok(Run { report, rows })
    }

    fn sum(&self, k: &str) -> u64 {
        self.rows.iter().filter_map(|r| r[k].as_u64()).sum()
    }

    fn kvm(&self, k: &str) -> Result<u64> {
        self.report["kvm_stats"][k]
            .as_u64()
            .with_context(|| format!("no {k} among KVM's counters"))
    }

    fn hlt_exits(&self, check: &Check) -> Result<u64> {
        Ok(self.report["groups"]
            .as_array()
            .context("report has no groups")?
            .iter()
            .filter(|g| g["label"] == check.vendor.hlt_label())
            .filter_map(|g| g["count"].as_u64())
            .sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_runs_the_halting_guest_from_its_start_at_both_periods() {
        let s = script();
        for want in ["--start-delay 1500", "--halt-tick 5ms", "--halt-tick 100us"] {
            assert!(s.contains(want), "{want}: {s}");
        }
        assert!(
            s.contains("--halts 200") && s.contains("--halts 1000"),
            "{s}"
        );
    }
}
