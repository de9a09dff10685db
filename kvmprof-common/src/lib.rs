//! Types shared by the eBPF programs (`kvmprof-ebpf`) and the userspace loader (`kvmprof`).
//!
//! Everything here is `#[repr(C)]` plain data: the kernel writes it into maps and the ring
//! buffer, userspace reads it back byte for byte.
#![no_std]

pub mod detail;
pub mod duration;
pub mod func;
pub mod halt;
pub mod tally;

/// Number of timed stages in one exit record.
pub const STAGES: usize = 8;

/// The stages of one VM exit cycle, as indices into [`ExitRecord::stage_ns`].
///
/// Nesting on a kernel with vendor hooks: `Cycle ⊃ VendorRun`, `Cycle ⊃ Handler ⊃ FastPio`.
/// `KvmRun` is the whole KVM_RUN ioctl that ended with this exit (userspace exits only) and
/// `Vmm` is the time the VMM spent in userspace before it called KVM_RUN again.
pub mod stage {
    /// One exit cycle: `vcpu_enter_guest` when it can be hooked, otherwise the interval from
    /// the previous cycle boundary to this exit's boundary (see the report's "cycle source").
    pub const CYCLE: usize = 0;
    /// `svm_vcpu_run` / `vmx_vcpu_run` / `pvm_vcpu_run`: world switch + guest time.
    pub const VENDOR_RUN: usize = 1;
    /// `svm_handle_exit` / `handle_exit` / `vmx_handle_exit` / `pvm_handle_exit`.
    pub const HANDLER: usize = 2;
    /// `kvm_fast_pio`.
    pub const FAST_PIO: usize = 3;
    /// The KVM_RUN ioctl, from its entry to its return to userspace.
    pub const KVM_RUN: usize = 4;
    /// Userspace round trip: from KVM_RUN's return to the next KVM_RUN on that thread.
    pub const VMM: usize = 5;
    /// Off-CPU but runnable inside the exit (its cycle and, for a userspace exit, the VMM's
    /// round trip): preempted (switched out with `prev_state == TASK_RUNNING`), or woken and
    /// not yet running again. What the kernel's schedstat counts as `run_delay`.
    pub const SCHED_WAIT: usize = 6;
    /// Off-CPU and blocked inside the exit: from a switch-out while sleeping to the wake-up.
    pub const SCHED_SLEEP: usize = 7;

    /// The stages' names, by index: in hook program names, data-file tags, JSON, reports
    /// and the command line.
    pub const NAMES: [&str; crate::STAGES] = [
        "cycle",
        "vendor_run",
        "handler",
        "fast_pio",
        "kvm_run",
        "vmm",
        "sched_wait",
        "sched_sleep",
    ];
}

/// Stages timed by a pair of function hooks (entry + return); indices into
/// [`ThreadState::stage_start`] and the `hook_*` programs.
pub const HOOKED_STAGES: usize = 4;

/// What a record is.
pub mod kind {
    /// A completed exit. A userspace exit is complete once the VMM called KVM_RUN again
    /// (its round trip, `stage_ns[VMM]`) and, for a PIO read, once `kvm:kvm_pio` revealed the
    /// port at its completion: the kernel holds it per thread until then, so every record is
    /// a whole exit and records may arrive in any order.
    pub const EXIT: u8 = 1;
}

/// How to read [`ExitRecord::reason`].
pub mod space {
    /// No reason known.
    pub const NONE: u8 = 0;
    /// `kvm_run->exit_reason` (KVM_EXIT_*): the exit went to userspace.
    pub const USERSPACE: u8 = 1;
    /// VMX basic exit reason (full 32-bit value kept; flags in the high bits).
    pub const VMX: u8 = 2;
    /// SVM exit code.
    pub const SVM: u8 = 3;
    /// Derived from the KVM tracepoint that identified an in-kernel exit (PIO or MMIO)
    /// on a kernel where `kvm:kvm_exit` does not fire (PVM).
    pub const TRACEPOINT: u8 = 4;

    /// The space of `kvm:kvm_exit`'s `isa` argument (`KVM_ISA_VMX` 1, `KVM_ISA_SVM` 2).
    #[inline(always)]
    pub fn of_isa(isa: u32) -> u8 {
        if isa == 1 {
            VMX
        } else {
            SVM
        }
    }
}

/// Values of [`ExitRecord::reason`] in [`space::TRACEPOINT`].
pub mod tp_reason {
    pub const PIO: u32 = 1;
    pub const MMIO: u32 = 2;
}

/// Bits of [`ExitRecord::flags`].
pub mod flag {
    /// The exit went to the VMM (KVM_RUN returned).
    pub const USERSPACE: u32 = 1 << 0;
    /// `io_*` fields describe a port I/O access.
    pub const PIO: u32 = 1 << 1;
    /// `io_*` fields describe an MMIO access.
    pub const MMIO: u32 = 1 << 2;
    /// The access is a write (OUT / MMIO write).
    pub const WRITE: u32 = 1 << 3;
    /// The cycle was measured between consecutive exits (no cycle hook).
    pub const CYCLE_INTERVAL: u32 = 1 << 4;
    /// KVM_RUN returned an error (e.g. -EINTR); `errno` holds it.
    pub const ERRNO: u32 = 1 << 5;
    /// Kernel-internal, never in a record: the open exit's start was not observed (the
    /// thread was already inside KVM_RUN when the window opened). Such an exit is counted
    /// in [`super::counter::UNOBSERVED`] instead of being emitted with a made-up cycle.
    pub const UNOBSERVED: u32 = 1 << 6;
    /// `io_addr` is the MSR index of an RDMSR/WRMSR exit (`WRITE` for WRMSR) (`--detail`,
    /// [`crate::detail`]).
    pub const MSR: u32 = 1 << 7;
    /// `io_addr` is the leaf and subleaf of a CPUID exit ([`crate::detail::cpuid_key`]).
    pub const CPUID: u32 = 1 << 8;
    /// `io_addr` is the number of a hypercall.
    pub const HYPERCALL: u32 = 1 << 9;
    /// The exit fired `kvm:kvm_page_fault` (an EPT violation, an NPF; a guest #PF under
    /// shadow paging): `io_addr` is its guest-physical page, or with [`MMIO`] the address of
    /// the MMIO access it became ([`crate::detail`]).
    pub const NPF: u32 = 1 << 10;
    /// With [`HYPERCALL`]: the guest made it by Xen's ABI (`kvm:kvm_xen_hypercall`, in a VM
    /// whose VMM had KVM intercept Xen hypercalls), `io_addr` being Xen's number.
    pub const XEN: u32 = 1 << 11;
    /// With [`HYPERCALL`]: by Hyper-V's ABI (`kvm:kvm_hv_hypercall`, in a VM with Hyper-V
    /// enlightenments), `io_addr` being the call code.
    pub const HYPERV: u32 = 1 << 12;
}

/// One exit (120 bytes), inside a [`Batch`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitRecord {
    pub kind: u8,
    /// See [`space`].
    pub space: u8,
    /// Access size in bytes (PIO/MMIO), 0 otherwise.
    pub io_size: u8,
    pub _pad: u8,
    /// See [`flag`].
    pub flags: u32,
    pub pid: u32,
    pub tid: u32,
    /// The vCPU file descriptor KVM_RUN was called on (userspace resolves it to the vCPU id
    /// through `/proc/PID/fd`); -1 if not seen.
    pub vcpu_fd: i32,
    /// vCPU id from `kvm:kvm_exit`; -1 where that tracepoint does not fire.
    pub vcpu_id: i32,
    pub reason: u32,
    /// `kvm_run->exit_reason` (KVM_EXIT_*) when [`flag::USERSPACE`] is set.
    pub user_reason: u32,
    /// Negative errno of KVM_RUN when [`flag::ERRNO`] is set.
    pub errno: i32,
    pub _pad2: u32,
    /// Monotonic (CLOCK_MONOTONIC, ns) time the record was closed.
    pub ts_ns: u64,
    /// Port (PIO) or guest physical address (MMIO).
    pub io_addr: u64,
    /// Duration of each stage in ns, 0 when not measured. See [`stage`].
    pub stage_ns: [u64; STAGES],
}

/// Which event bounds an exit cycle in the kernel (set by userspace in [`Config`]).
pub mod boundary {
    /// No cycle boundary hook: each identifying event (`kvm_pio`, `kvm_mmio`) closes the
    /// previous exit and starts the next. Used under PVM, where `kvm_exit` does not fire.
    pub const IDENT: u32 = 0;
    /// `kvm:kvm_entry` starts a cycle and `kvm:kvm_exit` identifies it.
    pub const KVM_ENTRY: u32 = 1;
    /// Entry of the vendor run function (kprobe/fentry) starts a cycle.
    pub const VENDOR_RUN: u32 = 2;
    /// Entry of `vcpu_enter_guest` starts a cycle (kernels where it is not inlined).
    pub const ENTER_GUEST: u32 = 3;
}

/// Exits per [`Batch`]: one ring-buffer write per this many exits instead of one per exit.
pub const BATCH: usize = 64;

/// Exits collected on one CPU, written to the ring buffer as one record when full (or when
/// its first exit is older than [`BATCH_AGE_NS`]). Userspace also reads the batches still
/// partly filled from the per-CPU map, without writing it: on every tick (so that the last
/// exits of a CPU gone quiet are not held while a session runs on) and when recording ends.
///
/// Within one generation the kernel only appends (`recs[i]` is written before `len` covers
/// it), and a write to the ring bumps `gen`: a copy whose `gen` is unchanged in a later copy
/// holds `len` whole records, and the ring record of that generation tells userspace which
/// of its records it has already taken (its first `len` as copied).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Batch {
    /// Valid records in `recs`.
    pub len: u32,
    /// The CPU whose batch this is (set when written to the ring).
    pub cpu: u32,
    /// Writes of this CPU's batch to the ring so far: 0 for the first batch.
    pub gen: u64,
    /// `ts_ns` of `recs[0]`.
    pub first_ts: u64,
    pub recs: [ExitRecord; BATCH],
}

/// A batch whose first exit is older than this is written at the next exit on its CPU, so
/// that `top` and the interval log lag the exits by little while they flow.
pub const BATCH_AGE_NS: u64 = 50_000_000;

/// Slots of the per-thread state array (indexed by tid, tagged with pid and tid); threads
/// whose slot is taken use the `THREADS_SPILL` hash.
pub const STATE_SLOTS: u32 = 4096;

/// Run-time configuration, set by userspace as the `CONFIG` global before load: a constant
/// to the verifier, no map lookup per event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// See [`boundary`].
    pub boundary: u32,
    /// Filter by process: only tgids in the `PIDS` map are traced. 0 traces every process.
    pub filter_pids: u32,
    /// Field offsets in `kvm:kvm_exit`, read from the running kernel's format file.
    pub kvm_exit_reason_off: u32,
    pub kvm_exit_vcpu_off: u32,
    pub kvm_exit_isa_off: u32,
    /// Field offsets in `kvm:kvm_pio`.
    pub pio_rw_off: u32,
    pub pio_port_off: u32,
    pub pio_size_off: u32,
    /// Field offsets in `kvm:kvm_mmio`.
    pub mmio_type_off: u32,
    pub mmio_len_off: u32,
    pub mmio_gpa_off: u32,
    /// Field offsets in `kvm:kvm_userspace_exit`.
    pub uexit_reason_off: u32,
    pub uexit_errno_off: u32,
    /// Field offsets in `syscalls:sys_enter_ioctl`.
    pub ioctl_fd_off: u32,
    pub ioctl_cmd_off: u32,
    /// `tp_btf/kvm_exit` gets `struct kvm_vcpu *` (the start of the vendor's vCPU struct), not
    /// the classic fields; these BTF offsets find the exit reason and vCPU id behind it:
    /// a pointer to follow first ([`NO_DEREF`] for none), the reason's offset after it, and
    /// `kvm_vcpu.vcpu_id`.
    pub btf_exit_deref_off: u32,
    pub btf_exit_reason_off: u32,
    pub btf_exit_vcpu_id_off: u32,
    /// 1 when every field above that has a [`fixed`] offset is at that offset in this
    /// kernel: the programs then load the fields straight from the record (an offset known
    /// when compiling), otherwise through `bpf_probe_read` at the offsets above.
    pub fixed_fields: u32,
    /// 1 sends every exit as a record (`--exits`); 0 tallies them ([`tally`]).
    pub per_exit: u32,
    /// `task_struct.pid` and `.tgid` offsets from this kernel's BTF: the scheduler hooks
    /// (`sched_switch`'s next task, `sched_wakeup`'s task) read them to find the thread.
    pub task_pid_off: u32,
    pub task_tgid_off: u32,
    /// 1 when the programs find each vCPU's `kvm_run` (under [`boundary::IDENT`], where a
    /// port read that goes to the VMM is traced only on its completion, the return to the
    /// VMM must say which port it is for): `current->files->fdt->fd[fd]->private_data->run`
    /// at these BTF offsets of `task_struct.files`, `files_struct.fdt`, `fdtable.fd`,
    /// `file.private_data` and `kvm_vcpu.run`.
    pub run_known: u32,
    pub run_files_off: u32,
    pub run_fdt_off: u32,
    pub run_fd_array_off: u32,
    pub run_private_off: u32,
    pub run_vcpu_run_off: u32,
    /// 1 logs rare anomalies through aya-log (`--debug-bpf`); 0 lets the verifier drop
    /// every log site.
    pub debug_bpf: u32,
    /// 1 when a stage of [`Config::slow_ns`] has a threshold: the tally then checks each
    /// stage against it (one flag read per exit instead of one per stage, issue 20).
    pub any_slow: u32,
    /// Per stage: an exit whose stage took longer is sent as a record (`--slow`);
    /// `u64::MAX` for none.
    pub slow_ns: [u64; STAGES],
    /// `--func`: how many functions are hooked ([`func`]); 0 lets the verifier drop the
    /// per-exit tally of their calls.
    pub funcs: u32,
    pub _pad_funcs: u32,
}

/// Values of the `PIDS` map: why a process is traced.
pub mod pids {
    /// Named by userspace (`--pid`, the command of `record -- CMD`, a process `top` follows).
    pub const GIVEN: u8 = 1;
    /// Created by a traced process while following children (`record -- CMD`).
    pub const FOLLOWED: u8 = 2;
}

/// `FOLLOW` map indices: the offsets of `task:task_newtask`'s fields in this kernel's
/// format file, set before its program is attached.
pub mod follow {
    pub const PID_OFF: u32 = 0;
    pub const CLONE_FLAGS_OFF: u32 = 1;
    pub const LEN: u32 = 2;
}

/// The offsets of tracepoint fields in the kernels kvmprof was written against, compiled
/// into the fast path. Userspace checks them against the running kernel's format files.
pub mod fixed {
    pub const PIO_RW: u32 = 8;
    pub const PIO_PORT: u32 = 12;
    pub const PIO_SIZE: u32 = 16;
    pub const MMIO_TYPE: u32 = 8;
    pub const MMIO_LEN: u32 = 12;
    pub const MMIO_GPA: u32 = 16;
    pub const UEXIT_REASON: u32 = 8;
    pub const UEXIT_ERRNO: u32 = 12;
    pub const IOCTL_FD: u32 = 16;
    pub const IOCTL_CMD: u32 = 24;
}

/// The recording window, written by userspace into the `WINDOW` array (one element).
///
/// Every program reads the time first and then this window, and acts only when
/// `start_ns <= now < stop_ns`: one switch turns every program on (after all are attached)
/// and off (before any is detached) at the same instant, on the clock of the records
/// (CLOCK_MONOTONIC, `bpf_ktime_get_ns`). `start_ns == 0` means not started; `stop_ns == 0`
/// means no end set yet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    pub start_ns: u64,
    pub stop_ns: u64,
    /// Non-zero while the reader sleeps because no exit came: the first event inside the
    /// window clears it and wakes the reader with a [`Wake`] note, so an idle recording
    /// costs no timer wake-ups.
    pub asleep: u64,
}

/// A ring-buffer note written only for its wake-up, by the first event after the reader went
/// to sleep ([`Window::asleep`]); smaller than a [`Batch`], so batch readers skip it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wake {
    pub _pad: u64,
}

impl Window {
    /// Whether an event at `ts` is inside the window.
    #[inline(always)]
    pub fn contains(&self, ts: u64) -> bool {
        self.start_ns != 0 && ts >= self.start_ns && (self.stop_ns == 0 || ts < self.stop_ns)
    }
}
/// [`Config::btf_exit_deref_off`] when the exit reason is in the vCPU struct itself (VMX).
pub const NO_DEREF: u32 = u32::MAX;

/// Per-thread state kept in the kernel between events of one vCPU thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadState {
    /// `pid << 32 | tid` of the owner; 0 for a free slot.
    pub tag: u64,
    /// The owner's process is traced (decided once, when the state is created).
    pub traced: u32,
    /// `pending` holds a userspace exit waiting for its round trip or port.
    pub has_pending: u32,
    pub pending: ExitRecord,
    pub vcpu_fd: i32,
    /// An exit has been opened (cycle started or identified) and not yet emitted.
    pub open: u32,
    /// The open exit has been identified (reason or I/O known).
    pub identified: u32,
    pub space: u32,
    pub reason: u32,
    pub flags: u32,
    pub vcpu_id: i32,
    pub io_size: u32,
    pub io_addr: u64,
    /// Start of the current cycle.
    pub cycle_start_ns: u64,
    /// KVM_RUN entry.
    pub run_start_ns: u64,
    /// KVM_RUN's last return to userspace, 0 when the thread is in the kernel.
    pub user_since_ns: u64,
    /// Set after a userspace PIO read exit: the port arrives with the completion.
    pub await_pio_in: u32,
    /// Set after a userspace MMIO read exit: the next `kvm_mmio` read is its completion.
    pub await_mmio_read: u32,
    /// The open exit's MMIO access was an unsatisfied read (it will need userspace).
    pub mmio_unsatisfied: u32,
    /// The open exit's cycle is already measured: by a `vcpu_enter_guest` hook, or at
    /// identification when identifying events are the boundary.
    pub cycle_set: u32,
    /// Entry time of each hooked stage; 0 when not inside it.
    pub stage_start: [u64; HOOKED_STAGES],
    /// Durations measured for the open exit.
    pub stage_ns: [u64; STAGES],
    /// This thread's last tallied kinds of exit.
    pub tally: tally::Cache,
    /// When the thread last left its CPU (`sched_switch`), 0 while it runs.
    pub off_since_ns: u64,
    /// When it was woken after leaving its CPU asleep, 0 if not (yet).
    pub woken_ns: u64,
    /// It left its CPU runnable (preempted), not asleep.
    pub off_runnable: u32,
    pub _pad_sched: u32,
    /// Off-CPU time ([`stage::SCHED_WAIT`], [`stage::SCHED_SLEEP`]) since it was last
    /// handed to an exit: an off-CPU period lies between two events of the thread, so it
    /// goes whole to the exit whose interval holds it (`exit::take_sched`).
    pub sched_ns: [u64; 2],
    /// The last time off its CPU, once it ran again ([`crate::halt`] splits a halt with
    /// it): when it left, was woken (0 if not seen) and ran again.
    pub last_off_ns: u64,
    pub last_woken_ns: u64,
    pub last_on_ns: u64,
    /// It left its CPU runnable that last time (a preemption, not a block).
    pub last_off_runnable: u32,
    /// The vCPU's halt-polling window as `kvm:kvm_halt_poll_ns` last set it (0 until then:
    /// a new vCPU's), and its value before, for the halt that moved it.
    pub halt_poll_ns: u32,
    pub halt_poll_old: u32,
    /// 1 when `kvm:kvm_halt_poll_ns` fired since the last halt ended (inside the halt).
    pub halt_poll_moved: u32,
    /// The `kvm_run` of the vCPU whose fd is `run_fd` (see `Config::run_known`), 0 unknown.
    pub run_ptr: u64,
    pub run_fd: i32,
    pub _pad_run: u32,
    /// The `struct kvm_vcpu *` of the thread's last KVM_RUN (fentry on KVM's run ioctl): while
    /// it stays the same, so does [`ThreadState::vcpu_id`], read once instead of per exit.
    pub vcpu_ptr: u64,
    /// `--func` ([`func`]): per function, the entry time of the outermost call in progress,
    /// the calls in progress (recursion), and the open exit's time in it and calls so far.
    pub func_start: [u64; func::MAX],
    pub func_ns: [u64; func::MAX],
    pub func_depth: [u32; func::MAX],
    pub func_calls: [u32; func::MAX],
}

/// Indices into the per-CPU `COUNTERS` array.
pub mod counter {
    /// Records dropped because the ring buffer was full.
    pub const LOST: u32 = 0;
    /// Per-thread state could not be stored (map full).
    pub const NO_STATE: u32 = 1;
    /// A stage return without a matching entry (or an entry older than the cycle).
    pub const UNMATCHED: u32 = 2;
    /// Exits whose start was not observed (the thread was inside KVM_RUN when the window
    /// opened): not in the recording, counted here.
    pub const UNOBSERVED: u32 = 3;
    /// Threads whose state slot was taken and went to the spill hash (information only).
    pub const SPILLED: u32 = 4;
    /// Exits sent as records because the tally's slots or rows were used up (information:
    /// they are counted all the same).
    pub const TALLY_FULL: u32 = 5;
    /// Events dropped because the kernel refused a read their program needed (a classic
    /// tracepoint's field, kernel memory at BTF offsets).
    pub const READ_FAILED: u32 = 6;
    /// Exits of processes not traced (information): the programs ran for them too, only to
    /// find out, so kvmprof's own cost per exit is their run time over these and the traced
    /// exits together.
    pub const UNTRACED_EXITS: u32 = 7;
    pub const COUNT: u32 = 8;
}

/// `KVM_RUN` = `_IO(KVMIO, 0x80)`.
pub const KVM_RUN: u64 = 0xae80;

/// `kvm_run->exit_reason` codes (`include/uapi/linux/kvm.h`) both sides act on.
pub const KVM_EXIT_IO: u32 = 2;
pub const KVM_EXIT_HLT: u32 = 5;
pub const KVM_EXIT_MMIO: u32 = 6;
pub const KVM_EXIT_INTR: u32 = 10;

/// `kvm_run.io` (uAPI): offset, and `direction` of a write (`KVM_EXIT_IO_OUT`). Its first
/// four bytes are `direction: u8, size: u8, port: u16`.
pub const KVM_RUN_IO_OFF: usize = 32;
pub const KVM_EXIT_IO_OUT: u8 = 1;

/// The kernel/user contract by name: the tracepoints kvmprof hooks, the program attached to
/// each, and the maps and globals userspace opens. The eBPF side takes its program names from
/// its function names and its tracepoints from macro attributes, which must be literals:
/// kvmprof's `contract` test checks the built object against every name here.
pub mod names {
    /// Tracepoints, as `category/name`.
    pub mod tp {
        pub const SYS_ENTER_IOCTL: &str = "syscalls/sys_enter_ioctl";
        pub const KVM_USERSPACE_EXIT: &str = "kvm/kvm_userspace_exit";
        pub const KVM_PIO: &str = "kvm/kvm_pio";
        pub const KVM_MMIO: &str = "kvm/kvm_mmio";
        pub const KVM_EXIT: &str = "kvm/kvm_exit";
        pub const KVM_ENTRY: &str = "kvm/kvm_entry";
        pub const SCHED_PROCESS_EXIT: &str = "sched/sched_process_exit";
        /// Fires in the parent as it creates a task (`record -- CMD` follows its children).
        pub const TASK_NEWTASK: &str = "task/task_newtask";
        /// The end of each halt KVM kept in the kernel, and its polling window moving
        /// ([`crate::halt`]).
        pub const KVM_VCPU_WAKEUP: &str = "kvm/kvm_vcpu_wakeup";
        pub const KVM_HALT_POLL_NS: &str = "kvm/kvm_halt_poll_ns";
        /// `--detail` ([`crate::detail`]): fire in the handler of an MSR, CPUID or hypercall
        /// exit.
        pub const KVM_MSR: &str = "kvm/kvm_msr";
        pub const KVM_CPUID: &str = "kvm/kvm_cpuid";
        pub const KVM_HYPERCALL: &str = "kvm/kvm_hypercall";
        /// `--detail`: the hypercalls of Xen and Hyper-V guests, which KVM handles instead of
        /// its own (and which do not fire `kvm_hypercall`). `kvm_xen_hypercall` exists only in
        /// kernels built with CONFIG_KVM_XEN (not Debian's 6.1).
        pub const KVM_XEN_HYPERCALL: &str = "kvm/kvm_xen_hypercall";
        pub const KVM_HV_HYPERCALL: &str = "kvm/kvm_hv_hypercall";
        /// `--detail`: fires in the handler of an EPT violation or NPF, before it decides
        /// whether the page is MMIO.
        pub const KVM_PAGE_FAULT: &str = "kvm/kvm_page_fault";
        /// Needed on every kernel: without them there is no exit record at all.
        pub const BASE: [&str; 4] = [SYS_ENTER_IOCTL, KVM_USERSPACE_EXIT, KVM_PIO, KVM_MMIO];
        /// Every KVM-related tracepoint kvmprof may use (the base ones, then those that fire
        /// only on some backends).
        pub const ALL: [&str; 6] = [
            SYS_ENTER_IOCTL,
            KVM_USERSPACE_EXIT,
            KVM_PIO,
            KVM_MMIO,
            KVM_EXIT,
            KVM_ENTRY,
        ];
    }

    /// The programs that can serve one tracepoint.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct TracepointPrograms {
        /// `category/name`.
        pub tracepoint: &'static str,
        /// The classic tracepoint program (fields from the format file).
        pub classic: &'static str,
        /// The raw tracepoint program, and the byte sizes of the leading integer arguments
        /// it reads by position (the BTF prototype must start with integers of these sizes).
        pub raw: Option<(&'static str, &'static [u32])>,
        /// The BTF tracepoint (tp_btf) program.
        pub btf: Option<&'static str>,
    }

    /// Tracepoint ↔ programs (`kvmprof-ebpf/src/probes/`).
    pub const TRACEPOINT_PROGRAMS: [TracepointPrograms; 16] = [
        TracepointPrograms {
            tracepoint: tp::SYS_ENTER_IOCTL,
            classic: "kvm_run_enter",
            raw: None,
            btf: None,
        },
        TracepointPrograms {
            tracepoint: tp::KVM_USERSPACE_EXIT,
            classic: "kvm_userspace_exit",
            // TP_PROTO(__u32 reason, int errno)
            raw: Some(("raw_kvm_userspace_exit", &[4, 4])),
            btf: None,
        },
        TracepointPrograms {
            tracepoint: tp::KVM_PIO,
            classic: "kvm_pio",
            // TP_PROTO(unsigned int rw, unsigned int port, unsigned int size, ...)
            raw: Some(("raw_kvm_pio", &[4, 4, 4])),
            btf: None,
        },
        TracepointPrograms {
            tracepoint: tp::KVM_MMIO,
            classic: "kvm_mmio",
            // TP_PROTO(int type, int len, u64 gpa, void *val)
            raw: Some(("raw_kvm_mmio", &[4, 4, 8])),
            btf: None,
        },
        TracepointPrograms {
            tracepoint: tp::KVM_EXIT,
            classic: "kvm_exit",
            raw: None,
            btf: Some("tpb_kvm_exit"),
        },
        TracepointPrograms {
            tracepoint: tp::KVM_ENTRY,
            classic: "kvm_entry",
            // Reads no argument.
            raw: Some(("raw_kvm_entry", &[])),
            btf: None,
        },
        TracepointPrograms {
            tracepoint: tp::SCHED_PROCESS_EXIT,
            classic: "thread_exit",
            raw: None,
            btf: None,
        },
        TracepointPrograms {
            tracepoint: tp::TASK_NEWTASK,
            classic: "follow_fork",
            raw: None,
            btf: None,
        },
        TracepointPrograms {
            tracepoint: tp::KVM_VCPU_WAKEUP,
            classic: "halt_end",
            raw: None,
            btf: None,
        },
        TracepointPrograms {
            tracepoint: tp::KVM_HALT_POLL_NS,
            classic: "halt_poll_moved",
            raw: None,
            btf: None,
        },
        TracepointPrograms {
            tracepoint: tp::KVM_MSR,
            classic: "detail_msr",
            raw: None,
            btf: None,
        },
        TracepointPrograms {
            tracepoint: tp::KVM_CPUID,
            classic: "detail_cpuid",
            raw: None,
            btf: None,
        },
        TracepointPrograms {
            tracepoint: tp::KVM_HYPERCALL,
            classic: "detail_hypercall",
            raw: None,
            btf: None,
        },
        TracepointPrograms {
            tracepoint: tp::KVM_XEN_HYPERCALL,
            classic: "detail_xen_hypercall",
            raw: None,
            btf: None,
        },
        TracepointPrograms {
            tracepoint: tp::KVM_HV_HYPERCALL,
            classic: "detail_hv_hypercall",
            raw: None,
            btf: None,
        },
        TracepointPrograms {
            tracepoint: tp::KVM_PAGE_FAULT,
            classic: "detail_page_fault",
            raw: None,
            btf: None,
        },
    ];

    /// The scheduler hooks of the `sched_wait` and `sched_sleep` stages: raw tracepoints
    /// only (they fire on every context switch and wake-up of the host, so never the
    /// classic tracepoint's copy of its fields), attached where the kernel's prototypes
    /// have the arguments they read (`host/sched.rs`).
    pub mod sched {
        pub const SWITCH: &str = "sched/sched_switch";
        pub const WAKEUP: &str = "sched/sched_wakeup";
        /// `TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next,
        /// unsigned int prev_state)` (5.18 and later).
        pub const SWITCH_PROGRAM: &str = "raw_sched_switch";
        /// `TP_PROTO(struct task_struct *p)`.
        pub const WAKEUP_PROGRAM: &str = "raw_sched_wakeup";
    }

    /// `--detail`'s second program on `kvm:kvm_exit` (classic: its record carries the guest
    /// RIP, which on VMX only the tracepoint's own VMCS read yields): counts each exit by
    /// RIP ([`crate::detail::RipKey`]).
    pub const RIP_PROGRAM: &str = "detail_rip";

    /// The programs of tracepoint `tp` (`category/name`).
    pub fn tracepoint_programs(tp: &str) -> Option<&'static TracepointPrograms> {
        TRACEPOINT_PROGRAMS.iter().find(|p| p.tracepoint == tp)
    }

    /// Function-hook programs are `<prefix><stem>`: one stem per hooked stage (indices of
    /// [`crate::stage`]), four prefixes.
    pub mod hook {
        use crate::stage;

        pub const KPROBE: &str = "kp_";
        pub const KRETPROBE: &str = "krp_";
        pub const FENTRY: &str = "fe_";
        pub const FEXIT: &str = "fx_";
        pub const PREFIXES: [&str; 4] = [KPROBE, KRETPROBE, FENTRY, FEXIT];
        /// The vendor run's fexit that also reads the exit reason (`Plan::reason_at_vendor_return`).
        pub const VENDOR_RUN_REASON: &str = "fx_run_reason";
        /// fentry on `kvm_arch_vcpu_ioctl_run` (`Plan::run_entry_fentry`).
        pub const RUN_ENTRY: &str = "fe_kvm_run";
        pub const STEMS: [(usize, &str); 4] = [
            (stage::CYCLE, stage::NAMES[stage::CYCLE]),
            (stage::VENDOR_RUN, stage::NAMES[stage::VENDOR_RUN]),
            (stage::HANDLER, stage::NAMES[stage::HANDLER]),
            (stage::FAST_PIO, stage::NAMES[stage::FAST_PIO]),
        ];

        /// The stem of stage `s`, `None` for stages no function bounds.
        pub fn stem(s: usize) -> Option<&'static str> {
            STEMS.iter().find(|(i, _)| *i == s).map(|(_, n)| *n)
        }
    }

    /// Maps userspace opens, and the load-time global.
    pub mod map {
        pub const EVENTS: &str = "EVENTS";
        pub const BATCHES: &str = "BATCHES";
        pub const PIDS: &str = "PIDS";
        pub const THREADS: &str = "THREADS";
        pub const THREADS_SPILL: &str = "THREADS_SPILL";
        pub const WINDOW: &str = "WINDOW";
        pub const COUNTERS: &str = "COUNTERS";
        pub const TALLY_KEYS: &str = "TALLY_KEYS";
        pub const TALLY_META: &str = "TALLY_META";
        pub const TALLY_ROWS: &str = "TALLY_ROWS";
        pub const TALLY_FREE_SLOTS: &str = "TALLY_FREE_SLOTS";
        pub const TALLY_FREE_ROWS: &str = "TALLY_FREE_ROWS";
        pub const TALLY_ADDRS: &str = "TALLY_ADDRS";
        pub const SCRATCH: &str = "SCRATCH";
        pub const SCRATCH_KEY: &str = "SCRATCH_KEY";
        pub const FOLLOW: &str = "FOLLOW";
        pub const SCRATCH_ADDR: &str = "SCRATCH_ADDR";
        pub const HALTS: &str = "HALTS";
        pub const HALT_FIELDS: &str = "HALT_FIELDS";
        pub const HALT_ZERO: &str = "HALT_ZERO";
        pub const DETAIL_FIELDS: &str = "DETAIL_FIELDS";
        pub const RIPS: &str = "RIPS";
        pub const RIPS_OTHER: &str = "RIPS_OTHER";
        pub const FUNCS: &str = "FUNCS";
        pub const FUNC_COUNTS: &str = "FUNC_COUNTS";
        pub const FUNC_ZERO: &str = "FUNC_ZERO";
        pub const ALL: [&str; 26] = [
            EVENTS,
            BATCHES,
            PIDS,
            THREADS,
            THREADS_SPILL,
            WINDOW,
            COUNTERS,
            TALLY_KEYS,
            TALLY_META,
            TALLY_ROWS,
            TALLY_FREE_SLOTS,
            TALLY_FREE_ROWS,
            TALLY_ADDRS,
            SCRATCH,
            SCRATCH_KEY,
            FOLLOW,
            SCRATCH_ADDR,
            HALTS,
            HALT_FIELDS,
            HALT_ZERO,
            DETAIL_FIELDS,
            RIPS,
            RIPS_OTHER,
            FUNCS,
            FUNC_COUNTS,
            FUNC_ZERO,
        ];
        /// The [`crate::Config`] global, set before load.
        pub const CONFIG: &str = "CONFIG";
    }
}

// The records cross the kernel/user boundary byte for byte: a field added on one side only
// must not compile.
const _: () = assert!(core::mem::size_of::<ExitRecord>() == 56 + 8 * STAGES);
const _: () = assert!(core::mem::size_of::<Batch>() == 24 + (56 + 8 * STAGES) * BATCH);
const _: () = assert!(core::mem::size_of::<Config>() == 32 * 4 + 8 * STAGES);
const _: () = assert!(core::mem::size_of::<Window>() == 24);
const _: () = assert!(
    core::mem::size_of::<ThreadState>() == 312 + 2 * 40 + 16 + 40 + 16 + 40 + 8 + 24 * func::MAX
);

/// The records' clock read from userspace: CLOCK_MONOTONIC, which `bpf_ktime_get_ns` reads
/// in the kernel. kvmprof states its window on it; the test VMM logs its exits on it.
#[cfg(feature = "clock")]
pub mod clock {
    /// CLOCK_MONOTONIC now, in ns.
    pub fn monotonic_ns() -> u64 {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime only writes the timespec passed to it.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
        t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn monotonic_ns_never_goes_back() {
            let a = super::monotonic_ns();
            assert!(super::monotonic_ns() >= a && a > 0);
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C) plain integers with no padding holes left implicit.
    unsafe impl aya::Pod for super::ExitRecord {}
    unsafe impl aya::Pod for super::Batch {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::ThreadState {}
    unsafe impl aya::Pod for super::Window {}
    unsafe impl aya::Pod for super::tally::TallyMeta {}
    unsafe impl aya::Pod for super::tally::AddrKey {}
    unsafe impl aya::Pod for super::tally::TallyKey {}
    unsafe impl aya::Pod for super::halt::HaltTally {}
    unsafe impl aya::Pod for super::detail::RipKey {}
    unsafe impl aya::Pod for super::func::FuncKey {}
    unsafe impl aya::Pod for super::func::FuncTally {}
}
