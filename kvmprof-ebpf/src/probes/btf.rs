//! BTF tracepoints: the raw arguments of a tracepoint, without the trace-record copy a classic
//! tracepoint makes before its program runs. Loaded against vmlinux or the `kvm` module's BTF
//! (see kvmprof/src/attach.rs), where KVM's tracepoints live on distro kernels.
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
    let cfg = maps::config()?;
    let (_, tid) = maps::traced_task(cfg)?;
    // The time first, then the window (see `maps::in_window`).
    let ts = exit::now();
    if !maps::in_window(ts) {
        return None;
    }
    let st = maps::existing_state(tid)?;
    let vcpu: *const u8 = ctx.arg(0);
    let isa = ctx.arg::<u64>(1) as u32;
    // SAFETY: probe reads of kernel memory at offsets from this kernel's BTF; a bad read
    // fails the helper, never faults.
    let (reason, vcpu_id) = unsafe {
        let base = if cfg.btf_exit_deref_off == NO_DEREF {
            vcpu
        } else {
            bpf_probe_read_kernel(
                vcpu.wrapping_add(cfg.btf_exit_deref_off as usize) as *const *const u8
            )
            .ok()?
        };
        (
            bpf_probe_read_kernel(base.wrapping_add(cfg.btf_exit_reason_off as usize) as *const u32)
                .ok()?,
            bpf_probe_read_kernel(vcpu.wrapping_add(cfg.btf_exit_vcpu_id_off as usize) as *const i32)
                .ok()?,
        )
    };
    let sp = if isa == KVM_ISA_VMX {
        space::VMX
    } else {
        space::SVM
    };
    exit::identify_reason(st, cfg.boundary, ts, sp as u32, reason, vcpu_id);
    Some(0)
}
