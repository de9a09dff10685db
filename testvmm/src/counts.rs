//! What a run reports: exact exit counts per vCPU and in total.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::guest;

/// Exits of each kind. Everything but `pio_kernel` was seen by the VMM as a
/// return from KVM_RUN; `pio_kernel` is the ioeventfd counter, i.e. the number
/// of `out`s KVM completed without leaving the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExitCounts {
    /// KVM_EXIT_IO, out, on [`guest::PIO_USER_PORT`].
    pub pio_user: u64,
    /// `out`s to the vCPU's ioeventfd port, handled in the kernel.
    pub pio_kernel: u64,
    /// KVM_EXIT_MMIO writes to [`guest::MMIO_ADDR`].
    pub mmio_user: u64,
    /// KVM_EXIT_IO, in, on [`guest::PIO_IN_PORT`].
    pub pio_in: u64,
    /// KVM_EXIT_HLT: one per completed round (exactly 1 per vCPU without `forever`), in a
    /// VM without the in-kernel irqchip.
    pub hlt: u64,
    /// KVM_EXIT_IO, in, on [`guest::PIO_MIXED_IN_PORT`]: one per device-loop iteration.
    pub pio_mixed_in: u64,
    /// KVM_EXIT_IO, out, on [`guest::PIO_MIXED_OUT_PORT`]: one per device-loop iteration.
    pub pio_mixed_out: u64,
    /// Reads and writes of [`guest::PIO_DEVICE_PORTS`] KVM's in-kernel PIC answered: 4 per
    /// device-loop iteration, inferred from the userspace exits around them (the pair on the
    /// first port precedes each `out` to the VMM, the pair on the second follows it). Exact
    /// for rounds that end; a vCPU stopped mid-loop may have made one more pair.
    pub pio_device: u64,
    /// KVM_EXIT_IO, out, on [`guest::PIO_DONE_PORT`]: the end of a round in a VM with the
    /// in-kernel irqchip, where `hlt` does not exit.
    pub done: u64,
    /// Any exit the guest was not written to make; see `other_reasons`.
    pub other: u64,
    /// `hlt`s with interrupts enabled vCPU 0's guest executed in completed rounds (the
    /// workload's `halts` per round; 0 on other vCPUs). Not exits the VMM sees: KVM's
    /// in-kernel irqchip keeps them in the kernel until the VMM's interrupt, so they are
    /// not part of [`ExitCounts::total`] or [`ExitCounts::userspace`] (profilers' exact
    /// counts compare against those). KVM may have blocked fewer times than this: a `hlt`
    /// with an interrupt already pending returns at once.
    pub halts: u64,
    /// `rdmsr`s of [`guest::MSR_READ`] at [`guest::RDMSR_RIP`] the guest executed in completed
    /// rounds (the workload's `msr_read` per round). Like the three below: handled by KVM in
    /// the kernel, so not seen by the VMM; what the guest was told to make, exact for rounds
    /// that end (a vCPU stopped mid-round may have made some of the next round's). Each is
    /// one VM exit on Intel VMX and AMD SVM, but they stay out of [`ExitCounts::total`]
    /// (see [`ExitCounts::detail`]).
    pub msr_read: u64,
    /// `wrmsr`s of [`guest::MSR_WRITE`] at [`guest::WRMSR_RIP`].
    pub msr_write: u64,
    /// `cpuid`s of each of [`guest::CPUID_LEAVES`], in that order, at [`guest::CPUID_RIPS`]:
    /// the same count for both, the workload's `cpuid` per round.
    pub cpuid: [u64; 2],
    /// Hypercalls [`guest::HYPERCALL_NR`] at [`guest::HYPERCALL_RIP`].
    pub hypercall: u64,
    /// Fresh pages (`Ports::npf_pages`) vCPU 0 wrote once each at [`guest::NPF_RIP`], in a
    /// first round that ended. Each is one EPT violation (Intel VMX) or NPF (AMD SVM) that
    /// faults the page in, but outside [`ExitCounts::total`] and [`ExitCounts::detail`], as
    /// the detail section's exits are, for the same reasons (and the guest's own code, data
    /// and stack pages take such exits too, uncounted here).
    pub npf_pages: u64,
}

impl ExitCounts {
    /// All exits, in-kernel ones included (not `halts`, nor the [`ExitCounts::detail`] ones).
    pub fn total(&self) -> u64 {
        self.userspace() + self.pio_kernel + self.pio_device
    }

    /// Exits that returned to the VMM.
    pub fn userspace(&self) -> u64 {
        self.pio_user
            + self.mmio_user
            + self.pio_in
            + self.hlt
            + self.pio_mixed_in
            + self.pio_mixed_out
            + self.done
            + self.other
    }

    /// The detail section's exits: `msr_read`, `msr_write`, both `cpuid` leaves and
    /// `hypercall`. Not part of [`ExitCounts::total`]: they are VM exits on Intel VMX and AMD
    /// SVM (a profiler's all-exit count of such a run is `total() + detail()` there), but not
    /// on every backend (KVM's PVM backend emulates the whole real-mode guest, where an
    /// `rdmsr` is no more an exit than a `mov`, and cannot make the hypercalls at all), and
    /// the VMM never sees them: the counts are what the guest was told to make. Existing
    /// totals thus keep their meaning whatever the workload.
    pub fn detail(&self) -> u64 {
        self.msr_read + self.msr_write + self.cpuid[0] + self.cpuid[1] + self.hypercall
    }

    pub(crate) fn add(&mut self, o: &ExitCounts) {
        self.pio_user += o.pio_user;
        self.pio_kernel += o.pio_kernel;
        self.mmio_user += o.mmio_user;
        self.pio_in += o.pio_in;
        self.hlt += o.hlt;
        self.pio_mixed_in += o.pio_mixed_in;
        self.pio_mixed_out += o.pio_mixed_out;
        self.pio_device += o.pio_device;
        self.done += o.done;
        self.other += o.other;
        self.halts += o.halts;
        self.msr_read += o.msr_read;
        self.msr_write += o.msr_write;
        self.cpuid[0] += o.cpuid[0];
        self.cpuid[1] += o.cpuid[1];
        self.hypercall += o.hypercall;
        self.npf_pages += o.npf_pages;
    }
}

/// One vCPU's share of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VcpuCounts {
    pub index: u32,
    /// The thread's name, as QEMU names it: "CPU <index>/KVM".
    pub thread: String,
    /// The thread's kernel tid, as a profiler sees it.
    pub tid: i32,
    /// The port this vCPU's in-kernel `out`s go to.
    pub pio_kernel_port: u16,
    #[serde(flatten)]
    pub exits: ExitCounts,
    /// Unexpected exits by reason (e.g. "Shutdown", "IoOut(0x80)").
    pub other_reasons: BTreeMap<String, u64>,
    /// From this vCPU's first KVM_RUN to its last return.
    pub run_ns: u64,
}

/// The ports and address the guest uses, so consumers need not hard-code them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ports {
    pub pio_user: u16,
    pub pio_in: u16,
    /// Indexed by vCPU.
    pub pio_kernel: Vec<u16>,
    pub mmio_addr: u64,
    /// The device loop's ports: userspace `in` and `out`, and the in-kernel device's.
    #[serde(default)]
    pub pio_mixed_in: u16,
    #[serde(default)]
    pub pio_mixed_out: u16,
    #[serde(default)]
    pub pio_device: Vec<u16>,
    #[serde(default)]
    pub done: u16,
    /// The MSR the guest reads ([`guest::MSR_READ`]).
    #[serde(default)]
    pub msr_read: u32,
    /// The MSR the guest writes ([`guest::MSR_WRITE`]) and the value ([`guest::MSR_WRITE_VALUE`]).
    #[serde(default)]
    pub msr_write: u32,
    #[serde(default)]
    pub msr_write_value: u64,
    /// The `cpuid` leaves, in the order of [`ExitCounts::cpuid`].
    #[serde(default)]
    pub cpuid_leaves: Vec<u32>,
    /// The hypercall number (EAX) of the guest's hypercalls.
    #[serde(default)]
    pub hypercall_nr: u32,
    /// Whose ABI numbers them: "kvm", "xen" or "hyperv" (`--hypercall-abi`).
    #[serde(default)]
    pub hypercall_abi: guest::Abi,
    /// The hypercall instruction the guest ran: "vmcall" (Intel VMX), "vmmcall" (AMD SVM), or
    /// "" when it made none.
    #[serde(default)]
    pub hypercall_insn: String,
    /// The guest-physical address (= RIP) of each instruction that exits, by name: "pio_user",
    /// "pio_kernel", "mmio_user", "pio_in", "rdmsr", "wrmsr", "cpuid_0", "cpuid_1" (of
    /// `cpuid_leaves[0]`, `[1]`), "hypercall", "pio_mixed_in", "pio_device_0_in",
    /// "pio_device_0_out", "pio_mixed_out", "pio_device_1_in", "pio_device_1_out", "halt"
    /// (the halt loop's), "done", "hlt" (the round's end), "npf" (the page loop's write).
    #[serde(default)]
    pub rips: BTreeMap<String, u64>,
    /// The guest-physical pages the page loop wrote, in order (`ExitCounts::npf_pages`).
    #[serde(default)]
    pub npf_pages: Vec<u64>,
}

/// The result of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub pid: u32,
    pub ports: Ports,
    pub vcpus: Vec<VcpuCounts>,
    pub total: ExitCounts,
    pub other_reasons: BTreeMap<String, u64>,
    /// From the first vCPU's first KVM_RUN to the last vCPU's last return.
    pub wall_ns: u64,
    /// `total.total()` over `wall_ns`.
    pub exits_per_sec: f64,
}

impl Counts {
    /// `hypercall`: the hypercalls the guest made, if any.
    pub(crate) fn new(
        vcpus: Vec<VcpuCounts>,
        wall: Duration,
        hypercall: Option<guest::Hypercall>,
    ) -> Counts {
        let mut total = ExitCounts::default();
        let mut other_reasons = BTreeMap::new();
        for v in &vcpus {
            total.add(&v.exits);
            for (reason, n) in &v.other_reasons {
                *other_reasons.entry(reason.clone()).or_insert(0) += n;
            }
        }
        let secs = wall.as_secs_f64();
        Counts {
            pid: std::process::id(),
            ports: Ports {
                pio_user: guest::PIO_USER_PORT,
                pio_in: guest::PIO_IN_PORT,
                pio_kernel: vcpus.iter().map(|v| v.pio_kernel_port).collect(),
                mmio_addr: guest::MMIO_ADDR,
                pio_mixed_in: guest::PIO_MIXED_IN_PORT,
                pio_mixed_out: guest::PIO_MIXED_OUT_PORT,
                pio_device: guest::PIO_DEVICE_PORTS.to_vec(),
                done: guest::PIO_DONE_PORT,
                msr_read: guest::MSR_READ,
                msr_write: guest::MSR_WRITE,
                msr_write_value: guest::MSR_WRITE_VALUE,
                cpuid_leaves: guest::CPUID_LEAVES.to_vec(),
                hypercall_nr: hypercall.map_or(guest::HYPERCALL_NR, |h| h.nr()),
                hypercall_abi: hypercall.map_or(guest::Abi::Kvm, |h| h.abi),
                hypercall_insn: match hypercall.map(|h| h.insn) {
                    Some(guest::VMCALL) => "vmcall",
                    Some(guest::VMMCALL) => "vmmcall",
                    _ => "",
                }
                .to_string(),
                rips: guest::rips()
                    .into_iter()
                    .map(|(name, rip)| (name.to_string(), rip))
                    .collect(),
                npf_pages: guest::npf_pages(u32::try_from(total.npf_pages).unwrap_or(0)),
            },
            exits_per_sec: if secs > 0.0 {
                total.total() as f64 / secs
            } else {
                0.0
            },
            wall_ns: u64::try_from(wall.as_nanos()).unwrap_or(u64::MAX),
            vcpus,
            total,
            other_reasons,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vcpu(index: u32, exits: ExitCounts, other: &[(&str, u64)]) -> VcpuCounts {
        VcpuCounts {
            index,
            pio_kernel_port: guest::kernel_port(index),
            exits,
            other_reasons: other.iter().map(|(r, n)| (r.to_string(), *n)).collect(),
            ..VcpuCounts::default()
        }
    }

    #[test]
    fn totals_sum_vcpus() {
        let a = ExitCounts {
            pio_user: 1,
            pio_kernel: 2,
            mmio_user: 3,
            pio_in: 4,
            hlt: 1,
            other: 1,
            ..ExitCounts::default()
        };
        let b = ExitCounts {
            pio_user: 10,
            pio_kernel: 20,
            hlt: 1,
            // Not exits: in neither total.
            halts: 7,
            ..ExitCounts::default()
        };
        let c = Counts::new(
            vec![vcpu(0, a, &[("Shutdown", 1)]), vcpu(1, b, &[])],
            Duration::from_secs(2),
            None,
        );
        assert_eq!(c.total.pio_user, 11);
        assert_eq!(c.total.pio_kernel, 22);
        assert_eq!(c.total.hlt, 2);
        assert_eq!(c.total.halts, 7);
        assert_eq!(c.total.total(), 43);
        assert_eq!(c.total.userspace(), 21);
        assert_eq!(c.other_reasons.get("Shutdown"), Some(&1));
        assert_eq!(
            c.ports.pio_kernel,
            vec![guest::kernel_port(0), guest::kernel_port(1)]
        );
        assert_eq!(c.exits_per_sec, 21.5);
    }

    #[test]
    fn detail_exits_sum_apart_from_the_totals_and_name_the_hypercall() {
        let a = ExitCounts {
            hlt: 1,
            msr_read: 3,
            msr_write: 2,
            cpuid: [5, 5],
            hypercall: 7,
            ..ExitCounts::default()
        };
        let c = Counts::new(
            vec![vcpu(0, a, &[]), vcpu(1, a, &[])],
            Duration::ZERO,
            Some(guest::Hypercall {
                insn: guest::VMMCALL,
                abi: guest::Abi::Xen,
            }),
        );
        assert_eq!(c.total.cpuid, [10, 10]);
        assert_eq!(c.total.detail(), 2 * 22);
        assert_eq!((c.total.total(), c.total.userspace()), (2, 2));
        assert_eq!(c.ports.hypercall_insn, "vmmcall");
        assert_eq!(c.ports.hypercall_abi, guest::Abi::Xen);
        assert_eq!(c.ports.hypercall_nr, guest::XEN_SCHED_OP);
        assert_eq!(c.ports.rips["rdmsr"], guest::RDMSR_RIP);
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["ports"]["hypercall_abi"], "xen");
        assert_eq!(json["vcpus"][1]["cpuid"], serde_json::json!([5, 5]));
        assert_eq!(json["ports"]["msr_read"], 0x1b);
        let none = Counts::new(vec![], Duration::ZERO, None);
        assert_eq!(none.ports.hypercall_insn, "");
    }

    #[test]
    fn json_is_flat_per_vcpu_and_round_trips() {
        let c = Counts::new(
            vec![vcpu(
                0,
                ExitCounts {
                    done: 1,
                    halts: 5,
                    ..Default::default()
                },
                &[],
            )],
            Duration::ZERO,
            None,
        );
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["vcpus"][0]["done"], 1);
        assert_eq!(json["vcpus"][0]["halts"], 5);
        assert_eq!(json["total"]["halts"], 5);
        assert_eq!(json["total"]["pio_user"], 0);
        assert_eq!(json["ports"]["pio_user"], 0x3f8);
        assert_eq!(serde_json::from_value::<Counts>(json).unwrap(), c);
    }
}
