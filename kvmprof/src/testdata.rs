//! Reasons, exits and recording headers for unit tests: one copy for every module's tests.
use kvmprof_common::STAGES;

use crate::{
    data::model::{Access, Exit, Reason, ReasonSpace, Stage, Vendor},
    recording::header::{Header, Source},
};

pub const SEC: u64 = 1_000_000_000;

/// AMD SVM's IOIO exit.
pub const IO: Reason = Reason {
    space: ReasonSpace::Svm,
    code: 0x7b,
};

/// AMD SVM's HLT exit.
pub const HLT: Reason = Reason {
    space: ReasonSpace::Svm,
    code: 0x78,
};

/// KVM_EXIT_IO: an I/O exit that returned to the VMM.
pub const KVM_EXIT_IO: Reason = Reason {
    space: ReasonSpace::Userspace,
    code: 2,
};

/// Stages with only the cycle measured (`None`: not even that).
pub fn cycle(ns: Option<u64>) -> [Option<u64>; STAGES] {
    let mut stages = [None; STAGES];
    stages[Stage::Cycle.index()] = ns;
    stages
}

/// An exit of `pid`'s vCPU `vcpu` (thread `pid + 1 + vcpu`) at 1 ns on the records' clock;
/// tests change other fields with `Exit { .., ..exit(..) }`.
pub fn exit(pid: u32, vcpu: u32, reason: Reason, stages: [Option<u64>; STAGES]) -> Exit {
    Exit {
        pid,
        tid: pid + 1 + vcpu,
        vcpu: Some(vcpu),
        ts_ns: 1,
        reason,
        userspace_reason: None,
        access: None,
        stages,
    }
}

/// A userspace PIO `in` from port 0x3fd (the test VMM's `in`s), otherwise as [`exit`].
pub fn pio_in(pid: u32, vcpu: u32, stages: [Option<u64>; STAGES]) -> Exit {
    Exit {
        userspace_reason: Some(KVM_EXIT_IO.code),
        access: Some(Access::Pio {
            port: 0x3fd,
            size: 1,
            write: false,
        }),
        ..exit(pid, vcpu, KVM_EXIT_IO, stages)
    }
}

/// A 1 s live recording of an AMD host, starting at 0 on both clocks, with no hooks or
/// processes named.
pub fn header() -> Header {
    Header {
        source: Source::Live,
        host: "h".into(),
        kernel: "6.1".into(),
        vendor: Vendor::Svm,
        hooks: Vec::new(),
        tracepoints: Vec::new(),
        cycle_source: "x".into(),
        processes: Vec::new(),
        start_unix_ns: 0,
        start_ts_ns: 0,
        duration_ns: SEC,
        ..Header::default()
    }
}
