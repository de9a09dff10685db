//! Exit statistics: exact counts and HDR latency histograms per (process, vCPU, reason) and
//! stage, a ports/addresses table, and per-interval histograms for the time series.
//!
//! Knows nothing of where exits come from: live capture and trace import both feed
//! [`Exit`]s through [`Aggregate::add`].
use std::borrow::Cow;
use std::collections::BTreeMap;

use anyhow::Context as _;
use hdrhistogram::serialization::{DeserializeError, Deserializer, Serializer as _};
use hdrhistogram::Histogram;
use kvmprof_common::STAGES;
use serde::{Deserialize, Serialize};

use crate::data::model::{Access, Exit, HypercallAbi, Reason, Stage, Tally};
use crate::data::v2deflate::{EncodeError, Encoder};

/// Longest duration a histogram tracks (one hour); longer values are clamped to it.
pub const MAX_NS: u64 = 3_600 * 1_000_000_000;

/// Shortest interval of the time series: the interval log stores timestamps in milliseconds.
pub const MIN_INTERVAL_NS: u64 = 1_000_000;

/// Significant decimal digits of every histogram (values are exact to ±0.1%).
const SIGFIG: u8 = 3;

/// Rows of the ports table that keep a cycle histogram (for their p50/p99): as many as the
/// kernel has tally slots. A guest's ports, MSRs and leaves are tens; one that used up the
/// slots (its further kinds sent as records) adds rows without percentiles, not memory.
pub const ROW_HISTS: usize = kvmprof_common::tally::SLOTS as usize;

/// What exits are grouped by. Every report grouping (reason, vCPU, process) is a union of keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key {
    pub pid: u32,
    pub vcpu: Option<u32>,
    pub reason: Reason,
}

/// The durations of one stage.
#[derive(Clone, Debug)]
pub struct StageStats {
    /// Durations in ns, clamped to [`MAX_NS`]. `hist.len()` is the number of exits in which
    /// the stage was measured.
    pub hist: Histogram<u64>,
    /// Exact sum of the recorded durations (the histogram only approximates it), for shares
    /// of time.
    pub sum_ns: u64,
}

impl StageStats {
    fn new() -> Self {
        StageStats {
            hist: new_histogram(),
            sum_ns: 0,
        }
    }

    fn merge(&mut self, other: &StageStats) {
        add_histogram(&mut self.hist, &other.hist);
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
    }
}

/// Everything known about the exits of one key (or a union of keys, see [`KeyStats::merge`]).
#[derive(Clone, Debug, Default)]
pub struct KeyStats {
    /// Every exit, whether or not any stage was measured.
    pub count: u64,
    /// Exits that went to the VMM, by KVM_EXIT_* code. On SVM/VMX such exits are grouped
    /// under the vendor reason (`io`), and this says how many of them KVM could not finish.
    pub userspace: BTreeMap<u32, u64>,
    /// Indexed by [`Stage::index`]; `None` when the stage was never measured.
    pub stages: [Option<StageStats>; STAGES],
}

impl KeyStats {
    /// Exits that went to the VMM.
    pub fn userspace_count(&self) -> u64 {
        self.userspace.values().sum()
    }

    pub fn stage(&self, stage: Stage) -> Option<&StageStats> {
        self.stages[stage.index()].as_ref()
    }

    /// Adds `other` into `self` (e.g. to group keys by reason across vCPUs).
    pub fn merge(&mut self, other: &KeyStats) {
        self.count += other.count;
        for (&code, &n) in &other.userspace {
            *self.userspace.entry(code).or_default() += n;
        }
        for (mine, theirs) in self.stages.iter_mut().zip(&other.stages) {
            if let Some(theirs) = theirs {
                mine.get_or_insert_with(StageStats::new).merge(theirs);
            }
        }
    }
}

/// The address space of an I/O access, or (`--detail`) what else names an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoSpace {
    Pio,
    Mmio,
    Msr,
    Cpuid,
    /// KVM's own hypercalls, then Xen's and Hyper-V's ([`super::model::HypercallAbi`]): each
    /// ABI numbers its calls its own way, so each is a space of its own.
    Hypercall,
    #[serde(rename = "xen_hypercall")]
    XenHypercall,
    #[serde(rename = "hv_hypercall")]
    HvHypercall,
    /// Guest pages of EPT violations and NPFs; `write` is set for a page whose fault became
    /// MMIO, clear for a fault-in.
    Page,
}

impl IoSpace {
    /// The spelling of reports (as in JSON).
    pub fn name(self) -> &'static str {
        match self {
            IoSpace::Pio => "pio",
            IoSpace::Mmio => "mmio",
            IoSpace::Msr => "msr",
            IoSpace::Cpuid => "cpuid",
            IoSpace::Hypercall => "hypercall",
            IoSpace::XenHypercall => "xen_hypercall",
            IoSpace::HvHypercall => "hv_hypercall",
            IoSpace::Page => "page",
        }
    }

    /// Whether rows of this space name an exit's MSR, CPUID leaf, hypercall or guest page
    /// (`--detail`) rather than a port or an MMIO address.
    pub fn is_detail(self) -> bool {
        matches!(
            self,
            IoSpace::Msr
                | IoSpace::Cpuid
                | IoSpace::Hypercall
                | IoSpace::XenHypercall
                | IoSpace::HvHypercall
                | IoSpace::Page
        )
    }

    /// The space, address (port, GPA, MSR index, CPUID key, hypercall number, guest page) and
    /// direction of an access.
    pub fn of(access: Access) -> (IoSpace, u64, bool) {
        match access {
            Access::Pio { port, write, .. } => (IoSpace::Pio, u64::from(port), write),
            Access::Mmio { gpa, write, .. } => (IoSpace::Mmio, gpa, write),
            Access::Msr { index, write } => (IoSpace::Msr, u64::from(index), write),
            Access::Cpuid { leaf, subleaf } => (
                IoSpace::Cpuid,
                kvmprof_common::detail::cpuid_key(leaf, subleaf),
                false,
            ),
            Access::Hypercall { abi, nr } => {
                let space = match abi {
                    HypercallAbi::Kvm => IoSpace::Hypercall,
                    HypercallAbi::Xen => IoSpace::XenHypercall,
                    HypercallAbi::Hyperv => IoSpace::HvHypercall,
                };
                (space, nr, false)
            }
            Access::Page { gpa } => (IoSpace::Page, gpa, false),
        }
    }

    /// The rows of an access: its own ([`IoSpace::of`]) and, for an MMIO access that was an
    /// EPT violation or NPF, its page's, marked MMIO.
    pub fn rows(access: Access) -> impl Iterator<Item = (IoSpace, u64, bool)> {
        let page = match access {
            Access::Mmio { gpa, npf: true, .. } => {
                Some((IoSpace::Page, kvmprof_common::detail::page(gpa), true))
            }
            _ => None,
        };
        std::iter::once(IoSpace::of(access)).chain(page)
    }

    /// The direction of a row of this space, as tables spell it.
    pub fn direction(self, write: bool) -> &'static str {
        match (self, write) {
            (IoSpace::Pio, true) => "out",
            (IoSpace::Pio, false) => "in",
            (IoSpace::Mmio | IoSpace::Msr, true) => "write",
            (IoSpace::Mmio | IoSpace::Msr, false) => "read",
            (
                IoSpace::Cpuid | IoSpace::Hypercall | IoSpace::XenHypercall | IoSpace::HvHypercall,
                _,
            ) => "-",
            (IoSpace::Page, true) => "mmio",
            (IoSpace::Page, false) => "fault-in",
        }
    }

    /// A row's `addr` as tables spell it: hex, a CPUID key as `leaf/subleaf`.
    pub fn key_text(self, addr: u64) -> String {
        match self {
            IoSpace::Cpuid => {
                let (leaf, subleaf) = kvmprof_common::detail::cpuid_leaf(addr);
                format!("{leaf:#x}/{subleaf:#x}")
            }
            _ => format!("{addr:#x}"),
        }
    }
}

/// One row of the ports/addresses table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortKey {
    pub pid: u32,
    pub space: IoSpace,
    /// Port (PIO), guest physical address (MMIO), MSR index, CPUID leaf and subleaf
    /// (`kvmprof_common::detail::cpuid_key`), hypercall number or guest page.
    pub addr: u64,
    /// The direction; for a guest page, whether its fault became MMIO.
    pub write: bool,
    /// The exit reason the access was attributed to.
    pub reason: Reason,
    /// The MMIO (or guest-page) exits of this pid, direction and reason whose address the
    /// kernel had no room to count apart (`addr` 0): the `other` row.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub folded: bool,
}

/// One row of the guest-RIP table (`--detail`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RipKey {
    pub pid: u32,
    pub reason: Reason,
    /// `None`: the exits of this pid and reason whose RIP the kernel had no room to count
    /// apart (the `other` row).
    pub rip: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStats {
    pub count: u64,
    /// Accesses that the VMM handled.
    pub userspace: u64,
    /// Summed cycle time of those of them whose cycle was measured (`cycle_count`), exact:
    /// the row's mean cycle. MMIO address rows have none (the kernel counts their addresses
    /// apart from the stages).
    #[serde(default)]
    pub cycle_ns: u64,
    #[serde(default)]
    pub cycle_count: u64,
}

impl PortStats {
    /// Adds another's counts and sums (a block of a data file, another recording).
    pub fn merge(&mut self, other: &PortStats) {
        self.count = self.count.saturating_add(other.count);
        self.userspace = self.userspace.saturating_add(other.userspace);
        self.cycle_ns = self.cycle_ns.saturating_add(other.cycle_ns);
        self.cycle_count = self.cycle_count.saturating_add(other.cycle_count);
    }
}

/// All statistics of a recording.
#[derive(Clone, Debug)]
pub struct Aggregate {
    interval_ns: u64,
    keys: BTreeMap<Key, KeyStats>,
    ports: BTreeMap<PortKey, PortStats>,
    rips: BTreeMap<RipKey, u64>,
    /// The cycle of each row of `ports` whose cycle is measured (not the kernel's MMIO
    /// address counts), for its percentiles; at most [`ROW_HISTS`] rows.
    row_cycles: BTreeMap<PortKey, Histogram<u64>>,
    lost: u64,
    /// Earliest and latest exit timestamp.
    span: Option<(u64, u64)>,
    intervals: Intervals,
    /// Whether stages are recorded at all (see [`Aggregate::counting`]).
    stages: bool,
}

impl Aggregate {
    /// `interval_ns` is the length of one interval of the time series (at least
    /// [`MIN_INTERVAL_NS`]). Intervals are aligned to multiples of it on the exits' clock, so
    /// aggregates of the same clock merge interval by interval.
    pub fn new(interval_ns: u64) -> Self {
        Aggregate {
            interval_ns: interval_ns.max(MIN_INTERVAL_NS),
            keys: BTreeMap::new(),
            ports: BTreeMap::new(),
            rips: BTreeMap::new(),
            row_cycles: BTreeMap::new(),
            lost: 0,
            span: None,
            intervals: Intervals::default(),
            stages: true,
        }
    }

    /// An aggregate of counts only (keys, ports, span, lost): no stage is recorded, so no
    /// histogram is kept. For `record`'s live view, which only prints totals: the data file
    /// has the histograms, and keeping them twice cost the profiled guest (issue 20).
    pub fn counting(interval_ns: u64) -> Self {
        Aggregate {
            stages: false,
            ..Aggregate::new(interval_ns)
        }
    }

    /// Counts `e` and records each of its measured stages.
    pub fn add(&mut self, e: &Exit) {
        let cycle = e.stages[Stage::Cycle.index()].map_or((0, 0), |ns| (ns, 1));
        let (key, idx) = self.count(e, 1, e.ts_ns, Some(cycle));
        if let Some(ns) = e.stages[Stage::Cycle.index()] {
            self.record_row_cycle(e, &[(ns, 1)]);
        }
        for stage in Stage::ALL {
            if let Some(ns) = e.stages[stage.index()] {
                let ns = ns.min(MAX_NS);
                self.record_stage(key, idx, stage, &[(ns, 1)], ns);
            }
        }
        self.intervals.advance(idx);
    }

    /// Counts the exits of a kernel tally and records their stages' durations, as [`add`]
    /// would have one by one (within the tally's bucket precision; sums exact). They go in
    /// the interval of the middle of their span: live reads fall just after interval
    /// boundaries (`live::Options::tick`), so a read holds one interval and a few µs of the
    /// next, and a read that comes late (or a timer that fires a little early) still files
    /// its exits in the interval they mostly belong to, never a whole read away.
    ///
    /// [`add`]: Aggregate::add
    pub fn add_tally(&mut self, t: &Tally) {
        self.count_addrs(t);
        self.count_rips(t);
        if t.count == 0 {
            return;
        }
        let by_addr = t.exit.access.is_some_and(Access::by_address);
        let cycle = Stage::Cycle.index();
        let cycles: u64 = t.stages[cycle].iter().map(|(_, n)| n).sum();
        let port = (!by_addr).then_some((t.sum_ns[cycle], cycles));
        let (key, idx) = self.count(&t.exit, t.count, t.first_ts_ns, port);
        if !by_addr {
            self.record_row_cycle(&t.exit, &t.stages[cycle]);
        }
        for stage in Stage::ALL {
            let values = &t.stages[stage.index()];
            if !values.is_empty() {
                self.record_stage(key, idx, stage, values, t.sum_ns[stage.index()]);
            }
        }
        self.intervals.advance(idx);
    }

    /// The guest-RIP rows of a tally (`--detail`).
    fn count_rips(&mut self, t: &Tally) {
        let folded = (t.rips_other > 0).then_some((None, t.rips_other));
        let rows = t.rips.iter().map(|&(r, n)| (Some(r), n)).chain(folded);
        for (rip, n) in rows {
            self.restore_rip(
                RipKey {
                    pid: t.exit.pid,
                    reason: t.exit.reason,
                    rip,
                },
                n,
            );
        }
    }

    /// The address rows of a tally's MMIO and guest-page exits (its access has no address).
    fn count_addrs(&mut self, t: &Tally) {
        let Some(access) = t.exit.access.filter(|a| a.by_address()) else {
            return;
        };
        let folded = (t.other > 0).then_some((0, t.other, true));
        let addrs = t.addrs.iter().map(|&(a, n)| (a, n, false)).chain(folded);
        for (addr, n, folded) in addrs {
            for key in port_keys(&t.exit, access.at(addr)) {
                let stats = self.ports.entry(PortKey { folded, ..key });
                let stats = stats.or_default();
                stats.count += n;
                if t.exit.userspace_reason.is_some() {
                    stats.userspace += n;
                }
            }
        }
    }

    /// Counts `n` exits like `e` (the first of them at `first_ts`, the last at `e.ts_ns`) in
    /// its key, the span and, with `port` (their summed cycle time and how many of them had
    /// one), the ports table (a tally's MMIO addresses go by [`Aggregate::count_addrs`]); returns its key and the index of the interval of the
    /// middle of their span.
    fn count(&mut self, e: &Exit, n: u64, first_ts: u64, port: Option<(u64, u64)>) -> (Key, u64) {
        let key = Key {
            pid: e.pid,
            vcpu: e.vcpu,
            reason: e.reason,
        };
        let stats = self.keys.entry(key).or_default();
        stats.count += n;
        if let Some(code) = e.userspace_reason {
            *stats.userspace.entry(code).or_default() += n;
        }
        if let (Some(access), Some((cycle_ns, cycle_count))) = (e.access, port) {
            for key in port_keys(e, access) {
                let stats = self.ports.entry(key).or_default();
                stats.count += n;
                if e.userspace_reason.is_some() {
                    stats.userspace += n;
                }
                stats.cycle_ns += cycle_ns;
                stats.cycle_count += cycle_count;
            }
        }
        let first_ts = first_ts.min(e.ts_ns);
        self.extend_span(first_ts, e.ts_ns);
        let middle = first_ts + (e.ts_ns - first_ts) / 2;
        (key, middle / self.interval_ns)
    }

    /// Records (cycle, how many) pairs in the histogram of `e`'s ports-table row.
    fn record_row_cycle(&mut self, e: &Exit, values: &[(u64, u64)]) {
        let Some(access) = e.access.filter(|_| self.stages && !values.is_empty()) else {
            return;
        };
        for port in port_keys(e, access) {
            if let Some(hist) = self.row_cycle_mut(port) {
                record_all(hist, values);
            }
        }
    }

    /// The cycle histogram of a row, `None` once [`ROW_HISTS`] other rows have one.
    fn row_cycle_mut(&mut self, port: PortKey) -> Option<&mut Histogram<u64>> {
        if self.row_cycles.len() >= ROW_HISTS && !self.row_cycles.contains_key(&port) {
            return None;
        }
        Some(self.row_cycles.entry(port).or_insert_with(new_histogram))
    }

    /// Records (duration, how many) pairs of one stage of `key`, whose exact sum is `sum_ns`,
    /// in its totals and its interval `idx`.
    fn record_stage(
        &mut self,
        key: Key,
        idx: u64,
        stage: Stage,
        values: &[(u64, u64)],
        sum_ns: u64,
    ) {
        if !self.stages {
            return;
        }
        let stats = self.keys.entry(key).or_default().stages[stage.index()]
            .get_or_insert_with(StageStats::new);
        record_all(&mut stats.hist, values);
        stats.sum_ns = stats.sum_ns.saturating_add(sum_ns);
        record_all(self.intervals.hist(idx, key, stage), values);
    }

    /// Drops everything recorded about process `pid` (`serve` forgets VMs that exited).
    pub fn forget_pid(&mut self, pid: u32) {
        self.keys.retain(|k, _| k.pid != pid);
        self.ports.retain(|p, _| p.pid != pid);
        self.rips.retain(|r, _| r.pid != pid);
        self.row_cycles.retain(|p, _| p.pid != pid);
        for series in self.intervals.open.values_mut() {
            series.retain(|(k, _), _| k.pid != pid);
        }
        self.intervals.closed.retain(|(_, k, _), _| k.pid != pid);
    }

    /// Records that `n` exits were lost (ring buffer full).
    pub fn add_lost(&mut self, n: u64) {
        self.lost = self.lost.saturating_add(n);
    }

    pub fn keys(&self) -> &BTreeMap<Key, KeyStats> {
        &self.keys
    }

    pub fn ports(&self) -> &BTreeMap<PortKey, PortStats> {
        &self.ports
    }

    /// Exits by guest RIP (`--detail`).
    pub fn rips(&self) -> &BTreeMap<RipKey, u64> {
        &self.rips
    }

    /// The cycle histograms of the ports table's rows (see [`ROW_HISTS`]).
    pub fn row_cycles(&self) -> &BTreeMap<PortKey, Histogram<u64>> {
        &self.row_cycles
    }

    /// Adds to the cycle histogram of a row of the ports table (a block of a data file,
    /// another recording).
    pub fn restore_row_cycle(&mut self, port: PortKey, hist: &Histogram<u64>) {
        if let Some(mine) = self.row_cycle_mut(port) {
            add_histogram(mine, hist);
        }
    }

    /// Adds `n` exits to a row of the guest-RIP table (a tally, a block of a data file).
    pub fn restore_rip(&mut self, rip: RipKey, n: u64) {
        let c = self.rips.entry(rip).or_default();
        *c = c.saturating_add(n);
    }

    pub fn lost(&self) -> u64 {
        self.lost
    }

    pub fn interval_ns(&self) -> u64 {
        self.interval_ns
    }

    /// Earliest and latest exit timestamp, `None` before the first exit.
    pub fn span(&self) -> Option<(u64, u64)> {
        self.span
    }

    /// Exits counted, over all keys.
    pub fn total_exits(&self) -> u64 {
        self.keys.values().map(|s| s.count).sum()
    }

    /// Summed duration of `stage` over all keys: the denominator of shares of time.
    pub fn stage_sum_ns(&self, stage: Stage) -> u64 {
        self.keys
            .values()
            .filter_map(|s| s.stage(stage))
            .fold(0, |sum, s| sum.saturating_add(s.sum_ns))
    }

    /// Calls `f(start_ns, key, stage, histogram)` for every interval histogram in order of
    /// interval start, then key and stage. `start_ns` is on the exits' clock.
    pub fn for_each_interval(
        &self,
        mut f: impl FnMut(u64, Key, Stage, &Histogram<u64>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        for (idx, key, stage) in self.intervals.ids() {
            let hist = self.intervals.get(idx, key, stage)?;
            f(idx * self.interval_ns, key, stage, &hist)?;
        }
        Ok(())
    }

    /// Restores the counters of a key saved by [`crate::recording::datafile`], adding to what an
    /// earlier block of the file restored; its histograms come back through
    /// [`Aggregate::restore_interval`].
    pub fn restore_key(
        &mut self,
        key: Key,
        count: u64,
        userspace: &BTreeMap<u32, u64>,
        sums: [Option<u64>; STAGES],
    ) {
        let stats = self.keys.entry(key).or_default();
        stats.count = stats.count.saturating_add(count);
        for (&code, &n) in userspace {
            let sum = stats.userspace.entry(code).or_default();
            *sum = sum.saturating_add(n);
        }
        for (stage, sum) in stats.stages.iter_mut().zip(sums) {
            if let Some(sum_ns) = sum {
                let stage = stage.get_or_insert_with(StageStats::new);
                stage.sum_ns = stage.sum_ns.saturating_add(sum_ns);
            }
        }
    }

    /// Restores a row of the ports table saved by [`crate::recording::datafile`], adding to what an
    /// earlier block restored.
    pub fn restore_port(&mut self, port: PortKey, stats: PortStats) {
        self.ports.entry(port).or_default().merge(&stats);
    }

    /// Restores the timestamp span saved by [`crate::recording::datafile`].
    pub fn restore_span(&mut self, first: u64, last: u64) {
        self.extend_span(first, last);
    }

    /// Restores an interval histogram saved by [`crate::recording::datafile`]: `hist` starts at
    /// `start_ns` and `blob` is its compressed encoding, kept as is to spare re-encoding.
    /// Adds to the key's totals, not to exact sums or counts.
    pub fn restore_interval(
        &mut self,
        start_ns: u64,
        key: Key,
        stage: Stage,
        hist: &Histogram<u64>,
        blob: Vec<u8>,
    ) {
        let stats = self.keys.entry(key).or_default().stages[stage.index()]
            .get_or_insert_with(StageStats::new);
        add_histogram(&mut stats.hist, hist);
        let idx = start_ns / self.interval_ns;
        let id = (idx, key, stage);
        let live = self
            .intervals
            .open
            .get(&idx)
            .is_some_and(|s| s.contains_key(&(key, stage)));
        if live || self.intervals.closed.contains_key(&id) {
            // The same series twice: add them up.
            self.add_to_interval(start_ns, key, stage, hist);
        } else {
            self.intervals.closed.insert(id, blob);
            self.intervals.newest = self.intervals.newest.max(idx);
        }
    }

    /// Adds `hist` to the time series only.
    fn add_to_interval(&mut self, start_ns: u64, key: Key, stage: Stage, hist: &Histogram<u64>) {
        let idx = start_ns / self.interval_ns;
        add_histogram(self.intervals.hist(idx, key, stage), hist);
        self.intervals.advance(idx);
    }

    fn extend_span(&mut self, first: u64, last: u64) {
        self.span = Some(match self.span {
            Some((a, b)) => (a.min(first), b.max(last)),
            None => (first, last),
        });
    }
}

/// Per-interval histograms. A recording may span hours of intervals times hundreds of
/// (key, stage) series, too many live histograms (tens of KiB each) to keep, so only the
/// two newest intervals stay live (exits from several CPUs arrive slightly out of order) and
/// older ones are closed into their compressed V2 encoding, typically a few hundred bytes.
/// A late exit for a closed interval reopens it.
#[derive(Clone, Debug, Default)]
struct Intervals {
    /// Highest interval index seen.
    newest: u64,
    open: BTreeMap<u64, BTreeMap<(Key, Stage), Histogram<u64>>>,
    closed: BTreeMap<(u64, Key, Stage), Vec<u8>>,
}

impl Intervals {
    /// The live histogram of a series in interval `idx`, reopening it if it was closed.
    fn hist(&mut self, idx: u64, key: Key, stage: Stage) -> &mut Histogram<u64> {
        let closed = &mut self.closed;
        self.open
            .entry(idx)
            .or_default()
            .entry((key, stage))
            .or_insert_with(|| {
                closed
                    .remove(&(idx, key, stage))
                    // Only blobs encoded by `close_before` are stored: they decode.
                    .and_then(|blob| decode(&blob).ok())
                    .unwrap_or_else(new_histogram)
            })
    }

    /// Notes that interval `idx` has been written to and closes intervals that are now old.
    fn advance(&mut self, idx: u64) {
        self.newest = self.newest.max(idx);
        self.close_before(self.newest.saturating_sub(1));
    }

    fn close_before(&mut self, idx: u64) {
        if self.open.first_key_value().is_none_or(|(&k, _)| k >= idx) {
            return;
        }
        let keep = self.open.split_off(&idx);
        for (k, series) in std::mem::replace(&mut self.open, keep) {
            for ((key, stage), hist) in series {
                match encode(&hist) {
                    Ok(blob) => {
                        self.closed.insert((k, key, stage), blob);
                    }
                    // Encoding into memory does not fail; should it, the interval stays live.
                    Err(_) => {
                        self.open.entry(k).or_default().insert((key, stage), hist);
                    }
                }
            }
        }
    }

    /// Every series of every interval, sorted.
    fn ids(&self) -> Vec<(u64, Key, Stage)> {
        let open = self
            .open
            .iter()
            .flat_map(|(&idx, series)| series.keys().map(move |&(key, stage)| (idx, key, stage)));
        let mut ids: Vec<_> = self.closed.keys().copied().chain(open).collect();
        ids.sort_unstable();
        ids
    }

    fn get(&self, idx: u64, key: Key, stage: Stage) -> anyhow::Result<Cow<'_, Histogram<u64>>> {
        if let Some(hist) = self.open.get(&idx).and_then(|s| s.get(&(key, stage))) {
            return Ok(Cow::Borrowed(hist));
        }
        let blob = self
            .closed
            .get(&(idx, key, stage))
            .context("no such interval histogram")?;
        Ok(Cow::Owned(decode(blob)?))
    }
}

/// An empty histogram: values from 1 ns with [`SIGFIG`] digits, growing as larger values
/// arrive so that memory follows the largest value seen, not the hour it could hold.
pub fn new_histogram() -> Histogram<u64> {
    let mut h = Histogram::new_with_bounds(1, 2, SIGFIG).expect("1..2 at 3 digits is valid");
    h.auto(true);
    h
}

/// The ports-table rows of `e`'s access ([`IoSpace::rows`]).
fn port_keys(e: &Exit, access: Access) -> impl Iterator<Item = PortKey> + '_ {
    IoSpace::rows(access).map(|(space, addr, write)| PortKey {
        pid: e.pid,
        space,
        addr,
        write,
        reason: e.reason,
        folded: false,
    })
}

/// Records `ns` (at most [`MAX_NS`]) `n` times, growing the histogram as needed.
fn record_n(h: &mut Histogram<u64>, ns: u64, n: u64) {
    if h.record_n(ns, n).is_err() {
        // Growing fails only when the counts array would not fit in memory.
        h.saturating_record_n(ns, n);
    }
}

/// Records (duration, how many) pairs, the largest first: a histogram grows once to hold
/// it, not once (a copy of its counts each) per larger value, as a tally's values come in
/// increasing order.
fn record_all(h: &mut Histogram<u64>, values: &[(u64, u64)]) {
    let Some(top) = (0..values.len()).max_by_key(|&i| values[i].0) else {
        return;
    };
    let rest = values.iter().enumerate().filter(|&(i, _)| i != top);
    for (_, &(ns, n)) in std::iter::once((top, &values[top])).chain(rest) {
        record_n(h, ns.min(MAX_NS), n);
    }
}

/// Adds `src` into `dst`, growing `dst` as needed.
fn add_histogram(dst: &mut Histogram<u64>, src: &Histogram<u64>) {
    if dst.add(src).is_err() {
        // As in `record_n`: clamp rather than lose the samples.
        for v in src.iter_recorded() {
            dst.saturating_record_n(v.value_iterated_to(), v.count_at_value());
        }
    }
}

/// The compressed V2 encoding of `h` (what interval logs carry, base64'd).
pub fn encode(h: &Histogram<u64>) -> Result<Vec<u8>, EncodeError> {
    thread_local! {
        static ENCODER: std::cell::RefCell<Encoder> = std::cell::RefCell::default();
    }
    let mut blob = Vec::new();
    ENCODER.with(|e| e.borrow_mut().serialize(h, &mut blob))?;
    Ok(blob)
}

/// Decodes a V2 (compressed or not) histogram; the result grows like [`new_histogram`].
pub fn decode(blob: &[u8]) -> Result<Histogram<u64>, DeserializeError> {
    let mut h: Histogram<u64> = Deserializer::new().deserialize(&mut &blob[..])?;
    h.auto(true);
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::{self, HLT, IO, SEC};

    fn exit(vcpu: u32, reason: Reason, ts_ns: u64, cycle: Option<u64>) -> Exit {
        Exit {
            ts_ns,
            ..testdata::exit(100, vcpu, reason, testdata::cycle(cycle))
        }
    }

    fn key(vcpu: u32, reason: Reason) -> Key {
        Key {
            pid: 100,
            vcpu: Some(vcpu),
            reason,
        }
    }

    /// Within the histogram's ±0.1% resolution.
    fn close(actual: u64, expected: u64) -> bool {
        actual.abs_diff(expected) * 1000 <= expected
    }

    #[test]
    fn counts_every_exit_and_records_measured_stages() {
        let mut a = Aggregate::new(SEC);
        for i in 1..=1000 {
            a.add(&exit(0, IO, i * 1000, Some(i * 10)));
        }
        a.add(&exit(0, IO, 2_000_000, None));
        let mut e = exit(1, HLT, 3_000_000, Some(50));
        e.userspace_reason = Some(5);
        a.add(&e);

        let io = &a.keys()[&key(0, IO)];
        assert_eq!(io.count, 1001);
        let cycle = io.stage(Stage::Cycle).expect("cycle measured");
        assert_eq!(cycle.hist.len(), 1000);
        assert_eq!(cycle.sum_ns, 10 * 1000 * 1001 / 2);
        assert!(io.stage(Stage::Handler).is_none());
        assert!(close(cycle.hist.value_at_quantile(0.5), 5000));
        assert!(close(cycle.hist.value_at_quantile(0.99), 9900));
        assert!(close(cycle.hist.max(), 10_000));
        assert_eq!(a.keys()[&key(1, HLT)].userspace_count(), 1);
        assert_eq!(a.total_exits(), 1002);
        assert_eq!(a.span(), Some((1000, 3_000_000)));
        assert_eq!(a.stage_sum_ns(Stage::Cycle), 10 * 1000 * 1001 / 2 + 50);
    }

    #[test]
    fn a_tally_counts_like_the_exits_it_stands_for() {
        let (mut one_by_one, mut tallied) = (Aggregate::new(SEC), Aggregate::new(SEC));
        let mut e = exit(0, IO, 5_000, None);
        e.userspace_reason = Some(2);
        e.access = Some(Access::Pio {
            port: 0x3f8,
            size: 1,
            write: true,
        });
        let cycles = [100, 100, 2_500, 70_000];
        for (i, ns) in cycles.iter().enumerate() {
            one_by_one.add(&Exit {
                ts_ns: 2_000 + i as u64 * 1_000,
                stages: testdata::cycle(Some(*ns)),
                ..e.clone()
            });
        }
        let mut stages: [Vec<(u64, u64)>; STAGES] = Default::default();
        stages[Stage::Cycle.index()] = vec![(100, 2), (2_500, 1), (70_000, 1)];
        let mut sum_ns = [0; STAGES];
        sum_ns[Stage::Cycle.index()] = cycles.iter().sum();
        tallied.add_tally(&Tally {
            exit: e,
            first_ts_ns: 2_000,
            count: 4,
            stages,
            sum_ns,
            addrs: Vec::new(),
            other: 0,
            rips: Vec::new(),
            rips_other: 0,
        });
        for a in [&one_by_one, &tallied] {
            let io = &a.keys()[&key(0, IO)];
            assert_eq!(io.count, 4);
            assert_eq!(io.userspace_count(), 4);
            let cycle = io.stage(Stage::Cycle).expect("cycle");
            assert_eq!(cycle.hist.len(), 4);
            assert_eq!(cycle.sum_ns, 72_700);
            assert!(close(cycle.hist.max(), 70_000));
            assert_eq!(
                a.ports().values().next().map(|p| (p.count, p.userspace)),
                Some((4, 4))
            );
            assert_eq!(a.span(), Some((2_000, 5_000)));
        }
    }

    #[test]
    fn share_of_time() {
        let mut a = Aggregate::new(SEC);
        a.add(&exit(0, IO, 1, Some(300)));
        a.add(&exit(0, HLT, 2, Some(100)));
        a.add(&exit(1, HLT, 3, Some(600)));
        let total = a.stage_sum_ns(Stage::Cycle);
        let hlt: u64 = [0, 1]
            .map(|v| {
                a.keys()[&key(v, HLT)]
                    .stage(Stage::Cycle)
                    .map_or(0, |s| s.sum_ns)
            })
            .iter()
            .sum();
        assert_eq!((hlt, total), (700, 1000));
    }

    #[test]
    fn values_are_clamped_to_an_hour() {
        let mut a = Aggregate::new(SEC);
        a.add(&exit(0, IO, 1, Some(u64::MAX)));
        let s = &a.keys()[&key(0, IO)].stages[0];
        let s = s.as_ref().expect("recorded");
        assert_eq!(s.sum_ns, MAX_NS);
        assert!(close(s.hist.max(), MAX_NS));
    }

    #[test]
    fn a_tallys_mmio_exits_count_by_address_and_in_other() {
        let mut a = Aggregate::new(SEC);
        let mut e = exit(0, IO, 5_000, None);
        e.access = Some(Access::Mmio {
            gpa: 0,
            size: 1,
            write: true,
            npf: false,
        });
        let tally = |count, addrs, other| Tally {
            exit: e.clone(),
            first_ts_ns: 1_000,
            count,
            stages: Default::default(),
            sum_ns: [0; STAGES],
            addrs,
            other,
            rips: Vec::new(),
            rips_other: 0,
        };
        a.add_tally(&tally(5, vec![(0xb8000, 2), (0xb8001, 1)], 1));
        // Addresses a read took before their count: ports only.
        a.add_tally(&tally(0, vec![(0xb8000, 1)], 0));
        assert_eq!(a.total_exits(), 5);
        let rows: Vec<_> = a
            .ports()
            .iter()
            .map(|(p, s)| (p.addr, p.folded, s.count))
            .collect();
        assert_eq!(
            rows,
            vec![(0, true, 1), (0xb8000, false, 3), (0xb8001, false, 1)]
        );
    }

    /// `--detail`: a tally's fault-ins count by page and in `other`; an MMIO access that was
    /// an NPF counts under its address and, marked MMIO, under its page; a record's page rows
    /// carry its cycle.
    #[test]
    fn guest_pages_count_as_fault_ins_or_under_their_mmio_access() {
        let mut a = Aggregate::new(SEC);
        let tally = |access, addrs, other| {
            let mut e = exit(0, IO, 5_000, None);
            e.access = Some(access);
            Tally {
                exit: e,
                first_ts_ns: 1_000,
                count: 4,
                stages: Default::default(),
                sum_ns: [0; STAGES],
                addrs,
                other,
                rips: Vec::new(),
                rips_other: 0,
            }
        };
        a.add_tally(&tally(
            Access::Page { gpa: 0 },
            vec![(0x2_0000, 2), (0x2_1000, 1)],
            1,
        ));
        let mmio = Access::Mmio {
            gpa: 0,
            size: 1,
            write: true,
            npf: true,
        };
        a.add_tally(&tally(mmio, vec![(0xd_0000, 3), (0xd_0001, 1)], 0));
        let mut e = exit(0, IO, 6_000, Some(700));
        e.access = Some(Access::Page { gpa: 0x2_0000 });
        a.add(&e);
        assert_eq!(a.total_exits(), 9);
        let rows: Vec<_> = a
            .ports()
            .iter()
            .map(|(p, s)| (p.space, p.addr, p.write, p.folded, s.count, s.cycle_count))
            .collect();
        assert_eq!(
            rows,
            vec![
                (IoSpace::Mmio, 0xd_0000, true, false, 3, 0),
                (IoSpace::Mmio, 0xd_0001, true, false, 1, 0),
                (IoSpace::Page, 0, false, true, 1, 0),
                (IoSpace::Page, 0x2_0000, false, false, 3, 1),
                (IoSpace::Page, 0x2_1000, false, false, 1, 0),
                (IoSpace::Page, 0xd_0000, true, false, 4, 0),
            ]
        );
        assert_eq!(
            (
                IoSpace::Page.direction(true),
                IoSpace::Page.direction(false)
            ),
            ("mmio", "fault-in")
        );
    }

    #[test]
    fn ports_table() {
        let mut a = Aggregate::new(SEC);
        let mut e = exit(0, IO, 1, None);
        e.access = Some(Access::Pio {
            port: 0x3f8,
            size: 1,
            write: true,
        });
        a.add(&e);
        e.userspace_reason = Some(2);
        a.add(&e);
        e.access = Some(Access::Mmio {
            gpa: 0xfee0_0000,
            size: 4,
            write: false,
            npf: false,
        });
        a.add(&e);
        let pio = PortKey {
            pid: 100,
            space: IoSpace::Pio,
            addr: 0x3f8,
            write: true,
            reason: IO,
            folded: false,
        };
        assert_eq!((a.ports()[&pio].count, a.ports()[&pio].userspace), (2, 1));
        assert_eq!(a.ports().len(), 2);
    }

    /// Each measured row keeps its cycle histogram (exits and tallies alike), MMIO address
    /// rows of a tally none, and no more than `ROW_HISTS` rows keep one.
    #[test]
    fn rows_keep_a_bounded_cycle_histogram_for_percentiles() {
        let mut a = Aggregate::new(SEC);
        let msr = |index| Access::Msr {
            index,
            write: false,
        };
        for ns in [1_000, 1_000, 1_000, 9_000] {
            let mut e = exit(0, IO, 1, Some(ns));
            e.access = Some(msr(0x1b));
            a.add(&e);
        }
        let mut e = exit(0, IO, 5_000, None);
        e.access = Some(msr(0x1b));
        let mut stages: [Vec<(u64, u64)>; STAGES] = Default::default();
        stages[Stage::Cycle.index()] = vec![(2_000, 4)];
        let mut tally = Tally {
            exit: e.clone(),
            first_ts_ns: 1_000,
            count: 4,
            stages,
            sum_ns: [0; STAGES],
            addrs: Vec::new(),
            other: 0,
            rips: Vec::new(),
            rips_other: 0,
        };
        a.add_tally(&tally);
        let row = port_keys(&e, msr(0x1b)).next().expect("an MSR row");
        let hist = &a.row_cycles()[&row];
        assert_eq!(hist.len(), 8);
        assert!(close(hist.value_at_quantile(0.5), 2_000));
        assert!(close(hist.value_at_quantile(0.99), 9_000));
        tally.exit.access = Some(Access::Mmio {
            gpa: 0,
            size: 1,
            write: false,
            npf: false,
        });
        tally.addrs = vec![(0xb8000, 4)];
        a.add_tally(&tally);
        assert_eq!(a.row_cycles().len(), 1);
        for index in 0x1000..0x1000 + 2 * ROW_HISTS as u32 {
            let mut e = exit(0, IO, 1, Some(100));
            e.access = Some(msr(index));
            a.add(&e);
        }
        assert_eq!(a.row_cycles().len(), ROW_HISTS);
        assert_eq!(a.row_cycles()[&row].len(), 8);
        a.forget_pid(100);
        assert!(a.row_cycles().is_empty());
    }

    fn interval_counts(a: &Aggregate) -> Vec<(u64, Key, u64)> {
        let mut out = Vec::new();
        a.for_each_interval(|start, key, _, h| {
            out.push((start, key, h.len()));
            Ok(())
        })
        .expect("intervals decode");
        out
    }

    #[test]
    fn intervals_close_as_time_advances_and_reopen_for_late_exits() {
        let mut a = Aggregate::new(SEC);
        for s in 0..10 {
            a.add(&exit(0, IO, s * SEC + 5, Some(100)));
            a.add(&exit(0, IO, s * SEC + 6, Some(200)));
        }
        assert_eq!(a.intervals.open.len(), 2);
        assert_eq!(a.intervals.closed.len(), 8);
        // A late exit for interval 3.
        a.add(&exit(0, IO, 3 * SEC + 7, Some(300)));
        let counts = interval_counts(&a);
        assert_eq!(counts.len(), 10);
        for (i, (start, k, n)) in counts.into_iter().enumerate() {
            assert_eq!((start, k), (i as u64 * SEC, key(0, IO)));
            assert_eq!(n, if i == 3 { 3 } else { 2 });
        }
        assert_eq!(a.intervals.open.len(), 2, "interval 3 was closed again");
    }

    #[test]
    fn forgetting_a_process_drops_its_keys_ports_and_intervals() {
        let mut a = Aggregate::new(SEC);
        for s in 0..4 {
            let mut e = exit(0, IO, s * SEC, Some(100));
            e.access = Some(Access::Pio {
                port: 0x3f8,
                size: 1,
                write: true,
            });
            a.add(&e);
            e.pid = 200;
            a.add(&e);
        }
        a.forget_pid(100);
        assert!(a.keys().keys().all(|k| k.pid == 200));
        assert!(a.ports().keys().all(|p| p.pid == 200));
        let counts = interval_counts(&a);
        assert_eq!(counts.len(), 4);
        assert!(counts.iter().all(|(_, k, _)| k.pid == 200));
    }

    #[test]
    fn encode_decode_round_trip() {
        let mut h = new_histogram();
        for v in [1, 10, 1000, 123_456, MAX_NS] {
            record_n(&mut h, v, 1);
        }
        let blob = encode(&h).expect("encodes");
        let back = decode(&blob).expect("decodes");
        assert_eq!(back, h);
        assert!(decode(&blob[..blob.len() / 2]).is_err());
        assert!(decode(b"garbage").is_err());
    }
}
