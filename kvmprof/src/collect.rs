//! Drains the ring buffer and turns kernel records into [`Exit`]s: joins each userspace
//! exit with the VMM round trip that follows it (and, for PIO reads, the port that the
//! completion reveals), and resolves vCPU ids.
use std::collections::{BTreeSet, HashMap};

use kvmprof_common::{flag, kind, space, stage, ExitRecord, STAGES};

use crate::model::{Access, Exit, Reason, ReasonSpace};

/// Joins records of one thread into complete exits. Pure: fed records, yields exits.
#[derive(Default)]
pub struct Joiner {
    /// Userspace exits waiting for their round trip, by tid.
    pending: HashMap<u32, Exit>,
    /// Records that referred to an exit we never saw (tracing began mid-round-trip).
    pub orphans: u64,
}

impl Joiner {
    pub fn push(&mut self, rec: &ExitRecord, vcpu: Option<u32>, out: &mut Vec<Exit>) {
        match rec.kind {
            kind::EXIT => {
                if let Some(prev) = self.pending.remove(&rec.tid) {
                    out.push(prev);
                }
                let exit = to_exit(rec, vcpu);
                if rec.flags & flag::USERSPACE != 0 {
                    self.pending.insert(rec.tid, exit);
                } else {
                    out.push(exit);
                }
            }
            kind::RESUME => match self.pending.remove(&rec.tid) {
                Some(mut e) => {
                    e.stages[stage::VMM] = nonzero(rec.stage_ns[stage::VMM]);
                    // A PIO read's port arrives after the resume; keep waiting for it.
                    if is_port_less_io(&e) {
                        self.pending.insert(rec.tid, e);
                    } else {
                        out.push(e);
                    }
                }
                None => self.orphans += 1,
            },
            kind::PIO_IN_DONE => match self.pending.remove(&rec.tid) {
                Some(mut e) => {
                    e.access = Some(Access::Pio {
                        port: rec.io_addr as u16,
                        size: rec.io_size,
                        write: false,
                    });
                    out.push(e);
                }
                None => self.orphans += 1,
            },
            _ => self.orphans += 1,
        }
    }

    /// Emits the exits still waiting of processes that are no longer `alive`: their round
    /// trip will never come (a recording that goes on, like `top`, would lose them).
    pub fn flush_exited(&mut self, alive: impl Fn(u32) -> bool, out: &mut Vec<Exit>) {
        // One look per process, however many of its vCPU threads wait.
        let pids: BTreeSet<u32> = self.pending.values().map(|e| e.pid).collect();
        let gone: BTreeSet<u32> = pids.into_iter().filter(|&pid| !alive(pid)).collect();
        let dead: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, e)| gone.contains(&e.pid))
            .map(|(&tid, _)| tid)
            .collect();
        let mut rest: Vec<Exit> = dead
            .iter()
            .filter_map(|tid| self.pending.remove(tid))
            .collect();
        rest.sort_by_key(|e| e.ts_ns);
        out.extend(rest);
    }

    /// Emits every exit still waiting for its join (end of recording).
    pub fn flush(&mut self, out: &mut Vec<Exit>) {
        let mut rest: Vec<Exit> = self.pending.drain().map(|(_, e)| e).collect();
        rest.sort_by_key(|e| e.ts_ns);
        out.extend(rest);
    }
}

const KVM_EXIT_IO: u32 = 2;

fn is_port_less_io(e: &Exit) -> bool {
    e.userspace_reason == Some(KVM_EXIT_IO) && e.access.is_none()
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

    fn rec(kind: u8, tid: u32, flags: u32) -> ExitRecord {
        ExitRecord {
            kind,
            tid,
            pid: 1,
            flags,
            vcpu_id: -1,
            ..Default::default()
        }
    }

    #[test]
    fn userspace_exit_waits_for_its_round_trip() {
        let mut j = Joiner::default();
        let mut out = vec![];
        let mut e = rec(kind::EXIT, 7, flag::USERSPACE | flag::PIO | flag::WRITE);
        e.user_reason = KVM_EXIT_IO;
        e.io_addr = 0x3f8;
        j.push(&e, Some(0), &mut out);
        assert!(out.is_empty());
        let mut r = rec(kind::RESUME, 7, 0);
        r.stage_ns[stage::VMM] = 1234;
        j.push(&r, None, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].stages[Stage::Vmm.index()], Some(1234));
        assert_eq!(out[0].vcpu, Some(0));
    }

    #[test]
    fn pio_read_gets_its_port_from_the_completion() {
        let mut j = Joiner::default();
        let mut out = vec![];
        let mut e = rec(kind::EXIT, 7, flag::USERSPACE);
        e.user_reason = KVM_EXIT_IO;
        j.push(&e, None, &mut out);
        j.push(&rec(kind::RESUME, 7, 0), None, &mut out);
        assert!(out.is_empty());
        let mut d = rec(kind::PIO_IN_DONE, 7, flag::PIO);
        d.io_addr = 0x60;
        d.io_size = 1;
        j.push(&d, None, &mut out);
        assert_eq!(
            out[0].access,
            Some(Access::Pio {
                port: 0x60,
                size: 1,
                write: false
            })
        );
    }

    #[test]
    fn in_kernel_exits_pass_straight_through_and_flush_keeps_the_rest() {
        let mut j = Joiner::default();
        let mut out = vec![];
        j.push(&rec(kind::EXIT, 1, flag::PIO), None, &mut out);
        assert_eq!(out.len(), 1);
        j.push(&rec(kind::EXIT, 2, flag::USERSPACE), None, &mut out);
        j.push(&rec(kind::EXIT, 2, flag::USERSPACE), None, &mut out);
        assert_eq!(
            out.len(),
            2,
            "a second exit of the thread releases the first"
        );
        j.flush(&mut out);
        assert_eq!(out.len(), 3);
        j.push(&rec(kind::RESUME, 9, 0), None, &mut out);
        assert_eq!(j.orphans, 1);
    }

    #[test]
    fn exits_of_a_process_that_exited_are_not_held_back() {
        let mut j = Joiner::default();
        let mut out = vec![];
        let mut other = rec(kind::EXIT, 3, flag::USERSPACE);
        other.pid = 2;
        j.push(&other, None, &mut out);
        j.push(&rec(kind::EXIT, 2, flag::USERSPACE), None, &mut out);
        j.flush_exited(|pid| pid != 1, &mut out);
        let tids: Vec<u32> = out.iter().map(|e| e.tid).collect();
        assert_eq!(tids, [2], "pid 1 exited; pid 2 may still resume");
        j.push(&rec(kind::RESUME, 3, 0), None, &mut out);
        assert_eq!((out.len(), j.orphans), (2, 0));
    }

    #[test]
    fn vcpu_names() {
        assert_eq!(parse_vcpu_link("anon_inode:kvm-vcpu:3"), Some(3));
        assert_eq!(parse_vcpu_link("anon_inode:kvm-vm"), None);
        assert_eq!(parse_thread_name("CPU 12/KVM"), Some(12));
        assert_eq!(parse_thread_name("qemu-system-x86"), None);
    }
}
