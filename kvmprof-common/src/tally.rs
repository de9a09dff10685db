//! Exits tallied in the kernel instead of sent one by one (issue 9): for each kind of exit
//! handled in the kernel (thread, vCPU, reason, access, port), an exact count, exact sums and
//! maxima, and log-linear histograms of its stages. Userspace reads them each tick into the
//! same `hdrhistogram`s, data file, `top` and `serve` that records feed.
//!
//! Measured on the PVM host: writing each exit to the ring buffer cost ~23 ns of BPF run
//! time per exit (cold ring memory, read on the other CPU); a bucket increment in memory the
//! vCPU thread keeps touching costs a few. Userspace exits are tallied once whole (after the
//! VMM's round trip), like the others.
//!
//! An exit is sent as a record instead when a stage is at or over [`LIMIT_NS`] (outside the
//! histograms' range), over a `--slow` threshold, when `--exits` asks for every exit, or when
//! the slots or rows below are used up: it is then counted exactly all the same.
//!
//! Layout, in three maps: `TALLY_KEYS` (hash: [`TallyKey`] → slot), `TALLY_META` (array of
//! [`TallyMeta`] by slot) and `TALLY_ROWS` (array of [`Row`]s, one per measured stage of a
//! slot, given out as first needed). Free slots and rows wait in two queue maps
//! (`TALLY_FREE_SLOTS`, `TALLY_FREE_ROWS`), filled by userspace at load: a pop hands each to
//! one CPU (Rust's `core` has no atomic add for the BPF target). Slots are keyed by thread,
//! so one thread writes each slot: plain increments, no atomics. Once a thread has exited
//! and userspace has read its slots one last time, userspace zeroes them, removes their
//! keys and addresses, and pushes the slots and rows back (`kvmprof/src/live/tally.rs`).
//!
//! MMIO addresses are not part of a kind: a guest touches as many as it likes (one SeaBIOS
//! boot writes ~20000 distinct VGA/BIOS bytes), which would use up the slots and send the
//! rest one by one. They are counted beside the slot instead, in the `TALLY_ADDRS` hash
//! ([`AddrKey`] → exits): the first [`ADDRS`] (slot, address) pairs seen get exact counts,
//! and the MMIO exits of a slot whose address found the hash full are counted in its
//! [`TallyMeta::other`]. So a slot's address counts plus its `other` are its exits.
//! `--detail`'s guest pages of EPT violations and NPFs ([`crate::flag::NPF`]) are counted
//! the same way, for the same reason ([`crate::detail`]).

use crate::{ExitRecord, STAGES};

/// Values below this are their own bucket (exact).
const LINEAR: u64 = 256;
/// Sub-buckets per power of two above [`LINEAR`]: a bucket is at most 1/128 of its values
/// wide, so the middle of a bucket is within 0.4 % of every value in it.
const SUB_BITS: u32 = 7;
/// Durations of 2^32 ns (4.3 s) and more are not tallied: such exits go as records.
pub const LIMIT_NS: u64 = 1 << 32;
/// Buckets of one row: 256 exact, then 128 for each power of two from 2^8 to 2^31.
pub const BUCKETS: usize = LINEAR as usize + (32 - 8) * (1 << SUB_BITS);

/// Tallied exit kinds (slots) and stage histograms (rows) per recording.
pub const SLOTS: u32 = 512;
pub const ROWS: u32 = 1024;
/// (slot, MMIO address or guest page) pairs with a count of their own, per recording.
pub const ADDRS: u32 = 8192;

/// No row yet for this stage of a slot (a row index is stored +1).
pub const NO_ROW: u32 = 0;

/// The histogram of one stage of one slot. Counters are u32 and wrap: userspace reads
/// deltas every tick, far more often than a bucket can wrap (2^32 exits).
pub type Row = [u32; BUCKETS];

/// The bucket of `v` (`v < LIMIT_NS`): an HDR-style log-linear index, written without
/// loops or `clz` (the BPF instruction set has none).
#[inline(always)]
pub fn bucket(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    // floor(log2(v)) (8 <= e <= 31 here): two halving steps bring v below 2^8, a table does
    // the rest. Each step's test is arithmetic, not a branch: `(t + m) >> k` is 1 exactly
    // when `0 < t < 2^k` (`m` = 2^k - 1). With branches the verifier walked 32 paths per
    // stage of every exit tallied, most of the work of loading the programs (seconds on an
    // emulated CPU); three more halving steps instead of the table cost ~50 instructions
    // per exit on the vCPU thread (Bochs, `docs/benchmarks.md`).
    let mut x = v;
    let b = ((x >> 16) + 0xffff) >> 16;
    let mut e = (b as u32) << 4;
    x >>= b << 4;
    let b = ((x >> 8) + 0xff) >> 8;
    e += (b as u32) << 3;
    x >>= b << 3;
    e += LOG2[(x & 0xff) as usize] as u32;
    let sub = (v >> (e - SUB_BITS)) as usize - (1 << SUB_BITS);
    LINEAR as usize + (e as usize - 8) * (1 << SUB_BITS) + sub
}

/// floor(log2(i)) for 1 <= i < 256 (0 for 0): the last step of [`bucket`]. A static, so the
/// eBPF build reads it from its read-only data rather than building it on the stack.
static LOG2: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 2;
    while i < 256 {
        t[i] = t[i / 2] + 1;
        i += 1;
    }
    t
};

/// The lowest value of bucket `i` and its width.
pub fn bucket_range(i: usize) -> (u64, u64) {
    if i < LINEAR as usize {
        return (i as u64, 1);
    }
    let above = i - LINEAR as usize;
    let e = 8 + (above >> SUB_BITS) as u32;
    let sub = (above & ((1 << SUB_BITS) - 1)) as u64 + (1 << SUB_BITS);
    let shift = e - SUB_BITS;
    (sub << shift, 1 << shift)
}

/// The value that stands for bucket `i` (its middle).
pub fn bucket_value(i: usize) -> u64 {
    let (low, width) = bucket_range(i);
    low + width / 2
}

/// What makes exits of one kind (besides the thread, which owns the slot): the fields of an
/// [`ExitRecord`] other than its time, stage durations and MMIO address (see the module).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Kind {
    pub vcpu_fd: i32,
    pub vcpu_id: i32,
    pub space: u32,
    pub reason: u32,
    pub flags: u32,
    pub io_size: u32,
    pub io_addr: u64,
    pub user_reason: u32,
    pub errno: i32,
}

impl Kind {
    /// The kind of a whole exit record.
    #[inline(always)]
    pub fn of(r: &ExitRecord) -> Kind {
        Kind {
            io_addr: port_of(r.flags, r.io_addr),
            vcpu_fd: r.vcpu_fd,
            vcpu_id: r.vcpu_id,
            space: r.space as u32,
            reason: r.reason,
            flags: r.flags,
            io_size: r.io_size as u32,
            user_reason: r.user_reason,
            errno: r.errno,
        }
    }

    /// Writes the kind into `r`'s fields (the inverse of [`Kind::of`], but for an MMIO
    /// address).
    #[inline(always)]
    pub fn write_to(&self, r: &mut ExitRecord) {
        r.vcpu_fd = self.vcpu_fd;
        r.vcpu_id = self.vcpu_id;
        r.space = self.space as u8;
        r.reason = self.reason;
        r.flags = self.flags;
        r.io_size = self.io_size as u8;
        r.io_addr = self.io_addr;
        r.user_reason = self.user_reason;
        r.errno = self.errno;
    }
}

/// Whether `io_addr` of exits with these flags is counted apart ([`AddrKey`]): an MMIO
/// address or a guest page (see the module).
#[inline(always)]
pub fn by_addr(flags: u32) -> bool {
    flags & (crate::flag::MMIO | crate::flag::NPF) != 0
}

/// The `io_addr` of a kind: the port of a PIO exit, 0 for an MMIO exit or a guest page
/// (counted apart, see the module).
#[inline(always)]
pub fn port_of(flags: u32, io_addr: u64) -> u64 {
    if by_addr(flags) {
        0
    } else {
        io_addr
    }
}

/// A thread's last two kinds of exit and their slots (+1; 0 for none, [`REFUSED`] when no
/// slot was left): most exits find theirs here, without the hash lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cache {
    pub kind: [Kind; 2],
    pub slot: [u32; 2],
    /// Which of the two the next new kind replaces.
    pub victim: u32,
    /// Scratch of the exit being tallied: the stages after this one are not measured. Kept
    /// in map memory, which the verifier does not follow, so that each value is not a path
    /// of its own (as a register it took the verifier's work from 114k to 192k
    /// instructions).
    pub end: u32,
}

/// [`Cache::slot`] of a kind that got no slot: its exits go as records.
pub const REFUSED: u32 = u32::MAX;

/// Key of the `TALLY_KEYS` hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TallyKey {
    /// `pid << 32 | tid`.
    pub tag: u64,
    pub kind: Kind,
}

/// One tallied kind of exit. Written only by its thread; `exit.kind` is set last, so a slot
/// userspace reads with `exit.kind == 0` is still being set up (read it next tick).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TallyMeta {
    /// The exit these are like: pid, tid, vCPU, reason, access; `ts_ns` and stages 0.
    pub exit: ExitRecord,
    /// Exits tallied.
    pub count: u64,
    /// Time of the last one (and of the first, when the slot was made).
    pub first_ts: u64,
    pub last_ts: u64,
    /// Per stage: exact sum and maximum of the durations, and the row of its histogram
    /// (+1; [`NO_ROW`] while the stage was never measured).
    pub sum_ns: [u64; STAGES],
    pub max_ns: [u64; STAGES],
    pub row: [u32; STAGES],
    /// MMIO and `--detail` page-fault exits whose address got no count of its own
    /// (`TALLY_ADDRS` was full).
    pub other: u64,
}

/// Key of the `TALLY_ADDRS` hash: an MMIO address or guest page of a slot's exits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrKey {
    pub slot: u32,
    pub _pad: u32,
    pub addr: u64,
}

/// Written to the ring buffer (with a wake-up) when a slot is made, so that userspace looks
/// up its vCPU while the VMM still runs (told from a batch by its size).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NewSlot {
    pub slot: u32,
    pub _pad: u32,
}

const _: () = assert!(
    core::mem::size_of::<TallyMeta>() == (56 + 8 * STAGES) + 24 + 16 * STAGES + 4 * STAGES + 8
);
const _: () = assert!(core::mem::size_of::<TallyKey>() == 48);
const _: () = assert!(core::mem::size_of::<Cache>() == 2 * 40 + 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_falls_in_its_bucket_within_a_128th() {
        let mut v = 0u64;
        let mut last = 0usize;
        while v < LIMIT_NS {
            let i = bucket(v);
            assert!(i < BUCKETS, "{v}");
            assert!(i >= last, "buckets grow with values ({v})");
            last = i;
            let (low, width) = bucket_range(i);
            assert!(
                low <= v && v < low + width,
                "{v} in bucket {i} = [{low}, +{width})"
            );
            assert!(width == 1 || width * 128 <= low, "bucket {i} too wide");
            let mid = bucket_value(i);
            assert!(
                mid.abs_diff(v) * 200 <= v.max(1),
                "{v} vs {mid}: over 0.5 %"
            );
            v = v + 1 + v / 997;
        }
        assert_eq!(bucket(LIMIT_NS - 1), BUCKETS - 1);
    }

    #[test]
    fn a_kind_written_to_a_record_reads_back_the_same() {
        let k = Kind {
            vcpu_fd: 7,
            vcpu_id: -1,
            space: 4,
            reason: 1,
            flags: crate::flag::PIO | crate::flag::WRITE,
            io_size: 2,
            io_addr: 0x700,
            user_reason: 2,
            errno: -4,
        };
        let mut r = ExitRecord::default();
        k.write_to(&mut r);
        assert_eq!(Kind::of(&r), k);
    }

    #[test]
    fn an_mmio_address_is_not_part_of_a_kind() {
        let mut r = ExitRecord {
            flags: crate::flag::MMIO,
            io_addr: 0xb8000,
            ..ExitRecord::default()
        };
        let a = Kind::of(&r);
        r.io_addr = 0xb8001;
        assert_eq!(Kind::of(&r), a);
        assert_eq!(a.io_addr, 0);
    }

    #[test]
    fn a_guest_page_is_not_part_of_a_kind() {
        let mut r = ExitRecord {
            flags: crate::flag::NPF,
            io_addr: 0x2_0000,
            ..ExitRecord::default()
        };
        let a = Kind::of(&r);
        r.io_addr = 0x2_1000;
        assert_eq!(Kind::of(&r), a);
        assert_eq!(a.io_addr, 0);
    }

    #[test]
    fn buckets_meet_edge_to_edge() {
        for i in 1..BUCKETS {
            let (low, _) = bucket_range(i);
            let (plow, pwidth) = bucket_range(i - 1);
            assert_eq!(plow + pwidth, low, "bucket {i}");
            assert_eq!(bucket(low), i);
            assert_eq!(bucket(low - 1), i - 1);
        }
    }
}
