//! Per-backend knowledge (AMD SVM, Intel VMX, PVM; userspace exit codes) as plain data:
//! exit-reason names and the kernel functions kvmprof hooks to time each stage of an exit.
pub mod pvm;
pub mod svm;
pub mod userspace;
pub mod vmx;
pub mod x86;

use crate::data::model::{Reason, ReasonSpace, Vendor};

/// The functions that time the vendor stages of one backend.
///
/// Each list holds candidate symbols in order of preference, as names differ between kernel
/// versions; the attach planner takes the first one the running kernel has. `module` is where
/// they live when KVM is built as modules (the `[module]` column of `/proc/kallsyms`); a
/// built-in KVM lists them without a module. A candidate found in another module is not
/// the vendor's function (`handle_exit` is a generic name).
#[derive(Debug, PartialEq, Eq)]
pub struct HookSymbols {
    /// [`Stage::VendorRun`](crate::data::model::Stage::VendorRun): world switch + guest time.
    pub vendor_run: &'static [&'static str],
    /// [`Stage::Handler`](crate::data::model::Stage::Handler): the exit handler.
    pub handler: &'static [&'static str],
    pub module: &'static str,
    /// Whether `kvm:kvm_exit` (and `kvm:kvm_entry`) fire for this backend.
    pub kvm_exit_fires: bool,
}

/// The module of the vendor-independent x86 KVM code, home of the shared hooks below.
pub const KVM_MODULE: &str = "kvm";

/// [`Stage::Cycle`](crate::data::model::Stage::Cycle): one pass through the run loop. Static in
/// `x86.c`, so often inlined (it is on this project's PVM host).
pub const ENTER_GUEST: &str = "vcpu_enter_guest";

/// [`Stage::FastPio`](crate::data::model::Stage::FastPio): in-kernel port I/O, called from every
/// vendor's I/O exit handler.
pub const FAST_PIO: &str = "kvm_fast_pio";

/// KVM_RUN inside KVM (`x86.c`): where a vCPU thread enters the kernel's run loop, hooked
/// instead of the ioctl tracepoint that fires for every ioctl of every process.
pub const RUN_IOCTL: &str = "kvm_arch_vcpu_ioctl_run";

/// Used when the backend is unknown: only the shared hooks apply.
const UNKNOWN_HOOKS: HookSymbols = HookSymbols {
    vendor_run: &[],
    handler: &[],
    module: KVM_MODULE,
    kvm_exit_fires: false,
};

/// The vendor hooks of a backend.
pub fn hooks(v: Vendor) -> &'static HookSymbols {
    match v {
        Vendor::Vmx => &vmx::HOOKS,
        Vendor::Svm => &svm::HOOKS,
        Vendor::Pvm => &pvm::HOOKS,
        Vendor::Unknown => &UNKNOWN_HOOKS,
    }
}

/// The display name of an exit reason; codes without a name show raw (`0x1234`).
pub fn reason_name(r: Reason) -> String {
    let named = match r.space {
        ReasonSpace::Vmx => return vmx::name(r.code),
        ReasonSpace::Svm => svm::name(r.code).map(str::to_owned),
        ReasonSpace::Userspace => userspace::name(r.code).map(|n| format!("KVM_EXIT_{n}")),
        ReasonSpace::Tracepoint => pvm::tracepoint_name(r.code).map(str::to_owned),
        ReasonSpace::Errno => Some(userspace::errno_name(r.code)),
        ReasonSpace::None => Some("unknown".to_owned()),
    };
    named.unwrap_or_else(|| format!("{:#x}", r.code))
}

/// Binary search in a `(code, name)` table sorted by code.
fn lookup(table: &'static [(u32, &'static str)], code: u32) -> Option<&'static str> {
    table
        .binary_search_by_key(&code, |&(c, _)| c)
        .ok()
        .map(|i| table[i].1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmprof_common::tp_reason;

    fn r(space: ReasonSpace, code: u32) -> String {
        reason_name(Reason { space, code })
    }

    #[test]
    fn dispatches_on_space() {
        assert_eq!(r(ReasonSpace::Vmx, 30), "IO_INSTRUCTION");
        assert_eq!(
            r(ReasonSpace::Vmx, 0x8000_0021),
            "INVALID_STATE (FAILED_VMENTRY)"
        );
        assert_eq!(r(ReasonSpace::Svm, 0x7b), "io");
        assert_eq!(r(ReasonSpace::Svm, 0x401), "avic_incomplete_ipi");
        assert_eq!(r(ReasonSpace::Svm, 0x8000_0002), "vmgexit_mmio_write");
        assert_eq!(r(ReasonSpace::Userspace, 2), "KVM_EXIT_IO");
        assert_eq!(
            r(ReasonSpace::Tracepoint, tp_reason::PIO),
            "pio (in-kernel)"
        );
        assert_eq!(r(ReasonSpace::None, 0), "unknown");
        assert_eq!(r(ReasonSpace::Errno, 4), "interrupted by a signal (EINTR)");
        assert_eq!(
            r(ReasonSpace::Errno, 14),
            "KVM_RUN error: Bad address (EFAULT)"
        );
    }

    #[test]
    fn unknown_codes_show_raw() {
        assert_eq!(r(ReasonSpace::Vmx, 0x1234), "0x1234");
        assert_eq!(r(ReasonSpace::Svm, 0x1234), "0x1234");
        assert_eq!(r(ReasonSpace::Userspace, 0x1234), "0x1234");
        assert_eq!(r(ReasonSpace::Tracepoint, 0x1234), "0x1234");
    }

    #[test]
    fn each_backend_lists_its_hooked_functions_and_module() {
        let svm = hooks(Vendor::Svm);
        assert_eq!(svm.vendor_run, &["svm_vcpu_run"]);
        assert_eq!(svm.handler, &["svm_handle_exit", "handle_exit"]);
        assert_eq!((svm.module, svm.kvm_exit_fires), ("kvm_amd", true));
        let vmx = hooks(Vendor::Vmx);
        assert_eq!(
            (vmx.vendor_run[0], vmx.handler[0]),
            ("vmx_vcpu_run", "vmx_handle_exit")
        );
        assert_eq!((vmx.module, vmx.kvm_exit_fires), ("kvm_intel", true));
        let pvm = hooks(Vendor::Pvm);
        assert_eq!(
            (pvm.vendor_run, pvm.handler),
            (&["pvm_vcpu_run"][..], &["pvm_handle_exit"][..])
        );
        assert!(!pvm.kvm_exit_fires);
        assert!(hooks(Vendor::Unknown).vendor_run.is_empty());
    }
}
