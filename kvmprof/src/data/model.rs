//! The source-agnostic description of one VM exit. Live capture (`collect`) and imported
//! traces (`ftrace`) both produce [`Exit`]s; `aggregate` consumes them and knows nothing of
//! where they came from.
use kvmprof_common::STAGES;
use serde::{Deserialize, Serialize};

/// The KVM backend that ran the guest.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Vendor {
    /// Intel VMX (`kvm_intel`).
    Vmx,
    /// AMD SVM (`kvm_amd`).
    Svm,
    /// PVM (`CONFIG_KVM_PVM`): no hardware virtualisation extensions.
    Pvm,
    #[default]
    Unknown,
}

impl Vendor {
    pub fn label(self) -> &'static str {
        match self {
            Vendor::Vmx => "Intel VMX",
            Vendor::Svm => "AMD SVM",
            Vendor::Pvm => "PVM",
            Vendor::Unknown => "unknown",
        }
    }
}

/// The namespace an exit-reason code belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReasonSpace {
    /// `kvm_run->exit_reason` (KVM_EXIT_*).
    Userspace,
    Vmx,
    Svm,
    /// An in-kernel exit identified only by a KVM tracepoint (`kvm_pio`, `kvm_mmio`), on a
    /// kernel where `kvm:kvm_exit` does not fire. Codes are `kvmprof_common::tp_reason`.
    Tracepoint,
    /// KVM_RUN returned an error instead of an exit reason (the kernel's own trace prints
    /// these as "restart" or "error", whatever `exit_reason` holds). The code is the errno,
    /// positive: 4 is EINTR, a signal for the VMM thread.
    Errno,
    None,
}

impl ReasonSpace {
    /// The space of a kernel record's `kvmprof_common::space` (an error return aside).
    pub fn of_record(sp: u8) -> ReasonSpace {
        use kvmprof_common::space;
        match sp {
            space::USERSPACE => ReasonSpace::Userspace,
            space::VMX => ReasonSpace::Vmx,
            space::SVM => ReasonSpace::Svm,
            space::TRACEPOINT => ReasonSpace::Tracepoint,
            _ => ReasonSpace::None,
        }
    }

    /// Each space with its short name, the spelling of data-file tags and of `--reason
    /// <space>:<code>`. JSON spells the variant names (`userspace`, `tracepoint`); files of
    /// both spellings exist, so both stay.
    const SHORT: [(ReasonSpace, &'static str); 6] = [
        (ReasonSpace::Userspace, "user"),
        (ReasonSpace::Errno, "errno"),
        (ReasonSpace::Vmx, "vmx"),
        (ReasonSpace::Svm, "svm"),
        (ReasonSpace::Tracepoint, "tp"),
        (ReasonSpace::None, "none"),
    ];

    pub fn short_name(self) -> &'static str {
        Self::SHORT
            .iter()
            .find(|(s, _)| *s == self)
            .map_or("none", |(_, n)| n)
    }

    pub fn from_short_name(name: &str) -> Option<ReasonSpace> {
        Self::SHORT
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(s, _)| *s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Reason {
    pub space: ReasonSpace,
    pub code: u32,
}

/// Whose hypercall ABI a guest used: KVM's own, or Xen's or Hyper-V's, which KVM handles in
/// their place for guests of those hypervisors (`kvmprof_common::flag::XEN`, `HYPERV`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum HypercallAbi {
    #[default]
    Kvm,
    Xen,
    Hyperv,
}

/// The I/O access that caused an exit, where known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Access {
    Pio {
        port: u16,
        size: u8,
        write: bool,
    },
    Mmio {
        gpa: u64,
        size: u8,
        write: bool,
        /// `--detail`: the access was an EPT violation or NPF (`kvm:kvm_page_fault` fired)
        /// that KVM found to be MMIO: its page is also a row of the guest pages.
        #[serde(default)]
        npf: bool,
    },
    /// `--detail`: an RDMSR, or with `write` a WRMSR, of MSR `index`.
    Msr {
        index: u32,
        write: bool,
    },
    /// `--detail`: a CPUID of `leaf` (EAX) and `subleaf` (ECX).
    Cpuid {
        leaf: u32,
        subleaf: u32,
    },
    /// `--detail`: a hypercall, by its number (KVM's and Xen's: RAX; Hyper-V's: the call code).
    Hypercall {
        /// Files from before Xen's and Hyper-V's hypercalls were told apart hold KVM's only.
        #[serde(default)]
        abi: HypercallAbi,
        nr: u64,
    },
    /// `--detail`: an EPT violation or NPF that faulted in guest-physical page `gpa` (one that
    /// became MMIO is an [`Access::Mmio`] with `npf`).
    Page {
        gpa: u64,
    },
}

impl Access {
    /// Whether a tally of such exits carries no address of its own: MMIO addresses and guest
    /// pages are counted beside its slot (`kvmprof_common::tally::by_addr`), and the tally
    /// has no per-address cycle.
    pub fn by_address(self) -> bool {
        matches!(self, Access::Mmio { .. } | Access::Page { .. })
    }

    /// The access with `addr` as its address: the MMIO address or guest page the kernel
    /// counted apart from a tally's access (`kvmprof_common::tally`).
    pub fn at(self, addr: u64) -> Access {
        match self {
            Access::Mmio {
                gpa: _,
                size,
                write,
                npf,
            } => Access::Mmio {
                gpa: addr,
                size,
                write,
                npf,
            },
            Access::Page { .. } => Access::Page { gpa: addr },
            other => other,
        }
    }
}

/// A stage of the exit cycle (`kvmprof_common::stage` indices and names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "&str", try_from = "String")]
pub enum Stage {
    Cycle,
    VendorRun,
    Handler,
    FastPio,
    KvmRun,
    Vmm,
    SchedWait,
    SchedSleep,
}

impl Stage {
    pub const ALL: [Stage; STAGES] = [
        Stage::Cycle,
        Stage::VendorRun,
        Stage::Handler,
        Stage::FastPio,
        Stage::KvmRun,
        Stage::Vmm,
        Stage::SchedWait,
        Stage::SchedSleep,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// Short name used in tags, JSON and column headers.
    pub fn name(self) -> &'static str {
        kvmprof_common::stage::NAMES[self.index()]
    }

    pub fn from_name(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl From<Stage> for &'static str {
    fn from(s: Stage) -> Self {
        s.name()
    }
}

impl TryFrom<String> for Stage {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        Stage::from_name(&name).ok_or_else(|| format!("unknown stage '{name}'"))
    }
}

/// One VM exit with whatever was measured about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    pub pid: u32,
    pub tid: u32,
    /// vCPU id, where it could be resolved.
    pub vcpu: Option<u32>,
    /// CLOCK_MONOTONIC ns (live) or trace timestamp (imported) when the exit completed.
    pub ts_ns: u64,
    /// The most specific reason known: the vendor reason where `kvm_exit` fired, else the
    /// tracepoint or userspace reason.
    pub reason: Reason,
    /// KVM_EXIT_* when the exit went to the VMM.
    pub userspace_reason: Option<u32>,
    pub access: Option<Access>,
    /// Duration of each stage in ns (`Stage::index`), `None` when not measured.
    pub stages: [Option<u64>; STAGES],
}

/// Exits of one kind that the kernel tallied instead of sending one by one
/// (`kvmprof_common::tally`): `count` exits like `exit`, whose stages are unset and whose
/// `ts_ns` is the time of the last of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tally {
    pub exit: Exit,
    /// Time of the first of them.
    pub first_ts_ns: u64,
    pub count: u64,
    /// Per stage: the durations as (value, how many), each value standing for its kernel
    /// histogram bucket (within 0.4 %), except the maximum, which is exact.
    pub stages: [Vec<(u64, u64)>; STAGES],
    /// Per stage: the exact sum of the durations.
    pub sum_ns: [u64; STAGES],
    /// For MMIO and guest-page exits, whose `exit.access` carries no address: (address or
    /// page, exits) of those
    /// counted by address, and `other`, those whose address the kernel had no room for
    /// (`kvmprof_common::tally`). Read apart from `count`: within one tally they may be a
    /// few exits ahead of it (even with `count` 0), never behind at the end.
    pub addrs: Vec<(u64, u64)>,
    pub other: u64,
    /// `--detail`: (guest RIP, exits) of exits of the thread and reason of `exit`, and
    /// `rips_other`, those whose RIP the kernel had no room for
    /// (`kvmprof_common::detail`). Counted apart from everything else: a tally of RIPs
    /// has `count` 0.
    pub rips: Vec<(u64, u64)>,
    pub rips_other: u64,
}

impl Tally {
    /// A tally of guest RIPs only (`--detail`): exits like `exit` by RIP, and those whose
    /// RIP the kernel had no room for.
    pub fn of_rips(exit: Exit, rips: Vec<(u64, u64)>, rips_other: u64) -> Tally {
        Tally {
            first_ts_ns: exit.ts_ns,
            exit,
            count: 0,
            stages: Default::default(),
            sum_ns: [0; STAGES],
            addrs: Vec::new(),
            other: 0,
            rips,
            rips_other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmprof_common::stage;

    #[test]
    fn stage_indices_are_the_kernel_stage_indices() {
        let pairs = [
            (Stage::Cycle, stage::CYCLE),
            (Stage::VendorRun, stage::VENDOR_RUN),
            (Stage::Handler, stage::HANDLER),
            (Stage::FastPio, stage::FAST_PIO),
            (Stage::KvmRun, stage::KVM_RUN),
            (Stage::Vmm, stage::VMM),
            (Stage::SchedWait, stage::SCHED_WAIT),
            (Stage::SchedSleep, stage::SCHED_SLEEP),
        ];
        for (s, index) in pairs {
            assert_eq!(s.index(), index, "{s:?}");
            assert_eq!(Stage::ALL[index], s, "{s:?}");
        }
        assert_eq!(pairs.len(), STAGES);
    }
}
