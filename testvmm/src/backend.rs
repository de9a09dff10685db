//! Which hypercall instruction the guest needs: the one KVM's backend intercepts.
//!
//! Intel VMX exits on `vmcall`, AMD SVM on `vmmcall`. KVM meets the other one with a #UD
//! that it emulates and "fixes" by patching the guest's code, which would turn the
//! hypercall loop's first iteration into something else; so the VMM patches the right one
//! into [`guest::CODE`] before the guest starts (see [`guest::code`]).
//!
//! The host CPU's vendor string is not the question: the PVM backend runs on AMD and Intel
//! CPUs alike (this project's dev host says "AuthenticAMD" and has no SVM) and it cannot
//! run a hypercall from a real-mode guest at all: it emulates such a guest instruction by
//! instruction, and KVM's emulator answers `vmmcall` in real mode with a #UD (the
//! instruction is marked protected-mode only) and re-executes a `vmcall` for ever (it
//! "fixes" it into the same bytes and lets the CPU run it, which under PVM means emulating
//! it again). Both were seen on the dev host's 6.18 PVM kernel.

use std::path::Path;

use anyhow::{bail, Result};

use crate::guest;

/// KVM's backends, as far as the hypercall instruction goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Vmx,
    Svm,
    Pvm,
    /// None of the above: a CPU with neither VMX nor SVM and no PVM module in sight.
    Unknown,
}

/// The backend behind /dev/kvm: the vendor module that is loaded (kvm_intel, kvm_amd,
/// kvm_pvm, each in /sys/module when loaded or built in, as each has parameters), else the
/// host CPU's virtualization feature (CPUID: VMX in leaf 1, SVM in leaf 0x80000001), which
/// is what kvm_intel/kvm_amd need.
pub(crate) fn detect() -> Backend {
    let loaded = |module: &str| Path::new("/sys/module").join(module).exists();
    if loaded("kvm_intel") {
        Backend::Vmx
    } else if loaded("kvm_amd") {
        Backend::Svm
    } else if loaded("kvm_pvm") {
        Backend::Pvm
    } else {
        from_cpuid()
    }
}

#[cfg(target_arch = "x86_64")]
fn from_cpuid() -> Backend {
    use std::arch::x86_64::__cpuid;
    const VMX: u32 = 1 << 5;
    const SVM: u32 = 1 << 2;
    // Leaf 0x80000000 says whether 0x80000001 exists.
    let (leaf1, max_ext) = (__cpuid(1), __cpuid(0x8000_0000).eax);
    if leaf1.ecx & VMX != 0 {
        return Backend::Vmx;
    }
    if max_ext >= 0x8000_0001 && __cpuid(0x8000_0001).ecx & SVM != 0 {
        return Backend::Svm;
    }
    Backend::Unknown
}

#[cfg(not(target_arch = "x86_64"))]
fn from_cpuid() -> Backend {
    Backend::Unknown
}

/// The hypercall instruction `backend` intercepts, or why the guest cannot make one there.
pub(crate) fn hypercall(backend: Backend) -> Result<[u8; 3]> {
    match backend {
        Backend::Vmx => Ok(guest::VMCALL),
        Backend::Svm => Ok(guest::VMMCALL),
        Backend::Pvm => bail!(
            "hypercalls cannot run on KVM's PVM backend: it emulates the real-mode guest, \
             whose vmmcall gets a #UD there and vmcall loops for ever in the kernel"
        ),
        Backend::Unknown => bail!(
            "hypercalls need KVM on Intel VMX or AMD SVM: no kvm_intel or kvm_amd module and \
             neither CPU feature here"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_hardware_backend_gets_its_own_instruction() {
        assert_eq!(hypercall(Backend::Vmx).unwrap(), [0x0f, 0x01, 0xc1]);
        assert_eq!(hypercall(Backend::Svm).unwrap(), [0x0f, 0x01, 0xd9]);
        let e = hypercall(Backend::Pvm).unwrap_err().to_string();
        assert!(e.contains("PVM") && !e.contains('\n'), "{e}");
        assert!(hypercall(Backend::Unknown).is_err());
    }
}
