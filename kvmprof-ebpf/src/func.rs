//! `record --func` (`kvmprof_common::func`): the calls of each hooked function, added up per
//! exit in the thread's state and tallied per thread, reason and function when the exit
//! closes.
use kvmprof_common::{func, ThreadState};

/// Function `i` entered at `ts`. Only inside an open exit: a call between exits belongs to
/// none, and is counted apart.
#[inline(always)]
pub fn enter(st: &mut ThreadState, i: usize, ts: u64) {
    if i >= func::MAX {
        return;
    }
    if st.open == 0 {
        sink::outside(i);
        return;
    }
    if st.func_depth[i] == 0 {
        st.func_start[i] = ts;
    }
    st.func_depth[i] += 1;
    st.func_calls[i] += 1;
}

/// Function `i` returned at `ts`: the outermost return adds the call's time to the exit.
#[inline(always)]
pub fn ret(st: &mut ThreadState, i: usize, ts: u64) {
    if i >= func::MAX || st.func_depth[i] == 0 {
        return;
    }
    st.func_depth[i] -= 1;
    if st.func_depth[i] == 0 && st.func_start[i] != 0 {
        st.func_ns[i] += ts.saturating_sub(st.func_start[i]);
        st.func_start[i] = 0;
    }
}

/// The open exit closes as (`space`, `reason`) (`counted`: it is in the recording): each
/// function it called is tallied, and the exit's calls start again from 0. A call still in
/// progress keeps its start and is filed with the exit open when it returns.
#[inline(always)]
pub fn close(pid: u32, tid: u32, st: &mut ThreadState, space: u32, reason: u32, counted: bool) {
    let cycle_ns = st.stage_ns[kvmprof_common::stage::CYCLE];
    for i in 0..func::MAX {
        let calls = st.func_calls[i];
        if calls == 0 {
            continue;
        }
        if counted {
            let key = func::FuncKey {
                pid,
                tid,
                space,
                reason,
                func: i as u32,
                _pad: 0,
            };
            sink::tally(&key, calls as u64, st.func_ns[i], cycle_ns);
        } else {
            sink::outside(i);
        }
        st.func_calls[i] = 0;
        st.func_ns[i] = 0;
    }
}

#[cfg(target_arch = "bpf")]
mod sink {
    use kvmprof_common::func::{self, FuncKey, FuncTally};

    use crate::maps::{FUNCS, FUNC_COUNTS, FUNC_ZERO};

    fn count(idx: u32) {
        if let Some(c) = FUNC_COUNTS.get_ptr_mut(idx) {
            // SAFETY: per-CPU slot, no other writer on this CPU while we run.
            unsafe { *c += 1 };
        }
    }

    pub fn outside(i: usize) {
        count(func::OUTSIDE + i as u32);
    }

    /// Adds one exit's `calls` of the function, `ns` in it, to its tally (made from
    /// `FUNC_ZERO` if new; the exit is counted as folded when the hash is full). A call of
    /// its own: `close` is inlined into many programs.
    #[inline(never)]
    pub fn tally(key: &FuncKey, calls: u64, ns: u64, cycle_ns: u64) {
        let t = match FUNCS.get_ptr_mut(key) {
            Some(t) => t,
            None => {
                let Some(zero) = FUNC_ZERO.get_ptr(0) else {
                    return;
                };
                // SAFETY: a per-CPU value nobody writes; by reference, not on the stack.
                #[allow(clippy::needless_borrows_for_generic_args)]
                let made = FUNCS.insert(key, unsafe { &*zero }, 0);
                match (made, FUNCS.get_ptr_mut(key)) {
                    (Ok(()), Some(t)) => t,
                    _ => {
                        count(func::FOLDED + key.func);
                        return;
                    }
                }
            }
        };
        // SAFETY: map value pointer valid for this run; only this thread writes its keys.
        let t: &mut FuncTally = unsafe { &mut *t };
        t.exits += 1;
        t.calls += calls;
        if calls > t.max_calls {
            t.max_calls = calls;
        }
        t.ns += ns;
        t.cycle_ns += cycle_ns;
        let i = kvmprof_common::halt::bucket(ns);
        // Through memory, as the halt tally does: LLVM otherwise checks the bound on a
        // register it derived the index from, which the verifier cannot carry over
        // ("unbounded memory access").
        // SAFETY: a read of a local.
        let i = unsafe { core::ptr::read_volatile(&i) };
        if let Some(b) = t.hist.get_mut(i) {
            *b += 1;
        }
    }
}

/// On the host (unit tests), tallies and counts go to a log.
#[cfg(not(target_arch = "bpf"))]
pub mod sink {
    use std::cell::RefCell;

    use kvmprof_common::func::FuncKey;

    thread_local! {
        /// (key, calls, ns, cycle_ns) per tallied exit.
        pub static TALLIED: RefCell<Vec<(FuncKey, u64, u64, u64)>> = const { RefCell::new(Vec::new()) };
        pub static OUTSIDE: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    }

    pub fn outside(i: usize) {
        OUTSIDE.with(|v| v.borrow_mut().push(i));
    }

    pub fn tally(key: &FuncKey, calls: u64, ns: u64, cycle_ns: u64) {
        TALLIED.with(|v| v.borrow_mut().push((*key, calls, ns, cycle_ns)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> ThreadState {
        // SAFETY: plain integers; all-zero is a valid empty state.
        let mut st: ThreadState = unsafe { core::mem::zeroed() };
        st.open = 1;
        st
    }

    fn tallied() -> Vec<(func::FuncKey, u64, u64, u64)> {
        sink::TALLIED.with(|v| v.borrow_mut().drain(..).collect())
    }

    #[test]
    fn calls_add_up_per_exit_and_are_tallied_when_it_closes() {
        let mut st = open();
        st.stage_ns[kvmprof_common::stage::CYCLE] = 1000;
        enter(&mut st, 1, 100);
        ret(&mut st, 1, 130);
        enter(&mut st, 1, 200);
        // A recursive call is counted, and its time is inside the outer call's.
        enter(&mut st, 1, 210);
        ret(&mut st, 1, 220);
        ret(&mut st, 1, 250);
        close(7, 8, &mut st, 3, 0x400, true);
        let t = tallied();
        assert_eq!(t.len(), 1);
        let (key, calls, ns, cycle) = t[0];
        assert_eq!(
            (key.pid, key.tid, key.space, key.reason, key.func),
            (7, 8, 3, 0x400, 1)
        );
        assert_eq!((calls, ns, cycle), (3, 80, 1000));
        // The next exit starts from nothing.
        close(7, 8, &mut st, 3, 0x400, true);
        assert!(tallied().is_empty());
    }

    #[test]
    fn calls_outside_an_exit_or_in_one_not_recorded_are_counted_apart() {
        let mut st = open();
        st.open = 0;
        enter(&mut st, 0, 10);
        ret(&mut st, 0, 20);
        st.open = 1;
        enter(&mut st, 2, 30);
        ret(&mut st, 2, 40);
        close(1, 1, &mut st, 3, 0x7b, false);
        assert!(tallied().is_empty());
        assert_eq!(
            sink::OUTSIDE.with(|v| v.borrow_mut().drain(..).collect::<Vec<_>>()),
            [0, 2]
        );
    }
}
