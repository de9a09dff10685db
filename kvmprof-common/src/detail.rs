//! Which MSR, which CPUID leaf, which hypercall (issue 21, `--detail`): the KVM tracepoints
//! that fire in an exit's handler name what the guest asked for (a hypercall by KVM's, Xen's
//! or Hyper-V's ABI, [`crate::flag::XEN`], [`crate::flag::HYPERV`]), and the open exit is filed
//! under it. The name goes in the exit's `io_addr`, marked by its flag ([`crate::flag::MSR`],
//! [`crate::flag::CPUID`], [`crate::flag::HYPERCALL`]), exactly as a port does: it is part
//! of the exit's kind, so each MSR index (and direction), leaf and hypercall number gets its
//! own tally slot, with an exact count and stage histograms. These are few per guest (tens),
//! unlike MMIO addresses; a guest that used up the slots would still be counted exactly (its
//! further kinds go as records, `crate::tally`).
//!
//! Guest pages (`kvm:kvm_page_fault`, in the handler of an EPT violation or NPF) are many too:
//! a booting guest faults in every page of its RAM. So they are no part of a kind either: the
//! exit is marked [`crate::flag::NPF`] and its page goes in `io_addr`, counted beside the slot
//! in `TALLY_ADDRS` as MMIO addresses are ([`crate::tally`]), a slot's pages and its `other`
//! being its exits. A fault that KVM finds to be MMIO then fires `kvm:kvm_mmio`, which adds
//! [`crate::flag::MMIO`] and puts the whole address of the access in `io_addr`: such an exit
//! is both an MMIO access and an NPF, its page being that address's ([`page`]); one without
//! MMIO was a fault-in of RAM.
//!
//! Guest RIPs are many (a guest exits from thousands of instructions), so they are no part
//! of a kind: `kvm:kvm_exit`, which carries the RIP it read, counts each exit in the `RIPS`
//! hash by thread, reason and RIP ([`RipKey`]), beside the tally; the exits whose RIP found
//! that hash full are counted in `RIPS_OTHER` under the same key with RIP 0. Keyed by
//! thread, so only one CPU at a time writes an entry: plain increments.

/// Indices of the `DETAIL_FIELDS` map: the offsets of the fields read, from this kernel's
/// format files.
pub mod field {
    /// `kvm:kvm_msr`: `write` (0 for RDMSR), `ecx` (the MSR index).
    pub const MSR_WRITE: u32 = 0;
    pub const MSR_ECX: u32 = 1;
    /// `kvm:kvm_cpuid`: `function` (the leaf, EAX) and `index` (the subleaf, ECX).
    pub const CPUID_FUNCTION: u32 = 2;
    pub const CPUID_INDEX: u32 = 3;
    /// `kvm:kvm_hypercall`: `nr` (RAX).
    pub const HYPERCALL_NR: u32 = 4;
    /// `kvm:kvm_exit`: `exit_reason`, `isa` (1: VMX) and `guest_rip`.
    pub const EXIT_REASON: u32 = 5;
    pub const EXIT_ISA: u32 = 6;
    pub const EXIT_RIP: u32 = 7;
    /// `kvm:kvm_page_fault`: `fault_address` (the guest-physical address; an `unsigned long`
    /// on 6.1, a `u64` after the vCPU's id and RIP on 6.12).
    pub const PAGE_FAULT_ADDRESS: u32 = 8;
    /// `kvm:kvm_xen_hypercall`: `nr` (Xen's hypercall number, EAX).
    pub const XEN_HYPERCALL_NR: u32 = 9;
    /// `kvm:kvm_hv_hypercall`: `code` (the call code, the low 16 bits of the control input).
    pub const HV_HYPERCALL_CODE: u32 = 10;
    pub const LEN: u32 = 11;
}

/// The guest-physical page (4 KiB) of an address.
#[inline(always)]
pub fn page(gpa: u64) -> u64 {
    gpa & !0xfff
}

/// (thread, reason, RIP) entries with a count of their own, per recording.
pub const RIPS: u32 = 16384;
/// (thread, reason) entries of `RIPS_OTHER`.
pub const RIPS_OTHER: u32 = 4096;

/// Key of the `RIPS` and `RIPS_OTHER` hashes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RipKey {
    pub pid: u32,
    pub tid: u32,
    /// `crate::space` of the reason.
    pub space: u32,
    pub reason: u32,
    pub rip: u64,
}

const _: () = assert!(core::mem::size_of::<RipKey>() == 24);

/// The key of a CPUID exit: the leaf in the low half, the subleaf in the high one.
#[inline(always)]
pub fn cpuid_key(leaf: u32, subleaf: u32) -> u64 {
    (subleaf as u64) << 32 | leaf as u64
}

/// (leaf, subleaf) of a CPUID exit's key.
pub fn cpuid_leaf(key: u64) -> (u32, u32) {
    (key as u32, (key >> 32) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpuid_key_holds_leaf_and_subleaf() {
        assert_eq!(cpuid_leaf(cpuid_key(0x8000_0001, 7)), (0x8000_0001, 7));
    }

    #[test]
    fn a_page_is_its_address_without_the_offset() {
        assert_eq!(page(0xd_0fff), 0xd_0000);
        assert_eq!(page(0x2_1000), 0x2_1000);
    }
}
