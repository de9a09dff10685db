//! `kvmprof diff A B`: two recordings side by side, per reason and stage: exits, rates,
//! p50/p99/p99.9/max and their ratios B/A. A change is marked `*` when it is beyond what the
//! histograms can resolve (the two values fall in different HDR buckets; counts are exact, so
//! any change of a count is marked). Whether a change matters beyond that is the reader's
//! call: the mark says only that it is not an artefact of the histograms.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::backend::reason_name;
use crate::data::aggregate::{Aggregate, IoSpace};
use crate::data::group::Percentiles;
use crate::data::model::{Reason, Stage};
use crate::data::series::{self, Selection};
use crate::recording::header::Header;
use crate::util::units;

pub const JSON_SCHEMA_VERSION: u32 = 1;

/// One side of the comparison.
pub struct Side<'a> {
    /// What to call it (the file name).
    pub name: String,
    pub header: &'a Header,
    pub aggregate: &'a Aggregate,
}

#[derive(Serialize)]
pub struct Diff {
    schema: &'static str,
    schema_version: u32,
    a: SideSummary,
    b: SideSummary,
    rows: Vec<Row>,
    /// `record --detail`: exits per MSR and direction, CPUID leaf, hypercall number and
    /// guest page (fault-in or MMIO) on each side (over all processes), most first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    detail: Vec<DetailRow>,
}

#[derive(Serialize)]
struct DetailRow {
    space: IoSpace,
    /// As in the report's rows (`ports`): MSR index, CPUID leaf and subleaf, hypercall nr,
    /// guest page.
    addr: u64,
    write: bool,
    a: u64,
    b: u64,
}

/// Exits per `--detail` key of `a`, over all its processes and reasons.
fn detail_counts(a: &Aggregate) -> BTreeMap<(IoSpace, u64, bool), u64> {
    let mut out = BTreeMap::new();
    for (p, s) in a.ports().iter().filter(|(p, _)| p.space.is_detail()) {
        *out.entry((p.space, p.addr, p.write)).or_default() += s.count;
    }
    out
}

/// The `--detail` rows of both sides.
fn detail_rows(a: &Aggregate, b: &Aggregate) -> Vec<DetailRow> {
    let (ca, cb) = (detail_counts(a), detail_counts(b));
    let mut keys: Vec<_> = ca.keys().chain(cb.keys()).copied().collect();
    keys.sort();
    keys.dedup();
    let mut rows: Vec<DetailRow> = keys
        .into_iter()
        .map(|k| DetailRow {
            space: k.0,
            addr: k.1,
            write: k.2,
            a: ca.get(&k).copied().unwrap_or(0),
            b: cb.get(&k).copied().unwrap_or(0),
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.a.max(r.b)));
    rows
}

#[derive(Serialize)]
struct SideSummary {
    name: String,
    source: &'static str,
    host: String,
    kernel: String,
    vendor: &'static str,
    duration_ns: u64,
    total_exits: u64,
    lost: u64,
}

#[derive(Serialize)]
struct Row {
    reason: Reason,
    reason_name: String,
    stage: Stage,
    a: Option<Figures>,
    b: Option<Figures>,
    /// B/A of each figure; absent where a side has no data or A is 0.
    ratio: Option<Ratios>,
    /// Which changes are beyond the histograms' precision (or, for counts, any change).
    beyond_precision: Option<Marks>,
}

#[derive(Clone, Copy, Serialize)]
struct Figures {
    exits: u64,
    rate_per_s: Option<f64>,
    samples: u64,
    p50_ns: u64,
    p99_ns: u64,
    p999_ns: u64,
    max_ns: u64,
}

#[derive(Serialize)]
struct Ratios {
    exits: Option<f64>,
    rate: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    p999: Option<f64>,
    max: Option<f64>,
}

#[derive(Serialize)]
struct Marks {
    exits: bool,
    p50: bool,
    p99: bool,
    p999: bool,
    max: bool,
}

/// Per reason and stage: (exits of the reason, histogram), chosen ones only.
fn table(a: &Aggregate, sel: &Selection) -> BTreeMap<(Reason, Stage), (u64, Histogram<u64>)> {
    let mut out = BTreeMap::new();
    let mut reasons: BTreeMap<Reason, u64> = BTreeMap::new();
    for (key, stats) in a.keys() {
        if sel.reason(key.reason) {
            *reasons.entry(key.reason).or_default() += stats.count;
        }
    }
    for (reason, count) in reasons {
        let one = Selection {
            reasons: vec![series::code_label(reason)],
            stages: sel.stages.clone(),
        };
        for (stage, h) in series::by_stage(a, &one) {
            out.insert((reason, stage), (count, h));
        }
    }
    out
}

fn figures(count: u64, h: &Histogram<u64>, dur: u64) -> Figures {
    let Percentiles { p50, p99, p999, .. } = Percentiles::of(h);
    Figures {
        exits: count,
        rate_per_s: (dur > 0).then(|| count as f64 * 1e9 / dur as f64),
        samples: h.len(),
        p50_ns: p50,
        p99_ns: p99,
        p999_ns: p999,
        max_ns: h.max(),
    }
}

/// Whether `a` (of `ha`) and `b` (of `hb`) differ by more than a histogram bucket.
fn beyond(ha: &Histogram<u64>, a: u64, hb: &Histogram<u64>, b: u64) -> bool {
    let resolution = ha.equivalent_range(a).max(hb.equivalent_range(b));
    a.abs_diff(b) >= resolution
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (a > 0.0).then(|| b / a)
}

/// Compares `b` with `a`.
pub fn diff(a: &Side, b: &Side, sel: &Selection) -> Diff {
    let (da, db) = (
        a.header.duration_for_rates(a.aggregate),
        b.header.duration_for_rates(b.aggregate),
    );
    let (ta, tb) = (table(a.aggregate, sel), table(b.aggregate, sel));
    let mut ids: Vec<(Reason, Stage)> = ta.keys().chain(tb.keys()).copied().collect();
    ids.sort();
    ids.dedup();
    let mut rows: Vec<Row> = ids
        .into_iter()
        .map(|id| {
            let fa = ta.get(&id).map(|(n, h)| (figures(*n, h, da), h));
            let fb = tb.get(&id).map(|(n, h)| (figures(*n, h, db), h));
            let (ratio_row, marks) = match (fa, fb) {
                (Some((x, hx)), Some((y, hy))) => (
                    Some(Ratios {
                        exits: ratio(x.exits as f64, y.exits as f64),
                        rate: x
                            .rate_per_s
                            .zip(y.rate_per_s)
                            .and_then(|(p, q)| ratio(p, q)),
                        p50: ratio(x.p50_ns as f64, y.p50_ns as f64),
                        p99: ratio(x.p99_ns as f64, y.p99_ns as f64),
                        p999: ratio(x.p999_ns as f64, y.p999_ns as f64),
                        max: ratio(x.max_ns as f64, y.max_ns as f64),
                    }),
                    Some(Marks {
                        exits: x.exits != y.exits,
                        p50: beyond(hx, x.p50_ns, hy, y.p50_ns),
                        p99: beyond(hx, x.p99_ns, hy, y.p99_ns),
                        p999: beyond(hx, x.p999_ns, hy, y.p999_ns),
                        max: beyond(hx, x.max_ns, hy, y.max_ns),
                    }),
                ),
                _ => (None, None),
            };
            Row {
                reason: id.0,
                reason_name: reason_name(id.0),
                stage: id.1,
                a: fa.map(|f| f.0),
                b: fb.map(|f| f.0),
                ratio: ratio_row,
                beyond_precision: marks,
            }
        })
        .collect();
    // Busiest reasons first; stages in cycle order within a reason (stable sort).
    let busiest =
        |r: &Row| std::cmp::Reverse(r.a.map_or(0, |f| f.exits).max(r.b.map_or(0, |f| f.exits)));
    rows.sort_by_key(|r| (busiest(r), r.reason, r.stage));
    Diff {
        schema: "kvmprof-diff",
        schema_version: JSON_SCHEMA_VERSION,
        a: summary(a, da),
        b: summary(b, db),
        rows,
        detail: detail_rows(a.aggregate, b.aggregate),
    }
}

fn summary(s: &Side, duration_ns: u64) -> SideSummary {
    SideSummary {
        name: s.name.clone(),
        source: s.header.source.label(),
        host: s.header.host.clone(),
        kernel: s.header.kernel.clone(),
        vendor: s.header.vendor.label(),
        duration_ns,
        total_exits: s.aggregate.total_exits(),
        lost: s.aggregate.lost(),
    }
}

pub fn json(d: &Diff) -> String {
    // Plain structs of strings and numbers: serialization cannot fail.
    serde_json::to_string_pretty(d).expect("diff serializes") + "\n"
}

/// The aligned text table: per reason, per stage three lines (A, B, B/A).
pub fn table_text(d: &Diff) -> String {
    let mut out = String::new();
    for (label, s) in [("A", &d.a), ("B", &d.b)] {
        let _ = writeln!(
            out,
            "{label}: {}  ({} recording, host {}, kernel {}, {}; {} exits in {}, {} lost)",
            s.name,
            s.source,
            s.host,
            s.kernel,
            s.vendor,
            s.total_exits,
            units::ns(s.duration_ns),
            s.lost
        );
    }
    let _ = writeln!(
        out,
        "*: beyond the histograms' precision (different HDR buckets; any change of a count)"
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<24}{:>4}{:>10}{:>9}{:>9}{:>9}{:>9}{:>9}",
        "reason / stage", "", "exits", "rate/s", "p50", "p99", "p99.9", "max"
    );
    let mut last_reason = None;
    for r in &d.rows {
        if last_reason != Some(r.reason) {
            let _ = writeln!(out, "{}", r.reason_name);
            last_reason = Some(r.reason);
        }
        let stage = format!("  {}", r.stage.name());
        for (i, (label, f)) in [("A", r.a), ("B", r.b)].into_iter().enumerate() {
            let lead = if i == 0 { stage.as_str() } else { "" };
            let cells = match f {
                None => format!("{:>10}", "-"),
                Some(f) => format!(
                    "{:>10}{:>9}{:>9}{:>9}{:>9}{:>9}",
                    f.exits,
                    f.rate_per_s.map_or_else(|| "-".to_owned(), units::si),
                    units::ns(f.p50_ns),
                    units::ns(f.p99_ns),
                    units::ns(f.p999_ns),
                    units::ns(f.max_ns)
                ),
            };
            let _ = writeln!(out, "{lead:<24}{label:>4}{cells}");
        }
        let cell = |v: Option<f64>, marked: bool| match v {
            None => "-".to_owned(),
            Some(x) => format!("{}{}", ratio_text(x), if marked { "*" } else { " " }),
        };
        let line = match (&r.ratio, &r.beyond_precision) {
            (Some(q), Some(m)) => format!(
                "{:>10}{:>9}{:>9}{:>9}{:>9}{:>9}",
                cell(q.exits, m.exits),
                cell(q.rate, false),
                cell(q.p50, m.p50),
                cell(q.p99, m.p99),
                cell(q.p999, m.p999),
                cell(q.max, m.max)
            ),
            _ if r.a.is_none() => format!("{:>10}", "only in B"),
            _ => format!("{:>10}", "only in A"),
        };
        let _ = writeln!(out, "{:<24}{:>4}{}", "", "B/A", line.trim_end());
    }
    detail_text(&mut out, &d.detail);
    out
}

/// `--detail`'s keys, exits in A and B and B/A.
fn detail_text(out: &mut String, rows: &[DetailRow]) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "MSRs, CPUID leaves, hypercalls and guest pages (record --detail)"
    );
    let _ = writeln!(
        out,
        "{:<10}{:<14}{:<9}{:>10}{:>10}{:>9}",
        "what", "key", "dir", "A", "B", "B/A"
    );
    for r in rows {
        let b_a = ratio(r.a as f64, r.b as f64).map_or_else(|| "-".to_owned(), ratio_text);
        let _ = writeln!(
            out,
            "{:<10}{:<14}{:<9}{:>10}{:>10}{b_a:>9}",
            r.space.name(),
            r.space.key_text(r.addr),
            r.space.direction(r.write),
            r.a,
            r.b
        );
    }
}

/// A ratio in at most 6 characters, so that columns 9 wide keep a space between them:
/// `0.97`, `12.50`, `350`, `12.3k`.
fn ratio_text(x: f64) -> String {
    if !x.is_finite() {
        "inf".to_owned()
    } else if x < 100.0 {
        format!("{x:.2}")
    } else if x < 10_000.0 {
        format!("{x:.0}")
    } else {
        units::si(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::model::Exit;
    use crate::testdata::{self, header, HLT, IO};

    fn agg(exits: &[(Reason, u64, u64)]) -> Aggregate {
        let mut a = Aggregate::new(1_000_000_000);
        for &(reason, n, cycle) in exits {
            for i in 0..n {
                let stages = testdata::cycle(Some(cycle + i % 3));
                a.add(&Exit {
                    ts_ns: i,
                    ..testdata::exit(1, 0, reason, stages)
                });
            }
        }
        a
    }

    #[test]
    fn ratios_and_marks_follow_the_histograms_precision() {
        let (h, a, b) = (
            header(),
            agg(&[(IO, 1000, 20_000), (HLT, 10, 50_000)]),
            agg(&[(IO, 1000, 20_001), (HLT, 20, 100_000)]),
        );
        let side = |name: &str, a| Side {
            name: name.into(),
            header: &h,
            aggregate: a,
        };
        let d = diff(&side("a", &a), &side("b", &b), &Selection::default());
        let io = d.rows.iter().find(|r| r.reason == IO).expect("io");
        let m = io.beyond_precision.as_ref().expect("both sides");
        assert!(!m.exits && !m.p50, "20000 vs 20001 ns is within one bucket");
        let hlt = d.rows.iter().find(|r| r.reason == HLT).expect("hlt");
        let q = hlt.ratio.as_ref().expect("both sides");
        assert_eq!(q.exits, Some(2.0));
        assert!((q.p50.expect("p50") - 2.0).abs() < 0.01);
        let m = hlt.beyond_precision.as_ref().expect("both sides");
        assert!(m.exits && m.p50 && m.max);
        let text = table_text(&d);
        assert!(text.contains("\nhlt\n  cycle"), "{text}");
        assert!(text.contains("2.00*"), "{text}");
        assert!(text.lines().all(|l| l.chars().count() <= 100), "{text}");
        let v: serde_json::Value = serde_json::from_str(&json(&d)).expect("JSON");
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["rows"][0]["reason_name"], "io");
    }

    /// `--detail`'s keys on each side, summed over processes, one only in B.
    #[test]
    fn detail_keys_are_compared_side_by_side() {
        use crate::data::model::Access;
        let h = header();
        let with = |msrs: &[(u32, u64)]| {
            let mut a = agg(&[(IO, 5, 1000)]);
            for &(index, n) in msrs {
                for _ in 0..n {
                    let mut e = testdata::exit(1, 0, IO, testdata::cycle(Some(900)));
                    e.access = Some(Access::Msr {
                        index,
                        write: false,
                    });
                    a.add(&e);
                }
            }
            a
        };
        let (a, mut b) = (with(&[(0x1b, 4)]), with(&[(0x1b, 8), (0x6e0, 3)]));
        let mut fault = testdata::exit(1, 0, IO, testdata::cycle(Some(900)));
        fault.access = Some(Access::Page { gpa: 0x2_0000 });
        b.add(&fault);
        let side = |a| Side {
            name: "x".into(),
            header: &h,
            aggregate: a,
        };
        let d = diff(&side(&a), &side(&b), &Selection::default());
        let rows: Vec<(u64, u64, u64)> = d.detail.iter().map(|r| (r.addr, r.a, r.b)).collect();
        assert_eq!(rows, [(0x1b, 4, 8), (0x6e0, 0, 3), (0x2_0000, 0, 1)]);
        let text = table_text(&d);
        let line = text.lines().find(|l| l.contains("0x1b")).expect("row");
        assert_eq!(
            line.split_whitespace().collect::<Vec<_>>(),
            ["msr", "0x1b", "read", "4", "8", "2.00"]
        );
        let line = text.lines().find(|l| l.contains("0x20000")).expect("row");
        assert_eq!(
            line.split_whitespace().collect::<Vec<_>>(),
            ["page", "0x20000", "fault-in", "0", "1", "-"]
        );
    }

    #[test]
    fn large_ratios_keep_the_columns_apart() {
        let h = header();
        let (a, b) = (agg(&[(IO, 1, 100)]), agg(&[(IO, 123_456, 50_000_000_000)]));
        let side = |a| Side {
            name: "x".into(),
            header: &h,
            aggregate: a,
        };
        let text = table_text(&diff(&side(&a), &side(&b), &Selection::default()));
        let ratios = text
            .lines()
            .find(|l| l.trim_start().starts_with("B/A"))
            .expect("a B/A line");
        // B/A, then exits, rate, p50, p99, p99.9 and max: seven words.
        assert_eq!(ratios.split_whitespace().count(), 7, "{text}");
        assert_eq!(ratio_text(123_456.0), "123k");
        assert_eq!(ratio_text(350.4), "350");
        assert_eq!(ratio_text(0.971), "0.97");
    }

    #[test]
    fn a_reason_on_one_side_only_is_shown_as_such() {
        let h = header();
        let (a, b) = (agg(&[(IO, 5, 1000)]), agg(&[(IO, 5, 1000), (HLT, 1, 10)]));
        let side = |a| Side {
            name: "x".into(),
            header: &h,
            aggregate: a,
        };
        let text = table_text(&diff(&side(&a), &side(&b), &Selection::default()));
        assert!(text.contains("only in B"), "{text}");
    }
}
