//! The attach planner: from the facts of the running kernel (`kernel::Facts`), decide per
//! stage which symbol to hook and how, and say why the other ways were rejected. Pure: no
//! I/O, so every kernel shape is unit-tested without root.
use anyhow::{bail, Result};
use kvmprof_common::{
    boundary,
    names::{hook, tp, tracepoint_programs},
};
use serde::{Deserialize, Serialize};

use crate::{
    backend, data::model::Stage, data::model::Vendor, host::btf::Arg, host::kernel::Facts,
};

/// How a stage is timed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// fentry/fexit: BPF trampolines on a function with BTF, in vmlinux or in a module's
    /// BTF (cheapest).
    Fentry,
    /// kprobe/kretprobe by kallsyms name (works for module code).
    Kprobe,
    /// Derived from tracepoints (KVM_RUN ioctl, `kvm:*`).
    Tracepoint,
    #[default]
    Unavailable,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Fentry => "fentry",
            Mode::Kprobe => "kprobe",
            Mode::Tracepoint => "tracepoint",
            Mode::Unavailable => "unavailable",
        }
    }
}

/// Let the planner choose, or force one mode (`--hooks`, `cli::Hooks`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookPref {
    Auto,
    Fentry,
    Kprobe,
    Tracepoint,
}

/// The plan for one stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagePlan {
    pub stage: Stage,
    /// The function (or tracepoints) that bound it.
    pub symbol: String,
    pub mode: Mode,
    /// Why each better mode was not used (`"fentry: refused by the kernel (EPERM)"`).
    pub rejected: Vec<String>,
    /// Why the chosen mode applies (`"svm_vcpu_run in kvm_amd BTF, trampolines allowed"`).
    #[serde(default)]
    pub why: String,
}

impl StagePlan {
    /// The mode, followed by the better hooks the kernel refused (`kprobe; fentry: refused by
    /// the kernel (…)`) when the stage is timed at all: the report's hooks lines.
    pub fn mode_label(&self) -> String {
        let refusals = self
            .rejected
            .iter()
            .filter(|r| r.contains("refused by the kernel"));
        let mut label = self.mode.name().to_string();
        if self.mode != Mode::Unavailable {
            for r in refusals {
                label.push_str("; ");
                label.push_str(r);
            }
        }
        label
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub vendor: Vendor,
    pub stages: Vec<StagePlan>,
    /// `kvmprof_common::boundary` value: what starts a cycle in the kernel.
    pub boundary: u32,
    /// Tracepoints to attach (`category/name`).
    pub tracepoints: Vec<String>,
    /// Those of `tracepoints` attached as BTF tracepoints (raw arguments, no trace-record
    /// copy) rather than as classic ones.
    #[serde(default)]
    pub btf_tracepoints: Vec<String>,
    /// Those of `tracepoints` attached as raw tracepoints (arguments by position, no
    /// trace-record copy), where the kernel's prototype has the arguments the program reads.
    #[serde(default)]
    pub raw_tracepoints: Vec<String>,
    /// How each tracepoint is attached and why, for `kvmprof probes`.
    #[serde(default)]
    pub tracepoint_notes: Vec<String>,
    /// The vendor run's fexit also reads the exit reason, so `kvm:kvm_exit` is not hooked.
    #[serde(default)]
    pub reason_at_vendor_return: bool,
    /// KVM_RUN's entry is an fentry on [`backend::RUN_IOCTL`] rather than the
    /// `sys_enter_ioctl` tracepoint.
    #[serde(default)]
    pub run_entry_fentry: bool,
}

impl Plan {
    /// One line saying how the cycle is measured, for report headers.
    pub fn cycle_source(&self) -> &'static str {
        match self.boundary {
            boundary::ENTER_GUEST => "vcpu_enter_guest duration",
            boundary::VENDOR_RUN => "vendor-run entry to next vendor-run entry (or return to VMM)",
            boundary::KVM_ENTRY => "kvm_entry to next kvm_entry (or return to VMM)",
            _ => "interval between consecutive exits of the vCPU thread (no kvm_exit/kvm_entry)",
        }
    }
}

impl Plan {
    /// The default level of detail: the cycle, the vendor run (guest/host split) and the VMM
    /// round trip, at the least cost this kernel allows (see [`Plan::without_deep_stages`]
    /// and [`Plan::vendor_run_by_tracepoints`]).
    pub fn at_default_level(&mut self, f: &Facts, pref: HookPref) {
        self.without_deep_stages();
        if pref == HookPref::Auto {
            self.vendor_run_by_tracepoints(f);
        }
    }

    /// Bounds the cycle and the vendor run by `kvm:kvm_entry` and `kvm:kvm_exit` instead of
    /// a hook pair on the vendor run, where programs cheaper than classic ones fit this kernel
    /// for both (raw `kvm_entry`, tp_btf `kvm_exit`): both tracepoints fire inside `vmx_vcpu_run` (and `svm_vcpu_run` from
    /// 6.x; on 6.1 SVM's `kvm_exit` is at the handler's start), and a tracepoint's program
    /// costs less than the trampoline that an fentry/fexit pair needs (measured in Bochs,
    /// `docs/benchmarks.md`). `--stages` times the function itself, as its handler stage
    /// nests in the cycle that function opens.
    fn vendor_run_by_tracepoints(&mut self, f: &Facts) {
        if self.boundary != boundary::VENDOR_RUN || !f.tracepoints.contains_key(tp::KVM_ENTRY) {
            return;
        }
        // The tracepoints' programs as every tracepoint is planned: tp_btf, then raw, each
        // where it fits this kernel and was not refused. A classic one would copy its record
        // on every exit: then the vendor run keeps its hooks.
        let bounds = [tp::KVM_ENTRY.to_string(), tp::KVM_EXIT.to_string()];
        let choice = plan_tracepoints(f, HookPref::Auto, &bounds);
        let classic: Vec<&String> = choice
            .notes
            .iter()
            .filter(|n| n.contains(": classic tracepoint"))
            .collect();
        if !classic.is_empty() {
            // Said in the plan, and in the report's hooks line when the kernel refused.
            let why = classic
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            for sp in &mut self.stages {
                if matches!(sp.stage, Stage::Cycle | Stage::VendorRun) {
                    sp.rejected
                        .insert(0, format!("kvm_entry/kvm_exit tracepoints: {why}"));
                }
            }
            return;
        }
        for sp in &mut self.stages {
            let symbol = match sp.stage {
                Stage::Cycle => "kvm:kvm_entry .. next kvm:kvm_entry",
                Stage::VendorRun => "kvm:kvm_entry .. kvm:kvm_exit",
                _ => continue,
            };
            let function = sp.symbol.trim_end_matches(" .. next");
            sp.rejected.insert(
                0,
                format!(
                    "{} on {function}: a trampoline per exit, dearer than two tracepoints; --stages uses it",
                    sp.mode.name()
                ),
            );
            sp.why = format!("kvm_entry and kvm_exit fire in {function}, no trampoline");
            sp.symbol = symbol.into();
            sp.mode = Mode::Tracepoint;
        }
        self.boundary = boundary::KVM_ENTRY;
        self.reason_at_vendor_return = false;
        self.tracepoint_notes
            .retain(|n| !bounds.iter().any(|t| n.starts_with(t.as_str())));
        self.tracepoint_notes.extend(choice.notes);
        for (chosen, list) in [
            (choice.btf, &mut self.btf_tracepoints),
            (choice.raw, &mut self.raw_tracepoints),
        ] {
            for t in chosen {
                if !self.tracepoints.contains(&t) {
                    self.tracepoints.push(t.clone());
                }
                if !list.contains(&t) {
                    list.push(t);
                }
            }
        }
    }

    /// The handler and `kvm_fast_pio` stages, the deep breakdown, cost four more programs on
    /// every exit and are hooked only with `--stages`.
    pub fn without_deep_stages(&mut self) {
        for sp in &mut self.stages {
            if matches!(sp.stage, Stage::Handler | Stage::FastPio) && sp.mode != Mode::Unavailable {
                let was = format!(
                    "{} on {}: the deep breakdown, hooked only with --stages",
                    sp.mode.name(),
                    sp.symbol
                );
                sp.rejected.insert(0, was);
                sp.mode = Mode::Unavailable;
                sp.why = "not timed: --stages asks for it".into();
            }
        }
    }
}

/// Every function the planner may consider, for `Facts::gather`.
pub fn candidate_functions() -> Vec<&'static str> {
    let mut v: Vec<&str> = vec![backend::ENTER_GUEST, backend::FAST_PIO, backend::RUN_IOCTL];
    for vd in [Vendor::Vmx, Vendor::Svm, Vendor::Pvm] {
        let h = backend::hooks(vd);
        v.extend(h.vendor_run.iter().chain(h.handler));
    }
    v
}

/// Plans every stage for this kernel.
pub fn plan(f: &Facts, pref: HookPref) -> Result<Plan> {
    for tp in tp::BASE {
        if !f.tracepoints.contains_key(tp) {
            bail!("tracepoint {tp} is missing: this kernel has no KVM tracing (CONFIG_KVM, CONFIG_FTRACE_SYSCALLS)");
        }
    }
    let vendor = f.vendor();
    if vendor == Vendor::Unknown {
        bail!("no KVM backend found (no kvm_intel, kvm_amd or PVM symbols): is KVM loaded?");
    }
    let hooks = backend::hooks(vendor);
    let kvm_exit_usable = hooks.kvm_exit_fires && f.tracepoints.contains_key(tp::KVM_EXIT);
    let kvm_entry_usable = kvm_exit_usable && f.tracepoints.contains_key(tp::KVM_ENTRY);

    let funcs: [(Stage, &[&str], &str); 4] = [
        (Stage::Cycle, &[backend::ENTER_GUEST], backend::KVM_MODULE),
        (Stage::VendorRun, hooks.vendor_run, hooks.module),
        (Stage::Handler, hooks.handler, hooks.module),
        (Stage::FastPio, &[backend::FAST_PIO], backend::KVM_MODULE),
    ];
    let mut stages = Vec::new();
    for (stage, symbols, module) in funcs {
        stages.push(plan_function(
            f,
            pref,
            (stage, symbols, module),
            kvm_entry_usable,
        ));
    }
    if pref != HookPref::Auto && pref != HookPref::Tracepoint {
        let forced = if pref == HookPref::Fentry {
            Mode::Fentry
        } else {
            Mode::Kprobe
        };
        if let Some(vr) = stages.iter().find(|s| s.stage == Stage::VendorRun) {
            if vr.mode != forced {
                bail!(
                    "--hooks {} is impossible here: {}",
                    forced.name(),
                    vr.rejected
                        .iter()
                        .find(|r| r.starts_with(forced.name()))
                        .map_or("", |r| r)
                );
            }
        }
    }
    stages.push(StagePlan {
        stage: Stage::KvmRun,
        symbol: "sys_enter_ioctl(KVM_RUN) .. kvm:kvm_userspace_exit".into(),
        mode: Mode::Tracepoint,
        rejected: vec![
            "kprobe/fentry on kvm_arch_vcpu_ioctl_run: not needed, the tracepoints bound the same interval and also give the vCPU fd".into(),
        ],
        why: "the ioctl tracepoint also gives the vCPU fd".into(),
    });
    stages.push(StagePlan {
        stage: Stage::Vmm,
        symbol: "kvm:kvm_userspace_exit .. sys_enter_ioctl(KVM_RUN)".into(),
        mode: Mode::Tracepoint,
        rejected: vec![],
        why: "the only events at both ends".into(),
    });

    stages.extend(super::sched::stages(f));

    let hooked = |s: Stage| {
        stages
            .iter()
            .any(|p| p.stage == s && matches!(p.mode, Mode::Fentry | Mode::Kprobe))
    };
    let boundary = if hooked(Stage::Cycle) {
        boundary::ENTER_GUEST
    } else if hooked(Stage::VendorRun) {
        boundary::VENDOR_RUN
    } else if kvm_entry_usable {
        boundary::KVM_ENTRY
    } else {
        boundary::IDENT
    };
    if boundary == boundary::VENDOR_RUN {
        // The cycle is then bounded by the vendor-run hook, not by tracepoints.
        let (vr_symbol, vr_mode) = stages
            .iter()
            .find(|p| p.stage == Stage::VendorRun)
            .map(|p| (p.symbol.clone(), p.mode))
            .unwrap_or_default();
        if let Some(c) = stages.iter_mut().find(|p| p.stage == Stage::Cycle) {
            c.why = format!("bounded by the {} hook on {vr_symbol}", vr_mode.name());
            c.symbol = format!("{vr_symbol} .. next");
            c.mode = vr_mode;
        }
    }
    let mut tracepoints: Vec<String> = tp::BASE.map(String::from).to_vec();
    if kvm_exit_usable {
        tracepoints.push(tp::KVM_EXIT.into());
    }
    if boundary == boundary::KVM_ENTRY {
        tracepoints.push(tp::KVM_ENTRY.into());
    }
    let TracepointChoice {
        btf: mut btf_tracepoints,
        raw: raw_tracepoints,
        notes: mut tracepoint_notes,
    } = plan_tracepoints(f, pref, &tracepoints);
    // By the vendor run's return KVM has stored the exit reason in the vCPU struct (the
    // vendor run takes the vCPU first, `kvm_x86_ops.vcpu_run`): its fexit reads it at the
    // offsets the tp_btf program would use, and `kvm_exit` needs no program of its own.
    let vendor_run = stages.iter().find(|p| p.stage == Stage::VendorRun);
    // It needs the reason's layout from BTF, not the tp_btf program: 6.12's verifier refuses
    // that one (`Facts::refused`), and the fexit is loaded on its own. A refused fexit plans
    // the vendor run's plain fexit and a `kvm_exit` program again.
    let reason_at_vendor_return = boundary == boundary::VENDOR_RUN
        && vendor_run.is_some_and(|p| p.mode == Mode::Fentry)
        && tracepoints.iter().any(|t| t == tp::KVM_EXIT)
        && matches!(f.kvm_exit_layout, Some(Ok(_)))
        && !f.refused.contains_key(hook::VENDOR_RUN_REASON);
    if reason_at_vendor_return {
        let symbol = vendor_run.map_or("", |p| p.symbol.as_str());
        tracepoints.retain(|t| t != tp::KVM_EXIT);
        btf_tracepoints.retain(|t| t != tp::KVM_EXIT);
        for n in &mut tracepoint_notes {
            if n.starts_with(tp::KVM_EXIT) {
                *n = format!(
                    "{}: not hooked: the exit reason is read in the fexit of {symbol} (vendor vCPU struct, offsets from BTF), one program fewer per exit",
                    tp::KVM_EXIT
                );
            }
        }
    }
    // KVM_RUN's entry by fentry on KVM's own function, not on a tracepoint that runs for
    // every ioctl on the host. Only where the exit reason comes from the vCPU struct: the
    // vCPU's id then comes with it, and the ioctl's fd (the tracepoint's gift) is not needed.
    let run_entry_fentry = reason_at_vendor_return
        && f.fentry == Some(Ok(()))
        && f.btf_funcs.contains_key(backend::RUN_IOCTL)
        && !f.refused.contains_key(hook::RUN_ENTRY);
    if run_entry_fentry {
        tracepoints.retain(|t| t != tp::SYS_ENTER_IOCTL);
        tracepoint_notes.retain(|n| !n.starts_with(tp::SYS_ENTER_IOCTL));
        tracepoint_notes.push(format!(
            "{}: not hooked: fentry on {} bounds KVM_RUN (it runs for KVM_RUN only)",
            tp::SYS_ENTER_IOCTL,
            backend::RUN_IOCTL
        ));
        for sp in &mut stages {
            match sp.stage {
                Stage::KvmRun => {
                    sp.symbol = format!("{} .. kvm:kvm_userspace_exit", backend::RUN_IOCTL);
                    sp.mode = Mode::Fentry;
                    sp.rejected =
                        vec!["sys_enter_ioctl(KVM_RUN): runs for every ioctl on the host".into()];
                    sp.why = format!(
                        "{} is in BTF, trampolines allowed; the vCPU id comes with the exit reason",
                        backend::RUN_IOCTL
                    );
                }
                Stage::Vmm => {
                    sp.symbol = format!("kvm:kvm_userspace_exit .. {}", backend::RUN_IOCTL);
                    sp.mode = Mode::Fentry;
                }
                _ => {}
            }
        }
    }
    Ok(Plan {
        vendor,
        stages,
        boundary,
        tracepoints,
        btf_tracepoints,
        raw_tracepoints,
        tracepoint_notes,
        reason_at_vendor_return,
        run_entry_fentry,
    })
}

/// How the tracepoints are attached: the tp_btf ones, the raw ones (the rest classic), and
/// one note per tracepoint saying how and why.
struct TracepointChoice {
    btf: Vec<String>,
    raw: Vec<String>,
    notes: Vec<String>,
}

/// Per tracepoint, the cheapest program that fits this kernel and that the kernel did not
/// refuse: tp_btf where it has a tp_btf program, then raw where it has a raw one, classic
/// otherwise (format-file fields, a copy of them into a record before the program runs).
fn plan_tracepoints(f: &Facts, pref: HookPref, tracepoints: &[String]) -> TracepointChoice {
    let mut out = TracepointChoice {
        btf: Vec::new(),
        raw: Vec::new(),
        notes: Vec::new(),
    };
    for tp in tracepoints {
        let programs = tracepoint_programs(tp);
        let mut why_not = Vec::new();
        if let Some(btf) = programs.and_then(|p| p.btf) {
            match refused(f, &[btf], "tp_btf").and_then(|()| btf_tracepoint(f, pref, tp)) {
                Ok(note) => {
                    out.btf.push(tp.clone());
                    out.notes.push(format!("{tp}: {note}"));
                    continue;
                }
                Err(w) => why_not.push(w),
            }
        }
        if let Some(raw) = programs.and_then(|p| p.raw) {
            match refused(f, &[raw.0], "raw").and_then(|()| raw_tracepoint(f, tp, raw)) {
                Ok(note) => {
                    out.raw.push(tp.clone());
                    out.notes.push(format!("{tp}: {note}"));
                    continue;
                }
                Err(w) => why_not.push(w),
            }
        }
        if why_not.is_empty() {
            why_not.push("no tp_btf or raw program for it".to_string());
        }
        out.notes
            .push(format!("{tp}: classic tracepoint ({})", why_not.join("; ")));
    }
    out
}

/// `Err` saying that the kernel refused one of `programs` (the `what` hook of a stage or
/// tracepoint) when it was loaded or attached, with the kernel's answer.
fn refused(f: &Facts, programs: &[&str], what: &str) -> Result<(), String> {
    match programs.iter().find_map(|p| f.refused.get(*p)) {
        Some(why) => Err(format!("{what}: refused by the kernel ({why})")),
        None => Ok(()),
    }
}

/// The names of the entry and return programs `prefixes` of `stage`'s hook.
fn pair(stage: Stage, prefixes: [&str; 2]) -> [String; 2] {
    let stem = hook::stem(stage.index()).unwrap_or_default();
    prefixes.map(|p| format!("{p}{stem}"))
}

/// The event name of `category/name`.
fn event(tp: &str) -> &str {
    tp.split_once('/').map_or(tp, |(_, n)| n)
}

/// Whether `tp` (which has a tp_btf program) is attached as tp_btf: when its
/// `btf_trace_<name>` type is in vmlinux or module BTF (`kvm:*` live in kvm.ko on distro
/// kernels) and the hooks asked for are the BTF ones (`auto`, `fentry`). tp_btf needs no
/// trampoline, only BTF.
fn btf_tracepoint(f: &Facts, pref: HookPref, tp: &str) -> Result<String, String> {
    if !matches!(pref, HookPref::Auto | HookPref::Fentry) {
        return Err("tp_btf not requested (--hooks)".to_string());
    }
    let Some(home) = f
        .btf_tracepoints
        .get(tp)
        .map(|t| t.module.as_deref().unwrap_or("vmlinux"))
    else {
        return Err("tp_btf: no btf_trace type in vmlinux or KVM module BTF".to_string());
    };
    // Only kvm_exit's program needs more than its arguments: the exit reason's layout.
    let detail = match (tp, &f.kvm_exit_layout) {
        (tp::KVM_EXIT, Some(Ok(_))) => {
            " (exit reason read through the vendor vCPU struct, offsets from BTF)"
        }
        (tp::KVM_EXIT, Some(Err(e))) => return Err(format!("tp_btf: {e}")),
        (tp::KVM_EXIT, None) => return Err("tp_btf: BTF layout not read".to_string()),
        _ => "",
    };
    Ok(format!(
        "tp_btf on btf_trace_{} in {home} BTF{detail}",
        event(tp)
    ))
}

/// Whether `tp` is attached as a raw tracepoint by `program`, which reads integers of
/// `sizes` bytes as its first arguments: only where the prototype says so, since a raw
/// program reads by position and a changed prototype would be misread, not refused.
fn raw_tracepoint(f: &Facts, tp: &str, (program, sizes): (&str, &[u32])) -> Result<String, String> {
    let home = f
        .btf_tracepoints
        .get(tp)
        .map_or("vmlinux", |t| t.module.as_deref().unwrap_or("vmlinux"));
    let Some(args) = f.tracepoint_args.get(tp) else {
        return Err("raw: no btf_trace type in vmlinux or KVM module BTF".to_string());
    };
    let want: Vec<Arg> = sizes.iter().map(|&n| Arg::Int(n)).collect();
    if args.len() < want.len() || args[..want.len()] != want[..] {
        return Err(format!(
            "raw: btf_trace_{} has arguments {args:?}, {program} reads {want:?}",
            event(tp)
        ));
    }
    Ok(format!(
        "raw tracepoint ({program}: btf_trace_{} in {home} BTF has the arguments it reads)",
        event(tp)
    ))
}

/// Plans one function-bounded stage: the first of `symbols` present on this kernel (built in,
/// or in `module`: a same-named function of another module is not this one), then the best
/// mode allowed by `pref`.
fn plan_function(
    f: &Facts,
    pref: HookPref,
    (stage, symbols, module): (Stage, &[&str], &str),
    kvm_entry: bool,
) -> StagePlan {
    let mut rejected = Vec::new();
    let present = symbols.iter().find(|s| {
        f.kallsyms
            .get(**s)
            .is_some_and(|sym| sym.module.as_deref().is_none_or(|m| m == module))
    });
    let fallback = |rejected: Vec<String>| tracepoint_fallback(stage, symbols, kvm_entry, rejected);
    let Some(sym) = present else {
        rejected.push(format!(
            "fentry/kprobe: {} not in kallsyms (inlined or not built)",
            symbols.join("/")
        ));
        return fallback(rejected);
    };
    let sym = sym.to_string();
    if let Some(t) = &f.traceable {
        if !t.contains(&sym) {
            rejected.push(format!(
                "fentry/kprobe: {sym} is notrace (not in available_filter_functions)"
            ));
            return fallback(rejected);
        }
    }
    let want = |m: HookPref| pref == HookPref::Auto || pref == m;

    // fentry: the function's BTF may be vmlinux's or its module's (loaded with the module's
    // BTF object, see attach.rs).
    let module = f.kallsyms.get(&sym).and_then(|s| s.module.clone());
    let btf = f.btf_funcs.get(&sym);
    let fentry_why = if !want(HookPref::Fentry) {
        Err("fentry: not requested (--hooks)".to_string())
    } else if btf.is_none() {
        Err(format!(
            "fentry: {sym} has no BTF entry (vmlinux{})",
            module
                .as_ref()
                .map_or(String::new(), |m| format!(" or {m}"))
        ))
    } else if let Some(Err(e)) = &f.fentry {
        Err(format!("fentry: refused by the kernel ({e})"))
    } else {
        let [fe, fx] = pair(stage, [hook::FENTRY, hook::FEXIT]);
        refused(f, &[&fe, &fx], "fentry")
            .map(|()| btf.map_or("", |t| t.module.as_deref().unwrap_or("vmlinux")))
    };
    match fentry_why {
        Ok(home) => {
            let allowed = match f.fentry {
                Some(Ok(())) => "trampolines allowed (a test load succeeded)",
                _ => "trampolines not tried",
            };
            return StagePlan {
                stage,
                symbol: sym.clone(),
                mode: Mode::Fentry,
                rejected,
                why: format!("{sym} is in {home} BTF, {allowed}"),
            };
        }
        Err(w) => rejected.push(w),
    }
    let kprobe_why = if !want(HookPref::Kprobe) {
        Some("kprobe: not requested (--hooks)".to_string())
    } else if !f.kprobes {
        Some("kprobe: kprobes are not available (no CONFIG_KPROBES / kprobe PMU)".to_string())
    } else {
        let [kp, krp] = pair(stage, [hook::KPROBE, hook::KRETPROBE]);
        refused(f, &[&kp, &krp], "kprobe").err()
    };
    match kprobe_why {
        None => StagePlan {
            stage,
            why: format!("{sym} is in kallsyms, kprobes available"),
            symbol: sym,
            mode: Mode::Kprobe,
            rejected,
        },
        Some(w) => {
            rejected.push(w);
            fallback(rejected)
        }
    }
}

fn tracepoint_fallback(
    stage: Stage,
    symbols: &[&str],
    kvm_entry: bool,
    mut rejected: Vec<String>,
) -> StagePlan {
    let (symbol, mode) = match stage {
        Stage::Cycle if kvm_entry => (
            "kvm:kvm_entry .. next kvm:kvm_entry".to_string(),
            Mode::Tracepoint,
        ),
        Stage::Cycle => (
            "interval between kvm:kvm_pio/kvm_mmio/KVM_RUN events".to_string(),
            Mode::Tracepoint,
        ),
        Stage::VendorRun if kvm_entry => (
            "kvm:kvm_entry .. kvm:kvm_exit".to_string(),
            Mode::Tracepoint,
        ),
        _ => {
            if stage == Stage::VendorRun {
                rejected.push("tracepoint: kvm_entry/kvm_exit do not fire for this backend".into());
            }
            (symbols.join("/"), Mode::Unavailable)
        }
    };
    let why = match mode {
        Mode::Tracepoint => "bounded by tracepoints".to_string(),
        _ => "no hook for it on this kernel".to_string(),
    };
    StagePlan {
        stage,
        symbol,
        mode,
        rejected,
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{host::btf::ExitLayout, host::btf::Target, host::kernel::Symbol};

    const BASE_TPS: [&str; 4] = [
        "syscalls/sys_enter_ioctl",
        "kvm/kvm_userspace_exit",
        "kvm/kvm_pio",
        "kvm/kvm_mmio",
    ];

    /// A kernel with `syms` as `(name, module)` and every KVM tracepoint.
    fn facts(syms: &[(&str, Option<&str>)]) -> Facts {
        let mut f = Facts::default();
        for (name, module) in syms {
            f.kallsyms.insert(
                name.to_string(),
                Symbol {
                    module: module.map(str::to_string),
                },
            );
        }
        for tp in BASE_TPS.iter().chain(&["kvm/kvm_exit", "kvm/kvm_entry"]) {
            f.tracepoints.insert(tp.to_string(), Default::default());
        }
        f
    }

    fn pvm_host() -> Facts {
        let mut f = facts(&[
            ("pvm_vcpu_run", None),
            ("pvm_handle_exit", None),
            ("kvm_fast_pio", None),
        ]);
        with_btf(
            &mut f,
            &[
                ("pvm_vcpu_run", None),
                ("pvm_handle_exit", None),
                ("kvm_fast_pio", None),
            ],
        );
        f.fentry = Some(Err("Operation not permitted (os error 1)".into()));
        f
    }

    /// Gives `funcs` (`(name, module)`) a BTF entry.
    fn with_btf(f: &mut Facts, funcs: &[(&str, Option<&str>)]) {
        for (i, (name, module)) in funcs.iter().enumerate() {
            f.btf_funcs.insert(
                name.to_string(),
                Target {
                    module: module.map(str::to_string),
                    type_id: 1000 + i as u32,
                },
            );
        }
    }

    /// The SVM VM's kernel: KVM in modules, with module BTF, kprobes, and trampolines allowed.
    fn svm_modules_with_btf() -> Facts {
        let mut f = svm_modules();
        with_btf(
            &mut f,
            &[
                ("svm_vcpu_run", Some("kvm_amd")),
                ("svm_handle_exit", Some("kvm_amd")),
                ("kvm_fast_pio", Some("kvm")),
            ],
        );
        f.fentry = Some(Ok(()));
        f.btf_tracepoints.insert(
            "kvm/kvm_exit".into(),
            Target {
                module: Some("kvm".into()),
                type_id: 2000,
            },
        );
        f.kvm_exit_layout = Some(Ok(ExitLayout {
            reason_deref: Some(0x1a0),
            reason_off: 0x70,
            vcpu_id_off: 8,
        }));
        f
    }

    fn svm_modules() -> Facts {
        let mut f = facts(&[
            ("svm_vcpu_run", Some("kvm_amd")),
            ("svm_handle_exit", Some("kvm_amd")),
            ("kvm_fast_pio", Some("kvm")),
        ]);
        f.kprobes = true;
        f.kvm_modules = vec!["kvm_amd".into()];
        f
    }

    fn stage(p: &Plan, s: Stage) -> &StagePlan {
        p.stages
            .iter()
            .find(|x| x.stage == s)
            .expect("stage planned")
    }

    #[test]
    fn the_default_level_leaves_the_deep_stages_unhooked_and_says_so() {
        let full = plan(&svm_modules_with_btf(), HookPref::Auto).unwrap();
        let mut p = full.clone();
        p.without_deep_stages();
        for s in [Stage::Handler, Stage::FastPio] {
            assert_eq!(stage(&full, s).mode, Mode::Fentry);
            let sp = stage(&p, s);
            assert_eq!(sp.mode, Mode::Unavailable);
            assert!(
                sp.rejected[0].contains("only with --stages"),
                "{:?}",
                sp.rejected
            );
        }
        // The cycle, the vendor run and the boundary stay as planned.
        for s in [Stage::Cycle, Stage::VendorRun, Stage::KvmRun, Stage::Vmm] {
            assert_eq!(stage(&p, s), stage(&full, s));
        }
        assert_eq!(
            (p.boundary, &p.tracepoints),
            (full.boundary, &full.tracepoints)
        );
        // Under PVM there is nothing to leave out.
        let pvm = plan(&pvm_host(), HookPref::Auto).unwrap();
        let mut shallow = pvm.clone();
        shallow.without_deep_stages();
        assert_eq!(shallow, pvm);
    }

    /// `plan` at the default level of detail, as `host::plan_from` makes it without --stages.
    fn default_level(f: &Facts, pref: HookPref) -> Plan {
        let mut p = plan(f, pref).unwrap();
        p.at_default_level(f, pref);
        p
    }

    #[test]
    fn the_default_level_bounds_the_vendor_run_by_kvm_entry_and_kvm_exit_where_both_fit() {
        let mut f = svm_modules_with_btf();
        f.tracepoint_args
            .insert("kvm/kvm_entry".into(), vec![Arg::Ptr]);
        let p = default_level(&f, HookPref::Auto);
        assert_eq!(p.boundary, boundary::KVM_ENTRY);
        for (s, symbol) in [
            (Stage::Cycle, "kvm:kvm_entry .. next kvm:kvm_entry"),
            (Stage::VendorRun, "kvm:kvm_entry .. kvm:kvm_exit"),
        ] {
            let sp = stage(&p, s);
            assert_eq!((sp.mode, sp.symbol.as_str()), (Mode::Tracepoint, symbol));
            assert!(
                sp.rejected[0].starts_with("fentry on svm_vcpu_run: a trampoline per exit"),
                "{:?}",
                sp.rejected
            );
            assert_eq!(
                sp.why,
                "kvm_entry and kvm_exit fire in svm_vcpu_run, no trampoline"
            );
        }
        assert!(!p.reason_at_vendor_return);
        assert_eq!(p.raw_tracepoints, ["kvm/kvm_entry"]);
        assert_eq!(p.btf_tracepoints, ["kvm/kvm_exit"]);
        for t in ["kvm/kvm_entry", "kvm/kvm_exit"] {
            assert!(p.tracepoints.iter().any(|x| x == t), "{t} not attached");
        }
        let note = |t: &str| {
            p.tracepoint_notes
                .iter()
                .filter(|n| n.starts_with(t))
                .count()
        };
        assert_eq!(
            (
                note("kvm/kvm_entry: raw tracepoint"),
                note("kvm/kvm_exit: tp_btf on")
            ),
            (1, 1)
        );
        assert_eq!(
            note("kvm/kvm_"),
            2 + note("kvm/kvm_pio") + note("kvm/kvm_mmio") + note("kvm/kvm_userspace_exit")
        );

        // --stages (the plan itself) and --hooks fentry keep the vendor run's own hooks; so
        // does a kernel that refuses either tracepoint program or has no kvm_entry prototype.
        assert_eq!(
            plan(&f, HookPref::Auto).unwrap().boundary,
            boundary::VENDOR_RUN
        );
        assert_eq!(
            default_level(&f, HookPref::Fentry).boundary,
            boundary::VENDOR_RUN
        );
        for refused in ["raw_kvm_entry", "tpb_kvm_exit"] {
            let mut g = f.clone();
            g.refused.insert(refused.into(), "Permission denied".into());
            let p = default_level(&g, HookPref::Auto);
            assert_eq!(p.boundary, boundary::VENDOR_RUN, "{refused} refused");
            let vr = stage(&p, Stage::VendorRun);
            assert_eq!(vr.mode, Mode::Fentry);
            assert!(
                vr.mode_label().contains("kvm_entry/kvm_exit tracepoints: ")
                    && vr
                        .mode_label()
                        .contains("refused by the kernel (Permission denied)"),
                "{}",
                vr.mode_label()
            );
        }
        let p = default_level(&svm_modules_with_btf(), HookPref::Auto);
        assert_eq!(p.boundary, boundary::VENDOR_RUN);
        assert!(p.reason_at_vendor_return);
    }

    #[test]
    fn pvm_host_without_kprobes_falls_back_to_tracepoints_and_says_why() {
        let p = plan(&pvm_host(), HookPref::Auto).unwrap();
        assert_eq!(p.vendor, Vendor::Pvm);
        assert_eq!(p.boundary, boundary::IDENT);
        assert!(
            !p.tracepoints.iter().any(|t| t == "kvm/kvm_exit"),
            "kvm_exit never fires under PVM"
        );
        let vr = stage(&p, Stage::VendorRun);
        assert_eq!(vr.mode, Mode::Unavailable);
        assert!(
            vr.rejected.iter().any(|r| r.contains("fentry: refused")),
            "{:?}",
            vr.rejected
        );
        assert!(vr
            .rejected
            .iter()
            .any(|r| r.contains("kprobes are not available")));
        assert_eq!(stage(&p, Stage::Cycle).mode, Mode::Tracepoint);
        let c = stage(&p, Stage::Cycle);
        assert!(c
            .rejected
            .iter()
            .any(|r| r.contains("vcpu_enter_guest not in kallsyms")));
    }

    #[test]
    fn svm_in_modules_without_module_btf_uses_kprobes_and_bounds_cycles_by_the_vendor_run() {
        let p = plan(&svm_modules(), HookPref::Auto).unwrap();
        assert_eq!(p.vendor, Vendor::Svm);
        assert_eq!(p.boundary, boundary::VENDOR_RUN);
        for (s, sym) in [
            (Stage::VendorRun, "svm_vcpu_run"),
            (Stage::Handler, "svm_handle_exit"),
            (Stage::FastPio, "kvm_fast_pio"),
        ] {
            let sp = stage(&p, s);
            assert_eq!((sp.mode, sp.symbol.as_str()), (Mode::Kprobe, sym));
            assert!(
                sp.rejected[0].contains("has no BTF entry"),
                "{:?}",
                sp.rejected
            );
        }
        assert_eq!(stage(&p, Stage::Cycle).symbol, "svm_vcpu_run .. next");
        assert!(p.tracepoints.iter().any(|t| t == "kvm/kvm_exit"));
        assert!(!p.tracepoints.iter().any(|t| t == "kvm/kvm_entry"));
    }

    #[test]
    fn older_svm_kernels_time_handle_exit() {
        let mut f = svm_modules();
        f.kallsyms.remove("svm_handle_exit");
        f.kallsyms.insert(
            "handle_exit".into(),
            Symbol {
                module: Some("kvm_amd".into()),
            },
        );
        let p = plan(&f, HookPref::Auto).unwrap();
        assert_eq!(stage(&p, Stage::Handler).symbol, "handle_exit");
        // A generic name found in another module is not the vendor's handler.
        f.kallsyms.insert(
            "handle_exit".into(),
            Symbol {
                module: Some("other".into()),
            },
        );
        let p = plan(&f, HookPref::Auto).unwrap();
        assert_eq!(stage(&p, Stage::Handler).mode, Mode::Unavailable);
    }

    #[test]
    fn built_in_vmx_with_trampolines_uses_fentry() {
        let mut f = facts(&[
            ("vmx_vcpu_run", None),
            ("vmx_handle_exit", None),
            ("kvm_fast_pio", None),
        ]);
        with_btf(
            &mut f,
            &[
                ("vmx_vcpu_run", None),
                ("vmx_handle_exit", None),
                ("kvm_fast_pio", None),
            ],
        );
        f.fentry = Some(Ok(()));
        f.kprobes = true;
        let p = plan(&f, HookPref::Auto).unwrap();
        assert_eq!(p.vendor, Vendor::Vmx);
        assert_eq!(stage(&p, Stage::VendorRun).mode, Mode::Fentry);
        assert_eq!(stage(&p, Stage::Handler).mode, Mode::Fentry);
        // Forcing kprobes still works where both exist.
        let k = plan(&f, HookPref::Kprobe).unwrap();
        assert_eq!(stage(&k, Stage::VendorRun).mode, Mode::Kprobe);
    }

    #[test]
    fn a_hookable_vcpu_enter_guest_bounds_the_cycle() {
        let mut f = svm_modules();
        f.kallsyms.insert(
            "vcpu_enter_guest".into(),
            Symbol {
                module: Some("kvm".into()),
            },
        );
        let p = plan(&f, HookPref::Auto).unwrap();
        assert_eq!(p.boundary, boundary::ENTER_GUEST);
        assert_eq!(stage(&p, Stage::Cycle).mode, Mode::Kprobe);
    }

    #[test]
    fn forcing_tracepoints_on_svm_times_the_vendor_run_between_kvm_entry_and_kvm_exit() {
        let p = plan(&svm_modules(), HookPref::Tracepoint).unwrap();
        assert_eq!(p.boundary, boundary::KVM_ENTRY);
        assert_eq!(stage(&p, Stage::VendorRun).mode, Mode::Tracepoint);
        assert_eq!(stage(&p, Stage::Handler).mode, Mode::Unavailable);
        assert!(p.tracepoints.iter().any(|t| t == "kvm/kvm_entry"));
    }

    #[test]
    fn forcing_an_impossible_mode_is_an_error() {
        let e = plan(&pvm_host(), HookPref::Kprobe).unwrap_err().to_string();
        assert!(
            e.contains("--hooks kprobe is impossible here: kprobe: kprobes are not available"),
            "{e}"
        );
        let e = plan(&svm_modules(), HookPref::Fentry)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("svm_vcpu_run has no BTF entry (vmlinux or kvm_amd)"),
            "{e}"
        );
        // The host: BTF everywhere, but its sandbox refuses trampolines.
        let e = plan(&pvm_host(), HookPref::Fentry).unwrap_err().to_string();
        assert!(
            e.contains("--hooks fentry is impossible here: fentry: refused by the kernel (Operation not permitted"),
            "{e}"
        );
    }

    #[test]
    fn module_functions_with_module_btf_use_fentry_and_read_the_reason_in_the_vendor_fexit() {
        for pref in [HookPref::Auto, HookPref::Fentry] {
            let p = plan(&svm_modules_with_btf(), pref).unwrap();
            for (s, sym, home) in [
                (Stage::VendorRun, "svm_vcpu_run", "kvm_amd"),
                (Stage::Handler, "svm_handle_exit", "kvm_amd"),
                (Stage::FastPio, "kvm_fast_pio", "kvm"),
            ] {
                let sp = stage(&p, s);
                assert_eq!((sp.mode, sp.symbol.as_str()), (Mode::Fentry, sym));
                assert!(sp.why.contains(&format!("in {home} BTF")), "{}", sp.why);
            }
            assert_eq!(p.boundary, boundary::VENDOR_RUN);
            assert_eq!(stage(&p, Stage::Cycle).mode, Mode::Fentry);
            // The fexit of svm_vcpu_run reads the reason: no program on kvm_exit.
            assert!(p.reason_at_vendor_return);
            assert!(p.btf_tracepoints.is_empty());
            assert!(!p.tracepoints.iter().any(|t| t == "kvm/kvm_exit"));
            assert!(p.tracepoint_notes.iter().any(|n| n.starts_with(
                "kvm/kvm_exit: not hooked: the exit reason is read in the fexit of svm_vcpu_run"
            )));
        }
    }

    #[test]
    fn kvm_run_is_entered_by_fentry_on_kvm_where_the_reason_comes_from_the_vcpu() {
        let mut f = svm_modules_with_btf();
        assert!(
            !plan(&f, HookPref::Auto).unwrap().run_entry_fentry,
            "no BTF for it"
        );
        with_btf(&mut f, &[("kvm_arch_vcpu_ioctl_run", Some("kvm"))]);
        let p = plan(&f, HookPref::Auto).unwrap();
        assert!(p.run_entry_fentry);
        assert!(!p
            .tracepoints
            .iter()
            .any(|t| t == "syscalls/sys_enter_ioctl"));
        let run = stage(&p, Stage::KvmRun);
        assert_eq!(run.mode, Mode::Fentry);
        assert_eq!(
            run.symbol,
            "kvm_arch_vcpu_ioctl_run .. kvm:kvm_userspace_exit"
        );
        // kprobe mode reads the reason on kvm_exit and keeps the ioctl tracepoint (its fd).
        let k = plan(&f, HookPref::Kprobe).unwrap();
        assert!(!k.run_entry_fentry);
        assert!(k
            .tracepoints
            .iter()
            .any(|t| t == "syscalls/sys_enter_ioctl"));
    }

    #[test]
    fn kprobe_mode_keeps_kprobes_and_the_classic_kvm_exit_and_says_why() {
        let p = plan(&svm_modules_with_btf(), HookPref::Kprobe).unwrap();
        let vr = stage(&p, Stage::VendorRun);
        assert_eq!(vr.mode, Mode::Kprobe);
        assert_eq!(vr.rejected, ["fentry: not requested (--hooks)"]);
        assert!(p.btf_tracepoints.is_empty());
        assert!(p
            .tracepoint_notes
            .contains(&"kvm/kvm_exit: classic tracepoint (tp_btf not requested (--hooks))".into()));
    }

    #[test]
    fn refused_trampolines_fall_back_to_kprobes_but_keep_tp_btf() {
        let mut f = svm_modules_with_btf();
        f.fentry = Some(Err("Operation not permitted (os error 1)".into()));
        let p = plan(&f, HookPref::Auto).unwrap();
        let vr = stage(&p, Stage::VendorRun);
        assert_eq!(vr.mode, Mode::Kprobe);
        assert!(vr.rejected[0].contains("fentry: refused by the kernel"));
        // tp_btf needs BTF, not trampolines; a kretprobe has no arguments to read the
        // reason through.
        assert_eq!(p.btf_tracepoints, ["kvm/kvm_exit"]);
        assert!(!p.reason_at_vendor_return);
    }

    #[test]
    fn an_unknown_kvm_exit_prototype_keeps_the_classic_tracepoint() {
        let mut f = svm_modules_with_btf();
        f.kvm_exit_layout = Some(Err(
            "btf_trace_kvm_exit is (u32, struct kvm_vcpu *, u32)".into()
        ));
        let p = plan(&f, HookPref::Auto).unwrap();
        assert!(p.btf_tracepoints.is_empty());
        assert!(p
            .tracepoint_notes
            .iter()
            .any(|n| n.contains("classic tracepoint (tp_btf: btf_trace_kvm_exit is (u32")));
    }

    /// The host's KVM tracepoint prototypes (6.18), as BTF gives them.
    fn with_io_prototypes(f: &mut Facts) {
        let int = Arg::Int(4);
        for (tp, args) in [
            ("kvm/kvm_pio", vec![int, int, int, int, Arg::Ptr]),
            ("kvm/kvm_mmio", vec![int, int, Arg::Int(8), Arg::Ptr]),
            ("kvm/kvm_userspace_exit", vec![int, int]),
        ] {
            f.tracepoint_args.insert(tp.into(), args);
        }
    }

    #[test]
    fn io_tracepoints_whose_prototype_fits_are_planned_raw_and_shown() {
        let mut f = pvm_host();
        with_io_prototypes(&mut f);
        for pref in [HookPref::Auto, HookPref::Tracepoint] {
            let p = plan(&f, pref).unwrap();
            assert_eq!(
                p.raw_tracepoints,
                ["kvm/kvm_userspace_exit", "kvm/kvm_pio", "kvm/kvm_mmio"]
            );
            assert!(p.btf_tracepoints.is_empty());
            assert!(
                p.tracepoint_notes
                    .iter()
                    .any(|n| n.starts_with("kvm/kvm_pio: raw tracepoint (raw_kvm_pio: ")),
                "{:?}",
                p.tracepoint_notes
            );
            assert!(p.tracepoint_notes.contains(
                &"syscalls/sys_enter_ioctl: classic tracepoint (no tp_btf or raw program for it)"
                    .to_string()
            ));
        }
    }

    #[test]
    fn a_changed_or_missing_prototype_keeps_the_classic_tracepoint_and_says_why() {
        let mut f = pvm_host();
        with_io_prototypes(&mut f);
        // An older kvm_mmio(u64 gpa, ...) would be misread by position.
        f.tracepoint_args
            .insert("kvm/kvm_mmio".into(), vec![Arg::Int(8), Arg::Int(4)]);
        f.tracepoint_args.remove("kvm/kvm_userspace_exit");
        let p = plan(&f, HookPref::Auto).unwrap();
        assert_eq!(p.raw_tracepoints, ["kvm/kvm_pio"]);
        let note = |tp: &str| {
            p.tracepoint_notes
                .iter()
                .find(|n| n.starts_with(tp))
                .cloned()
                .unwrap_or_default()
        };
        assert!(
            note("kvm/kvm_mmio").starts_with("kvm/kvm_mmio: classic tracepoint (raw: btf_trace_kvm_mmio has arguments [Int(8), Int(4)], raw_kvm_mmio reads"),
            "{}",
            note("kvm/kvm_mmio")
        );
        assert_eq!(
            note("kvm/kvm_userspace_exit"),
            "kvm/kvm_userspace_exit: classic tracepoint (raw: no btf_trace type in vmlinux or KVM module BTF)"
        );
    }

    #[test]
    fn a_raw_tracepoint_the_kernel_refuses_is_planned_classic_again() {
        let mut f = pvm_host();
        with_io_prototypes(&mut f);
        f.refused.insert(
            "raw_kvm_pio".into(),
            "Invalid argument (os error 22)".into(),
        );
        let p = plan(&f, HookPref::Auto).unwrap();
        assert_eq!(
            p.raw_tracepoints,
            ["kvm/kvm_userspace_exit", "kvm/kvm_mmio"]
        );
        let pio: Vec<_> = p
            .tracepoint_notes
            .iter()
            .filter(|n| n.starts_with("kvm/kvm_pio:"))
            .collect();
        assert_eq!(
            pio,
            ["kvm/kvm_pio: classic tracepoint (raw: refused by the kernel (Invalid argument (os error 22)))"]
        );
    }

    /// 6.12's verifier refused the tp_btf `kvm_exit` program where the vendor run's fexit does
    /// not read the reason (refused too, here): `kvm_exit` is then a classic tracepoint, and
    /// nothing else changes.
    #[test]
    fn a_refused_tp_btf_falls_back_to_the_classic_tracepoint_alone() {
        let mut f = svm_modules_with_btf();
        f.refused
            .insert("fx_run_reason".into(), "Permission denied".into());
        let before = plan(&f, HookPref::Auto).unwrap();
        assert!(!before.reason_at_vendor_return);
        assert_eq!(before.btf_tracepoints, ["kvm/kvm_exit"]);
        f.refused
            .insert("tpb_kvm_exit".into(), "Permission denied".into());
        let p = plan(&f, HookPref::Auto).unwrap();
        assert!(p.btf_tracepoints.is_empty());
        assert!(p.tracepoints.iter().any(|t| t == "kvm/kvm_exit"));
        assert!(
            p.tracepoint_notes.iter().any(|n| n
                == "kvm/kvm_exit: classic tracepoint (tp_btf: refused by the kernel (Permission denied))"),
            "{:?}",
            p.tracepoint_notes
        );
        assert_eq!(p.stages, before.stages);
        assert_eq!(p.boundary, before.boundary);
    }

    /// On 6.12 the tp_btf `kvm_exit` program is refused, but the vendor run's fexit reads the
    /// reason anyway (it needs the layout, not that program): still no `kvm_exit` program.
    /// When the fexit itself is refused, the plain fexit and tp_btf `kvm_exit` come back, and
    /// KVM_RUN's entry goes back to `sys_enter_ioctl` with it.
    #[test]
    fn the_reason_fexit_does_not_need_the_tp_btf_program_and_falls_back_when_refused() {
        let mut f = svm_modules_with_btf();
        with_btf(&mut f, &[("kvm_arch_vcpu_ioctl_run", Some("kvm"))]);
        f.refused
            .insert("tpb_kvm_exit".into(), "R3 pointer arithmetic".into());
        let p = plan(&f, HookPref::Auto).unwrap();
        assert!(p.reason_at_vendor_return && p.run_entry_fentry);
        assert!(!p.tracepoints.iter().any(|t| t == "kvm/kvm_exit"));
        f.refused.remove("tpb_kvm_exit");
        f.refused
            .insert("fx_run_reason".into(), "Permission denied".into());
        let p = plan(&f, HookPref::Auto).unwrap();
        assert!(!p.reason_at_vendor_return && !p.run_entry_fentry);
        assert_eq!(p.btf_tracepoints, ["kvm/kvm_exit"]);
        assert!(p
            .tracepoints
            .iter()
            .any(|t| t == "syscalls/sys_enter_ioctl"));
        assert_eq!(stage(&p, Stage::VendorRun).mode, Mode::Fentry);
        // The ioctl fentry alone refused: the reason still comes from the fexit.
        f.refused.remove("fx_run_reason");
        f.refused.insert("fe_kvm_run".into(), "EINVAL".into());
        let p = plan(&f, HookPref::Auto).unwrap();
        assert!(p.reason_at_vendor_return && !p.run_entry_fentry);
        assert!(p
            .tracepoints
            .iter()
            .any(|t| t == "syscalls/sys_enter_ioctl"));
    }

    /// One refused fentry program moves its stage alone to kprobes; `--hooks fentry` then
    /// fails, saying why.
    #[test]
    fn a_refused_fentry_falls_back_to_kprobes_for_that_stage_alone() {
        let mut f = svm_modules_with_btf();
        f.refused
            .insert("fx_vendor_run".into(), "Operation not permitted".into());
        let p = plan(&f, HookPref::Auto).unwrap();
        let vr = stage(&p, Stage::VendorRun);
        assert_eq!(vr.mode, Mode::Kprobe);
        assert_eq!(
            vr.rejected,
            ["fentry: refused by the kernel (Operation not permitted)"]
        );
        assert_eq!(stage(&p, Stage::Handler).mode, Mode::Fentry);
        assert_eq!(stage(&p, Stage::FastPio).mode, Mode::Fentry);
        assert_eq!(p.boundary, boundary::VENDOR_RUN);
        let err = plan(&f, HookPref::Fentry).unwrap_err().to_string();
        assert_eq!(
            err,
            "--hooks fentry is impossible here: fentry: refused by the kernel (Operation not permitted)"
        );
        // With kprobes refused too, the stage is timed by tracepoints (kvm_entry/kvm_exit).
        f.refused.insert("kp_vendor_run".into(), "EINVAL".into());
        let p = plan(&f, HookPref::Auto).unwrap();
        assert_eq!(stage(&p, Stage::VendorRun).mode, Mode::Tracepoint);
        assert_eq!(p.boundary, boundary::KVM_ENTRY);
    }

    #[test]
    fn notrace_functions_are_rejected_by_name() {
        let mut f = svm_modules();
        f.traceable = Some(["svm_vcpu_run", "kvm_fast_pio"].map(String::from).into());
        let p = plan(&f, HookPref::Auto).unwrap();
        let h = stage(&p, Stage::Handler);
        assert_eq!(h.mode, Mode::Unavailable);
        assert!(h.rejected[0].contains("notrace"), "{:?}", h.rejected);
    }

    #[test]
    fn a_kernel_without_kvm_tracepoints_or_backend_is_refused() {
        let mut f = svm_modules();
        f.tracepoints.remove("kvm/kvm_pio");
        assert!(plan(&f, HookPref::Auto)
            .unwrap_err()
            .to_string()
            .contains("kvm/kvm_pio is missing"));
        let none = facts(&[]);
        assert!(plan(&none, HookPref::Auto)
            .unwrap_err()
            .to_string()
            .contains("no KVM backend"));
    }
}
