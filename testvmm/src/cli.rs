//! The workload flags (`--vcpus`, `--pio-user`, ...) as clap parses them: one definition for
//! the test VMM binary, `kvmprof guest`/`demo` and the xtask checks that pass them on.
use clap::Args;

use crate::{Workload, MAX_VCPUS};

/// The exits each vCPU makes per round. A flag left out keeps the value of the workload it
/// is applied to ([`WorkloadArgs::over`]), so each user keeps its own defaults.
#[derive(Debug, Clone, Default, Args)]
pub struct WorkloadArgs {
    /// vCPUs (1..=64).
    #[arg(long, value_parser = vcpus)]
    pub vcpus: Option<u32>,
    /// `out`s to port 0x3f8 per round: KVM_EXIT_IO to userspace.
    #[arg(long)]
    pub pio_user: Option<u64>,
    /// `out`s to port 0x700+<vcpu> per round: handled in the kernel by an ioeventfd.
    #[arg(long)]
    pub pio_kernel: Option<u64>,
    /// Byte writes to guest-physical 0xd0000 per round: KVM_EXIT_MMIO to userspace.
    #[arg(long)]
    pub mmio: Option<u64>,
    /// The MMIO writes cycle through this many addresses from 0xd0000 (a power of two up to
    /// 65536; 1 = all on 0xd0000).
    #[arg(long, value_parser = mmio_span)]
    pub mmio_span: Option<u32>,
    /// `in`s from port 0x3fd per round: KVM_EXIT_IO to userspace.
    #[arg(long)]
    pub pio_in: Option<u64>,
    /// Device-loop iterations per round: an `in` from 0x2fd and an `out` to 0x2f8 that
    /// exit to userspace, each followed by an in-kernel read and write of the PIC's ELCR
    /// (0x4d0, 0x4d1). Creates KVM's in-kernel irqchip; rounds end with an `out` to 0x2f9.
    #[arg(long)]
    pub pio_device: Option<u64>,
    /// `hlt`s per round with interrupts enabled, by vCPU 0 only (the only vCPU the PIC's
    /// interrupts reach), at most 32767: KVM's in-kernel irqchip (created for them) keeps
    /// each in the kernel until the VMM pulses IRQ0. Not exits: counted as "halts", outside
    /// the totals. Rounds end with an `out` to 0x2f9.
    #[arg(long)]
    pub halts: Option<u64>,
    /// `rdmsr`s of IA32_APIC_BASE (0x1b) per round: exits KVM handles in the kernel (on VMX
    /// and SVM), counted as "msr_read", outside the totals.
    #[arg(long)]
    pub msr_read: Option<u64>,
    /// `wrmsr`s of MSR_KVM_WALL_CLOCK_NEW (0x4b564d00, value 0xf00) per round: handled in the
    /// kernel, counted as "msr_write", outside the totals.
    #[arg(long)]
    pub msr_write: Option<u64>,
    /// Iterations per round of a `cpuid` of leaf 0 and one of leaf 1: handled in the kernel,
    /// counted as "cpuid" (one count per leaf), outside the totals.
    #[arg(long)]
    pub cpuid: Option<u64>,
    /// Hypercalls (number 0x7e57: KVM answers -ENOSYS) per round, `vmcall` on Intel VMX,
    /// `vmmcall` on AMD SVM: handled in the kernel, counted as "hypercall", outside the
    /// totals. Refused on KVM's PVM backend, which cannot run them from a real-mode guest.
    #[arg(long)]
    pub hypercall: Option<u64>,
    /// Whose ABI the hypercalls go by: KVM's; Xen's (`sched_op`, 29), the VMM having asked
    /// KVM to handle Xen hypercalls, as a VMM of Xen guests does (needs CONFIG_KVM_XEN); or
    /// Hyper-V's (HvCallNotifyLongSpinWait, 8), the vCPUs given Hyper-V's CPUID signature, as
    /// a VMM of Windows guests does, the guest with CR0.PE set (no --halts, --npf-pages).
    /// Handled in the kernel either way.
    #[arg(long, value_enum)]
    pub hypercall_abi: Option<crate::HypercallAbi>,
    /// Fresh guest pages vCPU 0 writes once each before its first round (at most 128, from
    /// guest-physical 0x20000): one EPT violation or NPF each on VMX and SVM, a fault-in,
    /// counted as "npf_pages", outside the totals.
    #[arg(long, value_parser = npf_pages)]
    pub npf_pages: Option<u64>,
}

impl WorkloadArgs {
    /// `base` with the flags given.
    pub fn over(&self, base: Workload) -> Workload {
        Workload {
            vcpus: self.vcpus.unwrap_or(base.vcpus),
            pio_user: self.pio_user.unwrap_or(base.pio_user),
            pio_kernel: self.pio_kernel.unwrap_or(base.pio_kernel),
            mmio_user: self.mmio.unwrap_or(base.mmio_user),
            mmio_span: self.mmio_span.unwrap_or(base.mmio_span),
            pio_in: self.pio_in.unwrap_or(base.pio_in),
            pio_device: self.pio_device.unwrap_or(base.pio_device),
            halts: self.halts.unwrap_or(base.halts),
            msr_read: self.msr_read.unwrap_or(base.msr_read),
            msr_write: self.msr_write.unwrap_or(base.msr_write),
            cpuid: self.cpuid.unwrap_or(base.cpuid),
            hypercall: self.hypercall.unwrap_or(base.hypercall),
            hypercall_abi: self.hypercall_abi.unwrap_or(base.hypercall_abi),
            npf_pages: self.npf_pages.unwrap_or(base.npf_pages),
            ..base
        }
    }
}

/// The flags that make the test VMM run `w`'s exits per round.
pub fn args(w: &Workload) -> String {
    format!(
        "--vcpus {} --pio-user {} --pio-kernel {} --mmio {} --mmio-span {} --pio-in {} \
         --pio-device {} --halts {} --msr-read {} --msr-write {} --cpuid {} --hypercall {} \
         --npf-pages {} --hypercall-abi {}",
        w.vcpus,
        w.pio_user,
        w.pio_kernel,
        w.mmio_user,
        w.mmio_span,
        w.pio_in,
        w.pio_device,
        w.halts,
        w.msr_read,
        w.msr_write,
        w.cpuid,
        w.hypercall,
        w.npf_pages,
        w.hypercall_abi.name()
    )
}

/// A vCPU count the guest can run, checked before anything starts.
pub fn vcpus(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_VCPUS).contains(&n) => Ok(n),
        _ => Err(format!("'{s}' is not a vCPU count from 1 to {MAX_VCPUS}")),
    }
}

/// A page count the guest's page loop can write (its pages end at the ISA hole).
pub fn npf_pages(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if n <= u64::from(crate::MAX_NPF_PAGES) => Ok(n),
        _ => Err(format!(
            "'{s}' is not a page count from 0 to {}",
            crate::MAX_NPF_PAGES
        )),
    }
}

/// An MMIO span the guest can cycle through (its 16-bit offset register wraps at 65536).
pub fn mmio_span(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if n.is_power_of_two() && n <= 0x1_0000 => Ok(n),
        _ => Err(format!(
            "'{s}' is not an MMIO span: a power of two from 1 to 65536"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        w: WorkloadArgs,
    }

    #[test]
    fn flags_given_override_the_base_and_round_trip_through_args() {
        let base = Workload {
            vcpus: 2,
            pio_in: 50,
            ..Workload::default()
        };
        let cli = Cli::try_parse_from([
            "x",
            "--pio-user",
            "7",
            "--mmio",
            "3",
            "--halts",
            "9",
            "--msr-read",
            "4",
            "--cpuid",
            "5",
            "--hypercall",
            "6",
            "--npf-pages",
            "8",
        ])
        .unwrap();
        let w = cli.w.over(base);
        assert_eq!(
            (
                w.vcpus,
                w.pio_user,
                w.pio_kernel,
                w.mmio_user,
                w.pio_in,
                w.halts
            ),
            (2, 7, 0, 3, 50, 9)
        );
        assert_eq!(
            (w.msr_read, w.msr_write, w.cpuid, w.hypercall, w.npf_pages),
            (4, 0, 5, 6, 8)
        );
        let again = Cli::try_parse_from(std::iter::once("x").chain(args(&w).split(' '))).unwrap();
        assert_eq!(again.w.over(Workload::default()), w);
    }

    #[test]
    fn vcpu_counts_outside_the_guest_limits_are_refused() {
        assert_eq!(vcpus("64"), Ok(64));
        assert!(vcpus("0").is_err());
        assert!(vcpus("65").is_err());
    }

    #[test]
    fn page_counts_past_the_isa_hole_are_refused() {
        assert_eq!(npf_pages("128"), Ok(128));
        assert!(npf_pages("129").is_err());
    }
}
