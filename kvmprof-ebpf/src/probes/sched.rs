//! The scheduler's view of the traced vCPU threads: when each leaves its CPU (preempted or
//! asleep), is woken, and runs again. The time in between is the exit's `sched_wait` and
//! `sched_sleep` stages (`exit::sched_in`).
//!
//! Both tracepoints fire for every thread of the host, so the programs are raw tracepoints
//! (no copy of the fields into a record) and filter first: one read of the task's pid and
//! one array lookup; the clock and the window only for traced threads.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use kvmprof_common::{ThreadState, STATE_SLOTS};

use crate::{exit, maps};

/// `TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next,
/// unsigned int prev_state)`; userspace attaches it only where BTF says so.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn raw_sched_switch(ctx: RawTracePointContext) -> u32 {
    let preempt = ctx.arg::<u64>(0) as u8 != 0;
    let next = ctx.arg::<u64>(2) as *const u8;
    let prev_state = ctx.arg::<u64>(3) as u32;
    switch(preempt, next, prev_state);
    0
}

/// `TP_PROTO(struct task_struct *p)`: `p` is runnable again (on a runqueue) from now.
#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn raw_sched_wakeup(ctx: RawTracePointContext) -> u32 {
    let p = ctx.arg::<u64>(0) as *const u8;
    let Some(st) = task_state(p) else {
        return 0;
    };
    let Some(ts) = maps::window_now() else {
        return 0;
    };
    exit::sched_woken(st, ts);
    0
}

fn switch(preempt: bool, next: *const u8, prev_state: u32) {
    // Each side on its own (the clock is read only for a traced thread): a test of both
    // lookups at once is compiled into an OR of the two pointers, which the verifier refuses.
    let id = bpf_get_current_pid_tgid();
    if let Some(st) = traced(id as u32, || Some(id)) {
        if let Some(ts) = maps::window_now() {
            // Preempted, or switched out in TASK_RUNNING (a sleep cut short): still on the
            // runqueue. `preempt` covers a task preempted between setting its sleeping
            // state and calling schedule(), which stays runnable whatever `prev_state` says.
            exit::sched_out(st, ts, preempt || prev_state == 0);
        }
    }
    if let Some(st) = task_state(next) {
        if let Some(ts) = maps::window_now() {
            exit::sched_in(st, ts);
        }
    }
}

/// The state of the traced thread whose `task_struct` is at `task`.
#[inline(always)]
fn task_state(task: *const u8) -> Option<&'static mut ThreadState> {
    let tid: u32 = task_field(task, maps::config!(task_pid_off))?;
    traced(tid, || {
        let tgid: u32 = task_field(task, maps::config!(task_tgid_off))?;
        Some((tgid as u64) << 32 | tid as u64)
    })
}

/// A `u32` of the task at `off` (from this kernel's BTF); a refused read is counted.
#[inline(always)]
fn task_field(task: *const u8, off: u32) -> Option<u32> {
    // SAFETY: a probe read at an offset of `struct task_struct` from this kernel's BTF; a
    // bad read fails the helper, never faults.
    maps::read(unsafe { bpf_probe_read_kernel(task.wrapping_add(off as usize) as *const u32) })
}

/// The state of thread `tid` if it is traced. Unlike `maps::current`, never creates one and
/// never looks at `PIDS`: most threads that switch have no state, and they cost one array
/// lookup. The spill hash is searched (with the full id, `id`) only when the thread's slot
/// holds another thread: a spilled thread found its slot taken, and that slot is freed
/// only when its owner ends.
#[inline(always)]
fn traced(tid: u32, id: impl FnOnce() -> Option<u64>) -> Option<&'static mut ThreadState> {
    let slot = maps::THREADS.get_ptr_mut(tid & (STATE_SLOTS - 1))?;
    // SAFETY: map value pointer valid for this program run. The thread is not running
    // (switched out, switched in on this CPU, or being woken): its own programs do not
    // write it meanwhile, and these write only its scheduler fields.
    let slot = unsafe { &mut *slot };
    let st = if slot.tag != 0 && slot.tag as u32 == tid {
        slot
    } else if slot.tag == 0 {
        return None;
    } else {
        let id = id()?;
        // SAFETY: as above.
        unsafe { &mut *maps::THREADS_SPILL.get_ptr_mut(id)? }
    };
    (st.traced != 0).then_some(st)
}
