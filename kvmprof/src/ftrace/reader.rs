//! Reads trace files line by line and routes each call to the tracker of its task.
use super::parse::{self, Line};
use super::stages::{Output, Tracker};
use super::{Capture, Import, Stats};
use crate::data::model::Vendor;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::io::BufRead;

/// Reads the files of one import.
#[derive(Default)]
pub struct Reader {
    names: Vec<String>,
    stats: Stats,
    out: Output,
}

impl Reader {
    /// Reads one trace; `name` is how errors and the stats refer to it.
    pub fn read(&mut self, name: &str, mut input: impl BufRead) -> Result<()> {
        let mut tasks = Tasks::default();
        let calls_before = self.stats.calls;
        let mut buf = Vec::new();
        let mut line_no = 0u64;
        loop {
            buf.clear();
            let read = input
                .read_until(b'\n', &mut buf)
                .with_context(|| format!("{name}: read failed"))?;
            if read == 0 {
                break;
            }
            line_no += 1;
            // Binary garbage must not stop the import: it becomes unknown lines.
            let text = String::from_utf8_lossy(&buf);
            let text = text.trim_end_matches(['\n', '\r']);
            match parse::parse_line(text) {
                Line::Call(record) => {
                    self.stats.calls += 1;
                    let (tracker, tid) = tasks.tracker(record.cpu, record.pid);
                    tracker.record(&record, tid, &mut self.out);
                }
                Line::Switch { cpu, prev, next } => tasks.switch(cpu, prev, next),
                Line::Irq | Line::Ignored => {}
                Line::Unknown => {
                    self.stats.unknown += 1;
                    self.stats
                        .first_unknown
                        .get_or_insert_with(|| format!("{name}:{line_no}: {}", text.trim()));
                }
            }
        }
        tasks.finish(&mut self.out);
        self.stats.files += 1;
        self.stats.lines += line_no;
        self.names.push(name.to_owned());
        if self.stats.calls == calls_before {
            bail!("{name}: not an ftrace function_graph trace (none of its {line_no} lines is a function_graph call)");
        }
        Ok(())
    }

    /// The import of everything read, one capture per vendor.
    pub fn finish(self) -> Result<Import> {
        let Reader {
            names,
            mut stats,
            out,
        } = self;
        stats.incomplete_calls = out.incomplete_calls;
        stats.incomplete_cycles = out.incomplete_cycles;
        let mut parts = out.parts;
        // Cycles whose functions name no vendor belong to the one the others name, if only
        // one is named.
        if parts.len() == 2 {
            if let Some(unknown) = parts.remove(&Vendor::Unknown) {
                if let Some(known) = parts.values_mut().next() {
                    known.append(unknown);
                }
            }
        }
        if parts.is_empty() {
            bail!(
                "{}: no complete exit cycle (a vcpu_enter_guest call, or a vendor run \
                 inside kvm_arch_vcpu_ioctl_run); {stats}",
                names.join(", ")
            );
        }
        let captures = parts
            .into_iter()
            .map(|(vendor, part)| Capture {
                vendor,
                exits: part.exits,
                folded: part.folded,
                timings: part.timings.into_iter().collect(),
            })
            .collect();
        Ok(Import { captures, stats })
    }
}

/// Whose calls a line is: by task where the trace names it (process column, or the last
/// context switch on that CPU), else by CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Task(u32),
    Cpu(u32),
}

/// The trackers of one file.
#[derive(Default)]
struct Tasks {
    trackers: HashMap<Key, Tracker>,
    /// Task running on each CPU, from context switch markers.
    on_cpu: HashMap<u32, u32>,
}

impl Tasks {
    /// The tracker of a line's task, and the task's id (0 when unknown).
    fn tracker(&mut self, cpu: u32, pid: Option<u32>) -> (&mut Tracker, u32) {
        let key = match pid.or_else(|| self.on_cpu.get(&cpu).copied()) {
            // every CPU's idle task is pid 0
            Some(pid) if pid != 0 => Key::Task(pid),
            _ => Key::Cpu(cpu),
        };
        let tid = match key {
            Key::Task(pid) => pid,
            Key::Cpu(_) => 0,
        };
        (self.trackers.entry(key).or_default(), tid)
    }

    fn switch(&mut self, cpu: u32, prev: u32, next: u32) {
        // The first switch on a CPU names the task whose calls were kept by CPU so far.
        if !self.on_cpu.contains_key(&cpu) && prev != 0 {
            if let Some(tracker) = self.trackers.remove(&Key::Cpu(cpu)) {
                self.trackers.entry(Key::Task(prev)).or_insert(tracker);
            }
        }
        self.on_cpu.insert(cpu, next);
    }

    fn finish(self, out: &mut Output) {
        for tracker in self.trackers.into_values() {
            tracker.finish(out);
        }
    }
}
