//! What the running kernel offers: the facts the attach planner decides from. Reading them
//! needs no privileges beyond reading /proc and /sys; nothing here loads BPF.
use std::{collections::HashMap, fs, path::Path};

use anyhow::{bail, Context, Result};

use kvmprof_common::names::tp;

use crate::{
    data::model::Vendor,
    host::btf::{self, ExitLayout, KVM_BTF_MODULES},
};

pub const TRACEFS: &str = "/sys/kernel/tracing";
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
/// Present when the kernel has CONFIG_KPROBES with the perf kprobe PMU aya attaches through.
pub const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe/type";

/// A text symbol from /proc/kallsyms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    /// Module the symbol lives in, `None` for built-in code.
    pub module: Option<String>,
}

/// Everything the planner needs to know about this kernel.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub release: String,
    /// Text symbols by name (first occurrence wins).
    pub kallsyms: HashMap<String, Symbol>,
    /// Functions with a BTF entry, in vmlinux or in a KVM module's BTF: what fentry/fexit
    /// can target, with where the kernel finds them.
    pub btf_funcs: HashMap<String, btf::Target>,
    /// Tracepoints (`category/name`) with a `btf_trace_<name>` type: what tp_btf can target.
    pub btf_tracepoints: HashMap<String, btf::Target>,
    /// The argument shapes of those tracepoints' prototypes: what a raw tracepoint program,
    /// which reads its arguments by position, needs to match.
    pub tracepoint_args: HashMap<String, Vec<btf::Arg>>,
    /// Where a tp_btf `kvm_exit` program finds the exit reason, or why it cannot (`None`:
    /// not read).
    pub kvm_exit_layout: Option<Result<ExitLayout, String>>,
    /// How the programs find a vCPU's `kvm_run` from its fd (`Config::run_known`); `None`
    /// when a member is not in BTF.
    pub run_path: Option<btf::RunPath>,
    pub kprobes: bool,
    /// `Some(Err(why))` when loading an fentry program was refused; `None` when untried
    /// (only a load attempt tells: `btf::probe_trampoline`).
    pub fentry: Option<Result<(), String>>,
    /// Functions ftrace can hook, when the kernel lets us read the list.
    pub traceable: Option<std::collections::HashSet<String>>,
    /// Tracepoints that exist (`category/name`), with their field offsets.
    pub tracepoints: HashMap<String, HashMap<String, u32>>,
    /// Loaded KVM vendor modules or built-in backends.
    pub kvm_modules: Vec<String>,
    /// Programs (by name) the kernel refused when this recording loaded or attached them,
    /// with its answer: the planner then takes the next hook for that stage or tracepoint.
    pub refused: HashMap<String, String>,
    /// What the scheduler stages' hooks need (`sched.rs`).
    pub sched: super::sched::SchedFacts,
}

impl Facts {
    /// Detects the KVM backend in use from loaded modules and symbols (not CPU flags: PVM
    /// runs on CPUs that have neither vmx nor svm).
    pub fn vendor(&self) -> Vendor {
        let has = |s: &str| self.kallsyms.contains_key(s);
        if self.kvm_modules.iter().any(|m| m == "kvm_amd") || has("svm_vcpu_run") {
            Vendor::Svm
        } else if self.kvm_modules.iter().any(|m| m == "kvm_intel") || has("vmx_vcpu_run") {
            Vendor::Vmx
        } else if has("pvm_vcpu_run") {
            Vendor::Pvm
        } else {
            Vendor::Unknown
        }
    }

    /// Reads the facts of the running kernel; `funcs` are the functions the planner may hook
    /// (looked up in BTF one by one). Fails only when a prerequisite of every mode is missing.
    pub fn gather(funcs: &[&str]) -> Result<Facts> {
        ensure_tracefs()?;
        let release = fs::read_to_string("/proc/sys/kernel/osrelease")
            .context("read /proc/sys/kernel/osrelease")?
            .trim()
            .to_string();
        let kallsyms = fs::read_to_string("/proc/kallsyms").context("read /proc/kallsyms")?;
        let mut tracepoints = HashMap::new();
        // task_newtask's fields too (`record -- CMD` follows children with it), the halt
        // tracepoints' (`data::halts`) and `--detail`'s.
        let more = [
            tp::TASK_NEWTASK,
            tp::KVM_VCPU_WAKEUP,
            tp::KVM_HALT_POLL_NS,
            tp::KVM_MSR,
            tp::KVM_CPUID,
            tp::KVM_HYPERCALL,
            tp::KVM_XEN_HYPERCALL,
            tp::KVM_HV_HYPERCALL,
            tp::KVM_PAGE_FAULT,
        ];
        for tp in tp::ALL.iter().chain(&more) {
            let path = Path::new(TRACEFS).join("events").join(tp).join("format");
            if let Ok(text) = fs::read_to_string(&path) {
                tracepoints.insert(tp.to_string(), parse_format(&text));
            }
        }
        let traceable = fs::read_to_string(Path::new(TRACEFS).join("available_filter_functions"))
            .ok()
            .map(|t| {
                t.lines()
                    .filter_map(|l| l.split_whitespace().next())
                    .map(str::to_string)
                    .collect()
            });
        if !Path::new(VMLINUX_BTF).exists() {
            bail!("no kernel BTF ({VMLINUX_BTF}): kvmprof needs CONFIG_DEBUG_INFO_BTF");
        }
        let kbtf = btf::KernelBtf::read(Path::new(btf::SYSFS_BTF), KVM_BTF_MODULES)?;
        let mut facts = Facts {
            release,
            kallsyms: parse_kallsyms(&kallsyms),
            btf_funcs: funcs
                .iter()
                .filter_map(|f| Some((f.to_string(), kbtf.function(f)?)))
                .collect(),
            btf_tracepoints: tp::ALL
                .iter()
                .filter_map(|tp| {
                    let (_, name) = tp.split_once('/')?;
                    Some((tp.to_string(), kbtf.tracepoint(name)?.0))
                })
                .collect(),
            tracepoint_args: tp::ALL
                .iter()
                .filter_map(|tp| {
                    let (_, name) = tp.split_once('/')?;
                    let (_, b) = kbtf.tracepoint(name)?;
                    Some((tp.to_string(), b.tracepoint_arg_shapes(name)?))
                })
                .collect(),
            kvm_exit_layout: None,
            run_path: btf::run_path(&kbtf),
            kprobes: Path::new(KPROBE_PMU).exists(),
            fentry: None,
            traceable,
            tracepoints,
            kvm_modules: ["kvm_intel", "kvm_amd"]
                .into_iter()
                .filter(|m| Path::new("/sys/module").join(m).exists())
                .map(str::to_string)
                .collect(),
            refused: HashMap::new(),
            sched: super::sched::facts(&kbtf),
        };
        facts.kvm_exit_layout = Some(btf::kvm_exit_layout(&kbtf, facts.vendor()));
        Ok(facts)
    }

    pub fn offset(&self, tracepoint: &str, field: &str) -> Result<u32> {
        self.tracepoints
            .get(tracepoint)
            .with_context(|| format!("tracepoint {tracepoint} does not exist on this kernel"))?
            .get(field)
            .copied()
            .with_context(|| format!("tracepoint {tracepoint} has no field {field}"))
    }
}

/// Mounts tracefs when it is not mounted yet (the tracepoint format files live there).
fn ensure_tracefs() -> Result<()> {
    if Path::new(TRACEFS).join("events").exists() {
        return Ok(());
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "tracefs", "nodev", TRACEFS])
        .status()
        .context("run mount for tracefs")?;
    if !status.success() || !Path::new(TRACEFS).join("events").exists() {
        bail!("tracefs is not mounted at {TRACEFS} and mounting it failed");
    }
    Ok(())
}

/// Text symbols (t/T) of /proc/kallsyms: `addr type name [module]`.
pub fn parse_kallsyms(text: &str) -> HashMap<String, Symbol> {
    let mut out = HashMap::new();
    for t in text_symbols(text) {
        out.entry(t.name.to_string()).or_insert(Symbol {
            module: t.module.map(str::to_string),
        });
    }
    out
}

/// One text symbol line of /proc/kallsyms.
pub struct TextSymbol<'a> {
    pub name: &'a str,
    /// `T` (global) rather than `t` (static to its file).
    pub global: bool,
    pub module: Option<&'a str>,
}

/// The text symbols of /proc/kallsyms text, in its order.
pub fn text_symbols(text: &str) -> impl Iterator<Item = TextSymbol<'_>> {
    text.lines().filter_map(|line| {
        let mut it = line.split_whitespace();
        let (_, ty, name) = (it.next()?, it.next()?, it.next()?);
        if !ty.eq_ignore_ascii_case("t") {
            return None;
        }
        let module = it
            .next()
            .map(|m| m.trim_start_matches('[').trim_end_matches(']'));
        Some(TextSymbol {
            name,
            global: ty == "T",
            module,
        })
    })
}

/// Field offsets of a tracepoint format file (`field:unsigned int port; offset:12; ...`).
pub fn parse_format(text: &str) -> HashMap<String, u32> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut parts = rest.split(';');
        let (Some(decl), Some(off)) = (parts.next(), parts.next()) else {
            continue;
        };
        let name = decl
            .split_whitespace()
            .last()
            .map(|n| n.split('[').next().unwrap_or(n))
            .unwrap_or_default();
        if let Some(v) = off
            .trim()
            .strip_prefix("offset:")
            .and_then(|v| v.parse().ok())
        {
            out.insert(name.to_string(), v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kallsyms_keeps_text_symbols_with_their_module() {
        let syms = parse_kallsyms(
            "ffffffff812ad830 T kvm_fast_pio\n\
             ffffffffc0a01000 t svm_vcpu_run\t[kvm_amd]\n\
             ffffffff82000000 D some_data\n",
        );
        assert_eq!(syms["kvm_fast_pio"].module, None);
        assert_eq!(syms["svm_vcpu_run"].module.as_deref(), Some("kvm_amd"));
        assert!(!syms.contains_key("some_data"));
    }

    #[test]
    fn format_offsets_come_from_the_file() {
        let f = "format:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
                 \tfield:unsigned int port;\toffset:12;\tsize:4;\tsigned:0;\n\
                 \tfield:char comm[16];\toffset:20;\tsize:16;\tsigned:0;\n";
        let o = parse_format(f);
        assert_eq!(o["port"], 12);
        assert_eq!(o["comm"], 20);
        assert_eq!(o["common_type"], 0);
    }
}
