//! Loads the eBPF object and attaches it as the plan says. Each failure names the hook and
//! the kernel's answer; nothing here decides *what* to hook (that is `plan`).
//!
//! fentry/fexit and tp_btf programs on module code (kvm.ko, kvm_amd.ko, kvm_intel.ko) are
//! loaded with the target's type id in the module's split BTF and an fd of the module's BTF
//! object (`btf.rs` finds both), through `load_by_btf_id`, a 54-line patch of aya 0.14
//! carried in vendor/aya (aya issue #301). A patch rather than raw `BPF_PROG_LOAD` calls of
//! our own: aya already carries `attach_btf_obj_fd` to the kernel and owns relocation, map
//! fds, BTF func/line info and the verifier log of each program; redoing that for six
//! programs would duplicate much of its loader, while the patch only adds setters and can
//! go upstream as is.
use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{Array, HashMap},
    programs::{BtfTracePoint, FEntry, FExit, KProbe, TracePoint},
    Ebpf, EbpfLoader,
};
use kvmprof_common::{Config, NO_DEREF};

use crate::{
    btf,
    kernel::Facts,
    model::Stage,
    plan::{self, HookPref, Mode, Plan},
};

/// The eBPF object built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kvmprof-ebpf"));

/// Ring buffer size: at 100 ns per record drained, 8 MiB holds ~80k exits of backlog.
const RING_BYTES: u32 = 8 << 20;

/// Program name prefix of each function-bounded stage in `kvmprof-ebpf/src/probes/stages.rs`.
fn program_stem(s: Stage) -> Option<&'static str> {
    match s {
        Stage::Cycle => Some("cycle"),
        Stage::VendorRun => Some("vendor_run"),
        Stage::Handler => Some("handler"),
        Stage::FastPio => Some("fast_pio"),
        Stage::KvmRun | Stage::Vmm => None,
    }
}

/// Tracepoint (`category/name`) → its BTF tracepoint program (`kvmprof-ebpf/src/probes/btf.rs`).
fn btf_tracepoint_program(tp: &str) -> Option<&'static str> {
    Some(match tp {
        "kvm/kvm_exit" => "tpb_kvm_exit",
        _ => return None,
    })
}

/// Tracepoint (`category/name`) → program name.
fn tracepoint_program(tp: &str) -> Option<&'static str> {
    Some(match tp {
        "syscalls/sys_enter_ioctl" => "kvm_run_enter",
        "kvm/kvm_userspace_exit" => "kvm_userspace_exit",
        "kvm/kvm_pio" => "kvm_pio",
        "kvm/kvm_mmio" => "kvm_mmio",
        "kvm/kvm_exit" => "kvm_exit",
        "kvm/kvm_entry" => "kvm_entry",
        _ => return None,
    })
}

fn load() -> Result<Ebpf> {
    EbpfLoader::new()
        .map_max_entries("EVENTS", RING_BYTES)
        .load(OBJECT)
        .map_err(|e| anyhow!("load eBPF object: {e}"))
}

/// Plans the hooks of one recording and loads the object they come from, once: whether this
/// kernel (or its sandbox) allows BPF trampolines is only learnt by loading an fentry
/// program, so the program the plan would use first is loaded from the object the recording
/// keeps, and stays loaded for `attach` when the final plan uses it.
pub fn plan_and_load(mut facts: Facts, hooks: HookPref) -> Result<(Facts, Plan, Ebpf)> {
    let mut ebpf = load()?;
    if matches!(hooks, HookPref::Auto | HookPref::Fentry) {
        // Planned as if trampolines were allowed: the first fentry stage is the test load.
        let optimistic = plan::plan(&facts, hooks);
        let first = optimistic.ok().and_then(|p| {
            // (The cycle stage may carry the vendor run's mode and a derived symbol.)
            p.stages
                .into_iter()
                .find(|s| s.mode == Mode::Fentry && facts.btf_funcs.contains_key(&s.symbol))
        });
        if let Some(sp) = first {
            facts.fentry = Some(probe_fentry(&mut ebpf, &facts, sp.stage, &sp.symbol));
        }
    }
    let plan = plan::plan(&facts, hooks)?;
    Ok((facts, plan, ebpf))
}

/// Loads (does not attach) the fentry program of `stage` on `sym`.
fn probe_fentry(ebpf: &mut Ebpf, facts: &Facts, stage: Stage, sym: &str) -> Result<(), String> {
    let stem = program_stem(stage).ok_or("no fentry program for this stage")?;
    load_fentry(ebpf, facts, &format!("fe_{stem}"), sym).map_err(|e| e.root_cause().to_string())
}

/// Loads a BTF-targeted tracing program on `target`, unless the fentry probe already did.
macro_rules! load_btf_program {
    ($ty:ty, $ebpf:expr, $name:expr, $target:expr) => {{
        let prog: &mut $ty = $ebpf
            .program_mut($name)
            .context($name.to_string())?
            .try_into()?;
        if prog.fd().is_ok() {
            Ok(())
        } else {
            let t: &btf::Target = $target;
            let fd = btf::open_object(t.module.as_deref())?;
            prog.load_by_btf_id(t.type_id, fd)
                .map_err(|e| anyhow!("{}", describe(&e)))
        }
    }};
}

fn load_fentry(ebpf: &mut Ebpf, facts: &Facts, name: &str, sym: &str) -> Result<()> {
    let target = facts
        .btf_funcs
        .get(sym)
        .with_context(|| format!("{sym} has no BTF entry"))?;
    load_btf_program!(FEntry, ebpf, name, target)
}

fn load_fexit(ebpf: &mut Ebpf, facts: &Facts, name: &str, sym: &str) -> Result<()> {
    let target = facts
        .btf_funcs
        .get(sym)
        .with_context(|| format!("{sym} has no BTF entry"))?;
    load_btf_program!(FExit, ebpf, name, target)
}

/// Attaches everything in `plan`, filtered to `pids` (all processes when empty).
pub fn attach(ebpf: &mut Ebpf, plan: &Plan, facts: &Facts, pids: &[u32]) -> Result<()> {
    let cfg = config(plan, facts, !pids.is_empty())?;
    let mut cfg_map: Array<_, Config> =
        Array::try_from(ebpf.map_mut("CONFIG").context("CONFIG map")?)?;
    cfg_map.set(0, cfg, 0)?;
    let mut pid_map: HashMap<_, u32, u8> =
        HashMap::try_from(ebpf.map_mut("PIDS").context("PIDS map")?)?;
    for p in pids {
        pid_map.insert(p, 1, 0)?;
    }

    for tp in &plan.btf_tracepoints {
        let name = btf_tracepoint_program(tp)
            .with_context(|| format!("no tp_btf program for tracepoint {tp}"))?;
        let target = facts
            .btf_tracepoints
            .get(tp)
            .with_context(|| format!("{tp} has no btf_trace type"))?;
        load_btf_program!(BtfTracePoint, ebpf, name, target)
            .map_err(|e| anyhow!("tp_btf {tp} refused: {e}"))?;
        let prog: &mut BtfTracePoint = ebpf.program_mut(name).context(name)?.try_into()?;
        prog.attach()
            .map_err(|e| anyhow!("attach tp_btf {tp}: {}", describe(&e)))?;
    }
    for tp in &plan.tracepoints {
        if plan.btf_tracepoints.contains(tp) {
            continue;
        }
        let name =
            tracepoint_program(tp).with_context(|| format!("no program for tracepoint {tp}"))?;
        let (cat, ev) = tp.split_once('/').context("tracepoint name")?;
        let prog: &mut TracePoint = ebpf.program_mut(name).context(name)?.try_into()?;
        prog.load()
            .map_err(|e| anyhow!("load {name}: {}", describe(&e)))?;
        prog.attach(cat, ev)
            .map_err(|e| anyhow!("attach tracepoint {tp}: {}", describe(&e)))?;
    }

    for sp in &plan.stages {
        let Some(stem) = program_stem(sp.stage) else {
            continue;
        };
        // Unless `vcpu_enter_guest` itself is hooked, the cycle is bounded by another
        // stage's hook (or tracepoints) and has no function of its own to attach to.
        if sp.stage == Stage::Cycle && plan.boundary != kvmprof_common::boundary::ENTER_GUEST {
            continue;
        }
        let sym = sp.symbol.as_str();
        match sp.mode {
            Mode::Kprobe => {
                for (prefix, what) in [("kp_", "kprobe"), ("krp_", "kretprobe")] {
                    let name = format!("{prefix}{stem}");
                    let prog: &mut KProbe =
                        ebpf.program_mut(&name).context(name.clone())?.try_into()?;
                    prog.load()
                        .map_err(|e| anyhow!("load {name}: {}", describe(&e)))?;
                    prog.attach(sym, 0)
                        .map_err(|e| anyhow!("{what} on {sym} refused: {}", describe(&e)))?;
                }
            }
            Mode::Fentry => {
                let name = format!("fe_{stem}");
                load_fentry(ebpf, facts, &name, sym)
                    .map_err(|e| anyhow!("fentry on {sym} refused: {e}"))?;
                let prog: &mut FEntry = ebpf.program_mut(&name).context(name)?.try_into()?;
                prog.attach()
                    .map_err(|e| anyhow!("fentry on {sym}: {}", describe(&e)))?;
                let name = format!("fx_{stem}");
                load_fexit(ebpf, facts, &name, sym)
                    .map_err(|e| anyhow!("fexit on {sym} refused: {e}"))?;
                let prog: &mut FExit = ebpf.program_mut(&name).context(name)?.try_into()?;
                prog.attach()
                    .map_err(|e| anyhow!("fexit on {sym}: {}", describe(&e)))?;
            }
            Mode::Tracepoint | Mode::Unavailable => {}
        }
    }
    Ok(())
}

/// The run-time configuration: cycle boundary and tracepoint field offsets of this kernel.
fn config(plan: &Plan, f: &Facts, filter: bool) -> Result<Config> {
    let exit = |field| {
        let classic = |t: &String| t == "kvm/kvm_exit" && !plan.btf_tracepoints.contains(t);
        if plan.tracepoints.iter().any(classic) {
            f.offset("kvm/kvm_exit", field)
        } else {
            Ok(0)
        }
    };
    let btf_exit = match &f.kvm_exit_layout {
        Some(Ok(l)) if plan.btf_tracepoints.iter().any(|t| t == "kvm/kvm_exit") => Some(*l),
        _ => None,
    };
    Ok(Config {
        boundary: plan.boundary,
        filter_pids: filter as u32,
        kvm_exit_reason_off: exit("exit_reason")?,
        kvm_exit_vcpu_off: exit("vcpu_id")?,
        kvm_exit_isa_off: exit("isa")?,
        pio_rw_off: f.offset("kvm/kvm_pio", "rw")?,
        pio_port_off: f.offset("kvm/kvm_pio", "port")?,
        pio_size_off: f.offset("kvm/kvm_pio", "size")?,
        mmio_type_off: f.offset("kvm/kvm_mmio", "type")?,
        mmio_len_off: f.offset("kvm/kvm_mmio", "len")?,
        mmio_gpa_off: f.offset("kvm/kvm_mmio", "gpa")?,
        uexit_reason_off: f.offset("kvm/kvm_userspace_exit", "reason")?,
        uexit_errno_off: f.offset("kvm/kvm_userspace_exit", "errno")?,
        ioctl_fd_off: f.offset("syscalls/sys_enter_ioctl", "fd")?,
        ioctl_cmd_off: f.offset("syscalls/sys_enter_ioctl", "cmd")?,
        btf_exit_deref_off: btf_exit.and_then(|l| l.reason_deref).unwrap_or(NO_DEREF),
        btf_exit_reason_off: btf_exit.map_or(0, |l| l.reason_off),
        btf_exit_vcpu_id_off: btf_exit.map_or(0, |l| l.vcpu_id_off),
    })
}

/// The kernel's answer inside an aya error: the innermost OS error where there is one
/// (aya's outer messages repeat the verifier log, which says nothing for EPERM).
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return io.to_string();
        }
        cur = err.source();
    }
    e.to_string()
}
