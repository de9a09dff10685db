//! Which KVM functions the running kernel lets a tracer hook, and how (`kvmprof funcs`).
//!
//! A function of KVM's C source may be hookable by fentry/fexit (it has a BTF entry and an
//! ftrace location), only by a kprobe (no BTF, or `notrace`), only through a compiler clone
//! (`name.isra.0`, `name.constprop.0`: the original was specialised away), or not at all
//! (inlined into every caller, or not built into this kernel). Which one depends on the
//! kernel's build, so it is read off the running kernel: /proc/kallsyms, BTF and
//! `available_filter_functions`.
use std::{
    collections::{HashMap, HashSet},
    path::Path,
};

use anyhow::{bail, Result};
use serde::Serialize;

use crate::host::btf::{KernelBtf, KIND_FUNC, KVM_BTF_MODULES, SYSFS_BTF};
use crate::host::kernel::{text_symbols, TRACEFS};

/// The catalogue shipped with the binary: the functions of KVM's `arch/x86/kvm/x86.c`, one
/// per line as `name : metrics… ：label` (label 1 marks the instruction emulator's entry
/// points, `x86_decode_emulated_instruction` and `init_emulate_ctxt`).
pub const BUILTIN: &str = include_str!("../../catalogue/kvm_x86_funcs.txt");

/// One function of a catalogue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub name: String,
    /// The catalogue's 0/1 label, where it has one.
    pub label: Option<u8>,
}

/// Reads a catalogue: one function per line, its name first, then anything after ` : `
/// (the built-in format) or whitespace; the last field after a full-width colon `：` is a
/// 0/1 label. Blank lines and `#` comments are skipped. Errors name the line.
pub fn parse_catalogue(text: &str) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name = line
            .split(|c: char| c.is_whitespace() || c == ':' || c == '：')
            .next()
            .unwrap_or_default();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            bail!(
                "line {}: '{}' is not a function name",
                i + 1,
                name.chars().take(40).collect::<String>()
            );
        }
        let label = line
            .rsplit_once('：')
            .and_then(|(_, l)| l.trim().parse::<u8>().ok());
        if seen.insert(name.to_string()) {
            out.push(Entry {
                name: name.to_string(),
                label,
            });
        }
    }
    if out.is_empty() {
        bail!("no function names in it");
    }
    Ok(out)
}

/// The running kernel's lists, read: /proc/kallsyms (needed), `available_filter_functions`
/// and the BTF of vmlinux and the KVM modules (each said in `unread` when it could not be).
pub fn read_running() -> Result<(Kernel, Vec<String>)> {
    let kallsyms = std::fs::read_to_string("/proc/kallsyms")
        .map_err(|e| anyhow::anyhow!("cannot read /proc/kallsyms: {e}"))?;
    let mut unread = Vec::new();
    let ftrace_list = Path::new(TRACEFS).join("available_filter_functions");
    let traceable = std::fs::read_to_string(&ftrace_list)
        .map_err(|e| {
            unread.push(format!(
                "{}: {e} (notrace not checked)",
                ftrace_list.display()
            ))
        })
        .ok();
    let btf = KernelBtf::read(Path::new(SYSFS_BTF), KVM_BTF_MODULES)
        .map_err(|e| unread.push(format!("BTF: {e:#} (fentry not judged)")))
        .ok();
    Ok((Kernel::new(&kallsyms, traceable.as_deref(), btf), unread))
}

/// How a function can be hooked on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    /// fentry/fexit (BTF entry, and traceable or not known not to be), or a kprobe.
    Fentry,
    /// A kprobe/kretprobe on the symbol only.
    Kprobe,
    /// Only a compiler clone has a symbol: a kprobe on it (its arguments may differ).
    Clone,
    /// No symbol: inlined into every caller, or not built into this kernel.
    None,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Fentry => "fentry",
            Hook::Kprobe => "kprobe",
            Hook::Clone => "clone",
            Hook::None => "none",
        }
    }
}

/// What the running kernel says about one catalogue function.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub name: String,
    pub label: Option<u8>,
    pub hook: Hook,
    /// Where its BTF entry is: `vmlinux` or a module's name.
    pub btf: Option<String>,
    /// In /proc/kallsyms: `vmlinux` or the module it lives in.
    pub symbol: Option<String>,
    /// `t` in kallsyms: static to its source file.
    pub is_static: bool,
    /// In `available_filter_functions` (`None`: the list could not be read).
    pub ftrace: Option<bool>,
    /// The compiler clones that have symbols (`name.isra.0`, …).
    pub clones: Vec<String>,
    /// Why, in a few words.
    pub why: String,
}

/// What the kernel exposes about its functions, read once.
pub struct Kernel {
    /// name → (global, module).
    symbols: HashMap<String, (bool, Option<String>)>,
    /// Base name → its clones' names.
    clones: HashMap<String, Vec<String>>,
    traceable: Option<HashSet<String>>,
    btf: Option<KernelBtf>,
    fentry: Option<Result<(), String>>,
    kprobes: bool,
}

impl Kernel {
    /// `kallsyms`: the text of /proc/kallsyms; `traceable`: of `available_filter_functions`
    /// when readable; `btf`: vmlinux and the KVM modules' BTF when readable. fentry is taken
    /// as untried and kprobes as present until [`Kernel::allowing`] says otherwise.
    pub fn new(kallsyms: &str, traceable: Option<&str>, btf: Option<KernelBtf>) -> Kernel {
        let mut symbols = HashMap::new();
        let mut clones: HashMap<String, Vec<String>> = HashMap::new();
        for t in text_symbols(kallsyms) {
            match t.name.split_once('.') {
                // `.cold` parts are a function's unlikely branches, not a callable clone.
                Some((base, suffix)) if !suffix.starts_with("cold") => {
                    let list = clones.entry(base.to_string()).or_default();
                    if !list.iter().any(|c| c == t.name) {
                        list.push(t.name.to_string());
                    }
                }
                Some(_) => {}
                // A name in a KVM module and in vmlinux (`sync_regs`) is the module's here:
                // the catalogue lists KVM's functions.
                None => {
                    let kvm = |m: Option<&str>| m.is_some_and(|m| KVM_BTF_MODULES.contains(&m));
                    let keep =
                        symbols
                            .get(t.name)
                            .is_some_and(|(_, m): &(bool, Option<String>)| {
                                kvm(m.as_deref()) || !kvm(t.module)
                            });
                    if !keep {
                        symbols
                            .insert(t.name.to_string(), (t.global, t.module.map(str::to_string)));
                    }
                }
            }
        }
        let traceable = traceable.map(|t| {
            t.lines()
                .filter_map(|l| l.split_whitespace().next())
                .map(str::to_string)
                .collect()
        });
        Kernel {
            symbols,
            clones,
            traceable,
            btf,
            fentry: None,
            kprobes: true,
        }
    }

    /// vmlinux's and the KVM modules' BTF, where it could be read.
    pub fn btf(&self) -> Option<&KernelBtf> {
        self.btf.as_ref()
    }

    /// Whether KVM is in this kernel at all (built in or its module loaded).
    pub fn has_kvm(&self) -> bool {
        self.symbols.contains_key("kvm_arch_vcpu_ioctl_run")
    }

    /// What this kernel allows beyond what its files say: whether an fentry program loaded
    /// (`None`: not tried) and whether kprobes exist.
    pub fn allowing(mut self, fentry: Option<Result<(), String>>, kprobes: bool) -> Kernel {
        self.fentry = fentry;
        self.kprobes = kprobes;
        self
    }

    pub fn judge(&self, e: &Entry) -> Verdict {
        let symbol = self.symbols.get(&e.name);
        // In the BTF of the module the symbol is in, where that module has BTF.
        let btf = self.btf.as_ref().and_then(|b| {
            let module = symbol.and_then(|(_, m)| m.as_deref());
            match module.and_then(|m| b.modules.iter().find(|(n, _)| n == m)) {
                Some((m, own)) => own.find(&e.name, KIND_FUNC).map(|_| m.clone()),
                None => b
                    .function(&e.name)
                    .map(|t| t.module.unwrap_or_else(|| "vmlinux".to_string())),
            }
        });
        let ftrace = self.traceable.as_ref().map(|t| t.contains(&e.name));
        let clones = self.clones.get(&e.name).cloned().unwrap_or_default();
        let fentry_refused = matches!(self.fentry, Some(Err(_)));
        let kprobe = |why: &str| {
            if self.kprobes {
                (Hook::Kprobe, why.to_string())
            } else {
                (Hook::None, format!("{why}, and no kprobes"))
            }
        };
        let (hook, why) = match (symbol, &btf, ftrace) {
            (Some(_), Some(_), Some(false)) => kprobe("notrace: no ftrace location for fentry"),
            (Some(_), None, _) => kprobe("no BTF entry, which fentry needs"),
            (Some(_), Some(_), _) if fentry_refused => kprobe("fentry refused on this kernel"),
            (Some(_), Some(_), Some(true)) => {
                (Hook::Fentry, "BTF entry and ftrace location".into())
            }
            (Some(_), Some(_), None) => (
                Hook::Fentry,
                "BTF entry (ftrace's list unreadable: notrace unchecked)".into(),
            ),
            (None, _, _) if !clones.is_empty() => {
                if self.kprobes {
                    (Hook::Clone, "only compiler clones have symbols".into())
                } else {
                    (
                        Hook::None,
                        "only compiler clones have symbols, and no kprobes".into(),
                    )
                }
            }
            (None, _, _) => (Hook::None, "no symbol: inlined, or not built".into()),
        };
        Verdict {
            name: e.name.clone(),
            label: e.label,
            hook,
            btf,
            symbol: symbol.map(|(_, m)| m.clone().unwrap_or_else(|| "vmlinux".to_string())),
            is_static: symbol.is_some_and(|(global, _)| !global),
            ftrace,
            clones,
            why,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_catalogue_holds_311_functions_two_labelled() {
        let c = parse_catalogue(BUILTIN).expect("parses");
        assert_eq!(c.len(), 311);
        let labelled: Vec<&str> = c
            .iter()
            .filter(|e| e.label == Some(1))
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(
            labelled,
            ["x86_decode_emulated_instruction", "init_emulate_ctxt"]
        );
    }

    #[test]
    fn a_catalogue_of_bare_names_with_comments_reads() {
        let c = parse_catalogue("# mine\nkvm_emulate_halt\n\n  handle_ud  extra\n").unwrap();
        let names: Vec<&str> = c.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["kvm_emulate_halt", "handle_ud"]);
        assert_eq!(
            parse_catalogue("ok\nnot-a-name\n").unwrap_err().to_string(),
            "line 2: 'not-a-name' is not a function name"
        );
        assert!(parse_catalogue("# nothing\n").is_err());
    }

    #[test]
    fn each_verdict_follows_from_symbols_ftrace_and_btf() {
        let kallsyms = "ffff T kvm_arch_vcpu_ioctl_run\tkvm\n\
                        ffff T sync_regs\n\
                        ffff t sync_regs\t[kvm]\n\
                        ffff t handle_ud\t[kvm]\n\
                        ffff t emulator_pio_in.isra.0\t[kvm]\n\
                        ffff t emulator_pio_in.cold\t[kvm]\n\
                        ffff t notraced\n";
        let k = Kernel::new(
            kallsyms,
            Some("kvm_arch_vcpu_ioctl_run [kvm]\nhandle_ud [kvm]\n"),
            None,
        );
        assert!(k.has_kvm());
        let v = |n: &str| {
            k.judge(&Entry {
                name: n.into(),
                label: None,
            })
        };
        // No BTF read: a kprobe, whatever ftrace says.
        assert_eq!(v("handle_ud").hook, Hook::Kprobe);
        assert!(v("handle_ud").is_static);
        // KVM's own, not vmlinux's function of the same name.
        assert_eq!(v("sync_regs").symbol.as_deref(), Some("kvm"));
        assert_eq!(v("handle_ud").symbol.as_deref(), Some("kvm"));
        assert_eq!(v("notraced").hook, Hook::Kprobe);
        assert_eq!(v("notraced").why, "no BTF entry, which fentry needs");
        let pio = v("emulator_pio_in");
        assert_eq!(
            (pio.hook, pio.clones),
            (Hook::Clone, vec!["emulator_pio_in.isra.0".into()])
        );
        assert_eq!(v("inlined_away").hook, Hook::None);
        // With BTF: fentry where ftrace has a location, a kprobe where it is notrace.
        let kallsyms = "ffff T kvm_fast_pio\nffff t svm_vcpu_run\t[kvm_amd]\n";
        let k = Kernel::new(
            kallsyms,
            Some("kvm_fast_pio\n"),
            Some(crate::host::btf::tests::kernel()),
        );
        let v = |n: &str| {
            k.judge(&Entry {
                name: n.into(),
                label: None,
            })
        };
        let fast = v("kvm_fast_pio");
        assert_eq!(
            (fast.hook, fast.btf.as_deref()),
            (Hook::Fentry, Some("vmlinux"))
        );
        let run = v("svm_vcpu_run");
        assert_eq!(
            (run.hook, run.btf.as_deref()),
            (Hook::Kprobe, Some("kvm_amd"))
        );
        assert_eq!(
            (run.ftrace, run.why.as_str()),
            (Some(false), "notrace: no ftrace location for fentry")
        );
        // Where the kernel refuses fentry and has no kprobes (this project's PVM host),
        // nothing can hook them, and the verdict says why.
        let k = Kernel::new(
            kallsyms,
            Some("kvm_fast_pio\n"),
            Some(crate::host::btf::tests::kernel()),
        )
        .allowing(Some(Err("Operation not permitted".into())), false);
        let fast = k.judge(&Entry {
            name: "kvm_fast_pio".into(),
            label: None,
        });
        assert_eq!(fast.hook, Hook::None);
        assert_eq!(fast.why, "fentry refused on this kernel, and no kprobes");
    }
}
