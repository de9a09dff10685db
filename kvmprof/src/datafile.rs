//! The kvmprof data file (`kvmprof.data`): a valid HdrHistogram interval log (V2 compressed
//! histograms) that other HdrHistogram tools read, plus kvmprof's own metadata in comments.
//!
//! ```text
//! #[kvmprof-header] {"format":"kvmprof","version":1,...}    recording metadata + exact counts
//! #kvmprof data file: ...                                     a note for humans
//! #[Histogram log format version 1.3]
//! #[StartTime: 1700000000.000 (seconds since epoch)]
//! #[BaseTime: 1699999999.000 (seconds since epoch)]
//! "StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"
//! Tag=p1234/v0/svm:0x7b/cycle,0.000,1.000,45123.000,HISTFAAAAC...
//! 0.000,1.000,45123.000,HISTFAAAAC...                         untagged: all exits' cycles
//! #[kvmprof-end] 2                                            number of histogram lines
//! ```
//!
//! One tagged histogram per (key, stage) per interval, values in ns, and per interval one
//! untagged histogram of the cycle of all exits, which generic tools read by default. A tag is
//! `p<pid>/v<vcpu>/<space>:<code>/<stage>`: `<vcpu>` is `-` when unknown, `<space>` one of
//! `user`, `vmx`, `svm`, `tp`, `none` (see [`ReasonSpace`]), `<code>` the reason code in hex
//! and `<stage>` a [`Stage::name`], e.g. `p1234/v0/svm:0x7b/cycle`. Interval timestamps are
//! seconds since BaseTime, the wall time of `base_ts_ns` on the exits' clock.
//!
//! The end marker is written last, so a file cut at a line boundary is still detected as
//! truncated; a file cut mid-line ends without a newline.
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _, Result};
use base64::Engine as _;
use hdrhistogram::serialization::interval_log::{
    IntervalLogHistogram, IntervalLogIterator, IntervalLogWriterBuilder, LogEntry, Tag,
};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;
use kvmprof_common::STAGES;
use serde::{Deserialize, Serialize};

use crate::aggregate::{self, Aggregate, Key, PortKey, PortStats};
use crate::live::Outcome;
use crate::model::{Reason, ReasonSpace, Stage, Vendor};
use crate::selfcost::OwnCost;
use crate::slow::SlowExits;
use crate::target::Target;
use crate::vendor::reason_name;

/// Where `record` writes and `report` reads by default.
pub const DEFAULT_PATH: &str = "kvmprof.data";

const FORMAT: &str = "kvmprof";
const VERSION: u32 = 1;
const HEADER_MARK: &str = "#[kvmprof-header] ";
const END_MARK: &str = "#[kvmprof-end] ";
/// The Java `HistogramLogWriter` writes these two lines; readers may look for them.
const LOG_VERSION: &str = "[Histogram log format version 1.3]";
const LEGEND: &str =
    "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"";
const NOTE: &str = "kvmprof data file: an HdrHistogram interval log of KVM exit latencies in ns. \
                    Tags are p<pid>/v<vcpu|->/<user|vmx|svm|tp|none>:<reason code>/<stage>.";
/// Cookie of a V2 compressed histogram (`V2_COMPRESSED_COOKIE_BASE | 0x10`).
const V2_COMPRESSED_COOKIE: u32 = 0x1c84_9314;

/// Where the exits came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    #[serde(rename = "live")]
    Live,
    #[serde(rename = "ftrace import")]
    FtraceImport,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::Live => "live",
            Source::FtraceImport => "ftrace import",
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub source: Source,
    pub host: String,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    pub vendor: Vendor,
    pub hooks: Vec<HookUse>,
    /// How the exit cycle was bounded, for the reader of a report.
    pub cycle_source: String,
    /// The profiled processes (empty: every process).
    pub processes: Vec<Target>,
    /// Wall-clock start of the recording (ns since the Unix epoch; 0 when unknown).
    pub start_unix_ns: u64,
    /// The same instant on the clock of [`crate::model::Exit::ts_ns`].
    pub start_ts_ns: u64,
    pub duration_ns: u64,
    /// What the recording cost (live recordings only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_cost: Option<OwnCost>,
    /// `record --slow`: the exits over its threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow: Option<SlowExits>,
}

impl Header {
    /// The header of a live recording that just ended.
    pub fn live(out: &Outcome, targets: &[Target]) -> Header {
        let since_epoch = out.started.duration_since(UNIX_EPOCH).unwrap_or_default();
        Header {
            source: Source::Live,
            host: hostname(),
            kernel: out.facts.release.clone(),
            vendor: out.plan.vendor,
            hooks: out
                .plan
                .stages
                .iter()
                .map(|s| HookUse {
                    stage: s.stage,
                    symbol: s.symbol.clone(),
                    mode: s.mode.name().to_owned(),
                })
                .collect(),
            cycle_source: out.plan.cycle_source().to_owned(),
            processes: targets.to_vec(),
            start_unix_ns: nanos(since_epoch),
            start_ts_ns: monotonic_at(out.started),
            duration_ns: nanos(out.elapsed),
            own_cost: Some(out.own_cost.clone()),
            slow: None,
        }
    }
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// CLOCK_MONOTONIC (the clock of live exit timestamps) at wall time `t`, from both clocks
/// read now: the recording keeps only its wall-clock start.
fn monotonic_at(t: SystemTime) -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec passed to it.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let now = Duration::new(now.tv_sec as u64, now.tv_nsec as u32);
    let ago = SystemTime::now().duration_since(t).unwrap_or_default();
    nanos(now.saturating_sub(ago))
}

/// The JSON of the `#[kvmprof-header]` line.
#[derive(Serialize, Deserialize)]
struct FileHeader {
    format: String,
    version: u32,
    #[serde(flatten)]
    header: Header,
    interval_ns: u64,
    /// Start of the first interval on the exits' clock; interval timestamps count from it.
    base_ts_ns: u64,
    first_ts_ns: Option<u64>,
    last_ts_ns: Option<u64>,
    lost: u64,
    total_exits: u64,
    keys: Vec<KeyEntry>,
    ports: Vec<PortEntry>,
}

#[derive(Serialize, Deserialize)]
struct KeyEntry {
    #[serde(flatten)]
    key: Key,
    /// Display name of the reason, for other tools.
    name: String,
    count: u64,
    /// Exits that went to the VMM, by KVM_EXIT_* code.
    userspace: BTreeMap<u32, u64>,
    stages: BTreeMap<Stage, StageEntry>,
}

#[derive(Clone, Copy, Serialize, Deserialize)]
struct StageEntry {
    /// Samples in this stage's histograms (checked on read).
    samples: u64,
    sum_ns: u64,
}

#[derive(Serialize, Deserialize)]
struct PortEntry {
    #[serde(flatten)]
    port: PortKey,
    reason_name: String,
    #[serde(flatten)]
    stats: PortStats,
}

/// Writes `h` and `a` to `path` atomically: a temporary file next to it, renamed over it.
pub fn write(path: &Path, h: &Header, a: &Aggregate) -> Result<()> {
    let tmp = temp_path(path);
    let result = write_to(&tmp, h, a).and_then(|()| {
        fs::rename(&tmp, path)
            .map_err(|e| anyhow!("{}: cannot rename into place: {e}", path.display()))
    });
    if result.is_err() {
        // Best effort: the temporary file is useless once writing failed.
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| DEFAULT_PATH.into(), |n| n.to_string_lossy());
    path.with_file_name(format!(".{name}.tmp.{}", std::process::id()))
}

fn write_to(tmp: &Path, h: &Header, a: &Aggregate) -> Result<()> {
    let fail = |e: &dyn std::fmt::Display| anyhow!("{}: cannot write: {e}", tmp.display());
    let file = fs::File::create(tmp).map_err(|e| fail(&e))?;
    let mut out = BufWriter::new(file);
    let interval_ns = a.interval_ns();
    let base_ts_ns = a
        .span()
        .map_or(h.start_ts_ns, |(first, _)| first.min(h.start_ts_ns));
    let base_ts_ns = base_ts_ns / interval_ns * interval_ns;
    let json = serde_json::to_string(&file_header(h, a, base_ts_ns)).map_err(|e| fail(&e))?;

    // The library writer puts the header comments and times first; the legend line goes
    // between them and the histograms, so the log is written by two writers in turn.
    IntervalLogWriterBuilder::new()
        .add_comment(&format!("{}{json}", &HEADER_MARK[1..]))
        .add_comment(NOTE)
        .add_comment(LOG_VERSION)
        .with_start_time(unix_time(h.start_unix_ns))
        .with_base_time(unix_time(wall_ns(h, base_ts_ns)))
        .begin_log_with(&mut out, &mut V2DeflateSerializer::new())
        .map_err(|e| fail(&e))?;
    writeln!(out, "{LEGEND}").map_err(|e| fail(&e))?;
    let mut serializer = V2DeflateSerializer::new();
    let mut log = IntervalLogWriterBuilder::new()
        .begin_log_with(&mut out, &mut serializer)
        .map_err(|e| fail(&e))?;
    let mut histograms = 0u64;
    let mut write = |start_ns: u64, hist: &Histogram<u64>, tag: Option<&str>| -> Result<()> {
        let offset = Duration::from_nanos(start_ns.saturating_sub(base_ts_ns));
        let length = Duration::from_nanos(interval_ns);
        log.write_histogram(hist, offset, length, tag.and_then(Tag::new))
            .map_err(|e| fail(&e))?;
        histograms += 1;
        Ok(())
    };
    // Generic tools read the untagged series by default (the Java HistogramLogProcessor
    // fails without one), so each interval also gets an untagged histogram: the cycle of
    // all its exits.
    let mut all: Option<(u64, Histogram<u64>)> = None;
    a.for_each_interval(|start_ns, key, stage, hist| {
        if let Some((start, total)) = all.take_if(|(s, _)| *s != start_ns) {
            write(start, &total, None)?;
        }
        write(start_ns, hist, Some(&tag(key, stage)))?;
        if stage == Stage::Cycle {
            let (_, total) = all.get_or_insert_with(|| (start_ns, aggregate::new_histogram()));
            total.add(hist).map_err(|e| fail(&e))?;
        }
        Ok(())
    })?;
    if let Some((start, total)) = all {
        write(start, &total, None)?;
    }
    log.write_comment(&format!("{}{histograms}", &END_MARK[1..]))
        .map_err(|e| fail(&e))?;
    let file = out.into_inner().map_err(|e| fail(e.error()))?;
    file.sync_all().map_err(|e| fail(&e))
}

fn file_header(h: &Header, a: &Aggregate, base_ts_ns: u64) -> FileHeader {
    let keys = a
        .keys()
        .iter()
        .map(|(key, stats)| KeyEntry {
            key: *key,
            name: reason_name(key.reason),
            count: stats.count,
            userspace: stats.userspace.clone(),
            stages: Stage::ALL
                .into_iter()
                .filter_map(|s| {
                    let st = stats.stage(s)?;
                    Some((
                        s,
                        StageEntry {
                            samples: st.hist.len(),
                            sum_ns: st.sum_ns,
                        },
                    ))
                })
                .collect(),
        })
        .collect();
    let ports = a
        .ports()
        .iter()
        .map(|(port, stats)| PortEntry {
            port: *port,
            reason_name: reason_name(port.reason),
            stats: *stats,
        })
        .collect();
    FileHeader {
        format: FORMAT.to_owned(),
        version: VERSION,
        header: h.clone(),
        interval_ns: a.interval_ns(),
        base_ts_ns,
        first_ts_ns: a.span().map(|s| s.0),
        last_ts_ns: a.span().map(|s| s.1),
        lost: a.lost(),
        total_exits: a.total_exits(),
        keys,
        ports,
    }
}

/// Wall-clock ns of `ts_ns` on the exits' clock (0 if that would precede the epoch).
fn wall_ns(h: &Header, ts_ns: u64) -> u64 {
    let wall = i128::from(h.start_unix_ns) + i128::from(ts_ns) - i128::from(h.start_ts_ns);
    u64::try_from(wall.max(0)).unwrap_or(u64::MAX)
}

fn unix_time(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

/// Reads a data file written by [`write`]. Errors are one line naming the file.
pub fn read(path: &Path) -> Result<(Header, Aggregate)> {
    let bytes = fs::read(path).map_err(|e| anyhow!("{}: cannot read: {e}", path.display()))?;
    parse(&bytes).map_err(|e| anyhow!("{}: {e:#}", path.display()))
}

fn parse(bytes: &[u8]) -> Result<(Header, Aggregate)> {
    let mut lines = bytes.split_inclusive(|&b| b == b'\n').zip(1..);
    let Some((first, _)) = lines.next() else {
        bail!("empty file");
    };
    let mark = HEADER_MARK.as_bytes();
    let json = first.strip_suffix(b"\n");
    if !first.starts_with(mark) && (json.is_some() || !mark.starts_with(first)) {
        bail!(
            "not a kvmprof data file (line 1 is not {})",
            HEADER_MARK.trim_end()
        );
    }
    let Some(json) = json else {
        bail!("truncated: line 1 ends mid-header");
    };
    let fh: FileHeader = serde_json::from_slice(&json[HEADER_MARK.len()..])
        .map_err(|e| anyhow!("line 1: bad header: {e}"))?;
    if fh.format != FORMAT || fh.version != VERSION {
        bail!("unsupported format {} version {}", fh.format, fh.version);
    }
    if fh.interval_ns == 0 {
        bail!("line 1: bad header: interval_ns is 0");
    }

    let mut a = Aggregate::new(fh.interval_ns);
    let mut expected = BTreeMap::new();
    for k in fh.keys {
        let mut sums = [None; STAGES];
        for (stage, s) in &k.stages {
            sums[stage.index()] = Some(s.sum_ns);
            expected.insert((k.key, *stage), s.samples);
        }
        a.restore_key(k.key, k.count, k.userspace, sums);
    }
    for p in fh.ports {
        a.restore_port(p.port, p.stats);
    }
    a.add_lost(fh.lost);
    if let (Some(first), Some(last)) = (fh.first_ts_ns, fh.last_ts_ns) {
        a.restore_span(first, last);
    }

    let mut histograms = 0u64;
    let mut last_line = 1;
    let mut ended = false;
    for (line, n) in lines {
        last_line = n;
        let Some(text) = line.strip_suffix(b"\n") else {
            let what = if line.starts_with(b"#") {
                "comment"
            } else {
                "histogram"
            };
            bail!("truncated: line {n} ends mid-{what}");
        };
        if ended {
            bail!("line {n}: data after the end marker");
        }
        if let Some(count) = text.strip_prefix(END_MARK.as_bytes()) {
            let count: u64 = std::str::from_utf8(count)
                .ok()
                .and_then(|c| c.parse().ok())
                .with_context(|| format!("line {n}: bad end marker"))?;
            if count != histograms {
                bail!("line {n}: end marker counts {count} histograms, the file has {histograms}");
            }
            ended = true;
        } else if !(text.starts_with(b"#") || text.starts_with(b"\"") || text.is_empty()) {
            let parsed = interval(line, fh.base_ts_ns, fh.interval_ns)
                .map_err(|e| anyhow!("line {n}: {e:#}"))?;
            // Untagged histograms sum tagged ones for other tools: nothing to restore.
            if let Some((start_ns, key, stage, hist, blob)) = parsed {
                if !expected.contains_key(&(key, stage)) {
                    bail!(
                        "line {n}: histogram {} is not in the header",
                        tag(key, stage)
                    );
                }
                a.restore_interval(start_ns, key, stage, &hist, blob);
            }
            histograms += 1;
        }
    }
    if !ended {
        bail!("truncated: no end marker after line {last_line}");
    }
    for ((key, stage), samples) in expected {
        let found = a.keys()[&key].stage(stage).map_or(0, |s| s.hist.len());
        if found != samples {
            bail!(
                "histograms of {} hold {found} samples, the header says {samples}",
                tag(key, stage)
            );
        }
    }
    Ok((fh.header, a))
}

/// A histogram line of a series: its start on the exits' clock, series, histogram and the
/// histogram's encoding.
type IntervalLine = (u64, Key, Stage, Histogram<u64>, Vec<u8>);

/// Parses one histogram line; `None` for an untagged one (still checked to be intact).
fn interval(line: &[u8], base_ts_ns: u64, interval_ns: u64) -> Result<Option<IntervalLine>> {
    let entry: IntervalLogHistogram = match IntervalLogIterator::new(line).next() {
        Some(Ok(LogEntry::Interval(h))) => h,
        _ => bail!("not an interval histogram"),
    };
    let series = match entry.tag() {
        Some(t) => Some(parse_tag(&t).with_context(|| format!("bad tag {:?}", &*t))?),
        None => None,
    };
    let blob = base64::engine::general_purpose::STANDARD
        .decode(entry.encoded_histogram())
        .map_err(|e| anyhow!("corrupt base64: {e}"))?;
    // The decoder trusts the length fields; check the outer one so a damaged line cannot
    // make it allocate or read far beyond the line.
    let cookie = blob
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let len = blob
        .get(4..8)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
    if cookie != Some(V2_COMPRESSED_COOKIE) || len != Some(blob.len() - 8) {
        bail!("corrupt histogram: not a V2 compressed histogram");
    }
    let hist = aggregate::decode(&blob).map_err(|e| anyhow!("corrupt histogram: {e}"))?;
    // Offsets are multiples of the interval written to the millisecond: round to the nearest.
    let offset_ns = u64::try_from(entry.start_timestamp().as_nanos()).unwrap_or(u64::MAX);
    let intervals = offset_ns.saturating_add(interval_ns / 2) / interval_ns;
    let start_ns = intervals
        .checked_mul(interval_ns)
        .and_then(|o| o.checked_add(base_ts_ns))
        .context("interval start out of range")?;
    Ok(series.map(|(key, stage)| (start_ns, key, stage, hist, blob)))
}

/// The tag of a series; see the module documentation.
fn tag(key: Key, stage: Stage) -> String {
    let vcpu = key.vcpu.map_or_else(|| "-".to_owned(), |v| v.to_string());
    let space = space_name(key.reason.space);
    format!(
        "p{}/v{vcpu}/{space}:{:#x}/{}",
        key.pid,
        key.reason.code,
        stage.name()
    )
}

fn parse_tag(tag_text: &str) -> Option<(Key, Stage)> {
    let mut parts = tag_text.split('/');
    let pid = parts.next()?.strip_prefix('p')?.parse().ok()?;
    let vcpu = match parts.next()?.strip_prefix('v')? {
        "-" => None,
        v => Some(v.parse().ok()?),
    };
    let (space, code) = parts.next()?.split_once(':')?;
    let reason = Reason {
        space: space_from_name(space)?,
        code: u32::from_str_radix(code.strip_prefix("0x")?, 16).ok()?,
    };
    let stage = Stage::from_name(parts.next()?)?;
    let key = Key { pid, vcpu, reason };
    // Only the canonical spelling is accepted, so each series has exactly one tag.
    (parts.next().is_none() && tag(key, stage) == tag_text).then_some((key, stage))
}

const SPACES: [(ReasonSpace, &str); 5] = [
    (ReasonSpace::Userspace, "user"),
    (ReasonSpace::Vmx, "vmx"),
    (ReasonSpace::Svm, "svm"),
    (ReasonSpace::Tracepoint, "tp"),
    (ReasonSpace::None, "none"),
];

fn space_name(space: ReasonSpace) -> &'static str {
    SPACES
        .iter()
        .find(|(s, _)| *s == space)
        .map_or("none", |(_, n)| n)
}

fn space_from_name(name: &str) -> Option<ReasonSpace> {
    SPACES.iter().find(|(_, n)| *n == name).map(|(s, _)| *s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Access, Exit};

    const SEC: u64 = 1_000_000_000;

    fn header() -> Header {
        Header {
            source: Source::Live,
            host: "host".into(),
            kernel: "6.18.0".into(),
            vendor: Vendor::Svm,
            hooks: vec![HookUse {
                stage: Stage::VendorRun,
                symbol: "svm_vcpu_run".into(),
                mode: "kprobe".into(),
            }],
            cycle_source: "vcpu_enter_guest".into(),
            processes: vec![Target {
                pid: 42,
                name: "qemu".into(),
            }],
            start_unix_ns: 1_700_000_000 * SEC + 250_000_000,
            start_ts_ns: 5 * SEC + 100,
            duration_ns: 3 * SEC,
            own_cost: None,
            slow: None,
        }
    }

    fn sample() -> Aggregate {
        let mut a = Aggregate::new(SEC);
        let reasons = [
            Reason {
                space: ReasonSpace::Svm,
                code: 0x7b,
            },
            Reason {
                space: ReasonSpace::Userspace,
                code: 2,
            },
            Reason {
                space: ReasonSpace::Vmx,
                code: 0x8000_0021,
            },
        ];
        for i in 0..3000u64 {
            let mut stages = [None; STAGES];
            stages[Stage::Cycle.index()] = Some(1000 + i * 7);
            if i % 2 == 0 {
                stages[Stage::Handler.index()] = Some(500 + i);
            }
            a.add(&Exit {
                pid: 42,
                tid: 43,
                vcpu: (i % 5 != 0).then_some((i % 3) as u32),
                ts_ns: 5 * SEC + 100 + i * 1_000_000,
                reason: reasons[(i % 3) as usize],
                userspace_reason: (i % 4 == 0).then_some(2),
                access: Some(Access::Pio {
                    port: 0x3f8,
                    size: 1,
                    write: i % 2 == 0,
                }),
                stages,
            });
        }
        a.add_lost(3);
        a
    }

    fn write_sample(dir: &Path) -> (PathBuf, Vec<u8>) {
        let path = dir.join(DEFAULT_PATH);
        write(&path, &header(), &sample()).expect("writes");
        let bytes = fs::read(&path).expect("readable");
        (path, bytes)
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, bytes) = write_sample(dir.path());
        let (h, b) = read(&path).expect("reads back");
        let a = sample();
        assert_eq!(h, header());
        assert_eq!(b.lost(), 3);
        assert_eq!(b.span(), a.span());
        assert_eq!(b.total_exits(), 3000);
        assert_eq!(b.ports(), a.ports());
        assert_eq!(b.keys().len(), a.keys().len());
        for (key, x) in a.keys() {
            let y = &b.keys()[key];
            assert_eq!((x.count, &x.userspace), (y.count, &y.userspace));
            for (sx, sy) in x.stages.iter().zip(&y.stages) {
                match (sx, sy) {
                    (Some(sx), Some(sy)) => {
                        assert_eq!(sx.sum_ns, sy.sum_ns);
                        assert_eq!(sx.hist, sy.hist);
                    }
                    (None, None) => {}
                    _ => panic!("stage presence differs for {key:?}"),
                }
            }
        }
        let intervals = |a: &Aggregate| {
            let mut v = Vec::new();
            a.for_each_interval(|start, key, stage, h| {
                v.push((start, key, stage, h.clone()));
                Ok(())
            })
            .expect("intervals");
            v
        };
        assert_eq!(intervals(&a), intervals(&b));
        // Nothing left behind but the file itself.
        assert_eq!(fs::read_dir(dir.path()).expect("dir").count(), 1);

        let text = String::from_utf8(bytes).expect("utf-8");
        assert!(text.contains("\n#[BaseTime: 1700000000.250 (seconds since epoch)]\n"));
        assert!(text.contains("\nTag=p42/v0/svm:0x7b/cycle,0.000,1.000,"));
        assert!(text.contains("\nTag=p42/v-/vmx:0x80000021/handler,2.000,1.000,"));
        assert!(
            text.contains("\n2.000,1.000,21999.000,HISTF"),
            "untagged all-exit cycles"
        );
        assert!(text.ends_with("#[kvmprof-end] 39\n"));
    }

    #[test]
    fn tags_are_reversible_and_canonical() {
        let key = Key {
            pid: 7,
            vcpu: None,
            reason: Reason {
                space: ReasonSpace::Tracepoint,
                code: 1,
            },
        };
        assert_eq!(tag(key, Stage::FastPio), "p7/v-/tp:0x1/fast_pio");
        assert_eq!(
            parse_tag("p7/v-/tp:0x1/fast_pio"),
            Some((key, Stage::FastPio))
        );
        for bad in [
            "p7/v-/tp:0x01/fast_pio",
            "p7/v-/tp:1/fast_pio",
            "p7/vx/tp:0x1/cycle",
            "p7/v-/xx:0x1/cycle",
            "p7/v-/tp:0x1/cycle/x",
            "p7",
        ] {
            assert_eq!(parse_tag(bad), None, "{bad}");
        }
    }

    fn error_of(dir: &Path, bytes: &[u8]) -> String {
        let path = dir.join("bad.data");
        fs::write(&path, bytes).expect("writes");
        let err = read(&path).expect_err("must not parse").to_string();
        assert!(err.starts_with(&format!("{}: ", path.display())), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
        err
    }

    #[test]
    fn truncation_at_any_offset_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, bytes) = write_sample(dir.path());
        // Every byte of the first line, both sides of every line break, a stride elsewhere.
        let header_end = bytes.iter().position(|&b| b == b'\n').expect("lines");
        let breaks = bytes.iter().enumerate().filter(|(_, &b)| b == b'\n');
        let around_breaks = breaks.flat_map(|(i, _)| [i, i + 1]);
        let cuts = (0..=header_end)
            .chain(around_breaks)
            .chain((0..bytes.len()).step_by(61));
        for cut in cuts.filter(|&c| c < bytes.len()) {
            // `parse` is what `read` runs after reading the file (tested below).
            let err = format!("{:#}", parse(&bytes[..cut]).expect_err("must not parse"));
            assert!(!err.contains('\n'), "one line: {err}");
            assert!(
                err.contains("truncated") || err.contains("empty file"),
                "cut {cut}: {err}"
            );
        }
    }

    #[test]
    fn bad_input_names_the_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, bytes) = write_sample(dir.path());
        let text = String::from_utf8(bytes.clone()).expect("utf-8");
        let missing = read(&dir.path().join("missing.data")).expect_err("missing");
        assert!(
            missing.to_string().contains("missing.data: cannot read: "),
            "{missing}"
        );
        assert!(error_of(dir.path(), b"").ends_with(": empty file"));
        assert!(error_of(dir.path(), b"\x7fELF\x02\x01garbage").contains("not a kvmprof data file"));
        let plain_hlog = "#[StartTime: 1.000 (seconds since epoch)]\nTag=a,0.1,1.0,2.0,AAAA\n";
        assert!(error_of(dir.path(), plain_hlog.as_bytes()).contains("not a kvmprof data file"));
        assert!(error_of(dir.path(), b"#[kvmprof-header] {nope}\n").contains("line 1: bad header"));

        // Corrupt one histogram line in several ways.
        let (n, line) = text
            .lines()
            .enumerate()
            .find(|(_, l)| l.starts_with("Tag="))
            .expect("a histogram");
        let n = n + 1;
        let replace = |new: &str| error_of(dir.path(), text.replacen(line, new, 1).as_bytes());
        let b64 = line.rsplit(',').next().expect("base64");
        let err = replace(&line.replace(b64, &format!("{}!!{}", &b64[..10], &b64[12..])));
        assert!(err.contains(&format!("line {n}: corrupt base64")), "{err}");
        let err = replace(&line.replace(b64, &b64[..b64.len() - 8]));
        assert!(err.contains(&format!("line {n}: corrupt")), "{err}");
        let err = replace(&line.replace("Tag=p42/", "Tag=q42/"));
        assert!(err.contains(&format!("line {n}: bad tag")), "{err}");
        let err = replace(&line.replace("/cycle,", "/vmm,"));
        assert!(err.contains(&format!("line {n}: histogram p42")), "{err}");
        let err = replace("#dropped");
        assert!(
            err.contains("end marker counts 39 histograms, the file has 38"),
            "{err}"
        );
        let err = error_of(dir.path(), format!("{text}trailing\n").as_bytes());
        assert!(err.contains("data after the end marker"), "{err}");
    }

    #[test]
    fn damaged_histograms_never_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, bytes) = write_sample(dir.path());
        let text = String::from_utf8(bytes).expect("utf-8");
        let line = text
            .lines()
            .find(|l| l.starts_with("Tag="))
            .expect("histogram");
        let b64 = line.rsplit(',').next().expect("base64");
        let blob = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("valid");
        // Flip every byte of the compressed payload in turn (past cookie and length).
        for i in 8..blob.len() {
            for x in [0x01, 0x80, 0xff] {
                let mut bad = blob.clone();
                bad[i] ^= x;
                let bad = base64::engine::general_purpose::STANDARD.encode(&bad);
                let damaged = text.replacen(b64, &bad, 1);
                // Either an error or, when the flip hit the zlib trailer, the same data.
                if let Err(e) = parse(damaged.as_bytes()) {
                    assert!(!e.to_string().is_empty());
                }
            }
        }
    }
}
