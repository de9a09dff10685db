//! `record --func`: each function named is judged as `kvmprof funcs` judges it and hooked
//! with the programs of its slot (`kvmprof_common::func::STEMS`): fentry/fexit where it has
//! a BTF entry, an ftrace location and the kernel allows trampolines (unless `--hooks
//! kprobe`), else a kprobe/kretprobe on its symbol or on the compiler clone standing for
//! it. A refused fentry falls back to the kprobe, and says so. At the end the kernel's
//! tallies are read into [`Funcs`].
use anyhow::{bail, Context, Result};
use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    programs::{FEntry, FExit},
    Ebpf,
};
use kvmprof_common::{
    func::{self, FuncKey, FuncTally},
    names::{hook, map},
};

use super::attach::{attach_fentry_fexit, attach_kprobes};
use crate::data::funcs::{FuncHook, Funcs};
use crate::host::{
    funcs::{Entry, Hook},
    kernel::Facts,
    plan::HookPref,
};

/// Hooks function `i` of `names` on each; returns how each was hooked. A function this kernel
/// cannot hook at all fails the recording in one line: the user asked for it by name.
pub fn attach(
    ebpf: &mut Ebpf,
    facts: &Facts,
    pref: HookPref,
    names: &[String],
) -> Result<Vec<FuncHook>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    if names.len() > func::MAX {
        bail!(
            "--func: at most {} functions at once ({} given)",
            func::MAX,
            names.len()
        );
    }
    if let Some(name) = names
        .iter()
        .enumerate()
        .find_map(|(i, n)| names[..i].contains(n).then_some(n))
    {
        bail!("--func {name} is given twice");
    }
    let (kernel, _) = crate::host::funcs::read_running()?;
    let kernel = kernel.allowing(facts.fentry.clone(), facts.kprobes);
    let mut hooks = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let v = kernel.judge(&Entry {
            name: name.clone(),
            label: None,
        });
        let stem = func::STEMS[i];
        let hooked = if v.hook == Hook::Fentry && pref != HookPref::Kprobe {
            let target = kernel.btf().and_then(|b| b.function(name));
            let programs = fentry_names(stem);
            let programs = programs.each_ref().map(String::as_str);
            match attach_fentry_fexit(ebpf, programs, name, target.as_ref()) {
                Ok(()) => Some(("fentry", name.clone())),
                Err(e) => {
                    eprintln!("kvmprof: warning: --func {name}: {e:#}; a kprobe instead");
                    unload_fentry(ebpf, stem);
                    None
                }
            }
        } else {
            None
        };
        let (mode, symbol) = match hooked {
            Some(h) => h,
            None => {
                let symbol = match v.hook {
                    Hook::Fentry | Hook::Kprobe => name.clone(),
                    Hook::Clone => v.clones.first().cloned().unwrap_or_else(|| name.clone()),
                    Hook::None => {
                        bail!("--func {name}: cannot be hooked on this kernel: {}", v.why)
                    }
                };
                if v.hook == Hook::Clone {
                    eprintln!(
                        "kvmprof: note: --func {name}: only its compiler clone {symbol} has a \
                         symbol; timing that"
                    );
                }
                attach_kprobes(ebpf, stem, &symbol)?;
                ("kprobe", symbol)
            }
        };
        hooks.push(FuncHook {
            name: name.clone(),
            mode: mode.to_owned(),
            symbol,
            ..FuncHook::default()
        });
    }
    Ok(hooks)
}

/// The fentry and fexit programs of function slot `stem`.
fn fentry_names(stem: &str) -> [String; 2] {
    [hook::FENTRY, hook::FEXIT].map(|prefix| format!("{prefix}{stem}"))
}

/// Takes back whichever of a function's fentry/fexit pair got attached before the other
/// was refused, so the kprobe that replaces them is its only hook.
fn unload_fentry(ebpf: &mut Ebpf, stem: &str) {
    let [fentry, fexit] = fentry_names(stem);
    if let Some(Ok(p)) = ebpf.program_mut(&fentry).map(<&mut FEntry>::try_from) {
        let _ = p.unload();
    }
    if let Some(Ok(p)) = ebpf.program_mut(&fexit).map(<&mut FExit>::try_from) {
        let _ = p.unload();
    }
}

/// The kernel's tallies, read once the programs are detached.
pub struct Reader {
    tallies: HashMap<MapData, FuncKey, FuncTally>,
    counts: PerCpuArray<MapData, u64>,
}

impl Reader {
    pub fn take(ebpf: &mut Ebpf) -> Result<Reader> {
        let mut map = |name: &str| ebpf.take_map(name).with_context(|| format!("{name} map"));
        Ok(Reader {
            tallies: HashMap::try_from(map(map::FUNCS)?)?,
            counts: PerCpuArray::try_from(map(map::FUNC_COUNTS)?)?,
        })
    }

    /// The functions `hooks` timed, laid out; `None` when none was asked for.
    pub fn funcs(&self, mut hooks: Vec<FuncHook>) -> Result<Option<Funcs>> {
        if hooks.is_empty() {
            return Ok(None);
        }
        let sum = |idx: u32| -> Result<u64> {
            let per_cpu = self.counts.get(&idx, 0).context("read FUNC_COUNTS")?;
            Ok(per_cpu.iter().sum())
        };
        for (i, h) in hooks.iter_mut().enumerate() {
            h.outside = sum(func::OUTSIDE + i as u32)?;
            h.folded = sum(func::FOLDED + i as u32)?;
        }
        let tallies = self
            .tallies
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .context("read FUNCS")?;
        Ok(Some(Funcs::from_kernel(hooks, &tallies)))
    }
}
