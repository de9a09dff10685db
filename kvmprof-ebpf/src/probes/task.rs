//! A thread's end: the userspace exit it still holds will never get its VMM round trip. A
//! process's birth: the children of a traced process are traced too (`record -- CMD`).
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use kvmprof_common::{follow, pids};

use crate::{exit, maps};

/// `clone(2)`'s flag for a thread of the same process, which the filter already covers.
const CLONE_THREAD: u64 = 0x10000;

/// `sched:sched_process_exit` fires in every exiting thread. Its held exit goes into this
/// CPU's batch now, not when recording ends, so that a session that runs on (`top`,
/// `serve`) gets every exit of a VMM that exits; the state is freed for a new thread.
#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn thread_exit(_ctx: TracePointContext) -> u32 {
    try_thread_exit().unwrap_or(0)
}

fn try_thread_exit() -> Option<u32> {
    let (_, _, st) = maps::current(false)?;
    // Only inside the recording window; outside, userspace reads the held exit at the end.
    maps::window_now()?;
    exit::release_pending(st);
    // SAFETY: this thread's own state (one thread = one writer), all plain integers.
    unsafe { core::ptr::write_bytes(st as *mut _, 0, 1) };
    Some(0)
}

/// `task:task_newtask` fires in the parent as it creates a task; attached only when
/// `record -- CMD` follows the command's descendants (shells, `timeout`, libvirt start the
/// VMM as a child). A new process of a traced one goes into `PIDS` before it can run, so its
/// first exit is traced.
#[tracepoint(category = "task", name = "task_newtask")]
pub fn follow_fork(ctx: TracePointContext) -> u32 {
    try_follow_fork(&ctx).unwrap_or(0)
}

fn try_follow_fork(ctx: &TracePointContext) -> Option<u32> {
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: plain lookup; the value is only tested for presence.
    unsafe { maps::PIDS.get(parent) }?;
    let flags_off = *maps::FOLLOW.get(follow::CLONE_FLAGS_OFF)?;
    // SAFETY: the offset comes from this kernel's format file for this tracepoint.
    let flags: u64 = unsafe { ctx.read_at(flags_off as usize) }.ok()?;
    if flags & CLONE_THREAD != 0 {
        return None;
    }
    let pid_off = *maps::FOLLOW.get(follow::PID_OFF)?;
    // SAFETY: as above.
    let child: u32 = unsafe { ctx.read_at(pid_off as usize) }.ok()?;
    maps::PIDS.insert(child, pids::FOLLOWED, 0).ok()?;
    // The reader wakes to name the new process while it runs (and, asleep, to watch its end).
    maps::wake_reader();
    Some(0)
}
