//! Which VMs are served: named when their first exit arrives, dropped (from `/metrics` and
//! from memory) once their process has been gone for the grace period, so that a scrape
//! still sees a VM's final counts after it stops.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use crate::{data::aggregate::Aggregate, live::vmname};

use super::snapshot::Vm;

pub struct Vms {
    grace: Duration,
    known: BTreeMap<u32, Vm>,
    /// When each process was first seen gone.
    gone_since: BTreeMap<u32, Instant>,
    /// The pid of the latest exit, so that naming costs one comparison per exit.
    last_pid: Option<u32>,
}

impl Vms {
    pub fn new(grace: Duration) -> Self {
        Vms {
            grace,
            known: BTreeMap::new(),
            gone_since: BTreeMap::new(),
            last_pid: None,
        }
    }

    /// Called for every exit: names a VM at its first exit, while its process surely exists
    /// (a short-lived VMM may be gone by the next tick).
    pub fn saw(&mut self, pid: u32) {
        if self.last_pid == Some(pid) {
            return;
        }
        self.last_pid = Some(pid);
        self.known.entry(pid).or_insert_with(|| Vm {
            pid,
            name: vmname::of_pid(pid),
        });
    }

    /// Forgets VMs whose process has been gone for the grace period, in `agg` too; returns
    /// how many. `alive` tells whether a process still runs.
    pub fn expire(
        &mut self,
        agg: &mut Aggregate,
        now: Instant,
        alive: impl Fn(u32) -> bool,
    ) -> usize {
        let mut forgotten = 0;
        let pids: BTreeSet<u32> = agg.keys().keys().map(|k| k.pid).collect();
        for pid in pids {
            if alive(pid) {
                self.gone_since.remove(&pid);
                continue;
            }
            let since = *self.gone_since.entry(pid).or_insert(now);
            if now.duration_since(since) >= self.grace {
                agg.forget_pid(pid);
                forgotten += 1;
                self.known.remove(&pid);
                self.gone_since.remove(&pid);
                if self.last_pid == Some(pid) {
                    self.last_pid = None;
                }
            }
        }
        forgotten
    }

    pub fn known(&self) -> &BTreeMap<u32, Vm> {
        &self.known
    }
}

#[cfg(test)]
mod tests {
    use kvmprof_common::STAGES;

    use super::*;
    use crate::data::model::Exit;
    use crate::testdata::{self, IO};

    fn exit(pid: u32) -> Exit {
        testdata::exit(pid, 0, IO, [Some(10); STAGES])
    }

    #[test]
    fn drops_a_vm_only_after_its_process_is_gone_for_the_grace_period() {
        let me = std::process::id();
        let dead = u32::MAX - 1;
        let mut agg = Aggregate::new(1_000_000_000);
        let mut vms = Vms::new(Duration::from_secs(30));
        for pid in [me, dead] {
            agg.add(&exit(pid));
            vms.saw(pid);
        }
        assert!(
            !vms.known()[&me].name.process.is_empty(),
            "named from /proc"
        );
        let t0 = Instant::now();
        let alive = |pid| pid == me;
        vms.expire(&mut agg, t0, alive);
        vms.expire(&mut agg, t0 + Duration::from_secs(29), alive);
        assert_eq!(vms.known().len(), 2, "within the grace period");
        vms.expire(&mut agg, t0 + Duration::from_secs(30), alive);
        assert_eq!(vms.known().keys().copied().collect::<Vec<_>>(), [me]);
        assert!(
            agg.keys().keys().all(|k| k.pid == me),
            "forgotten by the aggregate"
        );
        // A VM whose process comes back (or whose pid is reused) starts a new grace period.
        agg.add(&exit(dead));
        vms.saw(dead);
        vms.expire(&mut agg, t0 + Duration::from_secs(31), |_| true);
        vms.expire(&mut agg, t0 + Duration::from_secs(40), alive);
        assert_eq!(vms.known().len(), 2);
    }
}
