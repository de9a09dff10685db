//! Merges recordings (e.g. one per host) into one: counts and histograms add up per series,
//! intervals line up on the wall clock.
//!
//! Each recording's exits are on its own clock (CLOCK_MONOTONIC of its host), so the merged
//! recording counts in wall-clock ns: each interval moves by its file's wall-clock offset
//! and lands on the interval grid of the merged recording. Recordings with different
//! interval lengths do not merge (their time series would not line up).
use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
use kvmprof_common::STAGES;
use serde::Serialize;

use crate::data::aggregate::{Aggregate, Key, PortKey, PortStats, RipKey};
use crate::data::model::Vendor;
use crate::recording::header::Header;
use crate::recording::hlog;
use crate::util::units;

/// One input of a merge.
pub struct Input {
    pub path: PathBuf,
    pub header: Header,
    pub aggregate: Aggregate,
}

/// What a merged recording was made of, for the header of a report.
#[derive(Clone, Debug, Serialize)]
pub struct Merged {
    /// `path (host, source, N exits)` per file.
    pub files: Vec<String>,
    /// Whether every file knows its wall-clock start; without, there are no rates.
    pub common_clock: bool,
}

pub fn describe(inputs: &[Input]) -> Merged {
    let files = inputs
        .iter()
        .map(|i| {
            format!(
                "{} ({}, {}, {} exits)",
                i.path.display(),
                i.header.host,
                i.header.source.label(),
                i.aggregate.total_exits()
            )
        })
        .collect();
    Merged {
        files,
        common_clock: wall_clock_known(inputs),
    }
}

/// Exits, exits to the VMM by KVM_EXIT_* code, and stage sums of one key.
type Totals = (u64, BTreeMap<u32, u64>, [Option<u64>; STAGES]);

/// Merges `inputs` (at least one). A single input comes back as it is.
pub fn merge(mut inputs: Vec<Input>) -> Result<(Header, Aggregate)> {
    if inputs.len() == 1 {
        let i = inputs.remove(0);
        return Ok((i.header, i.aggregate));
    }
    let Some(first) = inputs.first() else {
        bail!("nothing to merge");
    };
    let interval_ns = first.aggregate.interval_ns();
    if let Some(other) = inputs
        .iter()
        .find(|i| i.aggregate.interval_ns() != interval_ns)
    {
        bail!(
            "cannot merge {} ({} intervals) with {} ({} intervals): interval lengths differ",
            first.path.display(),
            units::ns(interval_ns),
            other.path.display(),
            units::ns(other.aggregate.interval_ns())
        );
    }

    // Wall-clock offset of each recording's clock.
    let offsets: Vec<i128> = inputs
        .iter()
        .map(|i| i128::from(i.header.start_unix_ns) - i128::from(i.header.start_ts_ns))
        .collect();
    let wall = |t: u64, off: i128| u64::try_from((i128::from(t) + off).max(0)).unwrap_or(u64::MAX);

    let mut keys: BTreeMap<Key, Totals> = BTreeMap::new();
    let mut ports: BTreeMap<PortKey, PortStats> = BTreeMap::new();
    let mut rips: BTreeMap<RipKey, u64> = BTreeMap::new();
    let mut lost = 0u64;
    let mut span: Option<(u64, u64)> = None;
    for (i, &off) in inputs.iter().zip(&offsets) {
        let a = &i.aggregate;
        for (key, stats) in a.keys() {
            let (count, userspace, sums) = keys.entry(*key).or_default();
            *count += stats.count;
            for (code, n) in &stats.userspace {
                *userspace.entry(*code).or_default() += n;
            }
            for (sum, stage) in sums.iter_mut().zip(&stats.stages) {
                if let Some(s) = stage {
                    *sum = Some(sum.unwrap_or(0).saturating_add(s.sum_ns));
                }
            }
        }
        for (port, stats) in a.ports() {
            ports.entry(*port).or_default().merge(stats);
        }
        for (rip, n) in a.rips() {
            *rips.entry(*rip).or_default() += n;
        }
        lost = lost.saturating_add(a.lost());
        if let Some((f, l)) = a.span() {
            let (f, l) = (wall(f, off), wall(l, off));
            span = Some(span.map_or((f, l), |(a, b)| (a.min(f), b.max(l))));
        }
    }
    let mut merged = Aggregate::new(interval_ns);
    for (key, (count, userspace, sums)) in keys {
        merged.restore_key(key, count, &userspace, sums);
    }
    for (port, stats) in ports {
        merged.restore_port(port, stats);
    }
    for (rip, n) in rips {
        merged.restore_rip(rip, n);
    }
    for i in &inputs {
        for (port, hist) in i.aggregate.row_cycles() {
            merged.restore_row_cycle(*port, hist);
        }
    }
    merged.add_lost(lost);
    // Without every file's wall-clock start there is no common clock: no span, no rates.
    if let Some((f, l)) = span.filter(|_| wall_clock_known(&inputs)) {
        merged.restore_span(f, l);
    }
    for (i, &off) in inputs.iter().zip(&offsets) {
        i.aggregate
            .for_each_interval(|start_ns, key, stage, hist| {
                // Nearest interval of the merged grid.
                let start = wall(start_ns, off).saturating_add(interval_ns / 2);
                let start = start - start % interval_ns;
                merged.restore_interval(start, key, stage, hist, hlog::encode(hist)?);
                Ok(())
            })?;
    }
    Ok((merged_header(&inputs), merged))
}

/// The header of a merged recording: shared facts kept, differing ones listed.
fn merged_header(inputs: &[Input]) -> Header {
    let join = |f: &dyn Fn(&Header) -> String| {
        let mut v: Vec<String> = inputs.iter().map(|i| f(&i.header)).collect();
        v.dedup();
        v.join(", ")
    };
    // A kernel count summed over the inputs that have it.
    let sum = |f: &dyn Fn(&Header) -> Option<u64>| {
        inputs
            .iter()
            .filter_map(|i| f(&i.header))
            .reduce(|a, b| a + b)
    };
    let first = &inputs[0].header;
    let same_vendor = inputs.iter().all(|i| i.header.vendor == first.vendor);
    let start = inputs
        .iter()
        .map(|i| i.header.start_unix_ns)
        .min()
        .unwrap_or(0);
    let end = inputs
        .iter()
        .map(|i| i.header.start_unix_ns.saturating_add(i.header.duration_ns))
        .max()
        .unwrap_or(0);
    let mut hooks = Vec::new();
    for h in inputs.iter().flat_map(|i| &i.header.hooks) {
        if !hooks.contains(h) {
            hooks.push(h.clone());
        }
    }
    let mut tracepoints = Vec::new();
    for t in inputs.iter().flat_map(|i| &i.header.tracepoints) {
        if !tracepoints.contains(t) {
            tracepoints.push(t.clone());
        }
    }
    let duration_ns = if wall_clock_known(inputs) {
        end - start
    } else {
        0
    };
    Header {
        source: first.source,
        host: join(&|h| h.host.clone()),
        kernel: join(&|h| h.kernel.clone()),
        vendor: if same_vendor {
            first.vendor
        } else {
            Vendor::Unknown
        },
        hooks,
        tracepoints,
        cycle_source: join(&|h| h.cycle_source.clone()),
        processes: inputs
            .iter()
            .flat_map(|i| i.header.processes.clone())
            .collect(),
        start_unix_ns: start,
        start_ts_ns: start,
        duration_ns,
        unobserved: sum(&|h| h.unobserved),
        read_failed: sum(&|h| h.read_failed),
        unmatched: sum(&|h| h.unmatched),
        no_state: sum(&|h| h.no_state),
        // Each input's own stop and cut are said when it is read; the merge has neither.
        ..Header::default()
    }
}

/// Whether every input knows its wall-clock start (an ftrace import does not).
fn wall_clock_known(inputs: &[Input]) -> bool {
    inputs.iter().all(|i| i.header.start_unix_ns > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::model::{Exit, Stage};
    use crate::testdata::{self, IO, SEC};

    fn input(host: &str, unix_s: u64, ts_s: u64, exits: u64, cycle: u64) -> Input {
        let mut a = Aggregate::new(SEC);
        for i in 0..exits {
            a.add(&Exit {
                ts_ns: ts_s * SEC + i * (SEC / exits),
                access: Some(crate::data::model::Access::Pio {
                    port: 0x3f8,
                    size: 1,
                    write: true,
                }),
                ..testdata::exit(1, 0, IO, testdata::cycle(Some(cycle)))
            });
        }
        Input {
            path: PathBuf::from(format!("{host}.data")),
            header: Header {
                host: host.into(),
                start_unix_ns: unix_s * SEC,
                start_ts_ns: ts_s * SEC,
                ..testdata::header()
            },
            aggregate: a,
        }
    }

    #[test]
    fn two_hosts_add_up_and_their_intervals_meet_on_the_wall_clock() {
        // Same wall-clock second, different monotonic clocks.
        let (h, a) = merge(vec![
            input("a", 1000, 5, 100, 2000),
            input("b", 1000, 900, 300, 4000),
        ])
        .expect("merges");
        assert_eq!(a.total_exits(), 400);
        assert_eq!(h.host, "a, b");
        assert_eq!((h.start_unix_ns, h.duration_ns), (1000 * SEC, SEC));
        let stats = a.keys().values().next().expect("one key");
        let cycle = stats.stage(Stage::Cycle).expect("cycle");
        assert_eq!(cycle.sum_ns, 100 * 2000 + 300 * 4000);
        // The port's cycle histogram too: 100 exits of 2 µs, 300 of 4 µs.
        let port = a.row_cycles().values().next().expect("the port's cycles");
        assert_eq!((port.len(), port.value_at_quantile(0.2)), (400, 2000));
        assert_eq!(port.value_at_quantile(0.5), 4001);
        let mut intervals = Vec::new();
        a.for_each_interval(|start, _, _, h| {
            intervals.push((start, h.len()));
            Ok(())
        })
        .expect("intervals");
        assert_eq!(intervals, [(1000 * SEC, 400)]);
    }

    #[test]
    fn without_wall_clock_starts_there_is_no_duration() {
        let mut b = input("b", 1000, 900, 3, 4000);
        b.header.start_unix_ns = 0;
        let inputs = vec![input("a", 1000, 5, 1, 1), b];
        assert!(!describe(&inputs).common_clock);
        let (h, a) = merge(inputs).expect("merges");
        assert_eq!((h.duration_ns, a.span(), a.total_exits()), (0, None, 4));
    }

    #[test]
    fn different_interval_lengths_do_not_merge() {
        let mut b = input("b", 1000, 900, 3, 4000);
        b.aggregate = Aggregate::new(SEC / 2);
        let err = merge(vec![input("a", 1000, 5, 1, 1), b]).expect_err("fails");
        assert!(err.to_string().contains("interval lengths differ"), "{err}");
    }
}
