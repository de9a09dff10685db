//! Exits handled in the kernel are tallied here instead of sent one by one: a count, sums,
//! maxima and a histogram bucket per stage, in the slot of the thread's exit kind
//! (`kvmprof_common::tally` has the layout and why).
use core::sync::atomic::Ordering;

use aya_ebpf::bindings::BPF_RB_FORCE_WAKEUP;

use kvmprof_common::{
    counter, kind,
    tally::{self, AddrKey, Cache, Kind, TallyKey, TallyMeta, NO_ROW, REFUSED},
    ThreadState, STAGES,
};

use crate::maps::{
    bump, config, EVENTS, SCRATCH_ADDR, SCRATCH_KEY, TALLY_ADDRS, TALLY_FREE_ROWS,
    TALLY_FREE_SLOTS, TALLY_KEYS, TALLY_META, TALLY_ROWS,
};

/// Tallies the open exit of `st`, handled in the kernel (as `exit::fill_exit!` would record
/// it), closed at `ts`. `false` when it must go as a record instead.
///
/// A subprogram of its own, called from `exit::close` and [`add_pending`] alike: inlined at
/// each call site, the tally took ~300 of the 512 bytes of stack that the whole call chain of
/// `kvm_userspace_exit` shares, and Debian 6.1's verifier refused it (576 bytes).
#[inline(never)]
pub fn add_open(pid: u32, tid: u32, st: &mut ThreadState, ts: u64) -> bool {
    if !may_tally(&st.stage_ns) {
        return false;
    }
    let slot = match cached(&st.tally, &open_kind(st)) {
        Some(s) => s,
        None => new_open_kind(pid, tid, st, ts),
    };
    add(slot, st.flags, st.io_addr, &st.stage_ns, &mut st.tally, ts)
}

/// Tallies the exit held in `st.pending` (a return to userspace, now whole); `false` when
/// it must go as a record instead. A subprogram for the reason [`add_open`] gives.
#[inline(never)]
pub fn add_pending(st: &mut ThreadState) -> bool {
    if !may_tally(&st.pending.stage_ns) {
        return false;
    }
    let slot = match cached(&st.tally, &Kind::of(&st.pending)) {
        Some(s) => s,
        None => new_pending_kind(st),
    };
    let p = &st.pending;
    add(
        slot,
        p.flags,
        p.io_addr,
        &p.stage_ns,
        &mut st.tally,
        p.ts_ns,
    )
}

/// The kind of the open exit of `st` (as `tally::Kind::of` makes it of the exit's record).
#[inline(always)]
fn open_kind(st: &ThreadState) -> Kind {
    Kind {
        vcpu_fd: st.vcpu_fd,
        vcpu_id: st.vcpu_id,
        space: st.space as u8 as u32,
        reason: st.reason,
        flags: st.flags,
        io_size: st.io_size as u8 as u32,
        io_addr: tally::port_of(st.flags, st.io_addr),
        user_reason: 0,
        errno: 0,
    }
}

/// The slot of the open exit's kind when the thread's cache missed it. Out of line, so that
/// the kind is built in memory (for the map key) only on a miss: the common hit compares it
/// in registers.
#[inline(never)]
fn new_open_kind(pid: u32, tid: u32, st: &mut ThreadState, ts: u64) -> u32 {
    let k = open_kind(st);
    let slot = slot_of(pid, tid, &k, ts);
    remember(&mut st.tally, &k, slot);
    slot
}

/// [`new_open_kind`] for the held userspace exit.
#[inline(never)]
fn new_pending_kind(st: &mut ThreadState) -> u32 {
    let p = &st.pending;
    let k = Kind::of(p);
    let slot = slot_of(p.pid, p.tid, &k, p.ts_ns);
    remember(&mut st.tally, &k, slot);
    slot
}

/// Whether an exit with these stage durations may be tallied at all.
#[inline(always)]
fn may_tally(stage_ns: &[u64; STAGES]) -> bool {
    config!(per_exit) == 0 && fits(stage_ns)
}

/// Tallies one whole exit of the thread whose kinds `cache` holds into `slot` ([`REFUSED`]:
/// none), with these flags and stage durations, at MMIO address or guest page `addr` when it
/// has one (`kvmprof_common::tally::by_addr`),
/// closed at `ts`. `false` when it must go as a record instead (see `kvmprof_common::tally`).
#[inline(always)]
fn add(
    slot: u32,
    flags: u32,
    addr: u64,
    stage_ns: &[u64; STAGES],
    cache: &mut Cache,
    ts: u64,
) -> bool {
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
    // The stages after the last one measured are not visited: an in-kernel exit's are the
    // cycle and the vendor run, the first two (six turns of the loop fewer per exit).
    let mut end = 0;
    for s in 0..STAGES {
        if stage_ns[s] != 0 {
            end = s + 1;
            if meta.row[s] == NO_ROW && !new_row(meta, s) {
                bump(counter::TALLY_FULL);
                return false;
            }
        }
    }
    // SAFETY: a field of the thread's state (map memory), written then read back as a value
    // the verifier does not know (see `Cache::end`).
    let end = unsafe {
        core::ptr::write_volatile(&mut cache.end, end as u32);
        core::ptr::read_volatile(&cache.end)
    } as usize;
    for s in 0..STAGES {
        if s >= end {
            break;
        }
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
    if tally::by_addr(flags) && !count_addr(slot, addr) {
        meta.other += 1;
    }
    meta.count += 1;
    meta.last_ts = ts;
    true
}

/// Counts one exit of `slot` at MMIO address or guest page `addr`; `false` when it has no count
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
    // Only the slot's thread writes its addresses.
    crate::maps::count_in(&TALLY_ADDRS, &sc.key, &sc.one)
}

/// Whether every measured stage fits the histograms and no `--slow` threshold asks for the
/// record.
#[inline(always)]
fn fits(stage_ns: &[u64; STAGES]) -> bool {
    if crate::maps::config!(any_slow) == 0 {
        // No `--slow`: every stage is below the limit when their bitwise or is, the limit
        // being a power of two. One test per exit rather than two per stage.
        let mut any = 0;
        for v in stage_ns {
            any |= *v;
        }
        return any < tally::LIMIT_NS;
    }
    for s in 0..STAGES {
        let v = stage_ns[s];
        // One threshold at a time: a copy of the whole array would sit on the stack of
        // every caller (`close`, `release_pending`), which the 6.1 verifier counted over
        // 512 bytes in kvm_userspace_exit's call chain once the stages were eight.
        // SAFETY: an element of a static; the volatile read only stops constant folding.
        let slow = unsafe {
            core::ptr::read_volatile(core::ptr::addr_of!(crate::maps::CONFIG.slow_ns[s]))
        };
        if v >= tally::LIMIT_NS || v > slow {
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

/// The slot of thread `pid`/`tid`'s exits of kind `k`, made on first use; [`REFUSED`] when
/// none is left. The map key is built in a per-CPU scratch slot, off the stack that the whole
/// call chain shares (512 bytes).
#[inline(never)]
fn slot_of(pid: u32, tid: u32, k: &Kind, ts: u64) -> u32 {
    let Some(key) = SCRATCH_KEY.get_ptr_mut(0) else {
        return REFUSED;
    };
    // SAFETY: per-CPU map value, no other user on this CPU while we run.
    let key: &TallyKey = unsafe {
        (*key).tag = (pid as u64) << 32 | tid as u64;
        (*key).kind = *k;
        &*key
    };
    // SAFETY: plain lookup, value copied out.
    if let Some(s) = unsafe { TALLY_KEYS.get(key) } {
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
    key.kind.write_to(e);
    e.pid = (key.tag >> 32) as u32;
    e.tid = key.tag as u32;
    meta.first_ts = ts;
    // Userspace skips a slot until its kind is set: the fields above go first.
    core::sync::atomic::compiler_fence(Ordering::Release);
    e.kind = kind::EXIT;
    if TALLY_KEYS.insert(key, &slot, 0).is_err() {
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
