//! What profiling cost kvmprof, as data: written in the data file's header by the live
//! session (`live::selfcost` measures it), read back by the report, `top` and `serve`.
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `--bpf-stats`: when kvmprof keeps the kernel's BPF run-time statistics on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BpfStats {
    /// On for [`SAMPLES`]' samples only: the run time of the exits during them.
    Sampled,
    /// On for the whole recording.
    On,
    /// Never switched on: no BPF run time is shown.
    Off,
}

impl BpfStats {
    /// What files written before `--bpf-stats` existed did: stats on throughout.
    fn before_the_flag() -> BpfStats {
        BpfStats::On
    }
}

/// When sampled statistics are on, counted from the opening of the recording window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Start of the first sample.
    pub first: Duration,
    /// Length of each sample.
    pub length: Duration,
    /// From the start of one sample to the start of the next.
    pub every: Duration,
}

/// `--bpf-stats sampled`: on from 1 s to 2 s, 11 s to 12 s, ... (1 s in 10, ~0.5 % of the
/// VM's throughput on average instead of ~5 %). The first sample waits a second so that it
/// sees the VMs running rather than kvmprof's own start.
pub const SAMPLES: Schedule = Schedule {
    first: Duration::from_secs(1),
    length: Duration::from_secs(1),
    every: Duration::from_secs(10),
};

impl Schedule {
    /// Whether the statistics are on at `t` after the window opened.
    pub fn is_on(&self, t: Duration) -> bool {
        t >= self.first && nanos(t - self.first) % nanos(self.every) < nanos(self.length)
    }

    /// "1 s in 10", for the report.
    pub fn label(&self) -> String {
        format!(
            "{} s in {}",
            self.length.as_secs_f64(),
            self.every.as_secs_f64()
        )
    }
}

fn nanos(d: Duration) -> u128 {
    d.as_nanos().max(1)
}

/// Run time of one program since it was loaded (counted only while stats are on).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramCost {
    pub name: String,
    pub run_ns: u64,
    pub runs: u64,
}

/// What profiling cost, for the report header and `top`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnCost {
    /// Per program, the run time over [`OwnCost::measured_exits`]: over the samples when
    /// sampled. Empty when run-time stats were off, unavailable (`note` says why) or not
    /// sampled yet.
    pub programs: Vec<ProgramCost>,
    /// When the run-time statistics were on (`--bpf-stats`).
    #[serde(default = "BpfStats::before_the_flag")]
    pub bpf_stats: BpfStats,
    /// The exits the programs' run time is divided by: those counted while the statistics
    /// were on. `None`: every exit of the recording (`on`, and files from before
    /// `--bpf-stats`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_exits: Option<u64>,
    /// Samples taken (`sampled`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub samples: u32,
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
    /// Only some processes were traced: the programs also ran (briefly, to find out) for
    /// the events of the others, other VMs' exits among them. The run-time statistics time
    /// programs, not processes, so that time is in `programs`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub filtered: bool,
    /// Exits of untraced processes over the same span as [`OwnCost::measured_exits`]
    /// (counted in the kernel): the run time is divided by them and the traced exits
    /// together, every exit the programs ran for. `None` in files from before the count,
    /// whose figure is per traced exit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untraced_exits: Option<u64>,
    /// Exits that came one by one, as records (`serve` shows it: its series of VMs that
    /// left no longer add up to every exit).
    #[serde(default)]
    pub one_by_one: u64,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !b
}

impl Default for OwnCost {
    fn default() -> Self {
        OwnCost {
            programs: Vec::new(),
            bpf_stats: BpfStats::Sampled,
            measured_exits: None,
            samples: 0,
            cpu_ns: 0,
            peak_rss_bytes: 0,
            note: None,
            tallied: 0,
            filtered: false,
            untraced_exits: None,
            one_by_one: 0,
        }
    }
}

/// Programs that run per scheduler event of the whole host rather than per exit: the own-cost
/// line shows their cost per run and their runs as well.
fn per_event(program: &str) -> bool {
    use kvmprof_common::names::{sched, tp, tracepoint_programs};
    // The halt hooks run per halt (`data::halts`).
    let halt = [tp::KVM_VCPU_WAKEUP, tp::KVM_HALT_POLL_NS]
        .iter()
        .filter_map(|t| tracepoint_programs(t))
        .any(|p| p.classic == program);
    halt || program == sched::SWITCH_PROGRAM || program == sched::WAKEUP_PROGRAM
}

impl OwnCost {
    /// The exits the run time was measured over, untraced processes' among them; `exits`
    /// are the recording's.
    pub fn measured(&self, exits: u64) -> u64 {
        self.measured_exits.unwrap_or(exits) + self.untraced_exits.unwrap_or(0)
    }

    /// Total BPF run time over the measured exits, in ns per exit.
    pub fn bpf_ns_per_exit(&self, exits: u64) -> Option<f64> {
        let exits = self.measured(exits);
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

    /// The BPF part of [`OwnCost::summary`], saying how it was measured:
    /// "BPF 62 ns/exit (raw_kvm_pio 62; run-time stats sampled 1 s in 10, 123456 exits)".
    pub fn bpf_summary(&self, exits: u64) -> String {
        if let Some(ns) = self.bpf_ns_per_exit(exits) {
            let measured = self.measured(exits);
            let per: Vec<String> = self
                .programs
                .iter()
                .map(|p| {
                    let per_exit = p.run_ns as f64 / measured as f64;
                    if per_event(&p.name) && p.runs > 0 {
                        // They run per context switch, wake-up or halt, not per exit.
                        format!(
                            "{} {per_exit:.0} ({:.0} ns × {} runs)",
                            p.name,
                            p.run_ns as f64 / p.runs as f64,
                            p.runs
                        )
                    } else {
                        format!("{} {per_exit:.0}", p.name)
                    }
                })
                .collect();
            let how = match self.bpf_stats {
                BpfStats::Sampled => format!(
                    "run-time stats sampled {}, {measured} exits",
                    SAMPLES.label()
                ),
                _ => "run-time stats on throughout".to_owned(),
            };
            let (per_exit, covers) = match self.untraced_exits {
                Some(n) if n > 0 => (
                    "ns/exit",
                    format!(
                        "; {n} of the exits of untraced processes, for which the programs only \
                         filter"
                    ),
                ),
                None if self.filtered => (
                    "ns per traced exit",
                    "; the programs' runs for untraced processes' events count too".to_owned(),
                ),
                _ => ("ns/exit", String::new()),
            };
            return format!("BPF {ns:.0} {per_exit} ({}; {how}{covers})", per.join(", "));
        }
        if let Some(why) = &self.note {
            return format!("BPF run time unknown ({why})");
        }
        match self.bpf_stats {
            BpfStats::Off => "BPF run time not measured (--bpf-stats off)".to_owned(),
            BpfStats::Sampled if self.samples == 0 => format!(
                "BPF run time not sampled (recording shorter than {} s; --bpf-stats on \
                 measures throughout)",
                (SAMPLES.first + SAMPLES.length).as_secs_f64()
            ),
            BpfStats::Sampled => format!(
                "BPF run time unknown (no exits in {} run-time stats samples)",
                self.samples
            ),
            BpfStats::On => "BPF run time unknown (no exits)".to_owned(),
        }
    }

    /// One line: "BPF 85 ns/exit (kvm_pio 85; run-time stats on throughout), CPU 1.2% of a
    /// core, peak RSS 12 MiB, 990 of 1000 exits tallied in the kernel".
    pub fn summary(&self, exits: u64, wall: Duration) -> String {
        format!(
            "{}, CPU {:.1}% of a core, peak RSS {:.0} MiB, {} of {exits} exits tallied in \
             the kernel",
            self.bpf_summary(exits),
            100.0 * self.cpu_share(wall),
            self.peak_rss_bytes as f64 / (1 << 20) as f64,
            self.tallied
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One program's run-time figures (also used by `live::selfcost`'s tests).
    pub(crate) fn prog(name: &str, run_ns: u64, runs: u64) -> ProgramCost {
        ProgramCost {
            name: name.into(),
            run_ns,
            runs,
        }
    }

    #[test]
    fn samples_run_from_1_to_2_s_then_every_10_s() {
        // Every switch in the first 25 s, on a 10 ms grid (the live loop polls every 20 ms).
        let mut switches = Vec::new();
        let mut was_on = false;
        for ms in (0..25_000).step_by(10) {
            let on = SAMPLES.is_on(Duration::from_millis(ms));
            if on != was_on {
                switches.push((ms, on));
            }
            was_on = on;
        }
        assert_eq!(
            switches,
            [
                (1_000, true),
                (2_000, false),
                (11_000, true),
                (12_000, false),
                (21_000, true),
                (22_000, false)
            ]
        );
        assert!(SAMPLES.is_on(Duration::from_nanos(1_999_999_999)));
        assert!(!SAMPLES.is_on(Duration::from_secs(2)));
        assert_eq!(SAMPLES.label(), "1 s in 10");
    }

    #[test]
    fn scheduler_hooks_show_their_cost_per_run_and_their_runs() {
        let c = OwnCost {
            programs: vec![
                prog("raw_kvm_pio", 6_000_000, 100_000),
                prog("raw_sched_switch", 1_500_000, 50_000),
            ],
            bpf_stats: BpfStats::On,
            ..OwnCost::default()
        };
        assert_eq!(
            c.bpf_summary(100_000),
            "BPF 75 ns/exit (raw_kvm_pio 60, raw_sched_switch 15 (30 ns × 50000 runs); \
             run-time stats on throughout)"
        );
    }

    #[test]
    fn summary_divides_bpf_run_time_by_exits() {
        let c = OwnCost {
            programs: vec![
                prog("kvm_pio", 8_000_000, 100_000),
                prog("kvm_run_enter", 2_000_000, 100_000),
            ],
            bpf_stats: BpfStats::On,
            cpu_ns: 10_000_000,
            peak_rss_bytes: 12 << 20,
            tallied: 99_990,
            ..OwnCost::default()
        };
        assert_eq!(c.bpf_ns_per_exit(100_000), Some(100.0));
        let s = c.summary(100_000, Duration::from_secs(1));
        assert_eq!(
            s,
            "BPF 100 ns/exit (kvm_pio 80, kvm_run_enter 20; run-time stats on throughout), \
             CPU 1.0% of a core, peak RSS 12 MiB, 99990 of 100000 exits tallied in the kernel"
        );
        // With a process filter, the other processes' exits divide the run time too: the
        // programs ran for them.
        let filtered = OwnCost {
            filtered: true,
            untraced_exits: Some(300_000),
            ..c.clone()
        };
        assert_eq!(filtered.bpf_ns_per_exit(100_000), Some(25.0));
        assert_eq!(
            filtered.bpf_summary(100_000),
            "BPF 25 ns/exit (kvm_pio 20, kvm_run_enter 5; run-time stats on throughout; \
             300000 of the exits of untraced processes, for which the programs only filter)"
        );
        // A file from before the count says what its figure divides.
        let old = OwnCost {
            filtered: true,
            ..c.clone()
        };
        assert_eq!(
            old.bpf_summary(100_000),
            "BPF 100 ns per traced exit (kvm_pio 80, kvm_run_enter 20; run-time stats on \
             throughout; the programs' runs for untraced processes' events count too)"
        );
        let none = OwnCost {
            note: Some("refused".into()),
            ..Default::default()
        };
        assert!(none
            .summary(5, Duration::from_secs(1))
            .contains("unknown (refused)"));
    }

    #[test]
    fn sampled_run_time_is_divided_by_the_exits_of_the_samples() {
        let c = OwnCost {
            programs: vec![prog("raw_kvm_pio", 7_654_272, 123_456)],
            bpf_stats: BpfStats::Sampled,
            measured_exits: Some(123_456),
            samples: 2,
            ..OwnCost::default()
        };
        // The recording's 5 million exits are not the divisor.
        assert_eq!(
            c.bpf_summary(5_000_000),
            "BPF 62 ns/exit (raw_kvm_pio 62; run-time stats sampled 1 s in 10, 123456 exits)"
        );
        let short = OwnCost::default();
        assert_eq!(
            short.bpf_summary(1_000),
            "BPF run time not sampled (recording shorter than 2 s; --bpf-stats on measures \
             throughout)"
        );
        assert_eq!(short.bpf_ns_per_exit(1_000), None, "never a made-up figure");
        let off = OwnCost {
            bpf_stats: BpfStats::Off,
            ..OwnCost::default()
        };
        assert_eq!(
            off.bpf_summary(1_000),
            "BPF run time not measured (--bpf-stats off)"
        );
    }

    #[test]
    fn own_cost_of_files_from_before_bpf_stats_reads_as_on_throughout() {
        let old = r#"{"programs":[{"name":"kvm_pio","run_ns":4000,"runs":10}],"cpu_ns":1,"peak_rss_bytes":2}"#;
        let c: OwnCost = serde_json::from_str(old).unwrap();
        assert_eq!(
            (c.bpf_stats, c.measured_exits, c.samples),
            (BpfStats::On, None, 0)
        );
        assert_eq!(c.bpf_ns_per_exit(10), Some(400.0));
        let new = OwnCost {
            measured_exits: Some(7),
            samples: 1,
            ..OwnCost::default()
        };
        let json = serde_json::to_string(&new).unwrap();
        assert!(
            json.contains(r#""bpf_stats":"sampled","measured_exits":7,"samples":1"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<OwnCost>(&json).unwrap(), new);
    }
}
