//! Whether the `sched_wait` and `sched_sleep` stages can be measured here: the scheduler's
//! raw tracepoints (`sched_switch`, `sched_wakeup`) with the prototypes their programs read
//! by position, and `task_struct`'s `pid` and `tgid` offsets to find the thread a switch
//! or wake-up is about. Pure planning from [`SchedFacts`], like `plan.rs`.
use kvmprof_common::names::sched;

use crate::{
    data::model::Stage,
    host::btf::{Arg, KernelBtf},
    host::kernel::Facts,
    host::plan::{Mode, StagePlan},
};

/// What the scheduler hooks need from this kernel's BTF.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchedFacts {
    /// The argument shapes of `btf_trace_sched_switch` and `btf_trace_sched_wakeup`.
    pub switch_args: Option<Vec<Arg>>,
    pub wakeup_args: Option<Vec<Arg>>,
    /// `task_struct.pid` and `.tgid` offsets.
    pub task_ids: Option<(u32, u32)>,
}

/// Reads [`SchedFacts`] from vmlinux BTF.
pub fn facts(k: &KernelBtf) -> SchedFacts {
    let args = |name: &str| k.vmlinux.tracepoint_arg_shapes(name);
    let off = |m: &str| k.vmlinux.member_offset("task_struct", m);
    SchedFacts {
        switch_args: args("sched_switch"),
        wakeup_args: args("sched_wakeup"),
        task_ids: off("pid").zip(off("tgid")),
    }
}

/// `raw_sched_switch` reads `(bool preempt, prev, next, unsigned int prev_state)`.
const SWITCH_ARGS: [Arg; 4] = [Arg::Int(1), Arg::Ptr, Arg::Ptr, Arg::Int(4)];
/// `raw_sched_wakeup` reads `(struct task_struct *p)`.
const WAKEUP_ARGS: [Arg; 1] = [Arg::Ptr];

/// Why `program` cannot be attached here, if it cannot: refused, or its tracepoint's
/// prototype does not start with the arguments it reads.
fn unusable(f: &Facts, program: &str, args: &Option<Vec<Arg>>, want: &[Arg]) -> Option<String> {
    if let Some(why) = f.refused.get(program) {
        return Some(format!("{program}: refused by the kernel ({why})"));
    }
    match args {
        None => Some(format!("{program}: no btf_trace type in vmlinux BTF")),
        Some(a) if a.len() < want.len() || a[..want.len()] != *want => Some(format!(
            "{program}: the prototype has arguments {a:?}, it reads {want:?}"
        )),
        Some(_) => None,
    }
}

/// Whether `sched_switch` can be hooked (the stages need it); `Err` says why not.
fn switch_usable(f: &Facts) -> Result<(), String> {
    if f.sched.task_ids.is_none() {
        return Err("no task_struct pid/tgid in vmlinux BTF".into());
    }
    match unusable(f, sched::SWITCH_PROGRAM, &f.sched.switch_args, &SWITCH_ARGS) {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// Whether `sched_wakeup` is hooked too: without it a woken thread's wait for its CPU counts
/// as sleep.
pub fn wakeup_usable(f: &Facts) -> Result<(), String> {
    switch_usable(f)?;
    match unusable(f, sched::WAKEUP_PROGRAM, &f.sched.wakeup_args, &WAKEUP_ARGS) {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// Why the classic tracepoints are never used for these stages.
const CLASSIC: &str = "classic sched_switch/sched_wakeup: not used, they copy the event's fields (two task names) on every context switch of the host";

/// The plans of the two scheduler stages.
pub fn stages(f: &Facts) -> [StagePlan; 2] {
    let (mode, rejected, why) = match switch_usable(f) {
        Ok(()) => (
            Mode::Tracepoint,
            vec![CLASSIC.to_string()],
            "raw tracepoints: they run on every context switch of the host, the vCPU threads are filtered first".to_string(),
        ),
        Err(w) => (
            Mode::Unavailable,
            vec![w, CLASSIC.to_string()],
            "no hook for it on this kernel".to_string(),
        ),
    };
    let wakeup = wakeup_usable(f);
    let wait = match &wakeup {
        Ok(()) => "sched_switch (preempted) or sched_wakeup .. sched_switch (back on a CPU)",
        Err(_) => "sched_switch (preempted) .. sched_switch (back on a CPU)",
    };
    let sleep = match &wakeup {
        Ok(()) => "sched_switch (asleep) .. sched_wakeup",
        Err(_) => "sched_switch (asleep) .. sched_switch (back on a CPU, wake-up latency included)",
    };
    let mut sleep_rejected = rejected.clone();
    if let (Mode::Tracepoint, Err(w)) = (mode, &wakeup) {
        sleep_rejected.push(w.clone());
    }
    [
        StagePlan {
            stage: Stage::SchedWait,
            symbol: wait.into(),
            mode,
            rejected,
            why: why.clone(),
        },
        StagePlan {
            stage: Stage::SchedSleep,
            symbol: sleep.into(),
            mode,
            rejected: sleep_rejected,
            why,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Facts {
        Facts {
            sched: SchedFacts {
                switch_args: Some(vec![Arg::Int(1), Arg::Ptr, Arg::Ptr, Arg::Int(4)]),
                wakeup_args: Some(vec![Arg::Ptr]),
                task_ids: Some((2000, 2004)),
            },
            ..Facts::default()
        }
    }

    #[test]
    fn both_stages_are_timed_where_the_prototypes_fit() {
        let [w, s] = stages(&host());
        assert_eq!((w.stage, w.mode), (Stage::SchedWait, Mode::Tracepoint));
        assert_eq!((s.stage, s.mode), (Stage::SchedSleep, Mode::Tracepoint));
        assert!(s.symbol.ends_with(".. sched_wakeup"), "{}", s.symbol);
        assert!(wakeup_usable(&host()).is_ok());
    }

    #[test]
    fn a_kernel_before_prev_state_was_passed_has_no_sched_stages_and_says_why() {
        let mut f = host();
        // 5.17 and older: TP_PROTO(bool preempt, prev, next).
        f.sched.switch_args = Some(vec![Arg::Int(1), Arg::Ptr, Arg::Ptr]);
        let [w, _] = stages(&f);
        assert_eq!(w.mode, Mode::Unavailable);
        assert!(w.rejected[0].starts_with("raw_sched_switch: the prototype has arguments"));
    }

    #[test]
    fn a_refused_wakeup_hook_leaves_the_switch_and_counts_wake_up_latency_as_sleep() {
        let mut f = host();
        f.refused
            .insert(sched::WAKEUP_PROGRAM.into(), "Invalid argument".into());
        let [w, s] = stages(&f);
        assert_eq!((w.mode, s.mode), (Mode::Tracepoint, Mode::Tracepoint));
        assert!(s.symbol.contains("wake-up latency included"));
        assert!(s.rejected[1].contains("refused by the kernel (Invalid argument)"));
        assert!(wakeup_usable(&f).is_err());
    }

    #[test]
    fn a_refused_switch_hook_leaves_no_sched_stage() {
        let mut f = host();
        f.refused
            .insert(sched::SWITCH_PROGRAM.into(), "Permission denied".into());
        assert!(stages(&f).iter().all(|s| s.mode == Mode::Unavailable));
    }
}
