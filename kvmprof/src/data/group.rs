//! Groups of an aggregate's keys (by reason, vCPU or process), their labels and the
//! percentiles every table shows: one implementation for `report`, `top`, `export` and `diff`.
use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use crate::{
    backend::reason_name,
    data::aggregate::{Key, KeyStats},
    data::model::Reason,
};

/// What exits are grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    Reason,
    Vcpu,
    Pid,
}

impl By {
    /// The group `key` falls in.
    pub fn id(self, key: &Key) -> GroupId {
        match self {
            By::Reason => GroupId::Reason(key.reason),
            By::Vcpu => GroupId::Vcpu(key.pid, key.vcpu),
            By::Pid => GroupId::Pid(key.pid),
        }
    }

    /// As the command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            By::Reason => "reason",
            By::Vcpu => "vcpu",
            By::Pid => "pid",
        }
    }
}

/// Identity of a group; its order breaks ties so rows keep a fixed order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum GroupId {
    Reason(Reason),
    Vcpu(u32, Option<u32>),
    Pid(u32),
}

impl GroupId {
    /// The process of a group by vCPU or process.
    pub fn pid(self) -> Option<u32> {
        match self {
            GroupId::Reason(_) => None,
            GroupId::Vcpu(pid, _) | GroupId::Pid(pid) => Some(pid),
        }
    }

    /// `hlt`, `pid 7 vcpu 0`, or `7 qemu` for a process whose name `name_of` knows.
    pub fn label<'a>(self, name_of: impl FnOnce(u32) -> Option<&'a str>) -> String {
        match self {
            GroupId::Reason(r) => reason_name(r),
            GroupId::Vcpu(pid, Some(v)) => format!("pid {pid} vcpu {v}"),
            GroupId::Vcpu(pid, None) => format!("pid {pid} vcpu ?"),
            GroupId::Pid(pid) => match name_of(pid) {
                Some(name) => format!("{pid} {name}"),
                None => pid.to_string(),
            },
        }
    }
}

/// The statistics of `keys` merged per group.
pub fn group<'a>(
    keys: impl IntoIterator<Item = (&'a Key, &'a KeyStats)>,
    by: By,
) -> BTreeMap<GroupId, KeyStats> {
    let mut groups: BTreeMap<GroupId, KeyStats> = BTreeMap::new();
    for (key, stats) in keys {
        groups.entry(by.id(key)).or_default().merge(stats);
    }
    groups
}

/// The percentiles a table shows of one latency histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let q = |q| h.value_at_quantile(q);
        Percentiles {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: h.max(),
        }
    }
}
