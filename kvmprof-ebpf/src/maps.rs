//! Maps and load-time configuration shared by all probes. The size of `EVENTS` is set by
//! userspace at load.
use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_NOEXIST, BPF_RB_FORCE_WAKEUP},
    helpers::bpf_get_current_pid_tgid,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, Queue, RingBuf},
};
use kvmprof_common::{
    counter,
    detail::{self, RipKey},
    func::{self, FuncKey, FuncTally},
    halt::{self, HaltTally},
    tally::{self, AddrKey, Row, TallyKey, TallyMeta},
    Batch, Config, ThreadState, Wake, Window, STATE_SLOTS,
};

/// Batches of completed exits (`kvmprof_common::Batch`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// The batch being filled on each CPU.
#[map]
pub static BATCHES: PerCpuArray<Batch> = PerCpuArray::with_max_entries(1, 0);

/// Processes (tgids) to trace when `Config::filter_pids` is set. Looked up when a thread's
/// state is created, and again on the events of a thread not traced so far.
#[map]
pub static PIDS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// `task:task_newtask`'s field offsets (`kvmprof_common::follow`), when children are
/// followed.
#[map]
pub static FOLLOW: Array<u32> = Array::with_max_entries(kvmprof_common::follow::LEN, 0);

/// Per-thread exit state in a slot indexed by tid and tagged with pid and tid: an array
/// lookup is inlined by the verifier, a hash lookup is a helper call and a hash per event.
#[map]
pub static THREADS: Array<ThreadState> = Array::with_max_entries(STATE_SLOTS, 0);

/// State of threads whose slot is taken by another thread (tid collisions, dead threads).
/// LRU so that threads that die never fill it.
#[map]
pub static THREADS_SPILL: LruHashMap<u64, ThreadState> = LruHashMap::with_max_entries(4096, 0);

/// Where a spilled thread's first state is made before it goes into `THREADS_SPILL`.
#[map]
pub static SCRATCH: PerCpuArray<ThreadState> = PerCpuArray::with_max_entries(1, 0);

/// Where a tally key is made before it is looked up (`tally::slot_of`).
#[map]
pub static SCRATCH_KEY: PerCpuArray<TallyKey> = PerCpuArray::with_max_entries(1, 0);

/// The recording window (`kvmprof_common::Window`): the one switch userspace turns on after
/// every hook is attached and off before any is detached. A map, not a load-time global:
/// it changes while the programs run.
#[map]
pub static WINDOW: Array<Window> = Array::with_max_entries(1, 0);

/// Loss and consistency counters (`kvmprof_common::counter`), summed by userspace.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// The tally of exits handled in the kernel (`kvmprof_common::tally`): kind → slot.
#[map]
pub static TALLY_KEYS: HashMap<TallyKey, u32> = HashMap::with_max_entries(tally::SLOTS, 0);

/// Per slot: the exit kind, count, sums, maxima and rows. Mappable: userspace reads every
/// slot each tick from memory, not one `bpf()` call per slot (`live/mapped.rs`).
#[map]
pub static TALLY_META: Array<TallyMeta> = Array::with_max_entries(tally::SLOTS, BPF_F_MMAPABLE);

/// Stage histograms, handed out to slots as their stages are first measured. Mappable, as
/// `TALLY_META`.
#[map]
pub static TALLY_ROWS: Array<Row> = Array::with_max_entries(tally::ROWS, BPF_F_MMAPABLE);

/// MMIO exits by slot and address (`kvmprof_common::tally`, the module doc). Each key is
/// written by its slot's thread only: plain increments.
#[map]
pub static TALLY_ADDRS: HashMap<AddrKey, u64> = HashMap::with_max_entries(tally::ADDRS, 0);

/// Where an address key and its first count are made (`tally::count_addr`), off the stack
/// that the whole call chain shares (the 6.1 verifier counted it over 512 bytes).
#[map]
pub static SCRATCH_ADDR: PerCpuArray<AddrScratch> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
pub struct AddrScratch {
    pub key: AddrKey,
    pub one: u64,
}

/// Slots and rows free to hand out (`kvmprof_common::tally`), filled and refilled by
/// userspace.
#[map]
pub static TALLY_FREE_SLOTS: Queue<u32> = Queue::with_max_entries(tally::SLOTS, 0);
#[map]
pub static TALLY_FREE_ROWS: Queue<u32> = Queue::with_max_entries(tally::ROWS, 0);

/// Set by userspace before load (`EbpfLoader::override_global`). It lives in `.rodata`,
/// which aya freezes: the verifier knows every field as a constant and prunes the branches
/// of other kernels' boundaries.
#[no_mangle]
pub static CONFIG: Config = Config {
    boundary: 0,
    filter_pids: 0,
    kvm_exit_reason_off: 0,
    kvm_exit_vcpu_off: 0,
    kvm_exit_isa_off: 0,
    pio_rw_off: 0,
    pio_port_off: 0,
    pio_size_off: 0,
    mmio_type_off: 0,
    mmio_len_off: 0,
    mmio_gpa_off: 0,
    uexit_reason_off: 0,
    uexit_errno_off: 0,
    ioctl_fd_off: 0,
    ioctl_cmd_off: 0,
    btf_exit_deref_off: 0,
    btf_exit_reason_off: 0,
    btf_exit_vcpu_id_off: 0,
    fixed_fields: 0,
    per_exit: 0,
    task_pid_off: 0,
    task_tgid_off: 0,
    run_known: 0,
    run_files_off: 0,
    run_fdt_off: 0,
    run_fd_array_off: 0,
    run_private_off: 0,
    run_vcpu_run_off: 0,
    debug_bpf: 0,
    any_slow: 0,
    slow_ns: [0; kvmprof_common::STAGES],
    funcs: 0,
    _pad_funcs: 0,
};

/// One field of the load-time configuration. Read volatile so that the compiler does not
/// fold the placeholder values above into the code; one load, whose value the verifier
/// knows.
macro_rules! config {
    ($field:ident) => {
        // SAFETY: a field of a static; the volatile read only stops constant folding.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!($crate::maps::CONFIG.$field)) }
    };
}
pub(crate) use config;

/// The time of this event if it is inside the recording window. The time is read first:
/// an event at `ts >= start` then sees the window userspace wrote before `start` (`live/mod.rs`).
/// The first such event after the reader went to sleep wakes it (`Window::asleep`).
#[inline(always)]
pub fn window_now() -> Option<u64> {
    let ts = now();
    let w = WINDOW.get_ptr_mut(0)?;
    // SAFETY: map value pointer valid for this run; `asleep` is the only field written here,
    // and a race with another CPU only sends one more wake-up.
    let w = unsafe { &mut *w };
    if !w.contains(ts) {
        return None;
    }
    if w.asleep != 0 {
        w.asleep = 0;
        // A full ring loses only the wake-up; the reader then wakes at the next one.
        let _ = EVENTS.output::<Wake>(&Wake::default(), BPF_RB_FORCE_WAKEUP as u64);
    }
    Some(ts)
}

/// The monotonic clock, for an event of a cycle already open (see [`window_now`]).
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }
}

/// Wakes the reader now with a note, asleep or not (`Window::asleep` cleared). A full ring
/// loses only the wake-up; the reader's next tick does the rest.
pub fn wake_reader() {
    if let Some(w) = WINDOW.get_ptr_mut(0) {
        // SAFETY: map value pointer valid for this run; a race only sends one more note.
        unsafe { (*w).asleep = 0 };
    }
    let _ = EVENTS.output::<Wake>(&Wake::default(), BPF_RB_FORCE_WAKEUP as u64);
}

/// The value read, or `None` once a refused read is counted (`counter::READ_FAILED`) and
/// logged (`--debug-bpf`): the event it was for is dropped, never recorded with a made-up 0.
#[inline(always)]
pub fn read<T, E: Into<i64>>(r: Result<T, E>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            bump(counter::READ_FAILED);
            crate::anomaly::read_refused(e.into());
            None
        }
    }
}

pub fn bump(idx: u32) {
    add(idx, 1);
}

pub fn add(idx: u32, n: u64) {
    if let Some(c) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe { *c += n };
    }
}

/// The current thread: (tgid, tid) and its state if its process is traced. `create` makes
/// the state of a thread seen for the first time (KVM_RUN entry and the KVM tracepoints);
/// stage hooks never create it.
#[inline(always)]
pub fn current(create: bool) -> Option<(u32, u32, &'static mut ThreadState)> {
    match thread(create)? {
        Thread::Traced(pid, tid, st) => Some((pid, tid, st)),
        Thread::Untraced(_) => None,
    }
}

/// As [`current`], on an event that marks one exit of its thread (the hook that opens a
/// cycle at this boundary): an untraced thread's exit is counted (`UNTRACED_EXITS`).
#[inline(always)]
pub fn current_counting(create: bool) -> Option<(u32, u32, &'static mut ThreadState)> {
    match thread(create)? {
        Thread::Traced(pid, tid, st) => Some((pid, tid, st)),
        Thread::Untraced(_) => {
            bump(counter::UNTRACED_EXITS);
            None
        }
    }
}

/// A thread with state: traced, or of a process not traced (whose state is kept only to
/// know that, and to count its exits).
pub enum Thread {
    Traced(u32, u32, &'static mut ThreadState),
    Untraced(&'static mut ThreadState),
}

/// The current thread and its state, traced or not. See [`current`].
#[inline(always)]
pub fn thread(create: bool) -> Option<Thread> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    let tid = id as u32;
    let slot = THREADS.get_ptr_mut(tid & (STATE_SLOTS - 1))?;
    // SAFETY: map value pointer valid for this program run; one thread = one writer.
    let slot = unsafe { &mut *slot };
    let st = if slot.tag == id {
        slot
    } else if !create {
        spilled(id)?
    } else if slot.tag == 0 {
        fresh(slot, id, tgid);
        slot
    } else {
        spill(id, tgid)?
    };
    if st.traced == 0 {
        // Decided when the state was created; a process added to PIDS since then (`top -p
        // NAME`, `serve --pid NAME` follow processes that start later) is traced from its
        // next event. Only untraced threads pay this lookup, never traced ones.
        // SAFETY: plain lookup; the value is only tested for presence.
        if config!(filter_pids) == 0 || unsafe { PIDS.get(tgid) }.is_none() {
            return Some(Thread::Untraced(st));
        }
        st.traced = 1;
    }
    Some(Thread::Traced(tgid, tid, st))
}

/// A thread's first state: whether its process is traced is decided here, once.
fn fresh(st: &mut ThreadState, id: u64, tgid: u32) {
    // SAFETY: plain lookup; the value is only tested for presence.
    let traced = config!(filter_pids) == 0 || unsafe { PIDS.get(tgid) }.is_some();
    *st = ThreadState {
        tag: id,
        traced: traced as u32,
        vcpu_fd: -1,
        vcpu_id: -1,
        ..ThreadState::default()
    };
}

fn spilled(id: u64) -> Option<&'static mut ThreadState> {
    // SAFETY: as in `current`.
    THREADS_SPILL.get_ptr_mut(id).map(|p| unsafe { &mut *p })
}

fn spill(id: u64, tgid: u32) -> Option<&'static mut ThreadState> {
    if let Some(st) = spilled(id) {
        return Some(st);
    }
    // The new state is made in a per-CPU scratch slot: at 376 bytes it would take most of
    // the 512-byte stack that a whole call chain shares.
    let st = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU map value, no other user on this CPU while we run.
    let st = unsafe { &mut *st };
    fresh(st, id, tgid);
    // By reference: a copy by value would put it back on the stack.
    let made: &ThreadState = st;
    if THREADS_SPILL.insert(id, made, 0).is_err() {
        bump(counter::NO_STATE);
        crate::anomaly::no_state(id as u32);
        return None;
    }
    bump(counter::SPILLED);
    spilled(id)
}

/// Each traced thread's halts (`kvmprof_common::halt`), written only by that thread.
#[map]
pub static HALTS: HashMap<u64, HaltTally> = HashMap::with_max_entries(halt::THREADS, 0);

/// The halt tracepoints' field offsets (`kvmprof_common::halt::field`).
#[map]
pub static HALT_FIELDS: Array<u32> = Array::with_max_entries(halt::field::LEN, 0);

/// Adds one to `key`'s count in `map`, making it `one` (1) if new; `false` when the map
/// has no room for it. The caller's thread must be the only writer of `key` (plain add).
#[inline(always)]
pub fn count_in<K>(map: &HashMap<K, u64>, key: &K, one: &u64) -> bool {
    if let Some(c) = map.get_ptr_mut(key) {
        // SAFETY: map value pointer valid for this run; the caller's thread alone writes it.
        unsafe { *c += 1 };
        return true;
    }
    map.insert(key, one, BPF_NOEXIST as u64).is_ok()
}

/// The `--detail` tracepoints' field offsets (`kvmprof_common::detail::field`).
#[map]
pub static DETAIL_FIELDS: Array<u32> = Array::with_max_entries(detail::field::LEN, 0);

/// `--detail`: exits by thread, reason and guest RIP, and those whose RIP found `RIPS` full
/// (`kvmprof_common::detail`).
#[map]
pub static RIPS: HashMap<RipKey, u64> = HashMap::with_max_entries(detail::RIPS, 0);
#[map]
pub static RIPS_OTHER: HashMap<RipKey, u64> = HashMap::with_max_entries(detail::RIPS_OTHER, 0);

/// A zeroed tally, never written: a thread's first halt tally is inserted from it (at
/// ~1.3 KB it cannot be made on the stack).
#[map]
pub static HALT_ZERO: PerCpuArray<HaltTally> = PerCpuArray::with_max_entries(1, 0);

/// `--func`: each thread's exits by reason and function (`kvmprof_common::func`), written
/// only by that thread.
#[map]
pub static FUNCS: HashMap<FuncKey, FuncTally> = HashMap::with_max_entries(func::KEYS, 0);

/// `--func`'s per-CPU counts: calls outside an exit and exits folded, per function
/// (`func::OUTSIDE`, `func::FOLDED`).
#[map]
pub static FUNC_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(func::COUNTS, 0);

/// A zeroed func tally, never written: new keys are inserted from it (at 448 bytes it does
/// not fit the stack beside the exit's state).
#[map]
pub static FUNC_ZERO: PerCpuArray<FuncTally> = PerCpuArray::with_max_entries(1, 0);
