//! What the table counts: the aggregate's statistics since the last reset (`z`), without the
//! processes that left the table. The aggregate itself only grows (`record` shares it), so a
//! reset keeps a copy of it and subtracts.
use std::collections::{BTreeMap, BTreeSet};

use crate::data::aggregate::{Aggregate, Key, KeyStats};

/// The statistics of each key of `agg` less those of `base`, leaving out the processes in
/// `gone` and the keys without an exit since `base`.
pub fn shown(
    agg: &Aggregate,
    base: Option<&Aggregate>,
    gone: &BTreeSet<u32>,
) -> BTreeMap<Key, KeyStats> {
    agg.keys()
        .iter()
        .filter(|(k, _)| !gone.contains(&k.pid))
        .filter_map(|(k, now)| {
            let stats = match base.and_then(|b| b.keys().get(k)) {
                Some(then) => less(now, then),
                None => now.clone(),
            };
            (stats.count > 0).then_some((*k, stats))
        })
        .collect()
}

/// `now` less `then`, an earlier state of the same statistics.
fn less(now: &KeyStats, then: &KeyStats) -> KeyStats {
    let mut d = now.clone();
    d.count = now.count.saturating_sub(then.count);
    for (code, n) in &mut d.userspace {
        *n = n.saturating_sub(then.userspace.get(code).copied().unwrap_or(0));
    }
    d.userspace.retain(|_, n| *n > 0);
    for (stage, old) in d.stages.iter_mut().zip(&then.stages) {
        if let (Some(s), Some(old)) = (stage.as_mut(), old) {
            s.sum_ns = s.sum_ns.saturating_sub(old.sum_ns);
            // Every value of the earlier histogram is in the later one, so this cannot
            // fail; if it did, no latency is better than a wrong one.
            if s.hist.subtract(&old.hist).is_err() {
                s.hist.reset();
            }
        }
        if stage.as_ref().is_some_and(|s| s.hist.is_empty()) {
            *stage = None;
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        data::model::Stage,
        tui::view::tests::{add, exit, KVM_EXIT_IO, SEC},
    };

    #[test]
    fn a_reset_counts_from_zero_and_gone_processes_leave() {
        let mut agg = Aggregate::new(SEC);
        add(&mut agg, 10);
        let none = BTreeSet::new();
        let all: u64 = shown(&agg, None, &none).values().map(|s| s.count).sum();
        assert_eq!(all, 30);

        let base = agg.clone();
        assert!(shown(&agg, Some(&base), &none).is_empty(), "nothing since");
        agg.add(&exit(0, KVM_EXIT_IO, 9_000, Some(4_000)));
        agg.add(&exit(0, KVM_EXIT_IO, 7_000, Some(2_000)));
        let since = shown(&agg, Some(&base), &none);
        let [(key, stats)] = since.iter().collect::<Vec<_>>()[..] else {
            panic!("one key: {since:?}")
        };
        assert_eq!((key.vcpu, key.reason), (Some(0), KVM_EXIT_IO));
        assert_eq!((stats.count, stats.userspace_count()), (2, 2));
        let cycle = stats.stage(Stage::Cycle).expect("cycle");
        assert_eq!((cycle.hist.len(), cycle.sum_ns), (2, 16_000));
        assert_eq!(
            cycle.hist.max(),
            9_007,
            "the 50 µs cycles before the reset are gone"
        );

        assert!(shown(&agg, None, &BTreeSet::from([7])).is_empty());
    }
}
