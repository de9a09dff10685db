//! Lays a frame out as lines of text, each made of segments with a tone. `--batch` prints the
//! text; the full-screen view draws the same lines with a style per tone, so both show the
//! same thing and the layout is unit-tested as plain strings.
use std::time::Duration;

use crate::{
    data::slow,
    data::target::Target,
    host::plan::{Mode, Plan},
    tui::view::{self, columns, Column, Row, View},
};

/// How a segment is drawn in the full-screen view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    Plain,
    Title,
    /// The column headers.
    Heading,
    /// The header of the column rows are sorted by.
    Sorted,
    Alert,
    Dim,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seg {
    pub text: String,
    pub tone: Tone,
}

pub type Line = Vec<Seg>;

fn seg(text: impl Into<String>, tone: Tone) -> Seg {
    Seg {
        text: text.into(),
        tone,
    }
}

fn plain(text: impl Into<String>) -> Seg {
    seg(text, Tone::Plain)
}

/// The facts above the table.
pub struct Summary<'a> {
    pub plan: &'a Plan,
    pub elapsed: Duration,
    pub total: u64,
    /// Exits/s over the last interval, `None` before it ended.
    pub rate: Option<f64>,
    pub lost: u64,
    /// The processes watched; empty for all.
    pub targets: &'a [Target],
    pub exited: &'a [Target],
    /// Rows are filtered, so none may show although there are exits.
    pub filtered: bool,
    /// kvmprof's own cost (`data::cost::OwnCost::summary`).
    pub own_cost: Option<String>,
    /// `--slow`: the exits over its threshold.
    pub slow: Option<Slow>,
}

/// How many exits were over `--slow`'s threshold since the start, and the latest of them.
pub struct Slow {
    /// The rule, as `slow::Rule::label` says it.
    pub label: String,
    pub count: u64,
    /// The latest slow exits as `slow::row` lines, oldest first.
    pub latest: Vec<String>,
}

/// What a summary line tells: on a short screen, the latest slow exits make room first,
/// then hooks, then processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Title,
    Hooks,
    Processes,
    Slow,
}

/// A laid-out frame.
pub struct Frame {
    pub summary: Vec<(Part, Line)>,
    /// The two column header lines.
    pub header: Vec<Line>,
    pub rows: Vec<Line>,
    /// Shown instead of rows where there are none.
    pub note: Option<Line>,
    /// Table columns left out because `width` was too small for them.
    pub hidden_columns: usize,
}

/// Which columns a table may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    /// The cycle's p50/p99/max.
    Basic,
    /// Also p90, p99.9 and mean, where the width allows.
    Full,
}

/// Widest label column; longer labels are cut with `…`.
const LABEL_MAX: usize = 24;
/// Where columns alone cannot make the table fit, the label column narrows down to this.
const LABEL_MIN: usize = 12;
/// Columns every table keeps, whatever the width: label, rate, total, share.
const KEPT_COLUMNS: usize = 4;

/// The summary and the table, no line wider than `width` (`usize::MAX` for no limit)
/// except where even the kept columns do not fit.
pub fn layout(s: &Summary, rows: &[Row], view: View, width: usize, detail: Detail) -> Frame {
    let (header, lines, hidden_columns) = table(rows, view, s.total, width, detail);
    let note = rows.is_empty().then(|| {
        let text = if s.filtered && s.total > 0 {
            "(no row matches the filter)"
        } else {
            "(no exits yet)"
        };
        vec![seg(text, Tone::Dim)]
    });
    Frame {
        summary: summary(s, width),
        header,
        rows: lines,
        note,
        hidden_columns,
    }
}

/// A frame as plain text lines, as `--batch` prints it: the summary, a blank line, the table.
pub fn frame(s: &Summary, rows: &[Row], view: View) -> Vec<String> {
    let f = layout(s, rows, view, usize::MAX, Detail::Basic);
    f.summary
        .into_iter()
        .map(|(_, l)| l)
        .chain([Vec::new()])
        .chain(f.header)
        .chain(f.rows)
        .chain(f.note)
        .map(|l| {
            l.iter()
                .map(|s| s.text.as_str())
                .collect::<String>()
                .trim_end()
                .to_owned()
        })
        .collect()
}

fn summary(s: &Summary, width: usize) -> Vec<(Part, Line)> {
    let mut lines = vec![(Part::Title, title(s))];
    lines.extend(
        wrap("hooks ", &hooks(s.plan), width)
            .into_iter()
            .map(|l| (Part::Hooks, vec![plain(l)])),
    );
    lines.extend(
        processes(s, width)
            .into_iter()
            .map(|l| (Part::Processes, l)),
    );
    if let Some(cost) = &s.own_cost {
        // Word by word: the line names every program and is often wider than the screen.
        let words: Vec<String> = cost.split(' ').map(str::to_owned).collect();
        lines.extend(
            wrap_with("cost  ", &words, width, " ")
                .into_iter()
                .map(|l| (Part::Processes, vec![plain(l)])),
        );
    }
    if let Some(slow) = &s.slow {
        lines.extend(slow_lines(slow));
    }
    lines
}

/// The count of slow exits (kept with the title), then the latest, as `report` lists them.
fn slow_lines(s: &Slow) -> Vec<(Part, Line)> {
    let tone = if s.count > 0 {
        Tone::Alert
    } else {
        Tone::Plain
    };
    let mut lines = vec![(
        Part::Title,
        vec![
            plain("slow  "),
            seg(s.count.to_string(), tone),
            plain(format!(" exits with {}", s.label)),
        ],
    )];
    if !s.latest.is_empty() {
        lines.push((Part::Slow, vec![seg(slow::heading(), Tone::Dim)]));
        lines.extend(
            s.latest
                .iter()
                .map(|l| (Part::Slow, vec![plain(l.clone())])),
        );
    }
    lines
}

/// Backend, time, exits and lost events, the latter in red when any were lost.
fn title(s: &Summary) -> Line {
    let lost = if s.lost > 0 { Tone::Alert } else { Tone::Plain };
    vec![
        seg("kvmprof top", Tone::Title),
        plain(format!(
            "   {}   elapsed {}   exits {}   rate {}/s   lost ",
            s.plan.vendor.label(),
            clock(s.elapsed),
            s.total,
            view::rate(s.rate)
        )),
        seg(s.lost.to_string(), lost),
    ]
}

/// The processes watched, then those that exited, in red.
fn processes(s: &Summary, width: usize) -> Vec<Line> {
    let named = |ts: &[Target]| -> Vec<String> {
        ts.iter().map(|t| format!("{} {}", t.pid, t.name)).collect()
    };
    let watched = match named(s.targets) {
        w if w.is_empty() => vec!["all processes".to_owned()],
        w => w,
    };
    let mut lines: Vec<Line> = wrap("pids  ", &watched, width)
        .into_iter()
        .map(|l| vec![plain(l)])
        .collect();
    if !s.exited.is_empty() {
        let gone = named(s.exited).join(", ");
        lines.push(vec![seg(format!("      exited: {gone}"), Tone::Alert)]);
    }
    lines
}

/// Each stage's hook as `stage=mode:symbol` (the symbol only where a function is hooked:
/// tracepoint stages span several events), then the stages that have none.
fn hooks(plan: &Plan) -> Vec<String> {
    let mut items = Vec::new();
    let mut none = Vec::new();
    for p in &plan.stages {
        let (stage, mode) = (p.stage.name(), p.mode.name());
        match p.mode {
            Mode::Fentry | Mode::Kprobe => items.push(format!("{stage}={mode}:{}", p.symbol)),
            Mode::Tracepoint => items.push(format!("{stage}={mode}")),
            Mode::Unavailable => none.push(stage),
        }
    }
    if !none.is_empty() {
        items.push(format!("no hook: {}", none.join(", ")));
    }
    items
}

/// `h:mm:ss`, or `m:ss` under an hour.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    match s / 3600 {
        0 => format!("{}:{:02}", s / 60, s % 60),
        h => format!("{h}:{:02}:{:02}", s / 60 % 60, s % 60),
    }
}

/// `items` after `prefix`, two spaces apart, on as many lines as `width` needs; follow-on
/// lines are indented like the first item.
fn wrap(prefix: &str, items: &[String], width: usize) -> Vec<String> {
    wrap_with(prefix, items, width, "  ")
}

/// [`wrap`] with `gap` between the items on a line.
fn wrap_with(prefix: &str, items: &[String], width: usize, gap: &str) -> Vec<String> {
    let indent = " ".repeat(prefix.chars().count());
    let mut lines = vec![prefix.to_owned()];
    for item in items {
        let Some(line) = lines.last_mut() else { break };
        let fresh = line.chars().count() == indent.len();
        if !fresh && line.chars().count() + gap.len() + item.chars().count() > width {
            lines.push(format!("{indent}{item}"));
        } else {
            if !fresh {
                line.push_str(gap);
            }
            line.push_str(item);
        }
    }
    lines
}

/// The two header lines, one line per row, and how many columns did not fit in `width`.
fn table(
    rows: &[Row],
    view: View,
    total: u64,
    width: usize,
    detail: Detail,
) -> (Vec<Line>, Vec<Line>, usize) {
    let mut cols = columns(rows, detail == Detail::Full);
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| cols.iter().map(|c| c.cell(r, total)).collect())
        .collect();
    let mut widths = natural_widths(&cols, &cells, view);
    let hidden = fit(&mut cols, &mut widths, width);
    let header = vec![
        stage_header(&cols, &widths, view),
        column_header(&cols, &widths, view),
    ];
    let lines = rows
        .iter()
        .zip(&cells)
        .map(|(row, cells)| {
            let text: Vec<String> = cols
                .iter()
                .zip(&widths)
                .zip(cells)
                .map(|((c, &w), cell)| align(*c, cell, w))
                .collect();
            let tone = if row.exited { Tone::Alert } else { Tone::Plain };
            vec![seg(text.join(" "), tone)]
        })
        .collect();
    (header, lines, hidden)
}

/// Each column as wide as its header and its widest value, the label at most [`LABEL_MAX`].
fn natural_widths(cols: &[Column], cells: &[Vec<String>], view: View) -> Vec<usize> {
    let chars = |s: &str| s.chars().count();
    cols.iter()
        .enumerate()
        .map(|(i, c)| {
            let [stage, name] = c.header(view.group);
            let widest = cells.iter().map(|r| chars(&r[i])).max().unwrap_or(0);
            let w = widest.max(c.min_width()).max(chars(stage)).max(chars(name));
            if *c == Column::Label {
                w.min(LABEL_MAX)
            } else {
                w
            }
        })
        .collect()
}

/// Leaves columns out, the detail statistics first, then from the right, then narrows the
/// label column (the first), until the table fits `width`; returns how many columns were
/// left out. Labels go last: a row whose label is cut may not say what it is.
fn fit(cols: &mut Vec<Column>, widths: &mut Vec<usize>, width: usize) -> usize {
    let used = |w: &[usize]| w.iter().sum::<usize>() + w.len().saturating_sub(1);
    let detail = |c: &Column| matches!(c, Column::Stage(_, stat) if stat.is_detail());
    let mut hidden = 0;
    while used(widths) > width && cols.len() > KEPT_COLUMNS {
        let last = cols.len() - 1;
        let drop = cols.iter().rposition(detail).unwrap_or(last);
        cols.remove(drop);
        widths.remove(drop);
        hidden += 1;
    }
    let excess = used(widths).saturating_sub(width);
    if let Some(label) = widths.first_mut() {
        *label = label.saturating_sub(excess).max(LABEL_MIN.min(*label));
    }
    hidden
}

/// The first header line: each stage's name over its columns, spanning them with `─` where
/// it has several (the cycle's p50, p99 and max).
fn stage_header(cols: &[Column], widths: &[usize], view: View) -> Line {
    let mut text = String::new();
    let mut i = 0;
    while i < cols.len() {
        let name = cols[i].header(view.group)[0];
        let n = cols[i..]
            .iter()
            .take_while(|c| c.header(view.group)[0] == name)
            .count();
        let span = widths[i..i + n].iter().sum::<usize>() + n - 1;
        if i > 0 {
            text.push(' ');
        }
        if n > 1 && !name.is_empty() {
            text.push_str(&centred(name, span));
        } else {
            text.push_str(&format!("{name:>span$}"));
        }
        i += n;
    }
    vec![seg(text, Tone::Heading)]
}

/// `─── name ───` `width` wide.
fn centred(name: &str, width: usize) -> String {
    let fill = width.saturating_sub(name.chars().count() + 2);
    let left = fill / 2;
    format!("{} {name} {}", "─".repeat(left), "─".repeat(fill - left))
}

fn column_header(cols: &[Column], widths: &[usize], view: View) -> Line {
    let sorted = view.sort.column();
    let mut line = Vec::new();
    for (i, (c, &w)) in cols.iter().zip(widths).enumerate() {
        if i > 0 {
            line.push(seg(" ", Tone::Heading));
        }
        let tone = if *c == sorted {
            Tone::Sorted
        } else {
            Tone::Heading
        };
        line.push(seg(align(*c, c.header(view.group)[1], w), tone));
    }
    line
}

/// Labels to the left, cut to `width` with `…`; numbers to the right.
fn align(c: Column, text: &str, width: usize) -> String {
    if c != Column::Label {
        return format!("{text:>width$}");
    }
    if text.chars().count() <= width {
        return format!("{text:<width$}");
    }
    let cut: String = text.chars().take(width.saturating_sub(1)).collect();
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        data::aggregate::Aggregate,
        data::group::By,
        data::model::{Stage, Vendor},
        host::plan::StagePlan,
        tui::view::{
            tests::{add, rows_of, SEC},
            Rates, SortBy,
        },
    };
    use std::collections::BTreeMap;

    /// Every line of a frame, as `--batch` stacks them.
    fn lines(f: &Frame) -> Vec<Line> {
        let summary = f.summary.iter().map(|(_, l)| l.clone());
        summary
            .chain([Vec::new()])
            .chain(f.header.iter().cloned())
            .chain(f.rows.iter().cloned())
            .chain(f.note.clone())
            .collect()
    }

    fn plan() -> Plan {
        let stage = |stage, mode, symbol: &str| StagePlan {
            stage,
            symbol: symbol.to_owned(),
            mode,
            rejected: vec![],
            why: String::new(),
        };
        Plan {
            vendor: Vendor::Pvm,
            stages: vec![
                stage(
                    Stage::Cycle,
                    Mode::Tracepoint,
                    "interval between kvm:kvm_pio/kvm_mmio/KVM_RUN events",
                ),
                stage(Stage::VendorRun, Mode::Kprobe, "pvm_vcpu_run"),
                stage(Stage::Handler, Mode::Unavailable, "pvm_handle_exit"),
                stage(Stage::FastPio, Mode::Fentry, "kvm_fast_pio"),
            ],
            boundary: 0,
            tracepoints: vec![],
            btf_tracepoints: vec![],
            raw_tracepoints: vec![],
            tracepoint_notes: vec![],
            reason_at_vendor_return: false,
            run_entry_fentry: false,
        }
    }

    /// A summary of no exits yet, watching all processes; tests set what they show with
    /// `Summary { .., ..summary(&plan) }`.
    fn summary(plan: &Plan) -> Summary<'_> {
        Summary {
            plan,
            elapsed: Duration::ZERO,
            total: 0,
            rate: None,
            lost: 0,
            targets: &[],
            exited: &[],
            filtered: false,
            own_cost: None,
            slow: None,
        }
    }

    fn target(pid: u32, name: &str) -> Target {
        Target {
            pid,
            name: name.to_owned(),
        }
    }

    /// A batch frame after one second of 300 exits, by `view`.
    fn render(view: View, lost: u64, exited: &[Target]) -> Vec<String> {
        let mut agg = Aggregate::new(SEC);
        add(&mut agg, 100);
        let mut rates = Rates::default();
        rates.sample(&agg, Duration::from_secs(1));
        let targets = [target(7, "qemu"), target(8, "crosvm")];
        let rows = rows_of(&agg, &rates, &BTreeMap::new(), view);
        let plan = plan();
        let s = Summary {
            elapsed: Duration::from_secs(61),
            total: agg.total_exits(),
            rate: rates.total(),
            lost,
            targets: &targets,
            exited,
            ..summary(&plan)
        };
        frame(&s, &rows, view)
    }

    #[test]
    fn own_cost_is_shown_under_the_processes() {
        let plan = plan();
        let s = Summary {
            elapsed: Duration::from_secs(1),
            own_cost: Some("BPF 80 ns/exit (kvm_pio 80), CPU 0.5% of a core".into()),
            ..summary(&plan)
        };
        let f = frame(&s, &[], View::default());
        assert_eq!(
            f[3],
            "cost  BPF 80 ns/exit (kvm_pio 80), CPU 0.5% of a core"
        );
    }

    #[test]
    fn slow_exits_are_counted_under_the_summary_and_the_latest_listed_as_record_lists_them() {
        use kvmprof_common::STAGES;

        use crate::{data::model::Exit, testdata};

        let mut stages = [None; STAGES];
        stages[Stage::Vmm.index()] = Some(120_000_000);
        let e = Exit {
            ts_ns: 42,
            ..testdata::pio_in(7, 1, stages)
        };
        let plan = plan();
        let s = Summary {
            elapsed: Duration::from_secs(1),
            total: 9,
            slow: Some(Slow {
                label: "vmm > 40.0ms".into(),
                count: 8,
                latest: vec![slow::row(&e)],
            }),
            ..summary(&plan)
        };
        let f = frame(&s, &[], View::default());
        assert_eq!(f[3], "slow  8 exits with vmm > 40.0ms");
        assert_eq!(f[4], slow::heading());
        assert_eq!(
            f[5],
            "              42       7       9    1  KVM_EXIT_IO        pio 0x3fd in         vmm=120ms"
        );
        assert_eq!(f[6], "", "the table follows");
        let laid = layout(&s, &[], View::default(), 100, Detail::Basic);
        let (part, count) = laid
            .summary
            .iter()
            .find(|(_, l)| l[0].text == "slow  ")
            .expect("the slow line");
        assert_eq!(*part, Part::Title, "kept on the shortest screen");
        assert_eq!((count[1].text.as_str(), count[1].tone), ("8", Tone::Alert));
    }

    #[test]
    fn a_batch_frame_shows_summary_hooks_pids_and_table() {
        let f = render(View::default(), 0, &[]);
        let expected = [
            "kvmprof top   PVM   elapsed 1:01   exits 300   rate 300/s   lost 0",
            "hooks cycle=tracepoint  vendor_run=kprobe:pvm_vcpu_run  fast_pio=fentry:kvm_fast_pio  no hook: handler",
            "pids  7 qemu  8 crosvm",
            "",
            "                                     ────── cycle ───────    vmm",
            "REASON          EXITS/s TOTAL  SHARE    p50    p99    max    p50",
            "KVM_EXIT_IO         150   150  50.0% 50.0µs 50.0µs 50.0µs 30.0µs",
            "pio (in-kernel)     150   150  50.0% 2.00µs 2.00µs 2.00µs      -",
        ];
        assert_eq!(f, expected, "\n{}", f.join("\n"));
    }

    #[test]
    fn lost_events_and_exited_processes_stand_out() {
        let view = View {
            group: By::Pid,
            sort: SortBy::Total,
            reverse: false,
        };
        let f = render(view, 12, &[target(8, "crosvm")]);
        assert!(f[0].ends_with("lost 12"), "{}", f[0]);
        assert_eq!(f[3], "      exited: 8 crosvm");
        assert!(f[6].starts_with("PROCESS "), "{}", f[6]);
        assert!(f[7].starts_with("7       "), "{}", f[7]);

        let mut agg = Aggregate::new(SEC);
        add(&mut agg, 1);
        let rows = rows_of(&agg, &Rates::default(), &BTreeMap::new(), view);
        let plan = plan();
        let s = Summary {
            total: 3,
            lost: 12,
            ..summary(&plan)
        };
        let laid = lines(&layout(&s, &rows, view, 100, Detail::Basic));
        let lost = laid[0].last().expect("lost count");
        assert_eq!((lost.text.as_str(), lost.tone), ("12", Tone::Alert));
        let header = &laid[laid.len() - 2];
        let sorted: Vec<_> = header.iter().filter(|s| s.tone == Tone::Sorted).collect();
        assert_eq!(sorted.len(), 1);
        assert_eq!(sorted[0].text.trim(), "TOTAL");
    }

    #[test]
    fn narrow_screens_lose_columns_then_label_width() {
        let mut agg = Aggregate::new(SEC);
        add(&mut agg, 1);
        let view = View {
            group: By::Vcpu,
            sort: SortBy::Rate,
            reverse: false,
        };
        let by_vcpu = rows_of(&agg, &Rates::default(), &BTreeMap::new(), view);
        let plan = plan();
        let s = Summary {
            total: 3,
            ..summary(&plan)
        };
        let text = |l: &Line| l.iter().map(|s| s.text.as_str()).collect::<String>();
        let wide = layout(&s, &by_vcpu, view, 100, Detail::Basic);
        assert_eq!(wide.hidden_columns, 0);
        assert!(lines(&wide).iter().all(|l| text(l).chars().count() <= 100));
        let narrow = layout(&s, &by_vcpu, view, 60, Detail::Basic);
        assert_eq!(
            narrow.hidden_columns, 2,
            "the cycle max and the VMM stage go"
        );
        let narrow: Vec<String> = lines(&narrow).iter().map(text).collect();
        assert!(
            narrow[1..].iter().all(|l| l.chars().count() <= 60),
            "{narrow:#?}"
        );
        assert_eq!(
            narrow[1],
            "hooks cycle=tracepoint  vendor_run=kprobe:pvm_vcpu_run"
        );
        assert_eq!(
            narrow[2],
            "      fast_pio=fentry:kvm_fast_pio  no hook: handler"
        );
        assert_eq!(
            narrow[6],
            "VCPU         EXITS/s TOTAL  SHARE   →VMM    p50    p99"
        );

        // Labels stay whole while columns can go...
        let by_reason = rows_of(&agg, &Rates::default(), &BTreeMap::new(), View::default());
        let last = |width| {
            let laid = layout(&s, &by_reason, View::default(), width, Detail::Basic);
            let line = lines(&laid).last().map(text).unwrap_or_default();
            (laid.hidden_columns, line)
        };
        let line = "pio (in-kernel)       -     1  33.3% 2.00µs 2.00µs";
        assert_eq!(last(50), (2, line.to_owned()));
        // ... then give up width, down to 12 characters.
        assert_eq!(
            last(30),
            (4, "pio (in-ker…       -     1  33.3%".to_owned())
        );
    }

    #[test]
    fn empty_table_says_so() {
        let plan = plan();
        let s = Summary {
            elapsed: Duration::from_secs(3 * 3600 + 62),
            ..summary(&plan)
        };
        let f = frame(&s, &[], View::default());
        assert!(
            f[0].contains("elapsed 3:01:02   exits 0   rate -/s"),
            "{}",
            f[0]
        );
        assert_eq!(f[2], "pids  all processes");
        assert_eq!(f.last().map(String::as_str), Some("(no exits yet)"));
    }

    #[test]
    fn wide_screens_show_more_latencies_which_go_first_when_narrow() {
        let mut agg = Aggregate::new(SEC);
        add(&mut agg, 10);
        let rows = rows_of(&agg, &Rates::default(), &BTreeMap::new(), View::default());
        let plan = plan();
        let s = Summary {
            total: 30,
            ..summary(&plan)
        };
        let text = |l: &Line| l.iter().map(|s| s.text.as_str()).collect::<String>();
        let header = |width| {
            let f = layout(&s, &rows, View::default(), width, Detail::Full);
            (text(&f.header[1]).trim_end().to_owned(), f.hidden_columns)
        };
        let full = "REASON          EXITS/s TOTAL  SHARE    p50    p90    p99  p99.9    max   mean    vmm p50";
        assert_eq!(header(200), (full.replace("    vmm p50", "    p50"), 0));
        // mean, p99.9 and p90 go before the VMM stage
        let (h, hidden) = header(80);
        assert_eq!(hidden, 1, "{h}");
        assert!(h.ends_with("p50    p90    p99  p99.9    max    p50"), "{h}");
        let (h, hidden) = header(70);
        assert_eq!(hidden, 3, "{h}");
        assert!(h.ends_with("p50    p99    max    p50"), "{h}");
    }

    #[test]
    fn exited_rows_stand_out_and_an_empty_filter_says_so() {
        let mut agg = Aggregate::new(SEC);
        add(&mut agg, 1);
        let mut rows = rows_of(&agg, &Rates::default(), &BTreeMap::new(), View::default());
        rows[0].exited = true;
        let plan = plan();
        let mut s = Summary {
            total: 3,
            filtered: true,
            ..summary(&plan)
        };
        let f = layout(&s, &rows, View::default(), 100, Detail::Basic);
        let tones: Vec<_> = f.rows.iter().map(|l| l[0].tone).collect();
        assert_eq!(tones, [Tone::Alert, Tone::Plain]);
        let note = |s: &Summary| frame(s, &[], View::default()).pop();
        assert_eq!(note(&s).as_deref(), Some("(no row matches the filter)"));
        s.total = 0;
        assert_eq!(note(&s).as_deref(), Some("(no exits yet)"));
    }
}
