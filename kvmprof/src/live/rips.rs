//! `--detail`'s guest RIPs: reads the kernel's per-thread counts (`RIPS`, `RIPS_OTHER`,
//! `kvmprof_common::detail`) and hands what grew since the last read over as tallies of count
//! 0, one per process and reason, whose `rips` the aggregate counts apart.
use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result};
use aya::maps::{HashMap as BpfHashMap, MapData};
use kvmprof_common::{detail::RipKey, names::map, STAGES};

use crate::data::model::{Exit, Reason, ReasonSpace, Tally};

/// Per (pid, space, reason): the (RIP, exits) that grew, and the `other` row's growth.
type Grown = BTreeMap<(u32, u32, u32), (Vec<(u64, u64)>, u64)>;

pub struct Reader {
    rips: BpfHashMap<MapData, RipKey, u64>,
    other: BpfHashMap<MapData, RipKey, u64>,
    /// Each entry's count as last read (at most `detail::RIPS + detail::RIPS_OTHER`).
    taken: HashMap<RipKey, u64>,
}

impl Reader {
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Reader> {
        let mut map = |name: &str| ebpf.take_map(name).with_context(|| format!("{name} map"));
        Ok(Reader {
            rips: BpfHashMap::try_from(map(map::RIPS)?)?,
            other: BpfHashMap::try_from(map(map::RIPS_OTHER)?)?,
            taken: HashMap::new(),
        })
    }

    /// Appends to `out` the RIP counts that grew, at `ts_ns`.
    pub fn read(&mut self, ts_ns: u64, out: &mut Vec<Tally>) -> Result<()> {
        // (pid, space, reason) -> (rip, exits); RIP 0 in `RIPS_OTHER` is the `other` row.
        let mut grown = Grown::new();
        for (map, folded) in [(&self.rips, false), (&self.other, true)] {
            for entry in map.iter() {
                let (key, n) = entry.context("read the RIP counts")?;
                let was = self.taken.entry(key).or_default();
                if n <= *was {
                    continue;
                }
                let delta = n - std::mem::replace(was, n);
                let row = grown.entry((key.pid, key.space, key.reason)).or_default();
                if folded {
                    row.1 += delta;
                } else {
                    row.0.push((key.rip, delta));
                }
            }
        }
        for ((pid, space, reason), (rips, rips_other)) in grown {
            let exit = Exit {
                pid,
                tid: 0,
                vcpu: None,
                ts_ns,
                reason: Reason {
                    space: ReasonSpace::of_record(space as u8),
                    code: reason,
                },
                userspace_reason: None,
                access: None,
                stages: [None; STAGES],
            };
            out.push(Tally::of_rips(exit, rips, rips_other));
        }
        Ok(())
    }
}
