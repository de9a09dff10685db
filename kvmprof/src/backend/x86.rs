//! Names of what a guest asks of the x86 CPU, for `--detail`'s table: well-known MSRs and the
//! hypercall numbers of KVM's, Xen's and Hyper-V's ABIs. Vendor-neutral: the same MSR index
//! and hypercall ABI serve Intel VMX, AMD SVM and PVM guests.

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

/// (number, name) of Xen's hypercalls (Xen's `xen/include/public/xen.h`), which KVM
/// handles for a Xen guest whose VMM asked it to (KVM_XEN_HVM_CONFIG).
const XEN_HYPERCALLS: &[(u64, &str)] = &[
    (0, "__HYPERVISOR_set_trap_table"),
    (1, "__HYPERVISOR_mmu_update"),
    (2, "__HYPERVISOR_set_gdt"),
    (3, "__HYPERVISOR_stack_switch"),
    (4, "__HYPERVISOR_set_callbacks"),
    (5, "__HYPERVISOR_fpu_taskswitch"),
    (6, "__HYPERVISOR_sched_op_compat"),
    (7, "__HYPERVISOR_platform_op"),
    (8, "__HYPERVISOR_set_debugreg"),
    (9, "__HYPERVISOR_get_debugreg"),
    (10, "__HYPERVISOR_update_descriptor"),
    (12, "__HYPERVISOR_memory_op"),
    (13, "__HYPERVISOR_multicall"),
    (14, "__HYPERVISOR_update_va_mapping"),
    (15, "__HYPERVISOR_set_timer_op"),
    (16, "__HYPERVISOR_event_channel_op_compat"),
    (17, "__HYPERVISOR_xen_version"),
    (18, "__HYPERVISOR_console_io"),
    (19, "__HYPERVISOR_physdev_op_compat"),
    (20, "__HYPERVISOR_grant_table_op"),
    (21, "__HYPERVISOR_vm_assist"),
    (22, "__HYPERVISOR_update_va_mapping_otherdomain"),
    (23, "__HYPERVISOR_iret"),
    (24, "__HYPERVISOR_vcpu_op"),
    (25, "__HYPERVISOR_set_segment_base"),
    (26, "__HYPERVISOR_mmuext_op"),
    (27, "__HYPERVISOR_xsm_op"),
    (28, "__HYPERVISOR_nmi_op"),
    (29, "__HYPERVISOR_sched_op"),
    (30, "__HYPERVISOR_callback_op"),
    (31, "__HYPERVISOR_xenoprof_op"),
    (32, "__HYPERVISOR_event_channel_op"),
    (33, "__HYPERVISOR_physdev_op"),
    (34, "__HYPERVISOR_hvm_op"),
    (35, "__HYPERVISOR_sysctl"),
    (36, "__HYPERVISOR_domctl"),
    (37, "__HYPERVISOR_kexec_op"),
    (38, "__HYPERVISOR_tmem_op"),
    (39, "__HYPERVISOR_argo_op"),
    (40, "__HYPERVISOR_xenpmu_op"),
    (41, "__HYPERVISOR_dm_op"),
    (42, "__HYPERVISOR_hypfs_op"),
];

/// (call code, name) of the Hyper-V hypercalls a guest makes of KVM (the kernel's
/// `hyperv-tlfs.h`): those KVM handles, those it passes to the VMM, and the debugger's.
const HV_HYPERCALLS: &[(u64, &str)] = &[
    (0x0002, "HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE"),
    (0x0003, "HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST"),
    (0x0008, "HVCALL_NOTIFY_LONG_SPIN_WAIT"),
    (0x000b, "HVCALL_SEND_IPI"),
    (0x0013, "HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE_EX"),
    (0x0014, "HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST_EX"),
    (0x0015, "HVCALL_SEND_IPI_EX"),
    (0x005c, "HVCALL_POST_MESSAGE"),
    (0x005d, "HVCALL_SIGNAL_EVENT"),
    (0x0069, "HVCALL_POST_DEBUG_DATA"),
    (0x006a, "HVCALL_RETRIEVE_DEBUG_DATA"),
    (0x006b, "HVCALL_RESET_DEBUG_SESSION"),
    (0x007e, "HVCALL_RETARGET_INTERRUPT"),
    (0x00af, "HVCALL_FLUSH_GUEST_PHYSICAL_ADDRESS_SPACE"),
    (0x00b0, "HVCALL_FLUSH_GUEST_PHYSICAL_ADDRESS_LIST"),
    (0x8001, "HV_EXT_CALL_QUERY_CAPABILITIES"),
    (0x8003, "HV_EXT_CALL_MEMORY_HEAT_HINT"),
];

/// The name of Xen hypercall `nr`, if it is one.
pub fn xen_hypercall_name(nr: u64) -> Option<&'static str> {
    XEN_HYPERCALLS
        .iter()
        .find(|(n, _)| *n == nr)
        .map(|(_, s)| *s)
}

/// The name of Hyper-V hypercall `code`, if well known.
pub fn hv_hypercall_name(code: u64) -> Option<&'static str> {
    HV_HYPERCALLS
        .iter()
        .find(|(n, _)| *n == code)
        .map(|(_, s)| *s)
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
        for table in [HYPERCALLS, XEN_HYPERCALLS, HV_HYPERCALLS] {
            for (i, (nr, name)) in table.iter().enumerate() {
                assert!(table[..i].iter().all(|(m, _)| m != nr), "{name} twice");
            }
        }
        assert_eq!(hypercall_name(5), Some("KVM_HC_KICK_CPU"));
        assert_eq!((msr_name(0x1234), hypercall_name(0)), (None, None));
    }

    #[test]
    fn each_abi_names_its_own_numbers() {
        // 29 is nothing to KVM, Xen's sched_op; 8 Hyper-V's long spin wait.
        assert_eq!(hypercall_name(29), None);
        assert_eq!(xen_hypercall_name(29), Some("__HYPERVISOR_sched_op"));
        assert_eq!(hv_hypercall_name(8), Some("HVCALL_NOTIFY_LONG_SPIN_WAIT"));
        assert_eq!((xen_hypercall_name(11), hv_hypercall_name(1)), (None, None));
    }
}
