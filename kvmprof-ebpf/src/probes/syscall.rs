//! The KVM_RUN ioctl: where a vCPU thread enters the kernel (and its VMM round trip ends).
use aya_ebpf::{
    macros::{fentry, tracepoint},
    programs::{FEntryContext, TracePointContext},
};
use kvmprof_common::{fixed, KVM_RUN};

use super::field::field;
use crate::{exit, maps};

#[tracepoint(category = "syscalls", name = "sys_enter_ioctl")]
pub fn kvm_run_enter(ctx: TracePointContext) -> u32 {
    try_kvm_run_enter(&ctx).unwrap_or(0)
}

fn try_kvm_run_enter(ctx: &TracePointContext) -> Option<u32> {
    // Offsets come from this kernel's format file for this tracepoint.
    let cmd: u64 = field::<_, { fixed::IOCTL_CMD }>(ctx, maps::config!(ioctl_cmd_off))?;
    if cmd & 0xffff_ffff != KVM_RUN {
        return Some(0);
    }
    let (_, _, st) = maps::current(true)?;
    // Only inside the recording window (time read first, then the window).
    let ts = maps::window_now()?;
    let fd: u64 = field::<_, { fixed::IOCTL_FD }>(ctx, maps::config!(ioctl_fd_off))?;
    exit::kvm_run_enter(st, fd as i32, ts);
    Some(0)
}

/// fentry on `kvm_arch_vcpu_ioctl_run` (`Plan::run_entry_fentry`): KVM_RUN entered, seen
/// from inside KVM, so only KVM_RUN pays for it. No fd here: the vCPU's id is read with
/// each exit's reason instead.
#[fentry]
pub fn fe_kvm_run(_ctx: FEntryContext) -> u32 {
    try_fe_kvm_run().unwrap_or(0)
}

fn try_fe_kvm_run() -> Option<u32> {
    let (_, _, st) = maps::current(true)?;
    // Only inside the recording window (time read first, then the window).
    let ts = maps::window_now()?;
    exit::kvm_run_enter(st, -1, ts);
    Some(0)
}
