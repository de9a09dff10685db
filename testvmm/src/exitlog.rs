//! The exit log: when and how each KVM_RUN call ended, so a test can count the exits the
//! VMM made inside any window a profiler states.
//!
//! One line per KVM_RUN call: `<vcpu> <call_ns> <return_ns> <outcome>`, times on
//! CLOCK_MONOTONIC (the clock of `bpf_ktime_get_ns`): `call_ns` just before the ioctl,
//! `return_ns` just after it returned. An exit began after `call_ns` and ended before
//! `return_ns`. Lines are kept in memory while the guest runs (a write per exit would
//! change the pacing) and written, vCPU after vCPU, when the run ends.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};

/// How one KVM_RUN call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    PioUser,
    PioIn,
    MmioUser,
    Hlt,
    /// KVM_EXIT_INTR, or KVM_RUN failed with EINTR/EAGAIN (our kick): no guest exit.
    Interrupted,
    /// Anything else (the guest went off script).
    Other,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::PioUser => "pio_user",
            Outcome::PioIn => "pio_in",
            Outcome::MmioUser => "mmio_user",
            Outcome::Hlt => "hlt",
            Outcome::Interrupted => "interrupted",
            Outcome::Other => "other",
        }
    }
}

/// One KVM_RUN call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    pub call_ns: u64,
    pub return_ns: u64,
    pub outcome: Outcome,
}

/// CLOCK_MONOTONIC in ns: the clock of kvmprof's records and window.
pub use kvmprof_common::clock::monotonic_ns;

/// Writes every vCPU's calls to `path`.
pub(crate) fn write(path: &Path, vcpus: &[(u32, &[Call])]) -> Result<()> {
    let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut w = BufWriter::new(file);
    for (vcpu, calls) in vcpus {
        for c in *calls {
            writeln!(
                w,
                "{vcpu} {} {} {}",
                c.call_ns,
                c.return_ns,
                c.outcome.name()
            )
            .with_context(|| format!("write {}", path.display()))?;
        }
    }
    w.flush()
        .with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_call_in_vcpu_order() {
        let dir = std::env::temp_dir().join(format!("testvmm-exitlog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let a = [Call {
            call_ns: 10,
            return_ns: 20,
            outcome: Outcome::PioUser,
        }];
        let b = [Call {
            call_ns: 15,
            return_ns: 30,
            outcome: Outcome::Hlt,
        }];
        write(&path, &[(0, &a), (1, &b)]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "0 10 20 pio_user\n1 15 30 hlt\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
