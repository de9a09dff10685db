//! kvmprof's kernel side: one record per VM exit, assembled per vCPU thread from KVM
//! tracepoints, the KVM_RUN ioctl and (where the kernel allows) function hooks on the
//! stages of the exit cycle.
//!
//! Entry points are thin: each calls a `try_*` function in its module, and a failure only
//! bumps a counter, never aborts the traced code path.
#![no_std]
#![no_main]

mod exit;
mod maps;
mod probes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects code that could get here.
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
