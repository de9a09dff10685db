//! BTF tracepoints and the vendor run's fexit that reads the exit reason: raw arguments,
//! without the trace-record copy a classic tracepoint makes before its program runs. Loaded
//! against vmlinux or the KVM modules' BTF (see kvmprof/src/live/attach.rs), where KVM's
//! tracepoints and functions live on distro kernels.
use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{btf_tracepoint, fexit},
    programs::{BtfTracePointContext, FExitContext},
};
use kvmprof_common::{space, stage, ThreadState, NO_DEREF};

use crate::{exit, maps};

/// `kvm_exit(struct kvm_vcpu *vcpu, u32 isa)`: userspace checked this prototype in BTF.
#[btf_tracepoint(function = "kvm_exit")]
pub fn tpb_kvm_exit(ctx: BtfTracePointContext) -> u32 {
    try_exit(&ctx).unwrap_or(0)
}

fn try_exit(ctx: &BtfTracePointContext) -> Option<u32> {
    let (_, _, st) = maps::current(false)?;
    let ts = open_cycle_now(st)?;
    let isa = ctx.arg::<u64>(1) as u32;
    let sp = space::of_isa(isa);
    identify(st, ts, ctx.arg(0), sp as u32)
}

/// The vendor run's return (`fx_run_reason`, `Plan::reason_at_vendor_return`): the vendor
/// run's stage ends, and the exit reason KVM stored in the vCPU struct meanwhile identifies
/// the exit, so `kvm:kvm_exit` needs no program. The vendor run takes the vCPU first.
#[fexit]
pub fn fx_run_reason(ctx: FExitContext) -> u32 {
    try_run_reason(&ctx).unwrap_or(0)
}

fn try_run_reason(ctx: &FExitContext) -> Option<u32> {
    let (_, _, st) = maps::current(false)?;
    let ts = open_cycle_now(st)?;
    exit::stage_exit(st, stage::VENDOR_RUN, ts);
    // The reason sits in the vCPU struct itself only on VMX (`Config::btf_exit_deref_off`).
    let sp = if maps::config!(btf_exit_deref_off) == NO_DEREF {
        space::VMX
    } else {
        space::SVM
    };
    identify(st, ts, ctx.arg(0), sp as u32)
}

/// The time of an exit's end: only inside the recording window (time read first, then the
/// window), unless a cycle is open, which opened inside it (one map lookup fewer per exit).
#[inline(always)]
fn open_cycle_now(st: &ThreadState) -> Option<u64> {
    if st.open != 0 {
        Some(maps::now())
    } else {
        maps::window_now()
    }
}

/// Files the open cycle under the reason KVM stored in `vcpu`, in vendor space `sp`.
#[inline(always)]
fn identify(st: &mut ThreadState, ts: u64, vcpu: *const u8, sp: u32) -> Option<u32> {
    // Verifiers since ~6.7 type tracepoint and fexit pointer arguments as trusted-or-null
    // and refuse arithmetic on them until they are checked.
    if vcpu.is_null() {
        return None;
    }
    let (reason, vcpu_id) = reason(vcpu, st.vcpu_id)?;
    exit::identify_reason(st, maps::config!(boundary), ts, sp, reason, vcpu_id);
    Some(0)
}

/// The exit reason and vCPU id of `vcpu`, at this kernel's BTF offsets; the id is read only
/// when `known` (the thread's, reset when it runs another vCPU) is not one.
#[inline(always)]
fn reason(vcpu: *const u8, known: i32) -> Option<(u32, i32)> {
    let deref = maps::config!(btf_exit_deref_off);
    let reason_off = maps::config!(btf_exit_reason_off) as usize;
    let vcpu_id_off = maps::config!(btf_exit_vcpu_id_off) as usize;
    // SAFETY: probe reads of kernel memory at offsets from this kernel's BTF; a bad read
    // fails the helper, never faults.
    unsafe {
        let base = if deref == NO_DEREF {
            vcpu
        } else {
            maps::read(bpf_probe_read_kernel(
                vcpu.wrapping_add(deref as usize) as *const *const u8
            ))?
        };
        let reason = maps::read(bpf_probe_read_kernel(
            base.wrapping_add(reason_off) as *const u32
        ))?;
        if known >= 0 {
            return Some((reason, known));
        }
        Some((
            reason,
            maps::read(bpf_probe_read_kernel(
                vcpu.wrapping_add(vcpu_id_off) as *const i32
            ))?,
        ))
    }
}
