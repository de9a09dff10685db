//! Durations typed by people (`30`, `30s`, `2m`, `1h`, `500ms`, `50us`, `1.5s`): one parser for
//! kvmprof, the test VMM and xtask. Integer arithmetic only, so the eBPF build of this crate
//! carries no floating point.
use core::{fmt, time::Duration};

/// Longest duration accepted: a year. Longer ones are typos, and far-off deadlines overflow
/// the clocks timers are set on.
pub const MAX: Duration = Duration::from_secs(366 * 24 * 3600);

/// What a number without a unit means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bare {
    Secs,
    Millis,
}

/// Why a duration was refused; displays as one line naming the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error<'a> {
    /// Not a number.
    Invalid(&'a str),
    /// A unit other than ns, us/µs, ms, s, m or h: `(unit, input)`.
    Unit(&'a str, &'a str),
    /// Longer than [`MAX`].
    TooLong(&'a str),
}

impl fmt::Display for Error<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid(s) => write!(f, "invalid duration '{s}' (try 10s, 2m, 500ms)"),
            Error::Unit(unit, s) => write!(
                f,
                "invalid duration unit '{unit}' in '{s}' (use ns, us, ms, s, m or h)"
            ),
            Error::TooLong(s) => write!(f, "duration '{s}' is too long (at most a year, 8784h)"),
        }
    }
}

/// Parses `s`: a decimal number, then `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h` or nothing
/// (`bare`); at most [`MAX`].
pub fn parse(s: &str, bare: Bare) -> Result<Duration, Error<'_>> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let unit_ns: u128 = match (unit, bare) {
        ("", Bare::Secs) | ("s", _) => 1_000_000_000,
        ("", Bare::Millis) | ("ms", _) => 1_000_000,
        ("us" | "µs" | "μs", _) => 1_000,
        ("ns", _) => 1,
        ("m", _) => 60_000_000_000,
        ("h", _) => 3_600_000_000_000,
        _ => return Err(Error::Unit(unit, s)),
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return Err(Error::Invalid(s));
    }
    // Value = (int + frac / 10^digits) units, in ns; fraction digits past ns are dropped.
    let mut scaled: u128 = 0;
    for c in int.bytes() {
        scaled = scaled
            .checked_mul(10)
            .and_then(|v| v.checked_add(u128::from(c - b'0')))
            .ok_or(Error::TooLong(s))?;
    }
    let mut ns = scaled.checked_mul(unit_ns).ok_or(Error::TooLong(s))?;
    let mut place = unit_ns;
    for c in frac.bytes() {
        place /= 10;
        ns += u128::from(c - b'0') * place;
    }
    if ns > MAX.as_nanos() {
        return Err(Error::TooLong(s));
    }
    // At most MAX, so it fits.
    Ok(Duration::from_nanos(ns as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_from_ns_to_h() {
        let ok = |s| parse(s, Bare::Secs).unwrap();
        assert_eq!(ok("7ns"), Duration::from_nanos(7));
        assert_eq!(ok("50us"), Duration::from_micros(50));
        // The micro sign (U+00B5) and the Greek mu (U+03BC) look alike; both are typed.
        assert_eq!(ok("50µs"), Duration::from_micros(50));
        assert_eq!(ok("50μs"), Duration::from_micros(50));
        assert_eq!(ok("1.5us"), Duration::from_nanos(1500));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("1.9ns"), Duration::from_nanos(1));
        assert_eq!(parse("50 us", Bare::Secs), Err(Error::Unit(" us", "50 us")));
    }
}
