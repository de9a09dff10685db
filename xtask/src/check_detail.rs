//! The VM check of `--detail` (issue 21): a guest that reads one MSR, writes another, runs
//! CPUID on two leaves, makes hypercalls and MMIO writes, each a known number of times, and
//! writes fresh pages once each, recorded with `record --detail`. The report's detail rows
//! must hold exactly the guest's counts per MSR and direction, leaf and hypercall number, and
//! nothing else under those spaces; its guest RIPs, each exiting instruction's address with
//! its count; its guest pages, each fresh page once as a fault-in, the MMIO page as MMIO as
//! many times as its writes were EPT violations or NPFs, and the page rows of that reason
//! its exits exactly. KVM's own `hypercalls` counter (debugfs, read by kvmprof over the
//! window), where the kernel has it, must agree, and its `pf_fixed` must lie between the
//! guest's fresh pages and kvmprof's fault-ins. Each row's cycle p50 and p99 must be there
//! and fit its reason's cycle. `top --batch --detail` of the same guest must show the same
//! counts per key.
use anyhow::{bail, ensure, Context, Result};
use kvmprof_testvmm::{Counts, Workload};
use serde_json::Value;

use crate::checks::{ensure_as_made, parse_json, port_sum, Captured, Check, Hooks, Notes, Vendor};

pub(crate) const DETAIL: Workload = Workload {
    vcpus: 1,
    pio_user: 10,
    msr_read: 300,
    msr_write: 200,
    cpuid: 150,
    hypercall: 100,
    mmio_user: 20,
    npf_pages: 16,
    ..Workload::IDLE
};

/// The exit reason of EPT violations (Intel VMX) and NPFs (AMD SVM).
const fn npf_reason(vendor: Vendor) -> (&'static str, u64) {
    match vendor {
        Vendor::Vmx => ("vmx", 48),
        Vendor::Svm => ("svm", 0x400),
    }
}

/// `record --detail -- VMM`; prints `{"vmm", "report", "mmio_caching"}` (KVM's parameter:
/// whether an MMIO page, once seen, exits as an EPT misconfiguration on VMX). kvmprof reads
/// the VM's counters every second while exits come and once more when they stop: the VMM's
/// delays put reads before the first exit and after the last.
pub fn script(hooks: Hooks) -> String {
    let dir = format!("/run/kvmprof-detail-{hooks}");
    let args = kvmprof_testvmm::cli::args(&DETAIL);
    format!(
        "mkdir -p {dir}\n\
         \"$KVMPROF\" record --detail --hooks {hooks} -o {dir}/k.data -- \"$TESTVMM\" \
         --start-delay 1500 --end-delay 2500 {args} > {dir}/vmm.json\n\
         \"$KVMPROF\" report -i {dir}/k.data --format json > {dir}/report.json\n\
         printf '{{\"vmm\": %s, \"report\": %s, \"mmio_caching\": \"%s\"}}\\n' \"$(cat {dir}/vmm.json)\" \
         \"$(cat {dir}/report.json)\" \"$(cat /sys/module/kvm/parameters/mmio_caching 2>/dev/null)\"\n"
    )
}

/// `top --batch --detail -p VMM`; prints the VMM's counts (one JSON line), `--- top` and
/// top's frames. The VMM is stopped once its vCPUs exist and goes on once top has drawn a
/// frame (all its hooks attached), so top counts its every exit; top prints a last frame
/// when it ends.
pub fn top_script(hooks: Hooks) -> String {
    let dir = format!("/run/kvmprof-detail-top-{hooks}");
    let args = kvmprof_testvmm::cli::args(&DETAIL);
    let tool = format!(
        "\"$KVMPROF\" top --batch --detail --hooks {hooks} --delay 1s -p $vmm > {dir}/top.txt 2> {dir}/top.err"
    );
    let (out, err) = (format!("{dir}/top.txt"), format!("{dir}/top.err"));
    let run = crate::checks::held_vmm_script(&dir, &args, "1s", &tool, (&out, "kvmprof top"), &err);
    format!("mkdir -p {dir}\n{run}cat {dir}/vmm.json\necho '--- top'\ncat {out}\n")
}

/// The keys of `top`'s last frame must hold exactly the guest's MSR reads and writes, CPUID
/// leaves and hypercalls.
pub fn verify_top(_: &Check, c: &Captured) -> Result<Notes> {
    let (vmm, top) = c
        .stdout
        .split_once("\n--- top\n")
        .context("no `--- top` line in the output")?;
    let made = crate::checks::vmm_counts(&parse_json(vmm)?)?;
    let last = top.rsplit("kvmprof top").next().unwrap_or_default();
    // pid, space, key, dir, count: one line per key, under its reason's row.
    let count = |space: &str, key: String, dir: &str| -> u64 {
        last.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|c| c.len() > 4 && c[1] == space && c[2] == key && c[3] == dir)
            .filter_map(|c| c[4].parse::<u64>().ok())
            .sum()
    };
    ensure_as_made(&keyed("top: ", &made, count)?)?;
    Ok(Vec::new())
}

/// `(what, got, made)` of each MSR and direction, CPUID leaf and hypercall number of the
/// guest, `count(space, key, dir)` giving a table's count of a key as `top` and `serve`
/// spell it (`0x1b`, `0x1/0x0`, dir `-` where there is none).
pub(crate) fn keyed(
    what: &str,
    made: &Counts,
    count: impl Fn(&str, String, &str) -> u64,
) -> Result<Vec<(String, u64, u64)>> {
    let (t, at) = (&made.total, &made.ports);
    let leaf = |i: usize| -> Result<String> {
        let leaf = at
            .cpuid_leaves
            .get(i)
            .context("the VMM names no cpuid leaf")?;
        Ok(format!("{leaf:#x}/0x0"))
    };
    let (msr_read, msr_write) = (
        format!("{:#x}", at.msr_read),
        format!("{:#x}", at.msr_write),
    );
    let hypercall = format!("{:#x}", at.hypercall_nr);
    Ok(vec![
        (
            format!("{what}msr {msr_read} read"),
            count("msr", msr_read, "read"),
            t.msr_read,
        ),
        (
            format!("{what}msr {msr_write} write"),
            count("msr", msr_write, "write"),
            t.msr_write,
        ),
        (
            format!("{what}cpuid leaf 0"),
            count("cpuid", leaf(0)?, "-"),
            t.cpuid[0],
        ),
        (
            format!("{what}cpuid leaf 1"),
            count("cpuid", leaf(1)?, "-"),
            t.cpuid[1],
        ),
        (
            format!("{what}hypercall {hypercall}"),
            count("hypercall", hypercall, "-"),
            t.hypercall,
        ),
    ])
}

pub fn verify(check: &Check, c: &Captured) -> Result<Notes> {
    let (json, made) = crate::checks::vmm_json(&c.stdout)?;
    let report = &json["report"];
    let rows = report["ports"].as_array().context("report has no ports")?;
    let (t, at) = (&made.total, &made.ports);
    let space_total = |space: &str| -> u64 {
        rows.iter()
            .filter(|p| p["space"] == space)
            .filter_map(|p| p["count"].as_u64())
            .sum()
    };
    let cpuid = |i: usize| -> Result<(u64, u64)> {
        let leaf = *at
            .cpuid_leaves
            .get(i)
            .context("the VMM names no cpuid leaf")?;
        let got = port_sum(rows, "cpuid", u64::from(leaf), false, "count");
        Ok((got, t.cpuid[i]))
    };
    let (leaf0, leaf1) = (cpuid(0)?, cpuid(1)?);
    let mut expected = vec![
        (
            format!("msr {:#x} read", at.msr_read),
            port_sum(rows, "msr", at.msr_read.into(), false, "count"),
            t.msr_read,
        ),
        (
            format!("msr {:#x} write", at.msr_write),
            port_sum(rows, "msr", at.msr_write.into(), true, "count"),
            t.msr_write,
        ),
        (
            "msr rows in all".into(),
            space_total("msr"),
            t.msr_read + t.msr_write,
        ),
        ("cpuid leaf 0".into(), leaf0.0, leaf0.1),
        ("cpuid leaf 1".into(), leaf1.0, leaf1.1),
        (
            "cpuid rows in all".into(),
            space_total("cpuid"),
            t.cpuid.iter().sum(),
        ),
        (
            format!("hypercall {:#x}", at.hypercall_nr),
            port_sum(rows, "hypercall", at.hypercall_nr.into(), false, "count"),
            t.hypercall,
        ),
        (
            "hypercall rows in all".into(),
            space_total("hypercall"),
            t.hypercall,
        ),
        (
            "lost".into(),
            report["lost"].as_u64().unwrap_or(u64::MAX),
            0,
        ),
    ];
    // Top guest RIPs: each of the guest's exiting instructions, at the address the VMM
    // loaded it, with as many exits as it made.
    let rips = report["rips"].as_array().context("report has no rips")?;
    let at_rip = |name: &str| -> Result<u64> {
        let rip = *at
            .rips
            .get(name)
            .with_context(|| format!("the VMM names no {name} RIP"))?;
        Ok(rips
            .iter()
            .filter(|r| r["rip"] == rip)
            .filter_map(|r| r["count"].as_u64())
            .sum())
    };
    for (name, made) in [
        ("rdmsr", t.msr_read),
        ("wrmsr", t.msr_write),
        ("cpuid_0", t.cpuid[0]),
        ("cpuid_1", t.cpuid[1]),
        ("hypercall", t.hypercall),
        ("pio_user", t.pio_user),
    ] {
        expected.push((format!("exits at the {name} RIP"), at_rip(name)?, made));
    }
    let mut notes = Vec::new();
    match report["kvm_stats"]["hypercalls"].as_u64() {
        Some(kvm) => expected.push(("KVM's hypercalls counter".into(), kvm, t.hypercall)),
        None => notes.push("no hypercalls counter among KVM's per-VM stats".to_string()),
    }
    let caching = json["mmio_caching"].as_str().unwrap_or("");
    notes.extend(pages(check.vendor, report, &made, caching, &mut expected)?);
    ensure_as_made(&expected)?;
    percentiles(report)?;
    Ok(notes)
}

/// Each row with a measured cycle (ports, MSRs, leaves, hypercalls) has a p50 and a p99, in
/// order, and they and its mean are no longer than its reason's longest cycle. A reason whose exits
/// are all in rows (its MSRs, say) has its p50 and p99 between its rows' (a mixture's
/// quantile lies between its parts'): the rows' histograms hold the same exits.
fn percentiles(report: &Value) -> Result<()> {
    let rows = report["ports"].as_array().context("report has no ports")?;
    let groups = report["groups"]
        .as_array()
        .context("report has no groups")?;
    // The histograms' precision: values stand for their bucket, within 0.1 %.
    let le = |a: u64, b: u64| a <= b + b / 1000 + 1;
    for g in groups {
        let cycle = g["stages"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["stage"] == "cycle"));
        let Some(cycle) = cycle else { continue };
        let stat = |name: &str| cycle[name].as_u64().unwrap_or(0);
        let mine: Vec<&Value> = rows
            .iter()
            .filter(|r| r["reason"] == g["reason"] && r["mean_cycle_ns"].is_u64())
            .collect();
        let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
        for r in &mine {
            let what = format!("{} {} {}", r["space"], r["addr"], r["write"]);
            let (Some(p50), Some(p99)) = (r["p50_cycle_ns"].as_u64(), r["p99_cycle_ns"].as_u64())
            else {
                bail!("report: row {what} has a mean cycle but no p50 or p99");
            };
            let mean = r["mean_cycle_ns"].as_u64().unwrap_or(0);
            ensure!(
                0 < p50 && p50 <= p99 && le(p99, stat("max_ns")) && le(mean, stat("max_ns")),
                "report: row {what}: cycle p50 {p50}, p99 {p99}, mean {mean} do not fit \
                 0 < p50 <= p99 <= max {}",
                stat("max_ns")
            );
            p50s.push(p50);
            p99s.push(p99);
        }
        let in_rows: u64 = mine.iter().filter_map(|r| r["count"].as_u64()).sum();
        if mine.is_empty() || in_rows != g["count"].as_u64().unwrap_or(0) {
            continue;
        }
        for (name, parts) in [("p50_ns", &p50s), ("p99_ns", &p99s)] {
            let lo = parts.iter().min().copied().unwrap_or(0);
            let hi = parts.iter().max().copied().unwrap_or(0);
            let whole = stat(name);
            ensure!(
                le(lo, whole) && le(whole, hi),
                "report: {} cycle {name} {whole} is not between its rows' ({lo}..{hi})",
                g["label"]
            );
        }
    }
    Ok(())
}

/// The guest-page rows: each fresh page one fault-in, the MMIO page MMIO as often as its
/// writes were EPT violations or NPFs (each of them on SVM; on VMX the first, after which
/// KVM's cached MMIO SPTE makes them EPT misconfigurations, which fire no `kvm_page_fault`,
/// unless `mmio_caching` is off), and the page rows of that reason, `other` included, its
/// exits.
fn pages(
    vendor: Vendor,
    report: &Value,
    made: &Counts,
    caching: &str,
    expected: &mut Vec<(String, u64, u64)>,
) -> Result<Notes> {
    let rows = report["ports"].as_array().context("report has no ports")?;
    let (t, at) = (&made.total, &made.ports);
    ensure!(
        at.npf_pages.len() as u64 == t.npf_pages && t.npf_pages == DETAIL.npf_pages,
        "the VMM wrote {} fresh pages and names {}, not {}",
        t.npf_pages,
        at.npf_pages.len(),
        DETAIL.npf_pages
    );
    for &page in &at.npf_pages {
        for (kind, mmio, want) in [("fault-in", false, 1), ("mmio", true, 0)] {
            let got = port_sum(rows, "page", page, mmio, "count");
            expected.push((format!("page {page:#x} {kind}"), got, want));
        }
    }
    let mmio_page = kvmprof_common::detail::page(at.mmio_addr);
    let mut notes = Vec::new();
    let mmio_faults = match (vendor, caching) {
        (Vendor::Svm, _) | (Vendor::Vmx, "N") => t.mmio_user,
        (Vendor::Vmx, "Y") => t.mmio_user.min(1),
        (Vendor::Vmx, _) => {
            notes.push("no kvm.mmio_caching parameter: the MMIO page's count not held".into());
            port_sum(rows, "page", mmio_page, true, "count")
        }
    };
    expected.push((
        format!("page {mmio_page:#x} mmio"),
        port_sum(rows, "page", mmio_page, true, "count"),
        mmio_faults,
    ));
    expected.push((
        format!("page {mmio_page:#x} fault-in"),
        port_sum(rows, "page", mmio_page, false, "count"),
        0,
    ));
    let (space, code) = npf_reason(vendor);
    let of_reason = |v: &Value| v["space"] == space && v["code"] == code;
    let page_rows: u64 = rows
        .iter()
        .filter(|p| p["space"] == "page" && of_reason(&p["reason"]))
        .filter_map(|p| p["count"].as_u64())
        .sum();
    let groups = report["groups"]
        .as_array()
        .context("report has no groups")?;
    let exits: u64 = groups
        .iter()
        .filter(|g| of_reason(&g["reason"]))
        .filter_map(|g| g["count"].as_u64())
        .sum();
    expected.push((format!("page rows of reason {code:#x}"), page_rows, exits));
    match report["kvm_stats"]["pf_fixed"].as_u64() {
        Some(fixed) => {
            let fault_ins: u64 = rows
                .iter()
                .filter(|p| p["space"] == "page" && p["write"] == false)
                .filter_map(|p| p["count"].as_u64())
                .sum();
            // Each page KVM mapped was an exit; an exit may find its page already mapped
            // (another vCPU's, a retry).
            expected.push((
                "KVM's pf_fixed, at least the fresh pages".into(),
                fixed.min(t.npf_pages),
                t.npf_pages,
            ));
            expected.push((
                "KVM's pf_fixed, at most kvmprof's fault-ins".into(),
                fixed.max(fault_ins),
                fault_ins,
            ));
        }
        None => notes.push("no pf_fixed counter among KVM's per-VM stats".to_string()),
    }
    Ok(notes)
}

/// The rows of a report that recorded [`DETAIL`] on SVM (unit tests of the verdict), the
/// fresh pages' rows from `pages`: the MSR reads' cycle p50 is `msr_p50`, in a reason whose
/// p50 is 6000 and longest cycle 50 µs.
#[cfg(test)]
fn report_rows(msr_read: u64, cpuid0: u64, pages: &[u64], msr_p50: Option<u64>) -> Value {
    let msr = |space, addr: u64, write, count, p50: Option<u64>| {
        serde_json::json!({"space": space, "addr": addr, "write": write, "count": count,
            "reason": "msr", "mean_cycle_ns": 7000, "p50_cycle_ns": p50, "p99_cycle_ns": 20000})
    };
    let cycle = serde_json::json!([{"stage": "cycle", "p50_ns": 6000, "p99_ns": 20000,
        "max_ns": 50000}]);
    let npf = serde_json::json!({"space": "svm", "code": 0x400});
    let page = |addr: u64, mmio: bool, count: u64| {
        serde_json::json!({"space": "page", "addr": addr, "write": mmio, "count": count,
            "reason": npf})
    };
    let mut ports: Vec<Value> = pages.iter().map(|&p| page(p, false, 1)).collect();
    // The guest's code page, and the MMIO page's 20 writes.
    ports.push(page(0x1000, false, 1));
    ports.push(page(0xd_0000, true, 20));
    let npf_exits = 21 + pages.len() as u64;
    let mut report = serde_json::json!({"lost": 0,
        "kvm_stats": {"hypercalls": 100, "pf_fixed": 17},
        "groups": [{"reason": npf, "count": npf_exits},
            {"label": "msr", "reason": "msr", "count": msr_read + 200, "stages": cycle}],
        "rips": [
        {"rip": 0x1048, "count": msr_read}, {"rip": 0x1068, "count": 200},
        {"rip": 0x1082, "count": 150}, {"rip": 0x108d, "count": 150},
        {"rip": 0x10a4, "count": 100}, {"rip": 0x1008, "count": 10},
        {"rip": null, "count": 3},
    ], "ports": [
        msr("msr", 0x1b, false, msr_read, msr_p50),
        msr("msr", 0x4b56_4d00, true, 200, Some(7000)),
        {"space": "cpuid", "addr": 0, "write": false, "count": cpuid0},
        {"space": "cpuid", "addr": 1, "write": false, "count": 150},
        {"space": "hypercall", "addr": 0x7e57, "write": false, "count": 100},
        {"space": "pio", "addr": 0x3f8, "write": true, "count": 10},
    ]});
    if let Some(rows) = report["ports"].as_array_mut() {
        rows.extend(ports);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::{Hooks, Vendor};
    use kvmprof_testvmm::{self as guest};

    /// What the test VMM says it made of [`DETAIL`].
    fn made() -> Counts {
        let mut made = crate::checks::no_counts();
        made.total.msr_read = 300;
        made.total.msr_write = 200;
        made.total.cpuid = [150, 150];
        made.total.hypercall = 100;
        made.ports.msr_read = guest::MSR_READ;
        made.ports.msr_write = guest::MSR_WRITE;
        made.ports.cpuid_leaves = guest::CPUID_LEAVES.to_vec();
        made.ports.hypercall_nr = guest::HYPERCALL_NR;
        made.total.pio_user = 10;
        made.total.mmio_user = 20;
        made.total.npf_pages = DETAIL.npf_pages;
        made.ports.mmio_addr = guest::MMIO_ADDR;
        made.ports.npf_pages = guest::npf_pages(DETAIL.npf_pages as u32);
        made.ports.rips = [
            ("rdmsr", guest::RDMSR_RIP),
            ("wrmsr", guest::WRMSR_RIP),
            ("cpuid_0", guest::CPUID_RIPS[0]),
            ("cpuid_1", guest::CPUID_RIPS[1]),
            ("hypercall", guest::HYPERCALL_RIP),
            ("pio_user", guest::PIO_USER_RIP),
        ]
        .into_iter()
        .map(|(n, r)| (n.to_string(), r))
        .collect();
        made
    }

    fn output(stdout: String) -> Captured {
        Captured {
            rc: 0,
            stdout,
            stderr: String::new(),
            elapsed: Default::default(),
        }
    }

    fn captured(report: Value) -> Captured {
        let out = serde_json::json!({"vmm": made(), "report": report, "mmio_caching": "Y"});
        output(out.to_string())
    }

    /// `top`'s output: a first frame without keys, then a last one with `msr_read` reads.
    fn top_captured(msr_read: u64) -> Captured {
        let vmm = serde_json::to_string(&made()).expect("json");
        output(format!(
            "{vmm}\n--- top\nkvmprof top   SVM\nREASON  EXITS/s\nmsr  0 0\n\n\
             kvmprof top   SVM\nREASON  EXITS/s\nmsr  600 500\n\n\
             msr: keys (top 2 of 2)\n\
             \x20    pid  space     key             dir        count   share\n\
             \x20     7  msr       0x1b            read    {msr_read}   60.0%   1.00  IA32_APIC_BASE  msr\n\
             \x20     7  msr       0x4b564d00      write         200   40.0%  MSR_KVM_WALL_CLOCK_NEW  msr\n\
             cpuid: keys (top 2 of 2)\n\
             \x20     7  cpuid     0x0/0x0         -             150   50.0%  -  cpuid\n\
             \x20     7  cpuid     0x1/0x0         -             150   50.0%  -  cpuid\n\
             vmmcall: keys (top 1 of 1)\n\
             \x20     7  hypercall 0x7e57          -             100  100.0%  -  vmmcall\n"
        ))
    }

    fn check() -> Check {
        Check {
            name: "kvmprof_detail",
            hooks: Some(Hooks::Auto),
            vendor: Vendor::Svm,
            script: String::new(),
            verify,
        }
    }

    #[test]
    fn detail_rows_must_hold_the_guests_counts_exactly() {
        let c = check();
        let pages = guest::npf_pages(DETAIL.npf_pages as u32);
        assert!(verify(&c, &captured(report_rows(300, 150, &pages, Some(5000)))).is_ok());
        let short = verify(&c, &captured(report_rows(299, 150, &pages, Some(5000)))).unwrap_err();
        assert!(
            format!("{short}").contains("msr 0x1b read = 299"),
            "{short}"
        );
        // One CPUID exit too many under leaf 0: the leaf row and the total both disagree.
        let wrong = verify(&c, &captured(report_rows(300, 151, &pages, Some(5000)))).unwrap_err();
        assert!(
            format!("{wrong}").contains("cpuid rows in all = 301"),
            "{wrong}"
        );
    }

    /// Without its page rows (`--detail` filing no page fault) the verdict fails, naming
    /// the first fresh page; with one page missing, so do its row and the reason's sum.
    #[test]
    fn page_rows_must_hold_each_fresh_page_once_and_the_reasons_exits() {
        let c = check();
        let pages = guest::npf_pages(DETAIL.npf_pages as u32);
        let mut none = report_rows(300, 150, &pages, Some(5000));
        if let Some(rows) = none["ports"].as_array_mut() {
            rows.retain(|p| p["space"] != "page");
        }
        let err = format!("{}", verify(&c, &captured(none)).unwrap_err());
        assert!(err.contains("page 0x20000 fault-in = 0"), "{err}");
        assert!(err.contains("page 0xd0000 mmio = 0"), "{err}");
        assert!(err.contains("page rows of reason 0x400 = 0"), "{err}");
        let mut one_short = report_rows(300, 150, &pages[1..], Some(5000));
        one_short["groups"][0]["count"] = serde_json::json!(21 + pages.len());
        let err = format!("{}", verify(&c, &captured(one_short)).unwrap_err());
        assert!(err.contains("page 0x20000 fault-in = 0"), "{err}");
        assert!(err.contains("page rows of reason 0x400 = 36"), "{err}");
    }

    /// `top`'s last frame must list each key with the guest's count; without keys (top
    /// without `--detail`'s panel lines) every key is missing.
    #[test]
    fn top_must_list_each_key_with_the_guests_count() {
        let c = check();
        verify_top(&c, &top_captured(300)).expect("the counts as made");
        let e = format!("{:#}", verify_top(&c, &top_captured(299)).unwrap_err());
        assert!(e.contains("top: msr 0x1b read = 299"), "{e}");
        let mut bare = top_captured(300);
        bare.stdout = bare
            .stdout
            .split("msr: keys")
            .next()
            .unwrap_or_default()
            .into();
        let e = format!("{:#}", verify_top(&c, &bare).unwrap_err());
        assert!(e.contains("top: hypercall 0x7e57 = 0"), "{e}");
    }

    /// Rows without percentiles, percentiles out of order, and a reason's p50 outside its
    /// rows' are each an error.
    #[test]
    fn detail_rows_must_have_consistent_percentiles() {
        let c = check();
        let pages = guest::npf_pages(DETAIL.npf_pages as u32);
        let error = |p50| {
            format!(
                "{:#}",
                verify(&c, &captured(report_rows(300, 150, &pages, p50))).unwrap_err()
            )
        };
        assert!(error(None).contains("no p50 or p99"), "{}", error(None));
        let e = error(Some(30_000));
        assert!(e.contains("do not fit"), "{e}");
        // Both rows' p50 above the reason's: the rows' histograms are not its exits'.
        let e = error(Some(6_500));
        assert!(
            e.contains("cycle p50_ns 6000 is not between its rows' (6500..7000)"),
            "{e}"
        );
    }
}
