//! Turns what the kernel hands over into [`Exit`]s: the batches of the ring buffer, the
//! batches still partly filled on each CPU (every tick and when recording ends) and the
//! userspace exits still held per thread when recording ends; and resolves vCPU ids.
use std::collections::HashMap;

use kvmprof_common::{flag, space, tally::NewSlot, Batch, ExitRecord, ThreadState, BATCH, STAGES};

use crate::data::model::{Access, Exit, HypercallAbi, Reason, ReasonSpace};

/// Collects the exits the kernel hands over, each exactly once: whole batches from the ring
/// buffer, the records of batches still being filled on each CPU (read without writing,
/// see [`Batch`]), and the userspace exits threads still hold when recording ends.
#[derive(Default)]
pub struct Collector {
    pub vcpus: VcpuResolver,
    /// Per CPU: (generation, records) of its batch already taken from a per-CPU copy.
    taken: HashMap<u32, (u64, u32)>,
    /// Per CPU: the last generation that came whole through the ring buffer.
    in_ring: HashMap<u32, u64>,
    /// The window's end once known: records closed at or after it are outside the recording.
    end_ns: Option<u64>,
    /// Tally slots the kernel made since [`Reader::discover`] last took these.
    ///
    /// [`Reader::discover`]: crate::live::tally::Reader::discover
    pub new_slots: Vec<u32>,
}

impl Collector {
    /// From now on, drops records closed at or after `end_ns`. The kernel already stops at
    /// that instant; this holds the rule even if its switch was written late.
    pub fn end_at(&mut self, end_ns: u64) {
        self.end_ns = Some(end_ns);
    }

    /// One ring-buffer record: a batch, less what was already taken from its per-CPU copy,
    /// or a note of a new tally slot. A record of another size is not ours.
    pub fn ring(&mut self, bytes: &[u8], out: &mut Vec<Exit>) {
        if bytes.len() == std::mem::size_of::<NewSlot>() {
            // SAFETY: the kernel wrote a whole NewSlot (checked length); unaligned read.
            let note: NewSlot = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
            self.new_slots.push(note.slot);
            return;
        }
        if bytes.len() < std::mem::size_of::<Batch>() {
            return;
        }
        // SAFETY: the kernel wrote a whole Batch (checked length); unaligned read.
        let b: Batch = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        // What was taken of a later generation (the ring may lag the copies) stays.
        let from = match self.taken.get(&b.cpu) {
            Some(&(gen, n)) if gen == b.gen => {
                self.taken.remove(&b.cpu);
                n
            }
            _ => 0,
        };
        self.in_ring.insert(b.cpu, b.gen);
        self.push_records(&b, from, out);
    }

    /// Takes the records not yet taken from per-CPU batch copies (index = CPU). `first` must
    /// have been copied before `later`: a CPU whose generation is the same in both had
    /// `first.len` whole records when `first` was copied. `later` is `None` once the
    /// programs are detached (nothing changes any more).
    pub fn per_cpu(&mut self, first: &[Batch], later: Option<&[Batch]>, out: &mut Vec<Exit>) {
        for (cpu, b) in first.iter().enumerate() {
            let cpu = cpu as u32;
            if later.is_some_and(|l| l.get(cpu as usize).is_none_or(|l| l.gen != b.gen))
                || self.in_ring.get(&cpu).is_some_and(|&g| g >= b.gen)
            {
                // Moved on (the ring brings that generation whole) or came through it.
                continue;
            }
            let from = match self.taken.get(&cpu) {
                Some(&(gen, n)) if gen == b.gen => n,
                _ => 0,
            };
            if b.len > from {
                self.taken.insert(cpu, (b.gen, b.len));
                self.push_records(b, from, out);
            }
        }
    }

    /// The userspace exit a thread still holds (its VMM never called KVM_RUN again before
    /// recording ended): counted, without a round trip.
    pub fn held(&mut self, st: &ThreadState, out: &mut Vec<Exit>) {
        if st.tag != 0 && st.traced != 0 && st.has_pending != 0 {
            self.push(&st.pending, out);
        }
    }

    fn push_records(&mut self, b: &Batch, from: u32, out: &mut Vec<Exit>) {
        let len = (b.len as usize).min(BATCH);
        for rec in b.recs.get(from as usize..len).unwrap_or_default() {
            self.push(rec, out);
        }
    }

    fn push(&mut self, rec: &ExitRecord, out: &mut Vec<Exit>) {
        if self.end_ns.is_some_and(|end| rec.ts_ns >= end) {
            return;
        }
        let vcpu = self.vcpus.resolve(rec.pid, rec.vcpu_fd, rec.tid);
        out.push(to_exit(rec, vcpu));
    }
}

fn nonzero(v: u64) -> Option<u64> {
    (v != 0).then_some(v)
}

/// Converts one EXIT record.
pub fn to_exit(r: &ExitRecord, vcpu: Option<u32>) -> Exit {
    let errno = r.flags & flag::ERRNO != 0;
    let (space, code) = match r.space {
        // The `exit_reason` of an error return is stale or 0 (KVM_EXIT_UNKNOWN): the error is
        // the reason.
        space::USERSPACE if errno => (ReasonSpace::Errno, r.errno.unsigned_abs()),
        sp => (ReasonSpace::of_record(sp), r.reason),
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
            npf: r.flags & flag::NPF != 0,
        })
    } else if r.flags & flag::MSR != 0 {
        Some(Access::Msr {
            index: r.io_addr as u32,
            write,
        })
    } else if r.flags & flag::CPUID != 0 {
        let (leaf, subleaf) = kvmprof_common::detail::cpuid_leaf(r.io_addr);
        Some(Access::Cpuid { leaf, subleaf })
    } else if r.flags & flag::HYPERCALL != 0 {
        let abi = if r.flags & flag::XEN != 0 {
            HypercallAbi::Xen
        } else if r.flags & flag::HYPERV != 0 {
            HypercallAbi::Hyperv
        } else {
            HypercallAbi::Kvm
        };
        Some(Access::Hypercall { abi, nr: r.io_addr })
    } else if r.flags & flag::NPF != 0 {
        Some(Access::Page { gpa: r.io_addr })
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
        reason: Reason { space, code },
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
    let comm = crate::live::target::read_lossy(&format!("/proc/{pid}/task/{tid}/comm"))?;
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
    use crate::data::model::Stage;

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

    fn batch(cpu: u32, gen: u64, tids: std::ops::Range<u32>) -> Batch {
        let mut b = Batch {
            len: tids.len() as u32,
            cpu,
            gen,
            first_ts: 0,
            recs: [rec(99, 0); BATCH],
        };
        for (r, tid) in b.recs.iter_mut().zip(tids) {
            *r = rec(tid, flag::PIO);
            r.io_addr = 0x700;
            r.ts_ns = 1000 + tid as u64;
            r.stage_ns[Stage::Cycle.index()] = 10;
        }
        b
    }

    fn bytes(b: &Batch) -> &[u8] {
        // SAFETY: a plain repr(C) value, read as its bytes.
        unsafe { std::slice::from_raw_parts((b as *const Batch).cast::<u8>(), size_of::<Batch>()) }
    }

    fn tids(out: &[Exit]) -> Vec<u32> {
        out.iter().map(|e| e.tid).collect()
    }

    #[test]
    fn a_batch_yields_exactly_its_valid_records() {
        let b = batch(0, 0, 0..3);
        let mut c = Collector::default();
        let mut out = vec![];
        c.ring(bytes(&b), &mut out);
        assert_eq!(tids(&out), [0, 1, 2]);
        assert_eq!(out[0].stages[Stage::Cycle.index()], Some(10));
        assert_eq!(out[0].stages[Stage::Vmm.index()], None);
        c.ring(&bytes(&b)[..100], &mut out);
        assert_eq!(out.len(), 3, "a short record is not a batch");
    }

    #[test]
    fn records_taken_from_a_cpu_batch_are_not_taken_again_from_the_ring() {
        let mut c = Collector::default();
        let mut out = vec![];
        // Tick: CPU 0 has 3 records, still filling (same generation in the later copy).
        let first = [batch(0, 4, 0..3), batch(1, 0, 0..0)];
        let later = [batch(0, 4, 0..5), batch(1, 0, 0..0)];
        c.per_cpu(&first, Some(&later), &mut out);
        assert_eq!(tids(&out), [0, 1, 2]);
        // Next tick: two more, then the batch fills and comes through the ring.
        c.per_cpu(&later, Some(&later), &mut out);
        assert_eq!(tids(&out), [0, 1, 2, 3, 4]);
        c.ring(bytes(&batch(0, 4, 0..64)), &mut out);
        assert_eq!(out.len(), 64, "each exit once");
        // A copy of that generation read late (the kernel had not yet moved on) is skipped.
        c.per_cpu(&[batch(0, 4, 0..64)], Some(&[batch(0, 4, 0..64)]), &mut out);
        assert_eq!(out.len(), 64);
    }

    #[test]
    fn records_taken_from_a_newer_generation_than_the_ring_has_reached_are_kept() {
        let mut c = Collector::default();
        let mut out = vec![];
        // Generation 3 went to the ring but is not read yet; 2 records of 4 are copied.
        c.per_cpu(&[batch(0, 4, 0..2)], Some(&[batch(0, 4, 0..2)]), &mut out);
        c.ring(bytes(&batch(0, 3, 100..164)), &mut out);
        c.ring(bytes(&batch(0, 4, 0..64)), &mut out);
        assert_eq!(out.len(), 2 + 64 + 62, "each exit once");
    }

    #[test]
    fn a_cpu_batch_that_moved_on_between_copies_is_left_to_the_ring() {
        let mut c = Collector::default();
        let mut out = vec![];
        c.per_cpu(&[batch(0, 1, 0..3)], Some(&[batch(0, 2, 0..1)]), &mut out);
        assert!(out.is_empty(), "the first copy may mix two generations");
        c.ring(bytes(&batch(0, 1, 0..64)), &mut out);
        assert_eq!(out.len(), 64);
        // After detaching: the rest of the last batch, once.
        c.per_cpu(&[batch(0, 2, 0..2)], None, &mut out);
        c.per_cpu(&[batch(0, 2, 0..2)], None, &mut out);
        assert_eq!(out.len(), 66);
    }

    #[test]
    fn records_closed_at_or_after_the_end_are_left_out() {
        let mut c = Collector::default();
        let mut out = vec![];
        c.end_at(1002);
        c.ring(bytes(&batch(0, 0, 0..5)), &mut out);
        assert_eq!(tids(&out), [0, 1]);
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
        let mut c = Collector::default();
        c.held(&st, &mut out);
        st.has_pending = 0;
        c.held(&st, &mut out);
        st.has_pending = 1;
        st.traced = 0;
        c.held(&st, &mut out);
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
