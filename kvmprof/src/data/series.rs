//! Views of an [`Aggregate`] shared by the sinks (export, diff, plot, report --intervals):
//! which reasons and stages were chosen, histograms per reason and stage, and per-interval
//! rows of the time series.
use std::collections::BTreeMap;

use anyhow::{bail, Result};
use hdrhistogram::Histogram;

use crate::backend::reason_name;
use crate::data::aggregate::{self, Aggregate, Key};
use crate::data::group::{self, By, GroupId};
use crate::data::model::{Reason, Stage};

/// Reasons and stages chosen on the command line; empty means all.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Reason names (`io`, `hlt`, `KVM_EXIT_IO`) or `<space>:<code>` (`svm:0x7b`).
    pub reasons: Vec<String>,
    pub stages: Vec<Stage>,
}

impl Selection {
    pub fn reason(&self, r: Reason) -> bool {
        self.reasons.is_empty() || self.reasons.iter().any(|n| reason_matches(n, r))
    }

    pub fn stage(&self, s: Stage) -> bool {
        self.stages.is_empty() || self.stages.contains(&s)
    }

    /// Fails when a named reason has no exits in `a`, listing those it has.
    pub fn check(&self, a: &Aggregate) -> Result<()> {
        for name in &self.reasons {
            if !a.keys().keys().any(|k| reason_matches(name, k.reason)) {
                let known: std::collections::BTreeSet<String> =
                    a.keys().keys().map(|k| reason_name(k.reason)).collect();
                let known: Vec<String> = known.into_iter().collect();
                bail!(
                    "no exits of reason {name:?} (reasons: {})",
                    known.join(", ")
                );
            }
        }
        Ok(())
    }
}

fn reason_matches(name: &str, r: Reason) -> bool {
    name == reason_name(r) || name == code_label(r)
}

/// `svm:0x7b`: the reason as its tag spells it.
pub fn code_label(r: Reason) -> String {
    format!("{}:{:#x}", r.space.short_name(), r.code)
}

/// Exits and merged stage histograms of one group of keys.
pub struct GroupStats {
    pub count: u64,
    /// Summed stage durations (exact where the recording kept them).
    pub sums: BTreeMap<Stage, u64>,
    pub hists: BTreeMap<Stage, Histogram<u64>>,
}

/// The label of the group `key` falls in.
pub fn group_of(key: &Key, by: By) -> String {
    label(by.id(key))
}

fn label(id: GroupId) -> String {
    match id {
        // CSV rows carry no process names.
        GroupId::Pid(pid) => format!("pid {pid}"),
        id => id.label(|_| None),
    }
}

/// Per group: counts and stage histograms, chosen reasons and stages only.
pub fn groups(a: &Aggregate, by: By, sel: &Selection) -> BTreeMap<String, GroupStats> {
    let chosen = a.keys().iter().filter(|(k, _)| sel.reason(k.reason));
    group::group(chosen, by)
        .into_iter()
        .map(|(id, stats)| {
            let measured = Stage::ALL
                .into_iter()
                .filter(|&s| sel.stage(s))
                .filter_map(|s| {
                    stats
                        .stage(s)
                        .filter(|st| !st.hist.is_empty())
                        .map(|st| (s, st))
                });
            let g = GroupStats {
                count: stats.count,
                sums: measured.clone().map(|(s, st)| (s, st.sum_ns)).collect(),
                hists: measured.map(|(s, st)| (s, st.hist.clone())).collect(),
            };
            (label(id), g)
        })
        .collect()
}

/// All chosen series of `a` merged into one histogram per stage.
pub fn by_stage(a: &Aggregate, sel: &Selection) -> BTreeMap<Stage, Histogram<u64>> {
    let mut out: BTreeMap<Stage, Histogram<u64>> = BTreeMap::new();
    for r in groups(a, By::Reason, sel).into_values() {
        for (stage, h) in r.hists {
            add(
                out.entry(stage).or_insert_with(aggregate::new_histogram),
                &h,
            );
        }
    }
    out
}

/// One interval of a time series.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct IntervalRow {
    /// Start, ns since the recording's first interval.
    pub offset_ns: u64,
    pub length_ns: u64,
    pub samples: u64,
    pub rate_per_s: f64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

/// The time series of one stage over the chosen reasons: a row per interval with samples.
/// Intervals without any are left out (nothing was measured).
pub fn intervals(a: &Aggregate, sel: &Selection, stage: Stage) -> Result<Vec<IntervalRow>> {
    let mut per: BTreeMap<u64, Histogram<u64>> = BTreeMap::new();
    a.for_each_interval(|start, key, s, h| {
        if s == stage && sel.reason(key.reason) {
            add(per.entry(start).or_insert_with(aggregate::new_histogram), h);
        }
        Ok(())
    })?;
    let base = per.keys().next().copied().unwrap_or(0);
    let length_ns = a.interval_ns();
    Ok(per
        .into_iter()
        .map(|(start, h)| IntervalRow {
            offset_ns: start - base,
            length_ns,
            samples: h.len(),
            rate_per_s: h.len() as f64 * 1e9 / length_ns as f64,
            p50_ns: h.value_at_quantile(0.5),
            p99_ns: h.value_at_quantile(0.99),
            max_ns: h.max(),
        })
        .collect())
}

/// The stage a time series shows by default: the cycle, else the first stage measured.
pub fn default_stage(a: &Aggregate) -> Stage {
    Stage::ALL
        .into_iter()
        .find(|&s| a.keys().values().any(|k| k.stage(s).is_some()))
        .unwrap_or(Stage::Cycle)
}

/// Adds `src` into `dst` (both grow as needed, so this cannot fail short of memory).
pub fn add(dst: &mut Histogram<u64>, src: &Histogram<u64>) {
    if dst.add(src).is_err() {
        for v in src.iter_recorded() {
            dst.saturating_record_n(v.value_iterated_to(), v.count_at_value());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_chosen_by_name_or_as_tags_spell_them() {
        let (io, user_io) = (crate::testdata::IO, crate::testdata::KVM_EXIT_IO);
        let sel = |r: &[&str]| Selection {
            reasons: r.iter().map(|s| s.to_string()).collect(),
            stages: Vec::new(),
        };
        assert!(sel(&[]).reason(io));
        assert!(sel(&["io"]).reason(io) && !sel(&["io"]).reason(user_io));
        assert!(sel(&["svm:0x7b"]).reason(io));
        assert!(sel(&["KVM_EXIT_IO"]).reason(user_io) && sel(&["user:0x2"]).reason(user_io));
        assert!(!sel(&["svm:0x7c"]).reason(io));
    }
}
