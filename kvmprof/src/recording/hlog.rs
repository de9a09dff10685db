//! Reads any HdrHistogram interval log: kvmprof's own data files (through [`datafile::parse_file`])
//! and `.hlog` files written by other implementations (Java `HistogramLogWriter`, Python
//! `hdrh`, kvmprof's `export --format hlog`), so every command that reads recordings also
//! reads those.
//!
//! A foreign log has no kvmprof header, so its histograms are mapped onto kvmprof's series:
//! - a histogram tagged like a kvmprof series (`p<pid>/v<vcpu>/<space>:<code>/<stage>`) is
//!   that series;
//! - untagged histograms are one series, `p0/v-/none:0x0/cycle` (reason `unknown`), unless
//!   the log also has kvmprof tags: then they are the sum of all exits' cycles that kvmprof
//!   writes for generic tools, and are skipped so nothing is counted twice;
//! - histograms under other tags are skipped, and said so on stderr;
//! - empty histograms are skipped (they add nothing).
//!
//! Values are taken to be ns, as kvmprof records them. Exit counts are the samples of the
//! series (the exact counts and sums only a kvmprof header has are estimated from the
//! histograms: a sum is mean × samples). Intervals are put on a grid of the log's most
//! common interval length (at least 1 ms), timestamps on the wall clock.
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::Histogram;
use kvmprof_common::STAGES;

use crate::data::aggregate::{self, Aggregate, Key, MIN_INTERVAL_NS};
use crate::data::model::{Reason, ReasonSpace, Stage, Vendor};
use crate::recording::datafile;
use crate::recording::header::{Header, Source};

/// The series of an untagged histogram of a foreign log.
pub const UNTAGGED: Key = Key {
    pid: 0,
    vcpu: None,
    reason: Reason {
        space: ReasonSpace::None,
        code: 0,
    },
};

/// Reads a kvmprof data file or a foreign interval log. Errors are one line naming the file.
pub fn open(path: &Path) -> Result<(Header, Aggregate)> {
    let bytes = crate::recording::input::read(path)?;
    if bytes.starts_with(datafile::HEADER_MARK.as_bytes()) {
        return datafile::parse_file(path, &bytes);
    }
    let log = parse(&bytes).map_err(|e| anyhow!("{}: {e:#}", path.display()))?;
    if !log.skipped_tags.is_empty() {
        let tags: Vec<&str> = log.skipped_tags.keys().map(String::as_str).collect();
        let n: u64 = log.skipped_tags.values().sum();
        eprintln!(
            "kvmprof: {}: skipped {n} histograms under tags that are not kvmprof series: {}",
            path.display(),
            tags.join(", ")
        );
    }
    Ok((log.header, log.aggregate))
}

/// A foreign log as kvmprof series.
struct Foreign {
    header: Header,
    aggregate: Aggregate,
    /// Histograms skipped per foreign tag.
    skipped_tags: BTreeMap<String, u64>,
}

/// One histogram line: absolute start and length on the wall clock, in ns.
struct Line {
    start_ns: u64,
    length_ns: u64,
    tag: Option<String>,
    hist: Histogram<u64>,
    blob: Vec<u8>,
}

fn parse(bytes: &[u8]) -> Result<Foreign> {
    if bytes.is_empty() {
        bail!("empty file");
    }
    let mut start_time: Option<Duration> = None;
    let mut base_time: Option<Duration> = None;
    let mut lines = Vec::new();
    for (line, n) in bytes.split_inclusive(|&b| b == b'\n').zip(1..) {
        if !line.ends_with(b"\n") {
            bail!("truncated: line {n} ends mid-line");
        }
        let text = &line[..line.len() - 1];
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.is_empty() || text.starts_with(b"\"") {
            continue; // blank or the legend
        }
        if text.starts_with(b"#") {
            match IntervalLogIterator::new(line).next() {
                Some(Ok(LogEntry::StartTime(t))) => start_time = start_time.or(Some(t)),
                Some(Ok(LogEntry::BaseTime(t))) => base_time = base_time.or(Some(t)),
                _ => {} // a plain comment
            }
            continue;
        }
        let entry = match IntervalLogIterator::new(line).next() {
            Some(Ok(LogEntry::Interval(h))) => h,
            _ if lines.is_empty() => {
                bail!("not an HdrHistogram interval log (line {n} is not a histogram)")
            }
            _ => bail!("line {n}: not an interval histogram"),
        };
        if entry.encoded_histogram().starts_with("DHIST") {
            // Java's DoubleHistogram: values are scaled by a ratio whose unit the log does
            // not say, so they cannot be taken as ns.
            bail!(
                "line {n}: a DoubleHistogram (floating-point values in a unit the log does not \
                 give); kvmprof reads integer histograms of ns"
            );
        }
        let (hist, blob) = datafile::decode_histogram(entry.encoded_histogram())
            .map_err(|e| anyhow!("line {n}: {e:#}"))?;
        // As Java's HistogramLogReader: timestamps count from BaseTime; without one, they
        // are absolute unless more than a year before StartTime.
        let ts = entry.start_timestamp();
        let base = base_time.unwrap_or_else(|| match start_time {
            Some(s) if ts + Duration::from_secs(365 * 86_400) < s => s,
            _ => Duration::ZERO,
        });
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        lines.push(Line {
            start_ns: nanos(base + ts),
            length_ns: nanos(entry.duration()),
            tag: entry.tag().map(|t| t.as_str().to_owned()),
            hist,
            blob,
        });
    }
    if lines.is_empty() {
        bail!("no histograms: not an HdrHistogram interval log");
    }
    build(lines, start_time)
}

/// A histogram of a series: start, series, histogram, its compressed encoding.
type Series = (u64, Key, Stage, Histogram<u64>, Vec<u8>);

fn build(lines: Vec<Line>, start_time: Option<Duration>) -> Result<Foreign> {
    let interval_ns = common_length(&lines);
    let tagged = lines.iter().any(|l| {
        l.tag
            .as_deref()
            .is_some_and(|t| datafile::parse_tag(t).is_some())
    });
    let mut skipped_tags: BTreeMap<String, u64> = BTreeMap::new();
    let mut series: Vec<Series> = Vec::new();
    let mut first = u64::MAX;
    let mut end = 0u64;
    for l in lines {
        let (key, stage) = match l.tag.as_deref() {
            None if tagged => continue,
            None => (UNTAGGED, Stage::Cycle),
            Some(t) => match datafile::parse_tag(t) {
                Some(s) => s,
                None => {
                    *skipped_tags.entry(t.to_owned()).or_default() += 1;
                    continue;
                }
            },
        };
        if l.hist.is_empty() {
            continue;
        }
        first = first.min(l.start_ns);
        end = end.max(l.start_ns.saturating_add(l.length_ns));
        series.push((l.start_ns, key, stage, l.hist, l.blob));
    }
    if series.is_empty() {
        let tags: Vec<&str> = skipped_tags.keys().map(String::as_str).collect();
        bail!(
            "no histogram kvmprof can read (only empty ones, or tags that are not kvmprof series: {})",
            tags.join(", ")
        );
    }

    // Totals per series, then the intervals (which add up the histograms).
    let mut totals: BTreeMap<Key, [Option<(u64, f64)>; STAGES]> = BTreeMap::new();
    for (_, key, stage, hist, _) in &series {
        let slot = &mut totals.entry(*key).or_insert([None; STAGES])[stage.index()];
        let (n, sum) = slot.get_or_insert((0, 0.0));
        *n += hist.len();
        *sum += hist.mean() * hist.len() as f64;
    }
    let mut a = Aggregate::new(interval_ns);
    for (key, stages) in &totals {
        let count = stages.iter().flatten().map(|(n, _)| *n).max().unwrap_or(0);
        let sums = stages.map(|s| s.map(|(_, sum)| sum.round() as u64));
        a.restore_key(*key, count, &BTreeMap::new(), sums);
    }
    for (start_ns, key, stage, hist, blob) in series {
        a.restore_interval(start_ns, key, stage, &hist, blob);
    }
    a.restore_span(first, end);
    let start_unix_ns = start_time.map_or(first, |s| u64::try_from(s.as_nanos()).unwrap_or(first));
    let header = Header {
        source: Source::Hlog,
        host: "unknown".into(),
        kernel: "unknown".into(),
        vendor: Vendor::Unknown,
        hooks: Vec::new(),
        tracepoints: vec![],
        cycle_source: "unknown (an interval log of another tool)".into(),
        processes: Vec::new(),
        start_unix_ns,
        // The aggregate's clock is the wall clock.
        start_ts_ns: start_unix_ns,
        duration_ns: end - first,
        // Another tool's log says nothing of exits whose start was not observed, nor of the
        // kernel's counts or the recording's end.
        ..Header::default()
    };
    Ok(Foreign {
        header,
        aggregate: a,
        skipped_tags,
    })
}

/// The most common interval length, to the millisecond the log format keeps.
fn common_length(lines: &[Line]) -> u64 {
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for l in lines {
        let ms = (l.length_ns + 500_000) / 1_000_000;
        *counts.entry(ms).or_default() += 1;
    }
    let ms = counts
        .into_iter()
        .max_by_key(|&(ms, n)| (n, ms))
        .map_or(1000, |(ms, _)| ms);
    (ms * 1_000_000).max(MIN_INTERVAL_NS)
}

/// The V2 compressed encoding of a histogram, as interval logs carry it (base64'd).
pub fn encode(h: &Histogram<u64>) -> Result<Vec<u8>> {
    aggregate::encode(h).context("encode a histogram")
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    const SEC: u64 = 1_000_000_000;

    fn hist(values: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut h = aggregate::new_histogram();
        for v in values {
            h.record(v).expect("records");
        }
        h
    }

    fn line(tag: Option<&str>, start: f64, h: &Histogram<u64>) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(encode(h).expect("encodes"));
        let tag = tag.map_or_else(String::new, |t| format!("Tag={t},"));
        format!("{tag}{start:.3},1.000,0.0,{b64}\n")
    }

    const HEAD: &str = "#[Histogram log format version 1.3]\n\
                        #[StartTime: 1700000000.000 (seconds since epoch), Tue Nov 14]\n\
                        #[BaseTime: 1700000000.000 (seconds since epoch)]\n\
                        \"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n";

    #[test]
    fn an_untagged_log_is_one_series_on_the_wall_clock() {
        let h = hist(1000..2000);
        let text = format!("{HEAD}{}{}", line(None, 0.0, &h), line(None, 1.0, &h));
        let f = parse(text.as_bytes()).expect("parses");
        let s = &f.aggregate.keys()[&UNTAGGED];
        assert_eq!(s.count, 2000);
        assert_eq!(s.stage(Stage::Cycle).expect("cycle").hist.len(), 2000);
        assert_eq!(f.header.start_unix_ns, 1_700_000_000 * SEC);
        assert_eq!(f.header.duration_ns, 2 * SEC);
        assert_eq!(f.aggregate.interval_ns(), SEC);
        assert_eq!(
            f.aggregate.span(),
            Some((1_700_000_000 * SEC, 1_700_000_002 * SEC))
        );
    }

    #[test]
    fn kvmprof_tags_are_series_and_the_untagged_sum_and_foreign_tags_are_skipped() {
        let h = hist([5000, 6000]);
        let text = format!(
            "{HEAD}{}{}{}{}",
            line(Some("p7/v0/svm:0x7b/cycle"), 0.0, &h),
            line(Some("other"), 0.0, &h),
            line(None, 0.0, &h),
            line(Some("p7/v0/svm:0x7b/cycle"), 0.0, &hist([])),
        );
        let f = parse(text.as_bytes()).expect("parses");
        assert_eq!(f.aggregate.total_exits(), 2);
        assert_eq!(f.aggregate.keys().len(), 1);
        assert_eq!(f.skipped_tags, BTreeMap::from([("other".to_owned(), 1)]));
    }

    #[test]
    fn bad_logs_are_one_line_errors() {
        let err = |b: &str| format!("{:#}", parse(b.as_bytes()).err().expect("fails"));
        assert_eq!(err(""), "empty file");
        assert!(err("a,b,c\n1,2,3\n").contains("not an HdrHistogram interval log"));
        assert!(err(HEAD).contains("no histograms"));
        let h = hist([1]);
        let full = format!("{HEAD}{}", line(None, 0.0, &h));
        assert!(err(&full[..full.len() - 5]).contains("truncated: line 5"));
        assert!(err(&format!("{full}garbage\n")).contains("line 6: not an interval histogram"));
        let only_foreign = format!("{HEAD}{}", line(Some("x"), 0.0, &h));
        assert!(err(&only_foreign).contains("tags that are not kvmprof series: x"));
        let bad = full.replace("HISTF", "HISTA");
        assert!(err(&bad).contains("line 5: corrupt"));
    }
}
