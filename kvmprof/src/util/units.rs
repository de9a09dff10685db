//! Human-readable numbers for reports: three significant digits with a unit chosen per value,
//! so `812ns`, `3.21µs` and `12.3ms` can sit in one column.

/// Decimal prefixes from the smallest up, as (size of one unit, suffix).
const TIME_UNITS: [(f64, &str); 4] = [(1.0, "ns"), (1e3, "µs"), (1e6, "ms"), (1e9, "s")];
const COUNT_UNITS: [(f64, &str); 4] = [(1.0, ""), (1e3, "k"), (1e6, "M"), (1e9, "G")];

/// `x` (non-negative) with three significant digits in the first unit where it stays below
/// 1000 after rounding; the last unit takes anything larger.
fn scaled(x: f64, units: &[(f64, &str); 4]) -> String {
    for &(size, suffix) in units {
        let v = x / size;
        // Pick the decimals from the value rounded at that precision so 9.996 becomes
        // "10.0", not "10.00", and 999.6 moves on to the next unit as "1.00".
        let decimals = if v < 9.995 {
            2
        } else if v < 99.95 {
            1
        } else if v < 999.5 {
            0
        } else {
            continue;
        };
        return format!("{v:.decimals$}{suffix}");
    }
    let (size, suffix) = units[3];
    format!("{:.0}{suffix}", x / size)
}

/// A duration in nanoseconds: integer ns below 1µs, else 3 significant digits.
pub fn ns(v: u64) -> String {
    if v < 1000 {
        format!("{v}ns")
    } else {
        scaled(v as f64, &TIME_UNITS)
    }
}

/// A rate or other non-negative quantity with a k/M/G suffix, 3 significant digits.
pub fn si(x: f64) -> String {
    scaled(x.max(0.0), &COUNT_UNITS)
}

/// A fraction in [0, 1] as a percentage with one decimal; tiny non-zero shares show as
/// `<0.1%` rather than a misleading `0.0%`.
pub fn pct(f: f64) -> String {
    if f > 0.0 && f < 0.0005 {
        "<0.1%".to_owned()
    } else {
        format!("{:.1}%", f * 100.0)
    }
}

/// `part / whole`, 0 when `whole` is 0.
pub fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_pick_a_unit_per_value() {
        assert_eq!(ns(0), "0ns");
        assert_eq!(ns(812), "812ns");
        assert_eq!(ns(999), "999ns");
        assert_eq!(ns(1000), "1.00µs");
        assert_eq!(ns(3_206), "3.21µs");
        assert_eq!(ns(7_915), "7.92µs");
        assert_eq!(ns(9_996), "10.0µs");
        assert_eq!(ns(12_345), "12.3µs");
        assert_eq!(ns(123_456), "123µs");
        assert_eq!(ns(999_499), "999µs");
        assert_eq!(ns(999_500), "1.00ms");
        assert_eq!(ns(12_300_000), "12.3ms");
        assert_eq!(ns(1_500_000_000), "1.50s");
        assert_eq!(ns(3_600_000_000_000), "3600s");
    }

    #[test]
    fn counts_and_rates_print_with_three_digits_and_an_si_suffix() {
        assert_eq!(si(0.0), "0.00");
        assert_eq!(si(0.5), "0.50");
        assert_eq!(si(12.34), "12.3");
        assert_eq!(si(999.0), "999");
        assert_eq!(si(12_345.0), "12.3k");
        assert_eq!(si(2_500_000.0), "2.50M");
        assert_eq!(si(-1.0), "0.00");
    }

    #[test]
    fn shares_print_as_percentages_and_tiny_ones_as_below_a_tenth() {
        assert_eq!(pct(0.0), "0.0%");
        assert_eq!(pct(0.0001), "<0.1%");
        assert_eq!(pct(0.123), "12.3%");
        assert_eq!(pct(1.0), "100.0%");
        assert_eq!(ratio(1, 4), 0.25);
        assert_eq!(ratio(1, 0), 0.0);
    }
}
