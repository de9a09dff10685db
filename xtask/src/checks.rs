//! The checks `cargo xtask vmtest` runs inside the SVM VM, in table order.
//!
//! To add one, append a [`Check`] to [`checks`]: a name (also its file name in the results
//! directory, so keep it a plain word), a shell script, and a Rust function that judges what
//! the script printed on stdout. The script runs with `sh -e` in /run (tmpfs), with $KVMPROF
//! and $TESTVMM set to the host's release binaries and `kvm_amd` already loaded; a non-zero
//! exit fails the check with the last line of its stderr, before `verify` is called. Put
//! scratch files in /run, not on the 9p share (perf cannot mmap files there). A script that
//! needs several outputs judged together prints them as one JSON object.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use kvmprof_testvmm::Workload;
use serde_json::Value;

/// What a check left behind in the VM.
pub struct Captured {
    pub rc: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

pub struct Check {
    pub name: &'static str,
    pub script: String,
    pub verify: fn(&Captured) -> Result<()>,
}

/// vCPU `i` of the test VMM writes its in-kernel (ioeventfd) port `0x700 + i`.
const KERNEL_PORT_BASE: u64 = 0x700;

/// The test VMM workload the count checks run: per vCPU and round, so the expected totals are
/// these times `vcpus` (plus one `hlt` per vCPU that ends its single round).
const WORKLOAD: Workload = Workload {
    vcpus: 2,
    pio_user: 1000,
    pio_kernel: 5000,
    mmio_user: 300,
    pio_in: 100,
    ..Workload::IDLE
};

/// The test VMM's flags for [`WORKLOAD`].
fn workload_args() -> String {
    kvmprof_testvmm::cli::args(&WORKLOAD)
}

/// The totals the test VMM must report for `w`, by its JSON field names.
fn expected_totals(w: &Workload) -> [(&'static str, u64); 6] {
    let vcpus = u64::from(w.vcpus);
    [
        ("pio_user", w.pio_user * vcpus),
        ("pio_kernel", w.pio_kernel * vcpus),
        ("mmio_user", w.mmio_user * vcpus),
        ("pio_in", w.pio_in * vcpus),
        ("hlt", vcpus),
        ("other", 0),
    ]
}

pub fn checks() -> Vec<Check> {
    vec![
        Check {
            name: "svm",
            script: "grep -qw svm /proc/cpuinfo".into(),
            verify: ok,
        },
        Check {
            name: "kvm_amd",
            script: "grep -q '^kvm_amd ' /proc/modules\ntest -c /dev/kvm".into(),
            verify: ok,
        },
        Check {
            name: "kvm_exit_tracepoint",
            script: "cat /sys/kernel/tracing/events/kvm/kvm_exit/id".into(),
            verify: prints_number,
        },
        Check {
            name: "testvmm_counts",
            script: format!("\"$TESTVMM\" {}", workload_args()),
            verify: testvmm_counts,
        },
        Check {
            name: "perf_kvm_stat",
            script: perf_kvm_stat_script(),
            verify: perf_kvm_stat,
        },
        Check {
            name: "kvmprof_record_pid",
            script: kvmprof_script(Attach::Pid),
            verify: kvmprof_report,
        },
        Check {
            name: "kvmprof_record_cmd",
            script: kvmprof_script(Attach::Command),
            verify: kvmprof_report,
        },
        Check {
            name: "kvmprof_stage_nesting",
            script: nesting_script(),
            verify: stage_nesting,
        },
        Check {
            name: "kvmprof_fentry",
            script: btf_hooks_script("fentry"),
            verify: btf_hooks_record,
        },
        Check {
            name: "kvmprof_auto",
            script: btf_hooks_script("auto"),
            verify: btf_hooks_record,
        },
    ]
}

/// Records the workload with `--hooks <hooks>` (`fentry`, or `auto`, which must choose the
/// same here) and `--exits`. The command kvmprof starts (held until every hook is attached)
/// first asks the kernel what is attached where, then execs the test VMM: bpftool's programs,
/// links and BTF objects, and the BPF trampolines in kallsyms (`bpf_trampoline_<key>`, key =
/// BTF object id << 32 | function type id). Prints one JSON line (newlines of the pretty
/// parts removed) `{"vmm", "report", "progs", "links", "btf", "trampolines"}`, then every exit.
fn btf_hooks_script(hooks: &str) -> String {
    let dir = format!("/run/kvmprof-{hooks}");
    format!(
        "mkdir -p {dir}\n\
         \"$KVMPROF\" record --hooks {hooks} -o {dir}/k.data --exits {dir}/exits.jsonl -- sh -c '\
         bpftool prog show -j > {dir}/progs.json; bpftool link show -j > {dir}/links.json; \
         bpftool btf show -j > {dir}/btf.json; \
         grep -o \"bpf_trampoline_[0-9][0-9]*\" /proc/kallsyms > {dir}/trampolines || true; \
         exec \"$TESTVMM\" {args}' > {dir}/vmm.json\n\
         \"$KVMPROF\" report -i {dir}/k.data --format json > {dir}/report.json\n\
         printf '{{\"vmm\": %s, \"report\": %s, \"progs\": %s, \"links\": %s, \"btf\": %s, \"trampolines\": [%s]}}' \
         \"$(cat {dir}/vmm.json)\" \"$(cat {dir}/report.json)\" \"$(cat {dir}/progs.json)\" \
         \"$(cat {dir}/links.json)\" \"$(cat {dir}/btf.json)\" \
         \"$(sed 's/bpf_trampoline_\\(.*\\)/\"\\1\"/' {dir}/trampolines | paste -sd,)\" \
         | tr -d '\\n'\n\
         echo\n\
         cat {dir}/exits.jsonl\n",
        args = workload_args()
    )
}

/// The fentry/fexit programs the BTF modes must attach on this kernel, with the kernel's
/// attach type: vendor run = `svm_vcpu_run`, handler = `svm_handle_exit` (kvm_amd.ko), fast
/// PIO = `kvm_fast_pio` (kvm.ko).
const BTF_PROGRAMS: [(&str, &str); 6] = [
    ("fe_vendor_run", "trace_fentry"),
    ("fx_vendor_run", "trace_fexit"),
    ("fe_handler", "trace_fentry"),
    ("fx_handler", "trace_fexit"),
    ("fe_fast_pio", "trace_fentry"),
    ("fx_fast_pio", "trace_fexit"),
];

/// BPF trampolines per module BTF: two functions in kvm_amd, one in kvm (each trampoline
/// holds the fentry and the fexit program of its function).
const TRAMPOLINES: [(&str, usize); 2] = [("kvm_amd", 2), ("kvm", 1)];

/// fentry/fexit and tp_btf on module code: the kernel shows each program linked as planned,
/// its trampolines keyed by the modules' BTF objects, `kvm_exit` as a BTF tracepoint, no
/// kprobe program in use, and the recording passes the same checks as kprobe mode (exact
/// counts, lost 0, every io exit with all four stages nested).
fn btf_hooks_record(c: &Captured) -> Result<()> {
    let (first, rest) = c.stdout.split_once('\n').unwrap_or((&c.stdout, ""));
    let json = parse_json(first)?;
    btf_links(&json)?;
    report_matches(&json)?;
    nesting(rest)
}

fn btf_links(json: &Value) -> Result<()> {
    let list = |k: &str| json[k].as_array().cloned().unwrap_or_default();
    let (progs, links, btf) = (list("progs"), list("links"), list("btf"));
    let prog_name = |id: &Value| {
        progs
            .iter()
            .find(|p| &p["id"] == id)
            .and_then(|p| p["name"].as_str())
            .unwrap_or("")
            .to_string()
    };
    let link_of = |prog: &str| links.iter().find(|l| prog_name(&l["prog_id"]) == prog);
    let mut wrong = Vec::new();
    for (prog, attach) in BTF_PROGRAMS {
        match link_of(prog).map(|l| l["attach_type"].as_str().unwrap_or("?")) {
            None => wrong.push(format!("{prog} is not linked")),
            Some(got) if got != attach => wrong.push(format!("{prog}: {got}, expected {attach}")),
            Some(_) => {}
        }
    }
    match link_of("tpb_kvm_exit") {
        Some(l) if l["type"] == "raw_tracepoint" && l["tp_name"] == "kvm_exit" => {}
        Some(l) => wrong.push(format!("tpb_kvm_exit linked as {l}")),
        None => wrong.push("tpb_kvm_exit (tp_btf kvm_exit) is not linked".into()),
    }
    let btf_name = |obj: u64| {
        btf.iter()
            .find(|b| b["id"].as_u64() == Some(obj))
            .and_then(|b| b["name"].as_str())
            .unwrap_or("?")
            .to_string()
    };
    let homes: Vec<String> = list("trampolines")
        .iter()
        .filter_map(|k| k.as_str()?.parse::<u64>().ok())
        .map(|key| btf_name(key >> 32))
        .collect();
    for (module, want) in TRAMPOLINES {
        let got = homes.iter().filter(|h| *h == module).count();
        if got != want {
            wrong.push(format!(
                "{got} trampolines on {module} BTF, expected {want} (all: {homes:?})"
            ));
        }
    }
    let kprobes: Vec<String> = progs
        .iter()
        .filter_map(|p| p["name"].as_str())
        .filter(|n| n.starts_with("kp_") || n.starts_with("krp_"))
        .map(str::to_string)
        .collect();
    if !kprobes.is_empty() {
        wrong.push(format!("kprobe programs loaded: {}", kprobes.join(", ")));
    }
    ensure!(wrong.is_empty(), "BTF hooks: {}", wrong.join("; "));
    Ok(())
}

/// Records the workload with `--exits` and prints every exit (JSON Lines): the stages of
/// each single exit are judged, not just their distributions.
fn nesting_script() -> String {
    format!(
        "mkdir -p /run/nesting\n\
         \"$KVMPROF\" record --hooks kprobe -o /run/nesting/k.data --exits /run/nesting/exits.jsonl \
         -- \"$TESTVMM\" {} > /dev/null\n\
         cat /run/nesting/exits.jsonl\n",
        workload_args()
    )
}

/// SVM exit code of an I/O intercept.
const SVM_EXIT_IO: u64 = 0x7b;

/// Every SVM `io` exit has all four stages, and they nest as in the seed traces:
/// fast PIO <= handler, vendor run + handler <= cycle. A stage hook removed, or its entry and
/// return swapped, breaks this for every exit.
fn stage_nesting(c: &Captured) -> Result<()> {
    nesting(&c.stdout)
}

/// [`stage_nesting`] on `--exits` JSON Lines.
fn nesting(exits: &str) -> Result<()> {
    let w = &WORKLOAD;
    let mut io = 0u64;
    for (n, line) in exits.lines().enumerate() {
        let e: Value = serde_json::from_str(line).with_context(|| format!("exit line {n}"))?;
        if e["reason"]["space"] != "svm" || e["reason"]["code"] != SVM_EXIT_IO {
            continue;
        }
        io += 1;
        let stage = |name: &str| e["stages"][name].as_u64();
        let (Some(cycle), Some(run), Some(handler), Some(fast)) = (
            stage("cycle"),
            stage("vendor_run"),
            stage("handler"),
            stage("fast_pio"),
        ) else {
            anyhow::bail!("io exit {n} lacks a stage: {e}");
        };
        ensure!(
            fast <= handler && run + handler <= cycle,
            "io exit {n}: stages do not nest (cycle {cycle}, vendor run {run}, handler {handler}, fast PIO {fast})"
        );
    }
    let want = (w.pio_user + w.pio_kernel + w.pio_in) * u64::from(w.vcpus);
    ensure!(io == want, "{io} io exits, expected {want}");
    Ok(())
}

/// `perf kvm stat`, the reference tool, on the same workload: the anchor that says the VM's
/// exits are countable exactly, so kvmprof has to match it. Its data file must be on tmpfs;
/// it prints its tables on stderr.
fn perf_kvm_stat_script() -> String {
    format!(
        "mkdir -p /run/perf\n\
         perf kvm -o /run/perf/perf.data stat record -- \"$TESTVMM\" {} > /run/perf/vmm.json\n\
         perf kvm -i /run/perf/perf.data stat report 2>&1\n\
         perf kvm -i /run/perf/perf.data stat report --event ioport 2>&1\n",
        workload_args()
    )
}

/// How `kvmprof record` finds the VMM.
enum Attach {
    /// `--pid` on the running VMM, which waits long enough for kvmprof to attach even under TCG
    /// (about 2 s there).
    Pid,
    /// `-- CMD`: kvmprof starts the VMM, held until every hook is attached.
    Command,
}

/// Records the workload with kvmprof on kprobes (the hooks this kernel offers beyond
/// tracepoints) and prints `{"vmm": <test VMM counts>, "report": <report --format json>}`.
fn kvmprof_script(attach: Attach) -> String {
    let dir = match attach {
        Attach::Pid => "/run/kvmprof-pid",
        Attach::Command => "/run/kvmprof-cmd",
    };
    let record = match attach {
        Attach::Pid => format!(
            "\"$TESTVMM\" {args} --start-delay 5s > {dir}/vmm.json &\n\
             vmm=$!\n\
             \"$KVMPROF\" record --hooks kprobe --pid \"$vmm\" -o {dir}/k.data >&2\n\
             wait \"$vmm\"\n",
            args = workload_args()
        ),
        Attach::Command => format!(
            "\"$KVMPROF\" record --hooks kprobe -o {dir}/k.data -- \"$TESTVMM\" {args} > {dir}/vmm.json\n",
            args = workload_args()
        ),
    };
    format!(
        "mkdir -p {dir}\n\
         {record}\
         \"$KVMPROF\" report -i {dir}/k.data --format json > {dir}/report.json\n\
         printf '{{\"vmm\": %s, \"report\": %s}}\\n' \"$(cat {dir}/vmm.json)\" \"$(cat {dir}/report.json)\"\n"
    )
}

/// For checks whose exit code says it all.
fn ok(_: &Captured) -> Result<()> {
    Ok(())
}

fn prints_number(c: &Captured) -> Result<()> {
    let text = c.stdout.trim();
    text.parse::<u64>()
        .map(|_| ())
        .with_context(|| format!("expected a number, got {text:?}"))
}

fn testvmm_counts(c: &Captured) -> Result<()> {
    let json = parse_json(&c.stdout)?;
    expect_counts(&json["total"], &expected_totals(&WORKLOAD), "testvmm total")
}

/// perf's summary has one row per exit reason (`io  12200  94.76% ...`) and, with
/// `--event ioport`, one per port (`0x3f8:POUT  2000 ...`): the sample counts must be exact.
fn perf_kvm_stat(c: &Captured) -> Result<()> {
    let w = &WORKLOAD;
    let samples = |row: &str| -> Option<u64> {
        c.stdout.lines().find_map(|l| {
            let mut cols = l.split_whitespace();
            (cols.next() == Some(row)).then(|| cols.next()?.parse().ok())?
        })
    };
    let mut expected = vec![
        (
            "io".to_string(),
            (w.pio_user + w.pio_kernel + w.pio_in) * u64::from(w.vcpus),
        ),
        ("0x3f8:POUT".to_string(), w.pio_user * u64::from(w.vcpus)),
        ("0x3fd:PIN".to_string(), w.pio_in * u64::from(w.vcpus)),
    ];
    for vcpu in 0..u64::from(w.vcpus) {
        expected.push((format!("{:#x}:POUT", KERNEL_PORT_BASE + vcpu), w.pio_kernel));
    }
    let wrong: Vec<String> = expected
        .iter()
        .filter_map(|(row, want)| match samples(row) {
            Some(got) if got == *want => None,
            Some(got) => Some(format!("{row} = {got}, expected {want}")),
            None => Some(format!("no {row} row, expected {want}")),
        })
        .collect();
    ensure!(wrong.is_empty(), "perf kvm stat: {}", wrong.join("; "));
    Ok(())
}

/// kvmprof must see exactly the exits the test VMM made: per exit reason `io` (user and
/// ioeventfd PIO together) and `hlt`, per port and direction, with none lost and with latency
/// percentiles for the io exits. (`npf` also counts the guest's other nested page faults, so
/// MMIO is checked by address only.)
fn kvmprof_report(c: &Captured) -> Result<()> {
    report_matches(&parse_json(&c.stdout)?)
}

/// [`kvmprof_report`] on `{"vmm": ..., "report": ...}`.
fn report_matches(json: &Value) -> Result<()> {
    let (vmm, report) = (&json["vmm"], &json["report"]);
    expect_counts(&vmm["total"], &expected_totals(&WORKLOAD), "testvmm total")?;
    let w = &WORKLOAD;
    expect_counts(report, &[("lost", 0)], "report")?;

    let groups = report["groups"]
        .as_array()
        .context("report has no groups")?;
    let io = groups
        .iter()
        .find(|g| g["label"] == "io")
        .context("report has no io group")?;
    expect_counts(
        io,
        &[
            (
                "count",
                (w.pio_user + w.pio_kernel + w.pio_in) * u64::from(w.vcpus),
            ),
            ("userspace", (w.pio_user + w.pio_in) * u64::from(w.vcpus)),
        ],
        "report io group",
    )?;
    let hlt = groups
        .iter()
        .find(|g| g["label"] == "hlt")
        .context("report has no hlt group")?;
    expect_counts(hlt, &[("count", u64::from(w.vcpus))], "report hlt group")?;
    let stages = io["stages"].as_array().context("io group has no stages")?;
    ensure!(!stages.is_empty(), "io group: no stage was measured");
    for s in stages {
        let q = |k: &str| s[k].as_u64().unwrap_or(0);
        ensure!(
            q("samples") > 0 && q("p50_ns") <= q("p99_ns") && q("p99_ns") <= q("max_ns"),
            "io stage {}: samples/percentiles out of order: {s}",
            s["stage"]
        );
    }

    // Port rows may be split by reason; add them up per (space, address, direction).
    let ports = report["ports"].as_array().context("report has no ports")?;
    let port_count = |space: &str, addr: u64, write: bool, field: &str| -> u64 {
        ports
            .iter()
            .filter(|p| p["space"] == space && p["addr"] == addr && p["write"] == write)
            .filter_map(|p| p[field].as_u64())
            .sum()
    };
    let mut expected = vec![
        (
            "0x3f8 out",
            port_count("pio", 0x3f8, true, "count"),
            w.pio_user * u64::from(w.vcpus),
        ),
        (
            "0x3fd in",
            port_count("pio", 0x3fd, false, "count"),
            w.pio_in * u64::from(w.vcpus),
        ),
        (
            "mmio 0xd0000 write",
            port_count("mmio", 0xd0000, true, "count"),
            w.mmio_user * u64::from(w.vcpus),
        ),
    ];
    for vcpu in 0..u64::from(w.vcpus) {
        let port = KERNEL_PORT_BASE + vcpu;
        expected.push((
            "ioeventfd port out",
            port_count("pio", port, true, "count"),
            w.pio_kernel,
        ));
        expected.push((
            "ioeventfd port to userspace",
            port_count("pio", port, true, "userspace"),
            0,
        ));
    }
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(_, got, want)| got != want)
        .map(|(what, got, want)| format!("{what} = {got}, expected {want}"))
        .collect();
    ensure!(wrong.is_empty(), "report ports: {}", wrong.join("; "));
    Ok(())
}

fn parse_json(stdout: &str) -> Result<Value> {
    serde_json::from_str(stdout.trim()).with_context(|| {
        let head: String = stdout.chars().take(200).collect();
        format!("stdout is not JSON: {head:?}")
    })
}

/// Every named field of `obj` must hold exactly the expected number.
fn expect_counts(obj: &Value, expected: &[(&str, u64)], what: &str) -> Result<()> {
    let wrong: Vec<String> = expected
        .iter()
        .filter_map(|&(field, want)| {
            let got = obj.get(field).and_then(Value::as_u64);
            (got != Some(want)).then(|| match got {
                Some(got) => format!("{field} = {got}, expected {want}"),
                None => format!("{field} missing, expected {want}"),
            })
        })
        .collect();
    ensure!(wrong.is_empty(), "{what}: {}", wrong.join("; "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_must_match_exactly() {
        let obj: Value = serde_json::json!({"pio_user": 10, "hlt": 1});
        assert!(expect_counts(&obj, &[("pio_user", 10), ("hlt", 1)], "t").is_ok());
        let err = expect_counts(&obj, &[("pio_user", 11), ("mmio_user", 0)], "t").unwrap_err();
        assert_eq!(
            err.to_string(),
            "t: pio_user = 10, expected 11; mmio_user missing, expected 0"
        );
    }

    fn captured(stdout: &str) -> Captured {
        Captured {
            rc: 0,
            stdout: stdout.to_string(),
            stderr: String::new(),
            elapsed: Duration::ZERO,
        }
    }

    /// The two tables as `perf kvm stat report` printed them for WORKLOAD in the VM.
    const PERF_OUTPUT: &str = "
             VM-EXIT    Samples  Samples%     Time%    Min Time    Max Time         Avg time

                  io      12200    94.76%    81.51%      0.00us  15295.33us     29.53us ( +-   7.91% )
                 npf        603     4.68%    14.12%      0.00us  10298.25us    103.52us ( +-  26.50% )

      IO Port Access    Samples  Samples%     Time%    Min Time    Max Time         Avg time

          0x700:POUT       5000    40.98%    21.61%      0.00us   9076.08us     12.09us ( +-  17.98% )
          0x701:POUT       5000    40.98%    31.51%      0.00us  15287.48us     17.63us ( +-  26.60% )
          0x3f8:POUT       2000    16.39%    45.76%      0.00us   4823.53us     64.01us ( +-   7.36% )
           0x3fd:PIN        200     1.64%     1.12%      6.41us   1011.59us     15.72us ( +-  33.55% )
";

    #[test]
    fn perf_tables_are_read_by_row_name() {
        assert!(perf_kvm_stat(&captured(PERF_OUTPUT)).is_ok());
        let short = PERF_OUTPUT.replace("0x701:POUT       5000", "0x701:POUT       4999");
        let err = perf_kvm_stat(&captured(&short)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "perf kvm stat: 0x701:POUT = 4999, expected 5000"
        );
    }

    /// A report as `kvmprof report --format json` shapes it, with WORKLOAD's exits.
    fn report_output(port_0x3f8: u64) -> String {
        let port = |space: &str, addr: u64, write: bool, count: u64, userspace: u64| {
            serde_json::json!({"pid": 7, "space": space, "addr": addr, "write": write,
                "reason_name": "io", "count": count, "userspace": userspace})
        };
        serde_json::json!({
            "vmm": {"total": {"pio_user": 2000, "pio_kernel": 10000, "mmio_user": 600,
                "pio_in": 200, "hlt": 2, "other": 0}},
            "report": {
                "total_exits": 12832, "lost": 0,
                "groups": [{"label": "io", "count": 12200, "userspace": 2200, "stages": [
                    {"stage": "cycle", "samples": 12200, "p50_ns": 900, "p99_ns": 5000,
                     "max_ns": 90000}]},
                    {"label": "hlt", "count": 2, "userspace": 2, "stages": []}],
                "ports": [port("pio", 0x700, true, 5000, 0), port("pio", 0x701, true, 5000, 0),
                    port("pio", 0x3f8, true, port_0x3f8, port_0x3f8),
                    port("pio", 0x3fd, false, 200, 200), port("mmio", 0xd0000, true, 600, 600)],
            }
        })
        .to_string()
    }

    #[test]
    fn kvmprof_report_must_match_the_vmm() {
        assert!(kvmprof_report(&captured(&report_output(2000))).is_ok());
        let err = kvmprof_report(&captured(&report_output(1999))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "report ports: 0x3f8 out = 1999, expected 2000"
        );
    }

    #[test]
    fn btf_hooks_script_is_valid_shell() {
        let script = btf_hooks_script("fentry");
        let out = std::process::Command::new("sh")
            .args(["-n", "-c", &script])
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}\n{out:?}");
    }

    /// What the kernel shows while kvmprof runs in fentry mode in the SVM VM (bpftool 7.1
    /// field names; here the kvm BTF object is 2 and kvm_amd's is 3).
    fn btf_view(unlinked: &str) -> Value {
        let mut progs = vec![];
        let mut links = vec![];
        for (i, (name, attach)) in BTF_PROGRAMS.iter().enumerate() {
            progs.push(serde_json::json!({"id": 20 + i, "type": "tracing", "name": name}));
            if *name != unlinked {
                links.push(serde_json::json!({"id": 10 + i, "type": "tracing",
                    "prog_id": 20 + i, "prog_type": "tracing", "attach_type": attach}));
            }
        }
        progs.push(serde_json::json!({"id": 30, "type": "tracing", "name": "tpb_kvm_exit"}));
        links.push(
            serde_json::json!({"id": 9, "type": "raw_tracepoint", "prog_id": 30,
            "tp_name": "kvm_exit"}),
        );
        let key = |obj: u64, ty: u64| ((obj << 32) | ty).to_string();
        serde_json::json!({
            "progs": progs,
            "links": links,
            "btf": [{"id": 1, "name": "vmlinux"}, {"id": 2, "name": "kvm"},
                {"id": 3, "name": "kvm_amd"}],
            "trampolines": [key(3, 70000), key(3, 70010), key(2, 64000)],
        })
    }

    #[test]
    fn btf_hooks_must_be_linked_with_trampolines_on_the_module_btf() {
        assert!(btf_links(&btf_view("")).is_ok());
        let err = btf_links(&btf_view("fx_handler")).unwrap_err();
        assert_eq!(err.to_string(), "BTF hooks: fx_handler is not linked");
        // A trampoline on a vmlinux function instead of kvm_fast_pio in kvm.ko.
        let mut v = btf_view("");
        v["trampolines"][2] = Value::String(((1u64 << 32) | 5).to_string());
        let err = btf_links(&v).unwrap_err().to_string();
        assert!(
            err.contains("0 trampolines on kvm BTF, expected 1"),
            "{err}"
        );
    }

    #[test]
    fn check_names_are_unique_file_names() {
        let list = checks();
        for (i, c) in list.iter().enumerate() {
            assert!(c
                .name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_'));
            assert!(list[..i].iter().all(|o| o.name != c.name), "{}", c.name);
        }
    }
}
