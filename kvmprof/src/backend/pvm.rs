//! PVM (`CONFIG_KVM_PVM`): KVM without hardware virtualisation extensions.
//!
//! `kvm:kvm_exit` does not fire under PVM, so in-kernel exits are identified only by the KVM
//! tracepoint that handled them (`kvm:kvm_pio`, `kvm:kvm_mmio`): those are the reasons of
//! [`ReasonSpace::Tracepoint`](crate::data::model::ReasonSpace::Tracepoint). Exits that reach the
//! VMM keep their KVM_EXIT_* reason, so `KVM_EXIT_IO` and `pio (in-kernel)` are distinct.
use super::HookSymbols;
use kvmprof_common::tp_reason;

/// Hooks of the PVM backend (built in on PVM hosts, `kvm_pvm` when built as a module).
/// `kvm:kvm_exit`/`kvm:kvm_entry` never fire: cycles are bounded by other events.
pub const HOOKS: HookSymbols = HookSymbols {
    vendor_run: &["pvm_vcpu_run"],
    handler: &["pvm_handle_exit"],
    module: "kvm_pvm",
    kvm_exit_fires: false,
};

/// The name of a `tp_reason` code, `None` when unknown.
pub fn tracepoint_name(code: u32) -> Option<&'static str> {
    match code {
        tp_reason::PIO => Some("pio (in-kernel)"),
        tp_reason::MMIO => Some("mmio (in-kernel)"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_tracepoint_reasons_are_named_in_kernel_exits() {
        assert_eq!(tracepoint_name(tp_reason::PIO), Some("pio (in-kernel)"));
        assert_eq!(tracepoint_name(tp_reason::MMIO), Some("mmio (in-kernel)"));
        assert_eq!(tracepoint_name(0), None);
    }
}
