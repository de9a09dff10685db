//! Rebuilds one task's call tree from its function_graph calls and cuts it into exit cycles:
//! one [`Exit`] per complete cycle with its stage times, plus the cycle's folded stacks.
//!
//! A cycle is bounded either by a `vcpu_enter_guest` call or, on kernels that inline it into
//! `kvm_arch_vcpu_ioctl_run`, by consecutive vendor runs under the same caller (the last one
//! ends when that caller returns) — the boundary the live profiler uses there too.
//!
//! Lines can be missing: the capture may start or end inside a call, and ftrace drops events
//! when its buffer overflows. Indentation tells: a line at depth d means every open call at
//! depth >= d has returned. Such calls, returns of calls opened before the capture and calls
//! still open at its end are counted as incomplete; a cycle that contains one is not emitted.
use super::names::{self, Role};
use super::parse::{Call, Func, Record};
use super::Folded;
use crate::data::model::{Exit, Reason, ReasonSpace, Stage, Vendor};
use kvmprof_common::STAGES;
use std::collections::{BTreeMap, BTreeSet};

/// What the trackers of an import produce.
#[derive(Debug, Default)]
pub struct Output {
    /// The emitted cycles by the vendor their functions name (`Unknown` where none did): a
    /// file can hold captures of several hosts.
    pub parts: BTreeMap<Vendor, Part>,
    pub incomplete_calls: u64,
    pub incomplete_cycles: u64,
}

/// The emitted cycles of one vendor.
#[derive(Debug, Default)]
pub struct Part {
    pub exits: Vec<Exit>,
    /// How the stages of the cycles were timed.
    pub timings: BTreeSet<Timing>,
    pub folded: Folded,
}

impl Part {
    /// Adds the cycles of `other`, after this part's.
    pub fn append(&mut self, other: Part) {
        self.exits.extend(other.exits);
        self.timings.extend(other.timings);
        for (stack, ns) in other.folded {
            let total = self.folded.entry(stack).or_default();
            *total = total.saturating_add(ns);
        }
    }
}

/// A stage timed from a function.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timing {
    pub stage: Stage,
    /// Base name of the function (`handle_exit`, `svm_vcpu_run`).
    pub symbol: String,
    pub how: How,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum How {
    /// The call's duration.
    Call,
    /// From the entry of this vendor run to the next one's under the same caller, or to
    /// the caller's return.
    RunToRun,
}

/// The open calls of one task and the cycle they are in.
#[derive(Debug, Default)]
pub struct Tracker {
    frames: Vec<Frame>,
    cycle: Option<Cycle>,
}

#[derive(Debug)]
struct Frame {
    /// As printed (without the module): the flame graph shows `kvm_set_cr8.part.119`.
    name: String,
    role: Role,
    indent: usize,
    entry_ns: Option<u64>,
    /// Time of the returned children: the rest of the duration is the call's own.
    children_ns: u64,
}

#[derive(Debug, Clone, Copy)]
enum Bound {
    /// The `vcpu_enter_guest` call at this stack index.
    EnterGuest(usize),
    /// Vendor runs called by the frame at this stack index.
    VendorRuns(usize),
}

impl Bound {
    /// Stack index of the frame the cycle's folded stacks start at.
    fn base(self) -> usize {
        match self {
            Bound::EnterGuest(at) | Bound::VendorRuns(at) => at,
        }
    }

    /// The lowest stack index inside the cycle.
    fn first_inside(self) -> usize {
        match self {
            Bound::EnterGuest(at) => at,
            Bound::VendorRuns(caller) => caller + 1,
        }
    }
}

#[derive(Debug)]
struct Cycle {
    bound: Bound,
    start_ns: Option<u64>,
    /// `VendorRuns`: duration of the caller's children since the cycle started, the cycle's
    /// length when the trace has no timestamps.
    children_ns: u64,
    vendor: Option<Vendor>,
    reason: Option<Reason>,
    stages: [Option<u64>; STAGES],
    folded: Vec<(String, u64)>,
    timings: Vec<Timing>,
    /// A call inside the cycle was lost, so its stage times cannot be trusted.
    damaged: bool,
}

impl Cycle {
    /// A cycle bounded by the call of `symbol` at `bound`, entered at `start_ns`.
    fn new(bound: Bound, symbol: &str, start_ns: Option<u64>) -> Self {
        let how = match bound {
            Bound::EnterGuest(_) => How::Call,
            Bound::VendorRuns(_) => How::RunToRun,
        };
        Cycle {
            bound,
            start_ns,
            children_ns: 0,
            vendor: None,
            reason: None,
            stages: [None; STAGES],
            folded: Vec::new(),
            timings: vec![Timing {
                stage: Stage::Cycle,
                symbol: names::base_name(symbol).to_owned(),
                how,
            }],
            damaged: false,
        }
    }
}

impl Tracker {
    /// Feeds one call line of this task; `tid` is the task's id (0 when unknown).
    pub fn record(&mut self, record: &Record<'_>, tid: u32, out: &mut Output) {
        match record.call {
            Call::Entry(func) => {
                self.unwind(record.indent, out);
                self.enter(func, record, tid, out);
            }
            Call::Leaf(func, dur_ns) => {
                self.unwind(record.indent, out);
                self.enter(func, record, tid, out);
                let end_ns = record
                    .ts_ns
                    .zip(dur_ns)
                    .and_then(|(ts, dur)| ts.checked_add(dur));
                self.leave(dur_ns, end_ns, tid, out);
            }
            Call::Exit(name, dur_ns) => {
                self.unwind(record.indent + 1, out);
                let matches = self.frames.last().is_some_and(|top| {
                    top.indent == record.indent && name.is_none_or(|name| name == top.name)
                });
                if matches {
                    self.leave(dur_ns, record.ts_ns, tid, out);
                } else {
                    // the return of a call made before the capture started
                    out.incomplete_calls += 1;
                }
            }
        }
    }

    /// End of input: calls still open were cut off.
    pub fn finish(self, out: &mut Output) {
        out.incomplete_calls += self.frames.len() as u64;
        if self.cycle.is_some() {
            out.incomplete_cycles += 1;
        }
    }

    /// Drops the open calls at `indent` or deeper: their returns are not in the trace.
    fn unwind(&mut self, indent: usize, out: &mut Output) {
        while self.frames.last().is_some_and(|top| top.indent >= indent) {
            self.frames.pop();
            self.lost(out);
        }
    }

    /// The call just popped off the stack has no duration.
    fn lost(&mut self, out: &mut Output) {
        out.incomplete_calls += 1;
        let index = self.frames.len();
        if let Some(cycle) = &mut self.cycle {
            if index <= cycle.bound.base() {
                self.cycle = None;
                out.incomplete_cycles += 1;
            } else {
                cycle.damaged = true;
            }
        }
    }

    fn enter(&mut self, func: Func<'_>, record: &Record<'_>, tid: u32, out: &mut Output) {
        let index = self.frames.len();
        let role = names::role(func);
        match role {
            Role::Cycle if self.cycle.is_none() => {
                let bound = Bound::EnterGuest(index);
                self.cycle = Some(Cycle::new(bound, func.name, record.ts_ns));
            }
            Role::Stage(Stage::VendorRun) => self.vendor_run(func, index, record, tid, out),
            _ => {}
        }
        let in_handler = self
            .frames
            .iter()
            .any(|f| f.role == Role::Stage(Stage::Handler));
        if let Some(cycle) = &mut self.cycle {
            cycle.vendor = cycle.vendor.or(names::vendor_hint(func));
            // The handler dispatches on the exit reason: the first function it calls that
            // serves one reason names the exit.
            if in_handler && cycle.reason.is_none() {
                cycle.reason = cycle
                    .vendor
                    .and_then(|vendor| names::handler_reason(vendor, func.name));
            }
        }
        self.frames.push(Frame {
            name: func.name.to_owned(),
            role,
            indent: record.indent,
            entry_ns: record.ts_ns,
            children_ns: 0,
        });
    }

    /// A vendor run about to be pushed at `index`: where `vcpu_enter_guest` is inlined, it
    /// ends the cycle of the previous vendor run under the same caller and starts one.
    fn vendor_run(
        &mut self,
        func: Func<'_>,
        index: usize,
        record: &Record<'_>,
        tid: u32,
        out: &mut Output,
    ) {
        let ts_ns = record.ts_ns;
        let Some(caller) = index.checked_sub(1) else {
            return;
        };
        match &self.cycle {
            Some(cycle) => {
                let Bound::VendorRuns(runs_caller) = cycle.bound else {
                    return;
                };
                if runs_caller != caller {
                    return;
                }
                let cycle_ns = runs_length(cycle, ts_ns);
                self.emit(cycle_ns, ts_ns, tid, out);
            }
            None => {
                let in_ioctl = self.frames.iter().any(|f| f.role == Role::IoctlRun);
                let in_enter_guest = self.frames.iter().any(|f| f.role == Role::Cycle);
                if !in_ioctl || in_enter_guest {
                    return;
                }
            }
        }
        self.cycle = Some(Cycle::new(Bound::VendorRuns(caller), func.name, ts_ns));
    }

    /// Pops the innermost call, which returned after `dur_ns` (or at `end_ns`).
    fn leave(&mut self, dur_ns: Option<u64>, end_ns: Option<u64>, tid: u32, out: &mut Output) {
        let Some(frame) = self.frames.pop() else {
            return;
        };
        let index = self.frames.len();
        let dur_ns = dur_ns.or_else(|| end_ns?.checked_sub(frame.entry_ns?));
        let Some(dur_ns) = dur_ns else {
            // funcgraph-duration off and no timestamps: as good as lost
            return self.lost(out);
        };
        if let Some(parent) = self.frames.last_mut() {
            parent.children_ns = parent.children_ns.saturating_add(dur_ns);
        }
        let Some(cycle) = &mut self.cycle else {
            return;
        };
        let bound = cycle.bound;
        if index >= bound.first_inside() {
            let ancestors = &self.frames[bound.base()..];
            let mut stack: Vec<&str> = ancestors.iter().map(|f| f.name.as_str()).collect();
            stack.push(&frame.name);
            let self_ns = dur_ns.saturating_sub(frame.children_ns);
            cycle.folded.push((stack.join(";"), self_ns));
            // An outer call of the same stage already covers this one.
            let nested = ancestors[bound.first_inside() - bound.base()..]
                .iter()
                .any(|f| f.role == frame.role);
            if let (Role::Stage(stage), false) = (frame.role, nested) {
                let total = &mut cycle.stages[stage.index()];
                *total = Some(total.unwrap_or(0).saturating_add(dur_ns));
                cycle.timings.push(Timing {
                    stage,
                    symbol: names::base_name(&frame.name).to_owned(),
                    how: How::Call,
                });
            }
        }
        match bound {
            Bound::EnterGuest(at) if at == index => self.emit(Some(dur_ns), end_ns, tid, out),
            Bound::VendorRuns(caller) if caller == index => {
                let cycle_ns = runs_length(cycle, end_ns);
                self.emit(cycle_ns, end_ns, tid, out);
            }
            Bound::VendorRuns(caller) if caller + 1 == index => {
                cycle.children_ns = cycle.children_ns.saturating_add(dur_ns);
            }
            _ => {}
        }
    }

    /// Ends the open cycle, which lasted `cycle_ns` and ended at `end_ns`.
    fn emit(&mut self, cycle_ns: Option<u64>, end_ns: Option<u64>, tid: u32, out: &mut Output) {
        let Some(mut cycle) = self.cycle.take() else {
            return;
        };
        let Some(cycle_ns) = cycle_ns.filter(|_| !cycle.damaged) else {
            out.incomplete_cycles += 1;
            return;
        };
        cycle.stages[Stage::Cycle.index()] = Some(cycle_ns);
        let part = out
            .parts
            .entry(cycle.vendor.unwrap_or(Vendor::Unknown))
            .or_default();
        part.timings.extend(cycle.timings);
        for (stack, ns) in cycle.folded {
            let total = part.folded.entry(stack).or_default();
            *total = total.saturating_add(ns);
        }
        part.exits.push(Exit {
            // ftrace shows the thread, not its process
            pid: 0,
            tid,
            vcpu: None,
            ts_ns: end_ns.unwrap_or(0),
            reason: cycle.reason.unwrap_or(Reason {
                space: ReasonSpace::None,
                code: 0,
            }),
            userspace_reason: None,
            access: None,
            stages: cycle.stages,
        });
    }
}

/// A vendor-run cycle ending at `end_ns`: from its start by the clock where the trace has
/// timestamps, else the time of the calls it made (which misses the caller's own code).
fn runs_length(cycle: &Cycle, end_ns: Option<u64>) -> Option<u64> {
    match (cycle.start_ns, end_ns) {
        (Some(start), Some(end)) => end.checked_sub(start),
        _ => Some(cycle.children_ns),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ftrace::parse::{parse_line, Line};

    /// The output of one task, its parts in one.
    struct Tracked {
        exits: Vec<Exit>,
        vendors: BTreeSet<Vendor>,
        folded: Folded,
        incomplete_calls: u64,
        incomplete_cycles: u64,
    }

    /// Feeds lines of one task.
    fn track(text: &str) -> Tracked {
        let mut tracker = Tracker::default();
        let mut out = Output::default();
        for line in text.lines() {
            if let Line::Call(record) = parse_line(line) {
                tracker.record(&record, 7, &mut out);
            }
        }
        tracker.finish(&mut out);
        let vendors = out.parts.keys().copied().collect();
        let mut all = Part::default();
        for part in out.parts.into_values() {
            all.append(part);
        }
        Tracked {
            exits: all.exits,
            vendors,
            folded: all.folded,
            incomplete_calls: out.incomplete_calls,
            incomplete_cycles: out.incomplete_cycles,
        }
    }

    fn stages(exit: &Exit) -> [Option<u64>; 4] {
        [
            exit.stages[Stage::Cycle.index()],
            exit.stages[Stage::VendorRun.index()],
            exit.stages[Stage::Handler.index()],
            exit.stages[Stage::FastPio.index()],
        ]
    }

    const SVM_CYCLE: &str = "\
 1)               |  vcpu_enter_guest [kvm]() {
 1)   1.000 us    |    svm_vcpu_run [kvm_amd]();
 1)               |    svm_handle_exit [kvm_amd]() {
 1)               |      io_interception [kvm_amd]() {
 1)   0.500 us    |        kvm_fast_pio [kvm]();
 1)   0.700 us    |      }
 1)   0.900 us    |    }
 1)   2.100 us    |  }
";

    #[test]
    fn one_cycle_with_stages_reason_and_folds() {
        let out = track(SVM_CYCLE);
        assert_eq!(out.exits.len(), 1);
        let exit = &out.exits[0];
        assert_eq!(stages(exit), [Some(2100), Some(1000), Some(900), Some(500)]);
        assert_eq!(
            (exit.reason.space, exit.reason.code),
            (ReasonSpace::Svm, 0x7b)
        );
        assert_eq!((exit.tid, exit.ts_ns), (7, 0));
        assert_eq!(out.vendors, BTreeSet::from([Vendor::Svm]));
        let folded: Vec<_> = out.folded.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(
            folded,
            [
                ("vcpu_enter_guest", 200),
                ("vcpu_enter_guest;svm_handle_exit", 200),
                ("vcpu_enter_guest;svm_handle_exit;io_interception", 200),
                (
                    "vcpu_enter_guest;svm_handle_exit;io_interception;kvm_fast_pio",
                    500
                ),
                ("vcpu_enter_guest;svm_vcpu_run", 1000),
            ]
        );
        assert_eq!((out.incomplete_calls, out.incomplete_cycles), (0, 0));
    }

    #[test]
    fn lost_return_inside_a_cycle_drops_it() {
        // the handler's `}` was dropped by ftrace: the next entry at its depth shows it
        let text = "\
 1)               |  vcpu_enter_guest [kvm]() {
 1)   1.000 us    |    svm_vcpu_run [kvm_amd]();
 1)               |    svm_handle_exit [kvm_amd]() {
 1)   0.500 us    |      kvm_fast_pio [kvm]();
 1)   0.100 us    |    __srcu_read_lock();
 1)   2.100 us    |  }
";
        let out = track(text);
        assert!(out.exits.is_empty());
        assert_eq!((out.incomplete_calls, out.incomplete_cycles), (1, 1));
        assert!(out.folded.is_empty());
    }

    #[test]
    fn tail_names_must_match() {
        let text = SVM_CYCLE.replace("   2.100 us    |  }", "   2.100 us    |  } /* vcpu_run */");
        let out = track(&text);
        assert!(out.exits.is_empty());
        // the stray brace, then vcpu_enter_guest open at the end
        assert_eq!((out.incomplete_calls, out.incomplete_cycles), (2, 1));
    }

    #[test]
    fn durations_from_timestamps_when_the_column_is_off() {
        let text = "\
  10.000000000 |  1)               |  vcpu_enter_guest [kvm]() {
  10.000000100 |  1)               |    svm_vcpu_run [kvm_amd]() {
  10.000001100 |  1)               |    }
  10.000002100 |  1)               |  }
";
        let out = track(text);
        assert_eq!(out.exits.len(), 1);
        let exit = &out.exits[0];
        assert_eq!(stages(exit), [Some(2100), Some(1000), None, None]);
        assert_eq!(exit.ts_ns, 10_000_002_100);
        assert_eq!(exit.reason.space, ReasonSpace::None);
    }

    #[test]
    fn vendor_runs_bound_cycles_when_enter_guest_is_inlined() {
        // No timestamps: a cycle is the time of the calls from one vendor run to the next.
        let text = "\
 0)               |  kvm_arch_vcpu_ioctl_run [kvm]() {
 0)   0.300 us    |    kvm_load_guest_fpu [kvm]();
 0)   2.000 us    |    vmx_vcpu_run [kvm_intel]();
 0)               |    vmx_handle_exit [kvm_intel]() {
 0)   1.000 us    |      handle_io [kvm_intel]();
 0)   1.200 us    |    }
 0)   0.100 us    |    kvm_check_request [kvm]();
 0)   2.500 us    |    vmx_vcpu_run [kvm_intel]();
 0)               |    vmx_handle_exit [kvm_intel]() {
 0)   0.400 us    |      kvm_emulate_halt [kvm]();
 0)   0.600 us    |    }
 0)   6.900 us    |  }
";
        let out = track(text);
        let got: Vec<_> = out.exits.iter().map(stages).collect();
        assert_eq!(
            got,
            [
                [Some(3300), Some(2000), Some(1200), None],
                [Some(3100), Some(2500), Some(600), None],
            ]
        );
        let reasons: Vec<_> = out.exits.iter().map(|e| e.reason.code).collect();
        assert_eq!(reasons, [30, 12]);
        assert_eq!(out.vendors, BTreeSet::from([Vendor::Vmx]));
        // the ioctl's own time and what it did before the first run belong to no cycle
        assert!(out
            .folded
            .keys()
            .all(|k| k.starts_with("kvm_arch_vcpu_ioctl_run;")));
        assert!(!out.folded.keys().any(|k| k.contains("kvm_load_guest_fpu")));
    }

    #[test]
    fn vendor_runs_outside_an_ioctl_are_not_cycles() {
        let out = track(" 0)   2.000 us    |    vmx_vcpu_run [kvm_intel]();\n");
        assert!(out.exits.is_empty());
        assert_eq!((out.incomplete_calls, out.incomplete_cycles), (0, 0));
    }
}
