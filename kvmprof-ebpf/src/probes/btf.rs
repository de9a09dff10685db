//! BTF tracepoints: the raw arguments of a tracepoint, without the trace-record copy a classic
//! tracepoint makes before its program runs. Loaded against vmlinux or the `kvm` module's BTF
//! (see kvmprof/src/live/attach.rs), where KVM's tracepoints live on distro kernels.
use aya_ebpf::{
    helpers::bpf_probe_read_kernel, macros::btf_tracepoint, programs::BtfTracePointContext,
};
use kvmprof_common::{space, NO_DEREF};

use crate::{exit, maps};

/// `kvm:kvm_exit` `isa` values.
const KVM_ISA_VMX: u32 = 1;

/// `kvm_exit(struct kvm_vcpu *vcpu, u32 isa)`: userspace checked this prototype in BTF.
#[btf_tracepoint(function = "kvm_exit")]
pub fn tpb_kvm_exit(ctx: BtfTracePointContext) -> u32 {
    try_exit(&ctx).unwrap_or(0)
}

fn try_exit(ctx: &BtfTracePointContext) -> Option<u32> {
    let (_, _, st) = maps::current(false)?;
    // Only inside the recording window (time read first, then the window).
    let ts = maps::window_now()?;
    let vcpu: *const u8 = ctx.arg(0);
    // Verifiers since ~6.7 type tracepoint pointer arguments as trusted-or-null and refuse
    // arithmetic on them until they are checked.
    if vcpu.is_null() {
        return None;
    }
    let isa = ctx.arg::<u64>(1) as u32;
    let deref = maps::config!(btf_exit_deref_off);
    let reason_off = maps::config!(btf_exit_reason_off) as usize;
    let vcpu_id_off = maps::config!(btf_exit_vcpu_id_off) as usize;
    // SAFETY: probe reads of kernel memory at offsets from this kernel's BTF; a bad read
    // fails the helper, never faults.
    let (reason, vcpu_id) = unsafe {
        let base = if deref == NO_DEREF {
            vcpu
        } else {
            maps::read(bpf_probe_read_kernel(
                vcpu.wrapping_add(deref as usize) as *const *const u8
            ))?
        };
        (
            maps::read(bpf_probe_read_kernel(
                base.wrapping_add(reason_off) as *const u32
            ))?,
            maps::read(bpf_probe_read_kernel(
                vcpu.wrapping_add(vcpu_id_off) as *const i32
            ))?,
        )
    };
    let sp = if isa == KVM_ISA_VMX {
        space::VMX
    } else {
        space::SVM
    };
    exit::identify_reason(st, maps::config!(boundary), ts, sp as u32, reason, vcpu_id);
    Some(0)
}
