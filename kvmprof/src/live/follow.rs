//! `top -p NAME` and `serve --pid NAME`: processes that start later under a given name are
//! watched too, by adding them to the running session's in-kernel pid filter at each tick.
//! Exits such a process makes before the tick that finds it (at most one tick) are not
//! counted.
use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{data::target::Target, live::target, live::PidFilter};

pub struct Follow {
    names: Vec<String>,
    filter: PidFilter,
    /// Pids in the filter.
    watched: BTreeSet<u32>,
    /// The pids seen at the last tick: until the next full rescan only the others are matched.
    checked: BTreeSet<u32>,
    /// How often every process is matched again, not only the new ones: a process's name
    /// changes when it execs (a shell's child becomes `qemu`). Between, a tick reads only the
    /// list of pids, which stays cheap on hosts with thousands of processes.
    rescan: Duration,
    next_rescan: Option<Instant>,
}

impl Follow {
    /// `watched`: the pids the session started with; every `rescan` all processes are
    /// matched again (`Duration::ZERO`: at every tick).
    pub fn new(
        names: Vec<String>,
        filter: PidFilter,
        watched: impl IntoIterator<Item = u32>,
        rescan: Duration,
    ) -> Follow {
        Follow {
            names,
            filter,
            watched: watched.into_iter().collect(),
            checked: BTreeSet::new(),
            rescan,
            next_rescan: None,
        }
    }

    /// Adds the processes that match a name and are not watched yet, and returns them.
    pub fn add_new(&mut self) -> Result<Vec<Target>> {
        let now = Instant::now();
        let all = self.next_rescan.is_none_or(|at| now >= at);
        if all {
            self.next_rescan = Some(now + self.rescan);
        }
        let pids: BTreeSet<u32> = target::pids()?.into_iter().collect();
        let mut added = Vec::new();
        for &pid in &pids {
            if (!all && self.checked.contains(&pid)) || self.watched.contains(&pid) {
                continue;
            }
            let Some(t) = self.names.iter().find_map(|n| target::matching(pid, n)) else {
                continue;
            };
            // A zombie still has its name in /proc: not worth watching (again).
            if target::alive(pid) {
                self.filter.add(pid)?;
                self.watched.insert(pid);
                added.push(t);
            }
        }
        self.checked = pids;
        Ok(added)
    }

    /// Stops watching the processes that exited: a daemon's filter (1024 entries) must not
    /// fill up over months of VM restarts.
    pub fn drop_exited(&mut self) -> Result<()> {
        let gone: Vec<u32> = self
            .watched
            .iter()
            .copied()
            .filter(|&pid| !target::alive(pid))
            .collect();
        for pid in gone {
            self.filter.remove(pid)?;
            self.watched.remove(&pid);
        }
        Ok(())
    }
}
