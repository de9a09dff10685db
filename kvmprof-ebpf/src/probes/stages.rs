//! Function hooks on the stages of the exit cycle. The same four stages exist as kprobe/
//! kretprobe and fentry/fexit pairs; userspace loads only the pair its plan chose and
//! attaches it to the symbol of the running kernel's vendor (`svm_vcpu_run`, ...).
use aya_ebpf::{
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
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

/// Defines the kprobe, kretprobe, fentry and fexit programs of one stage.
macro_rules! stage_hooks {
    ($stage:expr, $kp:ident, $krp:ident, $fe:ident, $fx:ident) => {
        #[kprobe]
        pub fn $kp(_ctx: ProbeContext) -> u32 {
            try_enter($stage).unwrap_or(0)
        }
        #[kretprobe]
        pub fn $krp(_ctx: RetProbeContext) -> u32 {
            try_return($stage).unwrap_or(0)
        }
        #[fentry]
        pub fn $fe(_ctx: FEntryContext) -> u32 {
            try_enter($stage).unwrap_or(0)
        }
        #[fexit]
        pub fn $fx(_ctx: FExitContext) -> u32 {
            try_return($stage).unwrap_or(0)
        }
    };
}

stage_hooks!(stage::CYCLE, kp_cycle, krp_cycle, fe_cycle, fx_cycle);
stage_hooks!(
    stage::VENDOR_RUN,
    kp_vendor_run,
    krp_vendor_run,
    fe_vendor_run,
    fx_vendor_run
);
stage_hooks!(
    stage::HANDLER,
    kp_handler,
    krp_handler,
    fe_handler,
    fx_handler
);
stage_hooks!(
    stage::FAST_PIO,
    kp_fast_pio,
    krp_fast_pio,
    fe_fast_pio,
    fx_fast_pio
);
