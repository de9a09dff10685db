//! KVM tracepoints, as classic tracepoints (fields at the offsets of the running kernel's
//! format files, `Config`) and, for the three that fire on every I/O exit, as raw
//! tracepoints too (arguments by position, without the classic tracepoint's copy of its
//! fields into a record). Userspace attaches a raw one only where the kernel's BTF
//! prototype (`btf_trace_<name>`) has the arguments at the positions read here.
use aya_ebpf::helpers::bpf_probe_read_kernel;
use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use kvmprof_common::{
    boundary, counter, fixed, flag, space, ThreadState, KVM_EXIT_IO, KVM_EXIT_IO_OUT,
    KVM_EXIT_MMIO, KVM_RUN_IO_OFF,
};

use super::field::field;
use crate::{exit, maps, maps::Thread};

/// `kvm:kvm_pio` `rw` value of a write (OUT).
const KVM_PIO_OUT: u32 = 1;
/// `kvm:kvm_mmio` types.
const MMIO_UNSATISFIED_READ: u32 = 0;
const MMIO_READ: u32 = 1;
const MMIO_WRITE: u32 = 2;

#[tracepoint(category = "kvm", name = "kvm_userspace_exit")]
pub fn kvm_userspace_exit(ctx: TracePointContext) -> u32 {
    try_userspace_exit(&ctx).unwrap_or(0)
}

/// `TP_PROTO(__u32 reason, int errno)`.
#[raw_tracepoint(tracepoint = "kvm_userspace_exit")]
pub fn raw_kvm_userspace_exit(ctx: RawTracePointContext) -> u32 {
    let (reason, errno) = (ctx.arg::<u64>(0) as u32, ctx.arg::<u64>(1) as i32);
    userspace_exit(reason, errno).unwrap_or(0)
}

fn try_userspace_exit(ctx: &TracePointContext) -> Option<u32> {
    // Offsets come from this kernel's format file for this tracepoint.
    let reason: u32 = field::<_, { fixed::UEXIT_REASON }>(ctx, maps::config!(uexit_reason_off))?;
    let errno: i32 = field::<_, { fixed::UEXIT_ERRNO }>(ctx, maps::config!(uexit_errno_off))?;
    userspace_exit(reason, errno)
}

fn userspace_exit(reason: u32, errno: i32) -> Option<u32> {
    // A port or MMIO exit to the VMM counts at its access event; any other is one exit.
    let (pid, tid, st) = untraced_exit_if(reason != KVM_EXIT_IO && reason != KVM_EXIT_MMIO)?;
    // Only inside the recording window (time read first, then the window).
    let ts = maps::window_now()?;
    // Only a port write still open can be taken for this return by mistake (see
    // `exit::same_exit`): kvm_run is read for that case alone.
    let write_open =
        st.open != 0 && st.flags & (flag::PIO | flag::WRITE) == flag::PIO | flag::WRITE;
    let io = if reason == KVM_EXIT_IO && st.run_ptr != 0 && write_open {
        // SAFETY: a probe read of the vCPU's kvm_run page; a bad address fails the helper.
        unsafe { bpf_probe_read_kernel((st.run_ptr as usize + KVM_RUN_IO_OFF) as *const u32) }
            .ok()
            .map(|w| exit::UserIo {
                write: w as u8 == KVM_EXIT_IO_OUT,
                size: (w >> 8) as u8,
                port: (w >> 16) as u16,
            })
    } else {
        None
    };
    exit::kvm_run_exit(pid, tid, st, maps::config!(boundary), ts, reason, errno, io);
    Some(0)
}

#[tracepoint(category = "kvm", name = "kvm_pio")]
pub fn kvm_pio(ctx: TracePointContext) -> u32 {
    try_pio(&ctx).unwrap_or(0)
}

/// `TP_PROTO(unsigned int rw, unsigned int port, unsigned int size, unsigned int count,
/// const void *data)`.
#[raw_tracepoint(tracepoint = "kvm_pio")]
pub fn raw_kvm_pio(ctx: RawTracePointContext) -> u32 {
    let (rw, port, size) = (
        ctx.arg::<u64>(0) as u32,
        ctx.arg::<u64>(1) as u32,
        ctx.arg::<u64>(2) as u32,
    );
    pio(rw, port, size).unwrap_or(0)
}

fn try_pio(ctx: &TracePointContext) -> Option<u32> {
    // Offsets come from this kernel's format file for this tracepoint.
    let (rw, port, size): (u32, u32, u32) = (
        field::<_, { fixed::PIO_RW }>(ctx, maps::config!(pio_rw_off))?,
        field::<_, { fixed::PIO_PORT }>(ctx, maps::config!(pio_port_off))?,
        field::<_, { fixed::PIO_SIZE }>(ctx, maps::config!(pio_size_off))?,
    );
    pio(rw, port, size)
}

fn pio(rw: u32, port: u32, size: u32) -> Option<u32> {
    // Under IDENT every port exit has exactly one `kvm_pio` (a read that went to the VMM,
    // on its completion): an untraced thread's exit counts here.
    let (pid, tid, st) = untraced_exit_if(true)?;
    let bound = maps::config!(boundary);
    let ts = access_now(st, bound)?;
    let write = rw == KVM_PIO_OUT;
    if st.await_pio_in != 0 {
        st.await_pio_in = 0;
        if !write {
            exit::pio_in_done(st, port as u64, size);
            return Some(0);
        }
        // Not the read's completion: the held exit goes without its port.
        exit::release_pending(st);
    }
    let flags = flag::PIO | if write { flag::WRITE } else { 0 };
    let io = exit::Io {
        flags,
        addr: port as u64,
        size,
    };
    exit::identify_io(pid, tid, st, bound, ts, io);
    Some(0)
}

/// The time of a port or MMIO access (for `exit::identify_io`), `None` outside the recording
/// window (time read first, then the window). Other than under IDENT, an access filed in an
/// open cycle needs neither: the cycle opened inside the window, and the time is not used
/// (0 then: one clock read fewer on every I/O exit).
#[inline(always)]
fn access_now(st: &ThreadState, bound: u32) -> Option<u64> {
    if bound == boundary::IDENT || st.open == 0 {
        maps::window_now()
    } else {
        Some(0)
    }
}

#[tracepoint(category = "kvm", name = "kvm_mmio")]
pub fn kvm_mmio(ctx: TracePointContext) -> u32 {
    try_mmio(&ctx).unwrap_or(0)
}

/// `TP_PROTO(int type, int len, u64 gpa, void *val)`.
#[raw_tracepoint(tracepoint = "kvm_mmio")]
pub fn raw_kvm_mmio(ctx: RawTracePointContext) -> u32 {
    let (ty, len, gpa) = (
        ctx.arg::<u64>(0) as u32,
        ctx.arg::<u64>(1) as u32,
        ctx.arg::<u64>(2),
    );
    mmio(ty, len, gpa).unwrap_or(0)
}

fn try_mmio(ctx: &TracePointContext) -> Option<u32> {
    // Offsets come from this kernel's format file for this tracepoint.
    let (ty, len, gpa): (u32, u32, u64) = (
        field::<_, { fixed::MMIO_TYPE }>(ctx, maps::config!(mmio_type_off))?,
        field::<_, { fixed::MMIO_LEN }>(ctx, maps::config!(mmio_len_off))?,
        field::<_, { fixed::MMIO_GPA }>(ctx, maps::config!(mmio_gpa_off))?,
    );
    mmio(ty, len, gpa)
}

fn mmio(ty: u32, len: u32, gpa: u64) -> Option<u32> {
    let (pid, tid, st) = match maps::thread(true)? {
        Thread::Traced(pid, tid, st) => (pid, tid, st),
        Thread::Untraced(st) => {
            // One exit per access, but a read that went to the VMM fires again, as a read,
            // on its completion.
            let completion = ty == MMIO_READ && st.await_mmio_read != 0;
            st.await_mmio_read = (ty == MMIO_UNSATISFIED_READ) as u32;
            untraced_exit(!completion);
            return None;
        }
    };
    let bound = maps::config!(boundary);
    let ts = access_now(st, bound)?;
    if st.await_mmio_read != 0 {
        st.await_mmio_read = 0;
        if ty == MMIO_READ {
            // The completion of the read that went to userspace, not a new exit.
            return Some(0);
        }
    }
    let flags = flag::MMIO | if ty == MMIO_WRITE { flag::WRITE } else { 0 };
    let io = exit::Io {
        flags,
        addr: gpa,
        size: len,
    };
    exit::identify_io(pid, tid, st, bound, ts, io);
    st.mmio_unsatisfied = (ty == MMIO_UNSATISFIED_READ) as u32;
    Some(0)
}

#[tracepoint(category = "kvm", name = "kvm_exit")]
pub fn kvm_exit(ctx: TracePointContext) -> u32 {
    try_exit(&ctx).unwrap_or(0)
}

fn try_exit(ctx: &TracePointContext) -> Option<u32> {
    let (_, _, st) = maps::current(false)?;
    // Only inside the recording window (time read first, then the window).
    let ts = maps::window_now()?;
    let offsets = (
        maps::config!(kvm_exit_reason_off) as usize,
        maps::config!(kvm_exit_isa_off) as usize,
        maps::config!(kvm_exit_vcpu_off) as usize,
    );
    // SAFETY: offsets come from this kernel's format file for this tracepoint (whose
    // layout varies between kernels, so it has no fixed fast path).
    let (reason, isa, vcpu): (u32, u32, u32) = unsafe {
        (
            maps::read(ctx.read_at(offsets.0))?,
            maps::read(ctx.read_at(offsets.1))?,
            maps::read(ctx.read_at(offsets.2))?,
        )
    };
    let sp = space::of_isa(isa);
    exit::identify_reason(
        st,
        maps::config!(boundary),
        ts,
        sp as u32,
        reason,
        vcpu as i32,
    );
    Some(0)
}

#[tracepoint(category = "kvm", name = "kvm_entry")]
pub fn kvm_entry(_ctx: TracePointContext) -> u32 {
    try_entry().unwrap_or(0)
}

/// No argument read: the same program serves `TP_PROTO(struct kvm_vcpu *vcpu)` (6.1) and
/// `(vcpu, bool force_immediate_exit)` (6.9 on). The default level's cycle boundary on VMX and
/// SVM (`Plan::at_default_level`): no trampoline, no copy of the record.
#[raw_tracepoint(tracepoint = "kvm_entry")]
pub fn raw_kvm_entry(_ctx: RawTracePointContext) -> u32 {
    try_entry().unwrap_or(0)
}

fn try_entry() -> Option<u32> {
    if maps::config!(boundary) != boundary::KVM_ENTRY {
        return Some(0);
    }
    let (pid, tid, st) = maps::current_counting(false)?;
    // Only inside the recording window (time read first, then the window).
    let ts = maps::window_now()?;
    exit::start_cycle(pid, tid, st, ts);
    Some(0)
}

/// The current thread if traced; for an untraced one, counts an exit when `is_exit` (under
/// IDENT, where the KVM tracepoints mark the exits; other boundaries count at the hook that
/// opens a cycle).
#[inline(always)]
fn untraced_exit_if(is_exit: bool) -> Option<(u32, u32, &'static mut ThreadState)> {
    match maps::thread(true)? {
        Thread::Traced(pid, tid, st) => Some((pid, tid, st)),
        Thread::Untraced(_) => {
            untraced_exit(is_exit);
            None
        }
    }
}

#[inline(always)]
fn untraced_exit(is_exit: bool) {
    if is_exit && maps::config!(boundary) == boundary::IDENT {
        maps::bump(counter::UNTRACED_EXITS);
    }
}
