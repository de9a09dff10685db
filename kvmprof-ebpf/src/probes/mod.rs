//! Program entry points, one module per kind of hook.

/// Defines the kprobe, kretprobe, fentry and fexit programs of a function hooked at entry
/// and return, each calling `$enter($arg)` or `$ret($arg)` (the stages' hooks, `--func`'s):
/// userspace loads the pair the kernel allows. Defined before the modules, which see it
/// by textual scope.
macro_rules! entry_return_hooks {
    ($enter:ident, $ret:ident, $arg:expr, $kp:ident, $krp:ident, $fe:ident, $fx:ident) => {
        #[aya_ebpf::macros::kprobe]
        pub fn $kp(_ctx: aya_ebpf::programs::ProbeContext) -> u32 {
            $enter($arg).unwrap_or(0)
        }
        #[aya_ebpf::macros::kretprobe]
        pub fn $krp(_ctx: aya_ebpf::programs::RetProbeContext) -> u32 {
            $ret($arg).unwrap_or(0)
        }
        #[aya_ebpf::macros::fentry]
        pub fn $fe(_ctx: aya_ebpf::programs::FEntryContext) -> u32 {
            $enter($arg).unwrap_or(0)
        }
        #[aya_ebpf::macros::fexit]
        pub fn $fx(_ctx: aya_ebpf::programs::FExitContext) -> u32 {
            $ret($arg).unwrap_or(0)
        }
    };
}

mod btf;
mod detail;
mod field;
mod func;
mod halt;
mod kvm;
mod sched;
mod stages;
mod syscall;
mod task;
