//! The JSON Lines form of one exit (`record --exits FILE`): stages by name, the access
//! flattened, a schema version on every line so a reader can tell formats apart.
//!
//! ```json
//! {"schema_version":2,"pid":7,"tid":8,"vcpu":0,"ts_ns":123,
//!  "reason":{"space":"svm","code":123,"name":"io"},"userspace_reason":2,
//!  "access":"pio","port":1016,"size":1,"write":true,
//!  "stages":{"cycle":7915,"vendor_run":3206,"handler":3116,"fast_pio":2594}}
//! ```
//! `access`/`port` or `access`/`gpa` (with `size`, `write`) appear only when the access is
//! known; with `--detail`, `"access":"msr","index":27,"write":false`, `"access":"cpuid",
//! "leaf":1,"subleaf":0` or `"access":"hypercall","nr":5` (`"abi":"xen"` or `"hyperv"` added
//! for those guests' hypercalls) name an exit's MSR, leaf or hypercall; `stages` holds only
//! the stages measured. Version 1 called the access `space`, the word `reason.space` (whose
//! exit-reason table) also uses in the same line.
use kvmprof_common::STAGES;
use serde::Serialize;

use crate::backend::reason_name;
use crate::data::model::{Access, Exit, HypercallAbi, Reason, ReasonSpace, Stage};

/// Bumped when a field changes meaning or goes away (2: the access is `access`, not `space`).
pub const SCHEMA_VERSION: u32 = 2;

#[derive(Serialize)]
pub struct Line {
    schema_version: u32,
    pid: u32,
    tid: u32,
    vcpu: Option<u32>,
    ts_ns: u64,
    reason: NamedReason,
    userspace_reason: Option<u32>,
    /// KVM_RUN's error return, negative as the kernel gives it (-4: EINTR); only on the
    /// exits whose reason is that error.
    #[serde(skip_serializing_if = "Option::is_none")]
    errno: Option<i32>,
    #[serde(flatten)]
    access: Option<FlatAccess>,
    stages: Stages,
}

#[derive(Serialize)]
struct NamedReason {
    #[serde(flatten)]
    reason: Reason,
    name: String,
}

#[derive(Serialize)]
#[serde(tag = "access", rename_all = "lowercase")]
enum FlatAccess {
    Pio {
        port: u16,
        size: u8,
        write: bool,
    },
    Mmio {
        gpa: u64,
        size: u8,
        write: bool,
        /// `--detail`: it was an EPT violation or NPF (absent otherwise).
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        npf: bool,
    },
    Msr {
        index: u32,
        write: bool,
    },
    Cpuid {
        leaf: u32,
        subleaf: u32,
    },
    Hypercall {
        /// Absent for KVM's own hypercalls, as before Xen's and Hyper-V's were told apart.
        #[serde(skip_serializing_if = "is_kvm")]
        abi: HypercallAbi,
        nr: u64,
    },
    /// `--detail`: a fault-in of this guest page.
    Page {
        gpa: u64,
    },
}

fn is_kvm(abi: &HypercallAbi) -> bool {
    *abi == HypercallAbi::Kvm
}

/// The measured stages by name, in the order of the exit cycle.
struct Stages([Option<u64>; STAGES]);

impl Serialize for Stages {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(
            Stage::ALL
                .into_iter()
                .filter_map(|st| Some((st.name(), self.0[st.index()]?))),
        )
    }
}

impl From<&Exit> for Line {
    fn from(e: &Exit) -> Self {
        Line {
            schema_version: SCHEMA_VERSION,
            pid: e.pid,
            tid: e.tid,
            vcpu: e.vcpu,
            ts_ns: e.ts_ns,
            reason: NamedReason {
                reason: e.reason,
                name: reason_name(e.reason),
            },
            userspace_reason: e.userspace_reason,
            errno: (e.reason.space == ReasonSpace::Errno)
                .then(|| -i32::try_from(e.reason.code).unwrap_or(i32::MAX)),
            access: e.access.map(|a| match a {
                Access::Pio { port, size, write } => FlatAccess::Pio { port, size, write },
                Access::Mmio {
                    gpa,
                    size,
                    write,
                    npf,
                } => FlatAccess::Mmio {
                    gpa,
                    size,
                    write,
                    npf,
                },
                Access::Msr { index, write } => FlatAccess::Msr { index, write },
                Access::Cpuid { leaf, subleaf } => FlatAccess::Cpuid { leaf, subleaf },
                Access::Hypercall { abi, nr } => FlatAccess::Hypercall { abi, nr },
                Access::Page { gpa } => FlatAccess::Page { gpa },
            }),
            stages: Stages(e.stages),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::model::ReasonSpace;
    use kvmprof_common::STAGES;

    #[test]
    fn stages_are_named_and_the_access_is_flat() {
        let mut stages = [None; STAGES];
        stages[Stage::Cycle.index()] = Some(7915);
        stages[Stage::FastPio.index()] = Some(2594);
        let mut e = Exit {
            pid: 7,
            tid: 8,
            vcpu: Some(0),
            ts_ns: 123,
            reason: Reason {
                space: ReasonSpace::Svm,
                code: 0x7b,
            },
            userspace_reason: None,
            access: Some(Access::Pio {
                port: 0x3f8,
                size: 1,
                write: true,
            }),
            stages,
        };
        let json = serde_json::to_string(&Line::from(&e)).expect("serializes");
        assert_eq!(
            json,
            "{\"schema_version\":2,\"pid\":7,\"tid\":8,\"vcpu\":0,\"ts_ns\":123,\
             \"reason\":{\"space\":\"svm\",\"code\":123,\"name\":\"io\"},\
             \"userspace_reason\":null,\"access\":\"pio\",\"port\":1016,\"size\":1,\
             \"write\":true,\"stages\":{\"cycle\":7915,\"fast_pio\":2594}}"
        );
        e.access = Some(Access::Mmio {
            gpa: 0xd0000,
            size: 4,
            write: false,
            npf: false,
        });
        let v: serde_json::Value = serde_json::to_value(Line::from(&e)).expect("serializes");
        assert_eq!(
            (v["access"].as_str(), v["gpa"].as_u64()),
            (Some("mmio"), Some(0xd0000))
        );
        assert!(v.get("npf").is_none(), "said only under --detail");
        e.access = Some(Access::Page { gpa: 0x2_0000 });
        let v: serde_json::Value = serde_json::to_value(Line::from(&e)).expect("serializes");
        assert_eq!(
            (v["access"].as_str(), v["gpa"].as_u64()),
            (Some("page"), Some(0x2_0000))
        );
        e.access = None;
        let v = serde_json::to_value(Line::from(&e)).expect("serializes");
        assert!(v.get("access").is_none());
    }
}
