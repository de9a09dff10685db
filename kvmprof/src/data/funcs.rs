//! `record --func` laid out (issue 21): per timed function, process and exit reason, the
//! exits that called it, its calls per exit and the time in it per exit, as the kernel
//! tallied them per thread (`kvmprof_common::func`). What the data file keeps (end record)
//! and the report shows.
use std::collections::BTreeMap;

use kvmprof_common::func::{FuncKey, FuncTally};
use serde::{Deserialize, Serialize};

use crate::backend::reason_name;
use crate::data::halts::Phase;
use crate::data::model::{Reason, ReasonSpace};
use crate::util::units;

/// The timed functions of a recording.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Funcs {
    /// Each function as asked for, in `--func`'s order, and how it was hooked.
    pub hooks: Vec<FuncHook>,
    pub rows: Vec<FuncRow>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FuncHook {
    pub name: String,
    /// `fentry` or `kprobe`.
    pub mode: String,
    /// What was hooked: the function, or the compiler clone standing for it.
    pub symbol: String,
    /// Calls made while no exit was open on their thread (before the first exit seen, or
    /// between a return to the VMM and the next entry), or in an exit not recorded (begun
    /// before the window): in no row.
    pub outside: u64,
    /// Exits that called it but found the kernel's table full: in no row.
    pub folded: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FuncRow {
    pub func: String,
    pub pid: u32,
    pub reason: Reason,
    pub reason_name: String,
    /// Exits of this reason that called it at least once.
    pub exits: u64,
    pub calls: u64,
    /// The most calls one exit made.
    pub max_calls: u64,
    /// Those exits' cycles, summed.
    pub cycle_ns: u64,
    /// Time in the function per exit: the sum and the kernel's histogram.
    pub time: Phase,
}

impl FuncRow {
    /// The function's share of its exits' cycles.
    pub fn cycle_share(&self) -> Option<f64> {
        (self.cycle_ns > 0).then(|| units::ratio(self.time.sum_ns, self.cycle_ns))
    }
}

impl Funcs {
    /// The kernel's per-thread tallies, summed per function, process and reason.
    pub fn from_kernel(hooks: Vec<FuncHook>, tallies: &[(FuncKey, FuncTally)]) -> Funcs {
        type Acc = (FuncRow, BTreeMap<u16, u64>);
        let mut by: BTreeMap<(u32, u32, u32, u32), Acc> = BTreeMap::new();
        for (k, t) in tallies.iter().filter(|(_, t)| t.exits > 0) {
            let Some(hook) = hooks.get(k.func as usize) else {
                continue;
            };
            let (row, hist) = by
                .entry((k.func, k.pid, k.space, k.reason))
                .or_insert_with(|| {
                    let reason = Reason {
                        space: ReasonSpace::of_record(k.space as u8),
                        code: k.reason,
                    };
                    let row = FuncRow {
                        func: hook.name.clone(),
                        pid: k.pid,
                        reason,
                        reason_name: reason_name(reason),
                        exits: 0,
                        calls: 0,
                        max_calls: 0,
                        cycle_ns: 0,
                        time: Phase {
                            name: "time".to_owned(),
                            ..Phase::default()
                        },
                    };
                    (row, BTreeMap::new())
                });
            row.exits += t.exits;
            row.calls += t.calls;
            row.max_calls = row.max_calls.max(t.max_calls);
            row.cycle_ns += t.cycle_ns;
            row.time.sum_ns += t.ns;
            for (b, &n) in t.hist.iter().enumerate().filter(|(_, &n)| n > 0) {
                *hist.entry(b as u16).or_default() += u64::from(n);
            }
        }
        let mut rows: Vec<FuncRow> = by
            .into_values()
            .map(|(mut row, hist)| {
                row.time.buckets = hist.into_iter().collect();
                row
            })
            .collect();
        // Functions in `--func`'s order, then the most exits first.
        let order = |r: &FuncRow| hooks.iter().position(|h| h.name == r.func);
        rows.sort_by_key(|r| (order(r), std::cmp::Reverse(r.exits)));
        Funcs { hooks, rows }
    }

    /// The report's table.
    pub fn lines(&self) -> Vec<String> {
        if self.hooks.is_empty() {
            return Vec::new();
        }
        let mut out = vec![
            "Functions timed in the exits that called them (--func):".to_owned(),
            format!(
                "  {:<32} {:>8} {:<22} {:>9} {:>9} {:>9} {:>19} {:>9} {:>7}",
                "function",
                "pid",
                "reason",
                "exits",
                "calls",
                "calls/ex",
                "time p50 / p99",
                "mean",
                "cycle"
            ),
        ];
        for r in &self.rows {
            let pct = match (r.time.quantile(0.5), r.time.quantile(0.99)) {
                (Some(a), Some(b)) => format!("{} / {}", units::ns(a), units::ns(b)),
                _ => "-".to_owned(),
            };
            let per_exit = format!(
                "{:.2}{}",
                units::ratio(r.calls, r.exits),
                if r.max_calls > 1 { "+" } else { "" }
            );
            out.push(format!(
                "  {:<32} {:>8} {:<22} {:>9} {:>9} {:>9} {:>19} {:>9} {:>7}",
                r.func,
                r.pid,
                r.reason_name,
                r.exits,
                r.calls,
                per_exit,
                pct,
                units::ns(r.time.sum_ns / r.exits.max(1)),
                r.cycle_share().map_or("-".to_owned(), units::pct),
            ));
        }
        for h in &self.hooks {
            let mut said = format!("  {}: {} on {}", h.name, h.mode, h.symbol);
            if !self.rows.iter().any(|r| r.func == h.name) {
                said.push_str("; no exit called it");
            }
            if h.outside > 0 {
                said.push_str(&format!("; {} calls outside any recorded exit", h.outside));
            }
            if h.folded > 0 {
                said.push_str(&format!(
                    "; {} exits not tallied (the kernel's table of {} was full)",
                    h.folded,
                    kvmprof_common::func::KEYS
                ));
            }
            out.push(said);
        }
        out.push(
            "  (calls/ex: calls per exit that called it, + when one exit made more than one; \
             cycle: its share of those exits' cycles)"
                .to_owned(),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmprof_common::{halt, space};

    fn hook(name: &str) -> FuncHook {
        FuncHook {
            name: name.to_owned(),
            mode: "fentry".to_owned(),
            symbol: name.to_owned(),
            ..FuncHook::default()
        }
    }

    fn tally(exits: u64, calls: u64, ns: &[u64]) -> FuncTally {
        let mut t = FuncTally {
            exits,
            calls,
            max_calls: calls.div_ceil(exits),
            ns: ns.iter().sum(),
            cycle_ns: 10 * ns.iter().sum::<u64>(),
            ..FuncTally::default()
        };
        for &v in ns {
            t.hist[halt::bucket(v)] += 1;
        }
        t
    }

    fn key(tid: u32, reason: u32, func: u32) -> FuncKey {
        FuncKey {
            pid: 7,
            tid,
            space: space::SVM as u32,
            reason,
            func,
            _pad: 0,
        }
    }

    #[test]
    fn threads_add_up_per_function_process_and_reason() {
        let tallies = [
            (key(8, 0x400, 0), tally(2, 2, &[1000, 3000])),
            (key(9, 0x400, 0), tally(1, 1, &[2000])),
            (key(9, 0x7b, 1), tally(1, 3, &[500])),
        ];
        let f = Funcs::from_kernel(vec![hook("decode"), hook("other")], &tallies);
        let rows: Vec<(&str, &str, u64, u64, u64)> = f
            .rows
            .iter()
            .map(|r| {
                (
                    r.func.as_str(),
                    r.reason_name.as_str(),
                    r.exits,
                    r.calls,
                    r.max_calls,
                )
            })
            .collect();
        assert_eq!(rows, [("decode", "npf", 3, 3, 1), ("other", "io", 1, 3, 3)]);
        assert_eq!(f.rows[0].time.sum_ns, 6000);
        assert_eq!(f.rows[0].time.count(), 3);
        assert_eq!(f.rows[0].cycle_share(), Some(0.1));
        let text = f.lines().join("\n");
        assert!(text.contains("decode: fentry on decode"), "{text}");
        assert!(text.contains("3.00+"), "{text}");
    }

    #[test]
    fn a_function_no_exit_called_is_said_and_calls_outside_are_counted() {
        let mut h = hook("idle_fn");
        h.outside = 4;
        let f = Funcs::from_kernel(vec![h], &[]);
        let text = f.lines().join("\n");
        assert!(
            text.contains("no exit called it; 4 calls outside any recorded exit"),
            "{text}"
        );
    }
}
