//! kvmprof's kernel side: each VM exit assembled per vCPU thread (`exit.rs`) from KVM
//! tracepoints, the KVM_RUN ioctl and (where the kernel allows) function hooks on the
//! stages of the exit cycle (`probes/`), then tallied per kind of exit (`tally.rs`) or, where
//! userspace asks for single exits, written as a record (`maps.rs` holds the maps).
//!
//! Entry points are thin: each calls a `try_*` function in its module, and a failure ends
//! the event without touching the traced code path. Failures that lose data are counted
//! (`kvmprof_common::counter`: a full ring buffer, no room for a thread's state, a stage
//! return without its entry, a refused read) and shown in the report; with `--debug-bpf`
//! each is also logged through aya-log (`anomaly.rs`).
// Built for the BPF target by kvmprof/build.rs; on the host it only type-checks (so that
// `cargo clippy --workspace` lints it), as in the aya template.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod anomaly;
mod exit;
mod func;
mod maps;
mod probes;
// Needs the kernel's maps at run time; the host build (unit tests) sends every exit as a
// record instead.
#[cfg(target_arch = "bpf")]
mod tally;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects code that could get here.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
