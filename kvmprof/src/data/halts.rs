//! Halts laid out (issue 22), as recorded: per VM and vCPU, the halts KVM kept in the kernel,
//! how many polled and how many of those won (no block), how many blocked, and the time
//! polled, blocked and waiting for a CPU after the wake-up, with percentiles. The kernel
//! tallies them per thread (`kvmprof_common::halt`); this is what the data file keeps and
//! the report shows.
use std::collections::BTreeMap;

use kvmprof_common::halt::{self, phase, HaltTally};
use serde::{Deserialize, Serialize};

use crate::util::units;

/// The halts of a recording, one row per VM and vCPU.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Halts {
    pub rows: Vec<HaltRow>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaltRow {
    pub pid: u32,
    /// `None` when the vCPU could not be named.
    pub vcpu: Option<u32>,
    pub halts: u64,
    /// KVM's `halt_attempted_poll` and `halt_successful_poll` for these halts.
    pub polled: u64,
    pub poll_won: u64,
    pub blocked: u64,
    /// Wake-ups KVM found invalid (`halt_poll_invalid`: woken with nothing to run).
    pub invalid: u64,
    /// Halts split into phases (the others had a block the scheduler hooks did not see).
    pub split: u64,
    pub halt_ns: u64,
    /// Per phase (poll, block, wake): the sum, and the histogram as (bucket, count) pairs.
    pub phases: Vec<Phase>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    pub sum_ns: u64,
    pub buckets: Vec<(u16, u64)>,
}

impl Phase {
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|(_, n)| n).sum()
    }

    /// The value standing for quantile `q` of this phase (within a quarter of a power of
    /// two: the kernel's buckets), `None` when no halt had it.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for &(b, c) in &self.buckets {
            seen += c;
            if seen >= rank {
                return Some(halt::bucket_value(b as usize));
            }
        }
        None
    }
}

/// One VM and vCPU's halts so far: its row, and per phase the summed time and the kernel's
/// histograms summed (bucket → halts).
type Acc = (
    HaltRow,
    [u64; phase::COUNT],
    [BTreeMap<u16, u64>; phase::COUNT],
);

impl Halts {
    /// The kernel's per-thread tallies, summed per VM and vCPU; `vcpu` names a thread's
    /// vCPU from (pid, vCPU fd, tid) where the kernel did not know its id.
    pub fn from_kernel(
        tallies: &[HaltTally],
        mut vcpu: impl FnMut(u32, i32, u32) -> Option<u32>,
    ) -> Halts {
        let mut by: BTreeMap<(u32, Option<u32>), Acc> = BTreeMap::new();
        for t in tallies.iter().filter(|t| t.halts > 0) {
            let v = u32::try_from(t.vcpu_id)
                .ok()
                .or_else(|| vcpu(t.pid, t.vcpu_fd, t.tid));
            let (row, sums, hist) = by.entry((t.pid, v)).or_default();
            row.pid = t.pid;
            row.vcpu = v;
            row.halts += t.halts;
            row.polled += t.polled;
            row.poll_won += t.poll_won;
            row.blocked += t.blocked;
            row.invalid += t.invalid;
            row.split += t.split;
            row.halt_ns += t.halt_ns;
            for (sum, ns) in sums.iter_mut().zip(t.ns) {
                *sum += ns;
            }
            for (into, from) in hist.iter_mut().zip(&t.hist) {
                for (b, &n) in from.iter().enumerate().filter(|(_, &n)| n > 0) {
                    *into.entry(b as u16).or_default() += u64::from(n);
                }
            }
        }
        // The phases are made once, from the sums and histograms of every thread.
        let rows = by
            .into_values()
            .map(|(mut row, sums, hist)| {
                row.phases = (0..phase::COUNT)
                    .zip(sums)
                    .zip(hist)
                    .map(|((p, sum_ns), h)| Phase {
                        name: phase::NAMES[p].to_owned(),
                        sum_ns,
                        buckets: h.into_iter().collect(),
                    })
                    .collect();
                row
            })
            .collect();
        Halts { rows }
    }

    /// The report's table; nothing when no halt was seen.
    pub fn lines(&self) -> Vec<String> {
        if self.rows.is_empty() {
            return Vec::new();
        }
        let mut out = vec![
            "halts KVM kept in the kernel (HLT with the in-kernel irqchip), per vCPU:".to_owned(),
            format!(
                "  {:>8} {:>5} {:>8} {:>8} {:>8} {:>8}  {:>19}  {:>19}  {:>19}",
                "pid",
                "vcpu",
                "halts",
                "polled",
                "poll won",
                "blocked",
                "poll p50 / p99",
                "block p50 / p99",
                "wake-up p50 / p99"
            ),
        ];
        for r in &self.rows {
            let pct = |p: usize| {
                let ph = r.phases.get(p);
                match (
                    ph.and_then(|x| x.quantile(0.5)),
                    ph.and_then(|x| x.quantile(0.99)),
                ) {
                    (Some(a), Some(b)) => format!("{} / {}", units::ns(a), units::ns(b)),
                    _ => "-".to_owned(),
                }
            };
            out.push(format!(
                "  {:>8} {:>5} {:>8} {:>8} {:>8} {:>8}  {:>19}  {:>19}  {:>19}",
                r.pid,
                r.vcpu.map_or("?".to_owned(), |v| v.to_string()),
                r.halts,
                r.polled,
                r.poll_won,
                r.blocked,
                pct(phase::POLL),
                pct(phase::BLOCK),
                pct(phase::WAKE),
            ));
        }
        let (halts, split): (u64, u64) = self
            .rows
            .iter()
            .fold((0, 0), |(h, s), r| (h + r.halts, s + r.split));
        if split < halts {
            out.push(format!(
                "  ({} of {halts} halts blocked where the scheduler hooks did not see it: \
                 counted, not split into phases)",
                halts - split
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(pid: u32, tid: u32, vcpu_id: i32, halts: u64, poll: &[u64]) -> HaltTally {
        let mut t = HaltTally {
            pid,
            tid,
            vcpu_id,
            halts,
            polled: poll.len() as u64,
            poll_won: 1,
            blocked: halts - 1,
            split: halts,
            ..HaltTally::default()
        };
        for &v in poll {
            t.ns[phase::POLL] += v;
            t.hist[phase::POLL][halt::bucket(v)] += 1;
        }
        t
    }

    #[test]
    fn threads_of_one_vcpu_add_up_and_quantiles_come_from_the_buckets() {
        let a = tally(7, 70, 0, 3, &[1000, 2000]);
        let b = tally(7, 71, 0, 2, &[100_000]);
        let c = tally(7, 72, -1, 1, &[]);
        let h = Halts::from_kernel(&[a, b, c], |_, _, tid| (tid == 72).then_some(1));
        assert_eq!(h.rows.len(), 2);
        let r = &h.rows[0];
        assert_eq!((r.vcpu, r.halts, r.polled, r.poll_won), (Some(0), 5, 3, 2));
        let poll = &r.phases[phase::POLL];
        assert_eq!((poll.count(), poll.sum_ns), (3, 103_000));
        let p50 = poll.quantile(0.5).unwrap();
        assert!((1500..2600).contains(&p50), "{p50}");
        let p99 = poll.quantile(0.99).unwrap();
        assert!((80_000..130_000).contains(&p99), "{p99}");
        assert_eq!(h.rows[1].vcpu, Some(1));
        let text = h.lines().join("\n");
        assert!(text.contains("poll p50 / p99"), "{text}");
    }
}
