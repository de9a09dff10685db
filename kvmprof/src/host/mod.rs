//! What the running kernel offers and the plan made from it: `kernel` gathers the facts
//! (reading `btf` for prototypes and layouts), `plan` decides from them alone.
pub mod btf;
pub mod funcs;
pub mod kernel;
pub mod plan;
pub mod sched;

use anyhow::Result;

use kernel::Facts;
use plan::{HookPref, Mode, Plan};

/// Plans the hooks of one recording on this kernel: the one entry point of planning (the
/// live session's and `probes`'). Gathers the facts, then learns the one no file tells,
/// whether trampolines are allowed ([`btf::probe_trampoline`]), on the function the plan
/// would hook first with fentry, and plans; `deep` (`--stages`) keeps the handler and
/// `kvm_fast_pio` stages ([`Plan::without_deep_stages`]).
pub fn plan_for_host(hooks: HookPref, deep: bool) -> Result<(Facts, Plan)> {
    let mut facts = Facts::gather(&plan::candidate_functions())?;
    if matches!(hooks, HookPref::Auto | HookPref::Fentry) {
        // Planned as if trampolines were allowed: the first fentry stage is the test load.
        let optimistic = plan::plan(&facts, hooks);
        let first = optimistic.ok().and_then(|p| {
            // (The cycle stage may carry the vendor run's mode and a derived symbol.)
            p.stages
                .into_iter()
                .find(|s| s.mode == Mode::Fentry && facts.btf_funcs.contains_key(&s.symbol))
        });
        if let Some(target) = first.and_then(|sp| facts.btf_funcs.get(&sp.symbol)) {
            facts.fentry = Some(btf::probe_trampoline(target).map_err(|e| format!("{e:#}")));
        }
    }
    let plan = plan_from(&facts, hooks, deep)?;
    Ok((facts, plan))
}

/// The plan for `facts` at the level of detail asked for: without `deep` (`--stages`) the
/// handler and `kvm_fast_pio` stages are left unhooked, and the vendor run is bounded as cheaply
/// as the kernel allows ([`Plan::at_default_level`]).
/// Also the plan made again after the kernel refused a program (`Facts::refused`).
pub fn plan_from(facts: &Facts, hooks: HookPref, deep: bool) -> Result<Plan> {
    let mut plan = plan::plan(facts, hooks)?;
    if !deep {
        plan.at_default_level(facts, hooks);
    }
    Ok(plan)
}
