//! What the names of KVM's functions say in a trace: which calls bound a cycle or time a
//! stage (the same symbols the live profiler hooks, from [`crate::backend`]), which vendor a
//! function belongs to, and which exit reason a handler serves.
use super::parse::Func;
use crate::backend::{self, ENTER_GUEST, FAST_PIO};
use crate::data::model::{Reason, ReasonSpace, Stage, Vendor};

/// The backends whose functions can appear in a trace, with the name prefix of their own
/// functions.
const VENDORS: [(Vendor, &str); 3] = [
    (Vendor::Vmx, "vmx_"),
    (Vendor::Svm, "svm_"),
    (Vendor::Pvm, "pvm_"),
];

/// The run loop that calls `vcpu_enter_guest`, or contains it where it is inlined.
const IOCTL_RUN: &str = "kvm_arch_vcpu_ioctl_run";

/// The part a function plays in an exit cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `vcpu_enter_guest`: one call is one cycle.
    Cycle,
    /// `kvm_arch_vcpu_ioctl_run`: the ioctl that loops over cycles; where `vcpu_enter_guest`
    /// is inlined into it, each vendor run inside it starts a cycle.
    IoctlRun,
    /// A function whose duration is one of the exit's stages.
    Stage(Stage),
    Other,
}

/// Compiler-made copies of a function (`.part.119`, `.isra.0`, `.constprop.0`, `.cold`) are
/// the same source function: C names cannot contain a dot, so the base ends at the first one.
pub fn base_name(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

pub fn role(func: Func<'_>) -> Role {
    let name = base_name(func.name);
    match name {
        ENTER_GUEST => return Role::Cycle,
        IOCTL_RUN => return Role::IoctlRun,
        FAST_PIO => return Role::Stage(Stage::FastPio),
        _ => {}
    }
    for hooks in VENDORS.map(|(v, _)| backend::hooks(v)) {
        // A vendor symbol in another module is a namesake (`handle_exit` is a generic name);
        // built-in KVM prints no module.
        if func.module.is_some_and(|m| m != hooks.module) {
            continue;
        }
        if hooks.vendor_run.contains(&name) {
            return Role::Stage(Stage::VendorRun);
        }
        if hooks.handler.contains(&name) {
            return Role::Stage(Stage::Handler);
        }
    }
    Role::Other
}

/// The vendor a function belongs to, where its module or name prefix says so.
pub fn vendor_hint(func: Func<'_>) -> Option<Vendor> {
    let name = func.name.trim_start_matches('_');
    VENDORS
        .into_iter()
        .find(|&(v, prefix)| {
            func.module == Some(backend::hooks(v).module) || name.starts_with(prefix)
        })
        .map(|(v, _)| v)
}

/// The exit reason served by `name` when the vendor's exit handler calls it. The handler
/// dispatches on the reason to one function per reason (`svm_exit_handlers[]`,
/// `kvm_vmx_exit_handlers[]`); some of those are common x86 emulation functions, so the
/// table depends on the vendor. PVM has no hardware exit codes.
pub fn handler_reason(vendor: Vendor, name: &str) -> Option<Reason> {
    let (space, table) = match vendor {
        Vendor::Svm => (ReasonSpace::Svm, SVM_HANDLERS),
        Vendor::Vmx => (ReasonSpace::Vmx, VMX_HANDLERS),
        Vendor::Pvm | Vendor::Unknown => return None,
    };
    let name = base_name(name);
    table
        .iter()
        .find(|(handler, _)| *handler == name)
        .map(|&(_, code)| Reason { space, code })
}

/// `svm_exit_handlers[]` (arch/x86/kvm/svm/svm.c) → SVM exit code (`SVM_EXIT_*`).
const SVM_HANDLERS: &[(&str, u32)] = &[
    ("intr_interception", 0x060),
    ("nmi_interception", 0x061),
    ("smi_interception", 0x062),
    ("interrupt_window_interception", 0x064),
    ("rdpmc_interception", 0x06f),
    ("kvm_emulate_rdpmc", 0x06f),
    ("cpuid_interception", 0x072),
    ("kvm_emulate_cpuid", 0x072),
    ("iret_interception", 0x074),
    ("pause_interception", 0x077),
    ("halt_interception", 0x078),
    ("kvm_emulate_halt", 0x078),
    ("invlpg_interception", 0x079),
    ("io_interception", 0x07b),
    ("msr_interception", 0x07c),
    ("task_switch_interception", 0x07d),
    ("shutdown_interception", 0x07f),
    ("vmrun_interception", 0x080),
    ("vmmcall_interception", 0x081),
    ("kvm_emulate_hypercall", 0x081),
    ("monitor_interception", 0x08a),
    ("mwait_interception", 0x08b),
    ("xsetbv_interception", 0x08d),
    ("kvm_emulate_xsetbv", 0x08d),
    ("npf_interception", 0x400),
];

/// `kvm_vmx_exit_handlers[]` (arch/x86/kvm/vmx/vmx.c) → VMX basic exit reason. Older
/// kernels name some handlers `handle_*` where newer ones call `kvm_emulate_*` directly.
const VMX_HANDLERS: &[(&str, u32)] = &[
    ("handle_exception_nmi", 0),
    ("handle_external_interrupt", 1),
    ("handle_triple_fault", 2),
    ("handle_interrupt_window", 7),
    ("handle_nmi_window", 8),
    ("handle_task_switch", 9),
    ("kvm_emulate_cpuid", 10),
    ("handle_cpuid", 10),
    ("kvm_emulate_halt", 12),
    ("handle_halt", 12),
    ("kvm_emulate_invd", 13),
    ("handle_invlpg", 14),
    ("kvm_emulate_rdpmc", 15),
    ("handle_rdpmc", 15),
    ("kvm_emulate_hypercall", 18),
    ("handle_vmcall", 18),
    ("handle_cr", 28),
    ("handle_dr", 29),
    ("handle_io", 30),
    ("kvm_emulate_rdmsr", 31),
    ("handle_rdmsr", 31),
    ("kvm_emulate_wrmsr", 32),
    ("handle_wrmsr", 32),
    ("handle_pause", 40),
    ("handle_machine_check", 41),
    ("handle_tpr_below_threshold", 43),
    ("handle_apic_access", 44),
    ("handle_apic_eoi_induced", 45),
    ("handle_ept_violation", 48),
    ("handle_ept_misconfig", 49),
    ("handle_preemption_timer", 52),
    ("kvm_emulate_wbinvd", 54),
    ("kvm_emulate_xsetbv", 55),
    ("handle_xsetbv", 55),
    ("handle_apic_write", 56),
    ("handle_invpcid", 58),
    ("handle_bus_lock_vmexit", 74),
    ("handle_notify", 75),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn f<'a>(name: &'a str, module: Option<&'a str>) -> Func<'a> {
        Func { name, module }
    }

    #[test]
    fn roles_ignore_compiler_suffixes() {
        assert_eq!(role(f("vcpu_enter_guest", Some("kvm"))), Role::Cycle);
        assert_eq!(role(f("kvm_arch_vcpu_ioctl_run", None)), Role::IoctlRun);
        let vendor_run = Role::Stage(Stage::VendorRun);
        assert_eq!(role(f("svm_vcpu_run.cold", Some("kvm_amd"))), vendor_run);
        let handler = Role::Stage(Stage::Handler);
        assert_eq!(role(f("vmx_handle_exit.isra.0", None)), handler);
        assert_eq!(role(f("handle_exit", Some("kvm_amd"))), handler);
        let fast_pio = Role::Stage(Stage::FastPio);
        assert_eq!(role(f("kvm_fast_pio.part.3", Some("kvm"))), fast_pio);
        // the asm world switch inside the vendor run is not the stage
        assert_eq!(role(f("__svm_vcpu_run", Some("kvm_amd"))), Role::Other);
        assert_eq!(role(f("svm_handle_exit_irqoff", None)), Role::Other);
        // a namesake in another module
        assert_eq!(role(f("handle_exit", Some("some_driver"))), Role::Other);
    }

    #[test]
    fn the_vendor_is_told_by_module_or_name_prefix() {
        assert_eq!(
            vendor_hint(f("handle_exit", Some("kvm_amd"))),
            Some(Vendor::Svm)
        );
        assert_eq!(
            vendor_hint(f("handle_io", Some("kvm_intel"))),
            Some(Vendor::Vmx)
        );
        let vmx = vendor_hint(f("__vmx_complete_interrupts", None));
        assert_eq!(vmx, Some(Vendor::Vmx));
        assert_eq!(vendor_hint(f("pvm_vcpu_run", None)), Some(Vendor::Pvm));
        assert_eq!(vendor_hint(f("kvm_fast_pio", Some("kvm"))), None);
    }

    #[test]
    fn reasons_depend_on_the_vendor() {
        let io = handler_reason(Vendor::Svm, "io_interception");
        assert_eq!(
            io.map(|r| (r.space, r.code)),
            Some((ReasonSpace::Svm, 0x7b))
        );
        let io = handler_reason(Vendor::Vmx, "handle_io");
        assert_eq!(io.map(|r| (r.space, r.code)), Some((ReasonSpace::Vmx, 30)));
        let hlt = handler_reason(Vendor::Svm, "kvm_emulate_halt").map(|r| r.code);
        assert_eq!(hlt, Some(0x78));
        let hlt = handler_reason(Vendor::Vmx, "kvm_emulate_halt").map(|r| r.code);
        assert_eq!(hlt, Some(12));
        assert_eq!(handler_reason(Vendor::Svm, "handle_io"), None);
        assert_eq!(handler_reason(Vendor::Pvm, "kvm_fast_pio"), None);
    }
}
