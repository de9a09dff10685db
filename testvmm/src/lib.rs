//! A tiny VMM on /dev/kvm whose guests make a known number of VM exits of
//! each kind, so a profiler's numbers can be checked exactly.
//!
//! Each vCPU runs in a thread named like QEMU's ("CPU 0/KVM", ...) and runs
//! rounds of a real-mode guest that, in this order:
//! 1. `out`s to [`PIO_USER_PORT`] `pio_user` times (KVM_EXIT_IO, out),
//! 2. `out`s to its own port `PIO_KERNEL_PORT_BASE + vcpu` `pio_kernel` times;
//!    an ioeventfd there keeps these in the kernel, and its counter proves them,
//! 3. writes a byte to [`MMIO_ADDR`] (or, with `mmio_span`, to each address of the span
//!    from it in turn), outside guest RAM, `mmio_user` times (KVM_EXIT_MMIO),
//! 4. `in`s from [`PIO_IN_PORT`] `pio_in` times (KVM_EXIT_IO, in),
//! 5. runs the device loop `pio_device` times: an `in` the VMM answers
//!    ([`PIO_MIXED_IN_PORT`]), an in-kernel read and write of the PIC's ELCR
//!    ([`PIO_DEVICE_PORTS`]), an `out` to the VMM ([`PIO_MIXED_OUT_PORT`]), and the
//!    other ELCR port's read and write: in-kernel port I/O right after each kind of
//!    userspace exit,
//! 6. on vCPU 0 only, `hlt`s `halts` times with interrupts enabled: KVM's in-kernel irqchip
//!    keeps each in the kernel (the vCPU blocks in KVM) until the VMM's waker thread pulses
//!    IRQ0 of the in-kernel PIC, every `halt_tick_us`. Only vCPU 0 halts because only it
//!    receives the PIC's interrupts (KVM routes ExtINT to the boot vCPU's LINT0 alone),
//! 7. `hlt`s (KVM_EXIT_HLT): one round done.
//!
//! Between steps 4 and 5 the detail section makes exits KVM handles entirely in the kernel,
//! which the VMM never sees, for profilers' per-reason detail: `msr_read` `rdmsr`s of
//! [`MSR_READ`], `msr_write` `wrmsr`s of [`MSR_WRITE`], `cpuid` `cpuid`s of each of
//! [`CPUID_LEAVES`] and `hypercall` hypercalls [`HYPERCALL_NR`] (`vmcall` on Intel VMX,
//! `vmmcall` on AMD SVM; refused on KVM's PVM backend, which cannot run them from a
//! real-mode guest). The counts report what the guest was told to make.
//!
//! The VMM creates KVM's in-kernel irqchip only for the device loop, whose ports it
//! answers, and for the halts; KVM then keeps `hlt` in the kernel, so such rounds end with
//! an `out` to [`PIO_DONE_PORT`] instead (on every vCPU of the VM).
//!
//! Stopping a vCPU sends it [`kick_signal`] (SIGRTMIN), for which `run`
//! installs a no-op handler in the calling process.

mod backend;
#[cfg(feature = "cli")]
pub mod cli;
mod counts;
mod exitlog;
mod guest;
mod pace;
mod ready;
mod run;
mod vcpu;
mod vm;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Result;
use serde::{Deserialize, Serialize};

pub use counts::{Counts, ExitCounts, Ports, VcpuCounts};
pub use exitlog::{Call, Outcome};
pub use guest::{
    npf_pages, Abi as HypercallAbi, CODE_ADDR, CPUID_LEAVES, CPUID_RIPS, DETAIL_COUNTS_ADDR,
    HALT_RIP, HLT_RIP, HV_NOTIFY_LONG_SPIN_WAIT, HYPERCALL_NR, HYPERCALL_RIP, MAX_HALTS,
    MAX_NPF_PAGES, MAX_VCPUS, MMIO_ADDR, MMIO_RIP, MSR_READ, MSR_WRITE, MSR_WRITE_VALUE, NPF_ADDR,
    NPF_RIP, PIO_DEVICE_PORTS, PIO_DEVICE_RIPS, PIO_DONE_PORT, PIO_DONE_RIP, PIO_IN_PORT,
    PIO_IN_RIP, PIO_IN_VALUE, PIO_KERNEL_PORT_BASE, PIO_KERNEL_RIP, PIO_MIXED_IN_PORT,
    PIO_MIXED_IN_RIP, PIO_MIXED_OUT_PORT, PIO_MIXED_OUT_RIP, PIO_USER_PORT, PIO_USER_RIP,
    RDMSR_RIP, VMCALL, VMMCALL, WRMSR_RIP, XEN_SCHED_OP,
};
pub use ready::{Ready, ReadyVcpu};
pub use vcpu::kick_signal;

/// What the guest does. Counts are per vCPU and per round, each at most
/// `u32::MAX` (the guest loops on 32-bit registers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Workload {
    /// 1..=[`MAX_VCPUS`].
    pub vcpus: u32,
    /// `out`s to [`PIO_USER_PORT`], each a KVM_EXIT_IO to userspace.
    pub pio_user: u64,
    /// `out`s to the vCPU's ioeventfd port, each handled in the kernel.
    pub pio_kernel: u64,
    /// Byte writes to [`MMIO_ADDR`], each a KVM_EXIT_MMIO to userspace.
    pub mmio_user: u64,
    /// The MMIO writes cycle through this many addresses from [`MMIO_ADDR`]: a power of two
    /// up to 65536 (1: all on [`MMIO_ADDR`]). Busy address ranges, as a real guest's.
    pub mmio_span: u32,
    /// `in`s from [`PIO_IN_PORT`], each a KVM_EXIT_IO to userspace; the VMM
    /// answers [`PIO_IN_VALUE`].
    pub pio_in: u64,
    /// Iterations of the device loop: each 2 userspace exits and 4 in-kernel port accesses
    /// that KVM's in-kernel PIC answers (the VMM then creates the in-kernel irqchip).
    pub pio_device: u64,
    /// `hlt`s with interrupts enabled, by vCPU 0 only (at most [`MAX_HALTS`]), each kept in
    /// the kernel by KVM's in-kernel irqchip (the VMM then creates it) until an interrupt
    /// from the VMM wakes it: they are not exits the VMM sees (see [`ExitCounts::halts`]).
    /// A round takes about `halts` × `halt_tick_us`.
    pub halts: u64,
    /// `rdmsr`s of [`MSR_READ`], each an exit KVM handles in the kernel (see
    /// [`ExitCounts::msr_read`]).
    pub msr_read: u64,
    /// `wrmsr`s of [`MSR_WRITE`] (value [`MSR_WRITE_VALUE`]), each handled in the kernel.
    pub msr_write: u64,
    /// Iterations of the `cpuid` loop: one `cpuid` of each of [`CPUID_LEAVES`] per
    /// iteration, each handled in the kernel.
    pub cpuid: u64,
    /// Hypercalls [`HYPERCALL_NR`], each answered by KVM in the kernel (-KVM_ENOSYS). Needs
    /// KVM on Intel VMX or AMD SVM: refused elsewhere (PVM) before the guest starts.
    pub hypercall: u64,
    /// Whose ABI the hypercalls go by: KVM's, Xen's ([`XEN_SCHED_OP`], KVM asked to handle
    /// Xen hypercalls; refused by kernels built without CONFIG_KVM_XEN) or Hyper-V's
    /// ([`HV_NOTIFY_LONG_SPIN_WAIT`], the vCPUs given Hyper-V's CPUID signature; the guest
    /// in protected mode, so without halts or fresh pages).
    pub hypercall_abi: HypercallAbi,
    /// Fresh guest pages (from [`NPF_ADDR`], at most [`MAX_NPF_PAGES`]) that vCPU 0 writes
    /// once each before its first round: on Intel VMX and AMD SVM each is one EPT violation or
    /// NPF that faults the page in (see [`ExitCounts::npf_pages`]).
    pub npf_pages: u64,
    /// With `halts`, the VMM pulses the PIC's IRQ0 this often (µs, at least 1), from the
    /// guest's start to the end of the run.
    pub halt_tick_us: u64,
    /// The VMM takes this long to answer each `in` (a slow device): a known number of
    /// exits with a long VMM round trip, for profilers' slow-exit listings.
    pub pio_in_delay_ms: u64,
    /// Caps each vCPU's average exits per second (all kinds, `hlt` included).
    /// The VMM can only sleep at userspace exits, so in-kernel exits still come
    /// in bursts of up to `pio_kernel`, followed by a long enough sleep.
    pub rate: Option<u64>,
    /// Sleep between creating the VM and vCPU threads and the first KVM_RUN,
    /// so a profiler can attach first.
    pub start_delay_ms: u64,
    /// Keep the VM this long after the guest stopped, before it is destroyed, so that a
    /// reader of KVM's per-VM counters (debugfs, gone with the VM) sees their final values.
    pub end_delay_ms: u64,
    /// Run rounds until stopped (or `duration_ms`), instead of one round.
    pub forever: bool,
    /// Stop the guest this long after it starts, even mid-round.
    pub duration_ms: Option<u64>,
    /// Once all vCPU threads exist, and before the start delay, atomically
    /// write a [`Ready`] JSON line here.
    pub ready_file: Option<PathBuf>,
    /// When the run ends, write one line per KVM_RUN call here: vCPU, CLOCK_MONOTONIC ns
    /// at the call and at its return, and how it ended (see `exitlog`).
    pub exit_log: Option<PathBuf>,
}

impl Workload {
    /// One vCPU and no exit of any kind: the base that `const` workloads (the demo's,
    /// xtask's) complete with `..Workload::IDLE`, where `Default::default()` cannot be used.
    pub const IDLE: Workload = Workload {
        vcpus: 1,
        pio_user: 0,
        pio_kernel: 0,
        mmio_user: 0,
        mmio_span: 1,
        pio_in: 0,
        pio_device: 0,
        halts: 0,
        msr_read: 0,
        msr_write: 0,
        cpuid: 0,
        hypercall: 0,
        hypercall_abi: HypercallAbi::Kvm,
        npf_pages: 0,
        halt_tick_us: 1000,
        pio_in_delay_ms: 0,
        rate: None,
        start_delay_ms: 0,
        end_delay_ms: 0,
        forever: false,
        duration_ms: None,
        ready_file: None,
        exit_log: None,
    };
}

impl Default for Workload {
    fn default() -> Self {
        Workload::IDLE
    }
}

/// Asks a running [`run_until`] to stop its vCPUs and return their counts.
#[derive(Debug, Clone, Default)]
pub struct StopHandle(Arc<AtomicBool>);

impl StopHandle {
    pub fn new() -> StopHandle {
        StopHandle::default()
    }

    /// Safe to call from any thread, any number of times.
    pub fn request(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_requested(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Runs `w` to completion (or for `w.duration_ms`; a `forever` workload
/// without a duration never returns: use [`run_until`]).
pub fn run(w: &Workload) -> Result<Counts> {
    run_until(w, &StopHandle::new())
}

/// Like [`run`], but returns early, with the counts so far, once `stop` is
/// requested.
pub fn run_until(w: &Workload, stop: &StopHandle) -> Result<Counts> {
    run::run(w, stop)
}
