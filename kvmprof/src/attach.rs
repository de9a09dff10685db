//! Loads the eBPF object and attaches it as the plan says. Each failure names the hook and
//! the kernel's answer; nothing here decides *what* to hook (that is `plan`).
use anyhow::{anyhow, Context, Result};
use aya::{
    maps::HashMap,
    programs::{FEntry, FExit, KProbe, RawTracePoint, TracePoint},
    Btf, Ebpf, EbpfLoader,
};
use kvmprof_common::Config;

use crate::{
    btfproto::{self, Arg},
    kernel::Facts,
    model::Stage,
    plan::{Mode, Plan},
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

/// Loads the object with `cfg` as its load-time configuration (the `CONFIG` global).
pub fn load(cfg: &Config) -> Result<Ebpf> {
    EbpfLoader::new()
        .map_max_entries("EVENTS", RING_BYTES)
        .override_global("CONFIG", cfg, true)
        .load(OBJECT)
        .map_err(|e| anyhow!("load eBPF object: {e}"))
}

/// Plans the configuration and loads the object for `plan`, tracing only `pids` (all
/// processes when empty).
pub fn load_for(plan: &Plan, facts: &Facts, pids: &[u32]) -> Result<Ebpf> {
    load(&config(plan, facts, !pids.is_empty())?)
}

/// Tries to load one fentry program: the only way to learn whether this kernel (or its
/// sandbox) allows BPF trampolines. The program is not attached.
pub fn probe_fentry(facts: &Facts) -> Option<Result<(), String>> {
    let target = facts
        .btf_funcs
        .iter()
        .find(|f| facts.kallsyms.get(*f).is_some_and(|s| s.module.is_none()))?;
    let btf = match Btf::from_sys_fs() {
        Ok(b) => b,
        Err(e) => return Some(Err(format!("vmlinux BTF: {e}"))),
    };
    let mut ebpf = match load(&Config::default()) {
        Ok(e) => e,
        Err(e) => return Some(Err(e.to_string())),
    };
    let prog: &mut FEntry = ebpf.program_mut("fe_fast_pio")?.try_into().ok()?;
    Some(prog.load(target, &btf).map_err(|e| describe(&e)))
}

/// Attaches everything in `plan` to an object from [`load_for`] with the same `pids`.
pub fn attach(ebpf: &mut Ebpf, plan: &Plan, pids: &[u32]) -> Result<()> {
    let mut pid_map: HashMap<_, u32, u8> =
        HashMap::try_from(ebpf.map_mut("PIDS").context("PIDS map")?)?;
    for p in pids {
        pid_map.insert(p, 1, 0)?;
    }

    // Prototypes of raw tracepoints; without BTF every tracepoint stays classic.
    let protos = btfproto::Btf::load(Some("kvm")).ok();
    for tp in &plan.tracepoints {
        let name =
            tracepoint_program(tp).with_context(|| format!("no program for tracepoint {tp}"))?;
        let (cat, ev) = tp.split_once('/').context("tracepoint name")?;
        if let Some(btf) = &protos {
            if attach_raw(ebpf, btf, tp, ev) {
                continue;
            }
        }
        let prog: &mut TracePoint = ebpf.program_mut(name).context(name)?.try_into()?;
        prog.load()
            .map_err(|e| anyhow!("load {name}: {}", describe(&e)))?;
        prog.attach(cat, ev)
            .map_err(|e| anyhow!("attach tracepoint {tp}: {}", describe(&e)))?;
    }
    attach_thread_exit(ebpf)?;

    let mut btf = None;
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
                if btf.is_none() {
                    btf = Some(Btf::from_sys_fs().context("parse vmlinux BTF")?);
                }
                let btf = btf.as_ref().context("BTF")?;
                let name = format!("fe_{stem}");
                let prog: &mut FEntry =
                    ebpf.program_mut(&name).context(name.clone())?.try_into()?;
                prog.load(sym, btf)
                    .map_err(|e| anyhow!("fentry on {sym} refused: {}", describe(&e)))?;
                prog.attach()
                    .map_err(|e| anyhow!("fentry on {sym}: {}", describe(&e)))?;
                let name = format!("fx_{stem}");
                let prog: &mut FExit = ebpf.program_mut(&name).context(name.clone())?.try_into()?;
                prog.load(sym, btf)
                    .map_err(|e| anyhow!("fexit on {sym} refused: {}", describe(&e)))?;
                prog.attach()
                    .map_err(|e| anyhow!("fexit on {sym}: {}", describe(&e)))?;
            }
            Mode::Tracepoint | Mode::Unavailable => {}
        }
    }
    Ok(())
}

/// `sched:sched_process_exit`: a thread's held userspace exit is handed over when the thread
/// ends, not when recording does (`top` and `serve` run on after a VMM exits).
fn attach_thread_exit(ebpf: &mut Ebpf) -> Result<()> {
    let name = "thread_exit";
    let prog: &mut TracePoint = ebpf.program_mut(name).context(name)?.try_into()?;
    prog.load()
        .map_err(|e| anyhow!("load {name}: {}", describe(&e)))?;
    prog.attach("sched", "sched_process_exit").map_err(|e| {
        anyhow!(
            "attach tracepoint sched/sched_process_exit: {}",
            describe(&e)
        )
    })?;
    Ok(())
}

/// The raw tracepoint program standing in for a classic one, and the types of the
/// arguments it reads, by position (`kvmprof-ebpf/src/probes/kvm.rs`).
fn raw_variant(tp: &str) -> Option<(&'static str, &'static [Arg])> {
    Some(match tp {
        "kvm/kvm_pio" => ("raw_kvm_pio", &[Arg::Int(4), Arg::Int(4), Arg::Int(4)]),
        "kvm/kvm_mmio" => ("raw_kvm_mmio", &[Arg::Int(4), Arg::Int(4), Arg::Int(8)]),
        "kvm/kvm_userspace_exit" => ("raw_kvm_userspace_exit", &[Arg::Int(4), Arg::Int(4)]),
        _ => return None,
    })
}

/// Attaches the raw tracepoint variant of `tp` where this kernel's prototype has the
/// arguments it reads; `false` means use the classic tracepoint (no variant, another
/// prototype, or the kernel refused it).
fn attach_raw(ebpf: &mut Ebpf, btf: &btfproto::Btf, tp: &str, event: &str) -> bool {
    let Some((name, want)) = raw_variant(tp) else {
        return false;
    };
    let fits = btf
        .tracepoint_args(event)
        .is_some_and(|args| args.len() >= want.len() && args[..want.len()] == *want);
    if !fits {
        return false;
    }
    let Some(Ok(prog)) = ebpf.program_mut(name).map(<&mut RawTracePoint>::try_from) else {
        return false;
    };
    prog.load().is_ok() && prog.attach(event).is_ok()
}

/// The run-time configuration: cycle boundary and tracepoint field offsets of this kernel.
fn config(plan: &Plan, f: &Facts, filter: bool) -> Result<Config> {
    let exit = |field| {
        if plan.tracepoints.iter().any(|t| t == "kvm/kvm_exit") {
            f.offset("kvm/kvm_exit", field)
        } else {
            Ok(0)
        }
    };
    let mut cfg = Config {
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
        fixed_fields: 0,
    };
    cfg.fixed_fields = fixed_fields_hold(&cfg) as u32;
    Ok(cfg)
}

/// Whether every field the programs can load at a fixed offset is at that offset here.
fn fixed_fields_hold(c: &Config) -> bool {
    use kvmprof_common::fixed;
    [
        (c.pio_rw_off, fixed::PIO_RW),
        (c.pio_port_off, fixed::PIO_PORT),
        (c.pio_size_off, fixed::PIO_SIZE),
        (c.mmio_type_off, fixed::MMIO_TYPE),
        (c.mmio_len_off, fixed::MMIO_LEN),
        (c.mmio_gpa_off, fixed::MMIO_GPA),
        (c.uexit_reason_off, fixed::UEXIT_REASON),
        (c.uexit_errno_off, fixed::UEXIT_ERRNO),
        (c.ioctl_fd_off, fixed::IOCTL_FD),
        (c.ioctl_cmd_off, fixed::IOCTL_CMD),
    ]
    .iter()
    .all(|(actual, expected)| actual == expected)
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
