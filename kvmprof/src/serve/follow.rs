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

/// The `--pid` values that are names rather than pids.
pub fn names(specs: &[String]) -> Vec<String> {
    specs
        .iter()
        .filter(|s| s.parse::<u32>().is_err())
        .cloned()
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_are_followed() {
        let specs = ["123", "qemu", "4x"].map(String::from);
        assert_eq!(names(&specs), ["qemu", "4x"]);
    }
}
