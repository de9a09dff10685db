//! `kvm_run->exit_reason` values (KVM_EXIT_*): why KVM_RUN returned to the VMM.

/// Names from `include/uapi/linux/kvm.h`, without the `KVM_EXIT_` prefix, indexed by code.
const NAMES: &[&str] = &[
    "UNKNOWN",
    "EXCEPTION",
    "IO",
    "HYPERCALL",
    "DEBUG",
    "HLT",
    "MMIO",
    "IRQ_WINDOW_OPEN",
    "SHUTDOWN",
    "FAIL_ENTRY",
    "INTR",
    "SET_TPR",
    "TPR_ACCESS",
    "S390_SIEIC",
    "S390_RESET",
    "DCR",
    "NMI",
    "INTERNAL_ERROR",
    "OSI",
    "PAPR_HCALL",
    "S390_UCONTROL",
    "WATCHDOG",
    "S390_TSCH",
    "EPR",
    "SYSTEM_EVENT",
    "S390_STSI",
    "IOAPIC_EOI",
    "HYPERV",
    "ARM_NISV",
    "X86_RDMSR",
    "X86_WRMSR",
    "DIRTY_RING_FULL",
    "AP_RESET_HOLD",
    "X86_BUS_LOCK",
    "XEN",
    "RISCV_SBI",
    "RISCV_CSR",
    "NOTIFY",
    "LOONGARCH_IOCSR",
    "MEMORY_FAULT",
    "TDX",
    "ARM_SEA",
];

/// The name of a KVM_EXIT_* code without its prefix, `None` when unknown.
pub fn name(code: u32) -> Option<&'static str> {
    NAMES.get(usize::try_from(code).ok()?).copied()
}

/// A KVM_RUN error return by its positive errno: EINTR, which every VMM that kicks its vCPU
/// threads with a signal gets, in words; others as the C library says them.
pub fn errno_name(errno: u32) -> String {
    let code = i32::try_from(errno).unwrap_or(i32::MAX);
    if code == libc::EINTR {
        return "interrupted by a signal (EINTR)".to_owned();
    }
    let text = std::io::Error::from_raw_os_error(code).to_string();
    // "Bad address (os error 14)": the number goes, its symbol comes.
    let text = text.split(" (os error").next().unwrap_or(&text).to_owned();
    match symbol(code) {
        Some(sym) => format!("KVM_RUN error: {text} ({sym})"),
        None => format!("KVM_RUN error: {text} (errno {code})"),
    }
}

/// The symbols of the errors KVM_RUN returns (`virt/kvm`, `arch/x86/kvm`).
fn symbol(code: i32) -> Option<&'static str> {
    Some(match code {
        libc::EINTR => "EINTR",
        libc::EAGAIN => "EAGAIN",
        libc::EFAULT => "EFAULT",
        libc::EINVAL => "EINVAL",
        libc::ENOEXEC => "ENOEXEC",
        libc::EIO => "EIO",
        libc::ENOMEM => "ENOMEM",
        libc::EPERM => "EPERM",
        libc::EBUSY => "EBUSY",
        libc::ENXIO => "ENXIO",
        libc::EHWPOISON => "EHWPOISON",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_exit_codes_have_their_uapi_names() {
        assert_eq!(name(0), Some("UNKNOWN"));
        assert_eq!(name(2), Some("IO"));
        assert_eq!(name(6), Some("MMIO"));
        assert_eq!(name(30), Some("X86_WRMSR"));
        assert_eq!(name(31), Some("DIRTY_RING_FULL"));
        assert_eq!(name(39), Some("MEMORY_FAULT"));
        assert_eq!(name(1000), None);
    }

    #[test]
    fn the_codes_the_kernel_side_acts_on_name_what_they_mean() {
        use kvmprof_common::{KVM_EXIT_HLT, KVM_EXIT_INTR, KVM_EXIT_IO, KVM_EXIT_MMIO};
        let codes = [KVM_EXIT_IO, KVM_EXIT_HLT, KVM_EXIT_MMIO, KVM_EXIT_INTR];
        assert_eq!(
            codes.map(name),
            [Some("IO"), Some("HLT"), Some("MMIO"), Some("INTR")]
        );
    }
}
