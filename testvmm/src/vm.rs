//! Builds the VM: /dev/kvm, one RAM slot holding the guest code, and the
//! vCPUs, each with its own ioeventfd.

use std::ptr::{self, NonNull};

use anyhow::{Context, Result};
use kvm_bindings::{kvm_mp_state, kvm_userspace_memory_region, KVM_MP_STATE_RUNNABLE};
use kvm_ioctls::{IoEventAddress, Kvm, NoDatamatch, VcpuFd, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::guest;

/// Keeps the VM and its RAM alive while the vCPUs run.
pub(crate) struct Machine {
    // Fields drop in order: close the VM before unmapping the RAM it uses.
    _vm: VmFd,
    _ram: Ram,
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
    /// requires, for the guest's device loop.
    pub(crate) fn new(vcpus: u32, irqchip: bool) -> Result<(Machine, Vec<Vcpu>)> {
        let kvm = Kvm::new().context("open /dev/kvm")?;
        let vm = kvm.create_vm().context("KVM_CREATE_VM")?;
        if irqchip {
            vm.create_irq_chip().context("KVM_CREATE_IRQCHIP")?;
        }
        let ram = Ram::new(guest::RAM_SIZE)?;
        ram.write(guest::CODE_ADDR as usize, &guest::CODE);
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
        let vcpus = (0..vcpus)
            .map(|index| create_vcpu(&vm, index, irqchip))
            .collect::<Result<Vec<_>>>()?;
        Ok((Machine { _vm: vm, _ram: ram }, vcpus))
    }
}

fn create_vcpu(vm: &VmFd, index: u32, irqchip: bool) -> Result<Vcpu> {
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
    guest::setup_sregs(&mut sregs);
    fd.set_sregs(&sregs).context("KVM_SET_SREGS")?;
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
