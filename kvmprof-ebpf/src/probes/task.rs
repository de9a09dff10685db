//! A thread's end: the userspace exit it still holds will never get its VMM round trip.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::{exit, maps};

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
