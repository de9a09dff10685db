//! The `.hgrm` export: the percentile distribution text Java's `HistogramLogProcessor`
//! writes (`-outputValueUnitRatio`, 5 ticks per half distance), byte for byte, so that
//! HdrHistogram's plotters and scripts that diff `.hgrm` files take kvmprof's.
//!
//! Three things of Java's are followed here rather than the Rust crate's: its percentile
//! steps ([`java_percentiles`]), its rounding of `%.Nf` ([`java_fixed`]) and the two header
//! lines the processor writes before the distribution.
use std::fmt::Write as _;

use anyhow::{anyhow, bail, Result};
use hdrhistogram::Histogram;

use crate::data::aggregate::Aggregate;
use crate::data::series::{self, Selection};
use crate::recording::header::Header;
use crate::sinks::export::{log_base_ts, Unit};

/// The chosen reasons in one stage, as `HistogramLogProcessor -outputValueUnitRatio R` prints
/// them from the data file (`-tag` for one series). The StartTime date is in UTC, where Java
/// prints the JVM's time zone.
pub fn hgrm(h: &Header, a: &Aggregate, sel: &Selection, unit: Unit) -> Result<String> {
    let stage = match sel.stages[..] {
        [] => series::default_stage(a),
        [s] => s,
        _ => bail!("a .hgrm holds one distribution: choose one --stage"),
    };
    let sel = Selection {
        stages: vec![stage],
        ..sel.clone()
    };
    let hist = series::by_stage(a, &sel)
        .remove(&stage)
        .ok_or_else(|| anyhow!("no {} samples to export", stage.name()))?;
    let mut out = String::from(
        "#[Overall percentile distribution between 0.000 and <Infinite> seconds (relative to \
         StartTime)]\n",
    );
    let start_ns = h.log_start_unix_ns(log_base_ts(h, a)?);
    if let Some(line) = start_time_line(start_ns) {
        out.push_str(&line);
    }
    out.push_str(&percentile_distribution(&hist, unit.ratio()));
    Ok(out)
}

/// Java's `#[StartTime: S (seconds since epoch), DATE]` line for the StartTime the interval
/// log holds (written as `{:.3}` seconds); none when it is 0, as Java.
fn start_time_line(start_unix_ns: u64) -> Option<String> {
    let secs = format!("{:.3}", start_unix_ns as f64 / 1e9);
    let ms = (secs.parse::<f64>().ok()? * 1000.0) as i64;
    if ms == 0 {
        return None;
    }
    // java.util.Date.toString(): "EEE MMM dd HH:mm:ss zzz yyyy".
    let date = jiff::Timestamp::from_millisecond(ms)
        .ok()?
        .strftime("%a %b %d %H:%M:%S UTC %Y")
        .to_string();
    Some(format!(
        "#[StartTime: {secs} (seconds since epoch), {date}]\n"
    ))
}

/// HdrHistogram's percentile distribution text (Java `AbstractHistogram
/// .outputPercentileDistribution`, 5 ticks per half distance).
pub fn percentile_distribution(h: &Histogram<u64>, ratio: f64) -> String {
    let digits = usize::from(h.sigfig());
    let f = |x: f64, width: usize, decimals: usize| format!("{:>width$}", java_fixed(x, decimals));
    let mut out = format!(
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    for (value, percentile, total) in java_percentiles(h, 5) {
        let q = percentile / 100.0;
        let _ = write!(
            out,
            "{} {} {total:>10}",
            f(value as f64 / ratio, 12, digits),
            f(q, 2, 12)
        );
        if percentile < 100.0 {
            let _ = write!(out, " {}", f(1.0 / (1.0 - q), 14, 2));
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "#[Mean    = {}, StdDeviation   = {}]",
        f(h.mean() / ratio, 12, digits),
        f(h.stdev() / ratio, 12, digits)
    );
    let _ = writeln!(
        out,
        "#[Max     = {}, Total count    = {:>12}]",
        f(h.max() as f64 / ratio, 12, digits),
        h.len()
    );
    // Java's sub-bucket count: the power of two above 2 × 10^digits.
    let sub_buckets = (2 * 10u64.pow(u32::from(h.sigfig()))).next_power_of_two();
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        sub_buckets
    );
    out
}

/// `x` with `decimals` digits after the point as Java's `Formatter` prints `%.Nf`: it rounds
/// the shortest decimal that reads back as `x`, half up, where Rust rounds the binary
/// value's exact expansion half to even (0.9997802734375 to 12 places: Java ...438, Rust
/// ...437, seen on a real recording).
pub fn java_fixed(x: f64, decimals: usize) -> String {
    if !x.is_finite() {
        return if x.is_nan() {
            "NaN"
        } else if x > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        }
        .to_owned();
    }
    // The shortest digits that read back as |x|: "d.ddde-5".
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let mut digits: Vec<u8> = mantissa
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect();
    // Digits before the point; at least one ("0.00…").
    let mut point = exp.parse::<i64>().unwrap_or(0) + 1;
    if point < 1 {
        let zeros = usize::try_from(1 - point).unwrap_or(0);
        digits.splice(0..0, std::iter::repeat_n(0, zeros));
        point = 1;
    }
    let point = usize::try_from(point).unwrap_or(1);
    let keep = point + decimals;
    if digits.len() > keep {
        let up = digits[keep] >= 5;
        digits.truncate(keep);
        if up {
            let mut i = keep;
            loop {
                if i == 0 {
                    digits.insert(0, 1);
                    break;
                }
                i -= 1;
                if digits[i] == 9 {
                    digits[i] = 0;
                } else {
                    digits[i] += 1;
                    break;
                }
            }
        }
    }
    digits.resize(digits.len().max(keep), 0);
    let int_len = digits.len() - decimals;
    let text: String = digits.iter().map(|d| char::from(b'0' + d)).collect();
    let sign = if x < 0.0 { "-" } else { "" };
    if decimals == 0 {
        format!("{sign}{text}")
    } else {
        format!("{sign}{}.{}", &text[..int_len], &text[int_len..])
    }
}

/// The steps of Java's `PercentileIterator`: (value, percentile level, count up to it).
/// The Rust crate's quantile iterator steps in quantiles, whose rounding reaches a level one
/// sample later than Java at exact boundaries (30% of 30 samples); tools that compare
/// `.hgrm` files line by line expect Java's steps, so they are followed here.
pub fn java_percentiles(h: &Histogram<u64>, ticks_per_half_distance: u32) -> Vec<(u64, f64, u64)> {
    let total = h.len();
    let mut out = Vec::new();
    if total == 0 {
        return out;
    }
    let mut level = 0.0f64;
    let mut count = 0u64;
    let mut last = 0u64;
    for v in h.iter_recorded() {
        count += v.count_at_value();
        last = h.highest_equivalent(v.value_iterated_to());
        while 100.0 * count as f64 / total as f64 >= level {
            out.push((last, level, count));
            // Ticks double with each halving of the distance to 100%.
            let halvings = (100.0 / (100.0 - level)).log2() as u32;
            let ticks = u64::from(ticks_per_half_distance) << (halvings + 1).min(62);
            level += 100.0 / ticks as f64;
            if count == total {
                break; // the last value gets one step, then the 100% line
            }
        }
    }
    out.push((last, 100.0, total));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::aggregate;

    #[test]
    fn percentile_distribution_has_java_s_layout() {
        let mut h = aggregate::new_histogram();
        for v in 1..=1000u64 {
            h.record(v * 1000).expect("records");
        }
        let text = percentile_distribution(&h, 1000.0);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines[1], "");
        assert_eq!(
            lines[2],
            "       1.000 0.000000000000          1           1.00"
        );
        let last = lines[lines.len() - 4];
        assert!(last.ends_with(" 1.000000000000       1000"), "{last}");
        assert!(text.contains("#[Max     =     1000.447, Total count    =         1000]"));
        assert!(text.contains("SubBuckets     =         2048]"));
    }

    #[test]
    fn fixed_point_rounds_the_shortest_decimal_half_up_as_java() {
        assert_eq!(java_fixed(0.9997802734375, 12), "0.999780273438");
        assert_eq!(java_fixed(0.125, 2), "0.13");
        // 0.15 is 0.1499999… in binary; Java rounds its shortest decimal, "0.15".
        assert_eq!(java_fixed(0.15, 1), "0.2");
        assert_eq!(java_fixed(9.9995, 3), "10.000");
        assert_eq!(java_fixed(1e-7, 3), "0.000");
        assert_eq!(java_fixed(1234.5, 0), "1235");
        assert_eq!(java_fixed(7.915, 3), "7.915");
        assert_eq!(java_fixed(4551.111, 2), "4551.11");
        assert_eq!(java_fixed(-2.5, 0), "-3");
        assert_eq!(java_fixed(f64::INFINITY, 2), "Infinity");
    }

    #[test]
    fn the_start_time_line_is_java_s() {
        assert_eq!(
            start_time_line(1_796_182_430_119_400_000).as_deref(),
            Some("#[StartTime: 1796182430.119 (seconds since epoch), Wed Dec 02 03:33:50 UTC 2026]\n")
        );
        assert_eq!(start_time_line(0), None);
    }
}
