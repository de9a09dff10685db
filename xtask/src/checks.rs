//! The checks `cargo xtask vmtest` runs inside each VM of its matrix, in table order.
//!
//! To add one, append a [`Check`] to [`checks`]: a name (also its file name in the results
//! directory, so keep it a plain word), a shell script, and a Rust function that judges what
//! the script printed on stdout. A kvmprof check is made once per hook mode ([`Hooks`]) and
//! runs in the same boot as the others. The script runs with `sh -e` in a tmpfs directory,
//! with $KVMPROF and $TESTVMM set to the release binaries and the vendor's KVM module
//! loaded; a non-zero exit fails the check with the last line of its stderr, before `verify`
//! is called, except [`SKIP_RC`], which skips it with the last line of its stdout as the
//! reason. Put scratch files in /run, not on the SVM VM's 9p share (perf cannot mmap files
//! there). A script that needs several outputs judged together prints them as one JSON object.
//!
//! kvmprof's counts are held to what the test VMM says it made (its JSON on stdout), not to
//! the planned workload: under TCG a nested vCPU has been seen to end early, and only the
//! VMM's own counts tell an exit kvmprof lost from one the guest never made.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use kvmprof_testvmm::{
    Counts, ExitCounts, VcpuCounts, Workload, PIO_IN_PORT, PIO_KERNEL_PORT_BASE, PIO_USER_PORT,
};
use serde_json::Value;

/// What a check left behind in the VM.
pub struct Captured {
    pub rc: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Lines a passing check must show in the log beside its PASS, e.g. that the test VMM fell
/// short of its plan, so a shortfall is never hidden by a check that passes.
pub type Notes = Vec<String>;

/// The exit code with which a script says its check cannot run here (e.g. no `perf` in the
/// Bochs initramfs); its last stdout line says why.
pub const SKIP_RC: i32 = 77;

/// The hardware virtualisation the VM's kernel runs guests with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    Svm,
    Vmx,
}

impl Vendor {
    /// The CPU flag in /proc/cpuinfo and the vendor part of KVM's function names.
    pub fn flag(self) -> &'static str {
        match self {
            Vendor::Svm => "svm",
            Vendor::Vmx => "vmx",
        }
    }

    /// The vendor module, as /proc/modules and BTF name it.
    pub fn module(self) -> &'static str {
        match self {
            Vendor::Svm => "kvm_amd",
            Vendor::Vmx => "kvm_intel",
        }
    }

    /// The exit reason of a port I/O intercept: kvmprof's reason space and code.
    fn io_reason(self) -> (&'static str, u64) {
        match self {
            Vendor::Svm => ("svm", 0x7b),
            Vendor::Vmx => ("vmx", 30),
        }
    }

    /// kvmprof's group labels (the kernel's exit-reason names) for port I/O and `hlt`.
    pub(crate) fn io_label(self) -> &'static str {
        match self {
            Vendor::Svm => "io",
            Vendor::Vmx => "IO_INSTRUCTION",
        }
    }

    pub(crate) fn hlt_label(self) -> &'static str {
        match self {
            Vendor::Svm => "hlt",
            Vendor::Vmx => "HLT",
        }
    }
}

/// kvmprof's `--hooks` modes the matrix runs: `auto` (what a user gets) and `kprobe`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Hooks {
    Auto,
    Kprobe,
}

impl Hooks {
    pub const ALL: [Hooks; 2] = [Hooks::Auto, Hooks::Kprobe];

    pub fn as_str(self) -> &'static str {
        match self {
            Hooks::Auto => "auto",
            Hooks::Kprobe => "kprobe",
        }
    }
}

impl fmt::Display for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub struct Check {
    pub name: &'static str,
    /// The hook mode of a kvmprof check; `None` for a check of the VM itself.
    pub hooks: Option<Hooks>,
    pub vendor: Vendor,
    pub script: String,
    pub verify: fn(&Check, &Captured) -> Result<Notes>,
}

impl Check {
    /// The name with the hook mode, as the log says it and as its files are named.
    pub fn label(&self) -> String {
        match self.hooks {
            Some(h) => format!("{}_{h}", self.name),
            None => self.name.to_string(),
        }
    }
}

/// The test VMM workload the count checks run: per vCPU and round, so the expected totals are
/// these times `vcpus` (plus one `hlt` per vCPU that ends its single round). Small enough for
/// Bochs (about 10k userspace exits/s there): 2800 userspace exits and 10000 in-kernel ones.
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

/// Every check for a VM of `vendor`: those of the VM itself once, the kvmprof ones once per
/// hook mode (all in one boot).
pub fn checks(vendor: Vendor) -> Vec<Check> {
    let check = |name, hooks, script, verify| Check {
        name,
        hooks,
        vendor,
        script,
        verify,
    };
    let mut list = vec![
        check(
            vendor.flag(),
            None,
            format!("grep -qw {} /proc/cpuinfo", vendor.flag()),
            ok,
        ),
        check(
            vendor.module(),
            None,
            format!(
                "grep -q '^{} ' /proc/modules\ntest -c /dev/kvm",
                vendor.module()
            ),
            ok,
        ),
        check(
            "kvm_exit_tracepoint",
            None,
            "cat /sys/kernel/tracing/events/kvm/kvm_exit/id".into(),
            prints_number,
        ),
        check(
            "testvmm_counts",
            None,
            format!("\"$TESTVMM\" {}", workload_args()),
            testvmm_counts,
        ),
        check("perf_kvm_stat", None, perf_kvm_stat_script(), perf_kvm_stat),
    ];
    for hooks in Hooks::ALL {
        list.extend([
            check(
                "kvmprof_record_pid",
                Some(hooks),
                kvmprof_script(Attach::Pid, hooks),
                refused_entry_falls_back,
            ),
            check(
                "kvmprof_record_cmd",
                Some(hooks),
                kvmprof_script(Attach::Command, hooks),
                default_level,
            ),
            check(
                "kvmprof_exits",
                Some(hooks),
                exits_script(hooks),
                every_exit,
            ),
            check(
                "kvmprof_device",
                Some(hooks),
                crate::check_device::script(hooks),
                crate::check_device::verify,
            ),
            check(
                "kvmprof_recycle",
                Some(hooks),
                recycle_script(hooks),
                recycled,
            ),
            check(
                "kvmprof_detail",
                Some(hooks),
                crate::check_detail::script(hooks),
                crate::check_detail::verify,
            ),
            check(
                "kvmprof_func",
                Some(hooks),
                crate::check_func::script(hooks),
                crate::check_func::verify,
            ),
            check(
                "kvmprof_detail_top",
                Some(hooks),
                crate::check_detail::top_script(hooks),
                crate::check_detail::verify_top,
            ),
        ]);
    }
    list.push(check(
        "kvmprof_funcs",
        None,
        crate::check_funcs::script(vendor),
        crate::check_funcs::verify,
    ));
    list.push(check(
        "kvmprof_serve_detail",
        None,
        crate::check_serve_detail::script(),
        crate::check_serve_detail::verify,
    ));
    list.push(check(
        "kvmprof_xen_hypercalls",
        None,
        crate::check_hypercall_abi::script(kvmprof_testvmm::HypercallAbi::Xen),
        crate::check_hypercall_abi::verify_xen,
    ));
    list.push(check(
        "kvmprof_hv_hypercalls",
        None,
        crate::check_hypercall_abi::script(kvmprof_testvmm::HypercallAbi::Hyperv),
        crate::check_hypercall_abi::verify_hyperv,
    ));
    list.push(check("kvm_stats", None, kvm_stats_script(), kvm_stats));
    list.push(check(
        "kvmprof_halts",
        None,
        crate::check_halts::script(),
        crate::check_halts::verify,
    ));
    list
}

/// Records a running test VMM (`--pid`, 4 s) whose every PIO exit goes to the VMM and is
/// logged with its time (`--exit-log`), then stops it; prints `{"report", "pio_returns"}`:
/// the report (its header holds the window) and the return times of the logged PIO exits.
/// Skipped on Intel VMX for now: in the first CI run of the matrix (2026-12-02), KVM's
/// `io_exits` there ran 71-107 above the 401 PIO exits the test VMM made in the window, on
/// 6.1 and 6.12 alike, while every kvmprof check held kvmprof to the VMM's own counts; why
/// KVM counts more there is not yet known, so the oracle is not trusted on that backend.
fn kvm_stats_script() -> String {
    let dir = "/run/kvmprof-kvmstats";
    format!(
        "grep -qw vmx /proc/cpuinfo && {{ echo 'on VMX KVM io_exits exceed the PIO exits made (not understood yet)'; exit {SKIP_RC}; }}\n\
         mkdir -p {dir}\n\
         \"$TESTVMM\" --vcpus 1 --pio-user 1 --rate 200 --forever --exit-log {dir}/exits.log \
         > {dir}/vmm.json &\n\
         vmm=$!\n\
         \"$KVMPROF\" record --hooks kprobe --pid \"$vmm\" -d 4s -o {dir}/k.data >&2\n\
         kill -TERM \"$vmm\"\n\
         wait \"$vmm\"\n\
         \"$KVMPROF\" report -i {dir}/k.data --format json > {dir}/report.json\n\
         pio=$(awk '$4 == \"pio_user\" {{ printf \"%s%s\", sep, $3; sep = \",\" }}' {dir}/exits.log)\n\
         printf '{{\"report\": %s, \"pio_returns\": [%s]}}\\n' \"$(cat {dir}/report.json)\" \"$pio\"\n"
    )
}

/// Exits KVM may count that the window does not hold, or the reverse, at each edge: the
/// counters are read just after the window opens and just after it closes.
const KVM_STATS_EDGE: u64 = 2;

/// KVM's `exits` against kvmprof's total: under TCG reading a VM's ~60 counters takes tens
/// of milliseconds, in which the guest's timer exits go on (seen: 801 against 808, 809
/// against 812), so the edge is a share of the total.
const KVM_STATS_EXITS_EDGE_PERCENT: u64 = 2;

/// KVM's own counts over the window (`kvm_stats` in the report) against the test VMM's log
/// and kvmprof: `io_exits` equal to the PIO exits the VMM saw return inside the window, and
/// `exits` equal to kvmprof's total, each within the window's edges.
fn kvm_stats(_: &Check, c: &Captured) -> Result<Notes> {
    let json = parse_json(&c.stdout)?;
    let report = &json["report"];
    let stats = &report["kvm_stats"];
    ensure!(
        stats.is_object(),
        "no kvm_stats in the report: {}",
        report["header"]["kvm_stats"]
    );
    let header = &report["header"];
    let start = header["start_ts_ns"].as_u64().context("no start_ts_ns")?;
    let stop = start + header["duration_ns"].as_u64().context("no duration_ns")?;
    let pio_made = json["pio_returns"]
        .as_array()
        .context("no PIO exits logged")?
        .iter()
        .filter_map(Value::as_u64)
        .filter(|&t| (start..stop).contains(&t))
        .count() as u64;
    let number = |v: &Value, what: &str| v.as_u64().with_context(|| format!("no {what}"));
    let io_exits = number(&stats["io_exits"], "kvm_stats.io_exits")?;
    let exits = number(&stats["exits"], "kvm_stats.exits")?;
    let total = number(&report["total_exits"], "total_exits")?;
    let within = |a: u64, b: u64| a.abs_diff(b) <= 2 * KVM_STATS_EDGE;
    let exits_edge = (total * KVM_STATS_EXITS_EDGE_PERCENT / 100).max(2 * KVM_STATS_EDGE);
    ensure!(pio_made > 100, "only {pio_made} PIO exits in the window");
    ensure!(
        within(io_exits, pio_made),
        "KVM's io_exits {io_exits}, the test VMM made {pio_made} PIO exits in the window"
    );
    ensure!(
        exits.abs_diff(total) <= exits_edge,
        "KVM's exits {exits}, kvmprof counted {total} (more apart than {exits_edge})"
    );
    Ok(vec![format!(
        "KVM io_exits {io_exits} / test VMM PIO exits {pio_made}; KVM exits {exits} / kvmprof {total}"
    )])
}

/// Records the workload with `--hooks <hooks>` and `--exits`. The command kvmprof starts (held
/// until every hook is attached) first asks the kernel what is attached where, then execs the
/// test VMM: bpftool's programs, links and BTF objects, and the BPF trampolines in kallsyms
/// (`bpf_trampoline_<key>`, key = BTF object id << 32 | function type id). Prints one JSON
/// line (newlines of the pretty parts removed) `{"vmm", "report", "progs", "links", "btf",
/// "trampolines"}`, then every exit.
fn exits_script(hooks: Hooks) -> String {
    let dir = format!("/run/kvmprof-exits-{hooks}");
    format!(
        "mkdir -p {dir}\n\
         \"$KVMPROF\" record --hooks {hooks} --stages -o {dir}/k.data --exits {dir}/exits.jsonl -- sh -c '\
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

/// The fentry/fexit programs `auto --stages` must attach where the kernel allows them, with
/// the kernel's attach type: vendor run = `svm_vcpu_run`/`vmx_vcpu_run` (its fexit reads the
/// exit reason), handler = `svm_handle_exit`/`vmx_handle_exit` (the vendor module), fast PIO
/// = `kvm_fast_pio` and KVM_RUN's entry = `kvm_arch_vcpu_ioctl_run` (kvm.ko).
const BTF_PROGRAMS: [(&str, &str); 7] = [
    ("fe_kvm_run", "trace_fentry"),
    ("fe_vendor_run", "trace_fentry"),
    ("fx_run_reason", "trace_fexit"),
    ("fe_handler", "trace_fentry"),
    ("fx_handler", "trace_fexit"),
    ("fe_fast_pio", "trace_fentry"),
    ("fx_fast_pio", "trace_fexit"),
];

/// The kprobe/kretprobe programs of the same stages, which `--hooks kprobe` must load instead.
const KPROBE_PROGRAMS: [&str; 6] = [
    "kp_vendor_run",
    "krp_vendor_run",
    "kp_handler",
    "krp_handler",
    "kp_fast_pio",
    "krp_fast_pio",
];

/// Every exit recorded one by one (`--exits`): the hooks the mode must choose are the ones the
/// kernel shows, and the recording passes the same checks as the tallied ones (exact counts,
/// lost 0) plus every io exit with all four stages nested.
fn every_exit(check: &Check, c: &Captured) -> Result<Notes> {
    let (first, rest) = first_line(&c.stdout);
    let json = parse_json(first)?;
    match check.hooks {
        Some(Hooks::Kprobe) => kprobe_links(&json)?,
        _ => btf_links(&json, check.vendor)?,
    }
    let made = Made::read(&json["vmm"])?;
    made.judged(
        report_matches(&json["report"], &made.counts, check.vendor)
            .and_then(|()| nesting(rest, &made.counts, check.vendor)),
    )
}

/// A script's first line (one JSON object) and the lines after it.
fn first_line(stdout: &str) -> (&str, &str) {
    stdout.split_once('\n').unwrap_or((stdout, ""))
}

/// The names of the programs loaded while kvmprof ran.
fn prog_names(json: &Value) -> Vec<String> {
    json["progs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .map(str::to_string)
        .collect()
}

/// `--hooks kprobe`: every stage on a kprobe pair, no BTF program at all.
fn kprobe_links(json: &Value) -> Result<()> {
    let names = prog_names(json);
    let mut wrong: Vec<String> = KPROBE_PROGRAMS
        .iter()
        .filter(|k| !names.iter().any(|n| n == *k))
        .map(|k| format!("{k} is not loaded"))
        .collect();
    let btf: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("fe_") || n.starts_with("fx_") || n.starts_with("tpb_"))
        .collect();
    if !btf.is_empty() {
        wrong.push(format!("BTF programs loaded: {btf:?}"));
    }
    ensure!(wrong.is_empty(), "kprobe hooks: {}", wrong.join("; "));
    Ok(())
}

fn btf_links(json: &Value, vendor: Vendor) -> Result<()> {
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
    if let Some(l) = link_of("tpb_kvm_exit") {
        wrong.push(format!(
            "tpb_kvm_exit linked as {l}, though fx_run_reason reads the exit reason"
        ));
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
    // Two functions in the vendor module, two in kvm (`kvm_fast_pio` and
    // `kvm_arch_vcpu_ioctl_run`; each trampoline holds the programs on its function).
    for (module, want) in [(vendor.module(), 2), ("kvm", 2)] {
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

/// Every io exit of `--exits` JSON Lines has all four stages, and they nest as in the
/// reference captures: fast PIO <= handler, vendor run + handler <= cycle. A stage hook
/// removed, or its entry and return swapped, breaks this for every exit. Each vCPU thread has
/// exactly the io exits the test VMM (`made`) says that vCPU made.
fn nesting(exits: &str, made: &Counts, vendor: Vendor) -> Result<()> {
    let (space, code) = vendor.io_reason();
    let mut io_by_tid: BTreeMap<i64, u64> = BTreeMap::new();
    for (n, line) in exits.lines().enumerate() {
        let e: Value = serde_json::from_str(line).with_context(|| format!("exit line {n}"))?;
        if e["reason"]["space"] != space || e["reason"]["code"] != code {
            continue;
        }
        let tid = e["tid"]
            .as_i64()
            .with_context(|| format!("exit line {n} has no tid"))?;
        *io_by_tid.entry(tid).or_default() += 1;
        let stage = |name: &str| e["stages"][name].as_u64();
        let (Some(cycle), Some(run), Some(handler), Some(fast)) = (
            stage("cycle"),
            stage("vendor_run"),
            stage("handler"),
            stage("fast_pio"),
        ) else {
            bail!("io exit {n} lacks a stage: {e}");
        };
        ensure!(
            fast <= handler && run + handler <= cycle,
            "io exit {n}: stages do not nest (cycle {cycle}, vendor run {run}, handler {handler}, fast PIO {fast})"
        );
    }
    let mut wrong = Vec::new();
    for v in &made.vcpus {
        let got = io_by_tid.remove(&i64::from(v.tid)).unwrap_or(0);
        let want = io_exits(v);
        if got != want {
            wrong.push(format!(
                "vCPU {} (tid {}): {got}, the test VMM made {want}",
                v.index, v.tid
            ));
        }
    }
    for (tid, got) in io_by_tid {
        wrong.push(format!("tid {tid}, not a vCPU of the test VMM: {got}"));
    }
    ensure!(wrong.is_empty(), "io exits: {}", wrong.join("; "));
    Ok(())
}

/// `perf kvm stat`, the reference tool, on the same workload: the anchor that says the VM's
/// exits are countable exactly, so kvmprof has to match it. Its data file must be on tmpfs;
/// it prints its tables on stderr. Skipped where there is no perf (the Bochs initramfs holds
/// only what the checks need, and perf with its libraries would double its size), and where
/// perf is of another series than the kernel: Debian 12's perf is 6.1, and on 6.12 its
/// `perf kvm stat record` hangs (seen in the SVM VM: a 100-exit guest not done after 120 s,
/// 77 s of system time, while `perf stat -e kvm:kvm_exit` on it takes 1.3 s).
fn perf_kvm_stat_script() -> String {
    format!(
        "command -v perf > /dev/null || {{ echo 'no perf in this VM'; exit {SKIP_RC}; }}\n\
         pv=$(perf --version | sed 's/^perf version \\([0-9]*\\.[0-9]*\\).*/\\1/')\n\
         kv=$(uname -r | cut -d. -f1,2)\n\
         [ \"$pv\" = \"$kv\" ] || {{ echo \"perf is $pv, the kernel $kv: perf kvm stat record hangs there\"; exit {SKIP_RC}; }}\n\
         mkdir -p /run/perf\n\
         perf kvm -o /run/perf/perf.data stat record -- \"$TESTVMM\" {} > /run/perf/vmm.json\n\
         perf kvm -i /run/perf/perf.data stat report 2>&1\n\
         perf kvm -i /run/perf/perf.data stat report --event ioport 2>&1\n",
        workload_args()
    )
}

/// How `kvmprof record` finds the VMM.
enum Attach {
    /// `--pid` on the running VMM. Attaching takes 2 s under TCG but 18-23 s in Bochs, so the
    /// VMM is stopped (SIGSTOP) once its vCPU threads exist and continued once kvmprof says it
    /// is recording: no start delay has to be long enough for the slowest emulator.
    Pid,
    /// `-- CMD`: kvmprof starts the VMM, held until every hook is attached. Both `Pid` and
    /// `Command` count through the kernel's tally (`kvmprof_exits` uses `--exits`, which sends
    /// every exit as a record).
    Command,
}

/// Starts the test VMM (`args`, `--start-delay delay`, its counts to `DIR/vmm.json`) as `$vmm`
/// and stops it once its vCPUs exist.
pub(crate) fn held_vmm(dir: &str, args: &str, delay: &str) -> String {
    format!(
        "\"$TESTVMM\" {args} --start-delay {delay} --ready-file {dir}/ready > {dir}/vmm.json &\n\
         vmm=$!\n\
         until [ -s {dir}/ready ]; do\n\
         \tkill -0 $vmm 2> /dev/null || {{ echo 'the test VMM ended before its vCPUs were ready' >&2; exit 1; }}\n\
         \tsleep 0.05\n\
         done\n\
         kill -STOP $vmm\n"
    )
}

/// Starts `tool` in the background as `$tool` (a kvmprof command that may use the held VMM's
/// pid, `$vmm`) and lets the VMM go on once the file `ready.0` holds `ready.1` (every hook
/// attached). If the tool ends before, it kills the VMM, prints the file `err` and exits 1.
pub(crate) fn attached_tool(tool: &str, ready: (&str, &str), err: &str) -> String {
    let (file, text) = ready;
    format!(
        "{tool} &\n\
         tool=$!\n\
         until grep -q '{text}' {file}; do\n\
         \tkill -0 $tool 2> /dev/null || {{ kill -KILL $vmm; cat {err} >&2; exit 1; }}\n\
         \tsleep 0.2\n\
         done\n\
         kill -CONT $vmm\n"
    )
}

/// Starts the test VMM (`args`, its counts to `DIR/vmm.json`), stops it once its vCPUs exist,
/// starts `tool` in the background (a kvmprof command that may use the VMM's pid, `$vmm`),
/// lets the VMM go on once the file `ready.0` holds `ready.1` (every hook attached), and
/// waits for both. On a failure it prints the file `err` and exits 1.
pub(crate) fn held_vmm_script(
    dir: &str,
    args: &str,
    delay: &str,
    tool: &str,
    ready: (&str, &str),
    err: &str,
) -> String {
    let held = held_vmm(dir, args, delay);
    let attached = attached_tool(tool, ready, err);
    format!(
        "{held}{attached}\
         wait $vmm\n\
         wait $tool || {{ cat {err} >&2; exit 1; }}\n"
    )
}

/// Records the workload with kvmprof on `hooks` and prints `{"vmm": <test VMM counts>,
/// "report": <report --format json>}`.
fn kvmprof_script(attach: Attach, hooks: Hooks) -> String {
    let args = workload_args();
    let (dir, record) = match attach {
        Attach::Pid => {
            let dir = format!("/run/kvmprof-pid-{hooks}");
            let refuse = match hooks {
                Hooks::Auto => format!("{REFUSE_ENV}={REFUSED_ENTRY} "),
                Hooks::Kprobe => String::new(),
            };
            let tool = format!(
                "{refuse}\"$KVMPROF\" record --hooks {hooks} --pid $vmm -o {dir}/k.data 2> {dir}/record.err"
            );
            let err = format!("{dir}/record.err");
            let record = held_vmm_script(&dir, &args, "2s", &tool, (&err, "Ctrl-C to stop"), &err)
                + &format!("cat {err} >&2\n");
            (dir, record)
        }
        Attach::Command => {
            let dir = format!("/run/kvmprof-cmd-{hooks}");
            // The held command lists the programs loaded once every hook is attached.
            let record = format!(
                "\"$KVMPROF\" record --hooks {hooks} -o {dir}/k.data -- sh -c '\
                 bpftool prog show -j > {dir}/progs.json; exec \"$TESTVMM\" {args}' > {dir}/vmm.json\n"
            );
            (dir, record)
        }
    };
    format!(
        "mkdir -p {dir}\n\
         {record}\
         \"$KVMPROF\" report -i {dir}/k.data --format json > {dir}/report.json\n\
         test -s {dir}/progs.json || echo '[]' > {dir}/progs.json\n\
         printf '{{\"vmm\": %s, \"report\": %s, \"progs\": %s}}\\n' \"$(cat {dir}/vmm.json)\" \"$(cat {dir}/report.json)\" \"$(cat {dir}/progs.json)\"\n"
    )
}

/// Test VMMs run back to back by [`recycle_script`]: 12 of 8 vCPUs with ~6 kinds of exit per
/// vCPU thread (in-kernel and userspace port writes, port reads, MMIO, interrupts, hlt) need
/// ~580 of the tally's 512 slots and ~2700 of its 1024 histogram rows in all, ~230 rows at once.
/// Each VMM waits 1 s before its first exit (`--start-delay`, not a `sleep` process: `record --
/// CMD` reads the name and KVM counters of every process it follows each tick): under TCG the
/// reader, busy most of the time, then gives the last VMM's slots back before the next one
/// runs. Back to back without the delay, 12 VMMs had 2266 of 8559 exits sent one by one (rows
/// used up while the reader lagged; every exit still counted exactly).
const RECYCLE_VMMS: u32 = 12;
const RECYCLE_WORKLOAD: Workload = Workload {
    vcpus: 8,
    pio_user: 20,
    pio_kernel: 50,
    mmio_user: 10,
    pio_in: 5,
    ..Workload::IDLE
};

/// Records (`-- sh -c`, which traces the processes it starts) [`RECYCLE_VMMS`] short test
/// VMMs in a row, and prints `{"vmms": [<counts>...], "report": <report --format json>}`.
fn recycle_script(hooks: Hooks) -> String {
    let dir = format!("/run/kvmprof-recycle-{hooks}");
    let args = format!(
        "{} --start-delay 1s",
        kvmprof_testvmm::cli::args(&RECYCLE_WORKLOAD)
    );
    format!(
        "mkdir -p {dir}\n\
         \"$KVMPROF\" record --hooks {hooks} -o {dir}/k.data -- sh -c '\
         for i in $(seq {RECYCLE_VMMS}); do \
         \"$TESTVMM\" {args} > {dir}/vmm$i.json || exit 1; done'\n\
         \"$KVMPROF\" report -i {dir}/k.data --format json > {dir}/report.json\n\
         printf '{{\"vmms\": [%s], \"report\": %s}}\\n' \"$(cat {dir}/vmm*.json | paste -sd,)\" \
         \"$(cat {dir}/report.json)\"\n"
    )
}

/// Issue 18: the tally's slots of exited threads are given back and used again with no exit
/// lost or counted twice. The io and hlt exits of every VMM of [`recycle_script`] are in the
/// report exactly and none is lost. That slots were used again shows in the share that came
/// tallied in the kernel: without giving back, the rows (1024, ~230 per VMM here) would run out
/// within the first five VMMs and most exits of the rest would come one by one (≤ ~40 %
/// tallied; not run that way in the VM, `tests/tests/serve.rs` fails so on the host). It must
/// be ≥ 60 %, not ~100 %: under TCG the reader (each tick reads every changed slot's 13 KiB
/// histogram rows) is busy nearly all the time and lags, so a few VMMs' rows are in use at
/// once. Seen on 6.12: 88 % with this check, 74 % without `--start-delay`, 98.6 % with 16 VMMs
/// and `sleep 0.3` between them.
fn recycled(check: &Check, c: &Captured) -> Result<Notes> {
    let json = parse_json(&c.stdout)?;
    let vmms: Vec<Counts> =
        serde_json::from_value(json["vmms"].clone()).context("not the test VMMs' counts")?;
    ensure!(
        vmms.len() == RECYCLE_VMMS as usize,
        "{} of {RECYCLE_VMMS} test VMMs left their counts",
        vmms.len()
    );
    let report = &json["report"];
    expect_counts(report, &[("lost", 0)], "report")?;
    let groups = report["groups"]
        .as_array()
        .context("report has no groups")?;
    let count = |label: &str| {
        groups
            .iter()
            .find(|g| g["label"] == label)
            .and_then(|g| g["count"].as_u64())
            .unwrap_or(0)
    };
    let io: u64 = vmms.iter().flat_map(|m| &m.vcpus).map(io_exits).sum();
    let hlt: u64 = vmms.iter().map(|m| m.total.hlt).sum();
    let vendor = check.vendor;
    ensure!(
        count(vendor.io_label()) == io,
        "io exits: kvmprof {}, the test VMMs {io}",
        count(vendor.io_label())
    );
    ensure!(
        count(vendor.hlt_label()) == hlt,
        "hlt exits: kvmprof {}, the test VMMs {hlt}",
        count(vendor.hlt_label())
    );
    let total = report["total_exits"]
        .as_u64()
        .context("report has no total_exits")?;
    let tallied = report["header"]["own_cost"]["tallied"]
        .as_u64()
        .context("report has no own_cost.tallied")?;
    ensure!(
        tallied * 100 >= total * 60,
        "only {tallied} of {total} exits came tallied in the kernel: slots not given back?"
    );
    Ok(vec![format!(
        "{RECYCLE_VMMS} VMMs: io {io}, hlt {hlt}; {tallied} of {total} exits tallied"
    )])
}

/// For checks whose exit code says it all.
fn ok(_: &Check, _: &Captured) -> Result<Notes> {
    Ok(Notes::new())
}

fn prints_number(_: &Check, c: &Captured) -> Result<Notes> {
    let text = c.stdout.trim();
    text.parse::<u64>()
        .map(|_| Notes::new())
        .with_context(|| format!("expected a number, got {text:?}"))
}

/// The test VMM alone must make exactly the planned exits: this check, not kvmprof's, says
/// when the nested guest fell short.
fn testvmm_counts(_: &Check, c: &Captured) -> Result<Notes> {
    let json = parse_json(&c.stdout)?;
    expect_counts(&json["total"], &expected_totals(&WORKLOAD), "testvmm total")?;
    Ok(Notes::new())
}

/// perf's summary has one row per exit reason (`io  12200  94.76% ...`, `IO_INSTRUCTION` on
/// Intel) and, with `--event ioport`, one per port (`0x3f8:POUT  2000 ...`): the sample
/// counts must be exact.
fn perf_kvm_stat(check: &Check, c: &Captured) -> Result<Notes> {
    let w = &WORKLOAD;
    let samples = |row: &str| -> Option<u64> {
        c.stdout.lines().find_map(|l| {
            let mut cols = l.split_whitespace();
            (cols.next() == Some(row)).then(|| cols.next()?.parse().ok())?
        })
    };
    let mut expected = vec![
        (
            check.vendor.io_label().to_string(),
            (w.pio_user + w.pio_kernel + w.pio_in) * u64::from(w.vcpus),
        ),
        (
            format!("{PIO_USER_PORT:#x}:POUT"),
            w.pio_user * u64::from(w.vcpus),
        ),
        (
            format!("{PIO_IN_PORT:#x}:PIN"),
            w.pio_in * u64::from(w.vcpus),
        ),
    ];
    for vcpu in 0..u64::from(w.vcpus) {
        let port = u64::from(PIO_KERNEL_PORT_BASE) + vcpu;
        expected.push((format!("{port:#x}:POUT"), w.pio_kernel));
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
    Ok(Notes::new())
}

/// kvmprof must see exactly the exits the test VMM made: per exit reason io (user and
/// ioeventfd PIO together) and `hlt`, per port and direction, with none lost and with latency
/// percentiles for the io exits. (Nested page faults also count the guest's other faults, so
/// MMIO is checked by address only.)
fn kvmprof_report(check: &Check, c: &Captured) -> Result<Notes> {
    let json = parse_json(&c.stdout)?;
    let made = Made::read(&json["vmm"])?;
    made.judged(report_matches(&json["report"], &made.counts, check.vendor))
}

/// kvmprof's test switch that makes it act as if the kernel refused the programs named
/// (`live::attach::REFUSE_ENV`).
const REFUSE_ENV: &str = "KVMPROF_REFUSE";
/// The program `kvmprof_record_pid_auto` has refused: the default level's cycle boundary.
const REFUSED_ENTRY: &str = "raw_kvm_entry";

/// [`kvmprof_report`] where the kernel "refused" (`KVMPROF_REFUSE`) the default level's
/// `kvm_entry` program under `auto`: the recording falls back to the vendor run's own hooks,
/// says so in the report's hooks line, and stays exact.
fn refused_entry_falls_back(check: &Check, c: &Captured) -> Result<Notes> {
    if check.hooks == Some(Hooks::Auto) {
        let json = parse_json(&c.stdout)?;
        let hooks = json["report"]["header"]["hooks"]
            .as_array()
            .context("report has no hooks")?;
        let vendor_run = hooks
            .iter()
            .find(|h| h["stage"] == "vendor_run")
            .context("no vendor_run hook in the report")?;
        let mode = vendor_run["mode"].as_str().unwrap_or("");
        ensure!(
            mode.starts_with("fentry;") && mode.contains("refused by the kernel"),
            "{REFUSED_ENTRY} refused: the vendor run's hook is {vendor_run}"
        );
    }
    kvmprof_report(check, c)
}

/// The programs the default level of detail (no `--stages`) must load, per hook mode: the
/// raw `kvm_entry` and tp_btf `kvm_exit` programs that bound the vendor run without a
/// trampoline, and KVM_RUN entered by fentry on `kvm_arch_vcpu_ioctl_run` (`auto`), or the
/// vendor run's kprobe pair (`kprobe`).
const DEFAULT_AUTO: [&str; 3] = ["raw_kvm_entry", "tpb_kvm_exit", "fe_kvm_run"];
const DEFAULT_KPROBE: [&str; 2] = ["kp_vendor_run", "krp_vendor_run"];

/// What the default level must not load: the deep stages (`--stages` only), and in `auto`
/// the vendor run's hooks, the classic `kvm_entry`/`kvm_exit` programs and the
/// `sys_enter_ioctl` one, which the tracepoints' cheap programs and the
/// `kvm_arch_vcpu_ioctl_run` fentry replace.
const NOT_DEFAULT: [&str; 8] = [
    "fe_handler",
    "fx_handler",
    "fe_fast_pio",
    "fx_fast_pio",
    "kp_handler",
    "krp_handler",
    "kp_fast_pio",
    "krp_fast_pio",
];
const NOT_DEFAULT_AUTO: [&str; 6] = [
    "fe_vendor_run",
    "fx_vendor_run",
    "fx_run_reason",
    "kvm_entry",
    "kvm_exit",
    "kvm_run_enter",
];

/// [`kvmprof_report`], and the programs the default level loads are the cheap set
/// ([`DEFAULT_AUTO`] / [`DEFAULT_KPROBE`], none of [`NOT_DEFAULT`]).
fn default_level(check: &Check, c: &Captured) -> Result<Notes> {
    let json = parse_json(&c.stdout)?;
    default_programs(&prog_names(&json), check.hooks)?;
    kvmprof_report(check, c)
}

fn default_programs(names: &[String], hooks: Option<Hooks>) -> Result<()> {
    let (want, not_auto): (&[&str], &[&str]) = match hooks {
        Some(Hooks::Kprobe) => (&DEFAULT_KPROBE, &[]),
        _ => (&DEFAULT_AUTO, &NOT_DEFAULT_AUTO),
    };
    let has = |p: &str| names.iter().any(|n| n == p);
    let mut wrong: Vec<String> = want
        .iter()
        .filter(|p| !has(p))
        .map(|p| format!("{p} is not loaded"))
        .collect();
    wrong.extend(
        NOT_DEFAULT
            .iter()
            .chain(not_auto)
            .filter(|p| has(p))
            .map(|p| format!("{p} is loaded")),
    );
    ensure!(
        wrong.is_empty(),
        "default hooks: {} (loaded: {names:?})",
        wrong.join("; ")
    );
    Ok(())
}

/// [`kvmprof_report`] on `report --format json`, held to the VMM's counts `made`.
fn report_matches(report: &Value, made: &Counts, vendor: Vendor) -> Result<()> {
    expect_counts(report, &[("lost", 0)], "report")?;

    let groups = report["groups"]
        .as_array()
        .context("report has no groups")?;
    let group = |label: &str| groups.iter().find(|g| g["label"] == label);
    let number = |g: &Value, field: &str| {
        g[field]
            .as_u64()
            .with_context(|| format!("report group {} has no {field}", g["label"]))
    };
    let io = group(vendor.io_label())
        .with_context(|| format!("report has no {} group", vendor.io_label()))?;
    let off_script_io: u64 = made.vcpus.iter().map(off_script_io).sum();
    let t = &made.total;
    let mut expected = vec![
        (
            "io exits",
            number(io, "count")?,
            made.vcpus.iter().map(io_exits).sum(),
        ),
        (
            "io exits to userspace",
            number(io, "userspace")?,
            t.pio_user + t.pio_in + off_script_io,
        ),
        // A VMM whose every vCPU ended early made no hlt exit: the report has no hlt group.
        (
            "hlt exits",
            group(vendor.hlt_label()).map_or(Ok(0), |g| number(g, "count"))?,
            t.hlt,
        ),
    ];
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
    let port_count = |space: &str, addr: u64, write: bool, field: &str| {
        port_sum(ports, space, addr, write, field)
    };
    let at = &made.ports;
    expected.extend([
        (
            "0x3f8 out",
            port_count("pio", at.pio_user.into(), true, "count"),
            t.pio_user,
        ),
        (
            "0x3fd in",
            port_count("pio", at.pio_in.into(), false, "count"),
            t.pio_in,
        ),
        (
            "mmio 0xd0000 write",
            port_count("mmio", at.mmio_addr, true, "count"),
            t.mmio_user,
        ),
    ]);
    for v in &made.vcpus {
        let port = v.pio_kernel_port.into();
        expected.push((
            "ioeventfd port out",
            port_count("pio", port, true, "count"),
            v.exits.pio_kernel,
        ));
        expected.push((
            "ioeventfd port to userspace",
            port_count("pio", port, true, "userspace"),
            0,
        ));
    }
    ensure_as_made(&expected)
}

/// `field` of the report's port rows of `space`, `addr` and direction, added up: rows may be
/// split by reason.
pub(crate) fn port_sum(ports: &[Value], space: &str, addr: u64, write: bool, field: &str) -> u64 {
    ports
        .iter()
        .filter(|p| p["space"] == space && p["addr"] == addr && p["write"] == write)
        .filter_map(|p| p[field].as_u64())
        .sum()
}

/// The counts of a test VMM that made nothing yet, for unit tests of verdicts to fill in.
#[cfg(test)]
pub(crate) fn no_counts() -> Counts {
    Counts {
        pid: 1,
        ports: Default::default(),
        vcpus: Vec::new(),
        total: Default::default(),
        other_reasons: Default::default(),
        wall_ns: 1,
        exits_per_sec: 1.0,
    }
}

/// Every `(what, got, want)` of the report has what the test VMM made, or one error naming
/// each that has not.
pub(crate) fn ensure_as_made(expected: &[(impl fmt::Display, u64, u64)]) -> Result<()> {
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(_, got, want)| got != want)
        .map(|(what, got, want)| format!("{what} = {got}, the test VMM made {want}"))
        .collect();
    ensure!(wrong.is_empty(), "report: {}", wrong.join("; "));
    Ok(())
}

/// What the test VMM says it made (its JSON on stdout), which kvmprof's counts are held to.
struct Made {
    counts: Counts,
    /// What the VMM made fewer of than [`WORKLOAD`] plans, said when it fell short.
    short: Option<String>,
}

impl Made {
    /// A VMM that fell short of the plan is taken at its word (under TCG a nested vCPU has
    /// been seen to end early); one that made more than planned, or ran other vCPUs, is broken.
    fn read(vmm: &Value) -> Result<Made> {
        let counts = vmm_counts(vmm)?;
        let short = shortfall(&counts, &WORKLOAD)?;
        Ok(Made { counts, short })
    }

    /// A pass notes the shortfall; a failure carries it too, since it explains what was seen.
    fn judged(&self, verdict: Result<()>) -> Result<Notes> {
        match (&self.short, verdict) {
            (_, Ok(())) => Ok(self.short.iter().cloned().collect()),
            (None, Err(e)) => Err(e),
            (Some(short), Err(e)) => Err(e.context(short.clone())),
        }
    }
}

/// Where the VMM's counts fall below the plan of `w`, per vCPU, as one line; `None` when it
/// made exactly the plan.
fn shortfall(made: &Counts, w: &Workload) -> Result<Option<String>> {
    ensure!(
        made.vcpus.len() == w.vcpus as usize,
        "the test VMM ran {} vCPUs, planned {}",
        made.vcpus.len(),
        w.vcpus
    );
    let plan = ExitCounts {
        pio_user: w.pio_user,
        pio_kernel: w.pio_kernel,
        mmio_user: w.mmio_user,
        pio_in: w.pio_in,
        hlt: 1,
        ..ExitCounts::default()
    };
    let kinds = |c: &ExitCounts| {
        [
            ("pio_user", c.pio_user),
            ("pio_kernel", c.pio_kernel),
            ("mmio_user", c.mmio_user),
            ("pio_in", c.pio_in),
            ("hlt", c.hlt),
        ]
    };
    let (mut over, mut short) = (Vec::new(), Vec::new());
    for v in &made.vcpus {
        let mut missed = Vec::new();
        for ((kind, got), (_, want)) in kinds(&v.exits).into_iter().zip(kinds(&plan)) {
            if got > want {
                over.push(format!("vCPU {} {kind} {got} of {want}", v.index));
            } else if got < want {
                missed.push(format!("{kind} {got} of {want}"));
            }
        }
        if v.exits.other > 0 {
            let reasons: Vec<String> = v
                .other_reasons
                .iter()
                .map(|(reason, n)| format!("{reason} x{n}"))
                .collect();
            missed.push(format!("off-script exits: {}", reasons.join(", ")));
        }
        if !missed.is_empty() {
            short.push(format!("vCPU {}: {}", v.index, missed.join(", ")));
        }
    }
    ensure!(
        over.is_empty(),
        "the test VMM made more exits than planned: {}",
        over.join("; ")
    );
    Ok((!short.is_empty()).then(|| {
        format!(
            "the test VMM fell short of its plan ({}); kvmprof is held to the exits it made",
            short.join("; ")
        )
    }))
}

/// The SVM io exits vCPU `v` made: every PIO, in-kernel or not, and its off-script ones.
fn io_exits(v: &VcpuCounts) -> u64 {
    v.exits.pio_user + v.exits.pio_kernel + v.exits.pio_in + off_script_io(v)
}

/// Off-script exits the VMM names `IoOut(port)`/`IoIn(port)` (testvmm `vcpu::classify`) are
/// io exits to userspace too; a vCPU that goes astray stops at its first one.
fn off_script_io(v: &VcpuCounts) -> u64 {
    v.other_reasons
        .iter()
        .filter(|(reason, _)| reason.starts_with("IoOut(") || reason.starts_with("IoIn("))
        .map(|(_, n)| n)
        .sum()
}

/// What a script printed as `{"vmm": <test VMM counts>, ...}`: the object, and the counts.
pub(crate) fn vmm_json(stdout: &str) -> Result<(Value, Counts)> {
    let json = parse_json(stdout)?;
    let made = vmm_counts(&json["vmm"])?;
    Ok((json, made))
}

/// The test VMM's counts, as it printed them.
pub(crate) fn vmm_counts(vmm: &Value) -> Result<Counts> {
    serde_json::from_value(vmm.clone()).context("not the test VMM's counts")
}

pub(crate) fn parse_json(stdout: &str) -> Result<Value> {
    serde_json::from_str(stdout.trim()).with_context(|| {
        let head: String = stdout.chars().take(200).collect();
        format!("stdout is not JSON: {head:?}")
    })
}

/// Every named field of `obj` must hold exactly the expected number.
pub(crate) fn expect_counts(obj: &Value, expected: &[(&str, u64)], what: &str) -> Result<()> {
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

    /// A kvmprof check as the SVM VM runs it.
    fn svm() -> Check {
        checks(Vendor::Svm)
            .into_iter()
            .find(|c| c.name == "kvmprof_exits")
            .unwrap()
    }

    /// The nesting half of `kvmprof_exits`: the VMM's counts on the first line, then exits.
    fn stage_nesting(c: &Captured) -> Result<Notes> {
        let (first, rest) = first_line(&c.stdout);
        let made = Made::read(&parse_json(first)?)?;
        made.judged(nesting(rest, &made.counts, Vendor::Svm))
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
        assert!(perf_kvm_stat(&svm(), &captured(PERF_OUTPUT)).is_ok());
        let short = PERF_OUTPUT.replace("0x701:POUT       5000", "0x701:POUT       4999");
        let err = perf_kvm_stat(&svm(), &captured(&short)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "perf kvm stat: 0x701:POUT = 4999, expected 5000"
        );
    }

    /// WORKLOAD's exits of one vCPU as planned.
    fn planned() -> ExitCounts {
        ExitCounts {
            pio_user: 1000,
            pio_kernel: 5000,
            mmio_user: 300,
            pio_in: 100,
            hlt: 1,
            ..ExitCounts::default()
        }
    }

    /// The test VMM's counts for its vCPUs' `exits` (tids 101, 102, ...), each vCPU with its
    /// off-script exit reason if it has one.
    fn vmm(vcpus: &[(ExitCounts, Option<&str>)]) -> Counts {
        let vcpus: Vec<VcpuCounts> = (0u16..)
            .zip(vcpus)
            .map(|(i, (exits, other))| VcpuCounts {
                index: i.into(),
                thread: format!("CPU {i}/KVM"),
                tid: 101 + i32::from(i),
                pio_kernel_port: 0x700 + i,
                exits: *exits,
                other_reasons: other.iter().map(|r| (r.to_string(), 1)).collect(),
                run_ns: 1,
            })
            .collect();
        let sum = |f: fn(&ExitCounts) -> u64| vcpus.iter().map(|v| f(&v.exits)).sum();
        Counts {
            pid: 7,
            ports: kvmprof_testvmm::Ports {
                pio_user: 0x3f8,
                pio_in: 0x3fd,
                pio_kernel: vcpus.iter().map(|v| v.pio_kernel_port).collect(),
                mmio_addr: 0xd0000,
                ..kvmprof_testvmm::Ports::default()
            },
            total: ExitCounts {
                pio_user: sum(|e| e.pio_user),
                pio_kernel: sum(|e| e.pio_kernel),
                mmio_user: sum(|e| e.mmio_user),
                pio_in: sum(|e| e.pio_in),
                hlt: sum(|e| e.hlt),
                other: sum(|e| e.other),
                ..ExitCounts::default()
            },
            other_reasons: BTreeMap::new(),
            wall_ns: 1,
            exits_per_sec: 1.0,
            vcpus,
        }
    }

    /// Both vCPUs as planned.
    fn vmm_as_planned() -> Counts {
        vmm(&[(planned(), None), (planned(), None)])
    }

    /// vCPU 1 ends early, as seen under TCG: after 1099 in-kernel `out`s, one off-script exit.
    fn vmm_short() -> Counts {
        let ended = ExitCounts {
            pio_user: 1000,
            pio_kernel: 1099,
            other: 1,
            ..ExitCounts::default()
        };
        vmm(&[(planned(), None), (ended, Some("Shutdown"))])
    }

    /// A report as `kvmprof report --format json` shapes it, counting exactly `made`'s exits.
    fn report_of(made: &Counts) -> Value {
        let port = |space: &str, addr: u64, write: bool, count: u64, userspace: u64| {
            serde_json::json!({"pid": 7, "space": space, "addr": addr, "write": write,
                "reason_name": "io", "count": count, "userspace": userspace})
        };
        let t = &made.total;
        let io = t.pio_user + t.pio_kernel + t.pio_in;
        let mut ports = vec![
            port("pio", 0x3f8, true, t.pio_user, t.pio_user),
            port("pio", 0x3fd, false, t.pio_in, t.pio_in),
            port("mmio", 0xd0000, true, t.mmio_user, t.mmio_user),
        ];
        for v in &made.vcpus {
            ports.push(port(
                "pio",
                v.pio_kernel_port.into(),
                true,
                v.exits.pio_kernel,
                0,
            ));
        }
        serde_json::json!({
            "total_exits": io + t.hlt + 632, "lost": 0,
            "groups": [{"label": "io", "count": io, "userspace": t.pio_user + t.pio_in, "stages": [
                {"stage": "cycle", "samples": io, "p50_ns": 900, "p99_ns": 5000,
                 "max_ns": 90000}]},
                {"label": "hlt", "count": t.hlt, "userspace": t.hlt, "stages": []}],
            "ports": ports,
        })
    }

    /// What the record scripts print: `{"vmm": ..., "report": ...}`.
    fn record_output(made: &Counts, report: &Value) -> Captured {
        captured(&serde_json::json!({"vmm": made, "report": report}).to_string())
    }

    #[test]
    fn kvmprof_report_must_match_the_vmm() {
        let made = vmm_as_planned();
        let report = report_of(&made);
        assert_eq!(
            kvmprof_report(&svm(), &record_output(&made, &report)).unwrap(),
            Notes::new()
        );
        let mut lost_one = report.clone();
        lost_one["ports"][0]["count"] = 1999.into();
        let err = kvmprof_report(&svm(), &record_output(&made, &lost_one)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "report: 0x3f8 out = 1999, the test VMM made 2000"
        );
    }

    const SHORT_NOTE: &str =
        "the test VMM fell short of its plan (vCPU 1: pio_kernel 1099 of 5000, \
        mmio_user 0 of 300, pio_in 0 of 100, hlt 0 of 1, off-script exits: Shutdown x1); \
        kvmprof is held to the exits it made";

    #[test]
    fn a_vmm_that_fell_short_passes_with_a_note_when_kvmprof_counts_what_it_made() {
        let made = vmm_short();
        assert_eq!(
            kvmprof_report(&svm(), &record_output(&made, &report_of(&made))).unwrap(),
            vec![SHORT_NOTE.to_string()]
        );
        // The planned exits are not what this VMM made: a kvmprof that counted them is wrong.
        let err = kvmprof_report(&svm(), &record_output(&made, &report_of(&vmm_as_planned())))
            .unwrap_err();
        let err = format!("{err:#}");
        assert!(err.starts_with(SHORT_NOTE), "{err}");
        assert!(
            err.contains("io exits = 12200, the test VMM made 8199; ")
                && err.contains("hlt exits = 2, the test VMM made 1; ")
                && err.contains("ioeventfd port out = 5000, the test VMM made 1099"),
            "{err}"
        );
    }

    #[test]
    fn a_vmm_making_more_than_planned_or_other_vcpus_is_refused() {
        let mut extra = planned();
        extra.pio_in += 1;
        let made = vmm(&[(planned(), None), (extra, None)]);
        let err = kvmprof_report(&svm(), &record_output(&made, &report_of(&made))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the test VMM made more exits than planned: vCPU 1 pio_in 101 of 100"
        );
        let made = vmm(&[(planned(), None)]);
        let err = kvmprof_report(&svm(), &record_output(&made, &report_of(&made))).unwrap_err();
        assert_eq!(err.to_string(), "the test VMM ran 1 vCPUs, planned 2");
    }

    #[test]
    fn an_off_script_io_exit_counts_as_an_io_exit_to_userspace() {
        let ended = ExitCounts {
            pio_user: 7,
            other: 1,
            ..ExitCounts::default()
        };
        let made = vmm(&[(planned(), None), (ended, Some("IoOut(0x80)"))]);
        let mut report = report_of(&made);
        assert!(kvmprof_report(&svm(), &record_output(&made, &report)).is_err());
        report["groups"][0]["count"] =
            (made.total.pio_user + made.total.pio_kernel + made.total.pio_in + 1).into();
        report["groups"][0]["userspace"] = (made.total.pio_user + made.total.pio_in + 1).into();
        assert_eq!(
            kvmprof_report(&svm(), &record_output(&made, &report))
                .unwrap()
                .len(),
            1
        );
    }

    /// `--exits` lines with well-nested stages: `io` io exits of each vCPU thread of `made`.
    fn exit_lines(made: &Counts, io: impl Fn(&VcpuCounts) -> u64) -> String {
        let mut lines = String::new();
        for v in &made.vcpus {
            let line = serde_json::json!({"schema_version": 2, "pid": 7, "tid": v.tid,
                "reason": {"space": "svm", "code": 0x7b, "name": "io"},
                "stages": {"cycle": 100, "vendor_run": 50, "handler": 40, "fast_pio": 10}});
            for _ in 0..io(v) {
                lines.push_str(&format!("{line}\n"));
            }
        }
        lines
    }

    /// What the nesting script prints: the VMM's counts, then the exits.
    fn nesting_output(made: &Counts, exits: &str) -> Captured {
        captured(&format!(
            "{}\n{exits}",
            serde_json::to_string(made).unwrap()
        ))
    }

    #[test]
    fn nesting_holds_each_vcpu_to_the_io_exits_the_vmm_made() {
        let made = vmm_as_planned();
        let all = exit_lines(&made, io_exits);
        assert_eq!(
            stage_nesting(&nesting_output(&made, &all)).unwrap(),
            Notes::new()
        );
        let lost = exit_lines(&made, |v| io_exits(v) - u64::from(v.index));
        let err = stage_nesting(&nesting_output(&made, &lost)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "io exits: vCPU 1 (tid 102): 6099, the test VMM made 6100"
        );

        // A vCPU the VMM says ended early: its tail was never made, so nothing is lost.
        let made = vmm_short();
        let out = nesting_output(&made, &exit_lines(&made, io_exits));
        assert_eq!(stage_nesting(&out).unwrap(), vec![SHORT_NOTE.to_string()]);
        let planned = exit_lines(&vmm_as_planned(), io_exits);
        let err = format!(
            "{:#}",
            stage_nesting(&nesting_output(&made, &planned)).unwrap_err()
        );
        assert!(
            err.ends_with("io exits: vCPU 1 (tid 102): 6100, the test VMM made 2099"),
            "{err}"
        );
    }

    #[test]
    fn nesting_refuses_an_io_exit_with_a_stage_missing() {
        let made = vmm_as_planned();
        let mut exits = exit_lines(&made, io_exits);
        exits = exits.replacen(",\"fast_pio\":10", "", 1);
        let err = stage_nesting(&nesting_output(&made, &exits)).unwrap_err();
        assert!(
            err.to_string().starts_with("io exit 0 lacks a stage"),
            "{err}"
        );
    }

    #[test]
    fn every_script_is_valid_shell() {
        for check in checks(Vendor::Vmx) {
            let out = std::process::Command::new("sh")
                .args(["-n", "-c", &check.script])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}\n{out:?}", check.script);
        }
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
        let key = |obj: u64, ty: u64| ((obj << 32) | ty).to_string();
        serde_json::json!({
            "progs": progs,
            "links": links,
            "btf": [{"id": 1, "name": "vmlinux"}, {"id": 2, "name": "kvm"},
                {"id": 3, "name": "kvm_amd"}],
            "trampolines": [key(3, 70000), key(3, 70010), key(2, 64000), key(2, 64010)],
        })
    }

    #[test]
    fn btf_hooks_must_be_linked_with_trampolines_on_the_module_btf() {
        assert!(btf_links(&btf_view(""), Vendor::Svm).is_ok());
        let err = btf_links(&btf_view("fx_handler"), Vendor::Svm).unwrap_err();
        assert_eq!(err.to_string(), "BTF hooks: fx_handler is not linked");
        // A trampoline on a vmlinux function instead of kvm_fast_pio in kvm.ko.
        let mut v = btf_view("");
        v["trampolines"][2] = Value::String(((1u64 << 32) | 5).to_string());
        let err = btf_links(&v, Vendor::Svm).unwrap_err().to_string();
        assert!(
            err.contains("1 trampolines on kvm BTF, expected 2"),
            "{err}"
        );
        // A program on kvm_exit too, though the vendor run's fexit reads the reason.
        let mut v = btf_view("");
        let push = |v: &mut Value, k: &str, x: Value| v[k].as_array_mut().map(|a| a.push(x));
        push(
            &mut v,
            "progs",
            serde_json::json!({"id": 30, "type": "tracing", "name": "tpb_kvm_exit"}),
        );
        push(
            &mut v,
            "links",
            serde_json::json!({"id": 9, "type": "raw_tracepoint", "prog_id": 30, "tp_name": "kvm_exit"}),
        );
        let err = btf_links(&v, Vendor::Svm).unwrap_err().to_string();
        assert!(err.contains("tpb_kvm_exit linked"), "{err}");
    }

    #[test]
    fn the_default_level_must_load_the_cheap_set_and_no_deep_stage() {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let auto = names(&["raw_kvm_entry", "tpb_kvm_exit", "fe_kvm_run", "kvm_pio"]);
        assert!(default_programs(&auto, Some(Hooks::Auto)).is_ok());
        // The deep stages hooked by default, or the vendor run's trampoline or the old
        // kvm_exit/ioctl programs back.
        for extra in [
            "fe_handler",
            "fx_fast_pio",
            "fe_vendor_run",
            "kvm_run_enter",
        ] {
            let mut n = auto.clone();
            n.push(extra.into());
            let err = default_programs(&n, Some(Hooks::Auto)).unwrap_err();
            assert!(
                err.to_string().contains(&format!("{extra} is loaded")),
                "{err}"
            );
        }
        // The cycle bounded elsewhere again.
        let err = default_programs(&auto[1..], Some(Hooks::Auto)).unwrap_err();
        assert!(
            err.to_string().contains("raw_kvm_entry is not loaded"),
            "{err}"
        );
        let kp = names(&[
            "kp_vendor_run",
            "krp_vendor_run",
            "kvm_exit",
            "kvm_run_enter",
        ]);
        assert!(default_programs(&kp, Some(Hooks::Kprobe)).is_ok());
        let mut n = kp.clone();
        n.push("krp_handler".into());
        assert!(default_programs(&n, Some(Hooks::Kprobe)).is_err());
    }

    #[test]
    fn kprobe_mode_must_load_every_stage_kprobe_and_no_btf_program() {
        let progs = |names: &[&str]| {
            let progs: Vec<Value> = names
                .iter()
                .map(|n| serde_json::json!({"name": n}))
                .collect();
            serde_json::json!({ "progs": progs })
        };
        assert!(kprobe_links(&progs(&KPROBE_PROGRAMS)).is_ok());
        let mut names = KPROBE_PROGRAMS[1..].to_vec();
        names.push("tpb_kvm_exit");
        let err = kprobe_links(&progs(&names)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "kprobe hooks: kp_vendor_run is not loaded; BTF programs loaded: [\"tpb_kvm_exit\"]"
        );
    }

    #[test]
    fn the_vmx_trampolines_are_on_kvm_intel() {
        let mut v = btf_view("");
        v["btf"][2]["name"] = "kvm_intel".into();
        assert!(btf_links(&v, Vendor::Vmx).is_ok());
        assert!(btf_links(&v, Vendor::Svm).is_err());
    }

    #[test]
    fn check_labels_are_unique_file_names() {
        for vendor in [Vendor::Svm, Vendor::Vmx] {
            let list = checks(vendor);
            for (i, c) in list.iter().enumerate() {
                assert!(c
                    .label()
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_'));
                assert!(
                    list[..i].iter().all(|o| o.label() != c.label()),
                    "{}",
                    c.label()
                );
            }
        }
    }
}
