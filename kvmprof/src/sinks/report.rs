//! What `kvmprof report` prints: per-group counts, rates, shares and stage latencies, the
//! per-reason stage breakdown (cycle ⊃ vendor run + handler ⊃ PIO fast path) and the ports
//! table, as an aligned table or as JSON with the same numbers.
//!
//! Both formats render one [`Report`] built from the header and aggregate, so they never
//! disagree.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::backend::reason_name;
use crate::data::aggregate::{Aggregate, IoSpace, KeyStats, StageStats};
use crate::data::group::{self, By, GroupId, Percentiles};
use crate::data::model::{Reason, ReasonSpace, Stage};
use crate::data::series::IntervalRow;
use crate::recording::header::{Header, HookUse};
use crate::recording::merge::Merged;
use crate::util::units;

/// How a report is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// What a report shows beyond the recording itself.
#[derive(Default, Serialize)]
pub struct Extras {
    /// What was merged, when the report covers several files.
    pub merged: Option<Merged>,
    /// The time series (`--intervals`).
    pub intervals: Option<Intervals>,
}

/// Per-interval rows of one stage over all exits.
#[derive(Serialize)]
pub struct Intervals {
    pub stage: Stage,
    pub rows: Vec<IntervalRow>,
}

/// Renders the report of a recording with `extras`.
pub fn render_with(h: &Header, a: &Aggregate, by: By, format: Format, extras: Extras) -> String {
    let mut report = build(h, a, by);
    report.merged = extras.merged;
    report.intervals = extras.intervals;
    match format {
        Format::Table => table(&report),
        // Plain structs with string keys and numbers: serialization cannot fail.
        Format::Json => serde_json::to_string_pretty(&report).expect("report serializes") + "\n",
    }
}

/// Stages of the exit cycle shown in the breakdown, with their nesting depth.
const NESTING: [(Stage, usize); 4] = [
    (Stage::Cycle, 0),
    (Stage::VendorRun, 1),
    (Stage::Handler, 1),
    (Stage::FastPio, 2),
];

/// Rows of the ports table in the text format (JSON has them all).
const TOP_PORTS: usize = 20;

#[derive(Serialize)]
struct Report<'a> {
    header: &'a Header,
    #[serde(skip_serializing_if = "Option::is_none")]
    merged: Option<Merged>,
    vendor_label: &'static str,
    /// Recording length used for rates.
    duration_ns: u64,
    total_exits: u64,
    lost: u64,
    /// KVM's own counters over the window, stat → change (live recordings where readable;
    /// the header's `kvm_stats` also says why not).
    #[serde(skip_serializing_if = "Option::is_none")]
    kvm_stats: Option<&'a BTreeMap<String, u64>>,
    by: &'static str,
    groups: Vec<Group>,
    breakdown: Vec<Breakdown>,
    ports: Vec<PortRow>,
    /// `--detail`: exits by guest RIP, most first within each pid and reason.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    rips: Vec<RipRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    intervals: Option<Intervals>,
}

#[derive(Serialize)]
struct Group {
    label: String,
    pid: Option<u32>,
    vcpu: Option<u32>,
    reason: Option<Reason>,
    count: u64,
    /// Exits that went to the VMM.
    userspace: u64,
    rate_per_s: f64,
    /// Share of all exits.
    exit_share: f64,
    /// Share of the summed cycle time of all exits; `None` when no cycle was measured.
    cycle_time_share: Option<f64>,
    /// Measured stages only.
    stages: Vec<StageRow>,
}

#[derive(Serialize)]
struct StageRow {
    stage: Stage,
    samples: u64,
    sum_ns: u64,
    mean_ns: u64,
    p50_ns: u64,
    p90_ns: u64,
    p99_ns: u64,
    p999_ns: u64,
    max_ns: u64,
}

impl StageRow {
    fn new(stage: Stage, s: &StageStats) -> Self {
        let p = Percentiles::of(&s.hist);
        let samples = s.hist.len();
        StageRow {
            stage,
            samples,
            sum_ns: s.sum_ns,
            mean_ns: s.sum_ns.checked_div(samples).unwrap_or(0),
            p50_ns: p.p50,
            p90_ns: p.p90,
            p99_ns: p.p99,
            p999_ns: p.p999,
            max_ns: p.max,
        }
    }
}

#[derive(Serialize)]
struct Breakdown {
    reason: Reason,
    label: String,
    count: u64,
    stages: Vec<BreakdownRow>,
}

#[derive(Serialize)]
struct BreakdownRow {
    stage: Stage,
    /// The hooked function, from the header.
    symbol: Option<String>,
    depth: usize,
    samples: u64,
    p50_ns: u64,
    p99_ns: u64,
    max_ns: u64,
    /// Summed time of the stage over summed cycle time; `None` without a cycle.
    cycle_share: Option<f64>,
}

#[derive(Serialize)]
pub(super) struct PortRow {
    pid: u32,
    pub(super) space: IoSpace,
    addr: u64,
    /// The `other` row of MMIO exits whose address the kernel had no room to count apart.
    folded: bool,
    write: bool,
    reason: Reason,
    reason_name: String,
    /// The name of the MSR or hypercall, the leaf and subleaf of a CPUID (`--detail`).
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    count: u64,
    userspace: u64,
    /// This row's exits over all exits of its pid and reason.
    reason_share: f64,
    /// Mean cycle of the row's exits, where measured (none for MMIO address rows).
    #[serde(skip_serializing_if = "Option::is_none")]
    mean_cycle_ns: Option<u64>,
    /// A guest page's: "mmio" or "fault-in" (`IoSpace::direction`).
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    /// Median and 99th percentile of the row's cycle, where measured: none for MMIO address
    /// rows, and for rows past [`crate::data::aggregate::ROW_HISTS`].
    #[serde(skip_serializing_if = "Option::is_none")]
    p50_cycle_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p99_cycle_ns: Option<u64>,
}

#[derive(Serialize)]
pub(super) struct RipRow {
    pid: u32,
    reason: Reason,
    reason_name: String,
    /// `None`: the `other` row, RIPs past the kernel's `RIPS` entries.
    rip: Option<u64>,
    count: u64,
    /// Over the RIP-counted exits of its pid and reason.
    reason_share: f64,
}

/// The rows of the ports table and `--detail`'s, most exits first.
pub(super) fn port_rows(a: &Aggregate) -> Vec<PortRow> {
    let mut by_pid_reason: BTreeMap<(u32, Reason), u64> = BTreeMap::new();
    for (key, stats) in a.keys() {
        *by_pid_reason.entry((key.pid, key.reason)).or_default() += stats.count;
    }
    let mut ports: Vec<PortRow> = a
        .ports()
        .iter()
        .map(|(p, s)| {
            let quantile = |q| a.row_cycles().get(p).map(|h| h.value_at_quantile(q));
            PortRow {
                pid: p.pid,
                space: p.space,
                addr: p.addr,
                folded: p.folded,
                write: p.write,
                reason: p.reason,
                reason_name: reason_name(p.reason),
                name: detail_name(p.space, p.addr),
                count: s.count,
                userspace: s.userspace,
                reason_share: units::ratio(
                    s.count,
                    by_pid_reason.get(&(p.pid, p.reason)).copied().unwrap_or(0),
                ),
                mean_cycle_ns: (s.cycle_count > 0).then(|| s.cycle_ns / s.cycle_count),
                kind: (p.space == IoSpace::Page).then(|| p.space.direction(p.write)),
                p50_cycle_ns: quantile(0.5),
                p99_cycle_ns: quantile(0.99),
            }
        })
        .collect();
    ports.sort_by_key(|x| std::cmp::Reverse(x.count));
    ports
}

/// The guest-RIP rows, grouped by pid and reason (the largest group first), most exits first.
pub(super) fn rip_rows(a: &Aggregate) -> Vec<RipRow> {
    type Rows = Vec<(Option<u64>, u64)>;
    let mut groups: BTreeMap<(u32, Reason), Rows> = BTreeMap::new();
    for (k, &n) in a.rips() {
        groups
            .entry((k.pid, k.reason))
            .or_default()
            .push((k.rip, n));
    }
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by_key(|(_, rows)| std::cmp::Reverse(rows.iter().map(|r| r.1).sum::<u64>()));
    let mut out = Vec::new();
    for ((pid, reason), mut rows) in groups {
        let total = rows.iter().map(|r| r.1).sum();
        rows.sort_by_key(|r| std::cmp::Reverse(r.1));
        out.extend(rows.into_iter().map(|(rip, count)| RipRow {
            pid,
            reason,
            reason_name: reason_name(reason),
            rip,
            count,
            reason_share: units::ratio(count, total),
        }));
    }
    out
}

/// The name of a row's key in a table: none for a CPUID leaf, whose key says it already.
pub(crate) fn table_name(space: IoSpace, key: u64) -> Option<String> {
    match space {
        IoSpace::Cpuid => None,
        _ => detail_name(space, key),
    }
}

/// The name of a `--detail` row's key.
fn detail_name(space: IoSpace, key: u64) -> Option<String> {
    use crate::backend::x86;
    match space {
        IoSpace::Msr => x86::msr_name(key as u32).map(str::to_owned),
        IoSpace::Cpuid => {
            let (leaf, subleaf) = kvmprof_common::detail::cpuid_leaf(key);
            Some(format!("leaf {leaf:#x} subleaf {subleaf:#x}"))
        }
        IoSpace::Hypercall => x86::hypercall_name(key).map(str::to_owned),
        IoSpace::XenHypercall => x86::xen_hypercall_name(key).map(str::to_owned),
        IoSpace::HvHypercall => x86::hv_hypercall_name(key).map(str::to_owned),
        IoSpace::Pio | IoSpace::Mmio | IoSpace::Page => None,
    }
}

fn build<'a>(h: &'a Header, a: &Aggregate, by: By) -> Report<'a> {
    let duration_ns = h.duration_for_rates(a);
    let total_exits = a.total_exits();
    let total_cycle_ns = a.stage_sum_ns(Stage::Cycle);

    let grouped = group::group(a.keys(), by);
    let mut by_reason: BTreeMap<Reason, KeyStats> = BTreeMap::new();
    for (key, stats) in a.keys() {
        by_reason.entry(key.reason).or_default().merge(stats);
    }

    let mut groups: Vec<Group> = grouped
        .into_iter()
        .map(|(id, stats)| {
            let (pid, vcpu, reason) = match id {
                GroupId::Reason(r) => (None, None, Some(r)),
                GroupId::Vcpu(p, v) => (Some(p), v, None),
                GroupId::Pid(p) => (Some(p), None, None),
            };
            let cycle_ns = stats.stage(Stage::Cycle).map_or(0, |s| s.sum_ns);
            Group {
                label: group_label(h, id),
                pid,
                vcpu,
                reason,
                count: stats.count,
                userspace: stats.userspace_count(),
                rate_per_s: rate(stats.count, duration_ns),
                exit_share: units::ratio(stats.count, total_exits),
                cycle_time_share: (total_cycle_ns > 0)
                    .then(|| units::ratio(cycle_ns, total_cycle_ns)),
                stages: Stage::ALL
                    .into_iter()
                    .filter_map(|s| stats.stage(s).map(|st| StageRow::new(s, st)))
                    .filter(|row| row.samples > 0)
                    .collect(),
            }
        })
        .collect();
    // Stable sort: equal counts keep the group order.
    groups.sort_by_key(|x| std::cmp::Reverse(x.count));

    let mut breakdown: Vec<Breakdown> = by_reason
        .iter()
        .filter_map(|(&reason, stats)| breakdown(h, reason, stats))
        .collect();
    breakdown.sort_by_key(|x| std::cmp::Reverse(x.count));

    Report {
        header: h,
        merged: None,
        vendor_label: h.vendor.label(),
        duration_ns,
        total_exits,
        lost: a.lost(),
        kvm_stats: h
            .kvm_stats
            .as_ref()
            .map(|k| &k.change)
            .filter(|c| !c.is_empty()),
        by: by.name(),
        groups,
        breakdown,
        ports: port_rows(a),
        rips: rip_rows(a),
        intervals: None,
    }
}

/// Exits per second over `duration_ns`; 0 for an empty recording.
fn rate(count: u64, duration_ns: u64) -> f64 {
    units::ratio(count, duration_ns) * 1e9
}

fn group_label(h: &Header, id: GroupId) -> String {
    id.label(|pid| {
        h.processes
            .iter()
            .find(|p| p.pid == pid)
            .map(|p| p.name.as_str())
    })
}

/// The nested stage breakdown of one reason, `None` unless a vendor stage was measured.
fn breakdown(h: &Header, reason: Reason, stats: &KeyStats) -> Option<Breakdown> {
    let measured = |s| stats.stage(s).filter(|st| !st.hist.is_empty());
    measured(Stage::VendorRun).or(measured(Stage::Handler))?;
    let cycle_ns = measured(Stage::Cycle).map(|s| s.sum_ns);
    let stages = NESTING
        .into_iter()
        .filter_map(|(stage, depth)| {
            let st = measured(stage)?;
            Some(BreakdownRow {
                stage,
                symbol: symbol(&h.hooks, stage),
                depth,
                samples: st.hist.len(),
                p50_ns: st.hist.value_at_quantile(0.5),
                p99_ns: st.hist.value_at_quantile(0.99),
                max_ns: st.hist.max(),
                cycle_share: cycle_ns.map(|c| units::ratio(st.sum_ns, c)),
            })
        })
        .collect();
    Some(Breakdown {
        reason,
        label: reason_name(reason),
        count: stats.count,
        stages,
    })
}

fn symbol(hooks: &[HookUse], stage: Stage) -> Option<String> {
    hooks
        .iter()
        .find(|hk| hk.stage == stage)
        .map(|hk| hk.symbol.clone())
}

// ---- text format ------------------------------------------------------------------------

/// Width of the group label column; longer labels get a line of their own.
const LABEL_W: usize = 20;
/// Width of the group columns before the stage columns (label, count, rate, two shares).
const LEAD_W: usize = LABEL_W + 9 + 3 * 7;

fn table(r: &Report) -> String {
    let mut out = String::new();
    header_lines(&mut out, r);
    group_table(&mut out, r);
    breakdown_table(&mut out, r);
    ports_table(&mut out, r);
    detail_table(&mut out, r);
    pages_table(&mut out, r);
    rips_table(&mut out, r);
    intervals_table(&mut out, r);
    if let Some(slow) = &r.header.slow {
        slow.render(&mut out);
    }
    out
}

fn intervals_table(out: &mut String, r: &Report) {
    let Some(iv) = &r.intervals else {
        return;
    };
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Intervals ({} of all exits; rate: exits with a {} measured)",
        iv.stage.name(),
        iv.stage.name()
    );
    let _ = writeln!(
        out,
        "{:>10}{:>10}{:>10}{:>9}{:>9}{:>9}",
        "start", "exits", "rate/s", "p50", "p99", "max"
    );
    for row in &iv.rows {
        // As many decimals as the start needs (1 s: none, 250 ms: two), ms at most.
        let decimals = (0..3)
            .find(|&d| row.offset_ns % (1_000_000_000 / 10u64.pow(d)) == 0)
            .unwrap_or(3) as usize;
        let _ = writeln!(
            out,
            "{:>10}{:>10}{:>10}{:>9}{:>9}{:>9}",
            format!("{:.decimals$}s", row.offset_ns as f64 / 1e9),
            row.samples,
            units::si(row.rate_per_s),
            units::ns(row.p50_ns),
            units::ns(row.p99_ns),
            units::ns(row.max_ns)
        );
    }
    if iv.rows.is_empty() {
        let _ = writeln!(out, "  (no intervals with samples)");
    }
}

fn header_lines(out: &mut String, r: &Report) {
    let h = r.header;
    let _ = writeln!(out, "kvmprof report ({} recording)", h.source.label());
    if let Some(m) = &r.merged {
        let _ = writeln!(out, "merged {} recordings:", m.files.len());
        for f in &m.files {
            let _ = writeln!(out, "  {f}");
        }
        if !m.common_clock {
            let _ = writeln!(
                out,
                "  (no common clock: a file has no wall-clock start, so no rates)"
            );
        }
    }
    let _ = writeln!(
        out,
        "host: {}   kernel: {}   vendor: {}",
        h.host, h.kernel, r.vendor_label
    );
    if h.hooks.is_empty() {
        let _ = writeln!(out, "hooks: none");
    } else {
        let _ = writeln!(out, "hooks:");
        for hk in &h.hooks {
            let _ = writeln!(out, "  {:<11} {} [{}]", hk.stage.name(), hk.symbol, hk.mode);
        }
        for tp in &h.tracepoints {
            let _ = writeln!(out, "  {tp}");
        }
    }
    let _ = writeln!(out, "cycle source: {}", h.cycle_source);
    let pids: Vec<String> = h
        .processes
        .iter()
        .map(|p| format!("{} ({})", p.pid, p.name))
        .collect();
    let pids = if pids.is_empty() {
        "all".to_owned()
    } else {
        pids.join(", ")
    };
    let _ = writeln!(out, "duration: {}   pids: {pids}", units::ns(r.duration_ns));
    let _ = writeln!(out, "exits: {}   lost events: {}", r.total_exits, r.lost);
    if let Some(n) = h.read_failed.filter(|&n| n > 0) {
        let _ = writeln!(
            out,
            "kernel: {n} events dropped, a read refused (a tracepoint field or kernel memory)"
        );
    }
    if let Some(n) = h.no_state.filter(|&n| n > 0) {
        let _ = writeln!(
            out,
            "kernel: {n} events dropped, no room for their thread's state"
        );
    }
    if let Some(n) = h.unmatched.filter(|&n| n > 0) {
        let _ = writeln!(
            out,
            "kernel: {n} stage returns or KVM events outside any exit cycle (those exits lack \
             that stage's time; --debug-bpf names them)"
        );
    }
    if let Some(unobserved) = h.unobserved {
        let _ = writeln!(
            out,
            "window: exits that began and ended in the {} above; {unobserved} already under way \
             at its start not counted",
            units::ns(h.duration_ns),
        );
    }
    for line in h
        .kvm_stats
        .iter()
        .flat_map(|k| k.lines(r.total_exits, h.vendor))
    {
        let _ = writeln!(out, "{line}");
    }
    for line in h.halts.iter().flat_map(|x| x.lines()) {
        let _ = writeln!(out, "{line}");
    }
    for line in h.funcs.iter().flat_map(|x| x.lines()) {
        let _ = writeln!(out, "{line}");
    }
    if let Some(c) = &h.own_cost {
        let wall = std::time::Duration::from_nanos(h.duration_ns);
        let _ = writeln!(
            out,
            "kvmprof's own cost: {}",
            c.summary(r.total_exits, wall)
        );
    }
}

fn group_table(out: &mut String, r: &Report) {
    let _ = writeln!(out);
    let first = match r.by {
        "reason" => "reason",
        "vcpu" => "vcpu",
        _ => "process",
    };
    let _ = writeln!(
        out,
        "{first:<LABEL_W$}{:>9}{:>7}{:>7}{:>7}  {:<10}{:>7}{:>7}{:>7}{:>7}{:>7}",
        "count", "rate/s", "%exits", "%time", "stage", "p50", "p90", "p99", "p99.9", "max"
    );
    for g in &r.groups {
        let mut label = g.label.clone();
        if label.chars().count() > LABEL_W - 1 {
            let _ = writeln!(out, "{label}");
            label.clear();
        }
        let share = g
            .cycle_time_share
            .map_or_else(|| "-".to_owned(), units::pct);
        // A trace without timestamps has no duration: a rate would be a made-up 0.
        let rate = if r.duration_ns == 0 {
            "-".to_owned()
        } else {
            units::si(g.rate_per_s)
        };
        let lead = format!(
            "{label:<LABEL_W$}{:>9}{:>7}{:>7}{:>7}",
            g.count,
            rate,
            units::pct(g.exit_share),
            share
        );
        // A note under the label: how many of these exits the VMM handled.
        let to_vmm = g.reason.is_none_or(|r| r.space != ReasonSpace::Userspace) && g.userspace > 0;
        let note = if to_vmm {
            format!("  {} to VMM", g.userspace)
        } else {
            String::new()
        };
        let mut lines = vec![lead];
        lines.resize(g.stages.len().max(1 + usize::from(to_vmm)), String::new());
        if to_vmm {
            lines[1] = note;
        }
        for (i, line) in lines.iter().enumerate() {
            let stage = g.stages.get(i).map(stage_cells).unwrap_or_default();
            let _ = writeln!(out, "{}", format!("{line:<LEAD_W$}{stage}").trim_end());
        }
    }
    let _ = writeln!(out, "%time: share of the summed cycle time of all exits");
}

fn stage_cells(s: &StageRow) -> String {
    format!(
        "  {:<10}{:>7}{:>7}{:>7}{:>7}{:>7}",
        s.stage.name(),
        units::ns(s.p50_ns),
        units::ns(s.p90_ns),
        units::ns(s.p99_ns),
        units::ns(s.p999_ns),
        units::ns(s.max_ns)
    )
}

fn breakdown_table(out: &mut String, r: &Report) {
    if r.breakdown.is_empty() {
        return;
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Stage breakdown (cycle ⊃ vendor_run + handler ⊃ fast_pio)"
    );
    let _ = writeln!(
        out,
        "share: summed stage time / summed cycle time of the reason"
    );
    for b in &r.breakdown {
        let _ = writeln!(out, "{} ({} exits)", b.label, b.count);
        let _ = writeln!(
            out,
            "  {:<16}{:<26}{:>9}{:>9}{:>9}{:>9}",
            "stage", "function", "p50", "p99", "max", "share"
        );
        for s in &b.stages {
            let stage = format!("{}{}", "  ".repeat(s.depth), s.stage.name());
            let symbol = s.symbol.as_deref().unwrap_or("-");
            let share = s.cycle_share.map_or_else(|| "-".to_owned(), units::pct);
            let _ = writeln!(
                out,
                "  {stage:<16}{symbol:<26}{:>9}{:>9}{:>9}{share:>9}",
                units::ns(s.p50_ns),
                units::ns(s.p99_ns),
                units::ns(s.max_ns)
            );
        }
    }
}

fn ports_table(out: &mut String, r: &Report) {
    let ports: Vec<&PortRow> = r.ports.iter().filter(|p| !p.space.is_detail()).collect();
    if ports.is_empty() {
        return;
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Ports and addresses (top {} of {})",
        TOP_PORTS.min(ports.len()),
        ports.len()
    );
    let _ = writeln!(
        out,
        "{:>8}  {:<6}{:<20}{:<6}{:>10}{:>8}{:>9}{:>9}  reason",
        "pid", "space", "address", "dir", "count", "to VMM", "p50", "p99"
    );
    for p in ports.iter().take(TOP_PORTS) {
        let _ = writeln!(
            out,
            "{:>8}  {:<6}{:<20}{:<6}{:>10}{:>8}{:>9}{:>9}  {}",
            p.pid,
            p.space.name(),
            if p.folded {
                "other".to_owned()
            } else {
                p.space.key_text(p.addr)
            },
            p.space.direction(p.write),
            p.count,
            p.userspace,
            cycle_cell(p.p50_cycle_ns),
            cycle_cell(p.p99_cycle_ns),
            p.reason_name
        );
    }
    no_percentiles(out, &ports);
    let folded: u64 = ports.iter().filter(|p| p.folded).map(|p| p.count).sum();
    if folded > 0 {
        let _ = writeln!(
            out,
            "other: {folded} MMIO exits at addresses past the kernel's {} address counts, \
             one row per pid, direction and reason",
            kvmprof_common::tally::ADDRS
        );
    }
}

/// p50 and p99 of a row's cycle, `-` where not measured.
fn cycle_cell(ns: Option<u64>) -> String {
    ns.map_or_else(|| "-".to_owned(), units::ns)
}

/// Says why rows of the ports or detail table lack percentiles, if some do.
fn no_percentiles(out: &mut String, rows: &[&PortRow]) {
    if rows.iter().any(|p| p.p50_cycle_ns.is_none()) {
        let _ = writeln!(
            out,
            "p50, p99: the exits' cycle; - for MMIO addresses (no cycle) and rows past the first {}",
            crate::data::aggregate::ROW_HISTS
        );
    }
}

/// `--detail`: the exits' MSRs, CPUID leaves and hypercalls, each with its share of its
/// reason's exits and its cycle's mean, p50 and p99.
fn detail_table(out: &mut String, r: &Report) {
    let detail = |p: &&PortRow| p.space.is_detail() && p.space != IoSpace::Page;
    let rows: Vec<&PortRow> = r.ports.iter().filter(detail).collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "MSRs, CPUID leaves and hypercalls (top {} of {})",
        TOP_PORTS.min(rows.len()),
        rows.len()
    );
    let _ = writeln!(
        out,
        "{:>8}  {:<10}{:<12}{:<6}{:>10}{:>8}{:>9}{:>9}{:>9}  {:<28}reason",
        "pid", "what", "key", "dir", "count", "share", "mean", "p50", "p99", "name"
    );
    for p in rows.iter().take(TOP_PORTS) {
        let name = table_name(p.space, p.addr).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:>8}  {:<10}{:<12}{:<6}{:>10}{:>8}{:>9}{:>9}{:>9}  {name:<28}{}",
            p.pid,
            p.space.name(),
            p.space.key_text(p.addr),
            p.space.direction(p.write),
            p.count,
            units::pct(p.reason_share),
            cycle_cell(p.mean_cycle_ns),
            cycle_cell(p.p50_cycle_ns),
            cycle_cell(p.p99_cycle_ns),
            p.reason_name
        );
    }
    no_percentiles(out, &rows);
}

/// Guest pages shown per pid and reason in the text format (JSON has them all).
const TOP_PAGES: usize = 10;

/// `--detail`: the guest pages of EPT violations and NPFs, most exits first per pid and
/// reason, each a fault-in or MMIO, with its share of its reason's exits and its mean cycle.
fn pages_table(out: &mut String, r: &Report) {
    let mut rows: Vec<&PortRow> = r
        .ports
        .iter()
        .filter(|p| p.space == IoSpace::Page)
        .collect();
    if rows.is_empty() {
        return;
    }
    // Stable: most exits first within each pid and reason, as `port_rows` sorted them.
    rows.sort_by_key(|p| (p.pid, p.reason));
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Guest pages (EPT violations / NPF; top {TOP_PAGES} per pid and reason)"
    );
    let _ = writeln!(
        out,
        "{:>8}  {:<24}{:<20}{:<10}{:>10}{:>8}{:>11}",
        "pid", "reason", "page", "kind", "count", "share", "mean cycle"
    );
    let mut shown = 0;
    let mut last = None;
    for p in rows {
        if last != Some((p.pid, p.reason)) {
            last = Some((p.pid, p.reason));
            shown = 0;
        }
        shown += 1;
        if shown > TOP_PAGES {
            continue;
        }
        let page = if p.folded {
            "other".to_owned()
        } else {
            p.space.key_text(p.addr)
        };
        let _ = writeln!(
            out,
            "{:>8}  {:<24}{page:<20}{:<10}{:>10}{:>8}{:>11}",
            p.pid,
            p.reason_name,
            p.space.direction(p.write),
            p.count,
            units::pct(p.reason_share),
            p.mean_cycle_ns.map_or_else(|| "-".to_owned(), units::ns),
        );
    }
}

/// Guest RIPs shown per pid and reason in the text format (JSON has them all).
const TOP_RIPS: usize = 5;

/// `--detail`: the guest instructions that exited most, per pid and reason.
fn rips_table(out: &mut String, r: &Report) {
    if r.rips.is_empty() {
        return;
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Guest RIPs (top {TOP_RIPS} per pid and reason)");
    let _ = writeln!(
        out,
        "{:>8}  {:<24}{:<20}{:>10}{:>8}",
        "pid", "reason", "rip", "count", "share"
    );
    let mut shown = 0;
    let mut last = None;
    for row in &r.rips {
        if last != Some((row.pid, row.reason)) {
            last = Some((row.pid, row.reason));
            shown = 0;
        }
        shown += 1;
        if shown > TOP_RIPS {
            continue;
        }
        let rip = row
            .rip
            .map_or_else(|| "other".to_owned(), |v| format!("{v:#x}"));
        let _ = writeln!(
            out,
            "{:>8}  {:<24}{rip:<20}{:>10}{:>8}",
            row.pid,
            row.reason_name,
            row.count,
            units::pct(row.reason_share)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::model::{Access, Exit, HypercallAbi};
    use crate::data::target::Target;
    use crate::testdata::{self, IO, SEC};
    use kvmprof_common::STAGES;

    fn render(h: &Header, a: &Aggregate, by: By, format: Format) -> String {
        render_with(h, a, by, format, Extras::default())
    }

    const NPF: Reason = Reason {
        space: ReasonSpace::Svm,
        code: 0x400,
    };
    const AVIC: Reason = Reason {
        space: ReasonSpace::Svm,
        code: 0x402,
    };

    fn header() -> Header {
        let hook = |stage, symbol: &str, mode: &str| HookUse {
            stage,
            symbol: symbol.into(),
            mode: mode.into(),
        };
        Header {
            host: "amd-host".into(),
            kernel: "6.18.0".into(),
            hooks: vec![
                hook(Stage::Cycle, "vcpu_enter_guest", "fentry"),
                hook(Stage::VendorRun, "svm_vcpu_run", "kprobe"),
                hook(Stage::Handler, "svm_handle_exit", "kprobe"),
                hook(Stage::FastPio, "kvm_fast_pio", "kprobe"),
            ],
            tracepoints: vec![],
            cycle_source: "vcpu_enter_guest entry to return".into(),
            processes: vec![Target {
                pid: 7,
                name: "qemu".into(),
            }],
            duration_ns: 2 * SEC,
            unobserved: Some(0),
            read_failed: None,
            unmatched: None,
            no_state: None,
            ..testdata::header()
        }
    }

    fn exit(vcpu: u32, reason: Reason, stages: [Option<u64>; STAGES]) -> Exit {
        Exit {
            ts_ns: SEC,
            ..testdata::exit(7, vcpu, reason, stages)
        }
    }

    /// 300 PIO exits shaped like the AMD seed trace, 100 NPF exits that went to the VMM.
    fn sample() -> Aggregate {
        let mut a = Aggregate::new(SEC);
        for i in 0..300 {
            let mut e = exit(
                i % 2,
                IO,
                [
                    Some(7915),
                    Some(3206),
                    Some(3116),
                    Some(2594),
                    None,
                    None,
                    None,
                    None,
                ],
            );
            e.access = Some(Access::Pio {
                port: 0x3f8,
                size: 1,
                write: true,
            });
            a.add(&e);
        }
        for _ in 0..100 {
            let mut e = exit(
                0,
                NPF,
                [Some(20_000), None, None, None, None, None, None, None],
            );
            e.userspace_reason = Some(6);
            e.access = Some(Access::Mmio {
                gpa: 0xfebf_0000,
                size: 4,
                write: false,
                npf: false,
            });
            a.add(&e);
        }
        a
    }

    /// `--detail`: 30 RDMSRs of APIC_BASE, 10 WRMSRs of an unnamed MSR, 20 CPUIDs of leaf 1
    /// and 5 unidentified CPUID exits, each in its own table row with its share of its
    /// reason and its exact mean cycle; the ports table keeps only ports.
    #[test]
    fn detail_rows_name_msrs_leaves_and_hypercalls_with_share_and_mean_cycle() {
        const MSR: Reason = Reason {
            space: ReasonSpace::Svm,
            code: 0x7c,
        };
        const CPUID: Reason = Reason {
            space: ReasonSpace::Svm,
            code: 0x72,
        };
        let mut a = sample();
        let cycle = |ns| [Some(ns), None, None, None, None, None, None, None];
        let detail = [
            (
                30,
                MSR,
                1000,
                Some(Access::Msr {
                    index: 0x1b,
                    write: false,
                }),
            ),
            (
                10,
                MSR,
                3000,
                Some(Access::Msr {
                    index: 0x1234,
                    write: true,
                }),
            ),
            (
                20,
                CPUID,
                500,
                Some(Access::Cpuid {
                    leaf: 1,
                    subleaf: 0,
                }),
            ),
            (5, CPUID, 500, None),
            (
                2,
                CPUID,
                700,
                Some(Access::Hypercall {
                    abi: HypercallAbi::Kvm,
                    nr: 5,
                }),
            ),
            // Xen's 5 is another call than KVM's 5: a row of its own.
            (
                3,
                CPUID,
                700,
                Some(Access::Hypercall {
                    abi: HypercallAbi::Xen,
                    nr: 5,
                }),
            ),
        ];
        for (n, reason, ns, access) in detail {
            for _ in 0..n {
                let mut e = exit(0, reason, cycle(ns));
                e.access = access;
                a.add(&e);
            }
        }
        let h = header();
        let r = build(&h, &a, By::Reason);
        let row = |space, addr| {
            r.ports
                .iter()
                .find(|p| p.space == space && p.addr == addr)
                .map(|p| (p.count, p.reason_share, p.mean_cycle_ns, p.name.clone()))
        };
        let percentiles = |space, addr| {
            r.ports
                .iter()
                .find(|p| p.space == space && p.addr == addr)
                .map(|p| (p.p50_cycle_ns, p.p99_cycle_ns))
        };
        // The highest value of 3000's histogram bucket, as stage percentiles are.
        assert_eq!(
            percentiles(IoSpace::Msr, 0x1234),
            Some((Some(3001), Some(3001)))
        );
        assert_eq!(
            row(IoSpace::Msr, 0x1b),
            Some((30, 0.75, Some(1000), Some("IA32_APIC_BASE".into())))
        );
        assert_eq!(
            row(IoSpace::Msr, 0x1234),
            Some((10, 0.25, Some(3000), None))
        );
        let leaf1 = kvmprof_common::detail::cpuid_key(1, 0);
        assert_eq!(
            row(IoSpace::Cpuid, leaf1),
            Some((
                20,
                20.0 / 30.0,
                Some(500),
                Some("leaf 0x1 subleaf 0x0".into())
            ))
        );
        assert_eq!(
            row(IoSpace::Hypercall, 5),
            Some((2, 2.0 / 30.0, Some(700), Some("KVM_HC_KICK_CPU".into())))
        );
        assert_eq!(
            row(IoSpace::XenHypercall, 5),
            Some((
                3,
                3.0 / 30.0,
                Some(700),
                Some("__HYPERVISOR_fpu_taskswitch".into())
            ))
        );
        let t = render(&h, &a, By::Reason, Format::Table);
        let ports = t
            .split("Ports and addresses (top 2 of 2)")
            .nth(1)
            .unwrap_or_default();
        let ports = ports.split("MSRs, CPUID").next().unwrap_or_default();
        assert!(!ports.contains("msr") && !ports.contains("cpuid"), "{t}");
        assert!(
            t.contains("MSRs, CPUID leaves and hypercalls (top 5 of 5)"),
            "{t}"
        );
        let line = t
            .lines()
            .find(|l| l.contains("IA32_APIC_BASE"))
            .unwrap_or_default();
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            cols[..9],
            ["7", "msr", "0x1b", "read", "30", "75.0%", "1.00µs", "1.00µs", "1.00µs"],
            "{t}"
        );
        assert!(t.contains(" 0x1/0x0 "), "{t}");
        let j: serde_json::Value =
            serde_json::from_str(&render(&h, &a, By::Reason, Format::Json)).expect("json");
        let msr = j["ports"]
            .as_array()
            .and_then(|p| p.iter().find(|r| r["space"] == "msr" && r["addr"] == 0x1b))
            .expect("msr row");
        assert_eq!(
            (msr["count"].as_u64(), msr["write"].as_bool()),
            (Some(30), Some(false))
        );
        assert_eq!(
            (msr["p50_cycle_ns"].as_u64(), msr["p99_cycle_ns"].as_u64()),
            (Some(1000), Some(1000))
        );
    }

    /// `--detail`'s guest pages: their own table, per pid and reason, each a fault-in or
    /// MMIO with its share of the reason and its mean cycle; JSON says the kind.
    #[test]
    fn guest_pages_are_listed_as_fault_ins_or_mmio_with_share_and_mean_cycle() {
        let mut a = sample();
        let cycle = |ns| [Some(ns), None, None, None, None, None, None, None];
        let mmio = Access::Mmio {
            gpa: 0xd_0004,
            size: 1,
            write: true,
            npf: true,
        };
        for (n, ns, access) in [
            (3, 1000, Access::Page { gpa: 0x2_0000 }),
            (1, 3000, Access::Page { gpa: 0x2_1000 }),
            (2, 5000, mmio),
        ] {
            for _ in 0..n {
                let mut e = exit(0, NPF, cycle(ns));
                e.access = Some(access);
                a.add(&e);
            }
        }
        let h = header();
        let t = render(&h, &a, By::Reason, Format::Table);
        assert!(t.contains("Guest pages (EPT violations / NPF"), "{t}");
        assert!(!t.contains("MSRs, CPUID"), "{t}");
        let cols = |page: &str| -> Vec<String> {
            t.lines()
                .find(|l| l.contains(page) && !l.contains("Ports"))
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        };
        let first = cols(" 0x20000 ");
        assert_eq!(first[2..6], ["0x20000", "fault-in", "3", "2.8%"], "{t}");
        let mmio_row = cols(" 0xd0000 ");
        assert_eq!(mmio_row[2..5], ["0xd0000", "mmio", "2"], "{t}");
        let j: serde_json::Value =
            serde_json::from_str(&render(&h, &a, By::Reason, Format::Json)).expect("json");
        let page = |addr: u64| {
            j["ports"]
                .as_array()
                .and_then(|p| p.iter().find(|r| r["space"] == "page" && r["addr"] == addr))
                .map(|r| {
                    (
                        r["kind"].clone(),
                        r["count"].as_u64(),
                        r["mean_cycle_ns"].as_u64(),
                    )
                })
        };
        assert_eq!(
            page(0x2_0000),
            Some((serde_json::json!("fault-in"), Some(3), Some(1000)))
        );
        assert_eq!(
            page(0xd_0000),
            Some((serde_json::json!("mmio"), Some(2), Some(5000)))
        );
        let mmio_addr = j["ports"].as_array().and_then(|p| {
            p.iter()
                .find(|r| r["space"] == "mmio" && r["addr"] == 0xd_0004)
        });
        assert!(mmio_addr.is_some_and(|r| r.get("kind").is_none()), "{j}");
    }

    /// `--detail`'s guest RIPs: per pid and reason, most first, the `other` row last among
    /// equals, each with its share of the reason's RIP-counted exits; the text shows the top
    /// few per reason.
    #[test]
    fn guest_rips_are_listed_per_reason_most_first() {
        let mut a = sample();
        let rips: Vec<(u64, u64)> = (0..7).map(|i| (0x1000 + i, 10 + i)).collect();
        let tally = crate::data::model::Tally::of_rips(exit(0, NPF, [None; STAGES]), rips, 2);
        a.add_tally(&tally);
        let h = header();
        let r = build(&h, &a, By::Reason);
        assert_eq!(r.total_exits, 400, "RIPs count no exit of their own");
        let top: Vec<(Option<u64>, u64)> = r.rips.iter().map(|x| (x.rip, x.count)).collect();
        assert_eq!(top[..2], [(Some(0x1006), 16), (Some(0x1005), 15)]);
        assert_eq!(top.last(), Some(&(None, 2)));
        assert_eq!(r.rips[0].reason_share, 16.0 / 93.0);
        let t = render(&h, &a, By::Reason, Format::Table);
        assert!(t.contains("Guest RIPs (top 5 per pid and reason)"), "{t}");
        assert!(
            t.contains("0x1006") && t.contains("0x1002") && !t.contains("0x1001"),
            "{t}"
        );
    }

    #[test]
    fn groups_by_reason_with_rates_and_shares() {
        let h = header();
        let r = build(&h, &sample(), By::Reason);
        assert_eq!(r.total_exits, 400);
        let [io, npf] = &r.groups[..] else {
            panic!("two reasons")
        };
        assert_eq!((io.label.as_str(), io.count, io.userspace), ("io", 300, 0));
        assert_eq!(io.rate_per_s, 150.0);
        assert_eq!(io.exit_share, 0.75);
        let total = 300.0 * 7915.0 + 100.0 * 20_000.0;
        assert_eq!(io.cycle_time_share, Some(300.0 * 7915.0 / total));
        assert_eq!(io.stages.len(), 4, "stages without samples are left out");
        assert_eq!(io.stages[0].p50_ns, 7915);
        assert_eq!(io.stages[0].mean_ns, 7915);
        assert_eq!((npf.label.as_str(), npf.userspace), ("npf", 100));
        assert_eq!(npf.stages.len(), 1);
    }

    #[test]
    fn groups_by_vcpu_and_pid() {
        let h = header();
        let r = build(&h, &sample(), By::Vcpu);
        let labels: Vec<_> = r
            .groups
            .iter()
            .map(|g| (g.label.as_str(), g.count))
            .collect();
        assert_eq!(labels, [("pid 7 vcpu 0", 250), ("pid 7 vcpu 1", 150)]);
        let h = header();
        let r = build(&h, &sample(), By::Pid);
        assert_eq!(r.groups[0].label, "7 qemu");
        assert_eq!(r.groups[0].count, 400);
    }

    #[test]
    fn breakdown_follows_the_seed_trace() {
        let h = header();
        let r = build(&h, &sample(), By::Reason);
        assert_eq!(r.breakdown.len(), 1, "npf has no vendor stage");
        let b = &r.breakdown[0];
        let rows: Vec<_> = b
            .stages
            .iter()
            .map(|s| (s.stage, s.symbol.as_deref(), s.depth))
            .collect();
        assert_eq!(
            rows,
            [
                (Stage::Cycle, Some("vcpu_enter_guest"), 0),
                (Stage::VendorRun, Some("svm_vcpu_run"), 1),
                (Stage::Handler, Some("svm_handle_exit"), 1),
                (Stage::FastPio, Some("kvm_fast_pio"), 2),
            ]
        );
        assert_eq!(b.stages[1].cycle_share, Some(3206.0 / 7915.0));
        assert_eq!(b.stages[3].cycle_share, Some(2594.0 / 7915.0));
    }

    #[test]
    fn table_is_aligned_and_fits_100_columns() {
        let mut a = sample();
        a.add(&exit(
            1,
            AVIC,
            [Some(1500), None, None, None, None, None, None, None],
        ));
        let t = render(&header(), &a, By::Reason, Format::Table);
        for line in t.lines() {
            assert!(line.chars().count() <= 100, "too wide: {line}");
        }
        assert!(t.contains("kvmprof report (live recording)"));
        assert!(t.contains("vendor: AMD SVM"));
        assert!(t.contains("  vendor_run  svm_vcpu_run [kprobe]"));
        assert!(t.contains("duration: 2.00s   pids: 7 (qemu)"));
        assert!(t.contains("exits: 401   lost events: 0"));
        assert!(t.contains(
            "window: exits that began and ended in the 2.00s above; 0 already under way at its \
             start not counted"
        ));
        let row = t.lines().find(|l| l.starts_with("io ")).expect("io row");
        assert!(row.contains(" 300    150  74.8%  54.3%"), "{row}");
        assert!(
            row.contains("cycle      7.92µs 7.92µs 7.92µs 7.92µs 7.92µs"),
            "{row}"
        );
        // The label too long for its column sits on its own line.
        assert!(t.contains("\navic_unaccelerated_access\n "));
        assert!(t.contains("  100 to VMM"));
        // Columns line up: every stage name starts at the same column.
        let starts: Vec<_> = t
            .lines()
            .filter_map(|l| ["  cycle ", "  vendor_run "].iter().find_map(|s| l.find(s)))
            .filter(|&i| i > 40)
            .collect();
        assert!(
            starts.len() >= 3 && starts.iter().all(|&i| i == starts[0]),
            "{starts:?}"
        );
        assert!(t.contains("\n      fast_pio    kvm_fast_pio "));
        assert!(t.contains(
            "       7  pio   0x3f8               out          300       0   7.92µs   7.92µs  io"
        ));
        assert!(t.contains(
            "       7  mmio  0xfebf0000          read         100     100   20.0µs   20.0µs  npf"
        ));
        assert!(
            !t.contains("p50, p99: the exits' cycle"),
            "no row lacks them"
        );
    }

    #[test]
    fn json_has_the_same_numbers() {
        let j = render(&header(), &sample(), By::Reason, Format::Json);
        let v: serde_json::Value = serde_json::from_str(&j).expect("valid JSON");
        assert_eq!(v["total_exits"], 400);
        assert_eq!(v["lost"], 0);
        assert_eq!(v["by"], "reason");
        assert_eq!(v["header"]["source"], "live");
        assert_eq!(v["vendor_label"], "AMD SVM");
        let io = &v["groups"][0];
        assert_eq!(io["label"], "io");
        assert_eq!(io["reason"]["space"], "svm");
        assert_eq!(io["count"], 300);
        assert_eq!(io["rate_per_s"], 150.0);
        assert_eq!(io["stages"][0]["stage"], "cycle");
        assert_eq!(io["stages"][0]["p99_ns"], 7915);
        assert_eq!(v["breakdown"][0]["stages"][1]["symbol"], "svm_vcpu_run");
        assert_eq!(v["ports"][0]["addr"], 0x3f8);
        assert_eq!(v["ports"][1]["userspace"], 100);
    }

    #[test]
    fn an_empty_recording_reports_zero_exits_without_empty_tables() {
        let mut h = header();
        h.duration_ns = 0;
        let t = render(&h, &Aggregate::new(SEC), By::Reason, Format::Table);
        assert!(t.contains("exits: 0   lost events: 0"));
        assert!(!t.contains("Stage breakdown"));
        assert!(!t.contains("Ports"));
        let j = render(&h, &Aggregate::new(SEC), By::Pid, Format::Json);
        assert!(serde_json::from_str::<serde_json::Value>(&j).is_ok());
    }

    #[test]
    fn the_kernel_anomalies_are_said_only_when_there_were_some() {
        let mut h = header();
        let quiet = render(&h, &Aggregate::new(SEC), By::Reason, Format::Table);
        (h.read_failed, h.unmatched, h.no_state) = (Some(0), Some(0), Some(0));
        assert_eq!(
            render(&h, &Aggregate::new(SEC), By::Reason, Format::Table),
            quiet
        );
        (h.read_failed, h.unmatched, h.no_state) = (Some(3), Some(4), Some(5));
        let t = render(&h, &Aggregate::new(SEC), By::Reason, Format::Table);
        assert!(t.contains(
            "exits: 0   lost events: 0\nkernel: 3 events dropped, a read refused (a tracepoint \
             field or kernel memory)\nkernel: 5 events dropped, no room for their thread's \
             state\nkernel: 4 stage returns or KVM events outside any exit cycle"
        ));
    }
}
