//! The KVM_RUN ioctl: where a vCPU thread enters the kernel (and its VMM round trip ends).
use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_probe_read_kernel},
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
    let fd = fd as i32;
    if maps::config!(run_known) != 0 && (st.run_ptr == 0 || st.run_fd != fd) {
        // Once per thread and vCPU fd.
        st.run_ptr = kvm_run_of(fd).unwrap_or(0);
        st.run_fd = fd;
    }
    exit::kvm_run_enter(st, fd, ts);
    Some(0)
}

/// `current->files->fdt->fd[fd]->private_data->run`: the `kvm_run` of the vCPU whose fd
/// KVM_RUN was called on, at BTF offsets from userspace.
fn kvm_run_of(fd: i32) -> Option<u64> {
    let follow = |base: u64, off: u64| {
        // SAFETY: a probe read; a bad address fails the helper, never faults.
        unsafe { bpf_probe_read_kernel(base.wrapping_add(off) as *const u64) }.ok()
    };
    // SAFETY: no preconditions.
    let task = unsafe { bpf_get_current_task() };
    let files = follow(task, maps::config!(run_files_off) as u64)?;
    let fdt = follow(files, maps::config!(run_fdt_off) as u64)?;
    let fds = follow(fdt, maps::config!(run_fd_array_off) as u64)?;
    let file = follow(fds, (fd as u32 as u64) * 8)?;
    let vcpu = follow(file, maps::config!(run_private_off) as u64)?;
    follow(vcpu, maps::config!(run_vcpu_run_off) as u64)
}

/// fentry on `kvm_arch_vcpu_ioctl_run` (`Plan::run_entry_fentry`): KVM_RUN entered, seen
/// from inside KVM, so only KVM_RUN pays for it. No fd here: the vCPU's id is read with
/// each exit's reason instead.
#[fentry]
pub fn fe_kvm_run(ctx: FEntryContext) -> u32 {
    try_fe_kvm_run(&ctx).unwrap_or(0)
}

fn try_fe_kvm_run(ctx: &FEntryContext) -> Option<u32> {
    let (_, _, st) = maps::current(true)?;
    // Only inside the recording window (time read first, then the window).
    let ts = maps::window_now()?;
    // `kvm_arch_vcpu_ioctl_run(struct kvm_vcpu *)`: another vCPU on this thread has
    // another id, read again at its first exit.
    let vcpu: u64 = ctx.arg(0);
    if vcpu != st.vcpu_ptr {
        st.vcpu_ptr = vcpu;
        st.vcpu_id = -1;
    }
    exit::kvm_run_enter(st, -1, ts);
    Some(0)
}
