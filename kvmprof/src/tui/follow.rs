//! The processes `top` watches: with `-p NAME`, processes that start later and match are
//! added to the in-kernel filter; processes that exit are marked, then leave the table after
//! a grace period so that a restarted VMM does not sit next to its dead predecessor.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use anyhow::Result;

use crate::{
    live::PidFilter,
    target::{self, Target},
};

/// How long an exited process stays in the table, marked.
pub const GRACE: Duration = Duration::from_secs(5);

/// How often every process is matched again, not only the new ones: a process's name
/// changes when it execs (a shell's child becomes `qemu`). Between, a tick reads only the
/// list of pids, which stays cheap on hosts with thousands of processes.
const RESCAN: Duration = Duration::from_secs(1);

pub struct Watch {
    /// The `-p` arguments that are names, matched again at every tick.
    patterns: Vec<String>,
    filter: Option<PidFilter>,
    /// Processes watched by `-p`, in the order found.
    pub targets: Vec<Target>,
    /// When each process seen exited (as time since recording began).
    exited: BTreeMap<u32, Duration>,
    /// The processes matched at the last tick, and when all are matched again.
    checked: BTreeSet<u32>,
    rescan: Duration,
}

impl Watch {
    /// Watches `targets`; `specs` are the `-p` arguments they were resolved from. `filter`
    /// is needed only where some spec is a name.
    pub fn new(specs: &[String], targets: Vec<Target>, filter: Option<PidFilter>) -> Watch {
        Watch {
            patterns: target::names(specs),
            filter,
            targets,
            exited: BTreeMap::new(),
            checked: BTreeSet::new(),
            rescan: Duration::ZERO,
        }
    }

    /// Adds the processes that match a name and are not watched yet: those started since
    /// the last tick, and every [`RESCAN`] all of them.
    pub fn follow(&mut self, now: Duration) -> Result<()> {
        let Some(filter) = &mut self.filter else {
            return Ok(());
        };
        let all = now >= self.rescan;
        if all {
            self.rescan = now + RESCAN;
        }
        let pids: BTreeSet<u32> = target::pids()?.into_iter().collect();
        for &pid in &pids {
            if (!all && self.checked.contains(&pid)) || self.targets.iter().any(|t| t.pid == pid) {
                continue;
            }
            if let Some(t) = self.patterns.iter().find_map(|p| target::matching(pid, p)) {
                filter.add(pid)?;
                self.targets.push(t);
            }
        }
        self.checked = pids;
        Ok(())
    }

    /// Notes which of the targets and of `seen` (processes with exits) exited by `now`;
    /// those in `known` (found exited by the session) need no look at /proc.
    pub fn check(&mut self, seen: impl IntoIterator<Item = u32>, known: &[Target], now: Duration) {
        for t in known {
            self.exited.entry(t.pid).or_insert(now);
        }
        let pids: BTreeSet<u32> = self.targets.iter().map(|t| t.pid).chain(seen).collect();
        for pid in pids {
            if !self.exited.contains_key(&pid) && !target::alive(pid) {
                self.exited.insert(pid, now);
            }
        }
    }

    /// Processes that exited less than [`GRACE`] before `now`: still shown, marked.
    pub fn exited(&self, now: Duration) -> BTreeSet<u32> {
        self.exited_where(|at| now.saturating_sub(at) < GRACE)
    }

    /// Processes that exited at least [`GRACE`] before `now`: no longer shown.
    pub fn gone(&self, now: Duration) -> BTreeSet<u32> {
        self.exited_where(|at| now.saturating_sub(at) >= GRACE)
    }

    fn exited_where(&self, pick: impl Fn(Duration) -> bool) -> BTreeSet<u32> {
        self.exited
            .iter()
            .filter(|(_, &at)| pick(at))
            .map(|(&pid, _)| pid)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exited_processes_are_marked_then_leave() {
        // A process that does not exist has exited.
        let gone = Target {
            pid: u32::MAX,
            name: "x".into(),
        };
        let mut w = Watch::new(&["x".into()], vec![gone], None);
        let me = std::process::id();
        let at = Duration::from_secs(10);
        w.check([me], &[], at);
        assert_eq!(w.exited(at), BTreeSet::from([u32::MAX]));
        assert!(w.gone(at).is_empty());
        let later = at + GRACE;
        assert!(w.exited(later).is_empty());
        assert_eq!(w.gone(later), BTreeSet::from([u32::MAX]));
        // Checking again does not restart the grace period.
        w.check([], &[], later);
        assert_eq!(w.gone(later), BTreeSet::from([u32::MAX]));
        assert_eq!(target::names(&["12".into(), "qemu".into()]), ["qemu"]);
    }
}
