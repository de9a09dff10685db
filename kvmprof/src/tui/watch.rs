//! The processes `top` watches: with `-p NAME`, processes that start later and match are
//! added to the in-kernel filter; processes that exit are marked, then leave the table after
//! a grace period so that a restarted VMM does not sit next to its dead predecessor.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use anyhow::Result;

use crate::{data::target::Target, live::follow::Follow, live::target, live::PidFilter};

/// How long an exited process stays in the table, marked.
pub const GRACE: Duration = Duration::from_secs(5);

/// How often every process is matched against the `-p` names again (see [`Follow`]); `top`
/// ticks faster than this, and between rescans a tick reads only the list of pids.
const RESCAN: Duration = Duration::from_secs(1);

pub struct Watch {
    /// Where some `-p` argument is a name: the processes of that name that start later.
    follow: Option<Follow>,
    /// Processes watched by `-p`, in the order found.
    pub targets: Vec<Target>,
    /// When each process seen exited (as time since recording began).
    exited: BTreeMap<u32, Duration>,
}

impl Watch {
    /// Watches `targets`; `specs` are the `-p` arguments they were resolved from. `filter`
    /// is needed only where some spec is a name.
    pub fn new(specs: &[String], targets: Vec<Target>, filter: Option<PidFilter>) -> Watch {
        let pids: Vec<u32> = targets.iter().map(|t| t.pid).collect();
        Watch {
            follow: filter.map(|f| Follow::new(target::names(specs), f, pids, RESCAN)),
            targets,
            exited: BTreeMap::new(),
        }
    }

    /// Adds the processes that match a name and are not watched yet.
    pub fn follow(&mut self) -> Result<()> {
        if let Some(f) = &mut self.follow {
            self.targets.extend(f.add_new()?);
        }
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

    /// The processes gone (see [`Watch::gone`]) that were not given by `-p`, no longer
    /// remembered here: the caller forgets their statistics, so a `top` left running while
    /// VMs come and go keeps only those still shown. A `-p` target stays (listed as exited).
    pub fn forget_gone(&mut self, now: Duration) -> BTreeSet<u32> {
        let given: BTreeSet<u32> = self.targets.iter().map(|t| t.pid).collect();
        let gone: BTreeSet<u32> = self
            .gone(now)
            .into_iter()
            .filter(|p| !given.contains(p))
            .collect();
        self.exited.retain(|p, _| !gone.contains(p));
        gone
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
        // A process given by `-p` stays listed; one only seen is forgotten once gone.
        let seen_only = u32::MAX - 1;
        w.check([seen_only], &[], later);
        assert!(w.forget_gone(later).is_empty());
        let after = later + GRACE;
        assert_eq!(w.forget_gone(after), BTreeSet::from([seen_only]));
        assert_eq!(w.gone(after), BTreeSet::from([u32::MAX]));
        assert_eq!(target::names(&["12".into(), "qemu".into()]), ["qemu"]);
    }
}
