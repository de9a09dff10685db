//! What `/metrics` shows, taken from the session's aggregate at each tick: plain data, so a
//! scrape never waits for the collection loop and the loop never waits for a scrape.
use std::collections::BTreeMap;

use crate::{
    backend::reason_name,
    data::aggregate::Aggregate,
    data::cost::OwnCost,
    data::model::{Reason, Stage},
    live::vmname::VmName,
};

use super::buckets::{self, BUCKETS};

/// The labels of one VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vm {
    pub pid: u32,
    pub name: VmName,
}

/// Exits of one VM, vCPU (unless vCPU labels are off) and reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitCount {
    pub pid: u32,
    /// `None` when vCPU labels are off; `Some(None)` when the vCPU was not resolved.
    pub vcpu: Option<Option<u32>>,
    pub reason: String,
    pub count: u64,
}

/// The latency distribution of one stage of one VM's exits of one reason, over all vCPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Latency {
    pub pid: u32,
    pub reason: String,
    pub stage: Stage,
    /// Per-bucket counts ([`buckets::bounds_ns`], then `+Inf`).
    pub buckets: [u64; BUCKETS],
    pub count: u64,
    pub sum_ns: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub vms: BTreeMap<u32, Vm>,
    pub exits: Vec<ExitCount>,
    pub latency: Vec<Latency>,
    /// Exits dropped because the ring buffer was full.
    pub lost: u64,
    /// kvmprof's own cost: the run time of its eBPF programs while the run-time statistics
    /// were on (`--bpf-stats`), and the exits counted meanwhile.
    pub own_cost: OwnCost,
}

impl Snapshot {
    /// Everything in `agg` about the VMs in `vms` (others are skipped: their names are not
    /// known yet, they appear at the next tick).
    pub fn take(agg: &Aggregate, vms: &BTreeMap<u32, Vm>, vcpu_label: bool, lost: u64) -> Self {
        let mut exits: BTreeMap<(u32, Option<Option<u32>>, Reason), u64> = BTreeMap::new();
        let mut latency: BTreeMap<(u32, Reason, Stage), Latency> = BTreeMap::new();
        for (key, stats) in agg.keys() {
            if !vms.contains_key(&key.pid) {
                continue;
            }
            let vcpu = vcpu_label.then_some(key.vcpu);
            *exits.entry((key.pid, vcpu, key.reason)).or_default() += stats.count;
            for stage in Stage::ALL {
                let Some(s) = stats.stage(stage).filter(|s| !s.hist.is_empty()) else {
                    continue;
                };
                let l = latency
                    .entry((key.pid, key.reason, stage))
                    .or_insert_with(|| Latency {
                        pid: key.pid,
                        reason: reason_name(key.reason),
                        stage,
                        buckets: [0; BUCKETS],
                        count: 0,
                        sum_ns: 0,
                    });
                for (b, n) in l.buckets.iter_mut().zip(buckets::counts(&s.hist)) {
                    *b += n;
                }
                l.count += s.hist.len();
                l.sum_ns = l.sum_ns.saturating_add(s.sum_ns);
            }
        }
        Snapshot {
            vms: vms.clone(),
            exits: exits
                .into_iter()
                .map(|((pid, vcpu, reason), count)| ExitCount {
                    pid,
                    vcpu,
                    reason: reason_name(reason),
                    count,
                })
                .collect(),
            latency: latency.into_values().collect(),
            lost,
            own_cost: OwnCost::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::model::Exit;
    use crate::testdata::{self, IO};

    fn exit(pid: u32, vcpu: u32, cycle: u64) -> Exit {
        testdata::exit(pid, vcpu, IO, testdata::cycle(Some(cycle)))
    }

    fn vms(pids: &[u32]) -> BTreeMap<u32, Vm> {
        pids.iter()
            .map(|&pid| {
                let name = VmName {
                    process: format!("vmm{pid}"),
                    guest: String::new(),
                };
                (pid, Vm { pid, name })
            })
            .collect()
    }

    #[test]
    fn counts_per_vcpu_and_merges_latency_over_vcpus() {
        let mut a = Aggregate::new(1_000_000_000);
        for i in 0..10 {
            a.add(&exit(100, 0, 1_500));
            a.add(&exit(100, 1, 3_000 + i));
        }
        a.add(&exit(200, 0, 50));
        let s = Snapshot::take(&a, &vms(&[100]), true, 7);
        assert_eq!(s.lost, 7);
        let counts: Vec<_> = s.exits.iter().map(|e| (e.pid, e.vcpu, e.count)).collect();
        assert_eq!(
            counts,
            [(100, Some(Some(0)), 10), (100, Some(Some(1)), 10)],
            "pid 200 has no name yet"
        );
        assert_eq!(s.latency.len(), 1);
        let l = &s.latency[0];
        assert_eq!(
            (l.reason.as_str(), l.stage, l.count),
            ("io", Stage::Cycle, 20)
        );
        assert_eq!(l.sum_ns, 10 * 1_500 + 10 * 3_000 + 45);
        // 1.5 µs ≤ 2 µs; 3 µs ≤ 5 µs.
        assert_eq!((l.buckets[4], l.buckets[5]), (10, 10));

        let s = Snapshot::take(&a, &vms(&[100, 200]), false, 0);
        let counts: Vec<_> = s.exits.iter().map(|e| (e.pid, e.vcpu, e.count)).collect();
        assert_eq!(counts, [(100, None, 20), (200, None, 1)]);
    }
}
