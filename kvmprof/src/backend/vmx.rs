//! Intel VMX exit reasons (`kvm_intel`).
//!
//! `kvm:kvm_exit` reports the full 32-bit VMX exit reason: the basic reason in bits 15:0 and
//! flags above it (Intel SDM vol. 3C, "Basic VM-Exit Information"). kvmprof keeps the full
//! value as the grouping key, so a failed VM entry is a row of its own, and names it as
//! `BASIC (FLAG|FLAG)`.
use super::{lookup, HookSymbols};

/// Basic exit reasons as this kernel's `kvm:kvm_exit` format prints them (`VMX_EXIT_REASONS`
/// in `arch/x86/include/uapi/asm/vmx.h`), sorted by code. Codes the kernel does not name
/// (e.g. 5 I/O SMI) are shown raw.
const BASIC: &[(u32, &str)] = &[
    (0, "EXCEPTION_NMI"),
    (1, "EXTERNAL_INTERRUPT"),
    (2, "TRIPLE_FAULT"),
    (3, "INIT_SIGNAL"),
    (4, "SIPI_SIGNAL"),
    (7, "INTERRUPT_WINDOW"),
    (8, "NMI_WINDOW"),
    (9, "TASK_SWITCH"),
    (10, "CPUID"),
    (12, "HLT"),
    (13, "INVD"),
    (14, "INVLPG"),
    (15, "RDPMC"),
    (16, "RDTSC"),
    (18, "VMCALL"),
    (19, "VMCLEAR"),
    (20, "VMLAUNCH"),
    (21, "VMPTRLD"),
    (22, "VMPTRST"),
    (23, "VMREAD"),
    (24, "VMRESUME"),
    (25, "VMWRITE"),
    (26, "VMOFF"),
    (27, "VMON"),
    (28, "CR_ACCESS"),
    (29, "DR_ACCESS"),
    (30, "IO_INSTRUCTION"),
    (31, "MSR_READ"),
    (32, "MSR_WRITE"),
    (33, "INVALID_STATE"),
    (34, "MSR_LOAD_FAIL"),
    (36, "MWAIT_INSTRUCTION"),
    (37, "MONITOR_TRAP_FLAG"),
    (39, "MONITOR_INSTRUCTION"),
    (40, "PAUSE_INSTRUCTION"),
    (41, "MCE_DURING_VMENTRY"),
    (43, "TPR_BELOW_THRESHOLD"),
    (44, "APIC_ACCESS"),
    (45, "EOI_INDUCED"),
    (46, "GDTR_IDTR"),
    (47, "LDTR_TR"),
    (48, "EPT_VIOLATION"),
    (49, "EPT_MISCONFIG"),
    (50, "INVEPT"),
    (51, "RDTSCP"),
    (52, "PREEMPTION_TIMER"),
    (53, "INVVPID"),
    (54, "WBINVD"),
    (55, "XSETBV"),
    (56, "APIC_WRITE"),
    (57, "RDRAND"),
    (58, "INVPCID"),
    (59, "VMFUNC"),
    (60, "ENCLS"),
    (61, "RDSEED"),
    (62, "PML_FULL"),
    (63, "XSAVES"),
    (64, "XRSTORS"),
    (67, "UMWAIT"),
    (68, "TPAUSE"),
    (74, "BUS_LOCK"),
    (75, "NOTIFY"),
    (77, "TDCALL"),
    (84, "MSR_READ_IMM"),
    (85, "MSR_WRITE_IMM"),
];

/// Mask of the basic exit reason.
const BASIC_MASK: u32 = 0xffff;

/// Flag bits above the basic reason, named after the kernel's `union vmx_exit_reason`
/// (the tracepoint itself only prints FAILED_VMENTRY).
const FLAGS: &[(u32, &str)] = &[
    (1 << 26, "BUS_LOCK_DETECTED"),
    (1 << 27, "ENCLAVE_MODE"),
    (1 << 28, "SMI_PENDING_MTF"),
    (1 << 29, "SMI_FROM_VMX_ROOT"),
    (1 << 31, "FAILED_VMENTRY"),
];

/// Hooks of the VMX backend. Kernels built with TDX support dispatch through `vt_*`
/// wrappers, which also cover TD guests; `vmx_*` is preferred as it exists everywhere.
pub const HOOKS: HookSymbols = HookSymbols {
    vendor_run: &["vmx_vcpu_run", "vt_vcpu_run"],
    handler: &["vmx_handle_exit", "vt_handle_exit"],
    module: "kvm_intel",
    kvm_exit_fires: true,
};

/// The name of a full VMX exit reason: the basic reason (raw hex when unnamed) followed by
/// its flags in parentheses, unnamed flag bits in hex.
pub fn name(code: u32) -> String {
    let basic = code & BASIC_MASK;
    let mut name = lookup(BASIC, basic).map_or_else(|| format!("{basic:#x}"), str::to_owned);
    let flags = code & !BASIC_MASK;
    if flags != 0 {
        let mut parts: Vec<String> = FLAGS
            .iter()
            .filter(|(bit, _)| flags & bit != 0)
            .map(|(_, n)| (*n).to_owned())
            .collect();
        let unnamed = FLAGS.iter().fold(flags, |rest, (bit, _)| rest & !bit);
        if unnamed != 0 {
            parts.push(format!("{unnamed:#x}"));
        }
        name = format!("{name} ({})", parts.join("|"));
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_unique() {
        assert!(BASIC.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn basic_vmx_reasons_have_their_kernel_names() {
        assert_eq!(name(30), "IO_INSTRUCTION");
        assert_eq!(name(48), "EPT_VIOLATION");
        assert_eq!(name(12), "HLT");
        assert_eq!(name(85), "MSR_WRITE_IMM");
        assert_eq!(name(5), "0x5");
    }

    #[test]
    fn flags_are_masked_and_shown() {
        assert_eq!(name(0x8000_0021), "INVALID_STATE (FAILED_VMENTRY)");
        assert_eq!(name(0x0800_0000 | 48), "EPT_VIOLATION (ENCLAVE_MODE)");
        assert_eq!(
            name(0x3000_0000 | 1),
            "EXTERNAL_INTERRUPT (SMI_PENDING_MTF|SMI_FROM_VMX_ROOT)"
        );
        assert_eq!(name(0x4001_0000 | 2), "TRIPLE_FAULT (0x40010000)");
        assert_eq!(name(0x8000_0000 | 0x99), "0x99 (FAILED_VMENTRY)");
    }
}
