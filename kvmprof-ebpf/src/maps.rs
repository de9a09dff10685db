//! Maps shared by all probes. Sizes of `EVENTS` and `THREADS` are set by userspace at load.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use kvmprof_common::{counter, Config, ThreadState, Window};

/// Completed exits and their joins (`kvmprof_common::kind`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Processes (tgids) to trace when `Config::filter_pids` is set.
#[map]
pub static PIDS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// Per-thread exit state, keyed by tid. LRU so threads that die never fill the map.
#[map]
pub static THREADS: LruHashMap<u32, ThreadState> = LruHashMap::with_max_entries(16384, 0);

#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// The recording window (`kvmprof_common::Window`): the one switch userspace turns on after
/// every hook is attached and off before any is detached.
#[map]
pub static WINDOW: Array<Window> = Array::with_max_entries(1, 0);

/// Loss and consistency counters (`kvmprof_common::counter`), summed by userspace.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

pub fn bump(idx: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe { *c += 1 };
    }
}

pub fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

/// Whether an event at `ts` counts. `ts` must be read before calling: an event read at
/// `ts >= start` then sees the window userspace wrote before `start` (see live.rs).
pub fn in_window(ts: u64) -> bool {
    WINDOW.get(0).is_some_and(|w| w.contains(ts))
}

/// The current (tgid, tid) if this process is traced.
pub fn traced_task(cfg: &Config) -> Option<(u32, u32)> {
    let id = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    let tid = id as u32;
    // SAFETY: plain lookup; the value is only tested for presence.
    if cfg.filter_pids != 0 && unsafe { PIDS.get(tgid) }.is_none() {
        return None;
    }
    Some((tgid, tid))
}

/// The state of thread `tid`, created empty when missing.
pub fn thread_state(tid: u32) -> Option<&'static mut ThreadState> {
    if let Some(p) = THREADS.get_ptr_mut(tid) {
        // SAFETY: map value pointer valid for this program run; one thread = one writer.
        return Some(unsafe { &mut *p });
    }
    let fresh = ThreadState {
        vcpu_fd: -1,
        vcpu_id: -1,
        ..ThreadState::default()
    };
    if THREADS.insert(tid, fresh, 0).is_err() {
        bump(counter::NO_STATE);
        return None;
    }
    // SAFETY: as above.
    THREADS.get_ptr_mut(tid).map(|p| unsafe { &mut *p })
}

/// The state of thread `tid` if it exists (stage hooks never create state).
pub fn existing_state(tid: u32) -> Option<&'static mut ThreadState> {
    // SAFETY: as in `thread_state`.
    THREADS.get_ptr_mut(tid).map(|p| unsafe { &mut *p })
}
