//! The data of a `top` frame, independent of how it is drawn: last-interval rates from
//! snapshot deltas, rows grouped and sorted, and the columns that have something to show.
//! Pure, so the numbers are unit-tested without a terminal or a kernel.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use kvmprof_common::STAGES;
use regex::Regex;

use crate::{
    data::aggregate::{Aggregate, Key, KeyStats},
    data::group::{self, By, GroupId, Percentiles},
    data::model::Stage,
    util::units,
};

/// Title of the label column when rows are grouped by `by` (`r`, `v`, `p`).
pub fn group_title(by: By) -> &'static str {
    match by {
        By::Reason => "REASON",
        By::Vcpu => "VCPU",
        By::Pid => "PROCESS",
    }
}

/// The column rows are sorted by, largest first (`s` cycles through them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortBy {
    Rate,
    Total,
    CycleP50,
    CycleP99,
    CycleMax,
}

impl SortBy {
    pub fn next(self) -> SortBy {
        match self {
            SortBy::Rate => SortBy::Total,
            SortBy::Total => SortBy::CycleP50,
            SortBy::CycleP50 => SortBy::CycleP99,
            SortBy::CycleP99 => SortBy::CycleMax,
            SortBy::CycleMax => SortBy::Rate,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SortBy::Rate => "exits/s",
            SortBy::Total => "total",
            SortBy::CycleP50 => "cycle p50",
            SortBy::CycleP99 => "cycle p99",
            SortBy::CycleMax => "cycle max",
        }
    }

    /// The column this sort key is shown in, to highlight it.
    pub fn column(self) -> Column {
        match self {
            SortBy::Rate => Column::Rate,
            SortBy::Total => Column::Total,
            SortBy::CycleP50 => Column::Stage(Stage::Cycle, Stat::P50),
            SortBy::CycleP99 => Column::Stage(Stage::Cycle, Stat::P99),
            SortBy::CycleMax => Column::Stage(Stage::Cycle, Stat::Max),
        }
    }

    /// The sort value of a row; `None` (not measured) sorts last.
    fn value(self, row: &Row) -> Option<f64> {
        let cycle = row.stages[Stage::Cycle.index()];
        match self {
            SortBy::Rate => row.rate,
            SortBy::Total => Some(row.count as f64),
            SortBy::CycleP50 => cycle.map(|c| c.p50 as f64),
            SortBy::CycleP99 => cycle.map(|c| c.p99 as f64),
            SortBy::CycleMax => cycle.map(|c| c.max as f64),
        }
    }
}

/// How the user is looking at the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    pub group: By,
    pub sort: SortBy,
    /// Smallest first (`I`); unmeasured rows stay last either way.
    pub reverse: bool,
}

impl Default for View {
    fn default() -> Self {
        View {
            group: By::Reason,
            sort: SortBy::Rate,
            reverse: false,
        }
    }
}

/// Exits per aggregate key (or, `--detail`, per ports-table row) in the last refresh
/// interval, from the difference of two snapshots of the (cumulative) counts. Keyed by the
/// finest key, so every grouping gets its rates from the same interval and regrouping shows
/// rates at once.
#[derive(Debug)]
pub struct Rates<K = Key> {
    /// Counts at the last sample, and when it was taken.
    counts: BTreeMap<K, u64>,
    at: Duration,
    /// Exits in the last interval, for keys that had any.
    delta: BTreeMap<K, u64>,
    /// Length of the last interval; `None` before the first one ended.
    secs: Option<f64>,
}

impl<K> Default for Rates<K> {
    fn default() -> Self {
        Rates {
            counts: BTreeMap::new(),
            at: Duration::ZERO,
            delta: BTreeMap::new(),
            secs: None,
        }
    }
}

impl Rates {
    /// Ends the current interval at `at` (time since recording began).
    pub fn sample(&mut self, agg: &Aggregate, at: Duration) {
        self.sample_counts(agg.keys().iter().map(|(k, s)| (*k, s.count)).collect(), at);
    }

    /// Exits/s of all keys over the last interval.
    pub fn total(&self) -> Option<f64> {
        self.rate(|_| true)
    }
}

impl<K: Ord + Copy> Rates<K> {
    /// Ends the current interval at `at` with these counts.
    pub fn sample_counts(&mut self, counts: BTreeMap<K, u64>, at: Duration) {
        self.delta = counts
            .iter()
            .map(|(k, &n)| {
                (
                    *k,
                    n.saturating_sub(self.counts.get(k).copied().unwrap_or(0)),
                )
            })
            .filter(|&(_, d)| d > 0)
            .collect();
        self.secs = Some(at.saturating_sub(self.at).as_secs_f64()).filter(|&s| s > 0.0);
        self.counts = counts;
        self.at = at;
    }

    /// Exits/s over the last interval of the keys `pick` selects.
    pub fn rate(&self, mut pick: impl FnMut(&K) -> bool) -> Option<f64> {
        let secs = self.secs?;
        let n: u64 = self
            .delta
            .iter()
            .filter(|(k, _)| pick(k))
            .map(|(_, &d)| d)
            .sum();
        Some(n as f64 / secs)
    }
}

/// Percentiles of one stage of a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    /// From the exact sum, not the histogram.
    pub mean: u64,
}

/// One table row: a group's numbers, not yet formatted.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub id: GroupId,
    pub label: String,
    /// Exits/s in the last interval; `None` before the first interval ended.
    pub rate: Option<f64>,
    pub count: u64,
    /// Exits that went to the VMM.
    pub userspace: u64,
    /// Since recording began (or the last reset); `None` for stages without samples.
    pub stages: [Option<Latency>; STAGES],
    /// The row's process exited (rows by vCPU or process).
    pub exited: bool,
}

/// Marks the label of a row whose process exited.
pub const EXITED_MARK: &str = "✗ ";

/// What the rows are made of besides the statistics.
pub struct Context<'a> {
    pub rates: &'a Rates,
    /// Process names by pid.
    pub names: &'a BTreeMap<u32, String>,
    /// Processes that exited.
    pub exited: &'a BTreeSet<u32>,
    /// Only rows whose label matches are kept.
    pub filter: Option<&'a Regex>,
}

/// The rows of `view.group` from `keys` (see [`super::since::shown`]), sorted by `view.sort`.
pub fn rows(keys: &BTreeMap<Key, KeyStats>, cx: &Context, view: View) -> Vec<Row> {
    let mut rows: Vec<Row> = group::group(keys, view.group)
        .into_iter()
        .map(|(id, stats)| {
            (
                id,
                stats,
                id.label(|pid| cx.names.get(&pid).map(String::as_str)),
            )
        })
        // The filter sees the label without the exited mark.
        .filter(|(_, _, label)| cx.filter.is_none_or(|re| re.is_match(label)))
        .map(|(id, stats, label)| {
            let exited = id.pid().is_some_and(|pid| cx.exited.contains(&pid));
            Row {
                id,
                label: if exited {
                    format!("{EXITED_MARK}{label}")
                } else {
                    label
                },
                rate: cx.rates.rate(|k| view.group.id(k) == id),
                count: stats.count,
                userspace: stats.userspace_count(),
                stages: Stage::ALL.map(|s| latency(&stats, s)),
                exited,
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        let (va, vb) = (view.sort.value(a), view.sort.value(b));
        let measured = vb.is_some().cmp(&va.is_some());
        // Values that show alike are ties: two vCPUs at "100" exits/s must not swap places
        // from frame to frame as 100.02 and 99.98 trade. Ties fall back to a fixed order;
        // unmeasured rows (idle, first frame) to totals first.
        let order = match (va, vb) {
            (Some(va), Some(vb)) => as_shown(vb).total_cmp(&as_shown(va)),
            _ => b.count.cmp(&a.count),
        };
        let order = if view.reverse { order.reverse() } else { order };
        // Unmeasured rows stay last either way.
        measured.then(order).then(a.id.cmp(&b.id))
    });
    rows
}

/// `v` to the 3 significant digits the table shows ([`crate::util::units::si`] and `ns`).
fn as_shown(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let scale = 10f64.powi(2 - v.abs().log10().floor() as i32);
    (v * scale).round() / scale
}

fn latency(stats: &KeyStats, stage: Stage) -> Option<Latency> {
    let stage = stats.stage(stage)?;
    let h = &stage.hist;
    (!h.is_empty()).then(|| {
        let p = Percentiles::of(h);
        Latency {
            p50: p.p50,
            p90: p.p90,
            p99: p.p99,
            p999: p.p999,
            max: p.max,
            mean: stage.sum_ns / h.len(),
        }
    })
}

/// A statistic of a stage's durations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    P50,
    P90,
    P99,
    P999,
    Max,
    Mean,
}

impl Stat {
    fn name(self) -> &'static str {
        match self {
            Stat::P50 => "p50",
            Stat::P90 => "p90",
            Stat::P99 => "p99",
            Stat::P999 => "p99.9",
            Stat::Max => "max",
            Stat::Mean => "mean",
        }
    }

    fn of(self, l: Latency) -> u64 {
        match self {
            Stat::P50 => l.p50,
            Stat::P90 => l.p90,
            Stat::P99 => l.p99,
            Stat::P999 => l.p999,
            Stat::Max => l.max,
            Stat::Mean => l.mean,
        }
    }

    /// Shown only where the screen is wide enough for them.
    pub fn is_detail(self) -> bool {
        matches!(self, Stat::P90 | Stat::P999 | Stat::Mean)
    }
}

/// A table column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    Label,
    Rate,
    Total,
    /// Share of all exits counted.
    Share,
    /// Share of the row's exits that went to the VMM.
    ToVmm,
    Stage(Stage, Stat),
}

impl Column {
    /// The two header lines: the stage measured (empty for other columns), then the column.
    pub fn header(self, group: By) -> [&'static str; 2] {
        match self {
            Column::Label => ["", group_title(group)],
            Column::Rate => ["", "EXITS/s"],
            Column::Total => ["", "TOTAL"],
            Column::Share => ["", "SHARE"],
            Column::ToVmm => ["", "→VMM"],
            Column::Stage(s, stat) => [stage_title(s), stat.name()],
        }
    }

    /// Width of the widest value the column can have, where it is bounded, so that columns
    /// keep their place from one frame to the next.
    pub fn min_width(self) -> usize {
        match self {
            // `100.0%`
            Column::Share | Column::ToVmm => 6,
            // `units::ns` below an hour: `812ns`, `1.23µs`, `12.3ms`.
            Column::Stage(..) => 6,
            Column::Label | Column::Rate | Column::Total => 0,
        }
    }

    /// The formatted value of `row`; `total` is the count of all exits, for shares.
    pub fn cell(self, row: &Row, total: u64) -> String {
        match self {
            Column::Label => row.label.clone(),
            Column::Rate => rate(row.rate),
            Column::Total => row.count.to_string(),
            Column::Share => units::pct(units::ratio(row.count, total)),
            Column::ToVmm => units::pct(units::ratio(row.userspace, row.count)),
            Column::Stage(s, stat) => match row.stages[s.index()] {
                None => "-".to_owned(),
                Some(l) => units::ns(stat.of(l)),
            },
        }
    }
}

/// Exits/s as shown: `-` before the first interval ended, `0` (not `0.00`) when idle.
pub fn rate(r: Option<f64>) -> String {
    match r {
        None => "-".to_owned(),
        Some(0.0) => "0".to_owned(),
        Some(r) => units::si(r),
    }
}

/// A stage's name as a column title: `vendor_run` and the scheduler stages are shortened so
/// that every stage column is as narrow as its values and the usual set fits 100 columns.
fn stage_title(s: Stage) -> &'static str {
    match s {
        Stage::VendorRun => "vendor",
        Stage::SchedWait => "wait",
        Stage::SchedSleep => "sleep",
        _ => s.name(),
    }
}

/// The columns worth showing for `rows`, in order: the VMM share only where some row mixes
/// exits that went to the VMM with exits that did not (elsewhere the reason says which), the
/// cycle's p50/p99/max (with `detail`, p50/p90/p99/p99.9/max/mean), then the p50 of each
/// other stage that has samples (which stages do depends on the kernel's hooks).
pub fn columns(rows: &[Row], detail: bool) -> Vec<Column> {
    let mut cols = vec![Column::Label, Column::Rate, Column::Total, Column::Share];
    if rows
        .iter()
        .any(|r| r.userspace > 0 && r.userspace < r.count)
    {
        cols.push(Column::ToVmm);
    }
    let measured = |s: Stage| rows.iter().any(|r| r.stages[s.index()].is_some());
    if measured(Stage::Cycle) {
        let stats = [
            Stat::P50,
            Stat::P90,
            Stat::P99,
            Stat::P999,
            Stat::Max,
            Stat::Mean,
        ];
        cols.extend(
            stats
                .into_iter()
                .filter(|st| detail || !st.is_detail())
                .map(|st| Column::Stage(Stage::Cycle, st)),
        );
    }
    cols.extend(
        Stage::ALL
            .into_iter()
            .filter(|&s| s != Stage::Cycle && measured(s))
            .map(|s| Column::Stage(s, Stat::P50)),
    );
    cols
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::data::model::{Exit, Reason, ReasonSpace};
    use kvmprof_common::tp_reason;

    pub use crate::testdata::{KVM_EXIT_IO, SEC};
    pub const PIO_KERNEL: Reason = Reason {
        space: ReasonSpace::Tracepoint,
        code: tp_reason::PIO,
    };

    /// An exit of pid 7 with the given cycle and VMM round trip.
    pub fn exit(vcpu: u32, reason: Reason, cycle: u64, vmm: Option<u64>) -> Exit {
        let mut stages = [None; STAGES];
        stages[Stage::Cycle.index()] = Some(cycle);
        stages[Stage::Vmm.index()] = vmm;
        Exit {
            pid: 7,
            tid: 70 + vcpu,
            vcpu: Some(vcpu),
            ts_ns: SEC,
            reason,
            userspace_reason: (reason.space == ReasonSpace::Userspace).then_some(reason.code),
            access: None,
            stages,
        }
    }

    /// `n` exits of each kind on vCPU 0, half as many on vCPU 1.
    pub fn add(agg: &mut Aggregate, n: u64) {
        for vcpu in [0, 1] {
            for _ in 0..n >> vcpu {
                agg.add(&exit(vcpu, PIO_KERNEL, 2_000, None));
                agg.add(&exit(vcpu, KVM_EXIT_IO, 50_000, Some(30_000)));
            }
        }
    }

    fn names() -> BTreeMap<u32, String> {
        BTreeMap::from([(7, "qemu".to_owned())])
    }

    /// The rows of every exit in `agg`, none exited, unfiltered.
    pub fn rows_of(
        agg: &Aggregate,
        rates: &Rates,
        names: &BTreeMap<u32, String>,
        view: View,
    ) -> Vec<Row> {
        let cx = Context {
            rates,
            names,
            exited: &BTreeSet::new(),
            filter: None,
        };
        rows(agg.keys(), &cx, view)
    }

    #[test]
    fn rates_are_the_deltas_of_the_last_interval() {
        let mut agg = Aggregate::new(SEC);
        let mut rates = Rates::default();
        assert_eq!(rates.total(), None, "no interval has ended yet");
        add(&mut agg, 100);
        rates.sample(&agg, Duration::from_secs(1));
        assert_eq!(rates.total(), Some(300.0));
        add(&mut agg, 10);
        agg.add(&exit(2, PIO_KERNEL, 1_000, None));
        rates.sample(&agg, Duration::from_millis(1500));
        // 2 × (10 + 5) + 1 exits in half a second.
        assert_eq!(rates.total(), Some(62.0));
        let by_vcpu = View {
            group: By::Vcpu,
            sort: SortBy::Rate,
            reverse: false,
        };
        let rows = rows_of(&agg, &rates, &names(), by_vcpu);
        let got: Vec<_> = rows
            .iter()
            .map(|r| (r.label.as_str(), r.rate, r.count))
            .collect();
        assert_eq!(
            got,
            [
                ("pid 7 vcpu 0", Some(40.0), 220),
                ("pid 7 vcpu 1", Some(20.0), 110),
                ("pid 7 vcpu 2", Some(2.0), 1),
            ]
        );
        rates.sample(&agg, Duration::from_secs(2));
        assert_eq!(
            rates.total(),
            Some(0.0),
            "an idle interval has a rate of zero"
        );
        let rows = rows_of(&agg, &rates, &names(), by_vcpu);
        assert_eq!(Column::Rate.cell(&rows[0], 331), "0");
    }

    #[test]
    fn groups_merge_keys_and_carry_latencies() {
        let mut agg = Aggregate::new(SEC);
        add(&mut agg, 100);
        let rows = rows_of(&agg, &Rates::default(), &names(), View::default());
        let [io, pio] = &rows[..] else {
            panic!("two reasons: {rows:?}")
        };
        assert_eq!(
            (pio.label.as_str(), pio.count, pio.userspace),
            ("pio (in-kernel)", 150, 0)
        );
        assert_eq!(
            (io.label.as_str(), io.count, io.userspace),
            ("KVM_EXIT_IO", 150, 150)
        );
        assert_eq!(pio.rate, None);
        let cycle = io.stages[Stage::Cycle.index()].expect("cycle measured");
        assert_eq!(
            (units::ns(cycle.p50), units::ns(cycle.max)),
            ("50.0µs".into(), "50.0µs".into())
        );
        assert!(io.stages[Stage::Vmm.index()].is_some());
        assert!(pio.stages[Stage::Vmm.index()].is_none());

        let by_pid = View {
            group: By::Pid,
            sort: SortBy::Rate,
            reverse: false,
        };
        let rows = rows_of(&agg, &Rates::default(), &names(), by_pid);
        assert_eq!((rows[0].label.as_str(), rows[0].count), ("7 qemu", 300));
        let rows = rows_of(&agg, &Rates::default(), &BTreeMap::new(), by_pid);
        assert_eq!(rows[0].label, "7", "a process without a name shows its pid");
    }

    #[test]
    fn sorting_puts_the_largest_first_and_unmeasured_last() {
        let mut agg = Aggregate::new(SEC);
        let mut rates = Rates::default();
        add(&mut agg, 10);
        rates.sample(&agg, Duration::from_secs(1));
        for _ in 0..5 {
            agg.add(&exit(0, KVM_EXIT_IO, 50_000, None));
        }
        let mut no_cycle = exit(
            0,
            Reason {
                space: ReasonSpace::None,
                code: 0,
            },
            0,
            None,
        );
        no_cycle.stages = [None; STAGES];
        for _ in 0..40 {
            agg.add(&no_cycle);
        }
        rates.sample(&agg, Duration::from_secs(2));
        let order = |sort| -> Vec<String> {
            let view = View {
                group: By::Reason,
                sort,
                reverse: false,
            };
            rows_of(&agg, &rates, &names(), view)
                .into_iter()
                .map(|r| r.label)
                .collect()
        };
        assert_eq!(
            order(SortBy::Rate),
            ["unknown", "KVM_EXIT_IO", "pio (in-kernel)"]
        );
        assert_eq!(
            order(SortBy::Total),
            ["unknown", "KVM_EXIT_IO", "pio (in-kernel)"]
        );
        assert_eq!(
            order(SortBy::CycleP50),
            ["KVM_EXIT_IO", "pio (in-kernel)", "unknown"]
        );
        let reversed = |sort| -> Vec<String> {
            let view = View {
                group: By::Reason,
                sort,
                reverse: true,
            };
            rows_of(&agg, &rates, &names(), view)
                .into_iter()
                .map(|r| r.label)
                .collect()
        };
        assert_eq!(
            reversed(SortBy::Total),
            ["pio (in-kernel)", "KVM_EXIT_IO", "unknown"]
        );
        assert_eq!(
            reversed(SortBy::CycleP50),
            ["pio (in-kernel)", "KVM_EXIT_IO", "unknown"],
            "unmeasured rows stay last"
        );
        let mut sort = SortBy::Rate;
        for _ in 0..5 {
            sort = sort.next();
        }
        assert_eq!(sort, SortBy::Rate, "s cycles through every sort column");
    }

    #[test]
    fn the_filter_keeps_matching_labels_and_exited_rows_are_marked() {
        let mut agg = Aggregate::new(SEC);
        add(&mut agg, 10);
        let filter = Regex::new("vcpu 1$").unwrap();
        let cx = Context {
            rates: &Rates::default(),
            names: &names(),
            exited: &BTreeSet::from([7]),
            filter: Some(&filter),
        };
        let view = View {
            group: By::Vcpu,
            ..View::default()
        };
        let got: Vec<_> = rows(agg.keys(), &cx, view)
            .into_iter()
            .map(|r| (r.label, r.exited))
            .collect();
        assert_eq!(got, [("✗ pid 7 vcpu 1".to_owned(), true)]);
    }

    #[test]
    fn columns_show_only_what_has_data() {
        let mut agg = Aggregate::new(SEC);
        add(&mut agg, 10);
        let by_reason = rows_of(&agg, &Rates::default(), &names(), View::default());
        let stage = |s, st| Column::Stage(s, st);
        assert_eq!(
            columns(&by_reason, false),
            [
                Column::Label,
                Column::Rate,
                Column::Total,
                Column::Share,
                stage(Stage::Cycle, Stat::P50),
                stage(Stage::Cycle, Stat::P99),
                stage(Stage::Cycle, Stat::Max),
                stage(Stage::Vmm, Stat::P50),
            ]
        );
        // Per vCPU, rows mix in-kernel exits with exits that went to the VMM.
        let view = View {
            group: By::Vcpu,
            sort: SortBy::Rate,
            reverse: false,
        };
        let by_vcpu = rows_of(&agg, &Rates::default(), &names(), view);
        assert!(columns(&by_vcpu, false).contains(&Column::ToVmm));
        assert_eq!(Column::ToVmm.cell(&by_vcpu[0], 30), "50.0%");
        assert_eq!(Column::Share.cell(&by_vcpu[0], 30), "66.7%");
        assert_eq!(Column::Rate.cell(&by_vcpu[0], 30), "-");
        assert_eq!(
            stage(Stage::Cycle, Stat::Max).cell(&by_vcpu[0], 30),
            "50.0µs"
        );
        assert_eq!(stage(Stage::Handler, Stat::P50).cell(&by_vcpu[0], 30), "-");
        assert_eq!(
            stage(Stage::VendorRun, Stat::P50).header(view.group),
            ["vendor", "p50"]
        );
    }
}
