//! Reads the kernel's tally of exits handled in the kernel (`kvmprof_common::tally`): on each
//! call, what it counted since the last call, as [`Tally`]s for the aggregate and data file.
//!
//! The kernel keeps adding while a read is under way, so one read may see a slot's count
//! and its histogram rows a few exits apart; the next read takes the rest. The last read,
//! after the window closed, sees everything: totals are exact.
use std::{collections::HashMap, path::Path};

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap as BpfHashMap, IterableMap, MapData, Queue};
use kvmprof_common::{
    names::map,
    tally::{self, AddrKey, Kind, Row, TallyKey, TallyMeta, NO_ROW},
    STAGES,
};

use crate::{
    data::model::Tally,
    live::collect::{self, VcpuResolver},
    live::mapped::MappedArray,
};

pub struct Reader {
    /// Written through the map (zeroed when given back), read through the mapping.
    meta: Array<MapData, TallyMeta>,
    rows: Array<MapData, Row>,
    meta_view: MappedArray<TallyMeta>,
    rows_view: MappedArray<Row>,
    keys: BpfHashMap<MapData, TallyKey, u32>,
    addrs: BpfHashMap<MapData, AddrKey, u64>,
    free_slots: Queue<MapData, u32>,
    free_rows: Queue<MapData, u32>,
    /// By slot: what earlier reads took.
    taken: Vec<Taken>,
    /// By slot and MMIO address or guest page: the exits earlier reads took (at most
    /// `tally::ADDRS`).
    taken_addrs: HashMap<AddrKey, u64>,
    /// When the last read began, on the records' clock: the exits a read takes came after.
    read_ns: u64,
    /// `--detail`: the exits' guest RIPs, read with the tallies.
    rips: Option<super::rips::Reader>,
}

#[derive(Default)]
struct Taken {
    count: u64,
    other: u64,
    last_ts: u64,
    sum_ns: [u64; STAGES],
    max_ns: [u64; STAGES],
    /// Each stage's row as last read (boxed: 13 KiB each).
    rows: [Option<Box<Row>>; STAGES],
}

impl Reader {
    /// Takes the tally's maps and hands the kernel every slot and row (before the window
    /// opens: nothing is tallied yet).
    pub fn take(ebpf: &mut aya::Ebpf, detail: bool) -> Result<Reader> {
        let rips = match detail {
            true => Some(super::rips::Reader::take(ebpf)?),
            false => None,
        };
        let mut map = |name: &str| ebpf.take_map(name).with_context(|| format!("{name} map"));
        let meta: Array<MapData, TallyMeta> = Array::try_from(map(map::TALLY_META)?)?;
        let rows: Array<MapData, Row> = Array::try_from(map(map::TALLY_ROWS)?)?;
        let mut r = Reader {
            meta_view: MappedArray::map(meta.map(), tally::SLOTS).context("map TALLY_META")?,
            rows_view: MappedArray::map(rows.map(), tally::ROWS).context("map TALLY_ROWS")?,
            meta,
            rows,
            keys: BpfHashMap::try_from(map(map::TALLY_KEYS)?)?,
            addrs: BpfHashMap::try_from(map(map::TALLY_ADDRS)?)?,
            free_slots: Queue::try_from(map(map::TALLY_FREE_SLOTS)?)?,
            free_rows: Queue::try_from(map(map::TALLY_FREE_ROWS)?)?,
            taken: (0..tally::SLOTS).map(|_| Taken::default()).collect(),
            taken_addrs: HashMap::new(),
            read_ns: 0,
            rips,
        };
        for slot in 0..tally::SLOTS {
            r.free_slots
                .push(slot, 0)
                .context("fill TALLY_FREE_SLOTS")?;
        }
        for row in 0..tally::ROWS {
            r.free_rows.push(row, 0).context("fill TALLY_FREE_ROWS")?;
        }
        Ok(r)
    }

    /// Looks up the vCPU of each new slot while its process still runs: the vCPU comes from
    /// `/proc/PID/fd`, gone once the VMM exits, and a short VMM can exit before the first
    /// [`Reader::read`]. The kernel wakes the reader with a note when it makes a slot
    /// ([`NewSlot`]); a note lost to a full ring only loses this head start.
    ///
    /// [`NewSlot`]: kvmprof_common::tally::NewSlot
    pub fn discover(&mut self, slots: &[u32], vcpus: &mut VcpuResolver) -> Result<()> {
        for &slot in slots {
            let m = self.meta_view.get(slot).context("read TALLY_META")?;
            if m.exit.kind != 0 && m.exit.vcpu_id < 0 {
                vcpus.resolve(m.exit.pid, m.exit.vcpu_fd, m.exit.tid);
            }
        }
        Ok(())
    }

    /// Appends what the kernel tallied since the last call, one [`Tally`] per exit kind.
    pub fn read(&mut self, vcpus: &mut VcpuResolver, out: &mut Vec<Tally>) -> Result<()> {
        // Where each slot's tally is in `out`, for its addresses.
        let mut at: HashMap<u32, usize> = HashMap::new();
        let mut mmio = false;
        let mut done = Vec::new();
        let since = std::mem::replace(&mut self.read_ns, kvmprof_common::clock::monotonic_ns());
        for slot in 0..tally::SLOTS {
            let p = self.meta_view.ptr(slot).context("read TALLY_META")?;
            // Most slots are free or did not change: four fields say so, without a copy of
            // the whole slot. SAFETY: a slot of the mapping; volatile, the kernel writes it.
            let (kind, count, pid, tid) = unsafe {
                (
                    std::ptr::read_volatile(std::ptr::addr_of!((*p).exit.kind)),
                    std::ptr::read_volatile(std::ptr::addr_of!((*p).count)),
                    std::ptr::read_volatile(std::ptr::addr_of!((*p).exit.pid)),
                    std::ptr::read_volatile(std::ptr::addr_of!((*p).exit.tid)),
                )
            };
            // Free, or still being set up by its thread: its exits wait for the next read.
            if kind == 0 {
                continue;
            }
            let seen = &mut self.taken[slot as usize];
            // A thread writes its slots until its end (`thread_exit` tallies the exit it
            // held), which comes before its `/proc` entry goes: read after that, the slot
            // is final and goes back to the kernel once taken (one `stat` per slot in use:
            // given back at the first read after the end, they are there when many VMMs
            // come and go).
            let ended = !thread_alive(pid, tid);
            if !ended && count == seen.count {
                continue;
            }
            let m = self.meta_view.get(slot).context("read TALLY_META")?;
            if ended {
                done.push((slot, m));
            }
            if m.count == seen.count {
                continue;
            }
            let mut t = Tally {
                exit: collect::to_exit(&m.exit, None),
                // The first of them came after the previous read and the exit it last saw.
                first_ts_ns: if seen.count == 0 {
                    m.first_ts
                } else {
                    seen.last_ts.max(since).min(m.last_ts)
                },
                count: m.count - seen.count,
                stages: Default::default(),
                sum_ns: [0; STAGES],
                addrs: Vec::new(),
                other: m.other - seen.other,
                rips: Vec::new(),
                rips_other: 0,
            };
            t.exit.ts_ns = m.last_ts;
            t.exit.vcpu = t
                .exit
                .vcpu
                .or_else(|| vcpus.resolve(m.exit.pid, m.exit.vcpu_fd, m.exit.tid));
            for s in 0..STAGES {
                // A stage's row changes only with its sum (durations of 0 are not tallied).
                if m.row[s] == NO_ROW || m.sum_ns[s] == seen.sum_ns[s] {
                    continue;
                }
                let row = self
                    .rows_view
                    .get(m.row[s] - 1)
                    .context("read TALLY_ROWS")?;
                let was = seen.rows[s].get_or_insert_with(|| Box::new([0; tally::BUCKETS]));
                let mut values = deltas(&row, was);
                **was = row;
                if m.max_ns[s] > seen.max_ns[s] {
                    exact_max(&mut values, m.max_ns[s]);
                }
                t.stages[s] = values;
                t.sum_ns[s] = m.sum_ns[s] - seen.sum_ns[s];
            }
            seen.count = m.count;
            seen.other = m.other;
            seen.last_ts = m.last_ts;
            seen.sum_ns = m.sum_ns;
            seen.max_ns = m.max_ns;
            if tally::by_addr(m.exit.flags) {
                mmio = true;
                at.insert(slot, out.len());
            }
            out.push(t);
        }
        // The kernel counts an MMIO exit's address before its slot's count: once a count
        // grew, every address counted before it is in the hash. Walking the hash costs a
        // syscall or two per entry, so only then.
        if mmio {
            self.read_addrs(&mut at, out)?;
        }
        // Every read, not only those that found exits: the kernel counts an exit's RIP as it
        // begins, its tally when it ends. (`--detail` pays a walk of the hash per read.)
        if let Some(rips) = &mut self.rips {
            rips.read(self.read_ns, out)?;
        }
        if !done.is_empty() {
            self.give_back(&done)?;
        }
        Ok(())
    }

    /// Gives the slots of exited threads back to the kernel, with their rows, keys and
    /// addresses, zeroed: nothing writes them any more (their threads are gone) and every
    /// exit in them was taken.
    fn give_back(&mut self, done: &[(u32, TallyMeta)]) -> Result<()> {
        self.taken_addrs.retain(|key, _| {
            if !done.iter().any(|&(slot, _)| slot == key.slot) {
                return true;
            }
            // Absent only if already removed: nothing to undo.
            let _ = self.addrs.remove(key);
            false
        });
        let zero: Box<Row> = Box::new([0; tally::BUCKETS]);
        for (slot, m) in done {
            let key = TallyKey {
                tag: u64::from(m.exit.pid) << 32 | u64::from(m.exit.tid),
                kind: Kind::of(&m.exit),
            };
            // Unreachable first, so no thread finds it while it is zeroed.
            let _ = self.keys.remove(&key);
            for &row in m.row.iter().filter(|&&r| r != NO_ROW) {
                self.rows
                    .set(row - 1, *zero, 0)
                    .context("zero TALLY_ROWS")?;
                self.free_rows
                    .push(row - 1, 0)
                    .context("free a tally row")?;
            }
            self.meta
                .set(*slot, TallyMeta::default(), 0)
                .context("zero TALLY_META")?;
            self.taken[*slot as usize] = Taken::default();
            self.free_slots
                .push(*slot, 0)
                .context("free a tally slot")?;
        }
        Ok(())
    }

    /// Adds the MMIO address counts that grew to the tallies of their slots (a tally with
    /// count 0 for a slot whose count is not in this read: its addresses ran ahead).
    fn read_addrs(&mut self, at: &mut HashMap<u32, usize>, out: &mut Vec<Tally>) -> Result<()> {
        for entry in self.addrs.iter() {
            let (key, n) = entry.context("read TALLY_ADDRS")?;
            let Some(seen) = self.taken.get(key.slot as usize) else {
                continue;
            };
            let last_ts = seen.last_ts;
            let was = self.taken_addrs.entry(key).or_default();
            if n == *was {
                continue;
            }
            let delta = n - *was;
            *was = n;
            let i = match at.get(&key.slot) {
                Some(&i) => i,
                None => {
                    let m = self.meta_view.get(key.slot).context("read TALLY_META")?;
                    let mut exit = collect::to_exit(&m.exit, None);
                    exit.ts_ns = last_ts;
                    out.push(Tally {
                        exit,
                        first_ts_ns: last_ts,
                        count: 0,
                        stages: Default::default(),
                        sum_ns: [0; STAGES],
                        addrs: Vec::new(),
                        other: 0,
                        rips: Vec::new(),
                        rips_other: 0,
                    });
                    at.insert(key.slot, out.len() - 1);
                    out.len() - 1
                }
            };
            out[i].addrs.push((key.addr, delta));
        }
        Ok(())
    }
}

/// Whether thread `tid` of process `pid` still runs (its `/proc` entry goes after
/// `sched_process_exit`, where the kernel tallies its last exit).
fn thread_alive(pid: u32, tid: u32) -> bool {
    Path::new(&format!("/proc/{pid}/task/{tid}")).exists()
}

/// The buckets that grew since `was`, as (value standing for the bucket, count). Counters
/// wrap; a read every tick is far more often than one can wrap.
fn deltas(now: &Row, was: &Row) -> Vec<(u64, u64)> {
    now.iter()
        .zip(was.iter())
        .enumerate()
        .filter_map(|(i, (&n, &w))| {
            let d = n.wrapping_sub(w);
            (d != 0).then(|| (tally::bucket_value(i), u64::from(d)))
        })
        .collect()
}

/// Lets one count of the maximum's bucket stand for the exact maximum, when that bucket grew
/// in this read (otherwise the maximum stays its bucket's value, within 0.4 %).
fn exact_max(values: &mut Vec<(u64, u64)>, max_ns: u64) {
    let standing = tally::bucket_value(tally::bucket(max_ns));
    let Some(i) = values.iter().position(|&(v, _)| v == standing) else {
        return;
    };
    values[i].1 -= 1;
    if values[i].1 == 0 {
        values.remove(i);
    }
    values.push((max_ns, 1));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_are_the_buckets_that_grew_even_across_a_wrap() {
        let mut was: Box<Row> = Box::new([0; tally::BUCKETS]);
        let mut now = was.clone();
        now[3] = 2;
        now[300] = 5;
        was[400] = u32::MAX;
        now[400] = 1;
        assert_eq!(
            deltas(&now, &was),
            vec![
                (3, 2),
                (tally::bucket_value(300), 5),
                (tally::bucket_value(400), 2)
            ]
        );
    }

    #[test]
    fn the_maximum_replaces_one_count_of_its_bucket() {
        let max = 1_000_003;
        let b = tally::bucket_value(tally::bucket(max));
        let mut v = vec![(5, 1), (b, 3)];
        exact_max(&mut v, max);
        assert_eq!(v, vec![(5, 1), (b, 2), (max, 1)]);
        let mut single = vec![(b, 1)];
        exact_max(&mut single, max);
        assert_eq!(single, vec![(max, 1)]);
        let mut absent = vec![(5, 1)];
        exact_max(&mut absent, max);
        assert_eq!(absent, vec![(5, 1)], "the bucket did not grow in this read");
    }
}
