//! What a row's exits were about: its keys (ports and MMIO addresses, and with `--detail`
//! MSRs and their direction, CPUID leaves, hypercalls) and, with `--detail`, the guest
//! instructions that made them. Counted since the start or the last reset like the table,
//! each key with its rate over the last refresh and its cycle p50/p99. The full-screen view
//! shows those of one row in a panel (Enter or `d`), `--batch --detail` those of every row
//! after each frame.
use std::{cmp::Reverse, collections::BTreeMap, time::Duration};

use hdrhistogram::Histogram;

use crate::{
    backend::reason_name,
    data::aggregate::{Aggregate, Key, KeyStats, PortKey, RipKey},
    data::group::GroupId,
    data::model::Reason,
    sinks::report::table_name,
    tui::view::{self, Rates},
    util::units,
};

/// Keys and guest RIPs listed per row.
const TOP_KEYS: usize = 10;
const TOP_RIPS: usize = 5;

/// Ends the rates' interval of the ports-table rows at `at`.
pub fn sample(rates: &mut Rates<PortKey>, agg: &Aggregate, at: Duration) {
    rates.sample_counts(agg.ports().iter().map(|(k, s)| (*k, s.count)).collect(), at);
}

/// Whether exits of `pid` and `reason` are in the row `id`. Keys are not counted per vCPU,
/// so a vCPU's row has its process's.
fn in_row(id: GroupId, pid: u32, reason: Reason) -> bool {
    match id {
        GroupId::Reason(r) => r == reason,
        GroupId::Vcpu(p, _) | GroupId::Pid(p) => p == pid,
    }
}

/// `now` less `base`'s count of the same row.
fn since<K: Ord>(now: &BTreeMap<K, u64>, base: Option<&BTreeMap<K, u64>>, k: &K) -> u64 {
    let then = base.and_then(|b| b.get(k)).copied().unwrap_or(0);
    now.get(k).copied().unwrap_or(0).saturating_sub(then)
}

/// The cycle of a row's exits since `base`, if measured.
fn cycle(agg: &Aggregate, base: Option<&Aggregate>, k: &PortKey) -> Option<Histogram<u64>> {
    let mut h = agg.row_cycles().get(k)?.clone();
    if let Some(old) = base.and_then(|b| b.row_cycles().get(k)) {
        // Every value of the earlier histogram is in the later one; if not, show none.
        h.subtract(old).ok()?;
    }
    (!h.is_empty()).then_some(h)
}

/// The lines about row `id`, labelled `label`: its keys, most exits first, then its guest
/// RIPs; none if it has neither. `keys` are the table's statistics
/// ([`super::since::shown`]): a key's share is of its pid and reason's exits there.
pub fn lines(
    agg: &Aggregate,
    base: Option<&Aggregate>,
    keys: &BTreeMap<Key, KeyStats>,
    rates: &Rates<PortKey>,
    id: GroupId,
    label: &str,
) -> Vec<String> {
    let mut exits: BTreeMap<(u32, Reason), u64> = BTreeMap::new();
    for (k, s) in keys {
        *exits.entry((k.pid, k.reason)).or_default() += s.count;
    }
    let shown = |pid, reason| in_row(id, pid, reason) && exits.contains_key(&(pid, reason));
    let counts = |a: &Aggregate| -> BTreeMap<PortKey, u64> {
        a.ports().iter().map(|(k, s)| (*k, s.count)).collect()
    };
    let (now, then) = (counts(agg), base.map(counts));
    let mut rows: Vec<(PortKey, u64)> = now
        .keys()
        .filter(|k| shown(k.pid, k.reason))
        .map(|k| (*k, since(&now, then.as_ref(), k)))
        .filter(|&(_, n)| n > 0)
        .collect();
    rows.sort_by_key(|&(k, n)| (Reverse(n), k));
    let mut out = Vec::new();
    if !rows.is_empty() {
        out.push(format!(
            "{label}: keys (top {} of {})",
            TOP_KEYS.min(rows.len()),
            rows.len()
        ));
        out.push(format!(
            "{:>8}  {:<10}{:<16}{:<6}{:>10}{:>8}{:>9}{:>9}{:>9}  {:<28}reason",
            "pid", "space", "key", "dir", "count", "share", "exits/s", "p50", "p99", "name"
        ));
    }
    for &(k, n) in rows.iter().take(TOP_KEYS) {
        let key = if k.folded {
            "other".to_owned()
        } else {
            k.space.key_text(k.addr)
        };
        let h = cycle(agg, base, &k);
        let q = |q| {
            h.as_ref()
                .map_or_else(|| "-".to_owned(), |h| units::ns(h.value_at_quantile(q)))
        };
        let line = format!(
            "{:>8}  {:<10}{key:<16}{:<6}{n:>10}{:>8}{:>9}{:>9}{:>9}  {:<28}{}",
            k.pid,
            k.space.name(),
            k.space.direction(k.write),
            units::pct(units::ratio(n, exits[&(k.pid, k.reason)])),
            view::rate(rates.rate(|r| r == &k)),
            q(0.5),
            q(0.99),
            table_name(k.space, k.addr).unwrap_or_else(|| "-".into()),
            reason_name(k.reason),
        );
        out.push(line);
    }
    let rips = agg.rips();
    let mut rip_rows: Vec<(RipKey, u64)> = rips
        .keys()
        .filter(|k| shown(k.pid, k.reason))
        .map(|k| (*k, since(rips, base.map(Aggregate::rips), k)))
        .filter(|&(_, n)| n > 0)
        .collect();
    // What a RIP's share is of: the RIP-counted exits of its pid and reason.
    let mut counted: BTreeMap<(u32, Reason), u64> = BTreeMap::new();
    for (k, n) in &rip_rows {
        *counted.entry((k.pid, k.reason)).or_default() += n;
    }
    rip_rows.sort_by_key(|&(k, n)| (Reverse(n), k));
    if !rip_rows.is_empty() {
        out.push(format!(
            "{label}: guest RIPs (top {} of {})",
            TOP_RIPS.min(rip_rows.len()),
            rip_rows.len()
        ));
        out.push(format!(
            "{:>8}  {:<24}{:<20}{:>10}{:>8}",
            "pid", "reason", "rip", "count", "share"
        ));
    }
    for &(k, n) in rip_rows.iter().take(TOP_RIPS) {
        let rip = k
            .rip
            .map_or_else(|| "other".to_owned(), |r| format!("{r:#x}"));
        out.push(format!(
            "{:>8}  {:<24}{rip:<20}{n:>10}{:>8}",
            k.pid,
            reason_name(k.reason),
            units::pct(units::ratio(n, counted[&(k.pid, k.reason)]))
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::model::{Access, Exit, Tally};
    use crate::testdata::{self, IO};

    fn pio(port: u16, cycle: u64) -> Exit {
        Exit {
            access: Some(Access::Pio {
                port,
                size: 1,
                write: true,
            }),
            ..testdata::exit(7, 0, IO, testdata::cycle(Some(cycle)))
        }
    }

    /// A row's keys with counts, shares and percentiles since the reset, its RIPs after,
    /// and nothing for a row without keys.
    #[test]
    fn a_rows_keys_and_rips_count_since_the_reset() {
        let mut agg = Aggregate::new(1_000_000_000);
        for _ in 0..3 {
            agg.add(&pio(0x3f8, 1_000));
        }
        agg.add(&pio(0x70, 5_000));
        agg.add_tally(&Tally::of_rips(pio(0x3f8, 0), vec![(0x1014, 4)], 0));
        let base = agg.clone();
        for _ in 0..2 {
            agg.add(&pio(0x3f8, 2_000));
        }
        agg.add(&pio(0x70, 7_000));
        agg.add_tally(&Tally::of_rips(pio(0x3f8, 0), vec![(0x1014, 3)], 0));
        let keys = super::super::since::shown(&agg, Some(&base), &Default::default());
        let mut rates = Rates::default();
        sample(&mut rates, &base, Duration::from_secs(1));
        sample(&mut rates, &agg, Duration::from_secs(2));
        let lines = lines(&agg, Some(&base), &keys, &rates, GroupId::Reason(IO), "io");
        let cols =
            |i: usize| -> Vec<String> { lines[i].split_whitespace().map(str::to_owned).collect() };
        assert_eq!(lines[0], "io: keys (top 2 of 2)");
        assert_eq!(
            cols(2),
            ["7", "pio", "0x3f8", "out", "2", "66.7%", "2.00", "2.00µs", "2.00µs", "-", "io"],
            "{lines:#?}"
        );
        assert_eq!(
            cols(3)[2..9],
            ["0x70", "out", "1", "33.3%", "1.00", "7.00µs", "7.00µs"]
        );
        assert_eq!(lines[4], "io: guest RIPs (top 1 of 1)");
        assert_eq!(cols(6), ["7", "io", "0x1014", "3", "100.0%"]);
        let hlt = GroupId::Reason(testdata::HLT);
        assert!(super::lines(&agg, Some(&base), &keys, &rates, hlt, "hlt").is_empty());
    }
}
