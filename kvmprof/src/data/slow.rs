//! `record --slow`: the exits slower than a threshold, kept one by one (with reason,
//! access, vCPU, stage times and timestamp) for the report, like `perf kvm stat live
//! --duration` or perf-prof's `--than`.
use std::fmt::Write as _;

use kvmprof_common::duration;
use serde::{Deserialize, Serialize};

use crate::{
    backend::reason_name,
    data::{
        aggregate::IoSpace,
        model::{Exit, Stage},
    },
    util::units,
};

/// At most this many slow exits are kept (the rest are only counted), so that a threshold
/// below the typical exit cannot grow memory without bound.
pub const KEEP: usize = 10_000;

/// Which stages are compared with the threshold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub stages: Vec<Stage>,
    pub threshold_ns: u64,
}

impl Rule {
    /// Whether one of the rule's stages of `e` took longer than the threshold.
    pub fn matches(&self, e: &Exit) -> bool {
        self.stages
            .iter()
            .any(|s| e.stages[s.index()].is_some_and(|ns| ns > self.threshold_ns))
    }

    /// `cycle|handler > 10.0ms`.
    pub fn label(&self) -> String {
        let names: Vec<&str> = self.stages.iter().map(|s| s.name()).collect();
        format!("{} > {}", names.join("|"), units::ns(self.threshold_ns))
    }
}

/// `10ms` (an exit's cycle or handler) or `STAGE=10ms` (that stage).
pub fn parse_rule(s: &str) -> Result<Rule, String> {
    let (stages, dur) = match s.split_once('=') {
        Some((name, dur)) => {
            let stage = Stage::from_name(name.trim()).ok_or_else(|| {
                let names: Vec<&str> = Stage::ALL.iter().map(|s| s.name()).collect();
                format!("unknown stage '{name}' (one of {})", names.join(", "))
            })?;
            (vec![stage], dur)
        }
        None => (vec![Stage::Cycle, Stage::Handler], s),
    };
    let threshold = duration::parse(dur, duration::Bare::Secs).map_err(|e| e.to_string())?;
    Ok(Rule {
        stages,
        threshold_ns: u64::try_from(threshold.as_nanos()).unwrap_or(u64::MAX),
    })
}

/// The slow exits of a recording.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlowExits {
    pub rule: Rule,
    /// Every slow exit seen, kept or not.
    pub count: u64,
    /// The first [`KEEP`] of them, in the order they were drained.
    pub exits: Vec<Exit>,
}

impl SlowExits {
    pub fn new(rule: Rule) -> Self {
        SlowExits {
            rule,
            count: 0,
            exits: Vec::new(),
        }
    }

    /// Counts (and keeps) `e` if it is slow; says whether it was.
    pub fn offer(&mut self, e: &Exit) -> bool {
        let slow = self.rule.matches(e);
        if slow {
            self.count += 1;
            if self.exits.len() < KEEP {
                self.exits.push(e.clone());
            }
        }
        slow
    }

    /// The report's listing, oldest first.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(out, "\nSlow exits ({}): {}", self.rule.label(), self.count);
        if self.count as usize > self.exits.len() {
            let _ = writeln!(out, "  (the first {} are listed)", self.exits.len());
        }
        let _ = writeln!(out, "{}", heading());
        let mut sorted: Vec<&Exit> = self.exits.iter().collect();
        sorted.sort_by_key(|e| e.ts_ns);
        for e in sorted {
            let _ = writeln!(out, "{}", row(e));
        }
    }
}

/// The column headers of [`row`].
pub fn heading() -> String {
    format!(
        "{:>16} {:>7} {:>7} {:>4}  {:<18} {:<20} stages",
        "ts", "pid", "tid", "vcpu", "reason", "access"
    )
}

/// One slow exit as a line of the listing (shared by the report and `top`).
pub fn row(e: &Exit) -> String {
    let vcpu = e.vcpu.map_or("-".to_owned(), |v| v.to_string());
    let access = match e.access {
        Some(a) => {
            let (space, addr, write) = IoSpace::of(a);
            format!(
                "{} {} {}",
                space.name(),
                space.key_text(addr),
                space.direction(write)
            )
        }
        None => "-".to_owned(),
    };
    let stages: Vec<String> = Stage::ALL
        .iter()
        .filter_map(|s| e.stages[s.index()].map(|ns| format!("{}={}", s.name(), units::ns(ns))))
        .collect();
    format!(
        "{:>16} {:>7} {:>7} {:>4}  {:<18} {:<20} {}",
        e.ts_ns,
        e.pid,
        e.tid,
        vcpu,
        reason_name(e.reason),
        access,
        stages.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use kvmprof_common::STAGES;

    use super::*;
    use crate::testdata;

    fn exit(cycle: Option<u64>, handler: Option<u64>, vmm: Option<u64>) -> Exit {
        let mut stages = [None; STAGES];
        stages[Stage::Cycle.index()] = cycle;
        stages[Stage::Handler.index()] = handler;
        stages[Stage::Vmm.index()] = vmm;
        testdata::pio_in(1, 0, stages)
    }

    #[test]
    fn a_bare_duration_compares_cycle_and_handler_only() {
        let r = parse_rule("1ms").unwrap();
        assert!(r.matches(&exit(Some(2_000_000), None, None)));
        assert!(r.matches(&exit(Some(10), Some(1_000_001), None)));
        assert!(!r.matches(&exit(Some(1_000_000), None, Some(9_000_000))));
        assert_eq!(r.label(), "cycle|handler > 1.00ms");
    }

    #[test]
    fn a_stage_rule_compares_that_stage() {
        let r = parse_rule("vmm=50ms").unwrap();
        assert!(r.matches(&exit(None, None, Some(60_000_000))));
        assert!(!r.matches(&exit(Some(60_000_000), None, Some(1))));
        assert!(parse_rule("guest=1ms")
            .unwrap_err()
            .contains("unknown stage 'guest'"));
        assert!(parse_rule("vmm=fast").is_err());
    }

    #[test]
    fn only_the_first_slow_exits_are_kept_but_all_are_counted() {
        let mut s = SlowExits::new(parse_rule("1").unwrap());
        for _ in 0..KEEP + 5 {
            s.offer(&exit(Some(2_000_000_000), None, None));
            s.offer(&exit(Some(1), None, None));
        }
        assert_eq!((s.count, s.exits.len()), (KEEP as u64 + 5, KEEP));
        let mut text = String::new();
        s.render(&mut text);
        assert!(text.contains("the first 10000 are listed"), "{text}");
        assert!(text.contains("pio 0x3fd in"), "{text}");
    }
}
