//! Names of what a guest asks of the x86 CPU, for `--detail`'s table: well-known MSRs and
//! KVM's hypercall numbers. Vendor-neutral: the same MSR index and hypercall ABI serve Intel
//! VMX, AMD SVM and PVM guests.

/// (index, name) of MSRs guests touch often enough to exit on: the SDM's `IA32_*` names,
/// AMD's for theirs, the x2APIC registers (`0x800 + APIC offset / 16`), KVM's paravirtual
/// and Hyper-V's synthetic ones.
const MSRS: &[(u32, &str)] = &[
    (0x10, "IA32_TSC"),
    (0x1b, "IA32_APIC_BASE"),
    (0x3a, "IA32_FEATURE_CONTROL"),
    (0x3b, "IA32_TSC_ADJUST"),
    (0x48, "IA32_SPEC_CTRL"),
    (0x49, "IA32_PRED_CMD"),
    (0x79, "IA32_BIOS_UPDT_TRIG"),
    (0x8b, "IA32_BIOS_SIGN_ID"),
    (0xe7, "IA32_MPERF"),
    (0xe8, "IA32_APERF"),
    (0x10a, "IA32_ARCH_CAPABILITIES"),
    (0x10b, "IA32_FLUSH_CMD"),
    (0x174, "IA32_SYSENTER_CS"),
    (0x175, "IA32_SYSENTER_ESP"),
    (0x176, "IA32_SYSENTER_EIP"),
    (0x179, "IA32_MCG_CAP"),
    (0x17a, "IA32_MCG_STATUS"),
    (0x1a0, "IA32_MISC_ENABLE"),
    (0x1d9, "IA32_DEBUGCTL"),
    (0x277, "IA32_PAT"),
    (0x38d, "IA32_FIXED_CTR_CTRL"),
    (0x38f, "IA32_PERF_GLOBAL_CTRL"),
    (0x6e0, "IA32_TSC_DEADLINE"),
    (0x802, "X2APIC_ID"),
    (0x803, "X2APIC_VERSION"),
    (0x808, "X2APIC_TPR"),
    (0x80b, "X2APIC_EOI"),
    (0x80d, "X2APIC_LDR"),
    (0x80f, "X2APIC_SIVR"),
    (0x830, "X2APIC_ICR"),
    (0x832, "X2APIC_LVT_TIMER"),
    (0x838, "X2APIC_TMICT"),
    (0x839, "X2APIC_TMCCT"),
    (0x83e, "X2APIC_TDCR"),
    (0x83f, "X2APIC_SELF_IPI"),
    (0xda0, "IA32_XSS"),
    (0x4000_0000, "HV_X64_MSR_GUEST_OS_ID"),
    (0x4000_0001, "HV_X64_MSR_HYPERCALL"),
    (0x4000_0020, "HV_X64_MSR_TIME_REF_COUNT"),
    (0x4000_0070, "HV_X64_MSR_EOI"),
    (0x4000_0071, "HV_X64_MSR_ICR"),
    (0x4000_0073, "HV_X64_MSR_VP_ASSIST_PAGE"),
    (0x4b56_4d00, "MSR_KVM_WALL_CLOCK_NEW"),
    (0x4b56_4d01, "MSR_KVM_SYSTEM_TIME_NEW"),
    (0x4b56_4d02, "MSR_KVM_ASYNC_PF_EN"),
    (0x4b56_4d03, "MSR_KVM_STEAL_TIME"),
    (0x4b56_4d04, "MSR_KVM_PV_EOI_EN"),
    (0x4b56_4d05, "MSR_KVM_POLL_CONTROL"),
    (0x4b56_4d06, "MSR_KVM_ASYNC_PF_INT"),
    (0x4b56_4d07, "MSR_KVM_ASYNC_PF_ACK"),
    (0xc000_0080, "IA32_EFER"),
    (0xc000_0081, "STAR"),
    (0xc000_0082, "LSTAR"),
    (0xc000_0083, "CSTAR"),
    (0xc000_0084, "SYSCALL_MASK"),
    (0xc000_0100, "FS_BASE"),
    (0xc000_0101, "GS_BASE"),
    (0xc000_0102, "KERNEL_GS_BASE"),
    (0xc000_0103, "TSC_AUX"),
    (0xc001_0015, "AMD64_HWCR"),
    (0xc001_0117, "AMD64_VM_HSAVE_PA"),
];

/// The name of MSR `index`, if well known.
pub fn msr_name(index: u32) -> Option<&'static str> {
    MSRS.iter().find(|(i, _)| *i == index).map(|(_, n)| *n)
}

/// (number, name) of KVM's hypercalls (`include/uapi/linux/kvm_para.h`).
const HYPERCALLS: &[(u64, &str)] = &[
    (1, "KVM_HC_VAPIC_POLL_IRQ"),
    (2, "KVM_HC_MMU_OP"),
    (3, "KVM_HC_FEATURES"),
    (4, "KVM_HC_PPC_MAP_MAGIC_PAGE"),
    (5, "KVM_HC_KICK_CPU"),
    (9, "KVM_HC_CLOCK_PAIRING"),
    (10, "KVM_HC_SEND_IPI"),
    (11, "KVM_HC_SCHED_YIELD"),
    (12, "KVM_HC_MAP_GPA_RANGE"),
];

/// The name of KVM hypercall `nr`, if it is one.
pub fn hypercall_name(nr: u64) -> Option<&'static str> {
    HYPERCALLS.iter().find(|(n, _)| *n == nr).map(|(_, s)| *s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found() {
        for (i, (index, name)) in MSRS.iter().enumerate() {
            assert!(MSRS[..i].iter().all(|(j, _)| j != index), "{name} twice");
            assert_eq!(msr_name(*index), Some(*name));
        }
        assert_eq!(hypercall_name(5), Some("KVM_HC_KICK_CPU"));
        assert_eq!((msr_name(0x1234), hypercall_name(0)), (None, None));
    }
}
