//! `kvmprof export`: a recording in formats other tools read.
//!
//! - `hlog`: a standalone HdrHistogram interval log (V2 compressed histograms, tags as in the
//!   data file, one untagged histogram per interval with all exits' cycles), without
//!   kvmprof's header: what Java's `HistogramLogProcessor` and Python's `hdrh` expect.
//! - `hgrm`: the percentile distribution text Java's `HistogramLogProcessor` writes (and
//!   HdrHistogram's plotters read), of the chosen reasons and one stage ([`super::hgrm`]).
//! - `csv`: one row per group and stage; with `--intervals`, one per interval, group and stage.
//! - `json`: every series with its statistics and its histogram (base64 V2 compressed, which
//!   any HdrHistogram implementation decodes), under a schema version.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{anyhow, Result};
use base64::Engine as _;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::backend::reason_name;
use crate::data::aggregate::{self, Aggregate, Key};
use crate::data::group::{By, Percentiles};
use crate::data::model::{Reason, Stage};
use crate::data::series::{self, Selection};
use crate::recording::datafile;
use crate::recording::header::Header;

/// Version of the JSON export's layout; bumped when a field changes meaning or goes away.
pub const JSON_SCHEMA_VERSION: u32 = 1;

/// The unit of values in a `.hgrm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Unit {
    Ns,
    Us,
    Ms,
}

impl Unit {
    /// ns per unit: HdrHistogram's "output value unit scaling ratio".
    pub fn ratio(self) -> f64 {
        match self {
            Unit::Ns => 1.0,
            Unit::Us => 1e3,
            Unit::Ms => 1e6,
        }
    }
}

/// The interval log's BaseTime on the exits' clock: the start of the first interval.
pub fn log_base_ts(h: &Header, a: &Aggregate) -> Result<u64> {
    let mut first = None;
    a.for_each_interval(|start, _, _, _| {
        first.get_or_insert(start);
        Ok(())
    })?;
    Ok(first.unwrap_or(h.start_ts_ns))
}

/// A standalone interval log of every series.
pub fn hlog(h: &Header, a: &Aggregate) -> Result<Vec<u8>> {
    let fail = |e: &dyn std::fmt::Display| anyhow!("write the interval log: {e}");
    let base_ts = log_base_ts(h, a)?;
    let unix = |ns: u64| UNIX_EPOCH + Duration::from_nanos(ns);
    let mut out = Vec::new();
    let comment = format!(
        "kvmprof export of a {} recording on {} ({}): KVM exit latencies in ns, tags \
         p<pid>/v<vcpu|->/<space>:<reason code>/<stage>; untagged: all exits' cycles",
        h.source.label(),
        h.host,
        h.kernel
    );
    // As in the data file: the legend goes between the header the builder writes and the
    // histograms, so two writers take turns.
    IntervalLogWriterBuilder::new()
        .add_comment(&comment)
        .add_comment("[Histogram log format version 1.3]")
        .with_start_time(unix(h.log_start_unix_ns(base_ts)))
        .with_base_time(unix(h.wall_ns(base_ts)))
        .begin_log_with(&mut out, &mut V2DeflateSerializer::new())
        .map_err(|e| fail(&e))?;
    out.extend_from_slice(
        b"\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n",
    );
    let mut serializer = V2DeflateSerializer::new();
    let mut log = IntervalLogWriterBuilder::new()
        .begin_log_with(&mut out, &mut serializer)
        .map_err(|e| fail(&e))?;
    let length = Duration::from_nanos(a.interval_ns());
    let mut write = |start: u64, hist: &Histogram<u64>, tag: Option<&str>| -> Result<()> {
        let offset = Duration::from_nanos(start.saturating_sub(base_ts));
        log.write_histogram(hist, offset, length, tag.and_then(Tag::new))
            .map_err(|e| fail(&e))
    };
    let mut all: Option<(u64, Histogram<u64>)> = None;
    a.for_each_interval(|start, key, stage, hist| {
        if let Some((s, total)) = all.take_if(|(s, _)| *s != start) {
            write(s, &total, None)?;
        }
        write(start, hist, Some(&datafile::tag(key, stage)))?;
        if stage == Stage::Cycle {
            let (_, total) = all.get_or_insert_with(|| (start, aggregate::new_histogram()));
            series::add(total, hist);
        }
        Ok(())
    })?;
    if let Some((s, total)) = all {
        write(s, &total, None)?;
    }
    Ok(out)
}

/// Summary columns shared by the CSV and JSON exports.
#[derive(Serialize)]
struct Stats {
    samples: u64,
    mean_ns: f64,
    p50_ns: u64,
    p90_ns: u64,
    p99_ns: u64,
    p999_ns: u64,
    max_ns: u64,
}

impl Stats {
    fn of(h: &Histogram<u64>) -> Self {
        let p = Percentiles::of(h);
        Stats {
            samples: h.len(),
            mean_ns: h.mean(),
            p50_ns: p.p50,
            p90_ns: p.p90,
            p99_ns: p.p99,
            p999_ns: p.p999,
            max_ns: p.max,
        }
    }
}

fn rate(n: u64, ns: u64) -> f64 {
    if ns == 0 {
        0.0
    } else {
        n as f64 * 1e9 / ns as f64
    }
}

/// Quotes a CSV field when it needs it (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// One row per group and stage: exits of the group, rate, samples and percentiles in ns.
pub fn csv(h: &Header, a: &Aggregate, by: By, sel: &Selection) -> String {
    let dur = h.duration_for_rates(a);
    let mut out = String::from(
        "group,stage,exits,rate_per_s,samples,sum_ns,mean_ns,p50_ns,p90_ns,p99_ns,p999_ns,max_ns\n",
    );
    for (group, g) in series::groups(a, by, sel) {
        for (stage, hist) in &g.hists {
            let s = Stats::of(hist);
            let _ = writeln!(
                out,
                "{},{},{},{:.3},{},{},{:.1},{},{},{},{},{}",
                csv_field(&group),
                stage.name(),
                g.count,
                rate(g.count, dur),
                s.samples,
                g.sums.get(stage).copied().unwrap_or(0),
                s.mean_ns,
                s.p50_ns,
                s.p90_ns,
                s.p99_ns,
                s.p999_ns,
                s.max_ns
            );
        }
    }
    out
}

/// One row per interval, group and stage (samples in the interval, their rate and
/// percentiles); `start_s` counts from the first interval.
pub fn csv_intervals(a: &Aggregate, by: By, sel: &Selection) -> Result<String> {
    let mut per: BTreeMap<(u64, String, Stage), Histogram<u64>> = BTreeMap::new();
    a.for_each_interval(|start, key, stage, hist| {
        if sel.reason(key.reason) && sel.stage(stage) {
            let id = (start, series::group_of(&key, by), stage);
            series::add(per.entry(id).or_insert_with(aggregate::new_histogram), hist);
        }
        Ok(())
    })?;
    let base = per.keys().next().map_or(0, |k| k.0);
    let mut out =
        String::from("start_s,length_s,group,stage,samples,rate_per_s,p50_ns,p99_ns,max_ns\n");
    let length = a.interval_ns();
    for ((start, group, stage), hist) in per {
        let s = Stats::of(&hist);
        let _ = writeln!(
            out,
            "{:.3},{:.3},{},{},{},{:.3},{},{},{}",
            (start - base) as f64 / 1e9,
            length as f64 / 1e9,
            csv_field(&group),
            stage.name(),
            s.samples,
            rate(s.samples, length),
            s.p50_ns,
            s.p99_ns,
            s.max_ns
        );
    }
    Ok(out)
}

#[derive(Serialize)]
struct JsonExport<'a> {
    schema: &'static str,
    schema_version: u32,
    header: &'a Header,
    interval_ns: u64,
    duration_ns: u64,
    total_exits: u64,
    lost: u64,
    /// One per (pid, vCPU, reason) and stage, as tagged in the interval log.
    series: Vec<JsonSeries>,
    #[serde(skip_serializing_if = "Option::is_none")]
    intervals: Option<Vec<JsonInterval>>,
    /// `record --detail`: the MSR, CPUID and hypercall rows and the guest RIPs, as
    /// `report --format json` has them (`ports` rows of those spaces, `rips`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    detail: Vec<super::report::PortRow>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    rips: Vec<super::report::RipRow>,
}

#[derive(Serialize)]
struct JsonSeries {
    tag: String,
    pid: u32,
    vcpu: Option<u32>,
    reason: Reason,
    reason_name: String,
    stage: Stage,
    /// Exits of this (pid, vCPU, reason), whether or not the stage was measured.
    exits: u64,
    sum_ns: u64,
    #[serde(flatten)]
    stats: Stats,
    /// Base64 of the V2 compressed histogram (values in ns).
    histogram: String,
}

#[derive(Serialize)]
struct JsonInterval {
    /// Interval start on the recording's clock.
    start_ns: u64,
    tag: String,
    #[serde(flatten)]
    stats: Stats,
    histogram: String,
}

fn b64(h: &Histogram<u64>) -> Result<String> {
    let blob = aggregate::encode(h).map_err(|e| anyhow!("encode a histogram: {e}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(blob))
}

/// Every chosen series with its statistics and histogram; with `intervals`, every interval
/// histogram too.
pub fn json(h: &Header, a: &Aggregate, sel: &Selection, intervals: bool) -> Result<String> {
    let chosen = |key: &Key, stage: Stage| sel.reason(key.reason) && sel.stage(stage);
    let mut series = Vec::new();
    for (key, stats) in a.keys() {
        for stage in Stage::ALL {
            let Some(st) = stats.stage(stage).filter(|s| !s.hist.is_empty()) else {
                continue;
            };
            if !chosen(key, stage) {
                continue;
            }
            series.push(JsonSeries {
                tag: datafile::tag(*key, stage),
                pid: key.pid,
                vcpu: key.vcpu,
                reason: key.reason,
                reason_name: reason_name(key.reason),
                stage,
                exits: stats.count,
                sum_ns: st.sum_ns,
                stats: Stats::of(&st.hist),
                histogram: b64(&st.hist)?,
            });
        }
    }
    let intervals = if intervals {
        let mut v = Vec::new();
        a.for_each_interval(|start_ns, key, stage, hist| {
            if chosen(&key, stage) {
                v.push(JsonInterval {
                    start_ns,
                    tag: datafile::tag(key, stage),
                    stats: Stats::of(hist),
                    histogram: b64(hist)?,
                });
            }
            Ok(())
        })?;
        Some(v)
    } else {
        None
    };
    let export = JsonExport {
        schema: "kvmprof-export",
        schema_version: JSON_SCHEMA_VERSION,
        header: h,
        interval_ns: a.interval_ns(),
        duration_ns: h.duration_for_rates(a),
        total_exits: a.total_exits(),
        lost: a.lost(),
        series,
        intervals,
        detail: super::report::port_rows(a)
            .into_iter()
            .filter(|p| p.space.is_detail())
            .collect(),
        rips: super::report::rip_rows(a),
    };
    Ok(serde_json::to_string_pretty(&export)? + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--detail`'s rows go into the JSON export as the report has them; none without it.
    #[test]
    fn the_json_export_carries_the_detail_rows_and_guest_rips() {
        use crate::data::model::{Access, Tally};
        use crate::testdata::{self, IO};
        let msr = Reason {
            space: crate::data::model::ReasonSpace::Vmx,
            code: 31,
        };
        let mut a = Aggregate::new(testdata::SEC);
        let mut e = testdata::exit(
            7,
            0,
            msr,
            [Some(900), None, None, None, None, None, None, None],
        );
        e.access = Some(Access::Msr {
            index: 0x6e0,
            write: true,
        });
        a.add(&e);
        let plain = json(&testdata::header(), &a, &Selection::default(), false).expect("json");
        let v: serde_json::Value = serde_json::from_str(&plain).expect("parses");
        assert_eq!(v["detail"][0]["name"], "IA32_TSC_DEADLINE");
        assert_eq!(
            (
                v["detail"][0]["p50_cycle_ns"].as_u64(),
                v["detail"][0]["p99_cycle_ns"].as_u64()
            ),
            (Some(900), Some(900))
        );
        assert!(v.get("rips").is_none());
        a.add_tally(&Tally::of_rips(
            testdata::exit(7, 0, IO, [None; 8]),
            vec![(0x1008, 3)],
            0,
        ));
        let v: serde_json::Value = serde_json::from_str(
            &json(&testdata::header(), &a, &Selection::default(), false).expect("json"),
        )
        .expect("parses");
        assert_eq!(
            (v["rips"][0]["rip"].as_u64(), v["rips"][0]["count"].as_u64()),
            (Some(0x1008), Some(3))
        );
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("io"), "io");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("a\"b"), "\"a\"\"b\"");
    }
}
