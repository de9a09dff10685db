//! `--func`: the function hooks of `kvmprof_common::func`, one kprobe/kretprobe and one
//! fentry/fexit pair per function a recording can time; userspace loads the pair the
//! kernel allows for each function named and attaches it there.
use crate::{func, maps};

fn try_enter(i: usize) -> Option<u32> {
    let (_, _, st) = maps::current(false)?;
    let ts = maps::window_now()?;
    func::enter(st, i, ts);
    Some(0)
}

fn try_return(i: usize) -> Option<u32> {
    let (_, _, st) = maps::current(false)?;
    let ts = maps::window_now()?;
    func::ret(st, i, ts);
    Some(0)
}

entry_return_hooks!(try_enter, try_return, 0, kp_func0, krp_func0, fe_func0, fx_func0);
entry_return_hooks!(try_enter, try_return, 1, kp_func1, krp_func1, fe_func1, fx_func1);
entry_return_hooks!(try_enter, try_return, 2, kp_func2, krp_func2, fe_func2, fx_func2);
entry_return_hooks!(try_enter, try_return, 3, kp_func3, krp_func3, fe_func3, fx_func3);
