//! KVM's own per-VM counters over a recording window, as recorded (`live::kvmstats` reads
//! them): stat name → change, or why there are none, and the report's lines about them.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::data::model::Vendor;

/// KVM's counters over a recording window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvmStats {
    /// Stat name → its change over the window, summed over the profiled processes' VMs.
    #[serde(default)]
    pub change: BTreeMap<String, u64>,
    /// Why the counters are missing or partial, in one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl KvmStats {
    /// The report's lines: KVM's main counters beside kvmprof's `exits`, what this backend
    /// lets kvmprof see, or why there are none.
    pub fn lines(&self, exits: u64, vendor: Vendor) -> Vec<String> {
        let mut out = Vec::new();
        if !self.change.is_empty() {
            // The exit counters, `exits` first; the others are in the JSON.
            let mut shown: Vec<(&String, &u64)> = self
                .change
                .iter()
                .filter(|(n, v)| n.as_str() == "exits" || (n.ends_with("_exits") && **v > 0))
                .collect();
            shown.sort_by_key(|(n, _)| n.as_str() != "exits");
            let shown: Vec<String> = shown.iter().map(|(n, v)| format!("{n} {v}")).collect();
            out.push(format!(
                "KVM's own count over the window (debugfs): {}; kvmprof: {exits} exits",
                shown.join(", ")
            ));
            if vendor == Vendor::Pvm {
                out.push(
                    "  (under PVM kvmprof sees only PIO, MMIO and userspace exits: KVM's \
                     `exits` also counts those no tracepoint shows)"
                        .to_owned(),
                );
            }
        }
        if let Some(n) = &self.note {
            out.push(n.clone());
        }
        out
    }
}
