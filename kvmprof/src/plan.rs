//! The attach planner: from the facts of the running kernel (`kernel::Facts`), decide per
//! stage which symbol to hook and how, and say why the other ways were rejected. Pure: no
//! I/O, so every kernel shape is unit-tested without root.
use anyhow::{bail, Result};
use kvmprof_common::boundary;
use serde::{Deserialize, Serialize};

use crate::{kernel::Facts, model::Stage, model::Vendor, vendor};

/// How a stage is timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// BPF trampoline on a vmlinux BTF function (cheapest).
    Fentry,
    /// kprobe/kretprobe by kallsyms name (works for module code).
    Kprobe,
    /// Derived from tracepoints (KVM_RUN ioctl, `kvm:*`).
    Tracepoint,
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

/// `--hooks`: let the planner choose, or force one mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
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
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub vendor: Vendor,
    pub stages: Vec<StagePlan>,
    /// `kvmprof_common::boundary` value: what starts a cycle in the kernel.
    pub boundary: u32,
    /// Tracepoints to attach (`category/name`).
    pub tracepoints: Vec<String>,
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

/// Detects the KVM backend in use from loaded modules and symbols (not CPU flags: PVM
/// runs on CPUs that have neither vmx nor svm).
pub fn detect_vendor(f: &Facts) -> Vendor {
    let has = |s: &str| f.kallsyms.contains_key(s);
    if f.kvm_modules.iter().any(|m| m == "kvm_amd") || has("svm_vcpu_run") {
        Vendor::Svm
    } else if f.kvm_modules.iter().any(|m| m == "kvm_intel") || has("vmx_vcpu_run") {
        Vendor::Vmx
    } else if has("pvm_vcpu_run") {
        Vendor::Pvm
    } else {
        Vendor::Unknown
    }
}

/// Every function the planner may consider, for `Facts::gather`.
pub fn candidate_functions() -> Vec<&'static str> {
    let mut v: Vec<&str> = vec![vendor::ENTER_GUEST, vendor::FAST_PIO];
    for vd in [Vendor::Vmx, Vendor::Svm, Vendor::Pvm] {
        let h = vendor::hooks(vd);
        v.extend(h.vendor_run.iter().chain(h.handler));
    }
    v
}

/// Plans every stage for this kernel.
pub fn plan(f: &Facts, pref: HookPref) -> Result<Plan> {
    for tp in [
        "syscalls/sys_enter_ioctl",
        "kvm/kvm_userspace_exit",
        "kvm/kvm_pio",
        "kvm/kvm_mmio",
    ] {
        if !f.tracepoints.contains_key(tp) {
            bail!("tracepoint {tp} is missing: this kernel has no KVM tracing (CONFIG_KVM, CONFIG_FTRACE_SYSCALLS)");
        }
    }
    let vendor = detect_vendor(f);
    if vendor == Vendor::Unknown {
        bail!("no KVM backend found (no kvm_intel, kvm_amd or PVM symbols): is KVM loaded?");
    }
    let hooks = vendor::hooks(vendor);
    let kvm_exit_usable = hooks.kvm_exit_fires && f.tracepoints.contains_key("kvm/kvm_exit");
    let kvm_entry_usable = kvm_exit_usable && f.tracepoints.contains_key("kvm/kvm_entry");

    let funcs: [(Stage, &[&str]); 4] = [
        (Stage::Cycle, &[vendor::ENTER_GUEST]),
        (Stage::VendorRun, hooks.vendor_run),
        (Stage::Handler, hooks.handler),
        (Stage::FastPio, &[vendor::FAST_PIO]),
    ];
    let mut stages = Vec::new();
    for (stage, symbols) in funcs {
        stages.push(plan_function(f, pref, stage, symbols, kvm_entry_usable));
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
    });
    stages.push(StagePlan {
        stage: Stage::Vmm,
        symbol: "kvm:kvm_userspace_exit .. sys_enter_ioctl(KVM_RUN)".into(),
        mode: Mode::Tracepoint,
        rejected: vec![],
    });

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
    let mut tracepoints: Vec<String> = [
        "syscalls/sys_enter_ioctl",
        "kvm/kvm_userspace_exit",
        "kvm/kvm_pio",
        "kvm/kvm_mmio",
    ]
    .map(String::from)
    .to_vec();
    if kvm_exit_usable {
        tracepoints.push("kvm/kvm_exit".into());
    }
    if boundary == boundary::KVM_ENTRY {
        tracepoints.push("kvm/kvm_entry".into());
    }
    Ok(Plan {
        vendor,
        stages,
        boundary,
        tracepoints,
    })
}

/// Plans one function-bounded stage: the first of `symbols` present on this kernel, then
/// the best mode allowed by `pref`.
fn plan_function(
    f: &Facts,
    pref: HookPref,
    stage: Stage,
    symbols: &[&str],
    kvm_entry: bool,
) -> StagePlan {
    let mut rejected = Vec::new();
    let present = symbols.iter().find(|s| f.kallsyms.contains_key(**s));
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

    // fentry: vmlinux BTF only (aya sets no attach_btf_obj_fd, so module functions are out).
    let module = f.kallsyms.get(&sym).and_then(|s| s.module.clone());
    let fentry_why = if !want(HookPref::Fentry) {
        Some("fentry: not requested (--hooks)".to_string())
    } else if let Some(m) = &module {
        Some(format!(
            "fentry: {sym} is in module {m}; aya can only fentry vmlinux functions"
        ))
    } else if !f.btf_funcs.contains(&sym) {
        Some(format!("fentry: {sym} has no vmlinux BTF entry"))
    } else if let Some(Err(e)) = &f.fentry {
        Some(format!("fentry: refused by the kernel ({e})"))
    } else {
        None
    };
    match fentry_why {
        None => {
            return StagePlan {
                stage,
                symbol: sym,
                mode: Mode::Fentry,
                rejected,
            }
        }
        Some(w) => rejected.push(w),
    }
    let kprobe_why = if !want(HookPref::Kprobe) {
        Some("kprobe: not requested (--hooks)".to_string())
    } else if !f.kprobes {
        Some("kprobe: kprobes are not available (no CONFIG_KPROBES / kprobe PMU)".to_string())
    } else {
        None
    };
    match kprobe_why {
        None => StagePlan {
            stage,
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
    StagePlan {
        stage,
        symbol,
        mode,
        rejected,
    }
}
