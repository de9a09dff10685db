//! Prometheus histogram buckets for exit latencies, counted exactly from HDR histograms.
//!
//! The bounds follow a 1-2-5 series from 100 ns to 50 ms (exit latencies run from below a
//! microsecond to tens of milliseconds), each moved up to the last value of its HDR bucket
//! (at most 0.1% higher; bounds below 2048 ns are unchanged). An HDR histogram cannot tell
//! values of one of its buckets apart, so only at such edges is "how many values ≤ bound"
//! known exactly; the `le` labels carry these exact bounds.
use std::sync::OnceLock;

use hdrhistogram::Histogram;

use crate::data::aggregate;

/// The 1-2-5 series, in ns.
const NOMINAL_NS: [u64; 18] = [
    100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000,
    1_000_000, 2_000_000, 5_000_000, 10_000_000, 20_000_000, 50_000_000,
];

/// Number of buckets, the last one being `+Inf`.
pub const BUCKETS: usize = NOMINAL_NS.len() + 1;

/// Upper bounds in ns (inclusive), on HDR bucket edges of [`aggregate::new_histogram`].
pub fn bounds_ns() -> &'static [u64; NOMINAL_NS.len()] {
    static BOUNDS: OnceLock<[u64; NOMINAL_NS.len()]> = OnceLock::new();
    BOUNDS.get_or_init(|| {
        let h = aggregate::new_histogram();
        NOMINAL_NS.map(|n| h.highest_equivalent(n))
    })
}

/// Per-bucket (not cumulative) counts of `hist`, the last being the values above every bound.
pub fn counts(hist: &Histogram<u64>) -> [u64; BUCKETS] {
    let bounds = bounds_ns();
    let mut out = [0; BUCKETS];
    for v in hist.iter_recorded() {
        // The largest value of the HDR bucket: every value of that bucket is ≤ it, and a
        // bound is ≥ it exactly when the whole HDR bucket lies below the bound.
        let top = v.value_iterated_to();
        let i = bounds.partition_point(|&b| b < top);
        out[i] += v.count_at_value();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_sit_on_hdr_bucket_edges_close_to_the_series() {
        let b = bounds_ns();
        assert_eq!(&b[..5], &[100, 200, 500, 1_000, 2_000]);
        let h = aggregate::new_histogram();
        for (&bound, &n) in b.iter().zip(&NOMINAL_NS) {
            assert!(bound >= n && (bound - n) * 1000 <= n, "{bound} vs {n}");
            assert_eq!(h.highest_equivalent(bound), bound);
            // The next value starts a new HDR bucket: nothing above the bound is counted in.
            assert_eq!(h.lowest_equivalent(bound + 1), bound + 1);
        }
    }

    #[test]
    fn counts_are_exact_at_every_bound() {
        let mut h = aggregate::new_histogram();
        let b = bounds_ns();
        // Values right at and right above each bound, and far beyond the last.
        for &bound in b {
            h.record(bound).unwrap();
            h.record_n(bound + 1, 2).unwrap();
        }
        h.record(3_600_000_000_000).unwrap();
        h.record(1).unwrap();
        let c = counts(&h);
        assert_eq!(c[0], 2, "1 ns and 100 ns");
        // 2 just above the previous bound, 1 right at this one.
        assert!(c[1..b.len()].iter().all(|&n| n == 3), "{c:?}");
        assert_eq!(c[BUCKETS - 1], 2 + 1);
        assert_eq!(c.iter().sum::<u64>(), h.len());
    }
}
