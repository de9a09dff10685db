//! Rare anomalies, logged through aya-log when userspace asks (`--debug-bpf`, which sets
//! `Config::debug_bpf`): a refused read, a stage return or a KVM event outside any exit
//! cycle, no room for a thread's state, records lost to a full ring. Each is also counted
//! (`kvmprof_common::counter`) and shown in the report whether logged or not; the log says
//! which thread and what. The flag is a load-time constant, so without it the verifier
//! drops every call here: no instructions to verify, nothing on the hot path.

/// A `warn!` line when logging is on. In the host build (unit tests of the state machine)
/// there is no kernel to log to.
#[cfg(target_arch = "bpf")]
macro_rules! log {
    ($($arg:tt)*) => {
        if crate::maps::config!(debug_bpf) != 0 {
            aya_log_ebpf::warn!(&(), $($arg)*);
        }
    };
}
#[cfg(not(target_arch = "bpf"))]
macro_rules! log {
    ($($arg:tt)*) => {};
}

/// The kernel refused a read the event needed (`err`: the helper's error code).
#[inline(always)]
pub fn read_refused(err: i64) {
    let _ = err;
    log!("a kernel read was refused ({}): event dropped", err);
}

/// Thread `tid` has no state slot and the spill hash is full.
#[inline(always)]
pub fn no_state(tid: u32) {
    let _ = tid;
    log!(
        "tid {}: no room for the thread's state: its events are dropped",
        tid
    );
}

/// An event of thread `tid` that belongs in an exit cycle came outside one (`what`: the
/// event).
#[inline(always)]
pub fn outside_cycle(tid: u32, what: &'static str) {
    let _ = (tid, what);
    log!("tid {}: {} outside any exit cycle", tid, what);
}

/// Stage `stage` of thread `tid` returned without its entry in this cycle.
#[inline(always)]
pub fn unmatched_return(tid: u32, stage: usize) {
    let _ = (tid, stage);
    log!(
        "tid {}: stage {} returned without its entry",
        tid,
        stage as u32
    );
}

/// `n` records were lost: the ring buffer was full. Called from the kernel-only sink, so
/// the host build (unit tests) never calls it.
#[cfg_attr(not(target_arch = "bpf"), expect(dead_code))]
#[inline(always)]
pub fn lost(n: u32) {
    let _ = n;
    log!("{} records lost: the ring buffer was full", n);
}
