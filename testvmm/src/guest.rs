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
pub const IRQ_HANDLER_OFFSET: usize = 0x7d;

/// Guest-physical target of the MMIO writes: in the ISA hole, far outside
/// the RAM slot, so KVM finds no memslot and exits with KVM_EXIT_MMIO.
/// Real mode reaches it through DS (base = this address, offset 0).
pub const MMIO_ADDR: u64 = 0xd_0000;

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
}

const fn lo(v: u16) -> u8 {
    v.to_le_bytes()[0]
}

const fn hi(v: u16) -> u8 {
    v.to_le_bytes()[1]
}

/// The guest, hand-assembled 16-bit code (0x66 widens an operation to 32
/// bits so each loop can run up to 2^32-1 times). The loop counts come in
/// registers (see [`round_regs`]), so this one blob serves every workload.
/// Each loop is guarded by `test/jz` so a count of zero skips it. The code itself uses
/// no stack, so ESP is free to count the device loop. Interrupts stay off except at the
/// `hlt` of the halt loop (0x58..0x6b, vCPU 0 only), where IRQ0 wakes the guest: its
/// delivery pushes FLAGS, CS and IP at SS:SP, with SS base 0 and SP 0 (see [`round_regs`]),
/// so at linear 0xfffa..=0xffff, inside RAM, and its `iret` pops them again.
#[rustfmt::skip]
pub const CODE: [u8; 126] = [
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
    // 0x34  test esp, esp            ; ESP = device loop count
    0x66, 0x85, 0xe4,
    // 0x37  jz 0x4f
    0x74, 0x16,
    // 0x39  mov dx, PIO_MIXED_IN_PORT
    0xba, lo(PIO_MIXED_IN_PORT), hi(PIO_MIXED_IN_PORT),
    // 0x3c  in al, dx                ; -> KVM_EXIT_IO (in)
    0xec,
    // 0x3d  mov dx, PIO_DEVICE_PORTS[0]
    0xba, lo(PIO_DEVICE_PORTS[0]), hi(PIO_DEVICE_PORTS[0]),
    // 0x40  in al, dx                ; in-kernel read, right after a read the VMM answered
    0xec,
    // 0x41  out dx, al               ; in-kernel write of what was read
    0xee,
    // 0x42  mov dx, PIO_MIXED_OUT_PORT
    0xba, lo(PIO_MIXED_OUT_PORT), hi(PIO_MIXED_OUT_PORT),
    // 0x45  out dx, al               ; -> KVM_EXIT_IO (out)
    0xee,
    // 0x46  mov dx, PIO_DEVICE_PORTS[1]
    0xba, lo(PIO_DEVICE_PORTS[1]), hi(PIO_DEVICE_PORTS[1]),
    // 0x49  in al, dx                ; in-kernel read, right after a write to the VMM
    0xec,
    // 0x4a  out dx, al               ; in-kernel write
    0xee,
    // 0x4b  dec esp
    0x66, 0x4c,
    // 0x4d  jnz 0x39
    0x75, 0xea,
    // 0x4f  test ecx, HALTS_MASK      ; ECX bits 16-30 = halts left (vCPU 0 only)
    0x66, 0xf7, 0xc1, 0x00, 0x00, 0xff, 0x7f,
    // 0x56  jz 0x6b
    0x74, 0x13,
    // 0x58  sti                      ; its one-instruction shadow makes `sti; hlt` atomic
    0xfb,
    // 0x59  hlt                      ; IF=1, in-kernel irqchip: KVM blocks the vCPU until
    //                                ; IRQ0, whose handler (0x7d) returns to the `cli`
    0xf4,
    // 0x5a  cli
    0xfa,
    // 0x5b  sub ecx, 1 << 16         ; one halt done (never borrows into END_WITH_OUT)
    0x66, 0x81, 0xe9, 0x00, 0x00, 0x01, 0x00,
    // 0x62  test ecx, HALTS_MASK
    0x66, 0xf7, 0xc1, 0x00, 0x00, 0xff, 0x7f,
    // 0x69  jnz 0x58
    0x75, 0xed,
    // 0x6b  test ecx, END_WITH_OUT
    0x66, 0xf7, 0xc1, 0x00, 0x00, 0x00, 0x80,
    // 0x72  jz 0x7a
    0x74, 0x06,
    // 0x74  mov dx, PIO_DONE_PORT
    0xba, lo(PIO_DONE_PORT), hi(PIO_DONE_PORT),
    // 0x77  out dx, al               ; -> KVM_EXIT_IO (out): end of round (in-kernel irqchip)
    0xee,
    // 0x78  jmp 0x77                 ; re-entering without new registers ends again
    0xeb, 0xfd,
    // 0x7a  hlt                      ; IF=0 -> KVM_EXIT_HLT: end of round
    0xf4,
    // 0x7b  jmp 0x7a                 ; re-entering without new registers halts again
    0xeb, 0xfd,
    // 0x7d  iret                     ; IRQ0's handler (IVT vector IRQ0_VECTOR): wake and return
    0xcf,
];

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
        imm32(0x4f) as u64 == HALTS_MASK,
        "the imm32 of `test ecx` at 0x4f"
    );
    assert!(
        imm32(0x62) as u64 == HALTS_MASK,
        "the imm32 of `test ecx` at 0x62"
    );
    assert!(
        imm32(0x5b) == 1 << HALTS_SHIFT,
        "the imm32 of `sub ecx` at 0x5b"
    );
    assert!(
        imm32(0x6b) as u64 == END_WITH_OUT,
        "the imm32 of `test ecx` at 0x6b"
    );
    assert!(END_WITH_OUT == 1 << 31 && HALTS_MASK & END_WITH_OUT == 0);
    assert!(
        HALTS_MASK & 0xffff == 0,
        "the halts must miss the port in CX"
    );
    assert!(
        CODE[0x58] == 0xfb && CODE[0x59] == 0xf4,
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
/// [`MMIO_ADDR`] so `mov [bx], al` hits the MMIO hole, SS at 0 so an interrupt's pushes
/// land in RAM (KVM resets it so; set here so it does not depend on that).
pub fn setup_sregs(sregs: &mut kvm_sregs) {
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    sregs.ss.base = 0;
    sregs.ss.selector = 0;
    // The real-mode IVT, where IRQ0_IVT_ENTRY is; also KVM's reset value.
    sregs.idt.base = 0;
    sregs.ds.base = MMIO_ADDR;
    // Real mode requires base == selector << 4.
    sregs.ds.selector = (MMIO_ADDR >> 4) as u16;
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
    }

    /// Interprets exactly the instructions [`CODE`] uses, recording the
    /// accesses that would exit. Proves the hand-assembled bytes without KVM.
    fn interpret(regs: &kvm_regs, ds_base: u64) -> Vec<Event> {
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
        let mut sregs = kvm_sregs::default();
        setup_sregs(&mut sregs);
        interpret(&round_regs(&round, vcpu), sregs.ds.base)
    }

    #[test]
    fn code_makes_exactly_the_requested_accesses_in_order() {
        let round = Round {
            pio_user: 3,
            pio_kernel: 5,
            mmio_user: 2,
            pio_in: 4,
            pio_device: 0,
            mmio_mask: 0,
            halts: 0,
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

    #[test]
    fn the_halts_come_after_the_device_loop_and_keep_the_port() {
        let round = Round {
            pio_kernel: 2,
            pio_device: 1,
            halts: 2,
            ..Round::default()
        };
        let [elcr1, elcr2] = PIO_DEVICE_PORTS;
        let port = kernel_port(0);
        let want = vec![
            Event::Out(port),
            Event::Out(port),
            Event::In(PIO_MIXED_IN_PORT),
            Event::In(elcr1),
            Event::Out(elcr1),
            Event::Out(PIO_MIXED_OUT_PORT),
            Event::In(elcr2),
            Event::Out(elcr2),
            Event::IrqHlt,
            Event::IrqHlt,
            Event::Out(PIO_DONE_PORT),
        ];
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
