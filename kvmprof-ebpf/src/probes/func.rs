//! `--func`: the function hooks of `kvmprof_common::func`, one kprobe/kretprobe and one
//! fentry/fexit pair per function a recording can time; userspace loads the pair the
//! kernel allows for each function named and attaches it there.
use aya_ebpf::{
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};

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

/// Defines the kprobe, kretprobe, fentry and fexit programs of function `$i`
/// (`kvmprof_common::func::STEMS[$i]`).
macro_rules! func_hooks {
    ($i:expr, $kp:ident, $krp:ident, $fe:ident, $fx:ident) => {
        #[kprobe]
        pub fn $kp(_ctx: ProbeContext) -> u32 {
            try_enter($i).unwrap_or(0)
        }
        #[kretprobe]
        pub fn $krp(_ctx: RetProbeContext) -> u32 {
            try_return($i).unwrap_or(0)
        }
        #[fentry]
        pub fn $fe(_ctx: FEntryContext) -> u32 {
            try_enter($i).unwrap_or(0)
        }
        #[fexit]
        pub fn $fx(_ctx: FExitContext) -> u32 {
            try_return($i).unwrap_or(0)
        }
    };
}

func_hooks!(0, kp_func0, krp_func0, fe_func0, fx_func0);
func_hooks!(1, kp_func1, krp_func1, fe_func1, fx_func1);
func_hooks!(2, kp_func2, krp_func2, fe_func2, fx_func2);
func_hooks!(3, kp_func3, krp_func3, fe_func3, fx_func3);
