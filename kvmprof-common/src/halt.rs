//! Halts laid out (issue 22): each time KVM keeps a vCPU's `hlt` in the kernel (the in-kernel
//! irqchip), `kvm_vcpu_halt` polls for a wake-up for up to the vCPU's `halt_poll_ns`, then
//! blocks until one comes, and the thread waits for a CPU to run again. `kvm:kvm_vcpu_wakeup`
//! ends each halt with its length and whether it blocked; the scheduler hooks say when the
//! thread left its CPU, was woken and ran again; `kvm:kvm_halt_poll_ns` moves the polling
//! window. From these, per halt: the time polled, whether the poll was attempted and won (no
//! block), the time blocked and the wake-up latency (woken → running), tallied in the kernel
//! per thread in a [`HaltTally`] (the `HALTS` hash).

/// Threads with a halt tally at once; userspace deletes the tallies of exited threads.
pub const THREADS: u32 = 1024;

/// Histogram buckets: four per power of two of nanoseconds (a bucket is at most a quarter of
/// its values wide), the last for 2^32 ns (4.3 s) and more.
pub const BUCKETS: usize = 4 + (32 - 8) * 4 + 1;

/// The bucket of `v`: [`crate::tally::bucket`]'s log-linear index, coarser.
#[inline(always)]
pub fn bucket(v: u64) -> usize {
    if v >= crate::tally::LIMIT_NS {
        return BUCKETS - 1;
    }
    let b = crate::tally::bucket(v);
    if b < 256 {
        b >> 6
    } else {
        4 + ((b - 256) >> 5)
    }
}

/// The lowest value of bucket `i` and the value that stands for it (its middle; the lowest
/// for the last, open-ended one).
pub fn bucket_value(i: usize) -> u64 {
    if i >= BUCKETS - 1 {
        return crate::tally::LIMIT_NS;
    }
    if i < 4 {
        return (i as u64) * 64 + 32;
    }
    let fine = 256 + (i - 4) * 32;
    let (low, width) = crate::tally::bucket_range(fine);
    low + width * 16
}

/// Phases of a halt, indices into [`HaltTally::ns`] and [`HaltTally::hist`].
pub mod phase {
    /// Polling for a wake-up before blocking (all of a halt whose poll won).
    pub const POLL: usize = 0;
    /// Blocked: off its CPU, asleep, until woken.
    pub const BLOCK: usize = 1;
    /// From the wake-up to running again: the wake-up latency.
    pub const WAKE: usize = 2;
    pub const COUNT: usize = 3;
    pub const NAMES: [&str; COUNT] = ["poll", "block", "wake"];
}

/// One thread's halts, written only by that thread (plain increments). Counters are u64,
/// histogram buckets u32 (userspace reads them long before they could wrap).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HaltTally {
    pub pid: u32,
    pub tid: u32,
    /// The vCPU as the exits name it: its fd in the VMM and its id (-1 unknown).
    pub vcpu_fd: i32,
    pub vcpu_id: i32,
    /// Halts (`kvm_vcpu_wakeup`s).
    pub halts: u64,
    /// Halts that polled (the vCPU's polling window was not 0), and those whose poll won:
    /// KVM's `halt_attempted_poll` and `halt_successful_poll`.
    pub polled: u64,
    pub poll_won: u64,
    /// Halts that blocked, and those KVM called invalid wake-ups (`halt_poll_invalid`).
    pub blocked: u64,
    pub invalid: u64,
    /// Halts whose block and wake-up the scheduler hooks saw (the others count as polling).
    pub split: u64,
    /// Whole halts, then the phases, summed.
    pub halt_ns: u64,
    pub ns: [u64; phase::COUNT],
    pub hist: [[u32; BUCKETS]; phase::COUNT],
}

impl Default for HaltTally {
    fn default() -> Self {
        HaltTally {
            pid: 0,
            tid: 0,
            vcpu_fd: -1,
            vcpu_id: -1,
            halts: 0,
            polled: 0,
            poll_won: 0,
            blocked: 0,
            invalid: 0,
            split: 0,
            halt_ns: 0,
            ns: [0; phase::COUNT],
            hist: [[0; BUCKETS]; phase::COUNT],
        }
    }
}

/// Indices of the `HALT_FIELDS` array: the offsets of the tracepoints' fields in this
/// kernel's format files, set by userspace before the programs are attached.
pub mod field {
    /// `kvm:kvm_vcpu_wakeup`: `ns`, `waited`, `valid`.
    pub const WAKEUP_NS: u32 = 0;
    pub const WAKEUP_WAITED: u32 = 1;
    pub const WAKEUP_VALID: u32 = 2;
    /// `kvm:kvm_halt_poll_ns`: `new`, `old`.
    pub const POLL_NEW: u32 = 3;
    pub const POLL_OLD: u32 = 4;
    pub const LEN: u32 = 5;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order_and_stand_near_it() {
        let mut last = 0;
        for v in [
            0u64,
            1,
            63,
            64,
            255,
            256,
            300,
            1000,
            10_000,
            1 << 20,
            (1 << 32) - 1,
        ] {
            let b = bucket(v);
            assert!(b >= last && b < BUCKETS, "{v}: {b}");
            last = b;
            let mid = bucket_value(b);
            // A quarter of a power of two wide: the middle is within 1/8 of v's scale.
            assert!(
                mid.abs_diff(v) <= v / 4 + 32,
                "{v}: bucket {b} stands for {mid}"
            );
        }
        assert_eq!(bucket(1 << 32), BUCKETS - 1);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }
}
