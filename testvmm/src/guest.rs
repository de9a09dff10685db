//! The guest: one read-only real-mode code blob shared by every vCPU, its
//! memory layout, and the register values that select a workload.
//!
//! Real mode keeps the guest trivially portable: it needs no page tables, no
//! GDT and no firmware, so it runs the same on a bare-metal host, under the
//! PVM backend and under nested SVM inside QEMU/TCG.

use kvm_bindings::{kvm_regs, kvm_sregs};

/// Guest RAM: one slot at guest-physical 0. It only has to hold the code.
pub const RAM_SIZE: usize = 0x1_0000;
/// Where the code blob is loaded (guest-physical == linear, CS base 0).
pub const CODE_ADDR: u64 = 0x1000;
/// `out dx, al` to this port exits to userspace (KVM_EXIT_IO, out). COM1 THR,
/// so a profiler's port view looks like a guest printing to a serial line.
pub const PIO_USER_PORT: u16 = 0x3f8;
/// `in al, dx` from this port exits to userspace (KVM_EXIT_IO, in). COM1 LSR.
pub const PIO_IN_PORT: u16 = 0x3fd;
/// What the VMM answers to every `in`: LSR "transmitter empty" (THRE|TEMT).
pub const PIO_IN_VALUE: u8 = 0x60;
/// Most vCPUs a workload may have: each needs its own in-kernel port.
pub const MAX_VCPUS: u32 = 64;
/// vCPU `i` writes its in-kernel port `PIO_KERNEL_PORT_BASE + i`. Each vCPU
/// gets its own port and ioeventfd so the eventfd counter proves how many
/// in-kernel exits *that* vCPU made.
pub const PIO_KERNEL_PORT_BASE: u16 = 0x700;
/// Ports of an in-kernel device: the PIC's edge/level control registers (ELCR), which KVM
/// answers itself, reads and writes alike, once the VMM has created the in-kernel irqchip.
pub const PIO_DEVICE_PORTS: [u16; 2] = [0x4d0, 0x4d1];
/// The device loop's own userspace ports (COM2's LSR and THR), apart from the other loops'
/// so the VMM counts its exits apart: an `in` that exits to the VMM right before an
/// in-kernel read, an `out` right before another.
pub const PIO_MIXED_IN_PORT: u16 = 0x2fd;
pub const PIO_MIXED_OUT_PORT: u16 = 0x2f8;
/// With an in-kernel irqchip, KVM keeps `hlt` in the kernel (the vCPU blocks until an
/// interrupt that never comes), so a round ends with an `out` here instead.
pub const PIO_DONE_PORT: u16 = 0x2f9;
/// Set in ECX: end the round with an `out` to [`PIO_DONE_PORT`], not `hlt`.
const END_WITH_OUT: u64 = 0x8000_0000;
/// ECX bits 16-30: how many `hlt`s with interrupts enabled the round still makes (the halt
/// loop of [`CODE`]); bits 0-15 hold the in-kernel port, bit 31 is [`END_WITH_OUT`].
const HALTS_SHIFT: u32 = 16;
const HALTS_MASK: u64 = (MAX_HALTS as u64) << HALTS_SHIFT;
/// Most `hlt`s one round can make: ECX has 15 bits for them.
pub const MAX_HALTS: u32 = 0x7fff;
/// The interrupt vector the VMM programs the master PIC to give IRQ0 (its ICW2 base, as a
/// BIOS does); the real-mode IVT entry for it points at [`IRQ_HANDLER_OFFSET`].
pub const IRQ0_VECTOR: u8 = 0x08;
/// Guest-physical address of [`IRQ0_VECTOR`]'s real-mode IVT entry: offset (u16), segment
/// (u16). The IVT is at 0 (KVM resets the IDT base to 0).
pub const IRQ0_IVT_ENTRY: u64 = IRQ0_VECTOR as u64 * 4;
/// Offset in [`CODE`] of IRQ0's handler: a lone `iret`.
pub const IRQ_HANDLER_OFFSET: usize = 0xf7;

/// Guest-physical target of the MMIO writes: in the ISA hole, far outside
/// the RAM slot, so KVM finds no memslot and exits with KVM_EXIT_MMIO.
/// Real mode reaches it through DS (base = this address, offset 0).
pub const MMIO_ADDR: u64 = 0xd_0000;

/// The MSR the detail section's `rdmsr` loop reads: IA32_APIC_BASE. Intercepted on Intel VMX
/// and AMD SVM alike (never in either's pass-through MSR bitmap), answered by KVM in the
/// kernel from `vcpu->arch.apic_base` (in-kernel LAPIC or not), never a #GP.
pub const MSR_READ: u32 = 0x1b;
/// The MSR the `wrmsr` loop writes: MSR_KVM_WALL_CLOCK_NEW. KVM's own, so intercepted on every
/// backend and handled in `kvm_set_msr_common`; accepted without any CPUID set up (KVM checks
/// the PV feature bit only once a VMM enforces PV CPUID). Each write makes KVM write the wall
/// clock (12 bytes) to guest RAM at [`MSR_WRITE_VALUE`].
pub const MSR_WRITE: u32 = 0x4b56_4d00;
/// What the `wrmsr` loop writes (EDX:EAX): the guest-physical address of the wall-clock
/// structure KVM fills in, in RAM and apart from everything else there.
pub const MSR_WRITE_VALUE: u64 = 0x0f00;
/// Size of KVM's `struct pvclock_wall_clock` (version, sec, nsec: three u32).
const WALL_CLOCK_SIZE: u64 = 12;
/// The leaves of the `cpuid` loop, one `cpuid` of each per iteration (subleaf 0): the vendor
/// leaf and the feature leaf, so a per-leaf table has two keys. KVM answers both in the kernel
/// from the vCPU's CPUID table (empty here: all zeros), never a userspace exit.
pub const CPUID_LEAVES: [u32; 2] = [0, 1];
/// The hypercall number (EAX) of the hypercall loop: none KVM knows (its KVM_HC_* are small
/// numbers), so KVM answers -KVM_ENOSYS in EAX in the kernel; the guest runs at CPL 0, so no
/// -KVM_EPERM either, and only KVM_HC_MAP_GPA_RANGE could exit to userspace.
pub const HYPERCALL_NR: u32 = 0x7e57;
/// With `--hypercall-abi xen`, the hypercall loop's number instead: Xen's `sched_op`. KVM
/// handles it in the kernel (`kvm_xen_hypercall`) for a VM whose VMM asked it to intercept
/// Xen hypercalls; EBX (the command) is 0 there, SCHEDOP_yield: the `user PIO` loop ends
/// with EBX 0, and the `cpuid`s of a CPUID table without leaf 0 answer EBX 0 too.
pub const XEN_SCHED_OP: u32 = 29;
/// With `--hypercall-abi hyperv`, the call code in EAX (EDX:EAX is the control input of a
/// 32-bit caller): HvCallNotifyLongSpinWait, which KVM handles in the kernel
/// (`kvm_hv_hypercall`), answering an error status when EDX (a port, from the PIO loops)
/// names a rep count. Hyper-V's hypercalls #UD in real mode: see [`protected_mode`].
pub const HV_NOTIFY_LONG_SPIN_WAIT: u32 = 0x0008;

/// Whose hypercall ABI the hypercall loop uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Abi {
    /// KVM's own: [`HYPERCALL_NR`], answered -KVM_ENOSYS.
    #[default]
    Kvm,
    /// Xen's ([`XEN_SCHED_OP`]), the VMM having asked KVM to handle Xen hypercalls, as a VMM
    /// of Xen guests does (needs a kernel built with CONFIG_KVM_XEN).
    Xen,
    /// Hyper-V's ([`HV_NOTIFY_LONG_SPIN_WAIT`]), the VMM having given the vCPUs Hyper-V's
    /// CPUID signature and a guest OS id, as a VMM of Windows guests does; the guest runs
    /// with CR0.PE set (see [`protected_mode`]).
    Hyperv,
}

impl Abi {
    /// Its spelling on the command line (`--hypercall-abi`) and in the counts, as clap and
    /// serde spell it too.
    pub fn name(self) -> &'static str {
        match self {
            Abi::Kvm => "kvm",
            Abi::Xen => "xen",
            Abi::Hyperv => "hyperv",
        }
    }
}

/// The hypercalls of the hypercall loop: the instruction KVM's backend intercepts, and whose
/// ABI numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hypercall {
    pub insn: [u8; 3],
    pub abi: Abi,
}

impl Hypercall {
    /// The number (EAX) of the loop's hypercalls.
    pub fn nr(self) -> u32 {
        match self.abi {
            Abi::Kvm => HYPERCALL_NR,
            Abi::Xen => XEN_SCHED_OP,
            Abi::Hyperv => HV_NOTIFY_LONG_SPIN_WAIT,
        }
    }
}

/// Intel VMX's hypercall instruction, the one the guest's code holds.
pub const VMCALL: [u8; 3] = [0x0f, 0x01, 0xc1];
/// AMD SVM's: patched over [`VMCALL`] by the VMM. Each backend intercepts only its own;
/// KVM would emulate the other from a #UD and patch the guest's code.
pub const VMMCALL: [u8; 3] = [0x0f, 0x01, 0xd9];
/// Where the VMM puts the detail section's four loop counts (u32 each, in this order:
/// `rdmsr`s, `wrmsr`s, `cpuid` iterations, hypercalls), which the guest reads through CS
/// (base 0). In memory, not registers: by the detail section every register is taken or
/// clobbered by the instructions themselves (`cpuid` writes EAX..EDX). The same for every vCPU.
pub const DETAIL_COUNTS_ADDR: u64 = 0x0e00;
/// Where the page loop's fresh pages start: a RAM slot of their own, which nothing but that
/// loop touches, so that each of its writes is the first access to its page (see
/// [`NPF_LOOP_AT`]).
pub const NPF_ADDR: u64 = 0x2_0000;
pub const PAGE_SIZE: u64 = 0x1000;
/// Most pages the loop can write: up to the ISA hole (0xa0000), within real mode's reach.
pub const MAX_NPF_PAGES: u32 = ((0xa_0000 - NPF_ADDR) / PAGE_SIZE) as u32;
/// Where the VMM puts the segment (u16) at which the page loop stops: that of the page after
/// the last one. Read through CS, as the detail counts are.
pub const NPF_END_ADDR: u64 = DETAIL_COUNTS_ADDR + 16;

/// How many iterations of each loop one round of the guest runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    pub pio_user: u32,
    pub pio_kernel: u32,
    pub mmio_user: u32,
    pub pio_in: u32,
    /// Iterations of the device loop (see [`CODE`]).
    pub pio_device: u32,
    /// The MMIO writes go to `MMIO_ADDR + (i & mmio_mask)`: 0 keeps them on one address,
    /// `2^k - 1` spreads them over 2^k (a device's register window, a frame buffer).
    pub mmio_mask: u16,
    /// `hlt`s with interrupts enabled, each woken by IRQ0 (at most [`MAX_HALTS`]), made by
    /// vCPU 0 only: the PIC's interrupts reach vCPU 0 alone (see [`round_halts`]).
    pub halts: u16,
    /// `rdmsr`s of [`MSR_READ`].
    pub msr_read: u32,
    /// `wrmsr`s of [`MSR_WRITE`].
    pub msr_write: u32,
    /// Iterations of the `cpuid` loop: one `cpuid` of each of [`CPUID_LEAVES`].
    pub cpuid: u32,
    /// Hypercalls [`HYPERCALL_NR`].
    pub hypercall: u32,
    /// Fresh pages from [`NPF_ADDR`] that vCPU 0 writes once each, in its first round only
    /// (at most [`MAX_NPF_PAGES`]; see [`first_round_regs`]).
    pub npf_pages: u32,
}

const fn lo(v: u16) -> u8 {
    v.to_le_bytes()[0]
}

const fn hi(v: u16) -> u8 {
    v.to_le_bytes()[1]
}

const fn b0(v: u32) -> u8 {
    v.to_le_bytes()[0]
}

const fn b1(v: u32) -> u8 {
    v.to_le_bytes()[1]
}

const fn b2(v: u32) -> u8 {
    v.to_le_bytes()[2]
}

const fn b3(v: u32) -> u8 {
    v.to_le_bytes()[3]
}

/// The 16-bit address of detail count `i` (see [`DETAIL_COUNTS_ADDR`]).
const fn detail_count(i: u16) -> u16 {
    DETAIL_COUNTS_ADDR as u16 + 4 * i
}

/// The guest, hand-assembled 16-bit code (0x66 widens an operation to 32
/// bits so each loop can run up to 2^32-1 times). The loop counts come in
/// registers (see [`round_regs`]), but for the detail section's, which come in memory
/// ([`DETAIL_COUNTS_ADDR`]); so this one blob serves every workload.
/// Each loop is guarded by `test/jz` so a count of zero skips it. The code itself uses
/// no stack, so ESP is free to count the device loop. Interrupts stay off except at the
/// `hlt` of the halt loop (0xd2..0xe5, vCPU 0 only), where IRQ0 wakes the guest: its
/// delivery pushes FLAGS, CS and IP at SS:SP, with SS base 0 and SP 0 (see [`round_regs`]),
/// so at linear 0xfffa..=0xffff, inside RAM, and its `iret` pops them again.
///
/// The detail section (0x34..0xae) makes exits KVM handles in the kernel without telling the
/// VMM: `rdmsr`, `wrmsr`, `cpuid` and a hypercall. It keeps ECX (port, halts, end flag) in
/// EBP, free since the `in` loop, and clobbers EAX, EBX, EDX, ESI, all free by then.
///
/// The page loop (0xf8..0x10f) runs before all that, once: vCPU 0's first round starts there
/// with ES at [`NPF_ADDR`] (see [`first_round_regs`]). It writes the first byte of each page
/// through ES, 4 KiB (0x100 paragraphs) apart, until ES reaches the segment at
/// [`NPF_END_ADDR`], then jumps to the top. Only EDX is its own (the top sets DX first).
#[rustfmt::skip]
pub const CODE: [u8; 271] = [
    // 0x00  mov dx, PIO_USER_PORT
    0xba, lo(PIO_USER_PORT), hi(PIO_USER_PORT),
    // 0x03  test ebx, ebx            ; EBX = user PIO count
    0x66, 0x85, 0xdb,
    // 0x06  jz 0x0d
    0x74, 0x05,
    // 0x08  out dx, al               ; -> KVM_EXIT_IO (out)
    0xee,
    // 0x09  dec ebx
    0x66, 0x4b,
    // 0x0b  jnz 0x08
    0x75, 0xfb,
    // 0x0d  mov dx, cx               ; CX = this vCPU's ioeventfd port
    0x89, 0xca,
    // 0x0f  test esi, esi            ; ESI = in-kernel PIO count
    0x66, 0x85, 0xf6,
    // 0x12  jz 0x19
    0x74, 0x05,
    // 0x14  out dx, al               ; -> ioeventfd, no userspace exit
    0xee,
    // 0x15  dec esi
    0x66, 0x4e,
    // 0x17  jnz 0x14
    0x75, 0xfb,
    // 0x19  test edi, edi            ; EDI = MMIO write count
    0x66, 0x85, 0xff,
    // 0x1c  jz 0x27
    0x74, 0x09,
    // 0x1e  mov [bx], al             ; DS:BX = MMIO_ADDR + BX -> KVM_EXIT_MMIO (BX = 0 here)
    0x88, 0x07,
    // 0x20  inc bx
    0x43,
    // 0x21  and bx, ax               ; AX = the span's mask: the next of its addresses
    0x21, 0xc3,
    // 0x23  dec edi
    0x66, 0x4f,
    // 0x25  jnz 0x1e
    0x75, 0xf7,
    // 0x27  mov dx, PIO_IN_PORT
    0xba, lo(PIO_IN_PORT), hi(PIO_IN_PORT),
    // 0x2a  test ebp, ebp            ; EBP = IN count
    0x66, 0x85, 0xed,
    // 0x2d  jz 0x34
    0x74, 0x05,
    // 0x2f  in al, dx                ; -> KVM_EXIT_IO (in)
    0xec,
    // 0x30  dec ebp
    0x66, 0x4d,
    // 0x32  jnz 0x2f
    0x75, 0xfb,
    // 0x34  mov ebp, ecx             ; keep ECX through the detail section
    0x66, 0x89, 0xcd,
    // 0x37  mov esi, cs:[DETAIL_COUNTS_ADDR]      ; rdmsr count
    0x66, 0x2e, 0x8b, 0x36, lo(detail_count(0)), hi(detail_count(0)),
    // 0x3d  test esi, esi
    0x66, 0x85, 0xf6,
    // 0x40  jz 0x4e
    0x74, 0x0c,
    // 0x42  mov ecx, MSR_READ
    0x66, 0xb9, b0(MSR_READ), b1(MSR_READ), b2(MSR_READ), b3(MSR_READ),
    // 0x48  rdmsr                    ; -> in-kernel exit (EDX:EAX = the MSR)
    0x0f, 0x32,
    // 0x4a  dec esi
    0x66, 0x4e,
    // 0x4c  jnz 0x48
    0x75, 0xfa,
    // 0x4e  mov esi, cs:[DETAIL_COUNTS_ADDR + 4]  ; wrmsr count
    0x66, 0x2e, 0x8b, 0x36, lo(detail_count(1)), hi(detail_count(1)),
    // 0x54  test esi, esi
    0x66, 0x85, 0xf6,
    // 0x57  jz 0x6e
    0x74, 0x15,
    // 0x59  mov ecx, MSR_WRITE
    0x66, 0xb9, b0(MSR_WRITE), b1(MSR_WRITE), b2(MSR_WRITE), b3(MSR_WRITE),
    // 0x5f  mov eax, MSR_WRITE_VALUE
    0x66, 0xb8,
    b0(MSR_WRITE_VALUE as u32), b1(MSR_WRITE_VALUE as u32),
    b2(MSR_WRITE_VALUE as u32), b3(MSR_WRITE_VALUE as u32),
    // 0x65  xor edx, edx
    0x66, 0x31, 0xd2,
    // 0x68  wrmsr                    ; -> in-kernel exit
    0x0f, 0x30,
    // 0x6a  dec esi
    0x66, 0x4e,
    // 0x6c  jnz 0x68
    0x75, 0xfa,
    // 0x6e  mov esi, cs:[DETAIL_COUNTS_ADDR + 8]  ; cpuid iterations
    0x66, 0x2e, 0x8b, 0x36, lo(detail_count(2)), hi(detail_count(2)),
    // 0x74  test esi, esi
    0x66, 0x85, 0xf6,
    // 0x77  jz 0x93
    0x74, 0x1a,
    // 0x79  mov eax, CPUID_LEAVES[0]
    0x66, 0xb8,
    b0(CPUID_LEAVES[0]), b1(CPUID_LEAVES[0]), b2(CPUID_LEAVES[0]), b3(CPUID_LEAVES[0]),
    // 0x7f  xor ecx, ecx             ; subleaf 0
    0x66, 0x31, 0xc9,
    // 0x82  cpuid                    ; -> in-kernel exit (writes EAX, EBX, ECX, EDX)
    0x0f, 0xa2,
    // 0x84  mov eax, CPUID_LEAVES[1]
    0x66, 0xb8,
    b0(CPUID_LEAVES[1]), b1(CPUID_LEAVES[1]), b2(CPUID_LEAVES[1]), b3(CPUID_LEAVES[1]),
    // 0x8a  xor ecx, ecx
    0x66, 0x31, 0xc9,
    // 0x8d  cpuid                    ; -> in-kernel exit
    0x0f, 0xa2,
    // 0x8f  dec esi
    0x66, 0x4e,
    // 0x91  jnz 0x79
    0x75, 0xe6,
    // 0x93  mov esi, cs:[DETAIL_COUNTS_ADDR + 12] ; hypercall count
    0x66, 0x2e, 0x8b, 0x36, lo(detail_count(3)), hi(detail_count(3)),
    // 0x99  test esi, esi
    0x66, 0x85, 0xf6,
    // 0x9c  jz 0xab
    0x74, 0x0d,
    // 0x9e  mov eax, HYPERCALL_NR    ; again each time: KVM returns its answer in EAX
    0x66, 0xb8,
    b0(HYPERCALL_NR), b1(HYPERCALL_NR), b2(HYPERCALL_NR), b3(HYPERCALL_NR),
    // 0xa4  vmcall                   ; -> in-kernel exit (`vmmcall` patched in on SVM)
    VMCALL[0], VMCALL[1], VMCALL[2],
    // 0xa7  dec esi
    0x66, 0x4e,
    // 0xa9  jnz 0x9e
    0x75, 0xf3,
    // 0xab  mov ecx, ebp             ; ECX back for the halt loop and the end
    0x66, 0x89, 0xe9,
    // 0xae  test esp, esp            ; ESP = device loop count
    0x66, 0x85, 0xe4,
    // 0xb1  jz 0xc9
    0x74, 0x16,
    // 0xb3  mov dx, PIO_MIXED_IN_PORT
    0xba, lo(PIO_MIXED_IN_PORT), hi(PIO_MIXED_IN_PORT),
    // 0xb6  in al, dx                ; -> KVM_EXIT_IO (in)
    0xec,
    // 0xb7  mov dx, PIO_DEVICE_PORTS[0]
    0xba, lo(PIO_DEVICE_PORTS[0]), hi(PIO_DEVICE_PORTS[0]),
    // 0xba  in al, dx                ; in-kernel read, right after a read the VMM answered
    0xec,
    // 0xbb  out dx, al               ; in-kernel write of what was read
    0xee,
    // 0xbc  mov dx, PIO_MIXED_OUT_PORT
    0xba, lo(PIO_MIXED_OUT_PORT), hi(PIO_MIXED_OUT_PORT),
    // 0xbf  out dx, al               ; -> KVM_EXIT_IO (out)
    0xee,
    // 0xc0  mov dx, PIO_DEVICE_PORTS[1]
    0xba, lo(PIO_DEVICE_PORTS[1]), hi(PIO_DEVICE_PORTS[1]),
    // 0xc3  in al, dx                ; in-kernel read, right after a write to the VMM
    0xec,
    // 0xc4  out dx, al               ; in-kernel write
    0xee,
    // 0xc5  dec esp
    0x66, 0x4c,
    // 0xc7  jnz 0xb3
    0x75, 0xea,
    // 0xc9  test ecx, HALTS_MASK      ; ECX bits 16-30 = halts left (vCPU 0 only)
    0x66, 0xf7, 0xc1, 0x00, 0x00, 0xff, 0x7f,
    // 0xd0  jz 0xe5
    0x74, 0x13,
    // 0xd2  sti                      ; its one-instruction shadow makes `sti; hlt` atomic
    0xfb,
    // 0xd3  hlt                      ; IF=1, in-kernel irqchip: KVM blocks the vCPU until
    //                                ; IRQ0, whose handler (0xf7) returns to the `cli`
    0xf4,
    // 0xd4  cli
    0xfa,
    // 0xd5  sub ecx, 1 << 16         ; one halt done (never borrows into END_WITH_OUT)
    0x66, 0x81, 0xe9, 0x00, 0x00, 0x01, 0x00,
    // 0xdc  test ecx, HALTS_MASK
    0x66, 0xf7, 0xc1, 0x00, 0x00, 0xff, 0x7f,
    // 0xe3  jnz 0xd2
    0x75, 0xed,
    // 0xe5  test ecx, END_WITH_OUT
    0x66, 0xf7, 0xc1, 0x00, 0x00, 0x00, 0x80,
    // 0xec  jz 0xf4
    0x74, 0x06,
    // 0xee  mov dx, PIO_DONE_PORT
    0xba, lo(PIO_DONE_PORT), hi(PIO_DONE_PORT),
    // 0xf1  out dx, al               ; -> KVM_EXIT_IO (out): end of round (in-kernel irqchip)
    0xee,
    // 0xf2  jmp 0xf1                 ; re-entering without new registers ends again
    0xeb, 0xfd,
    // 0xf4  hlt                      ; IF=0 -> KVM_EXIT_HLT: end of round
    0xf4,
    // 0xf5  jmp 0xf4                 ; re-entering without new registers halts again
    0xeb, 0xfd,
    // 0xf7  iret                     ; IRQ0's handler (IVT vector IRQ0_VECTOR): wake and return
    0xcf,
    // 0xf8  mov es:[0], al           ; the page's first access -> EPT violation / NPF
    0x26, 0x88, 0x06, 0x00, 0x00,
    // 0xfd  mov dx, es
    0x8c, 0xc2,
    // 0xff  add dx, 0x100            ; the next page
    0x81, 0xc2, 0x00, 0x01,
    // 0x103 mov es, dx
    0x8e, 0xc2,
    // 0x105 cmp dx, cs:[NPF_END_ADDR]
    0x2e, 0x3b, 0x16, lo(NPF_END_ADDR as u16), hi(NPF_END_ADDR as u16),
    // 0x10a jne 0xf8
    0x75, 0xec,
    // 0x10c jmp 0x00                 ; on to the round
    0xe9, 0xf1, 0xfe,
];

/// Offsets in [`CODE`] of the instructions that exit (checked against the bytes below).
const PIO_USER_AT: usize = 0x08;
const PIO_KERNEL_AT: usize = 0x14;
const MMIO_AT: usize = 0x1e;
const PIO_IN_AT: usize = 0x2f;
const RDMSR_AT: usize = 0x48;
const WRMSR_AT: usize = 0x68;
const CPUID_AT: [usize; 2] = [0x82, 0x8d];
const HYPERCALL_AT: usize = 0xa4;
/// The immediate of the `mov eax, HYPERCALL_NR` before it.
const HYPERCALL_NR_AT: usize = 0xa0;
const PIO_MIXED_IN_AT: usize = 0xb6;
/// The device loop's in-kernel `in`, `out` on the first port, then on the second.
const PIO_DEVICE_AT: [usize; 4] = [0xba, 0xbb, 0xc3, 0xc4];
const PIO_MIXED_OUT_AT: usize = 0xbf;
const HALT_AT: usize = 0xd3;
const PIO_DONE_AT: usize = 0xf1;
const HLT_AT: usize = 0xf4;
/// The page loop's write.
pub const NPF_LOOP_AT: usize = 0xf8;

const fn rip(at: usize) -> u64 {
    CODE_ADDR + at as u64
}

// The guest-physical address (= RIP: CS base 0) of each exiting instruction, for a profiler's
// "top guest RIPs": every execution of one is one exit of its kind.
/// `out` to [`PIO_USER_PORT`].
pub const PIO_USER_RIP: u64 = rip(PIO_USER_AT);
/// `out` to the vCPU's in-kernel port.
pub const PIO_KERNEL_RIP: u64 = rip(PIO_KERNEL_AT);
/// The MMIO write.
pub const MMIO_RIP: u64 = rip(MMIO_AT);
/// `in` from [`PIO_IN_PORT`].
pub const PIO_IN_RIP: u64 = rip(PIO_IN_AT);
/// `rdmsr` of [`MSR_READ`].
pub const RDMSR_RIP: u64 = rip(RDMSR_AT);
/// `wrmsr` of [`MSR_WRITE`].
pub const WRMSR_RIP: u64 = rip(WRMSR_AT);
/// `cpuid` of each of [`CPUID_LEAVES`], in that order.
pub const CPUID_RIPS: [u64; 2] = [rip(CPUID_AT[0]), rip(CPUID_AT[1])];
/// The hypercall (`vmcall` or `vmmcall`).
pub const HYPERCALL_RIP: u64 = rip(HYPERCALL_AT);
/// The device loop's `in` from [`PIO_MIXED_IN_PORT`].
pub const PIO_MIXED_IN_RIP: u64 = rip(PIO_MIXED_IN_AT);
/// The device loop's `out` to [`PIO_MIXED_OUT_PORT`].
pub const PIO_MIXED_OUT_RIP: u64 = rip(PIO_MIXED_OUT_AT);
/// The device loop's in-kernel accesses: `in` and `out` of `PIO_DEVICE_PORTS[0]`, then of
/// `PIO_DEVICE_PORTS[1]`.
pub const PIO_DEVICE_RIPS: [u64; 4] = [
    rip(PIO_DEVICE_AT[0]),
    rip(PIO_DEVICE_AT[1]),
    rip(PIO_DEVICE_AT[2]),
    rip(PIO_DEVICE_AT[3]),
];
/// The halt loop's `hlt` (interrupts on, kept in the kernel).
pub const HALT_RIP: u64 = rip(HALT_AT);
/// The `out` to [`PIO_DONE_PORT`] that ends a round with the in-kernel irqchip.
pub const PIO_DONE_RIP: u64 = rip(PIO_DONE_AT);
/// The `hlt` that ends a round without it (KVM_EXIT_HLT).
pub const HLT_RIP: u64 = rip(HLT_AT);
/// The page loop's write (one exit per page, on VMX and SVM).
pub const NPF_RIP: u64 = rip(NPF_LOOP_AT);

/// Every exiting instruction's RIP by name, for the counts' JSON.
pub fn rips() -> Vec<(&'static str, u64)> {
    vec![
        ("pio_user", PIO_USER_RIP),
        ("pio_kernel", PIO_KERNEL_RIP),
        ("mmio_user", MMIO_RIP),
        ("pio_in", PIO_IN_RIP),
        ("rdmsr", RDMSR_RIP),
        ("wrmsr", WRMSR_RIP),
        ("cpuid_0", CPUID_RIPS[0]),
        ("cpuid_1", CPUID_RIPS[1]),
        ("hypercall", HYPERCALL_RIP),
        ("pio_mixed_in", PIO_MIXED_IN_RIP),
        ("pio_device_0_in", PIO_DEVICE_RIPS[0]),
        ("pio_device_0_out", PIO_DEVICE_RIPS[1]),
        ("pio_mixed_out", PIO_MIXED_OUT_RIP),
        ("pio_device_1_in", PIO_DEVICE_RIPS[2]),
        ("pio_device_1_out", PIO_DEVICE_RIPS[3]),
        ("halt", HALT_RIP),
        ("done", PIO_DONE_RIP),
        ("hlt", HLT_RIP),
        ("npf", NPF_RIP),
    ]
}

/// [`CODE`] with `hypercall`'s instruction ([`VMCALL`] or [`VMMCALL`]) and number.
pub fn code(hypercall: Hypercall) -> [u8; CODE.len()] {
    let mut code = CODE;
    code[HYPERCALL_AT..HYPERCALL_AT + 3].copy_from_slice(&hypercall.insn);
    code[HYPERCALL_NR_AT..HYPERCALL_NR_AT + 4].copy_from_slice(&hypercall.nr().to_le_bytes());
    code
}

/// What the VMM writes at [`DETAIL_COUNTS_ADDR`] for `round`.
pub fn detail_counts(round: &Round) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    let counts = [
        round.msr_read,
        round.msr_write,
        round.cpuid,
        round.hypercall,
    ];
    for (chunk, n) in bytes.chunks_exact_mut(4).zip(counts) {
        chunk.copy_from_slice(&n.to_le_bytes());
    }
    bytes
}

/// The segment at which the page loop of `round` stops, which the VMM puts at
/// [`NPF_END_ADDR`].
pub fn npf_end(round: &Round) -> u16 {
    (NPF_ADDR >> 4) as u16 + (round.npf_pages * (PAGE_SIZE >> 4) as u32) as u16
}

/// The guest-physical pages the page loop writes for `n` pages, in order.
pub fn npf_pages(n: u32) -> Vec<u64> {
    (0..u64::from(n))
        .map(|i| NPF_ADDR + i * PAGE_SIZE)
        .collect()
}

/// The imm32 of the instruction `66 <op> <modrm> <imm32>` at `at` in [`CODE`].
const fn imm32(at: usize) -> u32 {
    u32::from_le_bytes([CODE[at + 3], CODE[at + 4], CODE[at + 5], CODE[at + 6]])
}

// The layout's invariants, checked at compile time.
const _: () = {
    assert!(
        CODE_ADDR as usize + CODE.len() <= RAM_SIZE,
        "code must fit in RAM"
    );
    assert!(MMIO_ADDR >= RAM_SIZE as u64, "MMIO must miss the RAM slot");
    assert!(
        MMIO_ADDR + 0x1_0000 <= 0x10_0000,
        "DS's 64 KiB must stay in the ISA hole"
    );
    assert!(
        MMIO_ADDR.is_multiple_of(16) && MMIO_ADDR <= 0xf_fff0,
        "DS must reach MMIO_ADDR at offset 0"
    );
    let kernel_ports = (
        PIO_KERNEL_PORT_BASE as u32,
        PIO_KERNEL_PORT_BASE as u32 + MAX_VCPUS,
    );
    assert!(kernel_ports.1 <= 0x1_0000, "every vCPU needs a port");
    assert!(PIO_USER_PORT != PIO_IN_PORT);
    let user = PIO_USER_PORT as u32;
    assert!(user < kernel_ports.0 || user >= kernel_ports.1);
    let input = PIO_IN_PORT as u32;
    assert!(input < kernel_ports.0 || input >= kernel_ports.1);
    assert!(
        imm32(0xc9) as u64 == HALTS_MASK,
        "the imm32 of `test ecx` at 0xc9"
    );
    assert!(
        imm32(0xdc) as u64 == HALTS_MASK,
        "the imm32 of `test ecx` at 0xdc"
    );
    assert!(
        imm32(0xd5) == 1 << HALTS_SHIFT,
        "the imm32 of `sub ecx` at 0xd5"
    );
    assert!(
        imm32(0xe5) as u64 == END_WITH_OUT,
        "the imm32 of `test ecx` at 0xe5"
    );
    assert!(END_WITH_OUT == 1 << 31 && HALTS_MASK & END_WITH_OUT == 0);
    assert!(
        HALTS_MASK & 0xffff == 0,
        "the halts must miss the port in CX"
    );
    assert!(
        CODE[HALT_AT - 1] == 0xfb && CODE[HALT_AT] == 0xf4,
        "`sti; hlt` in the halt loop"
    );
    assert!(
        CODE[IRQ_HANDLER_OFFSET] == 0xcf,
        "IRQ0's handler is an `iret`"
    );
    assert!(
        CODE_ADDR + IRQ_HANDLER_OFFSET as u64 <= 0xffff,
        "the handler is reachable from CS 0"
    );
    assert!(
        IRQ0_IVT_ENTRY + 4 <= CODE_ADDR,
        "the IVT entry must miss the code"
    );
    // SS base 0, SP 0 at the halt loop: an interrupt's 6 bytes go to 0xfffa..=0xffff.
    assert!(
        RAM_SIZE >= 0x1_0000,
        "SS's 64 KiB (the interrupt's stack) must be RAM"
    );
    assert!(
        CODE_ADDR as usize + CODE.len() <= 0xfffa,
        "the interrupt's stack must miss the code"
    );
    // The exiting instructions are where their RIPs say.
    assert!(CODE[PIO_USER_AT] == 0xee && CODE[PIO_KERNEL_AT] == 0xee && CODE[PIO_IN_AT] == 0xec);
    assert!(CODE[MMIO_AT] == 0x88 && CODE[PIO_MIXED_IN_AT] == 0xec);
    assert!(CODE[PIO_MIXED_OUT_AT] == 0xee && CODE[PIO_DONE_AT] == 0xee && CODE[HLT_AT] == 0xf4);
    assert!(CODE[PIO_DEVICE_AT[0]] == 0xec && CODE[PIO_DEVICE_AT[1]] == 0xee);
    assert!(CODE[PIO_DEVICE_AT[2]] == 0xec && CODE[PIO_DEVICE_AT[3]] == 0xee);
    assert!(
        CODE[RDMSR_AT] == 0x0f && CODE[RDMSR_AT + 1] == 0x32,
        "rdmsr"
    );
    assert!(
        CODE[WRMSR_AT] == 0x0f && CODE[WRMSR_AT + 1] == 0x30,
        "wrmsr"
    );
    assert!(
        CODE[CPUID_AT[0]] == 0x0f && CODE[CPUID_AT[0] + 1] == 0xa2,
        "cpuid"
    );
    assert!(
        CODE[CPUID_AT[1]] == 0x0f && CODE[CPUID_AT[1] + 1] == 0xa2,
        "cpuid"
    );
    assert!(
        CODE[HYPERCALL_AT] == VMCALL[0]
            && CODE[HYPERCALL_AT + 1] == VMCALL[1]
            && CODE[HYPERCALL_AT + 2] == VMCALL[2],
        "vmcall"
    );
    assert!(VMCALL[0] == VMMCALL[0] && VMCALL[1] == VMMCALL[1]);
    // The detail section's data: past the IVT, before the code, apart from each other.
    assert!(DETAIL_COUNTS_ADDR >= 0x400 && DETAIL_COUNTS_ADDR + 16 <= MSR_WRITE_VALUE);
    assert!(MSR_WRITE_VALUE + WALL_CLOCK_SIZE <= CODE_ADDR);
    assert!(NPF_END_ADDR + 2 <= MSR_WRITE_VALUE);
    // The page loop's pages: apart from RAM, page-aligned, ES-reachable, their end in a u16.
    assert!(NPF_ADDR >= RAM_SIZE as u64 && NPF_ADDR.is_multiple_of(PAGE_SIZE));
    assert!(NPF_ADDR + MAX_NPF_PAGES as u64 * PAGE_SIZE <= 0xa_0000);
    assert!(
        CODE[NPF_LOOP_AT] == 0x26 && CODE[NPF_LOOP_AT + 1] == 0x88,
        "the page write"
    );
    assert!(
        CODE[NPF_LOOP_AT - 1] == 0xcf,
        "the page loop follows the handler"
    );
    assert!(
        MSR_WRITE_VALUE != 0,
        "a wall-clock address of 0 would mean none"
    );
    assert!(CPUID_LEAVES[0] != CPUID_LEAVES[1]);
    let own = [PIO_MIXED_IN_PORT, PIO_MIXED_OUT_PORT, PIO_DONE_PORT];
    let mut i = 0;
    while i < own.len() {
        let p = own[i] as u32;
        assert!(p < kernel_ports.0 || p >= kernel_ports.1);
        assert!(own[i] != PIO_USER_PORT && own[i] != PIO_IN_PORT);
        i += 1;
    }
};

/// Whether `addr` is one the MMIO loop can write: DS's 64 KiB from [`MMIO_ADDR`].
pub fn in_mmio_span(addr: u64) -> bool {
    (MMIO_ADDR..MMIO_ADDR + 0x1_0000).contains(&addr)
}

/// The in-kernel PIO port of vCPU `index`.
pub fn kernel_port(index: u32) -> u16 {
    debug_assert!(index < MAX_VCPUS);
    PIO_KERNEL_PORT_BASE + index as u16
}

/// Whether a VM running `round` needs KVM's in-kernel irqchip: its device loop does, and so
/// do its halts (KVM keeps them in the kernel and its PIC wakes them). Decided per VM, so
/// every vCPU of it ends its rounds with the `out` then, also those that do not halt.
pub fn needs_irqchip(round: &Round) -> bool {
    round.pio_device > 0 || round.halts > 0
}

/// The `hlt`s vCPU `vcpu` makes per round of `round`: only vCPU 0 halts. KVM hands the
/// PIC's interrupt (ExtINT) only to a vCPU whose LAPIC accepts it on LINT0, and it sets that
/// up at reset only for the boot vCPU, 0 (KVM_X86_QUIRK_LINT0_REENABLED, on by default):
/// another vCPU's `hlt` would never be woken.
pub fn round_halts(round: &Round, vcpu: u32) -> u16 {
    if vcpu == 0 {
        round.halts
    } else {
        0
    }
}

/// The pages vCPU `vcpu` writes in its first round of `round`: only vCPU 0 writes them, so
/// that each is written exactly once.
pub fn round_npf_pages(round: &Round, vcpu: u32) -> u32 {
    if vcpu == 0 {
        round.npf_pages
    } else {
        0
    }
}

/// General registers that start vCPU `vcpu`'s first round of `round`: [`round_regs`], at the
/// page loop when it has pages to write (it goes on to the top of [`CODE`]).
pub fn first_round_regs(round: &Round, vcpu: u32) -> kvm_regs {
    let mut regs = round_regs(round, vcpu);
    if round_npf_pages(round, vcpu) > 0 {
        regs.rip = NPF_RIP;
    }
    regs
}

/// General registers that start one round of `round` at the top of [`CODE`] on vCPU `vcpu`.
pub fn round_regs(round: &Round, vcpu: u32) -> kvm_regs {
    let end = if needs_irqchip(round) {
        END_WITH_OUT
    } else {
        0
    };
    let halts = u64::from(round_halts(round, vcpu));
    debug_assert!(halts <= u64::from(MAX_HALTS));
    kvm_regs {
        rip: CODE_ADDR,
        // Bit 1 is reserved and must be set; interrupts stay off (IF=0) but in the halt loop.
        rflags: 0x2,
        rax: round.mmio_mask.into(),
        rbx: round.pio_user.into(),
        rsi: round.pio_kernel.into(),
        rdi: round.mmio_user.into(),
        rbp: round.pio_in.into(),
        // Also SP for IRQ0's delivery in the halt loop, which comes after the device loop:
        // 0 there either way (the loop counts ESP down to 0, or does not run as it is 0), so
        // the interrupt pushes wrap to SS:0xfffa..=0xffff, inside RAM (see `CODE`).
        rsp: round.pio_device.into(),
        rcx: u64::from(kernel_port(vcpu)) | halts << HALTS_SHIFT | end,
        ..Default::default()
    }
}

/// Flat real mode: CS at linear 0 so RIP is the guest-physical address, DS at
/// [`MMIO_ADDR`] so `mov [bx], al` hits the MMIO hole, ES at [`NPF_ADDR`] for the page loop,
/// SS at 0 so an interrupt's pushes land in RAM (KVM resets it so; set here so it does not
/// depend on that).
pub fn setup_sregs(sregs: &mut kvm_sregs, abi: Abi) {
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    sregs.ss.base = 0;
    sregs.ss.selector = 0;
    // The real-mode IVT, where IRQ0_IVT_ENTRY is; also KVM's reset value.
    sregs.idt.base = 0;
    sregs.ds.base = MMIO_ADDR;
    // Real mode requires base == selector << 4.
    sregs.ds.selector = (MMIO_ADDR >> 4) as u16;
    sregs.es.base = NPF_ADDR;
    sregs.es.selector = (NPF_ADDR >> 4) as u16;
    if protected_mode(abi) {
        sregs.cr0 |= CR0_PE;
    }
}

const CR0_PE: u64 = 1;

/// Whether the guest runs with CR0.PE set: for Hyper-V's hypercalls, which KVM answers with
/// #UD in real mode. The code stays the same: it never loads a segment register outside the
/// page loop, so the 16-bit segments of real mode, cached in the vCPU, carry on unchanged
/// (CPL 0), as between a real-mode kernel's `mov cr0` and its far jump. Its halts, whose
/// interrupt would go through a protected-mode IDT, and its page loop (`mov es`) cannot
/// run then.
pub fn protected_mode(abi: Abi) -> bool {
    abi == Abi::Hyperv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Event {
        Out(u16),
        In(u16),
        Write(u64),
        /// A `hlt` with interrupts enabled (the halt loop), woken by an interrupt.
        IrqHlt,
        /// The `hlt` that ends the round, interrupts off.
        Hlt,
        /// `rdmsr` of ECX, at this RIP.
        Rdmsr(u32, u64),
        /// `wrmsr` of ECX with EDX:EAX.
        Wrmsr(u32, u64, u64),
        /// `cpuid` of EAX, subleaf ECX.
        Cpuid(u32, u32, u64),
        /// A hypercall, EAX = its number.
        Hypercall(u32, u64),
    }

    /// What `cpuid` leaves in EAX..EDX and `rdmsr` in EAX and EDX: junk the code must not
    /// depend on.
    const JUNK: u64 = 0xdead_beef;

    /// Interprets exactly the instructions [`CODE`] uses, recording the
    /// accesses that would exit. Proves the hand-assembled bytes without KVM. `detail` and
    /// `npf_end` are what the VMM put at [`DETAIL_COUNTS_ADDR`] and [`NPF_END_ADDR`], the
    /// only memory the code reads.
    fn interpret(regs: &kvm_regs, sregs: &kvm_sregs, detail: [u8; 16], npf_end: u16) -> Vec<Event> {
        let ds_base = sregs.ds.base;
        let mut es = u64::from(sregs.es.selector);
        let mut r = [
            regs.rax, regs.rcx, 0, regs.rbx, regs.rsp, regs.rbp, regs.rsi, regs.rdi,
        ];
        let mut ip = (regs.rip - CODE_ADDR) as usize;
        let mut zf = false;
        let mut interrupts = regs.rflags & 0x200 != 0;
        // Set by `sti` for the one instruction after it (its interrupt shadow).
        let mut shadow = false;
        let mut events = Vec::new();
        let byte = |at: usize| CODE[at];
        let word = |at: usize| u16::from_le_bytes([CODE[at], CODE[at + 1]]);
        let rel =
            |ip: usize, at: usize| (ip as isize + i8::from_le_bytes([CODE[at]]) as isize) as usize;
        loop {
            let after_sti = std::mem::take(&mut shadow);
            match (byte(ip), byte(ip + 1)) {
                (0xba, _) => {
                    r[2] = word(ip + 1).into();
                    ip += 3;
                }
                (0x89, 0xca) => {
                    r[2] = r[1] & 0xffff;
                    ip += 2;
                }
                (0x66, 0x89) => {
                    let m = byte(ip + 2);
                    assert_eq!(m >> 6, 3, "register operands only");
                    r[usize::from(m & 7)] = r[usize::from((m >> 3) & 7)] & 0xffff_ffff;
                    ip += 3;
                }
                (0x66, 0x31) => {
                    let m = byte(ip + 2);
                    assert_eq!(m >> 6, 3, "register operands only");
                    let v = r[usize::from(m & 7)] ^ r[usize::from((m >> 3) & 7)];
                    r[usize::from(m & 7)] = v & 0xffff_ffff;
                    zf = v & 0xffff_ffff == 0;
                    ip += 3;
                }
                (0x66, op @ 0xb8..=0xbf) => {
                    r[usize::from(op - 0xb8)] = u32::from_le_bytes([
                        byte(ip + 2),
                        byte(ip + 3),
                        byte(ip + 4),
                        byte(ip + 5),
                    ])
                    .into();
                    ip += 6;
                }
                (0x66, 0x2e) => {
                    // mov r32, cs:[disp16] (CS base 0): only the detail counts are read.
                    assert_eq!(byte(ip + 2), 0x8b, "mov r32, r/m32 only");
                    let m = byte(ip + 3);
                    assert_eq!(m & 0xc7, 0x06, "a disp16 operand only");
                    let at = u64::from(word(ip + 4));
                    assert!(
                        (DETAIL_COUNTS_ADDR..DETAIL_COUNTS_ADDR + 13).contains(&at),
                        "reads {at:#x}"
                    );
                    let i = (at - DETAIL_COUNTS_ADDR) as usize;
                    let v = u32::from_le_bytes([
                        detail[i],
                        detail[i + 1],
                        detail[i + 2],
                        detail[i + 3],
                    ]);
                    r[usize::from((m >> 3) & 7)] = v.into();
                    ip += 6;
                }
                (0x0f, 0x32) => {
                    events.push(Event::Rdmsr(r[1] as u32, CODE_ADDR + ip as u64));
                    (r[0], r[2]) = (JUNK, JUNK);
                    ip += 2;
                }
                (0x0f, 0x30) => {
                    let value = (r[2] & 0xffff_ffff) << 32 | (r[0] & 0xffff_ffff);
                    events.push(Event::Wrmsr(r[1] as u32, value, CODE_ADDR + ip as u64));
                    ip += 2;
                }
                (0x0f, 0xa2) => {
                    events.push(Event::Cpuid(
                        r[0] as u32,
                        r[1] as u32,
                        CODE_ADDR + ip as u64,
                    ));
                    (r[0], r[1], r[2], r[3]) = (JUNK, JUNK, JUNK, JUNK);
                    ip += 2;
                }
                (0x0f, 0x01) => {
                    assert_eq!(&CODE[ip..ip + 3], VMCALL, "the hypercall only");
                    events.push(Event::Hypercall(r[0] as u32, CODE_ADDR + ip as u64));
                    // KVM's answer: -KVM_ENOSYS, truncated to 32 bits outside long mode.
                    r[0] = (-1000i32 as u32).into();
                    ip += 3;
                }
                (0x66, 0x85) => {
                    let m = byte(ip + 2);
                    assert_eq!(m >> 6, 3, "register operands only");
                    zf = r[usize::from(m & 7)] & r[usize::from((m >> 3) & 7)] & 0xffff_ffff == 0;
                    ip += 3;
                }
                (0x66, op @ 0x48..=0x4f) => {
                    let reg = usize::from(op - 0x48);
                    r[reg] = (r[reg] as u32).wrapping_sub(1).into();
                    zf = r[reg] == 0;
                    ip += 2;
                }
                (0x66, 0xf7) => {
                    assert_eq!(byte(ip + 2), 0xc1, "test ecx, imm32 only");
                    zf = r[1] as u32 & imm32(ip) == 0;
                    ip += 7;
                }
                (0x66, 0x81) => {
                    assert_eq!(byte(ip + 2), 0xe9, "sub ecx, imm32 only");
                    let ecx = (r[1] as u32).wrapping_sub(imm32(ip));
                    r[1] = ecx.into();
                    zf = ecx == 0;
                    ip += 7;
                }
                (0xfb, _) => {
                    interrupts = true;
                    shadow = true;
                    ip += 1;
                }
                (0xfa, _) => {
                    interrupts = false;
                    ip += 1;
                }
                (0xeb, _) => {
                    // Only the ends loop back on themselves: their event is already out.
                    return events;
                }
                (0x74, _) => ip = if zf { rel(ip + 2, ip + 1) } else { ip + 2 },
                (0x75, _) => ip = if zf { ip + 2 } else { rel(ip + 2, ip + 1) },
                (0xee, _) => {
                    events.push(Event::Out(r[2] as u16));
                    ip += 1;
                }
                (0xec, _) => {
                    events.push(Event::In(r[2] as u16));
                    ip += 1;
                }
                (0x26, 0x88) => {
                    // mov es:[disp16], al
                    assert_eq!(byte(ip + 2), 0x06, "a disp16 operand only");
                    events.push(Event::Write((es << 4) + u64::from(word(ip + 3))));
                    ip += 5;
                }
                (0x8c, 0xc2) => {
                    r[2] = (r[2] & !0xffff) | es;
                    ip += 2;
                }
                (0x81, 0xc2) => {
                    let dx = (r[2] as u16).wrapping_add(word(ip + 2));
                    r[2] = (r[2] & !0xffff) | u64::from(dx);
                    ip += 4;
                }
                (0x8e, 0xc2) => {
                    es = r[2] & 0xffff;
                    ip += 2;
                }
                (0x2e, 0x3b) => {
                    // cmp dx, cs:[disp16]: only the page loop's end is read.
                    assert_eq!(byte(ip + 2), 0x16, "cmp dx, [disp16] only");
                    assert_eq!(u64::from(word(ip + 3)), NPF_END_ADDR);
                    zf = r[2] as u16 == npf_end;
                    ip += 5;
                }
                (0xe9, _) => {
                    let to =
                        ip as isize + 3 + i16::from_le_bytes([byte(ip + 1), byte(ip + 2)]) as isize;
                    ip = to as usize;
                }
                (0x88, 0x07) => {
                    events.push(Event::Write(ds_base + (r[3] & 0xffff)));
                    ip += 2;
                }
                (0x43, _) => {
                    r[3] = (r[3] & !0xffff) | (r[3].wrapping_add(1) & 0xffff);
                    ip += 1;
                }
                (0x21, 0xc3) => {
                    r[3] &= !0xffff | (r[0] & 0xffff);
                    ip += 2;
                }
                (0xf4, _) if interrupts => {
                    // Only right after `sti`: an interrupt can then not slip in before the
                    // `hlt` and leave it waiting for the next one.
                    assert!(after_sti, "hlt with interrupts on but not right after sti");
                    // The interrupt's FLAGS, CS and IP go to SS:SP - 6 (SS base 0): in RAM.
                    let sp = r[4] as u16;
                    assert!(
                        usize::from(sp.wrapping_sub(6)) + 6 <= RAM_SIZE,
                        "SP {sp:#x}"
                    );
                    // The interrupt wakes it; its handler (an `iret`) returns right after it.
                    events.push(Event::IrqHlt);
                    ip += 1;
                }
                (0xf4, _) => {
                    events.push(Event::Hlt);
                    return events;
                }
                other => panic!("unexpected opcode {other:x?} at {ip:#x}"),
            }
        }
    }

    fn run(round: Round, vcpu: u32) -> Vec<Event> {
        run_from(&round_regs(&round, vcpu), round)
    }

    fn run_from(regs: &kvm_regs, round: Round) -> Vec<Event> {
        let mut sregs = kvm_sregs::default();
        setup_sregs(&mut sregs, Abi::Kvm);
        interpret(regs, &sregs, detail_counts(&round), npf_end(&round))
    }

    /// vCPU 0's first round writes each page once, in order, then makes the round; later
    /// rounds and the other vCPUs write none.
    #[test]
    fn the_page_loop_writes_each_fresh_page_once_before_the_first_round() {
        let round = Round {
            pio_user: 2,
            npf_pages: 3,
            ..Round::default()
        };
        let mut want: Vec<Event> = npf_pages(3).into_iter().map(Event::Write).collect();
        assert_eq!(
            want,
            [
                Event::Write(0x2_0000),
                Event::Write(0x2_1000),
                Event::Write(0x2_2000)
            ]
        );
        let rest = || {
            vec![
                Event::Out(PIO_USER_PORT),
                Event::Out(PIO_USER_PORT),
                Event::Hlt,
            ]
        };
        want.extend(rest());
        assert_eq!(run_from(&first_round_regs(&round, 0), round), want);
        assert_eq!(run_from(&first_round_regs(&round, 1), round), rest());
        assert_eq!(run(round, 0), rest());
        let most = Round {
            npf_pages: MAX_NPF_PAGES,
            ..Round::default()
        };
        let events = run_from(&first_round_regs(&most, 0), most);
        assert_eq!(events.len(), MAX_NPF_PAGES as usize + 1);
        assert_eq!(
            events[MAX_NPF_PAGES as usize - 1],
            Event::Write(0xa_0000 - PAGE_SIZE)
        );
    }

    #[test]
    fn code_makes_exactly_the_requested_accesses_in_order() {
        let round = Round {
            pio_user: 3,
            pio_kernel: 5,
            mmio_user: 2,
            pio_in: 4,
            ..Round::default()
        };
        let port = kernel_port(1);
        let mut want = Vec::new();
        want.extend((0..3).map(|_| Event::Out(PIO_USER_PORT)));
        want.extend((0..5).map(|_| Event::Out(port)));
        want.extend((0..2).map(|_| Event::Write(MMIO_ADDR)));
        want.extend((0..4).map(|_| Event::In(PIO_IN_PORT)));
        want.push(Event::Hlt);
        assert_eq!(run(round, 1), want);
    }

    #[test]
    fn the_device_loop_interleaves_in_kernel_and_userspace_ports_and_ends_with_an_out() {
        let round = Round {
            pio_user: 1,
            pio_device: 2,
            ..Round::default()
        };
        let [elcr1, elcr2] = PIO_DEVICE_PORTS;
        let once = [
            Event::In(PIO_MIXED_IN_PORT),
            Event::In(elcr1),
            Event::Out(elcr1),
            Event::Out(PIO_MIXED_OUT_PORT),
            Event::In(elcr2),
            Event::Out(elcr2),
        ];
        let mut want = vec![Event::Out(PIO_USER_PORT)];
        want.extend(once.iter().chain(&once).map(|e| match e {
            Event::In(p) => Event::In(*p),
            Event::Out(p) => Event::Out(*p),
            _ => unreachable!(),
        }));
        want.push(Event::Out(PIO_DONE_PORT));
        assert_eq!(run(round, 0), want);
        assert!(needs_irqchip(&round));
    }

    #[test]
    fn zero_counts_skip_their_loop() {
        assert_eq!(run(Round::default(), 0), vec![Event::Hlt]);
        let only_mmio = Round {
            mmio_user: 1,
            ..Round::default()
        };
        assert_eq!(run(only_mmio, 0), vec![Event::Write(MMIO_ADDR), Event::Hlt]);
    }

    #[test]
    fn mmio_writes_cycle_through_the_span() {
        let round = Round {
            mmio_user: 6,
            mmio_mask: 3,
            ..Round::default()
        };
        let want: Vec<Event> = [0, 1, 2, 3, 0, 1]
            .iter()
            .map(|i| Event::Write(MMIO_ADDR + i))
            .chain([Event::Hlt])
            .collect();
        assert_eq!(run(round, 0), want);
    }

    #[test]
    fn vcpu_0_halts_n_times_with_interrupts_on_then_ends_with_an_out() {
        let round = Round {
            halts: 3,
            ..Round::default()
        };
        assert!(needs_irqchip(&round));
        let want = vec![
            Event::IrqHlt,
            Event::IrqHlt,
            Event::IrqHlt,
            Event::Out(PIO_DONE_PORT),
        ];
        assert_eq!(run(round, 0), want);
        // The other vCPUs do not halt, but end as vCPU 0 does: the VM has the irqchip.
        assert_eq!(run(round, 1), vec![Event::Out(PIO_DONE_PORT)]);
        assert_eq!(round_halts(&round, 1), 0);
    }

    /// What vCPU 0 of a round with one device-loop iteration and two halts does last.
    fn one_device_loop_two_halts_and_the_end() -> [Event; 9] {
        let [elcr1, elcr2] = PIO_DEVICE_PORTS;
        [
            Event::In(PIO_MIXED_IN_PORT),
            Event::In(elcr1),
            Event::Out(elcr1),
            Event::Out(PIO_MIXED_OUT_PORT),
            Event::In(elcr2),
            Event::Out(elcr2),
            Event::IrqHlt,
            Event::IrqHlt,
            Event::Out(PIO_DONE_PORT),
        ]
    }

    #[test]
    fn the_halts_come_after_the_device_loop_and_keep_the_port() {
        let round = Round {
            pio_kernel: 2,
            pio_device: 1,
            halts: 2,
            ..Round::default()
        };
        let port = kernel_port(0);
        let mut want = vec![Event::Out(port), Event::Out(port)];
        want.extend(one_device_loop_two_halts_and_the_end());
        assert_eq!(run(round, 0), want);
    }

    #[test]
    fn the_most_halts_fit_beside_the_port_and_the_end_flag() {
        let round = Round {
            halts: MAX_HALTS as u16,
            ..Round::default()
        };
        let regs = round_regs(&round, 0);
        assert_eq!(regs.rcx, 0xffff_0000 | u64::from(kernel_port(0)));
        let events = run(round, 0);
        assert_eq!(events.len(), MAX_HALTS as usize + 1);
        assert!(events[..MAX_HALTS as usize]
            .iter()
            .all(|e| *e == Event::IrqHlt));
        assert_eq!(events.last(), Some(&Event::Out(PIO_DONE_PORT)));
    }

    #[test]
    fn the_irq0_handler_is_an_iret_inside_ram() {
        assert_eq!(CODE[IRQ_HANDLER_OFFSET], 0xcf);
        let handler = CODE_ADDR + IRQ_HANDLER_OFFSET as u64;
        assert!(handler <= 0xffff && (handler as usize) < RAM_SIZE);
        assert_eq!(IRQ0_IVT_ENTRY, 0x20);
    }

    /// The detail section's instructions, `n` iterations of each loop as `round` asks.
    fn detail_events(round: &Round) -> Vec<Event> {
        let mut want = Vec::new();
        want.extend((0..round.msr_read).map(|_| Event::Rdmsr(MSR_READ, RDMSR_RIP)));
        want.extend(
            (0..round.msr_write).map(|_| Event::Wrmsr(MSR_WRITE, MSR_WRITE_VALUE, WRMSR_RIP)),
        );
        for _ in 0..round.cpuid {
            want.push(Event::Cpuid(CPUID_LEAVES[0], 0, CPUID_RIPS[0]));
            want.push(Event::Cpuid(CPUID_LEAVES[1], 0, CPUID_RIPS[1]));
        }
        want.extend((0..round.hypercall).map(|_| Event::Hypercall(HYPERCALL_NR, HYPERCALL_RIP)));
        want
    }

    #[test]
    fn the_detail_section_comes_after_the_ins_and_keeps_ecx_for_the_halts_and_the_end() {
        let round = Round {
            pio_in: 1,
            pio_kernel: 1,
            msr_read: 3,
            msr_write: 2,
            cpuid: 2,
            hypercall: 4,
            pio_device: 1,
            halts: 2,
            ..Round::default()
        };
        let mut want = vec![Event::Out(kernel_port(0)), Event::In(PIO_IN_PORT)];
        want.extend(detail_events(&round));
        want.extend(one_device_loop_two_halts_and_the_end());
        assert_eq!(run(round, 0), want);
    }

    #[test]
    fn each_detail_loop_runs_alone_and_zero_skips_it() {
        for round in [
            Round {
                msr_read: 5,
                ..Round::default()
            },
            Round {
                msr_write: 5,
                ..Round::default()
            },
            Round {
                cpuid: 5,
                ..Round::default()
            },
            Round {
                hypercall: 5,
                ..Round::default()
            },
        ] {
            let mut want = detail_events(&round);
            assert_eq!(want.len(), 5 * if round.cpuid > 0 { 2 } else { 1 });
            want.push(Event::Hlt);
            assert_eq!(run(round, 1), want, "{round:?}");
        }
    }

    #[test]
    fn detail_counts_are_four_little_endian_u32s() {
        let round = Round {
            msr_read: 1,
            msr_write: 0x0203,
            cpuid: u32::MAX,
            hypercall: 4,
            ..Round::default()
        };
        assert_eq!(
            detail_counts(&round),
            [1, 0, 0, 0, 3, 2, 0, 0, 0xff, 0xff, 0xff, 0xff, 4, 0, 0, 0]
        );
    }

    #[test]
    fn the_hypercall_instruction_is_patched_in_place() {
        let call = |insn, abi| code(Hypercall { insn, abi });
        let amd = call(VMMCALL, Abi::Kvm);
        assert_eq!(&amd[HYPERCALL_AT..HYPERCALL_AT + 3], VMMCALL);
        assert_eq!(amd[..HYPERCALL_AT], CODE[..HYPERCALL_AT]);
        assert_eq!(amd[HYPERCALL_AT + 3..], CODE[HYPERCALL_AT + 3..]);
        assert_eq!(call(VMCALL, Abi::Kvm), CODE);
        assert_eq!(HYPERCALL_RIP, CODE_ADDR + 0xa4);
        // Xen's number goes in the `mov eax` right before, and nothing else moves.
        let xen = call(VMCALL, Abi::Xen);
        assert_eq!(
            CODE[HYPERCALL_NR_AT..HYPERCALL_AT],
            HYPERCALL_NR.to_le_bytes()
        );
        assert_eq!(&xen[HYPERCALL_NR_AT - 2..HYPERCALL_NR_AT], [0x66, 0xb8]);
        assert_eq!(
            xen[HYPERCALL_NR_AT..HYPERCALL_AT],
            XEN_SCHED_OP.to_le_bytes()
        );
        assert_eq!(xen[..HYPERCALL_NR_AT], CODE[..HYPERCALL_NR_AT]);
        assert_eq!(xen[HYPERCALL_AT..], CODE[HYPERCALL_AT..]);
        let hv = call(VMCALL, Abi::Hyperv);
        assert_eq!(
            hv[HYPERCALL_NR_AT..HYPERCALL_AT],
            HV_NOTIFY_LONG_SPIN_WAIT.to_le_bytes()
        );
    }

    #[test]
    fn every_exiting_instruction_has_a_distinct_named_rip_in_the_code() {
        let rips = rips();
        let mut seen: Vec<u64> = rips.iter().map(|(_, r)| *r).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), rips.len());
        assert!(seen
            .iter()
            .all(|r| (CODE_ADDR..CODE_ADDR + CODE.len() as u64).contains(r)));
        assert_eq!(RDMSR_RIP, 0x1048);
        assert_eq!(WRMSR_RIP, 0x1068);
        assert_eq!(CPUID_RIPS, [0x1082, 0x108d]);
        assert_eq!(PIO_USER_RIP, 0x1008);
    }

    #[test]
    fn counts_use_all_32_bits() {
        let regs = round_regs(
            &Round {
                pio_user: u32::MAX,
                ..Round::default()
            },
            0,
        );
        assert_eq!(regs.rbx, 0xffff_ffff);
    }
}
