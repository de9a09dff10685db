//! kvmprof's own cost, as the kernel accounts it to this process.
use std::fs;

/// CPU time of this process so far.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuTime {
    pub user: f64,
    pub system: f64,
}

/// From /proc/self/stat; `None` if it cannot be read (no /proc).
pub fn cpu_time() -> Option<CpuTime> {
    parse_stat(&fs::read_to_string("/proc/self/stat").ok()?, clock_ticks()?)
}

fn clock_ticks() -> Option<f64> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then_some(hz as f64)
}

/// utime and stime are fields 14 and 15 of `/proc/PID/stat`, counted after the `(comm)`,
/// which may itself contain spaces and parentheses.
fn parse_stat(stat: &str, hz: f64) -> Option<CpuTime> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(CpuTime {
        user: user as f64 / hz,
        system: system as f64 / hz,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utime_and_stime() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 5";
        assert_eq!(
            parse_stat(stat, 100.0),
            Some(CpuTime {
                user: 2.5,
                system: 0.5
            })
        );
        assert_eq!(parse_stat("42 (x) S 1", 100.0), None);
        assert!(cpu_time().is_some());
    }
}
