//! Exits handled in the kernel are tallied here instead of sent one by one: a count, sums,
//! maxima and a histogram bucket per stage, in the slot of the thread's exit kind
//! (`kvmprof_common::tally` has the layout and why).
use core::sync::atomic::Ordering;

use aya_ebpf::bindings::{BPF_NOEXIST, BPF_RB_FORCE_WAKEUP};

use kvmprof_common::{
    counter, flag, kind,
    tally::{self, AddrKey, Cache, Kind, TallyMeta, NO_ROW, REFUSED},
    STAGES,
};

use crate::maps::{
    bump, config, EVENTS, SCRATCH_ADDR, SCRATCH_KEY, TALLY_ADDRS, TALLY_FREE_ROWS,
    TALLY_FREE_SLOTS, TALLY_KEYS, TALLY_META, TALLY_ROWS,
};

/// Tallies one whole exit of thread `pid`/`tid`: of kind `k` (`tally::Kind::of`), at MMIO
/// address `addr` when it is one, with these stage durations, closed at `ts`. `false` when
/// it must go as a record instead (see `kvmprof_common::tally`).
#[inline(always)]
pub fn add(
    pid: u32,
    tid: u32,
    k: &Kind,
    addr: u64,
    stage_ns: &[u64; STAGES],
    cache: &mut Cache,
    ts: u64,
) -> bool {
    if config!(per_exit) != 0 || !fits(stage_ns) {
        return false;
    }
    let slot = match cached(cache, k) {
        Some(s) => s,
        None => {
            let s = slot_of(pid, tid, k, ts);
            remember(cache, k, s);
            s
        }
    };
    if slot == REFUSED {
        bump(counter::TALLY_FULL);
        return false;
    }
    let Some(meta) = TALLY_META.get_ptr_mut(slot) else {
        return false;
    };
    // SAFETY: map value pointer valid for this run; only this thread writes this slot.
    let meta = unsafe { &mut *meta };
    // Rows first: an exit is either tallied whole or sent as a record. (No array of the
    // rows: LLVM would zero it with a byte-at-a-time memset, see `exit::clear`.)
    for s in 0..STAGES {
        if stage_ns[s] != 0 && meta.row[s] == NO_ROW && !new_row(meta, s) {
            bump(counter::TALLY_FULL);
            return false;
        }
    }
    for s in 0..STAGES {
        let v = stage_ns[s];
        if v == 0 {
            continue;
        }
        let Some(row) = TALLY_ROWS.get_ptr_mut(meta.row[s].wrapping_sub(1)) else {
            continue;
        };
        // SAFETY: as `meta`.
        let row = unsafe { &mut *row };
        if let Some(c) = row.get_mut(tally::bucket(v)) {
            *c = c.wrapping_add(1);
        }
        meta.sum_ns[s] += v;
        if v > meta.max_ns[s] {
            meta.max_ns[s] = v;
        }
    }
    // Before the count: userspace reads the addresses after a slot's count grew, so every
    // address counted is read with or after the exit it belongs to.
    if k.flags & flag::MMIO != 0 && !count_addr(slot, addr) {
        meta.other += 1;
    }
    meta.count += 1;
    meta.last_ts = ts;
    true
}

/// Counts one exit of `slot` at MMIO address `addr`; `false` when the address has no count
/// and none is left to give it.
#[inline(always)]
fn count_addr(slot: u32, addr: u64) -> bool {
    let Some(sc) = SCRATCH_ADDR.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU map value, no other user on this CPU while we run.
    let sc = unsafe { &mut *sc };
    sc.key = AddrKey {
        slot,
        _pad: 0,
        addr,
    };
    sc.one = 1;
    if let Some(c) = TALLY_ADDRS.get_ptr_mut(&sc.key) {
        // SAFETY: map value pointer valid for this run; only the slot's thread writes it.
        unsafe { *c += 1 };
        return true;
    }
    TALLY_ADDRS
        .insert(&sc.key, &sc.one, BPF_NOEXIST as u64)
        .is_ok()
}

/// Whether every measured stage fits the histograms and no `--slow` threshold asks for the
/// record.
#[inline(always)]
fn fits(stage_ns: &[u64; STAGES]) -> bool {
    let slow = config!(slow_ns);
    for s in 0..STAGES {
        let v = stage_ns[s];
        if v >= tally::LIMIT_NS || v > slow[s] {
            return false;
        }
    }
    true
}

#[inline(always)]
fn cached(cache: &Cache, k: &Kind) -> Option<u32> {
    for i in 0..2 {
        if cache.slot[i] != 0 && cache.kind[i] == *k {
            return Some(cache.slot[i].wrapping_sub(1));
        }
    }
    None
}

#[inline(always)]
fn remember(cache: &mut Cache, k: &Kind, slot: u32) {
    let i = (cache.victim & 1) as usize;
    cache.kind[i] = *k;
    cache.slot[i] = slot.wrapping_add(1);
    cache.victim = cache.victim.wrapping_add(1);
}

/// The slot of this thread's exits of kind `k`, made on first use; [`REFUSED`] when none is
/// left.
fn slot_of(pid: u32, tid: u32, k: &Kind, ts: u64) -> u32 {
    // The key is made in a per-CPU scratch slot, off the stack that the whole call chain
    // shares (512 bytes; the 6.1 verifier counted this chain over it).
    let Some(key) = SCRATCH_KEY.get_ptr_mut(0) else {
        return REFUSED;
    };
    // SAFETY: per-CPU map value, no other user on this CPU while we run.
    let key = unsafe { &mut *key };
    key.tag = (pid as u64) << 32 | tid as u64;
    key.kind = *k;
    // SAFETY: plain lookup, value copied out.
    if let Some(s) = unsafe { TALLY_KEYS.get(&*key) } {
        return *s;
    }
    let Ok(Some(slot)) = TALLY_FREE_SLOTS.pop() else {
        return REFUSED;
    };
    let Some(meta) = TALLY_META.get_ptr_mut(slot) else {
        return REFUSED;
    };
    // SAFETY: a fresh slot; no other thread got it.
    let meta = unsafe { &mut *meta };
    let e = &mut meta.exit;
    k.write_to(e);
    e.pid = pid;
    e.tid = tid;
    meta.first_ts = ts;
    // Userspace skips a slot until its kind is set: the fields above go first.
    core::sync::atomic::compiler_fence(Ordering::Release);
    e.kind = kind::EXIT;
    if TALLY_KEYS.insert(&*key, &slot, 0).is_err() {
        // Cannot happen (one insert per slot, SLOTS entries); the slot then counts nothing
        // and userspace gives it back when the thread has exited.
        return REFUSED;
    }
    // A wake-up once per slot, not per exit. Without it, userspace would first read the
    // slot on its timer, possibly after the VMM exited and its vCPU fds with it.
    // A full ring only loses the wake-up: the tally itself is in the maps.
    let note = tally::NewSlot { slot, _pad: 0 };
    let _ = EVENTS.output::<tally::NewSlot>(&note, BPF_RB_FORCE_WAKEUP as u64);
    slot
}

/// Gives stage `s` of `meta` a row; `false` when none is left.
#[inline(always)]
fn new_row(meta: &mut TallyMeta, s: usize) -> bool {
    match TALLY_FREE_ROWS.pop() {
        Ok(Some(row)) => {
            meta.row[s] = row + 1;
            true
        }
        _ => false,
    }
}
