//! Turns what the kernel hands over into [`Exit`]s: the batches of the ring buffer, the
//! batches still partly filled on each CPU and the userspace exits still held per thread
//! when recording ends; and resolves vCPU ids.
use std::collections::HashMap;

use kvmprof_common::{flag, space, Batch, ExitRecord, ThreadState, BATCH, STAGES};

use crate::model::{Access, Exit, Reason, ReasonSpace};

/// The exits of one batch (a ring-buffer record, or a per-CPU batch at the end). A record
/// of another size is not ours and yields nothing.
pub fn batch_exits(bytes: &[u8], vcpus: &mut VcpuResolver, out: &mut Vec<Exit>) {
    if bytes.len() < std::mem::size_of::<Batch>() {
        return;
    }
    // SAFETY: the kernel wrote a whole Batch (checked length); unaligned read.
    let b: Batch = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    push_batch(&b, vcpus, out);
}

pub fn push_batch(b: &Batch, vcpus: &mut VcpuResolver, out: &mut Vec<Exit>) {
    for rec in &b.recs[..(b.len as usize).min(BATCH)] {
        push(rec, vcpus, out);
    }
}

/// The userspace exit a thread still holds (its VMM never called KVM_RUN again before
/// recording ended): counted, without a round trip.
pub fn push_pending(st: &ThreadState, vcpus: &mut VcpuResolver, out: &mut Vec<Exit>) {
    if st.tag != 0 && st.traced != 0 && st.has_pending != 0 {
        push(&st.pending, vcpus, out);
    }
}

fn push(rec: &ExitRecord, vcpus: &mut VcpuResolver, out: &mut Vec<Exit>) {
    let vcpu = vcpus.resolve(rec.pid, rec.vcpu_fd, rec.tid);
    out.push(to_exit(rec, vcpu));
}

fn nonzero(v: u64) -> Option<u64> {
    (v != 0).then_some(v)
}

/// Converts one EXIT record.
pub fn to_exit(r: &ExitRecord, vcpu: Option<u32>) -> Exit {
    let space = match r.space {
        space::USERSPACE => ReasonSpace::Userspace,
        space::VMX => ReasonSpace::Vmx,
        space::SVM => ReasonSpace::Svm,
        space::TRACEPOINT => ReasonSpace::Tracepoint,
        _ => ReasonSpace::None,
    };
    let write = r.flags & flag::WRITE != 0;
    let access = if r.flags & flag::PIO != 0 {
        Some(Access::Pio {
            port: r.io_addr as u16,
            size: r.io_size,
            write,
        })
    } else if r.flags & flag::MMIO != 0 {
        Some(Access::Mmio {
            gpa: r.io_addr,
            size: r.io_size,
            write,
        })
    } else {
        None
    };
    let mut stages = [None; STAGES];
    for (i, s) in stages.iter_mut().enumerate() {
        *s = nonzero(r.stage_ns[i]);
    }
    Exit {
        pid: r.pid,
        tid: r.tid,
        vcpu: if r.vcpu_id >= 0 {
            Some(r.vcpu_id as u32)
        } else {
            vcpu
        },
        ts_ns: r.ts_ns,
        reason: Reason {
            space,
            code: r.reason,
        },
        userspace_reason: (r.flags & flag::USERSPACE != 0).then_some(r.user_reason),
        access,
        stages,
    }
}

/// Resolves vCPU ids from the vCPU fd that KVM_RUN was called on (`anon_inode:kvm-vcpu:N`),
/// falling back to QEMU-style thread names (`CPU N/KVM`).
#[derive(Default)]
pub struct VcpuResolver {
    cache: HashMap<(u32, i32, u32), Option<u32>>,
}

impl VcpuResolver {
    pub fn resolve(&mut self, pid: u32, fd: i32, tid: u32) -> Option<u32> {
        *self
            .cache
            .entry((pid, fd, tid))
            .or_insert_with(|| from_fd(pid, fd).or_else(|| from_thread_name(pid, tid)))
    }
}

fn from_fd(pid: u32, fd: i32) -> Option<u32> {
    if fd < 0 {
        return None;
    }
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    parse_vcpu_link(&link.to_string_lossy())
}

pub fn parse_vcpu_link(link: &str) -> Option<u32> {
    link.strip_prefix("anon_inode:kvm-vcpu:")?.parse().ok()
}

fn from_thread_name(pid: u32, tid: u32) -> Option<u32> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
    parse_thread_name(comm.trim())
}

pub fn parse_thread_name(comm: &str) -> Option<u32> {
    comm.strip_prefix("CPU ")?
        .strip_suffix("/KVM")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Stage;

    fn rec(tid: u32, flags: u32) -> ExitRecord {
        ExitRecord {
            kind: kvmprof_common::kind::EXIT,
            tid,
            pid: 1,
            flags,
            vcpu_id: -1,
            ..Default::default()
        }
    }

    #[test]
    fn a_batch_yields_exactly_its_valid_records() {
        let mut b = Batch {
            len: 3,
            _pad: 0,
            first_ts: 0,
            recs: [rec(99, 0); BATCH],
        };
        for (i, r) in b.recs.iter_mut().take(3).enumerate() {
            *r = rec(i as u32, flag::PIO);
            r.io_addr = 0x700;
            r.stage_ns[Stage::Cycle.index()] = 10;
        }
        let bytes = unsafe {
            std::slice::from_raw_parts((&b as *const Batch).cast::<u8>(), size_of::<Batch>())
        };
        let mut out = vec![];
        let mut vcpus = VcpuResolver::default();
        batch_exits(bytes, &mut vcpus, &mut out);
        assert_eq!(out.iter().map(|e| e.tid).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(out[0].stages[Stage::Cycle.index()], Some(10));
        assert_eq!(out[0].stages[Stage::Vmm.index()], None);
        batch_exits(&bytes[..100], &mut vcpus, &mut out);
        assert_eq!(out.len(), 3, "a short record is not a batch");
    }

    #[test]
    fn only_a_traced_thread_with_a_held_exit_yields_it() {
        let mut st = ThreadState {
            tag: 1 << 32 | 7,
            traced: 1,
            has_pending: 1,
            pending: rec(7, flag::USERSPACE),
            ..Default::default()
        };
        let mut out = vec![];
        let mut vcpus = VcpuResolver::default();
        push_pending(&st, &mut vcpus, &mut out);
        st.has_pending = 0;
        push_pending(&st, &mut vcpus, &mut out);
        st.has_pending = 1;
        st.traced = 0;
        push_pending(&st, &mut vcpus, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].userspace_reason, Some(0));
    }

    #[test]
    fn vcpu_names() {
        assert_eq!(parse_vcpu_link("anon_inode:kvm-vcpu:3"), Some(3));
        assert_eq!(parse_vcpu_link("anon_inode:kvm-vm"), None);
        assert_eq!(parse_thread_name("CPU 12/KVM"), Some(12));
        assert_eq!(parse_thread_name("qemu-system-x86"), None);
    }
}
