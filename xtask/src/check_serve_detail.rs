//! The VM check of `serve --detail` (issue 21): `serve --pid VMM --detail` while the test VMM's
//! guest reads one MSR, writes another, runs CPUID on two leaves and makes hypercalls, known
//! numbers of each (`check_detail`'s workload). Scraped with busybox's wget during the VMM's
//! end delay, `kvmprof_exit_detail_total` must hold exactly the guest's count for each MSR
//! and direction, leaf and hypercall number, and each reason's detail series (its keys and
//! `other`) must add up to its `kvmprof_exits_total`.
use std::collections::BTreeMap;

use anyhow::{ensure, Context, Result};

use crate::checks::{ensure_as_made, Captured, Check, Notes};

const PORT: u16 = 9477;

/// Starts the VMM, held once its vCPUs exist until `serve` attached, then scrapes /metrics
/// every 0.3 s while it runs (its end delay keeps every exit on the last scrape); prints the
/// VMM's counts, `--- metrics` and the last scrape.
pub fn script() -> String {
    let dir = "/run/kvmprof-serve-detail";
    let args = kvmprof_testvmm::cli::args(&crate::check_detail::DETAIL);
    let url = format!("http://127.0.0.1:{PORT}/metrics");
    let held = crate::checks::held_vmm(dir, &format!("{args} --end-delay 5s"), "1s");
    let err = format!("{dir}/serve.err");
    let serve = format!(
        "\"$KVMPROF\" serve --pid $vmm --detail --detail-top 64 --listen 127.0.0.1:{PORT} 2> {err}"
    );
    let attached = crate::checks::attached_tool(&serve, (&err, "serving http"), &err);
    // The Bochs initramfs leaves the loopback interface down.
    format!(
        "mkdir -p {dir}\n\
         busybox ip link set lo up\n\
         {held}{attached}\
         while kill -0 $vmm 2> /dev/null; do\n\
         \tbusybox wget -q -O {dir}/scrape {url} 2> /dev/null && mv {dir}/scrape {dir}/metrics\n\
         \tsleep 0.3\n\
         done\n\
         wait $vmm\n\
         wait $tool || {{ cat {err} >&2; exit 1; }}\n\
         [ -s {dir}/metrics ] || {{ echo 'no scrape of {url} succeeded' >&2; exit 1; }}\n\
         cat {dir}/vmm.json\n\
         echo '--- metrics'\n\
         cat {dir}/metrics\n"
    )
}

/// One sample of the exposition text: its metric name, labels and value.
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses `name{a="x",b="y"} value` lines (label values as kvmprof writes them: no escaped
/// quotes); comments and other lines are skipped.
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (head, value) = l.rsplit_once(' ')?;
            let (name, labels) = head.split_once('{')?;
            let labels = labels
                .trim_end_matches('}')
                .split("\",")
                .filter_map(|kv| {
                    let (k, v) = kv.split_once("=\"")?;
                    Some((k.to_string(), v.trim_end_matches('"').to_string()))
                })
                .collect();
            Some(Sample {
                name: name.to_string(),
                labels,
                value: value.parse().ok()?,
            })
        })
        .collect()
}

pub fn verify(_: &Check, c: &Captured) -> Result<Notes> {
    let (vmm, metrics) = c
        .stdout
        .split_once("--- metrics")
        .context("no `--- metrics` in the output")?;
    let made = crate::checks::vmm_counts(&crate::checks::parse_json(vmm)?)?;
    let pid = made.pid.to_string();
    let all = samples(metrics);
    let mine = |name: &'static str| -> Vec<&Sample> {
        all.iter()
            .filter(|s| s.name == name && s.labels.get("pid") == Some(&pid))
            .collect()
    };
    let detail = mine("kvmprof_exit_detail_total");
    ensure!(
        !detail.is_empty(),
        "no kvmprof_exit_detail_total series of pid {}",
        made.pid
    );
    let label = |s: &Sample, k: &str| s.labels.get(k).cloned().unwrap_or_default();
    let key = |space: &str, key: String, dir: &str| -> u64 {
        detail
            .iter()
            .filter(|s| label(s, "space") == space && label(s, "key") == key)
            .filter(|s| label(s, "dir") == dir)
            .map(|s| s.value as u64)
            .sum()
    };
    let mut expected = crate::check_detail::keyed("", &made, key)?;
    // Each reason's series, its keys' and `other`, add up to its exits.
    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    for s in &detail {
        *by_reason.entry(label(s, "reason")).or_default() += s.value as u64;
    }
    for (reason, series) in by_reason {
        let exits: u64 = mine("kvmprof_exits_total")
            .into_iter()
            .filter(|s| label(s, "reason") == reason)
            .map(|s| s.value as u64)
            .sum();
        expected.push((format!("detail series of reason {reason}"), series, exits));
    }
    ensure_as_made(&expected)?;
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::{no_counts, Hooks, Vendor};

    fn captured(msr_read: u64, reason_exits: u64) -> Captured {
        let mut made = no_counts();
        made.total.msr_read = 300;
        made.ports.msr_read = 0x1b;
        made.ports.cpuid_leaves = vec![0, 1];
        made.ports.hypercall_nr = 0x7e57;
        let vmm = serde_json::to_string(&made).unwrap();
        let metrics = format!(
            "# TYPE kvmprof_exit_detail_total counter\n\
             kvmprof_exit_detail_total{{pid=\"1\",vm=\"x\",reason=\"msr\",space=\"msr\",key=\"0x1b\",dir=\"read\"}} {msr_read}\n\
             kvmprof_exit_detail_total{{pid=\"1\",vm=\"x\",reason=\"msr\",space=\"msr\",key=\"other\",dir=\"-\"}} 0\n\
             kvmprof_exits_total{{pid=\"1\",vm=\"x\",vcpu=\"0\",reason=\"msr\"}} {reason_exits}\n\
             kvmprof_exit_detail_total{{pid=\"2\",vm=\"y\",reason=\"msr\",space=\"msr\",key=\"0x1b\",dir=\"read\"}} 9\n"
        );
        Captured {
            rc: 0,
            stdout: format!("{vmm}\n--- metrics\n{metrics}"),
            stderr: String::new(),
            elapsed: std::time::Duration::ZERO,
        }
    }

    fn check() -> Check {
        Check {
            name: "kvmprof_serve_detail",
            hooks: Some(Hooks::Auto),
            vendor: Vendor::Svm,
            script: String::new(),
            verify,
        }
    }

    #[test]
    fn served_keys_must_hold_the_guests_counts_and_add_up_to_their_reason() {
        assert!(verify(&check(), &captured(300, 300)).is_ok());
        let short = format!("{:#}", verify(&check(), &captured(299, 299)).unwrap_err());
        assert!(short.contains("msr 0x1b read = 299"), "{short}");
        let apart = format!("{:#}", verify(&check(), &captured(300, 310)).unwrap_err());
        assert!(
            apart.contains("detail series of reason msr = 300"),
            "{apart}"
        );
    }
}
