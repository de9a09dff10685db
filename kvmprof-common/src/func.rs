//! `record --func NAME…`: KVM functions a user suspects, timed inside the exit that called
//! them. Each hooked function's calls on a vCPU thread add up, per exit, into the thread's
//! state ([`crate::ThreadState::func_ns`], `func_calls`); when the exit closes they are
//! tallied per thread, exit reason and function in a [`FuncTally`] (the `FUNCS` hash): the
//! exits that called it, the calls, the most calls in one exit, and the time in it per exit
//! as a sum and a histogram (the halts' buckets, [`crate::halt::bucket`]).
//!
//! A call made while no exit is open on its thread (before the first, or between a return
//! to the VMM and the next entry) belongs to no exit: it is counted per function in the
//! `FUNC_COUNTS` array under [`OUTSIDE`]. Exits whose key found the hash full are counted
//! under [`FOLDED`], so the report's totals still add up.

/// Functions one recording can time.
pub const MAX: usize = 4;

/// (thread, reason, function) tallies at once.
pub const KEYS: u32 = 1024;

/// `FUNC_COUNTS` (per-CPU) index of function `i`'s calls outside an exit: `OUTSIDE + i`.
pub const OUTSIDE: u32 = 0;
/// `FUNC_COUNTS` index of function `i`'s exits the full hash had no room for: `FOLDED + i`.
pub const FOLDED: u32 = MAX as u32;
pub const COUNTS: u32 = 2 * MAX as u32;

/// Program name stems: `fe_func0`, `fx_func0`, `kp_func0`, `krp_func0`, … (with the prefixes
/// of [`crate::names::hook`]); function `i` is attached to stem `i`.
pub const STEMS: [&str; MAX] = ["func0", "func1", "func2", "func3"];

/// Whose calls a [`FuncTally`] counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FuncKey {
    pub pid: u32,
    pub tid: u32,
    /// The exit's reason, as in [`crate::ExitRecord`].
    pub space: u32,
    pub reason: u32,
    /// Index of the function in `--func`'s list.
    pub func: u32,
    pub _pad: u32,
}

/// One thread's exits of one reason that called one function. Written only by that thread
/// (plain increments).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FuncTally {
    /// Exits that called the function at least once.
    pub exits: u64,
    pub calls: u64,
    /// The most calls one exit made.
    pub max_calls: u64,
    /// Time in the function, summed over those exits (outermost calls: a recursive call is
    /// counted, not timed twice).
    pub ns: u64,
    /// Those exits' cycles, summed: the share of their time the function took.
    pub cycle_ns: u64,
    /// Per exit, the time in the function ([`crate::halt::bucket`]).
    pub hist: [u32; crate::halt::BUCKETS],
    pub _pad: u32,
}

impl Default for FuncTally {
    fn default() -> Self {
        FuncTally {
            exits: 0,
            calls: 0,
            max_calls: 0,
            ns: 0,
            cycle_ns: 0,
            hist: [0; crate::halt::BUCKETS],
            _pad: 0,
        }
    }
}

const _: () = assert!(core::mem::size_of::<FuncTally>() == 40 + 4 * crate::halt::BUCKETS + 4);
