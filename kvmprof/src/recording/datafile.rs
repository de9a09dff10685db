//! The kvmprof data file (`kvmprof.data`): a valid HdrHistogram interval log (V2 compressed
//! histograms) that other HdrHistogram tools read, plus kvmprof's own records in comments.
//! It is written as the recording goes, so a recording killed at any moment leaves a file
//! that reads up to its last whole interval:
//!
//! ```text
//! #[kvmprof-header] {"format":"kvmprof","version":2,...}    what is known at the start
//! #kvmprof data file: ...                                     a note for humans
//! #[Histogram log format version 1.3]
//! #[StartTime: 1700000000.000 (seconds since epoch)]
//! #[BaseTime: 1699999999.000 (seconds since epoch)]
//! "StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"
//! Tag=p1234/v0/svm:0x7b/cycle,0.000,1.000,45123.000,HISTFAAAAC...
//! 0.000,1.000,45123.000,HISTFAAAAC...                         untagged: all exits' cycles
//! #[kvmprof-checkpoint] {"histograms":2,"keys":[...],...}    exact counts of that interval
//! ...                                                         (one block per interval)
//! #[kvmprof-end] {"histograms":2,"duration_ns":...,...}      what is known only at the end
//! ```
//!
//! Each interval is one block, written and flushed at once: its histograms, one tagged
//! histogram per (key, stage) and one untagged histogram of the cycle of all its exits (which
//! generic tools read by default), then a checkpoint with the exact counts of the same exits.
//! Exits that arrive after their interval was written (a long HLT ends late) get another
//! block with the same start; readers add them up. A tag is `p<pid>/v<vcpu>/<space>:<code>/
//! <stage>`: `<vcpu>` is `-` when unknown, `<space>` a [`ReasonSpace::short_name`], `<code>` the reason code in hex and `<stage>` a [`Stage::name`],
//! e.g. `p1234/v0/svm:0x7b/cycle`. Interval timestamps are seconds since BaseTime, the wall
//! time of `base_ts_ns` on the exits' clock.
//!
//! The end record is written last. A file without it was cut (killed, crashed, disk full):
//! the reader keeps every block up to the last checkpoint, drops the rest and says where the
//! file was cut ([`Header::cut`]). Each checkpoint counts the histogram lines before it, so a
//! line lost inside the kept part is an error, not a shorter recording.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _, Result};
use base64::Engine as _;
use hdrhistogram::serialization::interval_log::{
    IntervalLogHistogram, IntervalLogIterator, IntervalLogWriterBuilder, LogEntry, Tag,
};
use hdrhistogram::Histogram;
use kvmprof_common::STAGES;
use serde::{Deserialize, Serialize};

use crate::backend::reason_name;
use crate::data::aggregate::{self, Aggregate, Key, PortKey, PortStats};
use crate::data::cost::OwnCost;
use crate::data::funcs::Funcs;
use crate::data::halts::Halts;
use crate::data::kvmstats::KvmStats;
use crate::data::model::{Exit, Reason, ReasonSpace, Stage, Tally};
use crate::data::slow::SlowExits;
use crate::data::v2deflate::Encoder;
use crate::recording::header::{Cut, Header};
use crate::util::output;

/// Where `record` writes and `report` reads by default.
pub const DEFAULT_PATH: &str = "kvmprof.data";

const FORMAT: &str = "kvmprof";
const VERSION: u32 = 2;
pub(crate) const HEADER_MARK: &str = "#[kvmprof-header] ";
const CHECKPOINT_MARK: &str = "#[kvmprof-checkpoint] ";
const END_MARK: &str = "#[kvmprof-end] ";
/// The Java `HistogramLogWriter` writes these two lines; readers may look for them.
const LOG_VERSION: &str = "[Histogram log format version 1.3]";
const LEGEND: &str =
    "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"";
const NOTE: &str = "kvmprof data file: an HdrHistogram interval log of KVM exit latencies in ns. \
                    Tags are p<pid>/v<vcpu|->/<user|errno|vmx|svm|tp|none>:<reason code>/<stage>.";
/// Cookie of a V2 compressed histogram (`V2_COMPRESSED_COOKIE_BASE | 0x10`).
const V2_COMPRESSED_COOKIE: u32 = 0x1c84_9314;

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
}

/// The JSON of a `#[kvmprof-checkpoint]` line: the exact counts of the exits whose
/// histograms precede it since the previous checkpoint.
#[derive(Serialize, Deserialize)]
struct Checkpoint {
    /// Histogram lines in the file so far.
    histograms: u64,
    /// Every exit that began in the first `complete_ns` of the recording is written.
    complete_ns: u64,
    /// Exits lost so far (ring buffer full).
    lost: u64,
    first_ts_ns: Option<u64>,
    last_ts_ns: Option<u64>,
    keys: Vec<KeyEntry>,
    ports: Vec<PortEntry>,
    /// `--detail`'s guest RIPs (absent from files of earlier versions and without it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    rips: Vec<RipEntry>,
}

/// The JSON of the `#[kvmprof-end]` line: what is known only when the recording ends.
#[derive(Serialize, Deserialize)]
struct EndRecord {
    /// Histogram lines in the file.
    histograms: u64,
    duration_ns: u64,
    stop: String,
    lost: u64,
    #[serde(default)]
    unobserved: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    read_failed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unmatched: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    no_state: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    own_cost: Option<OwnCost>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    slow: Option<SlowExits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kvm_stats: Option<KvmStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    halts: Option<Halts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    funcs: Option<Funcs>,
}

/// How a recording ended, for its end record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct End {
    pub duration_ns: u64,
    /// Why it stopped, e.g. `duration`, `SIGINT`, `targets exited`.
    pub stop: String,
    pub lost: u64,
    /// Exits already under way when the window opened (see [`Header::unobserved`]).
    pub unobserved: Option<u64>,
    /// See [`Header::read_failed`].
    pub read_failed: Option<u64>,
    /// See [`Header::unmatched`].
    pub unmatched: Option<u64>,
    /// See [`Header::no_state`].
    pub no_state: Option<u64>,
    /// See [`Header::own_cost`].
    pub own_cost: Option<OwnCost>,
    /// See [`Header::slow`].
    pub slow: Option<SlowExits>,
    /// See [`Header::kvm_stats`].
    pub kvm_stats: Option<KvmStats>,
    /// See [`Header::halts`].
    pub halts: Option<Halts>,
    /// See [`Header::funcs`].
    pub funcs: Option<Funcs>,
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
    /// The row's cycle histogram in this block, a V2 compressed histogram in base64 as on
    /// interval lines (absent where not measured and from earlier files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cycle_hist: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct RipEntry {
    #[serde(flatten)]
    rip: aggregate::RipKey,
    count: u64,
}

/// Writes a data file as exits arrive: [`Writer::add`] each exit, [`Writer::write_header`]
/// once, [`Writer::write_before`] as time passes, [`Writer::finish`] at the end. Each
/// write is a whole block handed to `out` at once, then flushed.
pub struct Writer<W: Write> {
    out: W,
    interval_ns: u64,
    /// Set by [`Writer::write_header`]: (base_ts_ns, start_ts_ns).
    begun: Option<(u64, u64)>,
    /// Exits not yet written, by interval index.
    pending: BTreeMap<u64, Aggregate>,
    histograms: u64,
    complete_ns: u64,
    encoder: Encoder,
}

impl<W: Write> Writer<W> {
    /// `interval_ns` is clamped like [`Aggregate::new`] does.
    pub fn new(out: W, interval_ns: u64) -> Self {
        Writer {
            out,
            interval_ns: interval_ns.max(aggregate::MIN_INTERVAL_NS),
            begun: None,
            pending: BTreeMap::new(),
            histograms: 0,
            complete_ns: 0,
            encoder: Encoder::default(),
        }
    }

    /// Keeps `e` for the block of its interval.
    pub fn add(&mut self, e: &Exit) {
        self.block_of(e.ts_ns).add(e);
    }

    /// Keeps a kernel tally for the block of its (last exit's) interval.
    pub fn add_tally(&mut self, t: &Tally) {
        self.block_of(t.exit.ts_ns).add_tally(t);
    }

    /// The exits not yet written of the interval of `ts_ns`.
    fn block_of(&mut self, ts_ns: u64) -> &mut Aggregate {
        let interval_ns = self.interval_ns;
        self.pending
            .entry(ts_ns / interval_ns)
            .or_insert_with(|| Aggregate::new(interval_ns))
    }

    /// Writes the header. Interval timestamps count from `base_ts_ns` (rounded down to an
    /// interval); an exit that began before it is filed under the first interval.
    pub fn write_header(&mut self, h: &Header, base_ts_ns: u64) -> Result<()> {
        let base_ts_ns = base_ts_ns / self.interval_ns * self.interval_ns;
        let fh = FileHeader {
            format: FORMAT.to_owned(),
            version: VERSION,
            header: h.clone(),
            interval_ns: self.interval_ns,
            base_ts_ns,
        };
        let json = serde_json::to_string(&fh)?;
        let mut block = Vec::new();
        // The library writer puts the header comments and times first; the legend line goes
        // between them and the histograms.
        IntervalLogWriterBuilder::new()
            .add_comment(&format!("{}{json}", &HEADER_MARK[1..]))
            .add_comment(NOTE)
            .add_comment(LOG_VERSION)
            .with_start_time(unix_time(h.log_start_unix_ns(base_ts_ns)))
            .with_base_time(unix_time(h.wall_ns(base_ts_ns)))
            .begin_log_with(&mut block, &mut self.encoder)?;
        writeln!(block, "{LEGEND}")?;
        self.emit(&block)?;
        self.begun = Some((base_ts_ns, h.start_ts_ns));
        Ok(())
    }

    /// Writes every interval that ended at or before `ts_ns` on the exits' clock, one block
    /// each (a checkpoint alone when no exit came), so that a cut file keeps them. `lost`
    /// is the number of exits lost so far.
    pub fn write_before(&mut self, ts_ns: u64, lost: u64) -> Result<()> {
        let (_, start_ts_ns) = self.begun.context("data file header not written")?;
        let ended = ts_ns / self.interval_ns;
        let later = self.pending.split_off(&ended);
        let done = std::mem::replace(&mut self.pending, later);
        let interval_ns = self.interval_ns;
        let end_of = move |idx: u64| idx.saturating_mul(interval_ns).saturating_sub(start_ts_ns);
        let complete_ns = end_of(ended);
        if done.is_empty() && complete_ns > self.complete_ns {
            self.complete_ns = complete_ns;
            return self.write_block(&Aggregate::new(self.interval_ns), lost);
        }
        for (idx, a) in done {
            // A late exit's block does not move the complete part back.
            self.complete_ns = self.complete_ns.max(end_of(idx + 1).min(complete_ns));
            self.write_block(&a, lost)?;
        }
        Ok(())
    }

    /// Writes what is left and the end record; returns the output.
    pub fn finish(mut self, end: &End) -> Result<W> {
        self.complete_ns = end.duration_ns;
        for a in std::mem::take(&mut self.pending).into_values() {
            self.write_block(&a, end.lost)?;
        }
        let rec = EndRecord {
            histograms: self.histograms,
            duration_ns: end.duration_ns,
            stop: end.stop.clone(),
            lost: end.lost,
            unobserved: end.unobserved,
            read_failed: end.read_failed,
            unmatched: end.unmatched,
            no_state: end.no_state,
            own_cost: end.own_cost.clone(),
            slow: end.slow.clone(),
            kvm_stats: end.kvm_stats.clone(),
            halts: end.halts.clone(),
            funcs: end.funcs.clone(),
        };
        let line = format!("{END_MARK}{}\n", serde_json::to_string(&rec)?);
        self.emit(line.as_bytes())?;
        Ok(self.out)
    }

    /// One interval's histograms and its checkpoint.
    fn write_block(&mut self, a: &Aggregate, lost: u64) -> Result<()> {
        let (base_ts_ns, _) = self.begun.context("data file header not written")?;
        let interval_ns = self.interval_ns;
        let mut block = Vec::new();
        let mut log =
            IntervalLogWriterBuilder::new().begin_log_with(&mut block, &mut self.encoder)?;
        let mut histograms = 0u64;
        let mut write = |start_ns: u64, hist: &Histogram<u64>, tag: Option<&str>| -> Result<()> {
            let offset = Duration::from_nanos(start_ns.saturating_sub(base_ts_ns));
            let length = Duration::from_nanos(interval_ns);
            log.write_histogram(hist, offset, length, tag.and_then(Tag::new))
                .map_err(|e| anyhow!("{e:?}"))?;
            histograms += 1;
            Ok(())
        };
        // Generic tools read the untagged series by default (the Java HistogramLogProcessor
        // fails without one), so each block also has an untagged histogram: the cycle of
        // all its exits.
        let mut all: Option<Histogram<u64>> = None;
        let mut start = 0;
        a.for_each_interval(|start_ns, key, stage, hist| {
            start = start_ns;
            write(start_ns, hist, Some(&tag(key, stage)))?;
            if stage == Stage::Cycle {
                all.get_or_insert_with(aggregate::new_histogram)
                    .add(hist)
                    .map_err(|e| anyhow!("{e:?}"))?;
            }
            Ok(())
        })?;
        if let Some(total) = all {
            write(start, &total, None)?;
        }
        drop(log);
        self.histograms += histograms;
        let cp = checkpoint(a, self.histograms, self.complete_ns, lost)?;
        writeln!(block, "{CHECKPOINT_MARK}{}", serde_json::to_string(&cp)?)?;
        self.emit(&block)
    }

    fn emit(&mut self, block: &[u8]) -> Result<()> {
        self.out.write_all(block)?;
        self.out.flush()?;
        Ok(())
    }
}

fn checkpoint(a: &Aggregate, histograms: u64, complete_ns: u64, lost: u64) -> Result<Checkpoint> {
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
        .map(|(port, stats)| {
            let cycle_hist = a
                .row_cycles()
                .get(port)
                .map(|h| {
                    aggregate::encode(h)
                        .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
                })
                .transpose()
                .map_err(|e| anyhow!("{e:?}"))?;
            Ok(PortEntry {
                port: *port,
                reason_name: reason_name(port.reason),
                stats: *stats,
                cycle_hist,
            })
        })
        .collect::<Result<_>>()?;
    let rips = a
        .rips()
        .iter()
        .map(|(rip, &count)| RipEntry { rip: *rip, count })
        .collect();
    Ok(Checkpoint {
        histograms,
        complete_ns,
        lost,
        first_ts_ns: a.span().map(|s| s.0),
        last_ts_ns: a.span().map(|s| s.1),
        keys,
        ports,
        rips,
    })
}

/// Writes a whole recording to `path` at once (e.g. an import): `h.duration_ns` is its length.
pub fn write(path: &Path, h: &Header, exits: &[Exit], interval_ns: u64) -> Result<()> {
    let out = output::open(path)?;
    let mut w = Writer::new(out, interval_ns);
    for e in exits {
        w.add(e);
    }
    let first = exits.iter().map(|e| e.ts_ns).min();
    let base_ts_ns = first.map_or(h.start_ts_ns, |f| f.min(h.start_ts_ns));
    let end = End {
        duration_ns: h.duration_ns,
        stop: h.stop.clone().unwrap_or_else(|| "end of input".to_owned()),
        lost: 0,
        unobserved: h.unobserved,
        read_failed: h.read_failed,
        unmatched: h.unmatched,
        no_state: h.no_state,
        own_cost: h.own_cost.clone(),
        slow: h.slow.clone(),
        kvm_stats: h.kvm_stats.clone(),
        halts: h.halts.clone(),
        funcs: h.funcs.clone(),
    };
    let written = w
        .write_header(h, base_ts_ns)
        .and_then(|()| w.finish(&end))
        .and_then(output::Output::finish);
    written.map_err(|e| anyhow!("{}: cannot write: {e:#}", path.display()))
}

fn unix_time(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

/// Parses the bytes of data file `path` (written by [`Writer`], read by `hlog::open`).
/// Errors are one line naming the file. A file cut after its first whole interval reads up
/// to its last one, with [`Header::cut`] set.
pub fn parse_file(path: &Path, bytes: &[u8]) -> Result<(Header, Aggregate)> {
    parse(bytes).map_err(|e| anyhow!("{}: {e:#}", path.display()))
}

fn parse(bytes: &[u8]) -> Result<(Header, Aggregate)> {
    let lines: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
    let Some(first) = lines.first() else {
        bail!("empty file");
    };
    let fh = parse_header_line(first)?;
    let mut a = Aggregate::new(fh.interval_ns);
    let last = last_whole_record(&lines)?;
    let ends = read_intervals(&lines[..=last], &fh, &mut a)?;
    if let Some(n) = (last + 2..=lines.len())
        .next()
        .filter(|_| ends.end.is_some())
    {
        bail!("line {n}: data after the end record");
    }
    check_samples(&a, &ends.samples)?;
    let cut = Cut {
        lines: lines.len() as u64,
        kept_lines: last as u64 + 1,
    };
    let header = complete_header(fh.header, &mut a, ends, cut)?;
    Ok((header, a))
}

/// The index of the last line the file is read up to: the end record, or in a cut file the
/// last checkpoint. Whatever follows a checkpoint without one is the cut-off tail.
fn last_whole_record(lines: &[&[u8]]) -> Result<usize> {
    let whole = |l: &&[u8]| {
        l.ends_with(b"\n")
            && (l.starts_with(CHECKPOINT_MARK.as_bytes()) || l.starts_with(END_MARK.as_bytes()))
    };
    match lines.iter().rposition(whole) {
        Some(last) => Ok(last),
        None => bail!(
            "truncated: cut after line {} before its first whole interval",
            lines.len()
        ),
    }
}

/// What the part of a file that is read ends with: its last checkpoint and its end record,
/// and the samples its checkpoints count per series.
struct Ends {
    checkpoint: Option<Checkpoint>,
    end: Option<EndRecord>,
    samples: BTreeMap<(Key, Stage), u64>,
}

/// Adds the interval histograms of `lines` (line 1, the header, is skipped) to `a`, block by
/// block as their checkpoints confirm them.
fn read_intervals(lines: &[&[u8]], fh: &FileHeader, a: &mut Aggregate) -> Result<Ends> {
    let mut block: Vec<IntervalLine> = Vec::new();
    let mut histograms = 0u64;
    let mut ends = Ends {
        checkpoint: None,
        end: None,
        samples: BTreeMap::new(),
    };
    for (line, n) in lines.iter().zip(1u64..).skip(1) {
        if ends.end.is_some() {
            bail!("line {n}: data after the end record");
        }
        let Some(text) = line.strip_suffix(b"\n") else {
            bail!("line {n}: not a whole line");
        };
        if let Some(json) = text.strip_prefix(CHECKPOINT_MARK.as_bytes()) {
            let cp: Checkpoint = serde_json::from_slice(json)
                .map_err(|e| anyhow!("line {n}: bad checkpoint: {e}"))?;
            if cp.histograms != histograms {
                bail!(
                    "line {n}: checkpoint counts {} histograms, the file has {histograms}",
                    cp.histograms
                );
            }
            apply_block(a, &mut ends.samples, &cp, std::mem::take(&mut block))
                .map_err(|e| anyhow!("line {n}: {e:#}"))?;
            ends.checkpoint = Some(cp);
        } else if let Some(json) = text.strip_prefix(END_MARK.as_bytes()) {
            let rec: EndRecord = serde_json::from_slice(json)
                .map_err(|e| anyhow!("line {n}: bad end record: {e}"))?;
            if rec.histograms != histograms {
                bail!(
                    "line {n}: end record counts {} histograms, the file has {histograms}",
                    rec.histograms
                );
            }
            if !block.is_empty() {
                bail!("line {n}: histograms without their checkpoint");
            }
            ends.end = Some(rec);
        } else if !(text.starts_with(b"#") || text.starts_with(b"\"") || text.is_empty()) {
            let parsed = interval(line, fh.base_ts_ns, fh.interval_ns)
                .map_err(|e| anyhow!("line {n}: {e:#}"))?;
            // Untagged histograms sum tagged ones for other tools: nothing to restore.
            if let Some(parsed) = parsed {
                block.push(parsed);
            }
            histograms += 1;
        }
    }
    Ok(ends)
}

/// Fails unless each series holds as many samples as the checkpoints counted.
fn check_samples(a: &Aggregate, expected: &BTreeMap<(Key, Stage), u64>) -> Result<()> {
    for (&(key, stage), &samples) in expected {
        let found = a.keys()[&key].stage(stage).map_or(0, |s| s.hist.len());
        if found != samples {
            bail!(
                "histograms of {} hold {found} samples, the checkpoints say {samples}",
                tag(key, stage)
            );
        }
    }
    Ok(())
}

/// The header with what the end record says (length, stop, unobserved, lost events), or
/// for a file cut off before it (`cut`), what its last checkpoint says.
fn complete_header(mut header: Header, a: &mut Aggregate, ends: Ends, cut: Cut) -> Result<Header> {
    match (ends.end, ends.checkpoint) {
        (Some(end), _) => {
            header.duration_ns = end.duration_ns;
            header.stop = Some(end.stop);
            header.unobserved = end.unobserved;
            header.read_failed = end.read_failed;
            header.unmatched = end.unmatched;
            header.no_state = end.no_state;
            header.own_cost = end.own_cost;
            header.slow = end.slow;
            header.kvm_stats = end.kvm_stats;
            header.halts = end.halts;
            header.funcs = end.funcs;
            a.add_lost(end.lost);
        }
        (None, Some(cp)) => {
            header.duration_ns = cp.complete_ns;
            header.stop = None;
            header.cut = Some(cut);
            a.add_lost(cp.lost);
        }
        // The last whole record is a checkpoint or the end record.
        (None, None) => bail!("truncated: no whole interval"),
    }
    Ok(header)
}

/// Parses line 1, the `#[kvmprof-header]`.
fn parse_header_line(first: &[u8]) -> Result<FileHeader> {
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
    let version: serde_json::Value = serde_json::from_slice(&json[HEADER_MARK.len()..])
        .map_err(|e| anyhow!("line 1: bad header: {e}"))?;
    if version["format"] != FORMAT || version["version"] != VERSION {
        bail!(
            "unsupported format {} version {} (this kvmprof reads {FORMAT} version {VERSION})",
            version["format"],
            version["version"]
        );
    }
    let fh: FileHeader =
        serde_json::from_value(version).map_err(|e| anyhow!("line 1: bad header: {e}"))?;
    if fh.interval_ns == 0 {
        bail!("line 1: bad header: interval_ns is 0");
    }
    if fh.header.cut.is_some() {
        bail!("line 1: bad header: a header cannot say where its file was cut");
    }
    Ok(fh)
}

/// Restores one block: its histograms and the counts of its checkpoint.
fn apply_block(
    a: &mut Aggregate,
    expected: &mut BTreeMap<(Key, Stage), u64>,
    cp: &Checkpoint,
    block: Vec<IntervalLine>,
) -> Result<()> {
    for k in &cp.keys {
        let mut sums = [None; STAGES];
        for (stage, s) in &k.stages {
            sums[stage.index()] = Some(s.sum_ns);
            let n = expected.entry((k.key, *stage)).or_default();
            *n = n.saturating_add(s.samples);
        }
        a.restore_key(k.key, k.count, &k.userspace, sums);
    }
    for p in &cp.ports {
        a.restore_port(p.port, p.stats);
        if let Some(encoded) = &p.cycle_hist {
            a.restore_row_cycle(p.port, &decode_histogram(encoded)?.0);
        }
    }
    for r in &cp.rips {
        a.restore_rip(r.rip, r.count);
    }
    if let (Some(first), Some(last)) = (cp.first_ts_ns, cp.last_ts_ns) {
        a.restore_span(first, last);
    }
    for (start_ns, key, stage, hist, blob) in block {
        let listed = cp
            .keys
            .iter()
            .any(|k| k.key == key && k.stages.contains_key(&stage));
        if !listed {
            bail!("histogram {} is not in its checkpoint", tag(key, stage));
        }
        a.restore_interval(start_ns, key, stage, &hist, blob);
    }
    Ok(())
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
    let (hist, blob) = decode_histogram(entry.encoded_histogram())?;
    // Offsets are multiples of the interval written to the millisecond: round to the nearest.
    let offset_ns = u64::try_from(entry.start_timestamp().as_nanos()).unwrap_or(u64::MAX);
    let intervals = offset_ns.saturating_add(interval_ns / 2) / interval_ns;
    let start_ns = intervals
        .checked_mul(interval_ns)
        .and_then(|o| o.checked_add(base_ts_ns))
        .context("interval start out of range")?;
    Ok(series.map(|(key, stage)| (start_ns, key, stage, hist, blob)))
}

/// Decodes the base64 V2 compressed histogram of an interval log line; also returns the
/// compressed bytes.
pub(crate) fn decode_histogram(encoded: &str) -> Result<(Histogram<u64>, Vec<u8>)> {
    let blob = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| anyhow!("corrupt base64: {e}"))?;
    // The decoder trusts the length fields; check the outer one so a damaged line cannot
    // make it allocate or read far beyond the line.
    let cookie = blob
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let len = blob
        .get(4..8)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
    if cookie != Some(V2_COMPRESSED_COOKIE) || len != blob.len().checked_sub(8) {
        bail!("corrupt histogram: not a V2 compressed histogram");
    }
    let hist = aggregate::decode(&blob).map_err(|e| anyhow!("corrupt histogram: {e}"))?;
    Ok((hist, blob))
}

/// The tag of a series; see the module documentation.
pub(crate) fn tag(key: Key, stage: Stage) -> String {
    let vcpu = key.vcpu.map_or_else(|| "-".to_owned(), |v| v.to_string());
    let space = key.reason.space.short_name();
    format!(
        "p{}/v{vcpu}/{space}:{:#x}/{}",
        key.pid,
        key.reason.code,
        stage.name()
    )
}

pub(crate) fn parse_tag(tag_text: &str) -> Option<(Key, Stage)> {
    let mut parts = tag_text.split('/');
    let pid = parts.next()?.strip_prefix('p')?.parse().ok()?;
    let vcpu = match parts.next()?.strip_prefix('v')? {
        "-" => None,
        v => Some(v.parse().ok()?),
    };
    let (space, code) = parts.next()?.split_once(':')?;
    let reason = Reason {
        space: ReasonSpace::from_short_name(space)?,
        code: u32::from_str_radix(code.strip_prefix("0x")?, 16).ok()?,
    };
    let stage = Stage::from_name(parts.next()?)?;
    let key = Key { pid, vcpu, reason };
    // Only the canonical spelling is accepted, so each series has exactly one tag.
    (parts.next().is_none() && tag(key, stage) == tag_text).then_some((key, stage))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::data::model::Access;
    use crate::data::target::Target;
    use crate::recording::header::HookUse;
    use crate::testdata::{self, SEC};
    use std::path::PathBuf;

    fn header() -> Header {
        Header {
            host: "host".into(),
            kernel: "6.18.0".into(),
            hooks: vec![HookUse {
                stage: Stage::VendorRun,
                symbol: "svm_vcpu_run".into(),
                mode: "kprobe".into(),
            }],
            tracepoints: vec![],
            cycle_source: "vcpu_enter_guest".into(),
            processes: vec![Target {
                pid: 42,
                name: "qemu".into(),
            }],
            start_unix_ns: 1_700_000_000 * SEC + 250_000_000,
            start_ts_ns: 5 * SEC + 100,
            duration_ns: 3 * SEC,
            unobserved: Some(2),
            read_failed: None,
            unmatched: None,
            no_state: None,
            ..testdata::header()
        }
    }

    /// 3000 exits, 1000 in each of the intervals starting at 5, 6 and 7 s.
    fn sample_exits() -> Vec<Exit> {
        let reasons = [
            testdata::IO,
            Reason {
                space: ReasonSpace::Userspace,
                code: 2,
            },
            Reason {
                space: ReasonSpace::Vmx,
                code: 0x8000_0021,
            },
        ];
        (0..3000u64)
            .map(|i| {
                let mut stages = [None; STAGES];
                stages[Stage::Cycle.index()] = Some(1000 + i * 7);
                if i % 2 == 0 {
                    stages[Stage::Handler.index()] = Some(500 + i);
                }
                Exit {
                    pid: 42,
                    tid: 43,
                    vcpu: (i % 5 != 0).then_some((i % 3) as u32),
                    ts_ns: 5 * SEC + 100 + i * 1_000_000,
                    reason: reasons[(i % 3) as usize],
                    userspace_reason: (i % 4 == 0).then_some(2),
                    // Some `--detail` guest pages: fault-ins and an MMIO page.
                    access: Some(match i % 7 {
                        0 => Access::Page {
                            gpa: 0x2_0000 + (i % 3) * 0x1000,
                        },
                        1 => Access::Mmio {
                            gpa: 0xd_0004,
                            size: 1,
                            write: true,
                            npf: true,
                        },
                        _ => Access::Pio {
                            port: 0x3f8,
                            size: 1,
                            write: i % 2 == 0,
                        },
                    }),
                    stages,
                }
            })
            .collect()
    }

    fn sample() -> Aggregate {
        let mut a = Aggregate::new(SEC);
        for e in sample_exits() {
            a.add(&e);
        }
        a
    }

    fn write_sample(dir: &Path) -> (PathBuf, Vec<u8>) {
        let path = dir.join("kvmprof.data");
        write(&path, &header(), &sample_exits(), SEC).expect("writes");
        let bytes = fs::read(&path).expect("readable");
        (path, bytes)
    }

    fn intervals(a: &Aggregate) -> Vec<(u64, Key, Stage, Histogram<u64>)> {
        let mut v = Vec::new();
        a.for_each_interval(|start, key, stage, h| {
            v.push((start, key, stage, h.clone()));
            Ok(())
        })
        .expect("intervals");
        v
    }

    fn assert_same(a: &Aggregate, b: &Aggregate) {
        assert_eq!(b.span(), a.span());
        assert_eq!(b.total_exits(), a.total_exits());
        assert_eq!(b.ports(), a.ports());
        assert_eq!(b.rips(), a.rips());
        assert_eq!(b.row_cycles(), a.row_cycles());
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
        assert_eq!(intervals(a), intervals(b));
    }

    #[test]
    fn a_written_file_reads_back_the_same() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, bytes) = write_sample(dir.path());
        let (h, b) = crate::recording::hlog::open(&path).expect("reads back");
        let want = Header {
            stop: Some("end of input".into()),
            ..header()
        };
        assert_eq!(h, want);
        assert_eq!(b.lost(), 0);
        assert_same(&sample(), &b);
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
        assert_eq!(text.matches("\n#[kvmprof-checkpoint] ").count(), 3);
        assert!(text.contains("\n#[kvmprof-end] {\"histograms\":39,"));
        assert!(text.ends_with("\"stop\":\"end of input\",\"lost\":0,\"unobserved\":2}\n"));
    }

    /// `--detail`'s guest RIPs, read in two ticks, come back added up, `other` row included.
    #[test]
    fn guest_rips_come_back_from_every_block() {
        let exits = sample_exits();
        let rips = |ts_ns, rips, rips_other| {
            let exit = Exit {
                ts_ns,
                ..exits[0].clone()
            };
            Tally::of_rips(exit, rips, rips_other)
        };
        let mut w = Writer::new(Vec::new(), SEC);
        w.write_header(&header(), header().start_ts_ns).unwrap();
        let mut want = Aggregate::new(SEC);
        for e in &exits {
            w.add(e);
            want.add(e);
        }
        let ticks = [
            rips(exits[0].ts_ns, vec![(0x1048, 30), (0x1068, 2)], 0),
            rips(exits[exits.len() - 1].ts_ns, vec![(0x1048, 5)], 4),
        ];
        for t in &ticks {
            w.add_tally(t);
            want.add_tally(t);
        }
        let end = End {
            duration_ns: 3 * SEC,
            stop: "SIGINT".into(),
            lost: 0,
            unobserved: None,
            read_failed: None,
            unmatched: None,
            no_state: None,
            own_cost: None,
            slow: None,
            kvm_stats: None,
            halts: None,
            funcs: None,
        };
        let (_, a) = parse(&w.finish(&end).unwrap()).unwrap();
        let counts: Vec<(Option<u64>, u64)> = a.rips().iter().map(|(k, n)| (k.rip, *n)).collect();
        assert_eq!(counts, [(None, 4), (Some(0x1048), 35), (Some(0x1068), 2)]);
        assert_same(&want, &a);
    }

    /// What a live recording does: header first, intervals as time passes (one with a late
    /// exit), the end last; and what a kill at each of those moments leaves.
    #[test]
    fn a_file_written_as_it_goes_reads_up_to_its_last_whole_interval() {
        let exits = sample_exits();
        let mut w = Writer::new(Vec::new(), SEC);
        w.write_header(&header(), header().start_ts_ns).unwrap();
        let header_only = w.out.clone();
        for e in &exits[..1500] {
            w.add(e);
        }
        // At 6.5 s only the interval at 5 s has ended.
        w.write_before(6 * SEC + SEC / 2, 1).unwrap();
        let one_interval = w.out.clone();
        for e in &exits[1500..] {
            w.add(e);
        }
        w.add(&exits[10]); // late: its interval was already written
        w.write_before(8 * SEC, 2).unwrap();
        let end = End {
            duration_ns: 3 * SEC,
            stop: "SIGINT".into(),
            lost: 2,
            unobserved: Some(2),
            read_failed: None,
            unmatched: None,
            no_state: None,
            own_cost: None,
            slow: None,
            kvm_stats: Some(KvmStats {
                change: [("exits".to_owned(), 1501)].into(),
                note: None,
            }),
            halts: Some(Halts {
                rows: vec![crate::data::halts::HaltRow {
                    pid: 7,
                    vcpu: Some(0),
                    halts: 3,
                    ..Default::default()
                }],
            }),
            funcs: Some(Funcs {
                hooks: vec![crate::data::funcs::FuncHook {
                    name: "x86_decode_emulated_instruction".to_owned(),
                    mode: "fentry".to_owned(),
                    symbol: "x86_decode_emulated_instruction".to_owned(),
                    outside: 2,
                    folded: 0,
                }],
                rows: Vec::new(),
            }),
        };
        let bytes = w.finish(&end).unwrap();

        let mut want = Aggregate::new(SEC);
        for e in exits.iter().chain([&exits[10]]) {
            want.add(e);
        }
        let (h, a) = parse(&bytes).unwrap();
        assert_eq!(
            (h.duration_ns, h.stop.as_deref(), h.cut),
            (3 * SEC, Some("SIGINT"), None)
        );
        assert_eq!(a.lost(), 2);
        assert_eq!(
            h.kvm_stats, end.kvm_stats,
            "KVM's counts come back from the end record"
        );
        assert_eq!(h.halts, end.halts, "so do the halts");
        assert_eq!(h.funcs, end.funcs, "and the timed functions");
        assert_same(&want, &a);

        let err = parse(&header_only).unwrap_err().to_string();
        assert_eq!(
            err,
            "truncated: cut after line 6 before its first whole interval"
        );

        // Killed after the first interval, mid-way through writing the next one.
        let mut cut = one_interval.clone();
        cut.extend_from_slice(&bytes[one_interval.len()..one_interval.len() + 300]);
        let (h, a) = parse(&cut).unwrap();
        let kept_lines = one_interval.iter().filter(|&&b| b == b'\n').count() as u64;
        let c = h.cut.clone().expect("cut");
        assert_eq!(c.kept_lines, kept_lines);
        assert!(c.lines > kept_lines);
        // The interval at 5 s is whole: from 5 s + 100 ns to 6 s.
        assert_eq!((h.duration_ns, &h.stop), (SEC - 100, &None));
        assert_eq!(a.total_exits(), 1000);
        assert_eq!(a.lost(), 1);
        let mut first = Aggregate::new(SEC);
        for e in &exits[..1000] {
            first.add(e);
        }
        assert_same(&first, &a);
        let warning = c.warning(Path::new("k.data"), &h);
        assert_eq!(
            warning,
            format!(
                "warning: k.data was cut after line {} without its end record (the recording \
                 was killed or crashed): reporting its first 1.0 s, up to line {kept_lines}",
                c.lines
            )
        );
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
        // As a data file: `hlog::open` would read these as another tool's log.
        let err = parse_file(&path, bytes)
            .expect_err("must not parse")
            .to_string();
        assert!(err.starts_with(&format!("{}: ", path.display())), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
        err
    }

    /// A cut anywhere is either an error saying so (nothing whole to read) or the whole
    /// intervals before it, marked as cut: never a panic, never a silent shorter recording.
    #[test]
    fn a_cut_at_any_offset_is_an_error_or_a_marked_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, bytes) = write_sample(dir.path());
        let header_end = bytes.iter().position(|&b| b == b'\n').expect("lines");
        let breaks = bytes.iter().enumerate().filter(|(_, &b)| b == b'\n');
        let around_breaks = breaks.flat_map(|(i, _)| [i, i + 1]);
        let cuts = (0..=header_end)
            .chain(around_breaks)
            .chain((0..bytes.len()).step_by(61));
        for cut in cuts.filter(|&c| c < bytes.len()) {
            let prefix = &bytes[..cut];
            // Whole checkpoints before the cut: intervals of 1000 exits each.
            let kept = String::from_utf8_lossy(prefix)
                .matches("\n#[kvmprof-checkpoint] ")
                .count() as u64;
            let whole = prefix
                .split_inclusive(|&b| b == b'\n')
                .filter(|l| l.starts_with(b"#[kvmprof-checkpoint] ") && l.ends_with(b"\n"))
                .count() as u64;
            match parse(prefix) {
                Ok((h, a)) => {
                    assert!(h.cut.is_some(), "cut {cut} read as whole");
                    assert_eq!(a.total_exits(), 1000 * whole, "cut {cut}");
                    assert!(whole > 0 && whole <= kept);
                }
                Err(e) => {
                    let err = format!("{e:#}");
                    assert!(!err.contains('\n'), "one line: {err}");
                    assert_eq!(whole, 0, "cut {cut}: {err}");
                    assert!(
                        err.contains("truncated") || err.contains("empty file"),
                        "cut {cut}: {err}"
                    );
                }
            }
        }
    }

    #[test]
    fn bad_input_names_the_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, bytes) = write_sample(dir.path());
        let text = String::from_utf8(bytes.clone()).expect("utf-8");
        let missing =
            crate::recording::hlog::open(&dir.path().join("missing.data")).expect_err("missing");
        assert!(
            missing.to_string().contains("missing.data: cannot read: "),
            "{missing}"
        );
        assert!(error_of(dir.path(), b"").ends_with(": empty file"));
        assert!(error_of(dir.path(), b"\x7fELF\x02\x01garbage").contains("not a kvmprof data file"));
        let plain_hlog = "#[StartTime: 1.000 (seconds since epoch)]\nTag=a,0.1,1.0,2.0,AAAA\n";
        assert!(error_of(dir.path(), plain_hlog.as_bytes()).contains("not a kvmprof data file"));
        assert!(error_of(dir.path(), b"#[kvmprof-header] {nope}\n").contains("line 1: bad header"));
        let v1 = text.replacen("\"version\":2", "\"version\":1", 1);
        assert!(error_of(dir.path(), v1.as_bytes()).contains("unsupported format"));

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
        assert!(err.contains("/vmm is not in its checkpoint"), "{err}");
        let err = replace("#dropped");
        assert!(
            err.contains("checkpoint counts 13 histograms, the file has 12"),
            "{err}"
        );
        let err = error_of(dir.path(), format!("{text}trailing\n").as_bytes());
        assert!(err.contains("data after the end record"), "{err}");
        let err = error_of(
            dir.path(),
            format!("{text}{CHECKPOINT_MARK}{{}}\n").as_bytes(),
        );
        assert!(err.contains("data after the end record"), "{err}");
        let cp = text
            .lines()
            .find(|l| l.starts_with(CHECKPOINT_MARK))
            .unwrap();
        let err = replace_line(
            dir.path(),
            &text,
            cp,
            &cp.replace("\"samples\":", "\"samples\":1"),
        );
        assert!(err.contains("samples, the checkpoints say"), "{err}");
        let err = replace_line(dir.path(), &text, cp, &cp[..cp.len() - 1]);
        assert!(err.contains("bad checkpoint"), "{err}");
    }

    fn replace_line(dir: &Path, text: &str, old: &str, new: &str) -> String {
        error_of(dir, text.replacen(old, new, 1).as_bytes())
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

    /// Any byte of any line changed: an error or a reading, never a panic.
    #[test]
    fn damaged_records_never_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, bytes) = write_sample(dir.path());
        for i in (0..bytes.len()).step_by(41) {
            for x in [b'9', b'}', b'\n'] {
                let mut bad = bytes.clone();
                bad[i] = x;
                let _ = parse(&bad);
            }
        }
    }

    #[test]
    fn the_kernel_anomaly_counts_go_in_the_end_record_and_older_files_have_none() {
        let end = |n: Option<u64>| End {
            duration_ns: SEC,
            stop: "duration".into(),
            lost: 0,
            unobserved: Some(0),
            read_failed: n,
            unmatched: n.map(|n| n + 1),
            no_state: n.map(|n| n + 2),
            own_cost: None,
            slow: None,
            kvm_stats: None,
            halts: None,
            funcs: None,
        };
        let file = |n| {
            let mut w = Writer::new(Vec::new(), SEC);
            w.write_header(&header(), header().start_ts_ns).unwrap();
            w.finish(&end(n)).unwrap()
        };
        let h = parse(&file(Some(3))).unwrap().0;
        assert_eq!(
            (h.read_failed, h.unmatched, h.no_state),
            (Some(3), Some(4), Some(5))
        );
        let old = file(None);
        for field in ["read_failed", "unmatched", "no_state"] {
            assert!(!String::from_utf8_lossy(&old).contains(field));
        }
        let h = parse(&old).unwrap().0;
        assert_eq!((h.read_failed, h.unmatched, h.no_state), (None, None, None));
    }
}
