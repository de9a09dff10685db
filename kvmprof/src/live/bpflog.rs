//! `--debug-bpf`: the eBPF programs' anomaly log (kvmprof-ebpf's `anomaly.rs`), read through
//! aya-log and written to stderr as `kvmprof: bpf: …` lines. aya-log hands each line to a
//! `log::Log`; this one writes it the way every other message goes (`util::diag`), so a
//! closed stderr never stops the recording, and no global logger is installed.
use anyhow::{anyhow, Result};
use aya_log::EbpfLogger;

use crate::util::diag::note;

pub struct BpfLog(EbpfLogger<Lines>);

impl BpfLog {
    /// Takes the programs' log ring from `ebpf`.
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<BpfLog> {
        EbpfLogger::init_with_logger(ebpf, Lines)
            .map(BpfLog)
            .map_err(|e| anyhow!("--debug-bpf: open the programs' log: {e}"))
    }

    /// Writes what the programs logged since the last call.
    pub fn flush(&mut self) {
        self.0.flush();
    }
}

pub struct Lines;

impl log::Log for Lines {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, r: &log::Record) {
        note!("bpf: {}", r.args());
    }

    fn flush(&self) {}
}
