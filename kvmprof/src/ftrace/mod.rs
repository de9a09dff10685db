//! `import-ftrace`: turns ftrace `function_graph` captures (the kernel's `trace` file or
//! `trace-cmd report` output) into the same [`Exit`]s a live recording produces, plus folded
//! stacks of the exit path for a flame graph.
//!
//! [`reader`] reads the lines of each file through [`parse`] (text → call records) and routes
//! them to one [`stages::Tracker`] per task (ftrace interleaves the CPUs, and a task's calls
//! can move between them), which rebuilds the call tree and cuts it into cycles. [`names`]
//! holds what KVM's function names mean.
mod names;
mod parse;
mod reader;
mod stages;

use crate::data::model::{Exit, Stage, Vendor};
use crate::recording::header::{Header, HookUse, Source};
use anyhow::{Context, Result};
use stages::{How, Timing};
use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

/// Folded stacks: `vcpu_enter_guest;svm_vcpu_run` → ns spent in the last frame itself.
pub type Folded = BTreeMap<String, u64>;

/// What an import found.
#[derive(Debug)]
pub struct Import {
    /// One per vendor, in [`Vendor`] order: a file may hold captures of several hosts.
    pub captures: Vec<Capture>,
    pub stats: Stats,
}

/// The exit cycles of one vendor.
#[derive(Debug)]
pub struct Capture {
    /// The vendor the traced functions name (`Unknown` if none of them did).
    pub vendor: Vendor,
    /// One per complete exit cycle, in the order they ended.
    pub exits: Vec<Exit>,
    pub folded: Folded,
    /// The functions the stages were timed from, and how.
    pub timings: Vec<Timing>,
}

/// What was read, and what could not be used.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub files: usize,
    pub lines: u64,
    /// Lines that are function_graph calls.
    pub calls: u64,
    /// Lines that are neither calls nor the comments and markers around them.
    pub unknown: u64,
    /// `file:line: text` of the first unknown line.
    pub first_unknown: Option<String>,
    /// Calls whose entry or return is not in the trace (cut captures, dropped events).
    pub incomplete_calls: u64,
    /// Cycles left out because of them.
    pub incomplete_cycles: u64,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} file(s), {} lines, {} calls",
            self.files, self.lines, self.calls
        )?;
        if let Some(first) = &self.first_unknown {
            write!(
                f,
                ", {} unknown lines skipped (first: {first})",
                self.unknown
            )?;
        }
        if self.incomplete_calls > 0 {
            write!(
                f,
                ", {} incomplete calls ({} cycles left out)",
                self.incomplete_calls, self.incomplete_cycles
            )?;
        }
        Ok(())
    }
}

/// Reads the traces in `paths` as one capture.
pub fn import<P: AsRef<Path>>(paths: &[P]) -> Result<Import> {
    let mut reader = reader::Reader::default();
    for path in paths {
        let path = path.as_ref();
        let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        reader.read(&path.display().to_string(), BufReader::new(file))?;
    }
    reader.finish()
}

/// The data file header of an import. A trace names neither host nor kernel, and shows
/// threads rather than processes.
pub fn header(import: &Capture) -> Header {
    // Exits end at trace timestamps where the trace has them (0 otherwise); the capture
    // spans from the start of the first cycle to the end of the last.
    let timed = import.exits.iter().filter(|e| e.ts_ns > 0);
    let start = timed
        .clone()
        .map(|e| {
            e.ts_ns
                .saturating_sub(e.stages[Stage::Cycle.index()].unwrap_or(0))
        })
        .min();
    let end = timed.map(|e| e.ts_ns).max();
    let hooks = import.timings.iter().map(|t| HookUse {
        stage: t.stage,
        symbol: t.symbol.clone(),
        mode: match t.how {
            How::Call => "ftrace function_graph".to_owned(),
            How::RunToRun => "ftrace function_graph, entry to entry".to_owned(),
        },
    });
    let mut cycle_sources: Vec<&str> = import
        .timings
        .iter()
        .filter(|t| t.stage == Stage::Cycle)
        .map(|t| match t.how {
            How::Call => "vcpu_enter_guest duration",
            How::RunToRun => {
                "vendor-run entry to next vendor-run entry (or return of kvm_arch_vcpu_ioctl_run)"
            }
        })
        .collect();
    cycle_sources.dedup();
    Header {
        source: Source::FtraceImport,
        host: "unknown".to_owned(),
        kernel: "unknown".to_owned(),
        vendor: import.vendor,
        hooks: hooks.collect(),
        tracepoints: vec![],
        cycle_source: cycle_sources.join("; "),
        processes: Vec::new(),
        start_unix_ns: 0,
        start_ts_ns: start.unwrap_or(0),
        duration_ns: end
            .zip(start)
            .map_or(0, |(end, start)| end.saturating_sub(start)),
        unobserved: None,
        read_failed: None,
        unmatched: None,
        no_state: None,
        stop: Some("end of trace".to_owned()),
        cut: None,
        own_cost: None,
        slow: None,
        kvm_stats: None,
        halts: None,
        funcs: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::model::ReasonSpace;

    const AMD: &str = include_str!("../../tests/fixtures/ftrace/amd.txt");
    const INTEL: &str = include_str!("../../tests/fixtures/ftrace/intel.txt");

    fn fixture(name: &str) -> String {
        format!(
            "{}/tests/fixtures/ftrace/{name}",
            env!("CARGO_MANIFEST_DIR")
        )
    }

    fn import_texts(texts: &[(&str, &str)]) -> Result<Import> {
        let mut reader = reader::Reader::default();
        for (name, text) in texts {
            reader.read(name, text.as_bytes())?;
        }
        reader.finish()
    }

    /// The capture of a single-vendor import.
    fn only(import: &Import) -> &Capture {
        match &import.captures[..] {
            [one] => one,
            more => panic!("{} captures", more.len()),
        }
    }

    fn stage(exit: &Exit, stage: Stage) -> Option<u64> {
        exit.stages[stage.index()]
    }

    /// Cycle, vendor run, handler, fast PIO of each exit.
    fn stage_times(import: &Import) -> Vec<[Option<u64>; 4]> {
        only(import)
            .exits
            .iter()
            .map(|e| {
                [
                    Stage::Cycle,
                    Stage::VendorRun,
                    Stage::Handler,
                    Stage::FastPio,
                ]
                .map(|s| stage(e, s))
            })
            .collect()
    }

    #[test]
    fn an_amd_capture_times_every_stage_and_names_the_svm_reason() {
        let import = import(&[fixture("amd.txt")]).unwrap();
        assert_eq!(only(&import).vendor, Vendor::Svm);
        assert_eq!(only(&import).vendor.label(), "AMD SVM");
        // vcpu_enter_guest 7.915 us, svm_vcpu_run 3.206 us, handle_exit 3.116 us,
        // kvm_fast_pio 2.594 us; the second cycle is cut inside handle_exit.
        assert_eq!(
            stage_times(&import),
            [[Some(7915), Some(3206), Some(3116), Some(2594)]]
        );
        let exit = &only(&import).exits[0];
        assert_eq!(
            (exit.reason.space, exit.reason.code),
            (ReasonSpace::Svm, 0x7b)
        );
        assert_eq!((exit.pid, exit.tid, exit.vcpu), (0, 0, None));
        for other in [Stage::KvmRun, Stage::Vmm] {
            assert_eq!(stage(exit, other), None);
        }
        let stats = &import.stats;
        // the seed's `amd:` header and the code fence around the capture
        assert_eq!((stats.lines, stats.calls, stats.unknown), (99, 94, 3));
        let first = format!("{}:2: amd:", fixture("amd.txt"));
        assert_eq!(stats.first_unknown, Some(first));
        // vcpu_enter_guest and handle_exit of the second cycle are open at the end
        assert_eq!((stats.incomplete_calls, stats.incomplete_cycles), (2, 1));
    }

    #[test]
    fn an_intel_capture_times_every_stage_and_names_the_vmx_reason() {
        let import = import_texts(&[("intel.txt", INTEL)]).unwrap();
        assert_eq!(only(&import).vendor, Vendor::Vmx);
        assert_eq!(only(&import).vendor.label(), "Intel VMX");
        // vcpu_enter_guest 7.717 us, vmx_vcpu_run 2.200 us, vmx_handle_exit 3.816 us,
        // kvm_fast_pio 3.401 us (inside handle_io).
        assert_eq!(
            stage_times(&import),
            [[Some(7717), Some(2200), Some(3816), Some(3401)]]
        );
        let exit = &only(&import).exits[0];
        assert_eq!(
            (exit.reason.space, exit.reason.code),
            (ReasonSpace::Vmx, 30)
        );
        assert_eq!(import.stats.unknown, 3);
        assert_eq!(
            (
                import.stats.incomplete_calls,
                import.stats.incomplete_cycles
            ),
            (2, 1)
        );
    }

    fn tids(import: &Import) -> Vec<u32> {
        only(import).exits.iter().map(|e| e.tid).collect()
    }

    #[test]
    fn trace_cmd_reports_with_enter_guest_inlined_time_cycles_entry_to_entry() {
        // Linux 6.1 on AMD: cycles run from one svm_vcpu_run entry to the next
        // (5678.100000980 → 5678.100005228) and from the last one to the return of
        // kvm_arch_vcpu_ioctl_run (→ 5678.100012096).
        let import = import(&[fixture("trace_cmd_svm.txt")]).unwrap();
        assert_eq!(only(&import).vendor, Vendor::Svm);
        assert_eq!(
            stage_times(&import),
            [
                [Some(4248), Some(2461), Some(1457), Some(1167)],
                [Some(6868), Some(5451), Some(776), None],
            ]
        );
        let reasons: Vec<_> = only(&import).exits.iter().map(|e| e.reason.code).collect();
        assert_eq!(reasons, [0x7b, 0x78]);
        let ends: Vec<_> = only(&import).exits.iter().map(|e| e.ts_ns).collect();
        assert_eq!(ends, [5_678_100_005_228, 5_678_100_012_096]);
        assert_eq!(tids(&import), [1234, 1234]);
        // `cpus=2` and the kvm_exit events are expected lines
        assert_eq!(import.stats.unknown, 0);
        assert_eq!(import.stats.incomplete_calls, 0);
    }

    #[test]
    fn ftrace_with_abstime_proc_tail_irqs_and_overhead_marks_imports_every_exit() {
        let import = import(&[fixture("ftrace_vmx_abstime.txt")]).unwrap();
        assert_eq!(only(&import).vendor, Vendor::Vmx);
        // the second exit took an APIC timer interrupt inside the PIO write: `+ 14.676 us`
        assert_eq!(
            stage_times(&import),
            [
                [Some(5370), Some(1989), Some(2964), Some(2804)],
                [Some(14676), Some(1989), Some(12270), Some(12110)],
            ]
        );
        assert!(only(&import).exits.iter().all(|e| e.reason.code == 30));
        // funcgraph-abstime has µs resolution
        let ends: Vec<_> = only(&import).exits.iter().map(|e| e.ts_ns).collect();
        assert_eq!(ends, [91_234_500_005_000, 91_234_500_020_000]);
        assert_eq!(tids(&import), [4321, 4321]);
        assert_eq!(
            (import.stats.unknown, import.stats.incomplete_calls),
            (0, 0)
        );
        let irq = "vcpu_enter_guest;vmx_handle_exit;handle_io;kvm_fast_pio;emulator_pio_out;\
                   kernel_pio;kvm_io_bus_write;__kvm_io_bus_write;sysvec_apic_timer_interrupt;\
                   __sysvec_apic_timer_interrupt;hrtimer_interrupt;__hrtimer_run_queues";
        assert_eq!(only(&import).folded.get(irq), Some(&9500));
    }

    #[test]
    fn context_switches_keep_each_task_on_its_own_stack() {
        // The vCPU thread is preempted inside the handler; a kworker runs on the same CPU
        // (returning from calls made before the capture) until it switches back.
        let import = import(&[fixture("switch.txt")]).unwrap();
        assert_eq!(
            stage_times(&import),
            [[Some(41308), Some(3061), Some(37747), Some(1167)]]
        );
        assert_eq!(tids(&import), [1234]);
        // kworker: two returns from before the capture, two calls open at its end
        assert_eq!(
            (
                import.stats.incomplete_calls,
                import.stats.incomplete_cycles
            ),
            (4, 0)
        );
    }

    #[test]
    fn cycles_of_interleaved_cpus_are_told_apart() {
        let import = import(&[fixture("interleaved.txt")]).unwrap();
        assert_eq!(
            stage_times(&import),
            [
                [Some(4418), Some(2461), Some(1457), Some(1167)],
                [Some(7418), Some(5461), Some(1457), Some(1167)],
            ]
        );
        assert_eq!(tids(&import), [0, 0]);
        assert_eq!(import.stats.incomplete_calls, 0);
    }

    #[test]
    fn a_capture_cut_at_both_ends_keeps_only_whole_cycles() {
        // starts inside vmx_vcpu_run, ends inside emulator_pio_out of the third exit
        let import = import(&[fixture("cut.txt")]).unwrap();
        assert_eq!(
            stage_times(&import),
            [[Some(5370), Some(1989), Some(2964), Some(2804)]]
        );
        // returns of vmx_vcpu_run and vcpu_enter_guest at the start; five calls open at the end
        assert_eq!(
            (
                import.stats.incomplete_calls,
                import.stats.incomplete_cycles
            ),
            (7, 1)
        );
        assert_eq!(
            import.stats.to_string(),
            "1 file(s), 54 lines, 54 calls, 7 incomplete calls (1 cycles left out)"
        );
    }

    #[test]
    fn a_timed_capture_header_names_the_entry_to_entry_cycle_and_its_hooks() {
        let import = import(&[fixture("trace_cmd_svm.txt")]).unwrap();
        let header = header(only(&import));
        assert_eq!(
            header.cycle_source,
            "vendor-run entry to next vendor-run entry (or return of kvm_arch_vcpu_ioctl_run)"
        );
        let cycle = &header.hooks[0];
        assert_eq!(
            (cycle.stage, cycle.symbol.as_str()),
            (Stage::Cycle, "svm_vcpu_run")
        );
        assert_eq!(cycle.mode, "ftrace function_graph, entry to entry");
        let handlers: Vec<_> = header
            .hooks
            .iter()
            .filter(|h| h.stage == Stage::Handler)
            .map(|h| h.symbol.as_str())
            .collect();
        assert_eq!(handlers, ["svm_handle_exit"]);
        // from the first svm_vcpu_run entry to the return of the ioctl
        assert_eq!(header.start_ts_ns, 5_678_100_000_980);
        assert_eq!(header.duration_ns, 12_096 - 980);
    }

    #[test]
    fn seed_folded_stacks_add_up_to_the_cycle() {
        let import = import_texts(&[("amd.txt", AMD)]).unwrap();
        let total: u64 = only(&import).folded.values().sum();
        assert_eq!(total, 7915);
        assert_eq!(
            only(&import).folded["vcpu_enter_guest;svm_vcpu_run"],
            3206 - 231 - 80 * 3 - 141 - 110 - 100 - 160 - 722
        );
        assert_eq!(
            only(&import).folded["vcpu_enter_guest;handle_exit;io_interception;kvm_fast_pio;emulator_pio_out;kernel_pio;kvm_io_bus_write;__kvm_io_bus_write;ioeventfd_write;eventfd_signal;_raw_spin_lock_irqsave"],
            80
        );
        assert!(only(&import)
            .folded
            .keys()
            .all(|k| k.starts_with("vcpu_enter_guest")));
    }

    #[test]
    fn captures_of_several_vendors_are_grouped_per_vendor() {
        // The seed file: an AMD capture, then an Intel one, each with its code fence.
        let import = import(&[fixture("amd_and_intel.txt")]).unwrap();
        let got: Vec<_> = import
            .captures
            .iter()
            .map(|c| (c.vendor, c.exits.len(), c.exits[0].reason.space))
            .collect();
        assert_eq!(
            got,
            [
                (Vendor::Vmx, 1, ReasonSpace::Vmx),
                (Vendor::Svm, 1, ReasonSpace::Svm)
            ]
        );
        let cycles: Vec<_> = import
            .captures
            .iter()
            .map(|c| stage(&c.exits[0], Stage::Cycle))
            .collect();
        assert_eq!(cycles, [Some(7717), Some(7915)]);
        // each capture keeps its own hooks and stacks
        let (vmx, svm) = (&import.captures[0], &import.captures[1]);
        assert!(vmx.timings.iter().any(|t| t.symbol == "vmx_vcpu_run"));
        assert!(!vmx.timings.iter().any(|t| t.symbol == "svm_vcpu_run"));
        assert_eq!(svm.folded.values().sum::<u64>(), 7915);
        assert_eq!(vmx.folded.values().sum::<u64>(), 7717);

        // two files, one per host, group the same way
        let two = import_texts(&[("amd.txt", AMD), ("intel.txt", INTEL)]).unwrap();
        let vendors: Vec<_> = two.captures.iter().map(|c| c.vendor).collect();
        assert_eq!(vendors, [Vendor::Vmx, Vendor::Svm]);
    }

    #[test]
    fn not_a_trace_is_a_clear_error() {
        let err = import(&[fixture("garbage.txt")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: not an ftrace function_graph trace (none of its 6 lines is a function_graph call)",
                fixture("garbage.txt")
            )
        );
        let err = import_texts(&[("empty", "")]).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("empty: not an ftrace function_graph trace"));
        let binary = [0x7f, b'E', b'L', b'F', 0xff, 0xfe, b'\n', 0, 1, 2];
        let mut reader = reader::Reader::default();
        let err = reader.read("a.out", &binary[..]).unwrap_err();
        assert!(err.to_string().starts_with("a.out: not an ftrace"));
        let err = import(&["/nonexistent/trace.txt"]).unwrap_err();
        assert_eq!(err.to_string(), "/nonexistent/trace.txt: cannot open");
    }

    #[test]
    fn mangled_input_never_panics() {
        let fixtures = [
            AMD,
            INTEL,
            include_str!("../../tests/fixtures/ftrace/trace_cmd_svm.txt"),
            include_str!("../../tests/fixtures/ftrace/ftrace_vmx_abstime.txt"),
            include_str!("../../tests/fixtures/ftrace/switch.txt"),
        ];
        for text in fixtures {
            let lines: Vec<&str> = text.lines().collect();
            // every line cut at every character, in order and reversed
            let cut: Vec<String> = lines
                .iter()
                .flat_map(|l| l.char_indices().map(|(i, _)| l[..i].to_owned()))
                .collect();
            let reversed: Vec<&str> = lines.iter().rev().copied().collect();
            for mangled in [cut.join("\n"), reversed.join("\n")] {
                let _ = import_texts(&[("mangled", &mangled)]);
            }
        }
        // numbers at the edge of u64: sums saturate
        let huge = "\
18446744073.709551615 |  0)               |  vcpu_enter_guest() {
18446744073.709551615 |  0) $ 10000000000000000 us |    svm_vcpu_run();
18446744073.709551615 |  0) $ 10000000000000000 us |    svm_vcpu_run();
18446744073.709551615 |  0) $ 10000000000000000 us |  }
";
        let import = import_texts(&[("huge", huge)]).unwrap();
        assert_eq!(
            stage_times(&import),
            [[Some(10_000_000_000_000_000_000), Some(u64::MAX), None, None]]
        );
    }

    #[test]
    fn a_trace_without_cycles_says_what_it_looked_for() {
        let text = " 0)   0.080 us    |  rcu_qs();\n";
        let err = import_texts(&[("t", text)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "t: no complete exit cycle (a vcpu_enter_guest call, or a vendor run inside \
             kvm_arch_vcpu_ioctl_run); 1 file(s), 1 lines, 1 calls"
        );
    }
}
