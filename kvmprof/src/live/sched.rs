//! Attaches the scheduler hooks of the `sched_wait` and `sched_sleep` stages where the plan
//! times them (`host/sched.rs` decides). A refusal makes the session plan again without the
//! refused program, as for the other hooks.
use anyhow::{anyhow, Context, Result};
use aya::{programs::RawTracePoint, Ebpf};
use kvmprof_common::names::sched;

use super::attach::{describe, try_hook};
use crate::{
    data::model::Stage,
    host::kernel::Facts,
    host::plan::{Mode, Plan},
};

/// Attaches `sched_switch` (and `sched_wakeup` where usable) as raw tracepoints when
/// `plan` times the scheduler stages.
pub fn attach(ebpf: &mut Ebpf, plan: &Plan, facts: &Facts) -> Result<()> {
    let timed = plan
        .stages
        .iter()
        .any(|s| s.stage == Stage::SchedWait && s.mode == Mode::Tracepoint);
    if !timed {
        return Ok(());
    }
    attach_raw(ebpf, sched::SWITCH_PROGRAM, sched::SWITCH)?;
    if crate::host::sched::wakeup_usable(facts).is_ok() {
        attach_raw(ebpf, sched::WAKEUP_PROGRAM, sched::WAKEUP)?;
    }
    Ok(())
}

fn attach_raw(ebpf: &mut Ebpf, name: &'static str, tp: &str) -> Result<()> {
    let event = tp.split_once('/').map_or(tp, |(_, e)| e);
    try_hook(name, format!("raw tracepoint {tp}"), || {
        let prog: &mut RawTracePoint = ebpf.program_mut(name).context(name)?.try_into()?;
        prog.load().map_err(|e| anyhow!("{}", describe(&e)))?;
        prog.attach(event)
            .map_err(|e| anyhow!("attach: {}", describe(&e)))?;
        Ok(())
    })
}
