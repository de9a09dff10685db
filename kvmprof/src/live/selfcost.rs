//! Measures kvmprof's own cost ([`OwnCost`]): the kernel's run time of its BPF programs
//! (BPF run-time statistics, switched on by kvmprof: sampled 1 s in 10 by default, or
//! throughout with `--bpf-stats on`) and its own CPU and memory.
use std::{os::fd::OwnedFd, time::Duration};

use aya::{
    sys::{enable_stats, Stats},
    Ebpf,
};

use crate::data::cost::{BpfStats, OwnCost, ProgramCost, SAMPLES};

/// Keeps the kernel's BPF run-time statistics on while held. `BPF_ENABLE_STATS` is
/// reference-counted by the kernel: closing the fd restores the previous state (the
/// `kernel.bpf_stats_enabled` sysctl is left as it was). The stats add two clock reads to
/// every program run (an empty raw-tracepoint program: 0.97 of the VM's in-kernel PIO
/// throughput with them off, 0.92 on), so by default they are on only in samples.
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

/// Switches the statistics on and off as `--bpf-stats` says, and adds up the programs' run
/// time and the exits of the periods they were on.
pub struct Sampling {
    mode: BpfStats,
    /// Held while the statistics are on.
    stats: Option<RunTimeStats>,
    /// Why the kernel refused them; they are not asked for again.
    refused: Option<String>,
    /// The open sample: the programs' run time and the exit counts when it began.
    open: Option<(Vec<ProgramCost>, Exits)>,
    /// Exits the aggregate forgot since the open sample began (`serve` drops VMs that exited).
    forgotten: u64,
    /// Run time and exits of the samples that ended.
    programs: Vec<ProgramCost>,
    exits: u64,
    untraced: u64,
    samples: u32,
}

/// Exit counts the programs' run time is divided by: the aggregate's (traced) and the
/// kernel's count of untraced processes' exits (`counter::UNTRACED_EXITS`), the programs
/// having run for those too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exits {
    pub traced: u64,
    pub untraced: u64,
}

impl Sampling {
    /// `on` switches the statistics on now: before the programs load, so every run of theirs
    /// is timed, and the aggregate (0 exits) starts with them.
    pub fn new(mode: BpfStats) -> Sampling {
        let mut s = Sampling {
            mode,
            stats: None,
            refused: None,
            open: None,
            forgotten: 0,
            programs: Vec::new(),
            exits: 0,
            untraced: 0,
            samples: 0,
        };
        if mode == BpfStats::On && s.switch_on() {
            s.open = Some((Vec::new(), Exits::default()));
        }
        s
    }

    fn switch_on(&mut self) -> bool {
        if self.refused.is_some() {
            return false;
        }
        match RunTimeStats::enable() {
            Ok(fd) => self.stats = Some(fd),
            Err(e) => self.refused = Some(e),
        }
        self.stats.is_some()
    }

    /// Whether [`Sampling::poll`] at `since_open` would start or end a sample.
    pub fn switching(&self, since_open: Duration) -> bool {
        self.mode == BpfStats::Sampled && SAMPLES.is_on(since_open) != self.open.is_some()
    }

    /// Called often (every drain of the live loop) with the time since the window opened:
    /// starts or ends a sample when [`SAMPLES`] says so. `programs` reads the programs' run
    /// time now; `exits` the exit counts, the aggregate's just drained (both read only then).
    pub fn poll(
        &mut self,
        since_open: Duration,
        programs: impl FnOnce() -> Vec<ProgramCost>,
        exits: impl FnOnce() -> Exits,
    ) {
        if !self.switching(since_open) {
            return;
        }
        match self.open.take() {
            None => {
                // Exits that happen between the drain that counted `exits` and the switch
                // (microseconds) count without their run time: negligible.
                if self.switch_on() {
                    self.open = Some((programs(), exits()));
                }
            }
            Some((at_on, exits_at_on)) => {
                // Deltas, not totals: with the sysctl on, or another holder of the stats, the
                // programs' counters also move between samples.
                add_delta(&mut self.programs, &programs(), &at_on);
                let now = exits();
                self.exits += (now.traced + self.forgotten).saturating_sub(exits_at_on.traced);
                self.untraced += now.untraced.saturating_sub(exits_at_on.untraced);
                self.samples += 1;
                self.stats = None;
            }
        }
        self.forgotten = 0;
    }

    /// The aggregate forgot `n` exits (a VM that exited, in `serve`): the open sample keeps
    /// counting the exits it saw.
    pub fn forgot(&mut self, n: u64) {
        if self.open.is_some() {
            self.forgotten += n;
        }
    }

    /// The BPF part of the own cost now (CPU and RSS left at 0). `programs` reads the
    /// programs' run time now (`on` only); `exits` is the aggregate's exit count, or `None`
    /// at the end of a recording (`on`: divide by all its exits); `untraced` reads the
    /// kernel's count of untraced exits now (`on` only). A sample still open is left out: it
    /// did not run its full length.
    pub fn cost(
        &self,
        programs: impl FnOnce() -> Vec<ProgramCost>,
        exits: Option<u64>,
        untraced: impl FnOnce() -> u64,
    ) -> OwnCost {
        let mut c = OwnCost {
            bpf_stats: self.mode,
            note: self.refused.clone(),
            ..OwnCost::default()
        };
        match self.mode {
            BpfStats::On if self.refused.is_none() => {
                c.programs = programs();
                c.measured_exits = exits.map(|n| n + self.forgotten);
                c.untraced_exits = Some(untraced());
            }
            BpfStats::Sampled => {
                c.programs = self.programs.clone();
                c.measured_exits = Some(self.exits);
                c.untraced_exits = Some(self.untraced);
                c.samples = self.samples;
            }
            _ => {}
        }
        c
    }
}

/// Adds `now - then`, per program, to `sum`.
fn add_delta(sum: &mut Vec<ProgramCost>, now: &[ProgramCost], then: &[ProgramCost]) {
    for p in now {
        let before = then.iter().find(|b| b.name == p.name);
        let (ns, runs) = before.map_or((0, 0), |b| (b.run_ns, b.runs));
        let (ns, runs) = (p.run_ns.saturating_sub(ns), p.runs.saturating_sub(runs));
        if runs == 0 {
            continue;
        }
        match sum.iter_mut().find(|s| s.name == p.name) {
            Some(s) => {
                s.run_ns += ns;
                s.runs += runs;
            }
            None => sum.push(ProgramCost {
                name: p.name.clone(),
                run_ns: ns,
                runs,
            }),
        }
    }
    sum.sort_by_key(|p| std::cmp::Reverse(p.run_ns));
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

/// CPU time of this process so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTime {
    pub user_ns: u64,
    pub system_ns: u64,
}

/// This process's CPU time so far (`/proc/self/stat`); `None` if it cannot be read.
pub fn cpu_time() -> Option<CpuTime> {
    let (user, system) = parse_cpu_ticks(&crate::live::target::read_lossy("/proc/self/stat")?)?;
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
    crate::live::target::read_lossy("/proc/self/status")
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
    use crate::data::cost::tests::prog;

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
    fn sample_deltas_add_up_per_program() {
        let mut sum = vec![prog("raw_kvm_pio", 100, 2)];
        let then = [prog("raw_kvm_pio", 1_000, 10), prog("idle", 5, 1)];
        let now = [
            prog("raw_kvm_pio", 1_600, 20),
            prog("idle", 5, 1),
            prog("kvm_run_enter", 900, 3),
        ];
        add_delta(&mut sum, &now, &then);
        assert_eq!(
            sum,
            [prog("kvm_run_enter", 900, 3), prog("raw_kvm_pio", 700, 12)],
            "a program that did not run in the sample is left out"
        );
    }

    #[test]
    fn sampling_counts_only_the_exits_and_run_time_of_whole_samples() {
        if RunTimeStats::enable().is_err() {
            eprintln!("skipped: BPF_ENABLE_STATS needs root");
            return;
        }
        let s = |ms| Duration::from_millis(ms);
        let mut sm = Sampling::new(BpfStats::Sampled);
        let at = |ns, runs| move || vec![prog("raw_kvm_pio", ns, runs)];
        let n = |traced, untraced| move || Exits { traced, untraced };
        sm.poll(s(500), at(0, 0), n(40, 0));
        assert!(sm.stats.is_none(), "off before the first sample");
        sm.poll(s(1_010), at(1_000, 10), n(100, 7));
        assert!(sm.stats.is_some(), "on in the sample");
        // No switch: nothing is read.
        sm.poll(
            s(1_500),
            || unreachable!("programs read"),
            || unreachable!("exits read"),
        );
        sm.forgot(30); // serve dropped a VM with 30 exits
        sm.poll(s(2_010), at(6_000, 60), n(120, 57));
        assert!(sm.stats.is_none());
        sm.poll(s(11_000), at(10_000, 100), n(500, 90));
        let c = sm.cost(|| vec![prog("raw_kvm_pio", 12_000, 120)], Some(600), || 100);
        // The open sample is left out; the first one saw 120 + 30 - 100 traced exits and
        // 57 - 7 untraced ones, which the programs ran for too.
        assert_eq!(c.programs, [prog("raw_kvm_pio", 5_000, 50)]);
        assert_eq!(
            (c.measured_exits, c.untraced_exits, c.samples),
            (Some(50), Some(50), 1)
        );
        assert_eq!(c.bpf_ns_per_exit(600), Some(50.0));
    }
}
