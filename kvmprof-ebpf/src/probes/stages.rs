//! Function hooks on the stages of the exit cycle. The same four stages exist as kprobe/
//! kretprobe and fentry/fexit pairs; userspace loads only the pair its plan chose and
//! attaches it to the symbol of the running kernel's vendor (`svm_vcpu_run`, ...).
use kvmprof_common::stage;

use crate::{exit, maps};

fn try_enter(s: usize) -> Option<u32> {
    let bound = maps::config!(boundary);
    // Only threads seen entering KVM_RUN have state; a hook never creates it. The entry
    // that opens a cycle counts an untraced thread's exit.
    let (pid, tid, st) = if exit::starts_cycle(bound, s) {
        maps::current_counting(false)?
    } else {
        maps::current(false)?
    };
    // Only inside the recording window (time read first, then the window).
    let ts = maps::window_now()?;
    exit::stage_enter(pid, tid, st, bound, s, ts);
    Some(0)
}

fn try_return(s: usize) -> Option<u32> {
    let (_, _, st) = maps::current(false)?;
    // Only inside the recording window (time read first, then the window).
    let ts = maps::window_now()?;
    exit::stage_exit(st, s, ts);
    Some(0)
}

entry_return_hooks!(
    try_enter,
    try_return,
    stage::CYCLE,
    kp_cycle,
    krp_cycle,
    fe_cycle,
    fx_cycle
);
entry_return_hooks!(
    try_enter,
    try_return,
    stage::VENDOR_RUN,
    kp_vendor_run,
    krp_vendor_run,
    fe_vendor_run,
    fx_vendor_run
);
entry_return_hooks!(
    try_enter,
    try_return,
    stage::HANDLER,
    kp_handler,
    krp_handler,
    fe_handler,
    fx_handler
);
entry_return_hooks!(
    try_enter,
    try_return,
    stage::FAST_PIO,
    kp_fast_pio,
    krp_fast_pio,
    fe_fast_pio,
    fx_fast_pio
);
