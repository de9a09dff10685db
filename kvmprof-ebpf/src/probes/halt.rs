//! Halts laid out (`kvmprof_common::halt`): `kvm:kvm_vcpu_wakeup` ends each halt KVM kept in
//! the kernel; the thread's last time off its CPU (the scheduler hooks) splits it into poll,
//! block and wake-up; `kvm:kvm_halt_poll_ns` says whether it polled at all.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use kvmprof_common::{
    halt::{self, field, phase, HaltTally},
    ThreadState,
};

use crate::maps;

/// `kvm:kvm_halt_poll_ns` fires inside a halt, in the vCPU's thread, when KVM grows or
/// shrinks its polling window: the halt it fires in polled with the old value.
#[tracepoint(category = "kvm", name = "kvm_halt_poll_ns")]
pub fn halt_poll_moved(ctx: TracePointContext) -> u32 {
    try_halt_poll_moved(&ctx).unwrap_or(0)
}

fn try_halt_poll_moved(ctx: &TracePointContext) -> Option<u32> {
    let (_, _, st) = maps::current(false)?;
    let new: u32 = read_field(ctx, field::POLL_NEW)?;
    let old: u32 = read_field(ctx, field::POLL_OLD)?;
    if st.halt_poll_moved == 0 {
        st.halt_poll_old = old;
        st.halt_poll_moved = 1;
    }
    st.halt_poll_ns = new;
    Some(0)
}

/// `kvm:kvm_vcpu_wakeup`: `TP_PROTO(__u64 ns, bool waited, bool valid)`, at the end of
/// `kvm_vcpu_halt`, in the vCPU's thread.
#[tracepoint(category = "kvm", name = "kvm_vcpu_wakeup")]
pub fn halt_end(ctx: TracePointContext) -> u32 {
    try_halt_end(&ctx).unwrap_or(0)
}

fn try_halt_end(ctx: &TracePointContext) -> Option<u32> {
    let (pid, tid, st) = maps::current(false)?;
    // Only inside the recording window (time read first, then the window).
    let ts = maps::window_now()?;
    let ns: u64 = read_field(ctx, field::WAKEUP_NS)?;
    let waited = read_field::<u8>(ctx, field::WAKEUP_WAITED)? != 0;
    let valid = read_field::<u8>(ctx, field::WAKEUP_VALID)? != 0;
    // KVM polls when the vCPU's window is not 0 (`do_halt_poll`); a move inside this halt
    // came after its poll.
    let window = if st.halt_poll_moved != 0 {
        st.halt_poll_old
    } else {
        st.halt_poll_ns
    };
    st.halt_poll_moved = 0;
    let t = tally_of(pid, tid, st)?;
    t.halts += 1;
    t.halt_ns += ns;
    let polled = window != 0;
    if polled {
        t.polled += 1;
        if !waited {
            t.poll_won += 1;
        }
    }
    if waited {
        t.blocked += 1;
    }
    if !valid {
        t.invalid += 1;
    }
    let Some([poll, block, wake]) = split(st, ts, ns, waited) else {
        return Some(0);
    };
    t.split += 1;
    if polled {
        add(t, phase::POLL, poll);
    }
    if waited {
        add(t, phase::BLOCK, block);
        add(t, phase::WAKE, wake);
    }
    Some(0)
}

/// The halt that ended at `ts` after `ns` as (poll, block, wake-up): all polling when it did
/// not block; when it did, the thread's last time off its CPU must lie inside it, asleep
/// (it left its CPU once polling stopped, was woken, and ran again just before `ts`). `None`
/// when the scheduler hooks did not see that (not attached, or the wake-up came before the
/// thread could leave its CPU).
#[inline(always)]
fn split(st: &ThreadState, ts: u64, ns: u64, waited: bool) -> Option<[u64; 3]> {
    if !waited {
        return Some([ns, 0, 0]);
    }
    let start = ts.saturating_sub(ns);
    let (off, woken, on) = (st.last_off_ns, st.last_woken_ns, st.last_on_ns);
    if off < start || on < off || on > ts || st.last_off_runnable != 0 {
        return None;
    }
    Some(if woken >= off && woken <= on {
        [off - start, woken - off, on - woken]
    } else {
        [off - start, on - off, 0]
    })
}

#[inline(always)]
fn add(t: &mut HaltTally, p: usize, v: u64) {
    if let Some(sum) = t.ns.get_mut(p) {
        *sum += v;
    }
    let i = halt::bucket(v);
    // Through memory: LLVM otherwise checks the bound on a register it derived the index
    // from, which the verifier cannot carry over ("unbounded memory access").
    // SAFETY: a read of a local.
    let i = unsafe { core::ptr::read_volatile(&i) };
    if let Some(b) = t.hist.get_mut(p).and_then(|h| h.get_mut(i)) {
        *b += 1;
    }
}

/// This thread's halt tally, made on its first halt.
#[inline(always)]
fn tally_of(pid: u32, tid: u32, st: &ThreadState) -> Option<&'static mut HaltTally> {
    let tag = st.tag;
    let t = match maps::HALTS.get_ptr_mut(tag) {
        Some(t) => t,
        None => {
            let zero = maps::HALT_ZERO.get_ptr(0)?;
            // SAFETY: a per-CPU value nobody writes. By reference: by value it would be a
            // 1.3 KB copy on the 512-byte stack.
            #[allow(clippy::needless_borrows_for_generic_args)]
            let inserted = maps::HALTS.insert(tag, unsafe { &*zero }, 0);
            if inserted.is_err() {
                maps::bump(kvmprof_common::counter::NO_STATE);
                return None;
            }
            maps::HALTS.get_ptr_mut(tag)?
        }
    };
    // SAFETY: map value pointer valid for this run; only this thread writes its tally.
    let t = unsafe { &mut *t };
    t.pid = pid;
    t.tid = tid;
    t.vcpu_fd = st.vcpu_fd;
    t.vcpu_id = st.vcpu_id;
    Some(t)
}

/// A field of the record at the offset userspace found in this kernel's format file.
#[inline(always)]
fn read_field<T: Copy>(ctx: &TracePointContext, f: u32) -> Option<T> {
    super::field::listed(ctx, &maps::HALT_FIELDS, f)
}
