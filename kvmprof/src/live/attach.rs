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
    programs::{BtfTracePoint, FEntry, FExit, KProbe, RawTracePoint, TracePoint},
    Ebpf, EbpfLoader,
};
use kvmprof_common::{
    follow,
    names::{self, hook, map, tracepoint_programs},
    pids, Config, NO_DEREF, STAGES,
};

use crate::{
    data::{funcs::FuncHook, model::Stage},
    host::btf,
    host::kernel::Facts,
    host::plan::{HookPref, Mode, Plan},
};

/// The eBPF object built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kvmprof-ebpf"));

/// Ring buffer size: at 100 ns per record drained, 8 MiB holds ~80k exits of backlog.
const RING_BYTES: u32 = 8 << 20;

/// Loads the object with `cfg` as its load-time configuration (the `CONFIG` global).
fn load(cfg: &Config) -> Result<Ebpf> {
    EbpfLoader::new()
        .map_max_entries(map::EVENTS, RING_BYTES)
        .override_global(map::CONFIG, cfg, true)
        .load(OBJECT)
        .map_err(|e| anyhow!("load eBPF object: {e}"))
}

/// Which exits go as records rather than into the kernel's tally (`kvmprof_common::tally`):
/// every one (`--exits`), or those over a `--slow` threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Records {
    pub every_exit: bool,
    /// Per stage, the duration over which an exit goes as a record.
    pub over_ns: [u64; STAGES],
}

impl Default for Records {
    fn default() -> Self {
        Records {
            every_exit: false,
            over_ns: [u64::MAX; STAGES],
        }
    }
}

impl Records {
    /// The exits `rule` lists must reach userspace one by one.
    pub fn over(rule: &crate::data::slow::Rule) -> Records {
        let mut r = Records::default();
        for s in &rule.stages {
            if let Some(ns) = r.over_ns.get_mut(s.index()) {
                *ns = rule.threshold_ns;
            }
        }
        r
    }
}

/// Loads the object configured for `plan` (the configuration is a load-time global), tracing
/// only the processes in its PIDS map when `filter` is set, logging anomalies when `debug`.
pub fn load_for(
    plan: &Plan,
    facts: &Facts,
    filter: bool,
    records: Records,
    debug: bool,
    funcs: usize,
) -> Result<Ebpf> {
    let cfg = Config {
        debug_bpf: debug as u32,
        funcs: funcs as u32,
        ..config(plan, facts, filter, records)?
    };
    load(&cfg)
}

/// Loads a BTF-targeted tracing program on `target`.
macro_rules! load_btf_program {
    ($ty:ty, $ebpf:expr, $name:expr, $target:expr) => {{
        let prog: &mut $ty = $ebpf
            .program_mut($name)
            .context($name.to_string())?
            .try_into()?;
        let t: &btf::Target = $target;
        let fd = btf::open_object(t.module.as_deref())?;
        prog.load_by_btf_id(t.type_id, fd)
            .map_err(|e| anyhow!("{}", describe(&e)))
    }};
}

fn load_fentry(ebpf: &mut Ebpf, facts: &Facts, name: &str, sym: &str) -> Result<()> {
    let target = facts
        .btf_funcs
        .get(sym)
        .with_context(|| format!("{sym} has no BTF entry"))?;
    load_btf_program!(FEntry, ebpf, name, target)
}

/// Loads and attaches kprobe `kp_<stem>` and kretprobe `krp_<stem>` on `sym` (a stage's, or
/// `--func`'s): each failure is [`Refused`].
pub(super) fn attach_kprobes(ebpf: &mut Ebpf, stem: &str, sym: &str) -> Result<()> {
    for (prefix, what) in [(hook::KPROBE, "kprobe"), (hook::KRETPROBE, "kretprobe")] {
        let name = format!("{prefix}{stem}");
        try_hook(&name, format!("{what} on {sym}"), || {
            let prog: &mut KProbe = ebpf.program_mut(&name).context(name.clone())?.try_into()?;
            prog.load().map_err(|e| anyhow!("{}", describe(&e)))?;
            prog.attach(sym, 0)
                .map_err(|e| anyhow!("attach: {}", describe(&e)))?;
            Ok(())
        })?;
    }
    Ok(())
}

/// Loads and attaches fentry program `names[0]` and fexit program `names[1]` on `sym`,
/// whose BTF entry is `target`: each failure, a missing entry too, is [`Refused`].
pub(super) fn attach_fentry_fexit(
    ebpf: &mut Ebpf,
    names: [&str; 2],
    sym: &str,
    target: Option<&btf::Target>,
) -> Result<()> {
    let target = || target.with_context(|| format!("{sym} has no BTF entry"));
    let [fentry, fexit] = names;
    try_hook(fentry, format!("fentry on {sym}"), || {
        load_btf_program!(FEntry, ebpf, fentry, target()?)?;
        let prog: &mut FEntry = ebpf
            .program_mut(fentry)
            .context(fentry.to_owned())?
            .try_into()?;
        prog.attach()
            .map_err(|e| anyhow!("attach: {}", describe(&e)))?;
        Ok(())
    })?;
    try_hook(fexit, format!("fexit on {sym}"), || {
        load_btf_program!(FExit, ebpf, fexit, target()?)?;
        let prog: &mut FExit = ebpf
            .program_mut(fexit)
            .context(fexit.to_owned())?
            .try_into()?;
        prog.attach()
            .map_err(|e| anyhow!("attach: {}", describe(&e)))?;
        Ok(())
    })
}

/// The kernel refused a program of the plan when it was loaded or attached: the session
/// plans again without it (`Facts::refused`), so the next hook for that stage or tracepoint
/// is taken.
#[derive(Debug)]
pub struct Refused {
    /// The program's name in the object.
    pub program: String,
    /// The hook, e.g. `fentry on svm_vcpu_run`.
    pub what: String,
    /// The kernel's answer.
    pub why: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} refused: {}", self.what, self.why)
    }
}

impl std::error::Error for Refused {}

/// For tests only: `KVMPROF_REFUSE=<program>[,<program>...]` makes kvmprof act as if the
/// kernel refused those programs (names as in `kvmprof-ebpf`, e.g. `raw_kvm_pio`,
/// `fe_vendor_run`, `tpb_kvm_exit`), to exercise the fallbacks on kernels that refuse none.
const REFUSE_ENV: &str = "KVMPROF_REFUSE";

/// Runs `load_and_attach` for `program` (the `what` hook), turning any failure, or a
/// refusal forced through [`REFUSE_ENV`], into [`Refused`].
pub(super) fn try_hook(
    program: &str,
    what: String,
    load_and_attach: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let forced = std::env::var(REFUSE_ENV).is_ok_and(|v| v.split(',').any(|p| p.trim() == program));
    let outcome = if forced {
        Err(anyhow!("refused through {REFUSE_ENV} (a test switch)"))
    } else {
        load_and_attach()
    };
    outcome.map_err(|e| {
        anyhow::Error::new(Refused {
            program: program.to_string(),
            what,
            why: format!("{e:#}"),
        })
    })
}

/// What a session asks for beyond the plan's stages.
pub struct Asked<'a> {
    /// `--detail`.
    pub detail: bool,
    /// `--func`, hooked as `hooks` prefers.
    pub funcs: &'a [String],
    pub hooks: HookPref,
}

/// Attaches everything in `plan` to the object [`load_for`] loaded for it, filtered to
/// `targets` (that object traces every process when it was loaded without `filter`), and
/// to the processes they create from now on when `children`. A program the kernel refuses
/// fails the whole as [`Refused`].
pub fn attach(
    ebpf: &mut Ebpf,
    plan: &Plan,
    facts: &Facts,
    targets: &[u32],
    children: bool,
    asked: &Asked,
) -> Result<Vec<FuncHook>> {
    let detail = asked.detail;
    let mut pid_map: HashMap<_, u32, u8> =
        HashMap::try_from(ebpf.map_mut(map::PIDS).context("PIDS map")?)?;
    for p in targets {
        pid_map.insert(p, pids::GIVEN, 0)?;
    }
    if children {
        attach_follow(ebpf, facts)?;
    }

    for tp in &plan.btf_tracepoints {
        let name = tracepoint_programs(tp)
            .and_then(|p| p.btf)
            .with_context(|| format!("no tp_btf program for tracepoint {tp}"))?;
        let target = facts
            .btf_tracepoints
            .get(tp)
            .with_context(|| format!("{tp} has no btf_trace type"))?;
        try_hook(name, format!("tp_btf {tp}"), || {
            load_btf_program!(BtfTracePoint, ebpf, name, target)?;
            let prog: &mut BtfTracePoint = ebpf.program_mut(name).context(name)?.try_into()?;
            prog.attach()
                .map_err(|e| anyhow!("attach: {}", describe(&e)))?;
            Ok(())
        })?;
    }
    for tp in &plan.tracepoints {
        if plan.btf_tracepoints.contains(tp) {
            continue;
        }
        let programs =
            tracepoint_programs(tp).with_context(|| format!("no program for tracepoint {tp}"))?;
        let (cat, ev) = tp.split_once('/').context("tracepoint name")?;
        if plan.raw_tracepoints.contains(tp) {
            let (name, _) = programs.raw.context("no raw program")?;
            try_hook(name, format!("raw tracepoint {tp}"), || {
                let prog: &mut RawTracePoint = ebpf.program_mut(name).context(name)?.try_into()?;
                prog.load().map_err(|e| anyhow!("{}", describe(&e)))?;
                prog.attach(ev)
                    .map_err(|e| anyhow!("attach: {}", describe(&e)))?;
                Ok(())
            })?;
            continue;
        }
        let name = programs.classic;
        try_hook(name, format!("tracepoint {tp}"), || {
            let prog: &mut TracePoint = ebpf.program_mut(name).context(name)?.try_into()?;
            prog.load().map_err(|e| anyhow!("{}", describe(&e)))?;
            prog.attach(cat, ev)
                .map_err(|e| anyhow!("attach: {}", describe(&e)))?;
            Ok(())
        })?;
    }
    attach_thread_exit(ebpf)?;
    super::sched::attach(ebpf, plan, facts)?;
    if let Err(e) = attach_halts(ebpf, facts) {
        // The exits are recorded all the same; only the halt table is missing.
        eprintln!("kvmprof: warning: halts are not laid out: {e:#}");
    }
    if detail {
        if let Err(e) = attach_detail(ebpf, facts) {
            // The exits are recorded all the same, filed by reason and port only.
            eprintln!("kvmprof: warning: --detail: {e:#}");
        }
    }
    if plan.run_entry_fentry {
        let (name, sym) = (hook::RUN_ENTRY, crate::backend::RUN_IOCTL);
        try_hook(name, format!("fentry on {sym}"), || {
            load_fentry(ebpf, facts, name, sym)?;
            let prog: &mut FEntry = ebpf.program_mut(name).context(name)?.try_into()?;
            prog.attach()
                .map_err(|e| anyhow!("attach: {}", describe(&e)))?;
            Ok(())
        })?;
    }

    for sp in &plan.stages {
        let Some(stem) = hook::stem(sp.stage.index()) else {
            continue;
        };
        // Unless `vcpu_enter_guest` itself is hooked, the cycle is bounded by another
        // stage's hook (or tracepoints) and has no function of its own to attach to.
        if sp.stage == Stage::Cycle && plan.boundary != kvmprof_common::boundary::ENTER_GUEST {
            continue;
        }
        let sym = sp.symbol.as_str();
        match sp.mode {
            Mode::Kprobe => attach_kprobes(ebpf, stem, sym)?,
            Mode::Fentry => {
                let fexit = if sp.stage == Stage::VendorRun && plan.reason_at_vendor_return {
                    hook::VENDOR_RUN_REASON.to_string()
                } else {
                    format!("{}{stem}", hook::FEXIT)
                };
                let fentry = format!("{}{stem}", hook::FENTRY);
                let target = facts.btf_funcs.get(sym);
                attach_fentry_fexit(ebpf, [&fentry, &fexit], sym, target)?;
            }
            Mode::Tracepoint | Mode::Unavailable => {}
        }
    }
    super::funcs::attach(ebpf, facts, asked.hooks, asked.funcs)
}

/// `sched:sched_process_exit`: a thread's held userspace exit is handed over when the thread
/// ends, not when recording does (`top` and `serve` run on after a VMM exits).
fn attach_thread_exit(ebpf: &mut Ebpf) -> Result<()> {
    attach_classic(ebpf, names::tp::SCHED_PROCESS_EXIT)
}

/// `task:task_newtask`: each process a traced process creates is traced too, from before
/// it runs (wrappers such as `sh -c`, `timeout` and libvirt start the VMM as a child).
fn attach_follow(ebpf: &mut Ebpf, facts: &Facts) -> Result<()> {
    let tp = names::tp::TASK_NEWTASK;
    let mut offsets: Array<_, u32> =
        Array::try_from(ebpf.map_mut(map::FOLLOW).context("FOLLOW map")?)?;
    offsets.set(follow::PID_OFF, facts.offset(tp, "pid")?, 0)?;
    offsets.set(follow::CLONE_FLAGS_OFF, facts.offset(tp, "clone_flags")?, 0)?;
    attach_classic(ebpf, tp)
}

/// `kvm:kvm_vcpu_wakeup` and `kvm:kvm_halt_poll_ns`: the halts KVM keeps in the kernel
/// (`kvmprof_common::halt`), with their field offsets from this kernel's format files.
fn attach_halts(ebpf: &mut Ebpf, facts: &Facts) -> Result<()> {
    use kvmprof_common::halt::field;
    let (wake, poll) = (names::tp::KVM_VCPU_WAKEUP, names::tp::KVM_HALT_POLL_NS);
    let mut fields: Array<_, u32> =
        Array::try_from(ebpf.map_mut(map::HALT_FIELDS).context("HALT_FIELDS map")?)?;
    for (i, tp, name) in [
        (field::WAKEUP_NS, wake, "ns"),
        (field::WAKEUP_WAITED, wake, "waited"),
        (field::WAKEUP_VALID, wake, "valid"),
        (field::POLL_NEW, poll, "new"),
        (field::POLL_OLD, poll, "old"),
    ] {
        fields.set(i, facts.offset(tp, name)?, 0)?;
    }
    attach_classic(ebpf, poll)?;
    attach_classic(ebpf, wake)
}

/// `--detail`: `kvm:kvm_msr`, `kvm:kvm_cpuid`, `kvm:kvm_hypercall` (and Xen's and Hyper-V's)
/// and `kvm:kvm_page_fault` name the MSR, leaf, hypercall or guest page of their exits, and a
/// second program on `kvm:kvm_exit` counts exits by guest RIP (`kvmprof_common::detail`), with
/// their field offsets from this kernel's format files.
/// Each that cannot be attached is named in the error; the others stay attached. A kernel
/// without the Xen or Hyper-V tracepoint was built without KVM's support of that ABI, so no
/// guest of it makes such hypercalls: nothing to attach, nothing lost.
fn attach_detail(ebpf: &mut Ebpf, facts: &Facts) -> Result<()> {
    use kvmprof_common::detail::field;
    use names::tp;
    let (msr, cpuid, hcall, exit) = (tp::KVM_MSR, tp::KVM_CPUID, tp::KVM_HYPERCALL, tp::KVM_EXIT);
    let (fault, xen, hv) = (
        tp::KVM_PAGE_FAULT,
        tp::KVM_XEN_HYPERCALL,
        tp::KVM_HV_HYPERCALL,
    );
    let fields: [(u32, &str, &str); field::LEN as usize] = [
        (field::MSR_WRITE, msr, "write"),
        (field::MSR_ECX, msr, "ecx"),
        (field::CPUID_FUNCTION, cpuid, "function"),
        (field::CPUID_INDEX, cpuid, "index"),
        (field::HYPERCALL_NR, hcall, "nr"),
        (field::EXIT_REASON, exit, "exit_reason"),
        (field::EXIT_ISA, exit, "isa"),
        (field::EXIT_RIP, exit, "guest_rip"),
        (field::PAGE_FAULT_ADDRESS, fault, "fault_address"),
        (field::XEN_HYPERCALL_NR, xen, "nr"),
        (field::HV_HYPERCALL_CODE, hv, "code"),
    ];
    let abi_built_in = |tp: &str| ![xen, hv].contains(&tp) || facts.tracepoints.contains_key(tp);
    let programs = [msr, cpuid, hcall, xen, hv, fault]
        .into_iter()
        .filter(|tp| abi_built_in(tp))
        .map(|tp| Ok((tp, programs_of(tp)?.classic)))
        .chain([Ok((exit, names::RIP_PROGRAM))])
        .collect::<Result<Vec<_>>>()?;
    // Under PVM no exit opens before its port or MMIO access (IDENT), so there is no open
    // exit to file, and `kvm_exit` does not fire: nothing to attach.
    if !crate::backend::hooks(facts.vendor()).kvm_exit_fires {
        anyhow::bail!(
            "{exit} does not fire on {}: exits keep their reason, port and address only",
            facts.vendor().label()
        );
    }
    let mut failed = Vec::new();
    for (tp, program) in programs {
        let attached = (|| {
            let mut offsets: Array<_, u32> = Array::try_from(
                ebpf.map_mut(map::DETAIL_FIELDS)
                    .context("DETAIL_FIELDS map")?,
            )?;
            for (i, _, name) in fields.iter().filter(|(_, t, _)| *t == tp) {
                offsets.set(*i, facts.offset(tp, name)?, 0)?;
            }
            attach_classic_program(ebpf, program, tp)
        })();
        if let Err(e) = attached {
            failed.push(format!("{tp}: {e:#}"));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{}; those exits keep only their reason", failed.join("; "))
    }
}

fn programs_of(tp: &str) -> Result<&'static names::TracepointPrograms> {
    tracepoint_programs(tp).with_context(|| format!("no program for {tp}"))
}

/// Loads and attaches the classic-tracepoint program of `tp` ("category/event"), for the
/// hooks that are not stages and so are never planned (no fallback to choose from).
fn attach_classic(ebpf: &mut Ebpf, tp: &str) -> Result<()> {
    attach_classic_program(ebpf, programs_of(tp)?.classic, tp)
}

/// Loads classic-tracepoint program `name` and attaches it to `tp` ("category/event").
fn attach_classic_program(ebpf: &mut Ebpf, name: &'static str, tp: &str) -> Result<()> {
    let (cat, ev) = tp.split_once('/').context("tracepoint name")?;
    let prog: &mut TracePoint = ebpf.program_mut(name).context(name)?.try_into()?;
    prog.load()
        .map_err(|e| anyhow!("load {name}: {}", describe(&e)))?;
    prog.attach(cat, ev)
        .map_err(|e| anyhow!("attach tracepoint {tp}: {}", describe(&e)))?;
    Ok(())
}

/// The run-time configuration: cycle boundary and tracepoint field offsets of this kernel,
/// and which exits go as records.
fn config(plan: &Plan, f: &Facts, filter: bool, records: Records) -> Result<Config> {
    let exit = |field| {
        let classic = |t: &String| t == names::tp::KVM_EXIT && !plan.btf_tracepoints.contains(t);
        if plan.tracepoints.iter().any(classic) {
            f.offset(names::tp::KVM_EXIT, field)
        } else {
            Ok(0)
        }
    };
    let btf_exit = match &f.kvm_exit_layout {
        Some(Ok(l))
            if plan.reason_at_vendor_return
                || plan
                    .btf_tracepoints
                    .iter()
                    .any(|t| t == names::tp::KVM_EXIT) =>
        {
            Some(*l)
        }
        _ => None,
    };
    let run = f.run_path;
    let mut cfg = Config {
        boundary: plan.boundary,
        filter_pids: filter as u32,
        kvm_exit_reason_off: exit("exit_reason")?,
        kvm_exit_vcpu_off: exit("vcpu_id")?,
        kvm_exit_isa_off: exit("isa")?,
        pio_rw_off: f.offset(names::tp::KVM_PIO, "rw")?,
        pio_port_off: f.offset(names::tp::KVM_PIO, "port")?,
        pio_size_off: f.offset(names::tp::KVM_PIO, "size")?,
        mmio_type_off: f.offset(names::tp::KVM_MMIO, "type")?,
        mmio_len_off: f.offset(names::tp::KVM_MMIO, "len")?,
        mmio_gpa_off: f.offset(names::tp::KVM_MMIO, "gpa")?,
        uexit_reason_off: f.offset(names::tp::KVM_USERSPACE_EXIT, "reason")?,
        uexit_errno_off: f.offset(names::tp::KVM_USERSPACE_EXIT, "errno")?,
        ioctl_fd_off: f.offset(names::tp::SYS_ENTER_IOCTL, "fd")?,
        ioctl_cmd_off: f.offset(names::tp::SYS_ENTER_IOCTL, "cmd")?,
        btf_exit_deref_off: btf_exit.and_then(|l| l.reason_deref).unwrap_or(NO_DEREF),
        btf_exit_reason_off: btf_exit.map_or(0, |l| l.reason_off),
        btf_exit_vcpu_id_off: btf_exit.map_or(0, |l| l.vcpu_id_off),
        fixed_fields: 0,
        per_exit: records.every_exit as u32,
        task_pid_off: f.sched.task_ids.map_or(0, |t| t.0),
        task_tgid_off: f.sched.task_ids.map_or(0, |t| t.1),
        run_known: (plan.boundary == kvmprof_common::boundary::IDENT && run.is_some()) as u32,
        run_files_off: run.map_or(0, |r| r.files),
        run_fdt_off: run.map_or(0, |r| r.fdt),
        run_fd_array_off: run.map_or(0, |r| r.fd_array),
        run_private_off: run.map_or(0, |r| r.private_data),
        run_vcpu_run_off: run.map_or(0, |r| r.run),
        debug_bpf: 0,
        any_slow: records.over_ns.iter().any(|&t| t != u64::MAX) as u32,
        slow_ns: records.over_ns,
        funcs: 0,
        _pad_funcs: 0,
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
pub(super) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        }) = err.downcast_ref::<aya::programs::ProgramError>()
        {
            return refused(io_error, &format!("{verifier_log:?}"));
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return io.to_string();
        }
        cur = err.source();
    }
    e.to_string()
}

/// A program the verifier refused: the error and the verifier's reason (the last line of its
/// log before the statistics), and the whole log in `$KVMPROF_VERIFIER_LOG` when set.
fn refused(io: &std::io::Error, log: &str) -> String {
    if let Some(path) = std::env::var_os("KVMPROF_VERIFIER_LOG") {
        // Best effort: the one-line error below is the report either way.
        let _ = std::fs::write(path, log);
    }
    let stats = [
        "processed ",
        "verification time",
        "stack depth",
        "max_states",
        "mark_read",
    ];
    let reason = log
        .lines()
        .map(str::trim)
        .rev()
        .find(|l| !l.is_empty() && !stats.iter().any(|s| l.starts_with(s)));
    match reason {
        Some(r) => format!("{io}; the verifier said: {r}"),
        None => io.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use aya_obj::btf::BtfKind;
    use object::{Object, ObjectSection, ObjectSymbol};

    use super::*;

    /// Program name → ELF section of every program in the embedded object.
    fn sections() -> HashMap<String, String> {
        let elf = object::File::parse(OBJECT).expect("the embedded eBPF object is ELF");
        elf.symbols()
            .filter(|s| s.kind() == object::SymbolKind::Text)
            .filter_map(|s| {
                let sec = elf.section_by_index(s.section_index()?).ok()?;
                Some((s.name().ok()?.to_owned(), sec.name().ok()?.to_owned()))
            })
            .collect()
    }

    /// Every program, map and global userspace names (`kvmprof_common::names`) is in the
    /// object aya loads, and each tracepoint program is attached where its name says: a
    /// rename on one side only fails here, not at attach time on some kernel.
    #[test]
    fn the_ebpf_object_has_every_program_and_map_userspace_names() {
        let obj = aya_obj::Object::parse(OBJECT).expect("aya parses the embedded object");
        let sections = sections();
        let mut wrong = Vec::new();
        let mut expect = |prog: &str, section: String| {
            if !obj.programs.contains_key(prog) {
                wrong.push(format!("program {prog} missing"));
            } else if sections.get(prog) != Some(&section) {
                wrong.push(format!(
                    "{prog} is in {:?}, not {section}",
                    sections.get(prog)
                ));
            }
        };
        for p in names::TRACEPOINT_PROGRAMS {
            let event = p.tracepoint.split_once('/').map_or("", |(_, e)| e);
            expect(p.classic, format!("tracepoint/{}", p.tracepoint));
            if p.tracepoint == names::tp::KVM_EXIT {
                expect(names::RIP_PROGRAM, format!("tracepoint/{}", p.tracepoint));
            }
            if let Some((raw, _)) = p.raw {
                expect(raw, format!("raw_tp/{event}"));
            }
            if let Some(btf) = p.btf {
                expect(btf, format!("tp_btf/{event}"));
            }
        }
        for (prog, tp) in [
            (names::sched::SWITCH_PROGRAM, names::sched::SWITCH),
            (names::sched::WAKEUP_PROGRAM, names::sched::WAKEUP),
        ] {
            let event = tp.split_once('/').map_or("", |(_, e)| e);
            expect(prog, format!("raw_tp/{event}"));
        }
        for (prefix, kind) in hook::PREFIXES
            .iter()
            .zip(["kprobe", "kretprobe", "fentry", "fexit"])
        {
            let stages = hook::STEMS.iter().map(|(_, stem)| *stem);
            for stem in stages.chain(kvmprof_common::func::STEMS) {
                expect(&format!("{prefix}{stem}"), kind.to_owned());
            }
        }
        expect(hook::VENDOR_RUN_REASON, "fexit".to_owned());
        expect(hook::RUN_ENTRY, "fentry".to_owned());
        for m in map::ALL {
            if !obj.maps.contains_key(m) {
                wrong.push(format!("map {m} missing"));
            }
        }
        let btf = obj.btf.as_ref().expect("the object has BTF");
        if btf.id_by_type_name_kind(map::CONFIG, BtfKind::Var).is_err() {
            wrong.push(format!("global {} missing", map::CONFIG));
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    /// Every program's worst call chain fits in the 512 bytes of stack that Debian 6.1's
    /// verifier allows a whole chain, counted as it counts: each frame's deepest stack slot,
    /// rounded up to 32 bytes (newer kernels round to 16 under the JIT, so this host's
    /// verifier passes chains that 6.1 refuses: the issue 18 tally did, at 576 bytes, and it
    /// was first seen in the VM matrix). Statically, from the object's instructions: a frame
    /// is as deep as its deepest `r10 - N` access or `rX = r10; rX += -N`.
    #[test]
    fn every_programs_call_chain_fits_the_stack_that_the_6_1_verifier_allows() {
        const LIMIT: u64 = 512;
        let chains = stack_chains();
        assert!(chains.len() > 20, "programs found: {chains:?}");
        let over: Vec<_> = chains.iter().filter(|(_, d, _)| *d > LIMIT).collect();
        assert!(over.is_empty(), "over {LIMIT} bytes of stack: {over:#?}");
    }

    /// A call chain: each frame's function and own stack depth, outermost first.
    type Frames = Vec<(String, u64)>;

    /// Each program: (name, stack of its deepest call chain, that chain).
    fn stack_chains() -> Vec<(String, u64, Frames)> {
        use object::{ObjectSection, RelocationTarget, SectionIndex};

        struct Func {
            name: String,
            section: SectionIndex,
            start: u64,
            depth: u64,
            /// Callees as (section, byte offset of their first instruction).
            calls: Vec<(SectionIndex, u64)>,
            global: bool,
        }
        let elf = object::File::parse(OBJECT).expect("the embedded eBPF object is ELF");
        let mut funcs = Vec::new();
        for sym in elf.symbols() {
            if sym.kind() != object::SymbolKind::Text || sym.size() == 0 {
                continue;
            }
            let Some(section) = sym.section_index() else {
                continue;
            };
            let sec = elf.section_by_index(section).expect("symbol's section");
            let data = sec.data().expect("section data");
            let relocs: HashMap<u64, object::Relocation> = sec.relocations().collect();
            let (start, end) = (sym.address(), sym.address() + sym.size());
            let mut depth = 0u64;
            let mut calls = Vec::new();
            let mut frame_ptrs = 0u16;
            let mut at = start;
            while at + 8 <= end {
                let i = &data[at as usize..at as usize + 8];
                let (code, dst, src) = (i[0], i[1] & 0xf, i[1] >> 4);
                let off = i16::from_le_bytes([i[2], i[3]]);
                let imm = i32::from_le_bytes([i[4], i[5], i[6], i[7]]);
                let deeper = |n: i64| u64::try_from(-n).unwrap_or(0);
                match code & 7 {
                    // ST, STX: store to dst + off; LDX: load from src + off.
                    2 | 3 if dst == 10 => depth = depth.max(deeper(off.into())),
                    1 if src == 10 => depth = depth.max(deeper(off.into())),
                    _ => {}
                }
                if code == 0xbf && src == 10 {
                    frame_ptrs |= 1 << dst;
                } else if code == 0x07 && frame_ptrs & (1 << dst) != 0 {
                    depth = depth.max(deeper(imm.into()));
                    frame_ptrs &= !(1 << dst);
                }
                if code == 0x85 && src == 1 {
                    // A call of a subprogram: relative to the next instruction, or to a
                    // symbol when relocated.
                    let target = match relocs.get(&at).map(|r| r.target()) {
                        Some(RelocationTarget::Symbol(s)) => {
                            let s = elf.symbol_by_index(s).expect("relocation symbol");
                            let sec = s.section_index().expect("callee's section");
                            (sec, s.address() as i64 + (i64::from(imm) + 1) * 8)
                        }
                        _ => (section, at as i64 + (i64::from(imm) + 1) * 8),
                    };
                    calls.push((target.0, target.1 as u64));
                }
                at += if code == 0x18 { 16 } else { 8 };
            }
            funcs.push(Func {
                name: sym.name().expect("symbol name").to_owned(),
                section,
                start,
                depth,
                calls,
                global: sym.is_global() && sec.name() != Ok(".text"),
            });
        }
        fn chain(funcs: &[Func], f: usize, seen: &mut Vec<usize>) -> (u64, Frames) {
            let own = funcs[f].depth.max(1).div_ceil(32) * 32;
            let mut deepest = (0, Vec::new());
            if !seen.contains(&f) {
                seen.push(f);
                for &(sec, start) in &funcs[f].calls {
                    let callee = funcs
                        .iter()
                        .position(|g| g.section == sec && g.start == start);
                    let callee = callee.expect("every call lands on a function");
                    let c = chain(funcs, callee, seen);
                    if c.0 > deepest.0 {
                        deepest = c;
                    }
                }
                seen.pop();
            }
            let mut frames = vec![(funcs[f].name.clone(), funcs[f].depth)];
            frames.extend(deepest.1);
            (own + deepest.0, frames)
        }
        (0..funcs.len())
            .filter(|&f| funcs[f].global)
            .map(|f| {
                let (depth, frames) = chain(&funcs, f, &mut Vec::new());
                (funcs[f].name.clone(), depth, frames)
            })
            .collect()
    }
}
