//! Builds the VM: /dev/kvm, one RAM slot holding the guest code (and one for the page loop's
//! pages), and the vCPUs, each with its own ioeventfd.

use std::ptr::{self, NonNull};

use anyhow::{Context, Result};
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_irqchip, kvm_mp_state, kvm_msr_entry, kvm_userspace_memory_region, CpuId,
    Msrs, KVM_IRQCHIP_PIC_MASTER, KVM_MP_STATE_RUNNABLE,
};
use kvm_ioctls::{IoEventAddress, Kvm, NoDatamatch, VcpuFd, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::guest;

/// Keeps the VM and its RAM alive while the vCPUs run.
pub(crate) struct Machine {
    // Fields drop in order: close the VM before unmapping the RAM it uses.
    vm: VmFd,
    _ram: Ram,
    _npf: Option<Ram>,
}

/// A vCPU ready to run, handed to its thread.
pub(crate) struct Vcpu {
    pub index: u32,
    pub fd: VcpuFd,
    /// Counts this vCPU's `out`s to `kernel_port`; KVM signals it instead of exiting.
    pub ioeventfd: EventFd,
    pub kernel_port: u16,
}

impl Machine {
    /// `irqchip`: KVM's in-kernel PIC, IOAPIC and LAPICs, created before the vCPUs as KVM
    /// requires, for the guest's device loop and halts. `irq0`: also set the PIC and the
    /// guest's IVT up so that [`Irq0::pulse`] wakes vCPU 0's halts (needs `irqchip`).
    /// `round` gives the detail section's counts, which the guest reads from RAM, and
    /// `hypercall` the instruction and number patched into the code; Xen's, and KVM is asked
    /// to handle Xen hypercalls.
    pub(crate) fn new(
        vcpus: u32,
        irqchip: bool,
        irq0: bool,
        round: &guest::Round,
        hypercall: guest::Hypercall,
    ) -> Result<(Machine, Vec<Vcpu>)> {
        let kvm = Kvm::new().context("open /dev/kvm")?;
        let vm = kvm.create_vm().context("KVM_CREATE_VM")?;
        if hypercall.abi == guest::Abi::Xen {
            intercept_xen_hypercalls(&vm)?;
        }
        if hypercall.abi == guest::Abi::Hyperv {
            anyhow::ensure!(
                kvm.check_extension(kvm_ioctls::Cap::Hyperv),
                "this kernel's KVM cannot handle Hyper-V hypercalls (built without \
                 CONFIG_KVM_HYPERV)"
            );
        }
        if irqchip {
            vm.create_irq_chip().context("KVM_CREATE_IRQCHIP")?;
        }
        let ram = Ram::new(guest::RAM_SIZE)?;
        ram.write(guest::CODE_ADDR as usize, &guest::code(hypercall));
        ram.write(
            guest::DETAIL_COUNTS_ADDR as usize,
            &guest::detail_counts(round),
        );
        ram.write(
            guest::NPF_END_ADDR as usize,
            &guest::npf_end(round).to_le_bytes(),
        );
        if irq0 {
            anyhow::ensure!(irqchip, "IRQ0 needs the in-kernel irqchip");
            setup_irq0(&vm, &ram)?;
        }
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: guest::RAM_SIZE as u64,
            userspace_addr: ram.addr.as_ptr() as u64,
        };
        // SAFETY: the mapping is RAM_SIZE bytes long and outlives the VM (see
        // the field order of Machine).
        unsafe { vm.set_user_memory_region(region) }.context("KVM_SET_USER_MEMORY_REGION")?;
        let npf = match round.npf_pages {
            0 => None,
            n => Some(npf_slot(&vm, n)?),
        };
        let vcpus = (0..vcpus)
            .map(|index| create_vcpu(&vm, index, irqchip, hypercall.abi))
            .collect::<Result<Vec<_>>>()?;
        Ok((
            Machine {
                vm,
                _ram: ram,
                _npf: npf,
            },
            vcpus,
        ))
    }

    /// IRQ0 of the VM's in-kernel PIC, for another thread (the RAM stays here).
    pub(crate) fn irq0(&self) -> Irq0<'_> {
        Irq0(&self.vm)
    }
}

/// IRQ0 of a VM set up with `irq0` (see [`Machine::new`]).
pub(crate) struct Irq0<'a>(&'a VmFd);

impl Irq0<'_> {
    /// One edge on IRQ0 of the in-kernel PIC (a timer tick): raise the line, lower it.
    /// KVM latches the edge in the PIC's IRR until vCPU 0 takes the interrupt, which it
    /// can only do at the `hlt` of its halt loop (IF=1 nowhere else); edges while one is
    /// pending merge into it.
    pub(crate) fn pulse(&self) -> Result<()> {
        self.0.set_irq_line(0, true).context("KVM_IRQ_LINE 0 up")?;
        self.0.set_irq_line(0, false).context("KVM_IRQ_LINE 0 down")
    }
}

/// Makes IRQ0 reach the guest's handler: the master PIC delivers it as
/// [`guest::IRQ0_VECTOR`] with everything else masked, in auto-EOI mode (the handler, a
/// lone `iret`, sends no EOI), as if the guest had initialised it; and the real-mode IVT
/// entry of that vector points at the handler. KVM hands the PIC's output to vCPU 0 through
/// its LAPIC's LINT0 (ExtINT), set up so at reset for the boot vCPU only
/// (KVM_X86_QUIRK_LINT0_REENABLED, on by default); the other vCPUs' LINT0 stays masked.
fn setup_irq0(vm: &VmFd, ram: &Ram) -> Result<()> {
    let mut chip = kvm_irqchip {
        chip_id: KVM_IRQCHIP_PIC_MASTER,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip)
        .context("KVM_GET_IRQCHIP (master PIC)")?;
    // SAFETY: for chip_id KVM_IRQCHIP_PIC_MASTER KVM fills (and reads) the union's `pic`;
    // it is plain bytes, valid whatever they hold.
    let pic = unsafe { &mut chip.chip.pic };
    pic.irq_base = guest::IRQ0_VECTOR;
    // Only IRQ0 unmasked.
    pic.imr = 0xfe;
    pic.auto_eoi = 1;
    // Initialised: not waiting for ICW2..4.
    pic.init_state = 0;
    vm.set_irqchip(&chip)
        .context("KVM_SET_IRQCHIP (master PIC)")?;
    let handler = guest::CODE_ADDR + guest::IRQ_HANDLER_OFFSET as u64;
    let offset = u16::try_from(handler).context("IRQ0's handler is out of CS 0's reach")?;
    let mut entry = [0u8; 4];
    entry[..2].copy_from_slice(&offset.to_le_bytes());
    // entry[2..]: segment 0, the code's CS.
    ram.write(guest::IRQ0_IVT_ENTRY as usize, &entry);
    Ok(())
}

// KVM_XEN_HVM_CONFIG, which kvm-ioctls does not wrap.
vmm_sys_util::ioctl_iow_nr!(
    KVM_XEN_HVM_CONFIG,
    kvm_bindings::KVMIO,
    0x7a,
    kvm_bindings::kvm_xen_hvm_config
);

/// The MSR through which a Xen guest would have KVM write its hypercall page: unused by this
/// guest, but KVM turns its Xen support on only once a VM names one (within 0x40000000..
/// 0x4fffffff, apart from Hyper-V's and KVM's own); QEMU's choice.
const XEN_HYPERCALL_MSR: u32 = 0x4000_0200;

/// Has KVM handle the guest's hypercalls by Xen's ABI (`kvm_xen_hypercall`), as a VMM running
/// a Xen guest does: `sched_op`, among others, is then answered in the kernel.
fn intercept_xen_hypercalls(vm: &VmFd) -> Result<()> {
    let caps = vm.check_extension_raw(kvm_bindings::KVM_CAP_XEN_HVM.into()) as u32;
    let intercept = kvm_bindings::KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL;
    anyhow::ensure!(
        caps & intercept != 0,
        "this kernel's KVM cannot handle Xen hypercalls (built without CONFIG_KVM_XEN)"
    );
    let config = kvm_bindings::kvm_xen_hvm_config {
        flags: intercept,
        msr: XEN_HYPERCALL_MSR,
        ..Default::default()
    };
    // SAFETY: KVM_XEN_HVM_CONFIG reads one kvm_xen_hvm_config, which `config` is, from a VM fd.
    let ret = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(vm, KVM_XEN_HVM_CONFIG(), &config) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error()).context("KVM_XEN_HVM_CONFIG");
    }
    Ok(())
}

/// The page loop's RAM: `n` pages at [`guest::NPF_ADDR`] in a slot of their own, so that each
/// of the guest's writes there is one EPT violation or NPF. KVM maps a guest page as it is
/// first touched, 4 KiB at a time unless the host backs it with a huge page: the slot, under
/// 2 MiB, can hold none, and MADV_NOHUGEPAGE says so again. Nor does it map the pages around
/// it: the TDP MMU prefetches nothing, the shadow MMU only pages the host already has, and
/// the VMM leaves these untouched (KVM's fault allocates each; a real-mode guest has no
/// async page faults, which could make it fault twice).
fn npf_slot(vm: &VmFd, n: u32) -> Result<Ram> {
    let len = n as usize * guest::PAGE_SIZE as usize;
    let ram = Ram::new(len)?;
    // SAFETY: advice on the mapping just made, which nothing else uses.
    let advised = unsafe { libc::madvise(ram.addr.as_ptr().cast(), len, libc::MADV_NOHUGEPAGE) };
    if advised != 0 {
        return Err(std::io::Error::last_os_error()).context("madvise(MADV_NOHUGEPAGE)");
    }
    let region = kvm_userspace_memory_region {
        slot: 1,
        flags: 0,
        guest_phys_addr: guest::NPF_ADDR,
        memory_size: len as u64,
        userspace_addr: ram.addr.as_ptr() as u64,
    };
    // SAFETY: the mapping is `len` bytes long and outlives the VM (see Machine).
    unsafe { vm.set_user_memory_region(region) }.context("KVM_SET_USER_MEMORY_REGION (pages)")?;
    Ok(ram)
}

fn create_vcpu(vm: &VmFd, index: u32, irqchip: bool, abi: guest::Abi) -> Result<Vcpu> {
    let fd = vm
        .create_vcpu(index.into())
        .with_context(|| format!("KVM_CREATE_VCPU {index}"))?;
    if irqchip {
        // With an in-kernel LAPIC every vCPU but the first waits for INIT/SIPI; each runs
        // its own guest here, so all start runnable.
        fd.set_mp_state(kvm_mp_state {
            mp_state: KVM_MP_STATE_RUNNABLE,
        })
        .with_context(|| format!("KVM_SET_MP_STATE on vCPU {index}"))?;
    }
    let mut sregs = fd.get_sregs().context("KVM_GET_SREGS")?;
    guest::setup_sregs(&mut sregs, abi);
    fd.set_sregs(&sregs).context("KVM_SET_SREGS")?;
    if abi == guest::Abi::Hyperv {
        enable_hyperv(&fd)?;
    }
    let ioeventfd = EventFd::new(EFD_NONBLOCK).context("eventfd")?;
    let kernel_port = guest::kernel_port(index);
    // No datamatch: every `out` to the port, whatever its value, is counted.
    vm.register_ioevent(
        &ioeventfd,
        &IoEventAddress::Pio(kernel_port.into()),
        NoDatamatch,
    )
    .with_context(|| format!("KVM_IOEVENTFD on port {kernel_port:#x}"))?;
    Ok(Vcpu {
        index,
        fd,
        ioeventfd,
        kernel_port,
    })
}

/// Hyper-V's CPUID leaves (its vendor and interface leaves).
const HYPERV_CPUID_VENDOR: u32 = 0x4000_0000;
const HYPERV_CPUID_INTERFACE: u32 = 0x4000_0001;
/// HV_X64_MSR_GUEST_OS_ID, and what the VMM writes to it: Linux's vendor id (0x8100 in the top
/// bits). Any value but 0 enables the partition's hypercalls.
const HV_X64_MSR_GUEST_OS_ID: u32 = 0x4000_0000;
const GUEST_OS_ID: u64 = 0x8100_0000_0000_0000;

/// Makes KVM handle the vCPU's hypercalls by Hyper-V's ABI (`kvm_hv_hypercall`), as for a
/// Windows guest: Hyper-V's signature in its CPUID ("Hv#1" in the interface leaf) and a guest
/// OS id, set by the VMM as one restoring such a guest would (the guest could write it too).
fn enable_hyperv(fd: &VcpuFd) -> Result<()> {
    let leaf = |function, regs: [&[u8; 4]; 4]| kvm_cpuid_entry2 {
        function,
        eax: u32::from_le_bytes(*regs[0]),
        ebx: u32::from_le_bytes(*regs[1]),
        ecx: u32::from_le_bytes(*regs[2]),
        edx: u32::from_le_bytes(*regs[3]),
        ..Default::default()
    };
    let top = HYPERV_CPUID_INTERFACE.to_le_bytes();
    let cpuid = CpuId::from_entries(&[
        leaf(HYPERV_CPUID_VENDOR, [&top, b"Micr", b"osof", b"t Hv"]),
        leaf(HYPERV_CPUID_INTERFACE, [b"Hv#1", &[0; 4], &[0; 4], &[0; 4]]),
    ])
    .map_err(|e| anyhow::anyhow!("Hyper-V's CPUID table: {e:?}"))?;
    fd.set_cpuid2(&cpuid).context("KVM_SET_CPUID2")?;
    let msrs = Msrs::from_entries(&[kvm_msr_entry {
        index: HV_X64_MSR_GUEST_OS_ID,
        data: GUEST_OS_ID,
        ..Default::default()
    }])
    .map_err(|e| anyhow::anyhow!("Hyper-V's guest OS id: {e:?}"))?;
    let set = fd.set_msrs(&msrs).context("KVM_SET_MSRS")?;
    anyhow::ensure!(set == 1, "KVM refused Hyper-V's guest OS id MSR");
    Ok(())
}

/// Anonymous host memory backing the guest's RAM slot.
struct Ram {
    addr: NonNull<u8>,
    len: usize,
}

impl Ram {
    fn new(len: usize) -> Result<Ram> {
        // SAFETY: a fresh anonymous mapping aliases nothing; the result is checked.
        let addr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mmap guest RAM");
        }
        let addr = NonNull::new(addr.cast()).context("mmap returned null")?;
        Ok(Ram { addr, len })
    }

    fn write(&self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= self.len, "write past guest RAM");
        // SAFETY: in bounds (checked above), and no guest runs yet.
        unsafe {
            ptr::copy_nonoverlapping(bytes.as_ptr(), self.addr.as_ptr().add(offset), bytes.len())
        };
    }
}

impl Drop for Ram {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what new() mapped; nothing uses it any more.
        unsafe { libc::munmap(self.addr.as_ptr().cast(), self.len) };
    }
}
