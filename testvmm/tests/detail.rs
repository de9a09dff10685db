//! The detail section's exits (`rdmsr`, `wrmsr`, `cpuid`, hypercalls), which KVM handles in
//! the kernel, so the VMM reports what the guest was told to make. Where tracefs can be
//! used, each test also counts KVM's own tracepoints for its vCPU threads (in a tracing
//! instance of its own: nothing global is switched), so it fails if the guest skipped the
//! instructions. Needs a usable /dev/kvm (root, or the kvm group); without one each test
//! prints why it is skipped and passes.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

use kvmprof_testvmm::{
    run, Counts, ExitCounts, Workload, CPUID_LEAVES, CPUID_RIPS, HYPERCALL_NR, HYPERCALL_RIP,
    MSR_READ, MSR_WRITE, MSR_WRITE_VALUE, NPF_ADDR, NPF_RIP, RDMSR_RIP, WRMSR_RIP,
};

/// Returns early from the test, passing, when KVM can't be used here.
macro_rules! require_kvm {
    () => {
        if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/kvm") {
            eprintln!("skipped: cannot open /dev/kvm: {e}");
            return;
        }
    };
}

const TRACING: &str = "/sys/kernel/tracing";

/// A tracefs instance of this test's own, recording some of KVM's tracepoints.
struct Trace {
    dir: PathBuf,
}

impl Trace {
    /// Starts recording `events` (names under events/kvm/), or says why it cannot.
    fn start(name: &str, events: &[&str]) -> Result<Trace, String> {
        let root = Path::new(TRACING);
        if !root.join("instances").exists() {
            // SAFETY: plain mount(2) with valid C strings; fails harmlessly if not allowed.
            let rc = unsafe {
                libc::mount(
                    c"nodev".as_ptr(),
                    c"/sys/kernel/tracing".as_ptr(),
                    c"tracefs".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            if rc != 0 {
                return Err(format!(
                    "cannot mount tracefs: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        let dir = root
            .join("instances")
            .join(format!("testvmm-{}-{name}", std::process::id()));
        fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let trace = Trace { dir };
        let write = |file: &str, value: &str| {
            let path = trace.dir.join(file);
            fs::write(&path, value).map_err(|e| format!("{}: {e}", path.display()))
        };
        write("buffer_size_kb", "8192")?;
        for e in events {
            write(&format!("events/kvm/{e}/enable"), "1")?;
        }
        write("tracing_on", "1")?;
        Ok(trace)
    }

    /// Stops recording and counts the lines of each event by thread id:
    /// `(tid, "event: text")` → lines.
    fn stop(&self) -> BTreeMap<(i32, String), u64> {
        let _ = fs::write(self.dir.join("tracing_on"), "0");
        let text = fs::read_to_string(self.dir.join("trace")).unwrap_or_default();
        let mut counts = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            // "  CPU 0/KVM-1234  [001] ..... 123.456: kvm_msr: msr_read 1b = 0x..."
            let Some((task, rest)) = line.split_once(" [") else {
                continue;
            };
            let Some(tid) = task
                .trim()
                .rsplit_once('-')
                .and_then(|(_, t)| t.parse().ok())
            else {
                continue;
            };
            let Some((_, event)) = rest.split_once(": ") else {
                continue;
            };
            *counts.entry((tid, event.to_string())).or_insert(0) += 1;
        }
        counts
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        let _ = fs::write(self.dir.join("tracing_on"), "0");
        // An instance's directory goes with rmdir, its files and all.
        let _ = fs::remove_dir(&self.dir);
    }
}

/// Lines of `tid` whose event text passes `f`.
fn lines(trace: &BTreeMap<(i32, String), u64>, tid: i32, f: impl Fn(&str) -> bool) -> u64 {
    trace
        .iter()
        .filter(|((t, e), _)| *t == tid && f(e))
        .map(|(_, n)| n)
        .sum()
}

/// Exits or emulated instructions of `tid` at guest RIP `rip`, from `kvm_exit` ("... rip
/// 0x1048 info1 ...", VMX and SVM) and `kvm_emulate_insn` ("0:1048:0f 32 (real)", PVM, which
/// emulates a real-mode guest): either way one line per execution of that instruction.
fn at_rip(trace: &BTreeMap<(i32, String), u64>, tid: i32, rip: u64) -> u64 {
    let exit = format!(" rip {rip:#x} ");
    let emulated = format!("kvm_emulate_insn: 0:{rip:x}:");
    lines(trace, tid, |e| {
        (e.starts_with("kvm_exit: ") && e.contains(&exit)) || e.starts_with(&emulated)
    })
}

/// Starts a trace, or prints why the tracepoint checks are skipped.
fn trace(name: &str, events: &[&str]) -> Option<Trace> {
    Trace::start(name, events)
        .map_err(|e| eprintln!("tracepoint checks skipped: {e}"))
        .ok()
}

/// Checks that every vCPU of `c` executed `n` times the instruction at `rip`, if the trace
/// shows where the vCPUs' exits happen at all (kvm_exit or kvm_emulate_insn fire here).
fn assert_rip(trace: &BTreeMap<(i32, String), u64>, c: &Counts, rip: u64, n: u64) {
    for v in &c.vcpus {
        let seen = lines(trace, v.tid, |e| {
            e.starts_with("kvm_exit: ") || e.starts_with("kvm_emulate_insn: ")
        });
        if seen == 0 {
            eprintln!(
                "RIP check skipped: no kvm_exit or kvm_emulate_insn for vCPU {}",
                v.index
            );
            continue;
        }
        assert_eq!(at_rip(trace, v.tid, rip), n, "vCPU {} at {rip:#x}", v.index);
    }
}

const RIP_EVENTS: [&str; 2] = ["kvm_exit", "kvm_emulate_insn"];

#[test]
fn msr_reads_and_writes_are_counted_and_really_happen() {
    require_kvm!();
    let t = trace("msr", &["kvm_msr", RIP_EVENTS[0], RIP_EVENTS[1]]);
    let w = Workload {
        vcpus: 2,
        pio_user: 3,
        msr_read: 1000,
        msr_write: 500,
        ..Workload::default()
    };
    let c = run(&w).unwrap();
    let want = ExitCounts {
        pio_user: 3,
        hlt: 1,
        msr_read: 1000,
        msr_write: 500,
        ..ExitCounts::default()
    };
    for v in &c.vcpus {
        assert_eq!(v.exits, want, "vCPU {}: {:?}", v.index, v.other_reasons);
    }
    // In-kernel and never seen by the VMM: outside the totals, in detail().
    assert_eq!(c.total.total(), 2 * 4);
    assert_eq!(c.total.userspace(), 2 * 4);
    assert_eq!(c.total.detail(), 2 * 1500);
    assert_eq!((c.ports.msr_read, c.ports.msr_write), (MSR_READ, MSR_WRITE));
    let Some(t) = t else { return };
    let trace = t.stop();
    let read = format!("kvm_msr: msr_read {MSR_READ:x} = ");
    let write = format!("kvm_msr: msr_write {MSR_WRITE:x} = {MSR_WRITE_VALUE:#x}");
    for v in &c.vcpus {
        assert_eq!(
            lines(&trace, v.tid, |e| e.starts_with(&read)),
            1000,
            "vCPU {}",
            v.index
        );
        assert_eq!(
            lines(&trace, v.tid, |e| e == write),
            500,
            "vCPU {}",
            v.index
        );
        // Accepted: a refused MSR access is traced with "(#GP)" appended.
        assert_eq!(lines(&trace, v.tid, |e| e.contains("#GP")), 0);
    }
    assert_rip(&trace, &c, RDMSR_RIP, 1000);
    assert_rip(&trace, &c, WRMSR_RIP, 500);
}

#[test]
fn cpuid_of_both_leaves_is_counted_and_really_happens() {
    require_kvm!();
    let t = trace("cpuid", &["kvm_cpuid", RIP_EVENTS[0], RIP_EVENTS[1]]);
    let w = Workload {
        vcpus: 2,
        cpuid: 300,
        ..Workload::default()
    };
    let c = run(&w).unwrap();
    let want = ExitCounts {
        hlt: 1,
        cpuid: [300, 300],
        ..ExitCounts::default()
    };
    for v in &c.vcpus {
        assert_eq!(v.exits, want, "vCPU {}: {:?}", v.index, v.other_reasons);
    }
    assert_eq!(c.total.cpuid, [600, 600]);
    assert_eq!(c.total.total(), 2);
    assert_eq!(c.ports.cpuid_leaves, CPUID_LEAVES);
    let Some(t) = t else { return };
    let trace = t.stop();
    for v in &c.vcpus {
        for leaf in CPUID_LEAVES {
            let func = format!("kvm_cpuid: func {leaf:x} idx 0 ");
            assert_eq!(lines(&trace, v.tid, |e| e.starts_with(&func)), 300);
        }
    }
    for rip in CPUID_RIPS {
        assert_rip(&trace, &c, rip, 300);
    }
}

/// On VMX and SVM the hypercalls are made and counted; on KVM's PVM backend, which cannot run
/// them from a real-mode guest, the run is refused at once with one line saying so.
#[test]
fn hypercalls_are_counted_or_refused_on_pvm() {
    require_kvm!();
    let t = trace(
        "hypercall",
        &["kvm_hypercall", RIP_EVENTS[0], RIP_EVENTS[1]],
    );
    let w = Workload {
        vcpus: 2,
        hypercall: 200,
        // Never reached when refused; a hang would end here instead of in the kernel.
        duration_ms: Some(10_000),
        ..Workload::default()
    };
    let c = match run(&w) {
        Err(e) => {
            let msg = e.to_string();
            assert!(
                Path::new("/sys/module/kvm_pvm").exists()
                    && !Path::new("/sys/module/kvm_intel").exists()
                    && !Path::new("/sys/module/kvm_amd").exists(),
                "refused off PVM: {msg}"
            );
            assert!(msg.contains("PVM") && !msg.contains('\n'), "{msg}");
            eprintln!("hypercalls refused on this PVM host, as they should be: {msg}");
            return;
        }
        Ok(c) => c,
    };
    let want = ExitCounts {
        hlt: 1,
        hypercall: 200,
        ..ExitCounts::default()
    };
    for v in &c.vcpus {
        assert_eq!(v.exits, want, "vCPU {}: {:?}", v.index, v.other_reasons);
    }
    assert!(["vmcall", "vmmcall"].contains(&c.ports.hypercall_insn.as_str()));
    let Some(t) = t else { return };
    let trace = t.stop();
    let nr = format!("kvm_hypercall: nr {HYPERCALL_NR:#x} ");
    for v in &c.vcpus {
        assert_eq!(lines(&trace, v.tid, |e| e.starts_with(&nr)), 200);
    }
    assert_rip(&trace, &c, HYPERCALL_RIP, 200);
}

/// In endless rounds the detail counts are whole rounds' worth, as the halts are.
#[test]
fn detail_counts_are_per_completed_round() {
    require_kvm!();
    let w = Workload {
        pio_user: 2,
        msr_read: 7,
        msr_write: 5,
        cpuid: 3,
        forever: true,
        duration_ms: Some(200),
        ..Workload::default()
    };
    let c = run(&w).unwrap();
    let e = c.vcpus[0].exits;
    assert!(e.hlt >= 2, "{e:?}");
    assert_eq!(e.other, 0, "{:?}", c.other_reasons);
    assert_eq!(
        (e.msr_read, e.msr_write, e.cpuid),
        (7 * e.hlt, 5 * e.hlt, [3 * e.hlt; 2])
    );
}

#[test]
fn binary_reports_the_detail_fields_and_where_they_are() {
    require_kvm!();
    let out = Command::new(env!("CARGO_BIN_EXE_kvmprof-testvmm"))
        .args(["--msr-read", "4", "--msr-write", "3", "--cpuid", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", out);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (t, p) = (&json["total"], &json["ports"]);
    assert_eq!(
        (
            &t["msr_read"],
            &t["msr_write"],
            &t["cpuid"],
            &t["hypercall"]
        ),
        (&4.into(), &3.into(), &serde_json::json!([2, 2]), &0.into())
    );
    assert_eq!(p["msr_read"], 0x1b);
    assert_eq!(p["msr_write"], 0x4b56_4d00);
    assert_eq!(p["msr_write_value"], MSR_WRITE_VALUE);
    assert_eq!(p["cpuid_leaves"], serde_json::json!([0, 1]));
    assert_eq!(p["hypercall_nr"], HYPERCALL_NR);
    assert_eq!(p["hypercall_insn"], "");
    assert_eq!(p["rips"]["rdmsr"], RDMSR_RIP);
    assert_eq!(p["rips"]["wrmsr"], WRMSR_RIP);
    assert_eq!(p["rips"]["cpuid_1"], CPUID_RIPS[1]);
    assert_eq!(p["rips"]["hypercall"], HYPERCALL_RIP);
    let c: Counts = serde_json::from_value(json).unwrap();
    assert_eq!(c.total.detail(), 4 + 3 + 2 * 2);
}

/// The page loop writes its fresh pages from vCPU 0 in the first round only, all of them RAM
/// (a write outside it would exit as MMIO, off script), and the rounds go on as usual. On
/// this PVM host there are no EPT violations or NPFs to count: the exits themselves are
/// held to the pages in the VM check (`xtask/src/check_detail.rs`).
#[test]
fn fresh_pages_are_written_by_vcpu_0_in_the_first_round_only() {
    require_kvm!();
    let w = Workload {
        vcpus: 2,
        pio_user: 2,
        npf_pages: 5,
        forever: true,
        duration_ms: Some(200),
        ..Workload::default()
    };
    let c = run(&w).unwrap();
    assert_eq!(c.total.other, 0, "{:?}", c.other_reasons);
    let (first, second) = (c.vcpus[0].exits, c.vcpus[1].exits);
    assert!(first.hlt >= 2 && second.hlt >= 2, "{first:?} {second:?}");
    assert_eq!((first.npf_pages, second.npf_pages), (5, 0));
    assert_eq!(
        c.ports.npf_pages,
        (0..5).map(|i| NPF_ADDR + i * 0x1000).collect::<Vec<_>>()
    );
    assert_eq!(c.ports.rips["npf"], NPF_RIP);
}
