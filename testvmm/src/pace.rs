//! Pacing: caps a vCPU's average exit rate, with sleeps a stop request cuts short.
//!
//! The VMM only gets control at userspace exits, so that is where it sleeps.
//! In-kernel exits run back to back at full speed until the next userspace
//! exit (at the latest the `hlt` ending the round); the sleep there then
//! brings the average back down to the cap.

use std::thread;
use std::time::{Duration, Instant};

pub(crate) struct Pacer {
    start: Instant,
    rate: u64,
}

impl Pacer {
    /// `rate` is in exits per second and must be non-zero.
    pub(crate) fn new(rate: u64, start: Instant) -> Pacer {
        Pacer { start, rate }
    }

    /// How long to sleep at `now` so that `exits` so far stay within the rate.
    pub(crate) fn delay(&self, exits: u64, now: Instant) -> Duration {
        let nanos = u128::from(exits % self.rate) * 1_000_000_000 / u128::from(self.rate);
        // nanos < 1e9 as exits % rate < rate, so the cast is lossless.
        let due = Duration::new(exits / self.rate, nanos as u32);
        match self.start.checked_add(due) {
            Some(at) => at.saturating_duration_since(now),
            None => Duration::MAX,
        }
    }
}

/// Sleeps for `total`, in steps short enough to notice `stopped` promptly.
/// A `total` too long to represent sleeps until stopped.
pub(crate) fn sleep_unless(total: Duration, stopped: impl Fn() -> bool) {
    const STEP: Duration = Duration::from_millis(10);
    let until = Instant::now().checked_add(total);
    while !stopped() {
        let left = until.map_or(STEP, |u| u.saturating_duration_since(Instant::now()));
        if left.is_zero() {
            return;
        }
        thread::sleep(left.min(STEP));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_until_the_exits_are_due() {
        let t0 = Instant::now();
        let p = Pacer::new(1000, t0);
        assert_eq!(p.delay(10, t0), Duration::from_millis(10));
        assert_eq!(
            p.delay(10, t0 + Duration::from_millis(4)),
            Duration::from_millis(6)
        );
        assert_eq!(
            Pacer::new(3, t0).delay(4, t0),
            Duration::new(1, 333_333_333)
        );
    }

    #[test]
    fn never_sleeps_when_behind() {
        let t0 = Instant::now();
        let p = Pacer::new(1000, t0);
        assert_eq!(p.delay(10, t0 + Duration::from_secs(1)), Duration::ZERO);
    }

    #[test]
    fn huge_counts_do_not_overflow() {
        let t0 = Instant::now();
        assert!(Pacer::new(1, t0).delay(u64::MAX, t0) > Duration::from_secs(1 << 40));
    }

    #[test]
    fn sleep_ends_when_stopped() {
        let t0 = Instant::now();
        sleep_unless(Duration::MAX, || t0.elapsed() > Duration::from_millis(30));
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn sleep_ends_after_total() {
        let t0 = Instant::now();
        sleep_unless(Duration::from_millis(30), || false);
        assert!(t0.elapsed() >= Duration::from_millis(30));
    }
}
