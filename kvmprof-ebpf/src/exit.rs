//! The per-thread exit state machine. Events of one vCPU thread arrive in program order;
//! each function here moves that thread's [`ThreadState`] forward and emits a record when
//! an exit is complete. See `kvmprof_common::boundary` for what starts a cycle.
use kvmprof_common::{
    boundary, counter, flag, kind, space, stage, ThreadState, HOOKED_STAGES, KVM_EXIT_INTR,
    KVM_EXIT_IO, KVM_EXIT_MMIO, STAGES,
};

use crate::anomaly;
use sink::{bump, emit, tally_open, tally_pending};

/// Where records and counters go: this CPU's batch, written to the ring buffer when full.
#[cfg(target_arch = "bpf")]
mod sink {
    use aya_ebpf::bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
    use kvmprof_common::{counter, Batch, ExitRecord, BATCH, BATCH_AGE_NS};

    pub use crate::maps::bump;
    use crate::maps::{add, BATCHES, EVENTS};
    pub use crate::tally::{add_open as tally_open, add_pending as tally_pending};

    /// Wake the reader only once this much is waiting: a wake-up per write would cost the
    /// profiled vCPU a context switch of the reader. The reader also drains on a short
    /// timer, so batches never wait long.
    const WAKEUP_BYTES: u64 = 256 << 10;
    const BPF_RB_AVAIL_DATA: u64 = 0;

    /// Appends one exit to this CPU's batch: a few stores into a per-CPU map value instead
    /// of a ring-buffer reservation per exit. `fill` sets every field (the slot holds an
    /// older record). A batch that cannot be written is counted as lost exits, never silent.
    pub fn emit(fill: impl FnOnce(&mut ExitRecord)) {
        let Some(b) = BATCHES.get_ptr_mut(0) else {
            bump(counter::LOST);
            return;
        };
        // SAFETY: per-CPU map value, no other writer on this CPU while we run.
        let b = unsafe { &mut *b };
        let i = b.len as usize;
        let Some(rec) = b.recs.get_mut(i) else {
            // Never left full (written below as soon as it fills); bounds the index.
            flush(b);
            bump(counter::LOST);
            return;
        };
        fill(rec);
        let ts = rec.ts_ns;
        if i == 0 {
            b.first_ts = ts;
        }
        // The record is whole before `len` covers it: userspace copies batches while they
        // fill (see `Batch`).
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::Release);
        b.len = i as u32 + 1;
        if i + 1 >= BATCH || ts.saturating_sub(b.first_ts) >= BATCH_AGE_NS {
            flush(b);
        }
    }

    fn flush(b: &mut Batch) {
        // SAFETY: helper without preconditions.
        b.cpu = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() };
        let wake = if EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES {
            BPF_RB_FORCE_WAKEUP
        } else {
            BPF_RB_NO_WAKEUP
        };
        if EVENTS.output::<Batch>(&*b, wake as u64).is_err() {
            add(counter::LOST, b.len as u64);
            crate::anomaly::lost(b.len);
        }
        // A new generation: userspace's copies of the old one are now in the ring.
        b.gen += 1;
        b.len = 0;
    }
}

/// On the host (unit tests of this state machine), records and counters go to a log.
#[cfg(not(target_arch = "bpf"))]
pub mod sink {
    use std::cell::RefCell;

    use kvmprof_common::ExitRecord;

    thread_local! {
        pub static RECORDS: RefCell<Vec<ExitRecord>> = const { RefCell::new(Vec::new()) };
        pub static COUNTERS: RefCell<[u64; kvmprof_common::counter::COUNT as usize]> =
            const { RefCell::new([0; kvmprof_common::counter::COUNT as usize]) };
    }

    pub fn emit(fill: impl FnOnce(&mut ExitRecord)) {
        let mut r = ExitRecord::default();
        fill(&mut r);
        RECORDS.with(|v| v.borrow_mut().push(r));
    }

    pub fn bump(idx: u32) {
        COUNTERS.with(|c| c.borrow_mut()[idx as usize] += 1);
    }

    /// The tally needs the kernel's maps: here every exit goes as a record.
    pub fn tally_open(
        _pid: u32,
        _tid: u32,
        _st: &mut kvmprof_common::ThreadState,
        _ts: u64,
    ) -> bool {
        false
    }

    /// As [`tally_open`].
    pub fn tally_pending(_st: &mut kvmprof_common::ThreadState) -> bool {
        false
    }
}

/// Writes the open exit of thread state `$st` into record `$r` (every field: the slot may hold
/// an older record). A macro, not a function, so that `$r` can be `$st.pending`, written
/// field by field in place: a record built on the stack and copied pushed the programs past
/// the 512-byte stack of a call chain on the 6.1 kernel's verifier. `$user` is (KVM_EXIT_*
/// reason, errno) for an exit that went to the VMM.
macro_rules! fill_exit {
    ($r:expr, $pid:expr, $tid:expr, $st:expr, $ts:expr, $user:expr) => {{
        $r.kind = kind::EXIT;
        $r._pad = 0;
        $r._pad2 = 0;
        $r.user_reason = 0;
        $r.errno = 0;
        $r.pid = $pid;
        $r.tid = $tid;
        $r.vcpu_fd = $st.vcpu_fd;
        $r.vcpu_id = $st.vcpu_id;
        $r.ts_ns = $ts;
        $r.space = $st.space as u8;
        $r.reason = $st.reason;
        $r.flags = $st.flags;
        $r.io_addr = $st.io_addr;
        $r.io_size = $st.io_size as u8;
        let mut i = 0;
        while i < STAGES {
            $r.stage_ns[i] = $st.stage_ns[i];
            i += 1;
        }
        let user: Option<(u32, i32)> = $user;
        if let Some((reason, errno)) = user {
            $r.flags |= flag::USERSPACE;
            $r.user_reason = reason;
            if errno != 0 {
                $r.flags |= flag::ERRNO;
                $r.errno = errno;
            }
            // Without a vendor reason, the VMM's KVM_EXIT_* is the most specific one.
            if $r.space == space::NONE || $r.space == space::TRACEPOINT {
                $r.space = space::USERSPACE;
                $r.reason = reason;
            }
        }
    }};
}

/// The time since the current cycle began, or 0 with the open exit marked
/// [`flag::UNOBSERVED`] when that start was not seen. Every program acts only inside the
/// recording window and a thread's state is created empty, so `cycle_start_ns == 0` means
/// the thread was already inside KVM_RUN (or a stage) when the window opened (or when its
/// process began to be traced): its exit began before and must not get a duration measured
/// from time zero.
fn since_cycle_start(st: &mut ThreadState, ts: u64) -> u64 {
    if st.cycle_start_ns == 0 {
        st.flags |= flag::UNOBSERVED;
        return 0;
    }
    ts.saturating_sub(st.cycle_start_ns)
}

/// Emits the open exit of `st` and clears it. `user` carries (KVM_EXIT_* reason, errno)
/// when the exit ends in a return to userspace: such an exit is held in `st.pending` until
/// its VMM round trip (and a PIO read's port) is known, so that it leaves whole. An exit
/// whose start was not observed is only counted.
fn close(pid: u32, tid: u32, st: &mut ThreadState, ts: u64, user: Option<(u32, i32)>) {
    if crate::maps::config!(funcs) != 0 {
        // Filed under the reason the record gets (`fill_exit`).
        let (sp, reason) = match user {
            Some((r, _))
                if st.space == space::NONE as u32 || st.space == space::TRACEPOINT as u32 =>
            {
                (space::USERSPACE as u32, r)
            }
            _ => (st.space, st.reason),
        };
        let counted = st.flags & flag::UNOBSERVED == 0;
        crate::func::close(pid, tid, st, sp, reason, counted);
    }
    if st.flags & flag::UNOBSERVED != 0 {
        bump(counter::UNOBSERVED);
    } else if user.is_some() {
        release_pending(st);
        fill_exit!(st.pending, pid, tid, st, ts, user);
        st.has_pending = 1;
    } else if !tally_open(pid, tid, st, ts) {
        emit(|r| fill_exit!(r, pid, tid, st, ts, None));
    }
    clear(&mut st.open);
    clear(&mut st.identified);
    clear(&mut st.space);
    clear(&mut st.reason);
    clear(&mut st.flags);
    clear(&mut st.io_addr);
    clear(&mut st.io_size);
    clear(&mut st.mmio_unsatisfied);
    clear(&mut st.cycle_set);
    clear_all(&mut st.stage_ns);
}

/// Zeroes one field with a store of its own. LLVM merges runs of zero stores (and `[0; N]`
/// assignments) into a `memset` call, which the BPF build turns into a subprogram storing
/// one byte per loop turn: ~70 turns per exit before this (`bpftool prog dump xlated`).
/// A volatile store is never merged.
#[inline(always)]
fn clear<T: Default>(x: &mut T) {
    // SAFETY: a valid, exclusive reference.
    unsafe { core::ptr::write_volatile(x, T::default()) }
}

/// [`clear`] for each element of an array.
#[inline(always)]
fn clear_all<T: Default, const N: usize>(a: &mut [T; N]) {
    for x in a.iter_mut() {
        clear(x);
    }
}

/// Tallies (or emits) the held userspace exit as it is: whole, or its completion never came.
pub fn release_pending(st: &mut ThreadState) {
    if st.has_pending != 0 {
        if !tally_pending(st) {
            emit(|r| *r = st.pending);
        }
        st.has_pending = 0;
    }
}

/// Starts a new cycle at `ts`: the previous open exit (handled in the kernel, since the
/// thread did not return to userspace) is emitted first. Stage entries older than the new
/// cycle are dropped so that a missed return cannot leak into this exit's figures.
pub fn start_cycle(pid: u32, tid: u32, st: &mut ThreadState, ts: u64) {
    if st.open != 0 {
        if st.cycle_set == 0 {
            st.stage_ns[stage::CYCLE] = since_cycle_start(st, ts);
            st.flags |= flag::CYCLE_INTERVAL;
        }
        take_sched(st);
        close(pid, tid, st, ts, None);
    }
    st.open = 1;
    st.cycle_start_ns = ts;
    clear_all(&mut st.stage_start);
}

/// An I/O access seen by `kvm_pio` / `kvm_mmio`.
pub struct Io {
    /// `flag::PIO` or `flag::MMIO`, plus `flag::WRITE`.
    pub flags: u32,
    pub addr: u64,
    pub size: u32,
}

/// The exit has been identified as an I/O access (`kvm_pio` / `kvm_mmio`); `ts` is used
/// under IDENT only. Inlined: six arguments are more than a BPF call passes in registers.
#[inline(always)]
pub fn identify_io(pid: u32, tid: u32, st: &mut ThreadState, bound: u32, ts: u64, io: Io) {
    if bound == boundary::IDENT {
        // Each identified exit is its own cycle: the interval since the previous one.
        if st.open != 0 {
            close(pid, tid, st, ts, None);
        }
        st.open = 1;
        st.stage_ns[stage::CYCLE] = since_cycle_start(st, ts);
        st.cycle_set = 1;
        st.cycle_start_ns = ts;
        st.flags |= flag::CYCLE_INTERVAL;
        // The off-CPU time since the previous exit lies in this exit's cycle.
        take_sched(st);
        st.space = space::TRACEPOINT as u32;
        st.reason = if io.flags & flag::PIO != 0 {
            kvmprof_common::tp_reason::PIO
        } else {
            kvmprof_common::tp_reason::MMIO
        };
    } else if st.open == 0 {
        // An access outside any cycle (the thread was already inside KVM_RUN when tracing
        // began): nothing to attribute it to.
        bump(counter::UNMATCHED);
        anomaly::outside_cycle(st.tag as u32, "a port or MMIO access");
        return;
    }
    st.identified = 1;
    st.flags |= io.flags;
    st.io_addr = io.addr;
    st.io_size = io.size;
}

/// `--detail`: the open exit's MSR index, CPUID leaf or hypercall number (`flags` says
/// which), filed as its access is (`kvmprof_common::detail`). Nothing outside an open cycle
/// (an MSR access completed after the VMM answered it comes after its exit closed), nor
/// under IDENT, where only port and MMIO accesses open exits: the one open there is an
/// earlier access's.
#[inline(always)]
pub fn identify_detail(st: &mut ThreadState, bound: u32, flags: u32, key: u64) {
    if st.open == 0 || bound == boundary::IDENT {
        return;
    }
    st.flags |= flags;
    st.io_addr = key;
}

/// `kvm:kvm_exit`: the vendor's exit reason for the open cycle.
pub fn identify_reason(st: &mut ThreadState, bound: u32, ts: u64, sp: u32, reason: u32, vcpu: i32) {
    if st.open == 0 {
        bump(counter::UNMATCHED);
        anomaly::outside_cycle(st.tag as u32, "an exit reason");
        return;
    }
    st.identified = 1;
    st.space = sp;
    st.reason = reason;
    st.vcpu_id = vcpu;
    if bound == boundary::KVM_ENTRY {
        // Without a vendor-run hook, kvm_entry..kvm_exit is the closest to the vendor run.
        st.stage_ns[stage::VENDOR_RUN] = ts.saturating_sub(st.cycle_start_ns);
    }
}

/// KVM_RUN entered: the VMM's round trip since the last return ends here.
pub fn kvm_run_enter(st: &mut ThreadState, fd: i32, ts: u64) {
    if st.user_since_ns != 0 && st.has_pending != 0 {
        st.pending.stage_ns[stage::VMM] = ts.saturating_sub(st.user_since_ns);
        // Off-CPU time in the round trip is the held exit's too.
        st.pending.stage_ns[stage::SCHED_WAIT] += st.sched_ns[0];
        st.pending.stage_ns[stage::SCHED_SLEEP] += st.sched_ns[1];
        // A PIO read's port arrives with its completion, after this entry.
        if st.await_pio_in == 0 {
            release_pending(st);
        }
    }
    // Outside any exit in the recording otherwise (before the first KVM_RUN, or the round
    // trip of an exit that began before the window).
    clear_all(&mut st.sched_ns);
    // Another vCPU fd, another vCPU: its id is read again (`probes::btf` keeps it).
    if fd != st.vcpu_fd {
        st.vcpu_id = -1;
    }
    st.vcpu_fd = fd;
    st.user_since_ns = 0;
    st.run_start_ns = ts;
    st.cycle_start_ns = ts;
    st.open = 0;
    st.identified = 0;
    st.flags = 0;
    clear_all(&mut st.stage_ns);
    clear_all(&mut st.stage_start);
}

/// The port access a `KVM_EXIT_IO` return is for, read from the vCPU's `kvm_run`.
#[derive(Clone, Copy)]
pub struct UserIo {
    pub write: bool,
    pub size: u8,
    pub port: u16,
}

/// Whether the open exit is the one that KVM_RUN is returning for.
fn same_exit(st: &ThreadState, bound: u32, reason: u32, errno: i32, io: Option<UserIo>) -> bool {
    if st.open == 0 || errno != 0 || reason == KVM_EXIT_INTR {
        return false;
    }
    if bound != boundary::IDENT {
        return true;
    }
    // Under PVM only I/O exits are identified in the kernel; match them by kind. `kvm_pio`
    // fires for a port write before KVM decides who answers it, but for a read that goes
    // to the VMM only on its completion, after re-entry: an open port read was answered in
    // the kernel, and an open write is this return's only if `kvm_run` names it.
    let pio_write = st.flags & (flag::PIO | flag::WRITE) == flag::PIO | flag::WRITE;
    let pio = pio_write && io.is_none_or(|io| io.write && st.io_addr == io.port as u64);
    (reason == KVM_EXIT_IO && pio) || (reason == KVM_EXIT_MMIO && st.flags & flag::MMIO != 0)
}

/// `kvm:kvm_userspace_exit`: KVM_RUN returns to the VMM; `io` is the port access of a
/// `KVM_EXIT_IO` where `kvm_run` could be read.
#[allow(clippy::too_many_arguments)]
pub fn kvm_run_exit(
    pid: u32,
    tid: u32,
    st: &mut ThreadState,
    bound: u32,
    ts: u64,
    reason: u32,
    errno: i32,
    io: Option<UserIo>,
) {
    let mut cycle;
    let same = same_exit(st, bound, reason, errno, io);
    if st.open != 0 && !same {
        // The open exit was handled in the kernel; this return is a separate event.
        cycle = since_cycle_start(st, ts);
        if st.cycle_set == 0 {
            st.stage_ns[stage::CYCLE] = cycle;
            st.flags |= flag::CYCLE_INTERVAL;
        }
        // Under IDENT the open exit's cycle ended when it was identified: the off-CPU time
        // since then lies in the interval that this return closes.
        if bound != boundary::IDENT {
            take_sched(st);
        }
        close(pid, tid, st, ts, None);
        if bound != boundary::IDENT {
            // No guest exit of its own (e.g. a signal before entry): no cycle to time.
            cycle = 0;
        }
    } else {
        cycle = since_cycle_start(st, ts);
    }
    st.open = 1;
    if st.cycle_set == 0 && cycle != 0 {
        st.stage_ns[stage::CYCLE] = cycle;
        st.flags |= flag::CYCLE_INTERVAL;
    }
    if st.run_start_ns != 0 {
        st.stage_ns[stage::KVM_RUN] = ts.saturating_sub(st.run_start_ns);
    }
    let pio_read = match io {
        Some(io) => {
            if !same {
                // The port is known now; a read's completion will only confirm it.
                st.flags |= flag::PIO | if io.write { flag::WRITE } else { 0 };
                st.io_addr = io.port as u64;
                st.io_size = io.size as u32;
            }
            !io.write
        }
        None => reason == KVM_EXIT_IO && st.flags & flag::PIO == 0,
    };
    let mmio_read = st.mmio_unsatisfied != 0;
    let observed = st.flags & flag::UNOBSERVED == 0;
    take_sched(st);
    close(pid, tid, st, ts, Some((reason, errno)));
    // The completion of a read still comes (and must not pass for a new exit), but no round
    // trip is joined to an exit that is not in the recording.
    st.await_pio_in = pio_read as u32;
    st.await_mmio_read = mmio_read as u32;
    st.user_since_ns = if observed { ts } else { 0 };
    st.run_start_ns = 0;
}

/// The port of a userspace PIO read, revealed by its completion: the held exit is whole.
pub fn pio_in_done(st: &mut ThreadState, port: u64, size: u32) {
    if st.has_pending != 0 {
        st.pending.flags |= flag::PIO;
        st.pending.io_addr = port;
        st.pending.io_size = size as u8;
    }
    release_pending(st);
}

/// Entry of a hooked stage function.
/// Whether the entry of stage `s` opens a cycle at boundary `bound`: one per exit.
#[inline(always)]
pub fn starts_cycle(bound: u32, s: usize) -> bool {
    (s == stage::VENDOR_RUN && bound == boundary::VENDOR_RUN)
        || (s == stage::CYCLE && bound == boundary::ENTER_GUEST)
}

pub fn stage_enter(pid: u32, tid: u32, st: &mut ThreadState, bound: u32, s: usize, ts: u64) {
    if starts_cycle(bound, s) {
        start_cycle(pid, tid, st, ts);
    }
    if s < HOOKED_STAGES {
        st.stage_start[s] = ts;
    }
}

/// Return of a hooked stage function.
pub fn stage_exit(st: &mut ThreadState, s: usize, ts: u64) {
    if s >= HOOKED_STAGES {
        return;
    }
    let start = st.stage_start[s];
    // A start from before this cycle belongs to a call whose return we missed.
    if start == 0 || start < st.cycle_start_ns || st.open == 0 {
        bump(counter::UNMATCHED);
        anomaly::unmatched_return(st.tag as u32, s);
        return;
    }
    st.stage_start[s] = 0;
    st.stage_ns[s] += ts - start;
    if s == stage::CYCLE {
        st.cycle_set = 1;
    }
}

/// Hands the thread's off-CPU time so far to the open exit: called where an exit's interval
/// ends (before it is closed) or, under IDENT, where it is identified (its cycle is the
/// interval before). An off-CPU period lies between two events of the thread, never across
/// one, so each goes whole to one exit.
#[inline(always)]
fn take_sched(st: &mut ThreadState) {
    st.stage_ns[stage::SCHED_WAIT] += st.sched_ns[0];
    st.stage_ns[stage::SCHED_SLEEP] += st.sched_ns[1];
    clear_all(&mut st.sched_ns);
}

/// `sched_switch` takes the thread off its CPU at `ts`; `runnable` when it stays on the
/// runqueue (preempted) rather than blocking.
pub fn sched_out(st: &mut ThreadState, ts: u64, runnable: bool) {
    st.off_since_ns = ts;
    st.off_runnable = runnable as u32;
    st.woken_ns = 0;
}

/// `sched_wakeup`: the sleeping thread is runnable from `ts` (a wake-up of a thread that
/// did not block, or a second one, changes nothing).
pub fn sched_woken(st: &mut ThreadState, ts: u64) {
    if st.off_since_ns != 0 && st.off_runnable == 0 && st.woken_ns == 0 {
        st.woken_ns = ts;
    }
}

/// `sched_switch` puts the thread back on a CPU at `ts`: its time off since
/// [`sched_out`] is waiting while runnable (preempted, or woken and not yet running: the
/// kernel's `run_delay`) or sleeping (until the wake-up; all of it when no wake-up was
/// seen). A switch-out before the window opened is not counted.
pub fn sched_in(st: &mut ThreadState, ts: u64) {
    let off = st.off_since_ns;
    if off == 0 {
        return;
    }
    st.off_since_ns = 0;
    let woken = st.woken_ns;
    let (wait, sleep) = if st.off_runnable != 0 {
        (ts.saturating_sub(off), 0)
    } else if woken >= off {
        (ts.saturating_sub(woken), woken - off)
    } else {
        (0, ts.saturating_sub(off))
    };
    st.sched_ns[0] += wait;
    st.sched_ns[1] += sleep;
    st.last_off_ns = off;
    st.last_woken_ns = woken;
    st.last_on_ns = ts;
    st.last_off_runnable = st.off_runnable;
}

#[cfg(test)]
mod tests {
    //! The state machine driven by hand-made event sequences, as the probes would drive it.
    use kvmprof_common::{boundary, counter, flag, kind, space, stage, ExitRecord, ThreadState};

    use super::{sink, *};

    const PID: u32 = 10;
    const TID: u32 = 11;
    use kvmprof_common::KVM_EXIT_HLT;
    const SVM_IO: u32 = 0x7b;

    fn fresh() -> ThreadState {
        sink::RECORDS.with(|r| r.borrow_mut().clear());
        sink::COUNTERS.with(|c| *c.borrow_mut() = [0; counter::COUNT as usize]);
        ThreadState {
            vcpu_fd: 7,
            vcpu_id: -1,
            ..Default::default()
        }
    }

    fn records() -> Vec<ExitRecord> {
        sink::RECORDS.with(|r| r.borrow().clone())
    }

    fn unmatched() -> u64 {
        sink::COUNTERS.with(|c| c.borrow()[counter::UNMATCHED as usize])
    }

    fn unobserved() -> u64 {
        sink::COUNTERS.with(|c| c.borrow()[counter::UNOBSERVED as usize])
    }

    /// A thread first seen by the window mid-KVM_RUN: its state is created empty.
    fn seen_mid_run() -> ThreadState {
        let _ = fresh();
        ThreadState {
            vcpu_fd: -1,
            vcpu_id: -1,
            ..Default::default()
        }
    }

    /// Far from zero, like the boot-time clock of a real attach.
    const LATE: u64 = 1_949_000_000_000;

    fn pio(port: u64, write: bool) -> Io {
        let flags = flag::PIO | if write { flag::WRITE } else { 0 };
        Io {
            flags,
            addr: port,
            size: 1,
        }
    }

    /// One SVM exit as the hooks see it, starting at `t`: vendor run 100..400 with kvm_exit,
    /// handler 450..900 with kvm_fast_pio 500..800 inside.
    fn svm_io_exit(st: &mut ThreadState, t: u64) {
        let b = boundary::VENDOR_RUN;
        stage_enter(PID, TID, st, b, stage::VENDOR_RUN, t + 100);
        identify_reason(st, b, t + 390, space::SVM as u32, SVM_IO, 0);
        stage_exit(st, stage::VENDOR_RUN, t + 400);
        stage_enter(PID, TID, st, b, stage::HANDLER, t + 450);
        stage_enter(PID, TID, st, b, stage::FAST_PIO, t + 500);
        identify_io(PID, TID, st, b, t + 600, pio(0x700, true));
        stage_exit(st, stage::FAST_PIO, t + 800);
        stage_exit(st, stage::HANDLER, t + 900);
    }

    #[test]
    fn svm_exits_get_every_stage_nested_and_close_at_the_next_vendor_run() {
        let mut st = fresh();
        kvm_run_enter(&mut st, 7, 0);
        svm_io_exit(&mut st, 0);
        assert!(
            records().is_empty(),
            "an exit is emitted only when the next cycle starts"
        );
        svm_io_exit(&mut st, 1000);
        let r = records();
        assert_eq!(r.len(), 1);
        let e = r[0];
        assert_eq!(
            (e.kind, e.space, e.reason),
            (kind::EXIT, space::SVM, SVM_IO)
        );
        assert_eq!(e.stage_ns[stage::VENDOR_RUN], 300);
        assert_eq!(e.stage_ns[stage::HANDLER], 450);
        assert_eq!(e.stage_ns[stage::FAST_PIO], 300);
        assert_eq!(
            e.stage_ns[stage::CYCLE],
            1000,
            "vendor-run entry to the next one"
        );
        assert_eq!((e.io_addr, e.flags & flag::USERSPACE), (0x700, 0));
        assert_eq!(unmatched(), 0);
    }

    /// `--detail`: an MSR exit's index and direction go with it, as a port does; an event
    /// outside a cycle, or under IDENT (where the open exit is an earlier access's), files
    /// nothing.
    #[test]
    fn a_detail_event_files_the_open_exit_under_its_msr() {
        const SVM_MSR: u32 = 0x7c;
        let mut st = fresh();
        let b = boundary::VENDOR_RUN;
        identify_detail(&mut st, b, flag::MSR, 0x1b);
        assert_eq!((st.flags, st.io_addr), (0, 0), "no open cycle");
        kvm_run_enter(&mut st, 7, 0);
        stage_enter(PID, TID, &mut st, b, stage::VENDOR_RUN, 100);
        identify_reason(&mut st, b, 390, space::SVM as u32, SVM_MSR, 0);
        stage_exit(&mut st, stage::VENDOR_RUN, 400);
        identify_detail(&mut st, b, flag::MSR | flag::WRITE, 0x6e0);
        svm_io_exit(&mut st, 1000);
        let r = records();
        assert_eq!(r.len(), 1);
        assert_eq!(
            (
                r[0].reason,
                r[0].flags & !flag::CYCLE_INTERVAL,
                r[0].io_addr
            ),
            (SVM_MSR, flag::MSR | flag::WRITE, 0x6e0)
        );
        let mut st = fresh();
        let ident = boundary::IDENT;
        identify_io(PID, TID, &mut st, ident, LATE, pio(0x3f8, true));
        identify_detail(&mut st, ident, flag::MSR, 0x1b);
        assert_eq!((st.flags & flag::MSR, st.io_addr), (0, 0x3f8));
    }

    /// `--detail`: an EPT violation or NPF is filed under its guest page, a fault-in; one that
    /// `kvm_mmio` then names is an MMIO access at that address, still marked as a fault.
    #[test]
    fn a_page_fault_files_the_open_exit_under_its_page_or_its_mmio_access() {
        const SVM_NPF: u32 = 0x400;
        let b = boundary::VENDOR_RUN;
        let npf = |st: &mut ThreadState, t: u64| {
            stage_enter(PID, TID, st, b, stage::VENDOR_RUN, t + 100);
            identify_reason(st, b, t + 390, space::SVM as u32, SVM_NPF, 0);
            stage_exit(st, stage::VENDOR_RUN, t + 400);
            identify_detail(st, b, flag::NPF, kvmprof_common::detail::page(0x2_1abc));
        };
        let mut st = fresh();
        kvm_run_enter(&mut st, 7, 0);
        npf(&mut st, 0);
        npf(&mut st, 1000);
        let mmio = Io {
            flags: flag::MMIO | flag::WRITE,
            addr: 0xd_0004,
            size: 1,
        };
        identify_io(PID, TID, &mut st, b, 1500, mmio);
        svm_io_exit(&mut st, 2000);
        let r: Vec<_> = records()
            .iter()
            .map(|r| (r.reason, r.flags & !flag::CYCLE_INTERVAL, r.io_addr))
            .collect();
        assert_eq!(
            r,
            [
                (SVM_NPF, flag::NPF, 0x2_1000),
                (SVM_NPF, flag::NPF | flag::MMIO | flag::WRITE, 0xd_0004)
            ]
        );
    }

    #[test]
    fn a_missed_return_does_not_leak_into_the_next_exit() {
        let mut st = fresh();
        let b = boundary::VENDOR_RUN;
        kvm_run_enter(&mut st, 7, 0);
        stage_enter(PID, TID, &mut st, b, stage::VENDOR_RUN, 100);
        stage_exit(&mut st, stage::VENDOR_RUN, 200);
        stage_enter(PID, TID, &mut st, b, stage::HANDLER, 250);
        // The handler's return is lost; the next cycle starts.
        stage_enter(PID, TID, &mut st, b, stage::VENDOR_RUN, 1000);
        stage_exit(&mut st, stage::HANDLER, 1500);
        assert_eq!(unmatched(), 1);
        stage_enter(PID, TID, &mut st, b, stage::VENDOR_RUN, 2000);
        let r = records();
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0].stage_ns[stage::HANDLER],
            0,
            "first exit: handler never returned"
        );
        assert_eq!(
            r[1].stage_ns[stage::HANDLER],
            0,
            "second exit: not the stale entry"
        );
    }

    #[test]
    fn a_return_without_its_entry_is_not_a_stage() {
        let mut st = fresh();
        let b = boundary::VENDOR_RUN;
        kvm_run_enter(&mut st, 7, 0);
        stage_enter(PID, TID, &mut st, b, stage::VENDOR_RUN, 100);
        // Entry and return swapped: the return comes first.
        stage_exit(&mut st, stage::HANDLER, 300);
        stage_enter(PID, TID, &mut st, b, stage::HANDLER, 400);
        stage_enter(PID, TID, &mut st, b, stage::VENDOR_RUN, 1000);
        assert_eq!(unmatched(), 1);
        assert_eq!(records()[0].stage_ns[stage::HANDLER], 0);
    }

    #[test]
    fn pvm_in_kernel_exits_are_timed_between_consecutive_exits() {
        let mut st = fresh();
        let b = boundary::IDENT;
        kvm_run_enter(&mut st, 7, 1000);
        identify_io(PID, TID, &mut st, b, 1300, pio(0x700, true));
        identify_io(PID, TID, &mut st, b, 1700, pio(0x700, true));
        identify_io(PID, TID, &mut st, b, 2000, pio(0x3f8, true));
        kvm_run_exit(PID, TID, &mut st, b, 2500, 2, 0, None);
        assert_eq!(
            records().len(),
            2,
            "the userspace exit waits for its VMM round trip"
        );
        // The VMM handles it and calls KVM_RUN again: its round trip completes the exit.
        kvm_run_enter(&mut st, 7, 4000);
        let r = records();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].stage_ns[stage::CYCLE], 300, "since KVM_RUN entry");
        assert_eq!(r[1].stage_ns[stage::CYCLE], 400);
        assert_eq!(r[0].flags & flag::USERSPACE, 0);
        let user = r[2];
        assert_eq!(
            (user.space, user.reason, user.user_reason),
            (space::USERSPACE, 2, 2)
        );
        assert_eq!(
            (user.io_addr, user.flags & flag::USERSPACE),
            (0x3f8, flag::USERSPACE)
        );
        assert_eq!(user.stage_ns[stage::CYCLE], 300);
        assert_eq!(user.stage_ns[stage::KVM_RUN], 1500);
        assert_eq!(user.stage_ns[stage::VMM], 1500);
        assert_eq!(st.has_pending, 0);
    }

    #[test]
    fn a_return_to_userspace_for_another_reason_closes_the_in_kernel_exit_first() {
        let mut st = fresh();
        let b = boundary::IDENT;
        kvm_run_enter(&mut st, 7, 1000);
        identify_io(PID, TID, &mut st, b, 1100, pio(0x700, true));
        kvm_run_exit(PID, TID, &mut st, b, 1300, KVM_EXIT_HLT, 0, None);
        // The VMM never calls KVM_RUN again (end of recording): userspace takes the held
        // exit from the thread state.
        release_pending(&mut st);
        let r = records();
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].space, r[0].flags & flag::USERSPACE),
            (space::TRACEPOINT, 0)
        );
        assert_eq!((r[1].space, r[1].reason), (space::USERSPACE, KVM_EXIT_HLT));
        assert_eq!(r[1].stage_ns[stage::VMM], 0);
    }

    #[test]
    fn a_pio_read_to_userspace_waits_for_its_port() {
        let mut st = fresh();
        let b = boundary::IDENT;
        kvm_run_enter(&mut st, 7, 1000);
        kvm_run_exit(PID, TID, &mut st, b, 1100, 2, 0, None);
        assert_eq!(
            st.await_pio_in, 1,
            "kvm_pio fires for reads only on completion"
        );
        kvm_run_enter(&mut st, 7, 1200);
        assert!(records().is_empty(), "still waiting for the port");
        pio_in_done(&mut st, 0x3fd, 1);
        let r = records();
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].kind, r[0].io_addr, r[0].io_size),
            (kind::EXIT, 0x3fd, 1)
        );
        assert_eq!(r[0].stage_ns[stage::VMM], 100);
        assert_eq!(r[0].flags & (flag::PIO | flag::WRITE), flag::PIO);
    }

    /// Under PVM, `kvm_run` says which port a `KVM_EXIT_IO` return is for: a port read
    /// answered in the kernel, or a write that stayed there, is never taken for the exit
    /// to the VMM that follows it, in any order (issue 19, item 1).
    #[test]
    fn pvm_port_exits_are_filed_by_kvm_run_in_every_order() {
        let b = boundary::IDENT;
        let user = |write, port| {
            Some(UserIo {
                write,
                size: 1,
                port,
            })
        };
        // (in-kernel access, then the access that goes to the VMM)
        for (kernel, to_vmm) in [
            ((0x700, true), (0x3fd, false)),
            ((0x4d0, false), (0x3fd, false)),
            ((0x4d0, false), (0x3f8, true)),
            ((0x700, true), (0x3f8, true)),
        ] {
            let mut st = fresh();
            kvm_run_enter(&mut st, 7, 1000);
            identify_io(PID, TID, &mut st, b, 1100, pio(kernel.0, kernel.1));
            if to_vmm.1 {
                // A write is traced before KVM hands it to the VMM.
                identify_io(PID, TID, &mut st, b, 1200, pio(to_vmm.0, true));
            }
            kvm_run_exit(
                PID,
                TID,
                &mut st,
                b,
                1300,
                KVM_EXIT_IO,
                0,
                user(to_vmm.1, to_vmm.0 as u16),
            );
            assert_eq!(st.await_pio_in, !to_vmm.1 as u32, "{kernel:?} {to_vmm:?}");
            kvm_run_enter(&mut st, 7, 1500);
            if !to_vmm.1 {
                // A read to the VMM is traced on its completion, after re-entry.
                pio_in_done(&mut st, to_vmm.0, 1);
            }
            let r = records();
            let filed: Vec<_> = r
                .iter()
                .map(|e| {
                    (
                        e.io_addr,
                        e.flags & flag::WRITE != 0,
                        e.flags & flag::USERSPACE != 0,
                    )
                })
                .collect();
            assert_eq!(
                filed,
                [(kernel.0, kernel.1, false), (to_vmm.0, to_vmm.1, true)],
                "{kernel:?} then {to_vmm:?}"
            );
            assert_eq!(r[1].stage_ns[stage::VMM], 200, "{kernel:?} {to_vmm:?}");
        }
    }

    #[test]
    fn a_second_userspace_exit_releases_a_held_one_that_never_completed() {
        let mut st = fresh();
        let b = boundary::IDENT;
        kvm_run_enter(&mut st, 7, 1000);
        kvm_run_exit(PID, TID, &mut st, b, 1100, 2, 0, None);
        kvm_run_enter(&mut st, 7, 1200);
        // The read's completion is missed; the next return to the VMM comes first.
        kvm_run_exit(PID, TID, &mut st, b, 1400, KVM_EXIT_HLT, 0, None);
        let r = records();
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].user_reason, r[0].stage_ns[stage::VMM]), (2, 100));
        assert_eq!(st.has_pending, 1);
    }

    #[test]
    fn a_userspace_exit_begun_before_the_window_is_counted_not_timed() {
        let mut st = seen_mid_run();
        let b = boundary::IDENT;
        identify_io(PID, TID, &mut st, b, LATE, pio(0x3f8, true));
        kvm_run_exit(PID, TID, &mut st, b, LATE + 100, 2, 0, None);
        assert!(records().is_empty(), "no made-up cycle from time zero");
        assert_eq!((unobserved(), st.has_pending), (1, 0), "nothing held");
        // Its VMM round trip belongs to an exit outside the recording: nothing joined.
        kvm_run_enter(&mut st, 7, LATE + 1000);
        assert!(records().is_empty());
        // The next exit began inside the window: recorded, timed from KVM_RUN entry.
        identify_io(PID, TID, &mut st, b, LATE + 1300, pio(0x3f8, true));
        kvm_run_exit(PID, TID, &mut st, b, LATE + 1400, 2, 0, None);
        kvm_run_enter(&mut st, 7, LATE + 1600);
        let r = records();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].stage_ns[stage::CYCLE], 300);
        assert_eq!(r[0].stage_ns[stage::KVM_RUN], 400);
        assert_eq!(r[0].stage_ns[stage::VMM], 200);
        assert_eq!(r[0].flags & flag::UNOBSERVED, 0);
        assert_eq!(unobserved(), 1);
    }

    #[test]
    fn an_in_kernel_exit_begun_before_the_window_is_counted_and_the_next_is_timed() {
        let mut st = seen_mid_run();
        let b = boundary::IDENT;
        identify_io(PID, TID, &mut st, b, LATE, pio(0x700, true));
        identify_io(PID, TID, &mut st, b, LATE + 500, pio(0x700, true));
        identify_io(PID, TID, &mut st, b, LATE + 900, pio(0x700, true));
        let r = records();
        assert_eq!(r.len(), 1, "the first is unobserved, the third still open");
        assert_eq!(r[0].stage_ns[stage::CYCLE], 500);
        assert_eq!(unobserved(), 1);
    }

    #[test]
    fn a_return_with_no_exit_seen_is_unobserved_on_every_boundary() {
        for b in [
            boundary::IDENT,
            boundary::KVM_ENTRY,
            boundary::VENDOR_RUN,
            boundary::ENTER_GUEST,
        ] {
            let mut st = seen_mid_run();
            kvm_run_exit(PID, TID, &mut st, b, LATE, KVM_EXIT_HLT, 0, None);
            assert!(records().is_empty(), "boundary {b}");
            assert_eq!(unobserved(), 1, "boundary {b}");
            assert_eq!(st.user_since_ns, 0, "boundary {b}: no round trip to join");
            assert_eq!(st.has_pending, 0, "boundary {b}: nothing held");
        }
    }

    const WAIT: usize = stage::SCHED_WAIT;
    const SLEEP: usize = stage::SCHED_SLEEP;

    #[test]
    fn off_cpu_time_under_pvm_goes_to_the_exit_whose_interval_holds_it() {
        let mut st = fresh();
        let b = boundary::IDENT;
        kvm_run_enter(&mut st, 7, 1000);
        // Preempted inside the first exit's interval (KVM_RUN entry .. its kvm_pio).
        sched_out(&mut st, 1100, true);
        sched_in(&mut st, 1150);
        identify_io(PID, TID, &mut st, b, 1300, pio(0x700, true));
        // Asleep, woken, then waiting for the CPU: inside the second exit's interval.
        sched_out(&mut st, 1400, false);
        sched_woken(&mut st, 1500);
        sched_in(&mut st, 1520);
        identify_io(PID, TID, &mut st, b, 1700, pio(0x700, true));
        // The userspace exit, then preempted in the VMM's round trip.
        identify_io(PID, TID, &mut st, b, 1750, pio(0x3f8, true));
        kvm_run_exit(PID, TID, &mut st, b, 1800, 2, 0, None);
        sched_out(&mut st, 1900, true);
        sched_in(&mut st, 1990);
        kvm_run_enter(&mut st, 7, 2000);
        let r = records();
        assert_eq!(r.len(), 3);
        assert_eq!((r[0].stage_ns[WAIT], r[0].stage_ns[SLEEP]), (50, 0));
        assert_eq!((r[1].stage_ns[WAIT], r[1].stage_ns[SLEEP]), (20, 100));
        assert_eq!(r[2].flags & flag::USERSPACE, flag::USERSPACE);
        assert_eq!((r[2].stage_ns[WAIT], r[2].stage_ns[SLEEP]), (90, 0));
        assert_eq!(st.sched_ns, [0, 0]);
    }

    #[test]
    fn off_cpu_time_with_vendor_hooks_goes_to_the_cycle_it_falls_in() {
        let mut st = fresh();
        kvm_run_enter(&mut st, 7, 0);
        svm_io_exit(&mut st, 0);
        sched_out(&mut st, 920, true);
        sched_in(&mut st, 970);
        svm_io_exit(&mut st, 1000);
        svm_io_exit(&mut st, 2000);
        let r = records();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].stage_ns[WAIT], 50, "before the next vendor run");
        assert_eq!(r[1].stage_ns[WAIT], 0);
    }

    #[test]
    fn a_sleep_without_a_wake_up_seen_is_all_sleep_and_a_switch_out_before_the_window_nothing() {
        let mut st = fresh();
        // Switched out before the window opened: no sched_out seen.
        sched_in(&mut st, 500);
        assert_eq!(st.sched_ns, [0, 0]);
        sched_out(&mut st, 1000, false);
        sched_in(&mut st, 1600);
        assert_eq!(st.sched_ns, [0, 600]);
        // A wake-up of a running (or preempted) thread changes nothing.
        sched_woken(&mut st, 1700);
        sched_out(&mut st, 1800, true);
        sched_woken(&mut st, 1850);
        sched_in(&mut st, 1900);
        assert_eq!(st.sched_ns, [100, 600]);
    }

    #[test]
    fn a_vendor_run_begun_before_the_window_only_opens_the_next_cycle() {
        let mut st = seen_mid_run();
        let b = boundary::VENDOR_RUN;
        // Mid-exit: the return of a handler whose entry came before the window.
        stage_exit(&mut st, stage::HANDLER, LATE);
        identify_reason(&mut st, b, LATE + 10, space::SVM as u32, SVM_IO, 0);
        assert_eq!(unmatched(), 2);
        svm_io_exit(&mut st, LATE + 1000);
        svm_io_exit(&mut st, LATE + 2000);
        let r = records();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].stage_ns[stage::CYCLE], 1000);
        assert_eq!(unobserved(), 0);
    }
}
