//! The VM check of `record --func` (issue 21): a guest whose MMIO writes each exit to the
//! VMM, recorded with `--func x86_decode_emulated_instruction`, the instruction emulator's
//! entry point. KVM decodes each emulated MMIO access once (a write completes in the VMM
//! without a second decode), and no port exit decodes, so the function's rows must hold
//! exactly one exit and one call per MMIO write the guest made, filed under the vendor's
//! MMIO exit reasons only, with its time inside those exits' cycles. Run in both hook modes:
//! `auto` times it with fentry/fexit where the kernel allows, `kprobe` with kprobes.
use anyhow::{ensure, Context, Result};
use kvmprof_testvmm::Workload;
use serde_json::Value;

use crate::checks::{ensure_as_made, Captured, Check, Hooks, Notes, Vendor};

const FUNC: &str = "x86_decode_emulated_instruction";

const MMIO: Workload = Workload {
    vcpus: 1,
    mmio_user: 300,
    pio_user: 50,
    pio_kernel: 200,
    ..Workload::IDLE
};

/// `record --func FUNC -- VMM`; prints `{"vmm", "report", "nrips"}` (`nrips`: whether the
/// CPU saves the next RIP on SVM exits).
pub fn script(hooks: Hooks) -> String {
    let dir = format!("/run/kvmprof-func-{hooks}");
    let args = kvmprof_testvmm::cli::args(&MMIO);
    format!(
        "mkdir -p {dir}\n\
         \"$KVMPROF\" record --func {FUNC} --hooks {hooks} -o {dir}/k.data -- \"$TESTVMM\" \
         {args} > {dir}/vmm.json\n\
         \"$KVMPROF\" report -i {dir}/k.data --format json > {dir}/report.json\n\
         if grep -qw nrip_save /proc/cpuinfo; then nrips=true; else nrips=false; fi\n\
         printf '{{\"vmm\": %s, \"report\": %s, \"nrips\": %s}}\\n' \"$(cat {dir}/vmm.json)\" \"$(cat {dir}/report.json)\" \"$nrips\"\n"
    )
}

/// The reasons an emulated MMIO access exits with.
fn mmio_reasons(vendor: Vendor) -> &'static [&'static str] {
    match vendor {
        Vendor::Svm => &["npf"],
        // The first access to the page is an EPT violation that installs the MMIO entry;
        // the others are EPT misconfigurations.
        Vendor::Vmx => &["EPT_VIOLATION", "EPT_MISCONFIG"],
    }
}

pub fn verify(check: &Check, c: &Captured) -> Result<Notes> {
    let (json, made) = crate::checks::vmm_json(&c.stdout)?;
    let funcs = &json["report"]["header"]["funcs"];
    let hook = funcs["hooks"]
        .as_array()
        .and_then(|h| h.first())
        .context("the report has no --func hooks")?;
    ensure!(hook["name"] == FUNC, "hooked {}, not {FUNC}", hook["name"]);
    let mode = hook["mode"].as_str().unwrap_or("?");
    if check.hooks == Some(Hooks::Kprobe) {
        ensure!(mode == "kprobe", "--hooks kprobe timed {FUNC} with {mode}");
    }
    let rows: Vec<&Value> = funcs["rows"]
        .as_array()
        .context("the report has no --func rows")?
        .iter()
        .filter(|r| r["func"] == FUNC)
        .collect();
    // On SVM without NRIPS (QEMU's TCG has none) KVM skips an intercepted instruction by
    // decoding it: the guest's closing `hlt` decodes once in its exit.
    let skips_by_decoding = check.vendor == Vendor::Svm && json["nrips"] == false;
    let skip_reasons: &[&str] = if skips_by_decoding { &["hlt"] } else { &[] };
    let mmio_reasons = mmio_reasons(check.vendor);
    let elsewhere: Vec<String> = rows
        .iter()
        .filter_map(|r| r["reason_name"].as_str())
        .filter(|n| !mmio_reasons.contains(n) && !skip_reasons.contains(n))
        .map(str::to_owned)
        .collect();
    ensure!(
        elsewhere.is_empty(),
        "{FUNC} filed under {elsewhere:?}, not only {mmio_reasons:?} (+{skip_reasons:?})"
    );
    let sum = |reasons: &[&str], f: &str| -> u64 {
        rows.iter()
            .filter(|r| {
                r["reason_name"]
                    .as_str()
                    .is_some_and(|n| reasons.contains(&n))
            })
            .filter_map(|r| r[f].as_u64())
            .sum()
    };
    let most = rows
        .iter()
        .filter_map(|r| r["max_calls"].as_u64())
        .max()
        .unwrap_or(0);
    let mmio = made.total.mmio_user;
    let hlt = if skips_by_decoding { made.total.hlt } else { 0 };
    ensure_as_made(&[
        (
            format!("MMIO exits that called {FUNC}"),
            sum(mmio_reasons, "exits"),
            mmio,
        ),
        (
            format!("calls of {FUNC} in MMIO exits"),
            sum(mmio_reasons, "calls"),
            mmio,
        ),
        (
            format!("hlt exits that called {FUNC}"),
            sum(&["hlt"], "exits"),
            hlt,
        ),
        (
            format!("calls of {FUNC} in hlt exits"),
            sum(&["hlt"], "calls"),
            hlt,
        ),
        ("most calls in one exit".to_string(), most, 1),
        (
            "calls outside a recorded exit".to_string(),
            hook["outside"].as_u64().unwrap_or(u64::MAX),
            0,
        ),
        (
            "exits folded".to_string(),
            hook["folded"].as_u64().unwrap_or(u64::MAX),
            0,
        ),
    ])?;
    // Nested: its time lies inside those exits' cycles.
    for r in &rows {
        let (t, cycle) = (r["time"]["sum_ns"].as_u64(), r["cycle_ns"].as_u64());
        ensure!(
            matches!((t, cycle), (Some(t), Some(c)) if t > 0 && t < c),
            "{FUNC} under {}: {t:?} ns in it, not inside its exits' {cycle:?} ns",
            r["reason_name"]
        );
    }
    let mut notes = vec![format!("{FUNC} timed with {mode}")];
    if skips_by_decoding {
        notes.push(format!(
            "no NRIPS: {hlt} hlt exit(s) decode to skip the instruction"
        ));
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captured(rows: Value, nrips: bool) -> Captured {
        let mut made = crate::checks::no_counts();
        made.total.mmio_user = 300;
        let hooks = serde_json::json!([{"name": FUNC, "mode": "kprobe", "symbol": FUNC,
                                        "outside": 0, "folded": 0}]);
        made.total.hlt = 1;
        let report = serde_json::json!({"header": {"funcs": {"hooks": hooks, "rows": rows}}});
        Captured {
            rc: 0,
            stdout: serde_json::json!({"vmm": made, "report": report, "nrips": nrips}).to_string(),
            stderr: String::new(),
            elapsed: Default::default(),
        }
    }

    fn row(reason: &str, exits: u64, calls: u64, max: u64) -> Value {
        serde_json::json!({"func": FUNC, "reason_name": reason, "exits": exits, "calls": calls,
                           "max_calls": max, "cycle_ns": 1_000_000, "time": {"sum_ns": 5000}})
    }

    fn check(vendor: Vendor) -> Check {
        Check {
            name: "kvmprof_func",
            hooks: Some(Hooks::Kprobe),
            vendor,
            script: String::new(),
            verify,
        }
    }

    #[test]
    fn one_call_per_emulated_mmio_exit_under_the_mmio_reasons_only() {
        let (vmx, svm) = (check(Vendor::Vmx), check(Vendor::Svm));
        let rows = |r: &[Value]| Value::Array(r.to_vec());
        let split = rows(&[
            row("EPT_MISCONFIG", 299, 299, 1),
            row("EPT_VIOLATION", 1, 1, 1),
        ]);
        assert!(verify(&vmx, &captured(split, true)).is_ok());
        let npf = row("npf", 300, 300, 1);
        assert!(verify(&svm, &captured(rows(std::slice::from_ref(&npf)), true)).is_ok());
        let twice = verify(&svm, &captured(rows(&[row("npf", 300, 301, 2)]), true));
        assert!(format!("{}", twice.unwrap_err()).contains("calls of"));
        let io = verify(
            &svm,
            &captured(rows(&[npf.clone(), row("io", 1, 1, 1)]), true),
        );
        assert!(format!("{}", io.unwrap_err()).contains("filed under [\"io\"]"));
        // Without NRIPS the closing hlt decodes once; with it, never.
        let hlt = rows(&[npf.clone(), row("hlt", 1, 1, 1)]);
        assert!(verify(&svm, &captured(hlt.clone(), false)).is_ok());
        assert!(verify(&svm, &captured(hlt, true)).is_err());
        assert!(verify(&svm, &captured(rows(&[npf]), false)).is_err());
        // The feature gone: no rows.
        assert!(verify(&svm, &captured(Value::Null, true)).is_err());
    }
}
