//! `kvmprof funcs`: which functions of a catalogue the running kernel lets a tracer hook.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs::File,
    io::Read,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Result};
use serde::Serialize;

use crate::{
    cli::FuncsArgs,
    host::{
        btf,
        funcs::{self, Hook, Verdict},
        kernel::KPROBE_PMU,
    },
    sinks::report::Format,
    util::output,
};

/// A catalogue bigger than this is not a list of function names (`--catalogue /dev/zero`).
const CATALOGUE_LIMIT: u64 = 4 << 20;

/// Version of the JSON layout; bumped when a field changes meaning or goes away.
const SCHEMA_VERSION: u32 = 1;

#[derive(Serialize)]
struct Listing<'a> {
    schema: &'static str,
    schema_version: u32,
    kernel: &'a str,
    catalogue: &'a str,
    /// `allowed`, `refused (why)` or `not tried (why)`: whether an fentry program loaded.
    fentry: &'a str,
    kprobes: bool,
    /// Why the ftrace function list (notrace) or BTF could not be read, if so.
    unread: &'a [String],
    functions: &'a [Verdict],
}

pub fn command(a: &FuncsArgs) -> Result<()> {
    let (source, entries) = match &a.catalogue {
        None => (
            "built-in (KVM's arch/x86/kvm/x86.c)".to_string(),
            funcs::parse_catalogue(funcs::BUILTIN)?,
        ),
        Some(path) => {
            let text = read_catalogue(path)?;
            let entries =
                funcs::parse_catalogue(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
            (path.display().to_string(), entries)
        }
    };
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let (kernel, unread) = funcs::read_running()?;
    // Only a load tells whether fentry is allowed: one stub on KVM_RUN's function, as root.
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let fentry = kernel
        .btf()
        .and_then(|b| b.function("kvm_arch_vcpu_ioctl_run"))
        .filter(|_| root)
        .map(|t| btf::probe_trampoline(&t).map_err(|e| format!("{e:#}")));
    let kprobes = Path::new(KPROBE_PMU).exists();
    let fentry_said = match &fentry {
        None if !root => "not tried (needs root)".to_string(),
        None => "not tried (no BTF for kvm_arch_vcpu_ioctl_run)".to_string(),
        Some(Ok(())) => "allowed".to_string(),
        Some(Err(e)) => format!("refused ({e})"),
    };
    let allowed = format!(
        "fentry: {fentry_said}   kprobes: {}",
        if kprobes { "available" } else { "absent" }
    );
    let kernel = kernel.allowing(fentry, kprobes);
    if !kernel.has_kvm() {
        bail!(
            "KVM is not in this kernel (no kvm_arch_vcpu_ioctl_run in /proc/kallsyms): load \
             the kvm module and its vendor module first"
        );
    }
    let verdicts: Vec<Verdict> = entries.iter().map(|e| kernel.judge(e)).collect();
    let text = match a.format {
        Format::Table => render(&release, &source, &allowed, &unread, &verdicts),
        Format::Json => {
            serde_json::to_string_pretty(&Listing {
                schema: "kvmprof-funcs",
                schema_version: SCHEMA_VERSION,
                kernel: &release,
                catalogue: &source,
                fentry: &fentry_said,
                kprobes,
                unread: &unread,
                functions: &verdicts,
            })? + "\n"
        }
    };
    output::stdout(text.as_bytes()).map(drop)
}

/// The catalogue's text, bounded (a device can be endless) and UTF-8; errors name the file.
fn read_catalogue(path: &PathBuf) -> Result<String> {
    let fail = |e: std::io::Error| anyhow!("{}: cannot read: {e}", path.display());
    let mut bytes = Vec::new();
    File::open(path)
        .map_err(fail)?
        .take(CATALOGUE_LIMIT + 1)
        .read_to_end(&mut bytes)
        .map_err(fail)?;
    if bytes.len() as u64 > CATALOGUE_LIMIT {
        bail!(
            "{}: over {} MiB, not a list of function names",
            path.display(),
            CATALOGUE_LIMIT >> 20
        );
    }
    String::from_utf8(bytes).map_err(|_| anyhow!("{}: not UTF-8 text", path.display()))
}

fn render(
    release: &str,
    source: &str,
    allowed: &str,
    unread: &[String],
    verdicts: &[Verdict],
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "kernel {release}   catalogue: {source}, {} functions",
        verdicts.len()
    );
    let _ = writeln!(s, "{allowed}");
    for u in unread {
        let _ = writeln!(s, "unread: {u}");
    }
    let width = verdicts
        .iter()
        .map(|v| v.name.len() + 2)
        .max()
        .unwrap_or(8)
        .max(8);
    let _ = writeln!(
        s,
        "\n{:<width$} {:<7} {:<9} {:<18} WHY",
        "FUNCTION", "HOOK", "BTF", "SYMBOL"
    );
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for v in verdicts {
        *counts.entry(v.hook.name()).or_default() += 1;
        let name = if v.label == Some(1) {
            format!("{} *", v.name)
        } else {
            v.name.clone()
        };
        let symbol = match &v.symbol {
            Some(m) if v.is_static => format!("{m} (static)"),
            Some(m) => m.clone(),
            None => "-".into(),
        };
        let why = if v.hook == Hook::Clone {
            format!("{}: {}", v.why, v.clones.join(", "))
        } else {
            v.why.clone()
        };
        let _ = writeln!(
            s,
            "{name:<width$} {:<7} {:<9} {symbol:<18} {why}",
            v.hook.name(),
            v.btf.as_deref().unwrap_or("-"),
        );
    }
    let summary: Vec<String> = [Hook::Fentry, Hook::Kprobe, Hook::Clone, Hook::None]
        .iter()
        .map(|h| {
            format!(
                "{} {}",
                counts.get(h.name()).copied().unwrap_or(0),
                h.name()
            )
        })
        .collect();
    let _ = writeln!(s, "\n{} functions: {}", verdicts.len(), summary.join(", "));
    if verdicts.iter().any(|v| v.label == Some(1)) {
        let _ = writeln!(s, "* labelled 1 in the catalogue");
    }
    s
}
