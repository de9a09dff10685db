//! Durations typed by people (`30`, `30s`, `2m`, `1h`, `500ms`, `1.5s`): one parser for
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
    /// A unit other than ms, s, m or h: `(unit, input)`.
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
                "invalid duration unit '{unit}' in '{s}' (use ms, s, m or h)"
            ),
            Error::TooLong(s) => write!(f, "duration '{s}' is too long (at most a year, 8784h)"),
        }
    }
}

/// Parses `s`: a decimal number, then `ms`, `s`, `m`, `h` or nothing (`bare`); at most [`MAX`].
pub fn parse(s: &str, bare: Bare) -> Result<Duration, Error<'_>> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let unit_ns: u128 = match (unit, bare) {
        ("", Bare::Secs) | ("s", _) => 1_000_000_000,
        ("", Bare::Millis) | ("ms", _) => 1_000_000,
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
