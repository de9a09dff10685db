//! `--detail` (`kvmprof_common::detail`): the MSR index, CPUID leaf, hypercall number (KVM's,
//! Xen's or Hyper-V's) or guest page of the open exit, from the KVM tracepoint its handler
//! fires. Classic tracepoints, fields at the offsets of this kernel's format files
//! (`DETAIL_FIELDS`): they run only on the exits they name, and only when asked for, so their
//! record copy costs nothing on the others.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use kvmprof_common::{
    detail::{self, field, RipKey},
    flag, space,
};

use crate::{exit, maps};

/// `TP_PROTO(unsigned write, u32 ecx, u64 data, bool exception)`, in `kvm_emulate_rdmsr`,
/// `kvm_emulate_wrmsr` and the WRMSR fast path.
#[tracepoint(category = "kvm", name = "kvm_msr")]
pub fn detail_msr(ctx: TracePointContext) -> u32 {
    try_msr(&ctx).unwrap_or(0)
}

fn try_msr(ctx: &TracePointContext) -> Option<u32> {
    file(|| {
        let write: u32 = read_field(ctx, field::MSR_WRITE)?;
        let ecx: u32 = read_field(ctx, field::MSR_ECX)?;
        let dir = if write != 0 { flag::WRITE } else { 0 };
        Some((flag::MSR | dir, ecx as u64))
    })
}

/// `TP_PROTO(unsigned int function, unsigned int index, ...)`, in `kvm_emulate_cpuid`.
#[tracepoint(category = "kvm", name = "kvm_cpuid")]
pub fn detail_cpuid(ctx: TracePointContext) -> u32 {
    try_cpuid(&ctx).unwrap_or(0)
}

fn try_cpuid(ctx: &TracePointContext) -> Option<u32> {
    file(|| {
        let leaf: u32 = read_field(ctx, field::CPUID_FUNCTION)?;
        let subleaf: u32 = read_field(ctx, field::CPUID_INDEX)?;
        Some((flag::CPUID, detail::cpuid_key(leaf, subleaf)))
    })
}

/// `TP_PROTO(unsigned long nr, unsigned long a0, ...)`, in KVM's hypercall emulation.
#[tracepoint(category = "kvm", name = "kvm_hypercall")]
pub fn detail_hypercall(ctx: TracePointContext) -> u32 {
    try_hypercall(&ctx).unwrap_or(0)
}

fn try_hypercall(ctx: &TracePointContext) -> Option<u32> {
    file(|| {
        let nr: u64 = read_field(ctx, field::HYPERCALL_NR)?;
        Some((flag::HYPERCALL, nr))
    })
}

/// `TP_PROTO(u8 cpl, unsigned long nr, ...)` (6.12; no `cpl` before), in `kvm_xen_hypercall`:
/// a Xen guest's hypercall, which KVM handles instead of its own once the VMM asked it to.
#[tracepoint(category = "kvm", name = "kvm_xen_hypercall")]
pub fn detail_xen_hypercall(ctx: TracePointContext) -> u32 {
    try_xen_hypercall(&ctx).unwrap_or(0)
}

fn try_xen_hypercall(ctx: &TracePointContext) -> Option<u32> {
    file(|| {
        let nr: u64 = read_field(ctx, field::XEN_HYPERCALL_NR)?;
        Some((flag::HYPERCALL | flag::XEN, nr))
    })
}

/// `TP_PROTO(u16 code, bool fast, ...)`, in `kvm_hv_hypercall`: a Hyper-V guest's hypercall
/// (Windows, or Linux with Hyper-V enlightenments), which KVM handles instead of its own.
#[tracepoint(category = "kvm", name = "kvm_hv_hypercall")]
pub fn detail_hv_hypercall(ctx: TracePointContext) -> u32 {
    try_hv_hypercall(&ctx).unwrap_or(0)
}

fn try_hv_hypercall(ctx: &TracePointContext) -> Option<u32> {
    file(|| {
        let code: u16 = read_field(ctx, field::HV_HYPERCALL_CODE)?;
        Some((flag::HYPERCALL | flag::HYPERV, code as u64))
    })
}

/// `TP_PROTO(unsigned long fault_address, unsigned int error_code)` (6.1), `(struct kvm_vcpu
/// *vcpu, u64 fault_address, u64 error_code)` (6.12), in the handlers of EPT violations and
/// NPFs (and of guest #PFs under shadow paging): the exit's guest page, a fault-in unless
/// `kvm:kvm_mmio` then names an MMIO access (`kvmprof_common::detail`).
#[tracepoint(category = "kvm", name = "kvm_page_fault")]
pub fn detail_page_fault(ctx: TracePointContext) -> u32 {
    try_page_fault(&ctx).unwrap_or(0)
}

fn try_page_fault(ctx: &TracePointContext) -> Option<u32> {
    file(|| {
        let gpa: u64 = read_field(ctx, field::PAGE_FAULT_ADDRESS)?;
        Some((flag::NPF, detail::page(gpa)))
    })
}

/// `kvm:kvm_exit`, beside the exit's own hook: counts the exit by the guest RIP the
/// tracepoint read (`kvmprof_common::detail::RipKey`).
#[tracepoint(category = "kvm", name = "kvm_exit")]
pub fn detail_rip(ctx: TracePointContext) -> u32 {
    try_rip(&ctx).unwrap_or(0)
}

fn try_rip(ctx: &TracePointContext) -> Option<u32> {
    let (pid, tid, _) = maps::current(false)?;
    maps::window_now()?;
    let isa: u32 = read_field(ctx, field::EXIT_ISA)?;
    let key = RipKey {
        pid,
        tid,
        space: space::of_isa(isa) as u32,
        reason: read_field(ctx, field::EXIT_REASON)?,
        rip: read_field(ctx, field::EXIT_RIP)?,
    };
    // Keyed by thread: this CPU alone writes the entry now.
    if !maps::count_in(&maps::RIPS, &key, &1) {
        maps::count_in(&maps::RIPS_OTHER, &RipKey { rip: 0, ..key }, &1);
    }
    Some(0)
}

/// Files the calling thread's open exit under the flags and key `read` takes from the
/// tracepoint's record; a thread kvmprof does not follow has nothing read.
#[inline(always)]
fn file(read: impl FnOnce() -> Option<(u32, u64)>) -> Option<u32> {
    let (_, _, st) = maps::current(false)?;
    let (flags, key) = read()?;
    exit::identify_detail(st, maps::config!(boundary), flags, key);
    Some(0)
}

#[inline(always)]
fn read_field<T: Copy>(ctx: &TracePointContext, f: u32) -> Option<T> {
    super::field::listed(ctx, &maps::DETAIL_FIELDS, f)
}
