//! What a recording says about itself, whatever its file: where its exits came from, how
//! each stage was measured, its processes, window and cost. The data file stores it in its
//! header and end records (`datafile`); imports and other tools' logs fill what they know.
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::aggregate::Aggregate;
use crate::data::cost::OwnCost;
use crate::data::kvmstats::KvmStats;
use crate::data::model::{Stage, Vendor};
use crate::data::slow::SlowExits;
use crate::data::target::Target;

/// Where the exits came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    #[default]
    #[serde(rename = "live")]
    Live,
    #[serde(rename = "ftrace import")]
    FtraceImport,
    /// An interval log written by another HdrHistogram implementation (see `hlog`).
    #[serde(rename = "hlog")]
    Hlog,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::Live => "live",
            Source::FtraceImport => "ftrace import",
            Source::Hlog => "hlog",
        }
    }
}

/// How one stage was measured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookUse {
    pub stage: Stage,
    /// The function or event, e.g. `svm_vcpu_run` or `kvm:kvm_exit`.
    pub symbol: String,
    /// How it was attached, free-form: `kprobe`, `fentry`, `tracepoint`, ...
    pub mode: String,
}

/// What the recorder knows about a recording; the statistics come from the [`Aggregate`].
/// The default is a live recording with nothing known yet: what the end of a recording
/// tells (`unobserved` to `kvm_stats`) is `None` until then.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub source: Source,
    pub host: String,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    pub vendor: Vendor,
    pub hooks: Vec<HookUse>,
    /// How each tracepoint was attached (classic, raw, tp_btf) and why; empty for imports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracepoints: Vec<String>,
    /// How the exit cycle was bounded, for the reader of a report.
    pub cycle_source: String,
    /// The profiled processes (empty: every process).
    pub processes: Vec<Target>,
    /// Wall-clock start of the recording (ns since the Unix epoch; 0 when unknown).
    pub start_unix_ns: u64,
    /// The same instant on the clock of [`crate::data::model::Exit::ts_ns`]. Live: the instant the
    /// window opened, in the kernel; the recording holds exactly the exits that began and
    /// ended in `[start_ts_ns, start_ts_ns + duration_ns)` (docs/design.md, "The window").
    pub start_ts_ns: u64,
    /// Length of the recording. A live recording learns it at the end: its header line says
    /// 0 and the end record has it; in a cut file, the time its whole intervals cover.
    pub duration_ns: u64,
    /// Live: exits already under way when the window opened, not in the recording, only
    /// counted. `None` for imports and for files written before the window existed.
    #[serde(default)]
    pub unobserved: Option<u64>,
    /// Live: events the kernel dropped after a refused read (`counter::READ_FAILED`, from
    /// the end record). `None` for imports, cut files and files from before the count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_failed: Option<u64>,
    /// Live: a stage return or a KVM event outside any exit cycle (`counter::UNMATCHED`):
    /// the exit it belonged to lacks that stage's time. As `read_failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmatched: Option<u64>,
    /// Live: events dropped because a thread's state had no room (`counter::NO_STATE`). As
    /// `read_failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_state: Option<u64>,
    /// Why the recording stopped (from the end record; `None` in a cut file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<String>,
    /// Set on read when the file ends without its end record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut: Option<Cut>,
    /// What the recording cost (live recordings only; known at the end: the end record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_cost: Option<OwnCost>,
    /// `record --slow`: the exits over its threshold (from the end record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow: Option<SlowExits>,
    /// KVM's own counters over the window (live recordings; from the end record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvm_stats: Option<KvmStats>,
    /// The halts KVM kept in the kernel, laid out (live recordings; from the end record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halts: Option<crate::data::halts::Halts>,
    /// `--func`'s functions, laid out (live recordings; from the end record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub funcs: Option<crate::data::funcs::Funcs>,
}

/// Where a data file without its end record was cut, and what of it is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cut {
    /// Lines in the file (the last one may be partial).
    pub lines: u64,
    /// The last line kept: the checkpoint of the last whole interval.
    pub kept_lines: u64,
}

impl Cut {
    /// The one-line warning `report` prints.
    pub fn warning(&self, path: &Path, h: &Header) -> String {
        format!(
            "warning: {} was cut after line {} without its end record (the recording was \
             killed or crashed): reporting its first {:.1} s, up to line {}",
            path.display(),
            self.lines,
            h.duration_ns as f64 / 1e9,
            self.kept_lines
        )
    }
}

impl Header {
    /// Wall-clock ns of `ts_ns` on the exits' clock (0 if that would precede the epoch).
    pub fn wall_ns(&self, ts_ns: u64) -> u64 {
        let wall =
            i128::from(self.start_unix_ns) + i128::from(ts_ns) - i128::from(self.start_ts_ns);
        u64::try_from(wall.max(0)).unwrap_or(u64::MAX)
    }

    /// An interval log's StartTime (ns since the epoch) when its BaseTime is `base_ts_ns`:
    /// not after the first interval, since readers that count from StartTime (Python's hdrh
    /// by default) skip intervals that begin before it.
    pub fn log_start_unix_ns(&self, base_ts_ns: u64) -> u64 {
        self.start_unix_ns.min(self.wall_ns(base_ts_ns))
    }

    /// Recording length for rates: the header's, or the span of the exits in `a` where the
    /// header states none.
    pub fn duration_for_rates(&self, a: &Aggregate) -> u64 {
        match (self.duration_ns, a.span()) {
            (0, Some((first, last))) => last - first,
            (d, _) => d,
        }
    }
}
