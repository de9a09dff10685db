//! The VM check of `kvmprof funcs`: every function of the built-in catalogue judged, each
//! verdict held to what the VM's kernel says itself — /proc/kallsyms (symbols and compiler
//! clones), `available_filter_functions` (notrace) and bpftool's dump of vmlinux's and the
//! KVM modules' BTF. Under Bochs (VMX) vmlinux is not dumped: a text dump of its 100k+ types
//! took minutes of that VM's clock (the check timed out on 6.12), and the SVM VM, which boots
//! the same kernel packages, holds kvmprof's vmlinux BTF facts to it.
use std::collections::BTreeSet;

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::checks::{Captured, Check, Notes, Vendor};

/// Functions the built-in catalogue holds (KVM's arch/x86/kvm/x86.c).
const CATALOGUE_LEN: usize = 311;

/// Prints `{"funcs": <kvmprof funcs --format json>, "syms": [...], "clones": [...],
/// "ftrace": [...], "btf": [...]}`: of the catalogue's names, those the kernel's own lists
/// hold (compiler clones by their full names).
pub fn script(vendor: Vendor) -> String {
    let d = "/run/kvmprof-funcs";
    let vmlinux = match vendor {
        Vendor::Svm => "bpftool btf dump file \"$b\"",
        Vendor::Vmx => ":",
    };
    format!(
        "mkdir -p {d}\n\
         \"$KVMPROF\" funcs --format json > {d}/funcs.json\n\
         sed -n 's/^      \"name\": \"\\(.*\\)\",$/\\1/p' {d}/funcs.json > {d}/names\n\
         awk '$2 == \"t\" || $2 == \"T\" {{ print $3 }}' /proc/kallsyms > {d}/syms\n\
         grep -Fxf {d}/names {d}/syms | sort -u > {d}/in_syms || true\n\
         awk 'NR == FNR {{ n[$0]; next }} {{ i = index($0, \".\"); if (i > 1 && (substr($0, 1, i - 1) in n) && substr($0, i + 1, 4) != \"cold\") print }}' {d}/names {d}/syms | sort -u > {d}/clones\n\
         cut -d' ' -f1 /sys/kernel/tracing/available_filter_functions | grep -Fxf {d}/names | sort -u > {d}/in_ftrace || true\n\
         for b in /sys/kernel/btf/*; do\n\
         \tcase ${{b##*/}} in\n\
         \tvmlinux) {vmlinux} ;;\n\
         \tkvm|kvm_amd|kvm_intel) bpftool -B /sys/kernel/btf/vmlinux btf dump file \"$b\" ;;\n\
         \tesac\n\
         done | sed -n \"s/^\\[[0-9]*\\] FUNC '\\([^']*\\)'.*/\\1/p\" | grep -Fxf {d}/names | sort -u > {d}/in_btf || true\n\
         list() {{ awk 'BEGIN {{ printf \"[\" }} {{ printf \"%s\\\"%s\\\"\", (NR > 1 ? \",\" : \"\"), $0 }} END {{ printf \"]\" }}' \"$1\"; }}\n\
         printf '{{\"funcs\": %s, \"syms\": %s, \"clones\": %s, \"ftrace\": %s, \"btf\": %s}}\\n' \
         \"$(cat {d}/funcs.json)\" \"$(list {d}/in_syms)\" \"$(list {d}/clones)\" \"$(list {d}/in_ftrace)\" \"$(list {d}/in_btf)\"\n"
    )
}

/// Every catalogue function has a verdict, and each verdict's facts (symbol, clones,
/// ftrace, BTF) and hook are what the kernel's own lists imply.
pub fn verify(check: &Check, c: &Captured) -> Result<Notes> {
    let json: Value = serde_json::from_str(c.stdout.trim()).context("funcs JSON")?;
    let set = |k: &str| -> BTreeSet<String> {
        json[k]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    let (syms, clones, ftrace, btf) = (set("syms"), set("clones"), set("ftrace"), set("btf"));
    let funcs = json["funcs"]["functions"]
        .as_array()
        .context("no functions in kvmprof funcs' JSON")?;
    ensure!(
        funcs.len() == CATALOGUE_LEN,
        "{} functions listed, the catalogue has {CATALOGUE_LEN}",
        funcs.len()
    );
    ensure!(
        json["funcs"]["fentry"] == "allowed" && json["funcs"]["kprobes"] == true,
        "the VM's kernel allows fentry and kprobes; kvmprof says fentry {}, kprobes {}",
        json["funcs"]["fentry"],
        json["funcs"]["kprobes"]
    );
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for f in funcs {
        let name = f["name"].as_str().context("a function without a name")?;
        let hook = f["hook"].as_str().unwrap_or("?");
        *counts.entry(hook.to_string()).or_default() += 1;
        let in_syms = syms.contains(name);
        let has_clone = clones
            .iter()
            .any(|c| c.split_once('.').is_some_and(|(b, _)| b == name));
        let traced = ftrace.contains(name);
        // Without vmlinux's dump (VMX), kvmprof's word is taken for vmlinux's BTF.
        let in_btf = btf.contains(name) || (check.vendor == Vendor::Vmx && f["btf"] == "vmlinux");
        ensure!(
            f["symbol"].is_string() == in_syms,
            "{name}: kvmprof says symbol {}, /proc/kallsyms {}",
            f["symbol"],
            if in_syms { "has it" } else { "has not" }
        );
        ensure!(
            f["btf"].is_string() == in_btf,
            "{name}: kvmprof says BTF {}, bpftool {}",
            f["btf"],
            if in_btf { "finds it" } else { "does not" }
        );
        ensure!(
            f["ftrace"] == traced,
            "{name}: kvmprof says ftrace {}, available_filter_functions {traced}",
            f["ftrace"]
        );
        let expected = match (in_syms, in_btf && traced, has_clone) {
            (true, true, _) => "fentry",
            (true, false, _) => "kprobe",
            (false, _, true) => "clone",
            (false, _, false) => "none",
        };
        ensure!(
            hook == expected,
            "{name}: kvmprof's verdict {hook}, the kernel's lists say {expected}"
        );
    }
    let decode = funcs
        .iter()
        .find(|f| f["name"] == "x86_decode_emulated_instruction")
        .context("x86_decode_emulated_instruction not listed")?;
    ensure!(
        decode["hook"] == "fentry" && decode["label"] == 1,
        "x86_decode_emulated_instruction: {decode}"
    );
    Ok(vec![format!(
        "{} catalogue functions, verdicts as kallsyms/ftrace/BTF say: {}",
        funcs.len(),
        counts
            .iter()
            .map(|(h, n)| format!("{n} {h}"))
            .collect::<Vec<_>>()
            .join(", ")
    )])
}
