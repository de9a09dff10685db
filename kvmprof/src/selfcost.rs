//! kvmprof's own cost, shown to the user: the kernel's run time of its BPF programs
//! (BPF run-time statistics, switched on only while kvmprof runs) and its own CPU and memory.
use std::{os::fd::OwnedFd, time::Duration};

use aya::{
    sys::{enable_stats, Stats},
    Ebpf,
};
use serde::{Deserialize, Serialize};

/// Keeps the kernel's BPF run-time statistics on while held. `BPF_ENABLE_STATS` is
/// reference-counted by the kernel: closing the fd restores the previous state (the
/// `kernel.bpf_stats_enabled` sysctl is left as it was), and stats cost ~20 ns per
/// program run while on, so they are on only during a recording.
pub struct RunTimeStats {
    _fd: OwnedFd,
}

impl RunTimeStats {
    /// `Err` says why the kernel refused (then no BPF cost is shown).
    pub fn enable() -> Result<RunTimeStats, String> {
        enable_stats(Stats::RunTime)
            .map(|fd| RunTimeStats { _fd: fd })
            .map_err(|e| format!("BPF_ENABLE_STATS refused: {e}"))
    }
}

/// Run time of one program since it was loaded (counted only while stats are on).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramCost {
    pub name: String,
    pub run_ns: u64,
    pub runs: u64,
}

/// The run time of every loaded program of `ebpf` that ran at least once.
pub fn programs(ebpf: &Ebpf) -> Vec<ProgramCost> {
    let mut out: Vec<ProgramCost> = ebpf
        .programs()
        .filter_map(|(name, p)| {
            let info = p.info().ok()?;
            (info.run_count() > 0).then(|| ProgramCost {
                name: name.to_owned(),
                run_ns: info.run_time().as_nanos() as u64,
                runs: info.run_count(),
            })
        })
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.run_ns));
    out
}

/// What profiling cost, for the report header and `top`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnCost {
    /// Per program; empty when run-time stats were unavailable (`note` says why).
    pub programs: Vec<ProgramCost>,
    /// kvmprof's user + system CPU time.
    pub cpu_ns: u64,
    /// Peak resident set size (VmHWM).
    pub peak_rss_bytes: u64,
    /// Why BPF run time is missing, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Exits the kernel tallied (`kvmprof_common::tally`); the others came one by one.
    #[serde(default)]
    pub tallied: u64,
}

impl OwnCost {
    /// Total BPF run time over `exits`, in ns per exit.
    pub fn bpf_ns_per_exit(&self, exits: u64) -> Option<f64> {
        if self.programs.is_empty() || exits == 0 {
            return None;
        }
        let total: u64 = self.programs.iter().map(|p| p.run_ns).sum();
        Some(total as f64 / exits as f64)
    }

    /// kvmprof's CPU as a share of one core over `wall`.
    pub fn cpu_share(&self, wall: Duration) -> f64 {
        self.cpu_ns as f64 / wall.as_nanos().max(1) as f64
    }

    /// One line: "BPF 85 ns/exit (kvm_pio 85), CPU 1.2% of a core, peak RSS 12 MiB".
    pub fn summary(&self, exits: u64, wall: Duration) -> String {
        let bpf = match self.bpf_ns_per_exit(exits) {
            Some(ns) => {
                let per: Vec<String> = self
                    .programs
                    .iter()
                    .map(|p| format!("{} {:.0}", p.name, p.run_ns as f64 / exits as f64))
                    .collect();
                format!("BPF {ns:.0} ns/exit ({})", per.join(", "))
            }
            None => format!(
                "BPF run time unknown ({})",
                self.note.as_deref().unwrap_or("no exits")
            ),
        };
        format!(
            "{bpf}, CPU {:.1}% of a core, peak RSS {:.0} MiB, {} of {exits} exits tallied in \
             the kernel",
            100.0 * self.cpu_share(wall),
            self.peak_rss_bytes as f64 / (1 << 20) as f64,
            self.tallied
        )
    }
}

/// CPU time of this process so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTime {
    pub user_ns: u64,
    pub system_ns: u64,
}

/// This process's CPU time so far (`/proc/self/stat`); `None` if it cannot be read.
pub fn cpu_time() -> Option<CpuTime> {
    let (user, system) = parse_cpu_ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    let ns = |ticks: u64| ticks.saturating_mul(1_000_000_000) / clock_ticks();
    Some(CpuTime {
        user_ns: ns(user),
        system_ns: ns(system),
    })
}

/// This process's user + system CPU time so far (0 if it cannot be read).
pub fn cpu_ns() -> u64 {
    cpu_time().map_or(0, |t| t.user_ns + t.system_ns)
}

/// utime and stime (fields 14 and 15) of a `/proc/PID/stat` line, in clock ticks. The
/// command name (field 2) may hold spaces and parentheses, so fields are counted after its
/// last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: field 3 (state) is the first, so field 14 is the twelfth.
    let mut f = rest.split_whitespace().skip(11);
    let mut tick = || f.next()?.parse::<u64>().ok();
    Some((tick()?, tick()?))
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Peak resident set size of this process (`VmHWM` in `/proc/self/status`).
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_vm_hwm(&s))
        .unwrap_or(0)
}

pub fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_counted_after_a_command_name_with_spaces() {
        let stat = "42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(parse_cpu_ticks(stat), Some((250, 50)));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        assert_eq!(parse_cpu_ticks("42 (x) S 1"), None);
        assert!(cpu_time().is_some());
    }

    #[test]
    fn peak_rss_comes_from_vm_hwm() {
        let status = "Name:\tkvmprof\nVmPeak:\t  9000 kB\nVmHWM:\t   2048 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(2 << 20));
        assert_eq!(parse_vm_hwm("Name: x\n"), None);
    }

    #[test]
    fn summary_divides_bpf_run_time_by_exits() {
        let c = OwnCost {
            programs: vec![
                ProgramCost {
                    name: "kvm_pio".into(),
                    run_ns: 8_000_000,
                    runs: 100_000,
                },
                ProgramCost {
                    name: "kvm_run_enter".into(),
                    run_ns: 2_000_000,
                    runs: 100_000,
                },
            ],
            cpu_ns: 10_000_000,
            peak_rss_bytes: 12 << 20,
            note: None,
            tallied: 99_990,
        };
        assert_eq!(c.bpf_ns_per_exit(100_000), Some(100.0));
        let s = c.summary(100_000, Duration::from_secs(1));
        assert_eq!(
            s,
            "BPF 100 ns/exit (kvm_pio 80, kvm_run_enter 20), CPU 1.0% of a core, peak RSS 12 MiB, \
             99990 of 100000 exits tallied in the kernel"
        );
        let none = OwnCost {
            note: Some("refused".into()),
            ..Default::default()
        };
        assert!(none
            .summary(5, Duration::from_secs(1))
            .contains("unknown (refused)"));
    }
}
