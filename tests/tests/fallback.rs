//! Hooks that adapt: when the kernel refuses a planned program at load or attach, `--hooks
//! auto` takes the next hook for that tracepoint or stage alone, records why in the plan, and
//! the recording stays exact. The refusal is forced with the test switch `KVMPROF_REFUSE`
//! (this host's kernel refuses none of the programs kvmprof plans for it).
use std::process::Command;

use kvmprof_tests::{bin, made, report_json, scratch, skip_without_kvm, stderr, PIO_USER_PORT};
use serde_json::Value;

const REFUSED_NOTE: &str =
    "kvm/kvm_pio: classic tracepoint (raw: refused by the kernel (refused through KVMPROF_REFUSE (a test switch)))";

fn probes_json(refuse: Option<&str>) -> Value {
    let mut cmd = Command::new(bin("kvmprof"));
    cmd.args(["probes", "--format", "json"]);
    if let Some(r) = refuse {
        cmd.env("KVMPROF_REFUSE", r);
    }
    let out = cmd.output().expect("run kvmprof probes");
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("plan JSON")
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

#[test]
fn a_refused_raw_tracepoint_falls_back_to_the_classic_one_and_the_recording_stays_exact() {
    let test =
        "a_refused_raw_tracepoint_falls_back_to_the_classic_one_and_the_recording_stays_exact";
    if skip_without_kvm(test) {
        return;
    }
    if !strings(&probes_json(None)["raw_tracepoints"]).contains(&"kvm/kvm_pio") {
        eprintln!("skipped {test}: kvm_pio is not planned as a raw tracepoint on this kernel");
        return;
    }
    // `probes` test-loads its plan, so it shows the fallback, not the refused hook.
    let plan = probes_json(Some("raw_kvm_pio"));
    assert!(
        !strings(&plan["raw_tracepoints"]).contains(&"kvm/kvm_pio"),
        "{plan}"
    );
    assert!(
        strings(&plan["tracepoints"]).contains(&"kvm/kvm_pio"),
        "{plan}"
    );
    assert!(
        strings(&plan["tracepoint_notes"]).contains(&REFUSED_NOTE),
        "{plan}"
    );

    let dir = scratch("fallback-raw");
    let data = dir.join("k.data");
    let out = Command::new(bin("kvmprof"))
        .env("KVMPROF_REFUSE", "raw_kvm_pio")
        .args(["record", "-o", data.to_str().unwrap(), "--"])
        .arg(bin("kvmprof-testvmm"))
        .args([
            "--vcpus",
            "2",
            "--pio-user",
            "700",
            "--pio-kernel",
            "3000",
            "--mmio",
            "200",
        ])
        .output()
        .expect("run kvmprof record");
    assert!(out.status.success(), "record failed: {}", stderr(&out));
    let counts: Value = serde_json::from_slice(&out.stdout).expect("test VMM counts");

    let r = report_json(&data, "reason");
    assert_eq!(r["lost"], 0);
    assert!(
        strings(&r["header"]["tracepoints"]).contains(&REFUSED_NOTE),
        "{}",
        r["header"]
    );
    // PVM shows only I/O and userspace exits, and the guest makes no other.
    if r["header"]["vendor"] == "pvm" {
        assert_eq!(
            r["total_exits"].as_u64(),
            Some(made(&counts["total"])),
            "{counts}"
        );
    }
    // Every PIO exit still carries its port, now read from the classic tracepoint's record;
    // (count, of which to the VMM) per port.
    let port = |addr: u64| {
        r["ports"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["addr"] == addr)
            .fold((0, 0), |(n, u), p| {
                (
                    n + p["count"].as_u64().unwrap(),
                    u + p["userspace"].as_u64().unwrap(),
                )
            })
    };
    let total = &counts["total"];
    let user = total["pio_user"].as_u64().unwrap();
    assert_eq!(port(PIO_USER_PORT), (user, user), "{}", r["ports"]);
    let kernel: u64 = counts["ports"]["pio_kernel"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let (n, u) = port(p.as_u64().unwrap());
            assert_eq!(u, 0, "in-kernel port {p} filed as to the VMM");
            n
        })
        .sum();
    assert_eq!(
        kernel,
        total["pio_kernel"].as_u64().unwrap(),
        "{}",
        r["ports"]
    );

    // The text report's hooks lines say so.
    let text = kvmprof_tests::kvmprof(&["report", "-i", data.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&format!("  {REFUSED_NOTE}")), "{text}");
}

#[test]
fn a_refused_classic_tracepoint_has_nothing_to_fall_back_to_and_fails_clearly() {
    let test = "a_refused_classic_tracepoint_has_nothing_to_fall_back_to_and_fails_clearly";
    if skip_without_kvm(test) {
        return;
    }
    let out = Command::new(bin("kvmprof"))
        .env("KVMPROF_REFUSE", "kvm_run_enter")
        .arg("probes")
        .output()
        .expect("run kvmprof probes");
    kvmprof_tests::assert_clean_error(
        &out,
        "tracepoint syscalls/sys_enter_ioctl refused: refused through KVMPROF_REFUSE",
    );
}
