//! What `/metrics` shows, taken from the session's aggregate at each tick: plain data, so a
//! scrape never waits for the collection loop and the loop never waits for a scrape.
use std::collections::BTreeMap;

use crate::{
    backend::reason_name,
    data::aggregate::{Aggregate, IoSpace, PortKey},
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

/// `--detail`: exits of one VM and reason under one key (port, address, MSR and direction,
/// CPUID leaf, hypercall), or under none with a series of its own (`key` `None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetailCount {
    pub pid: u32,
    pub reason: String,
    /// Space, key and direction, as tables spell them.
    pub key: Option<(&'static str, String, &'static str)>,
    pub count: u64,
}

/// Which keys of `--detail` have a series of their own. Counters must never go backwards,
/// so a key's fate is decided once, at the tick it is first seen: it gets a series if its VM
/// has fewer than `top` (the largest of a tick's new keys first), and keeps it for the VM's
/// life; any other key stays in its reason's `other` series for good. `other` is the
/// reason's exits less those of its keys with a series, so the series of a reason add up to
/// its exits, and it never goes down: a kernel MMIO address count may run a few exits ahead
/// of its reason's count for a tick, which it waits out rather than report. Series per VM:
/// `top` plus one per reason with keys.
#[derive(Debug, Default)]
pub struct DetailSeries {
    top: usize,
    /// Every key seen, and whether it has a series.
    keys: BTreeMap<PortKey, bool>,
    /// Keys with a series, per VM.
    shown: BTreeMap<u32, usize>,
    /// The last `other` reported, per VM and reason.
    other: BTreeMap<(u32, Reason), u64>,
}

impl DetailSeries {
    pub fn new(top: usize) -> Self {
        DetailSeries {
            top,
            ..DetailSeries::default()
        }
    }

    /// The series of the VMs in `vms` (VMs gone from it are forgotten).
    pub fn take(&mut self, agg: &Aggregate, vms: &BTreeMap<u32, Vm>) -> Vec<DetailCount> {
        let known = |pid: &u32| vms.contains_key(pid);
        self.keys.retain(|k, _| known(&k.pid));
        self.shown.retain(|pid, _| known(pid));
        self.other.retain(|(pid, _), _| known(pid));
        // A guest page marked MMIO repeats its MMIO address row's exits (`IoSpace::rows`):
        // left out, so that a reason's series add up to its exits.
        let repeats = |k: &PortKey| k.space == IoSpace::Page && k.write;
        let rows: Vec<(&PortKey, u64)> = agg
            .ports()
            .iter()
            .filter(|(k, _)| known(&k.pid) && !repeats(k))
            .map(|(k, s)| (k, s.count))
            .collect();
        let mut new: Vec<&(&PortKey, u64)> = rows
            .iter()
            .filter(|(k, _)| !self.keys.contains_key(k))
            .collect();
        new.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        for (k, _) in new {
            let shown = self.shown.entry(k.pid).or_default();
            // The kernel's `other` MMIO row names no address.
            let own = !k.folded && *shown < self.top;
            *shown += usize::from(own);
            self.keys.insert(**k, own);
        }
        let mut keyed: BTreeMap<(u32, Reason), u64> = BTreeMap::new();
        let mut out = Vec::new();
        for &(k, count) in &rows {
            let in_keys = keyed.entry((k.pid, k.reason)).or_default();
            if self.keys.get(k) == Some(&true) {
                *in_keys += count;
                out.push(DetailCount {
                    pid: k.pid,
                    reason: reason_name(k.reason),
                    key: Some((
                        k.space.name(),
                        k.space.key_text(k.addr),
                        k.space.direction(k.write),
                    )),
                    count,
                });
            }
        }
        let mut exits: BTreeMap<(u32, Reason), u64> = BTreeMap::new();
        for (key, stats) in agg.keys() {
            *exits.entry((key.pid, key.reason)).or_default() += stats.count;
        }
        for ((pid, reason), in_keys) in keyed {
            let total = exits.get(&(pid, reason)).copied().unwrap_or(0);
            let other = self.other.entry((pid, reason)).or_default();
            *other = (*other).max(total.saturating_sub(in_keys));
            out.push(DetailCount {
                pid,
                reason: reason_name(reason),
                key: None,
                count: *other,
            });
        }
        out
    }
}

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub vms: BTreeMap<u32, Vm>,
    pub exits: Vec<ExitCount>,
    pub latency: Vec<Latency>,
    /// `--detail`'s series ([`DetailSeries`]).
    pub detail: Vec<DetailCount>,
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
            detail: Vec::new(),
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

    /// The first `top` keys of a VM get series, the largest first; later keys, however large,
    /// go to `other`, which with them adds up to the reason's exits and never goes down.
    #[test]
    fn detail_series_are_bounded_monotonic_and_add_up() {
        let mut a = Aggregate::new(1_000_000_000);
        let port = |a: &mut Aggregate, pid, port, n| {
            for _ in 0..n {
                let mut e = exit(pid, 0, 1_000);
                e.access = Some(crate::data::model::Access::Pio {
                    port,
                    size: 1,
                    write: true,
                });
                a.add(&e);
            }
        };
        port(&mut a, 100, 0x10, 1);
        port(&mut a, 100, 0x20, 3);
        port(&mut a, 100, 0x30, 5);
        port(&mut a, 200, 0x30, 5);
        a.add(&exit(100, 0, 1_000));
        let mut series = DetailSeries::new(2);
        let rows = |d: &[DetailCount]| -> Vec<(Option<String>, u64)> {
            d.iter()
                .map(|d| {
                    (
                        d.key.as_ref().map(|k| format!("{} {} {}", k.0, k.1, k.2)),
                        d.count,
                    )
                })
                .collect()
        };
        let d = series.take(&a, &vms(&[100]));
        assert_eq!(
            rows(&d),
            [
                (Some("pio 0x20 out".into()), 3),
                (Some("pio 0x30 out".into()), 5),
                (None, 2)
            ]
        );
        port(&mut a, 100, 0x40, 100);
        port(&mut a, 100, 0x10, 1);
        port(&mut a, 100, 0x30, 1);
        let d = series.take(&a, &vms(&[100]));
        assert_eq!(
            rows(&d),
            [
                (Some("pio 0x20 out".into()), 3),
                (Some("pio 0x30 out".into()), 6),
                (None, 103)
            ]
        );
        assert_eq!(d.iter().map(|d| d.count).sum::<u64>(), a.total_exits() - 5);
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

    /// An MMIO access that was an NPF has a page row too (marked MMIO): it repeats the
    /// address row's exits, so it gets no series and the reason's series still add up.
    #[test]
    fn an_mmio_page_row_is_not_counted_twice() {
        let mut a = Aggregate::new(1_000_000_000);
        for _ in 0..4 {
            let mut e = exit(100, 0, 1_000);
            e.access = Some(crate::data::model::Access::Mmio {
                gpa: 0xd_0004,
                size: 1,
                write: true,
                npf: true,
            });
            a.add(&e);
        }
        assert_eq!(a.ports().len(), 2, "an address row and a page row");
        let d = DetailSeries::new(10).take(&a, &vms(&[100]));
        let keyed: Vec<_> = d.iter().map(|d| (d.key.clone(), d.count)).collect();
        assert_eq!(
            keyed,
            [
                (Some(("mmio", "0xd0004".to_owned(), "write")), 4),
                (None, 0)
            ]
        );
    }
}
