//! `serve --pid NAME`: processes that start later under a given name are watched too, by
//! adding them to the running session's in-kernel pid filter at each tick. Exits such a
//! process makes before the tick that finds it (at most one tick) are not counted; without
//! `--pid` nothing is missed (see the module doc of `serve`).
use std::collections::BTreeSet;

use anyhow::Result;

use crate::{live::PidFilter, target};

pub struct Follow {
    names: Vec<String>,
    filter: PidFilter,
    /// Pids in the filter.
    watched: BTreeSet<u32>,
}

impl Follow {
    /// `watched`: the pids the session started with.
    pub fn new(names: Vec<String>, filter: PidFilter, watched: BTreeSet<u32>) -> Self {
        Follow {
            names,
            filter,
            watched,
        }
    }

    /// Adds processes that now match a name, removes those that exited; returns the added.
    pub fn tick(&mut self) -> Result<Vec<u32>> {
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
        let mut added = Vec::new();
        for pid in target::pids()? {
            let matches = || {
                self.names
                    .iter()
                    .any(|n| target::matching(pid, n).is_some())
            };
            // A zombie still has its name in /proc: not worth watching again.
            if !self.watched.contains(&pid) && matches() && target::alive(pid) {
                self.filter.add(pid)?;
                self.watched.insert(pid);
                added.push(pid);
            }
        }
        Ok(added)
    }
}
