//! KVM's own per-VM counters, read at the window's open and close so that the report can
//! state KVM's count beside kvmprof's. They live in debugfs (`kvm/<pid>-<fd>/exits`,
//! `io_exits`, `mmio_exits`, `halt_exits`, …; vCPU counters summed over the VM's vCPUs).
//! The binary stats (`KVM_GET_STATS_FD`) are no way around it: KVM serves them only to the
//! VMM itself (from another process, through `pidfd_getfd`, the ioctl fails with EIO).
use std::{
    collections::BTreeMap,
    fs, io,
    path::Path,
    time::{Duration, Instant},
};

use crate::data::kvmstats::KvmStats;

const DEBUGFS: &str = "/sys/kernel/debug";

/// How often the counters are read while the window is open: only a VM destroyed before
/// the close needs these reads (its directory goes with it), and a read of a VM's ~60 files
/// cost ~1.5 M instructions under an emulated CPU, too much for every 100 ms tick.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// One read of the counters: per VM directory (`1234-11`), stat → value.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    vms: BTreeMap<String, BTreeMap<String, u64>>,
}

/// Reads the counters of every VM of `pids`; `Err` says in one line why they cannot be read.
pub fn read(pids: &[u32]) -> Result<Snapshot, String> {
    let mut snap = Snapshot::default();
    for (name, dir) in vm_dirs(pids)? {
        // A VM destroyed meanwhile is no error: it is simply gone.
        if let Some(stats) = read_vm(&dir)? {
            snap.vms.insert(name, stats);
        }
    }
    Ok(snap)
}

/// The debugfs directories of the VMs of `pids` (`1234-11`), by name.
fn vm_dirs(pids: &[u32]) -> Result<Vec<(String, std::path::PathBuf)>, String> {
    if pids.is_empty() {
        // Every process (`top`, `serve`): no window to state counts for.
        return Ok(Vec::new());
    }
    let kvm = Path::new(DEBUGFS).join("kvm");
    if !kvm.is_dir() {
        mount_debugfs()?;
        if !kvm.is_dir() {
            return Err("debugfs has no kvm directory".to_owned());
        }
    }
    let entries = fs::read_dir(&kvm).map_err(|e| why(&kvm, &e))?;
    Ok(entries
        .filter_map(|e| e.ok())
        .filter_map(|dir| {
            let name = dir.file_name().to_string_lossy().into_owned();
            let owner = name.split_once('-')?.0.parse::<u32>().ok()?;
            pids.contains(&owner).then(|| (name, dir.path()))
        })
        .collect())
}

/// Fails as reading a VM's counters would: KVM's sum over every VM (`kvm/exits`) is read,
/// so that a VM created later (`record -- CMD`) is not needed to learn that debugfs refuses.
fn readable(pids: &[u32]) -> Result<(), String> {
    if pids.is_empty() {
        return Ok(());
    }
    let path = Path::new(DEBUGFS).join("kvm/exits");
    fs::read_to_string(&path)
        .map(drop)
        .map_err(|e| why(&path, &e))
}

/// The counters in one VM's directory (files holding one integer; the vCPU directories and
/// the histograms are left out); `None` when the VM is gone.
fn read_vm(dir: &Path) -> Result<Option<BTreeMap<String, u64>>, String> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(why(dir, &e)),
    };
    let mut stats = BTreeMap::new();
    for entry in entries.filter_map(|e| e.ok()) {
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        match fs::read_to_string(&path) {
            Ok(text) => {
                if let Ok(v) = text.trim().parse::<u64>() {
                    stats.insert(entry.file_name().to_string_lossy().into_owned(), v);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(why(&path, &e)),
        }
    }
    Ok(Some(stats))
}

/// "debugfs kvm/1234-11/exits: Operation not permitted (…)": the file and the kernel's answer.
fn why(path: &Path, e: &io::Error) -> String {
    let shown = path.strip_prefix(DEBUGFS).unwrap_or(path).display();
    let hint = match e.raw_os_error() {
        // Root gets EPERM from debugfs only under kernel lockdown.
        Some(libc::EPERM) => " (kernel lockdown restricts debugfs)",
        _ => "",
    };
    format!("debugfs {shown}: {}{hint}", io_text(e))
}

/// The error without its "(os error N)" tail.
fn io_text(e: &io::Error) -> String {
    let t = e.to_string();
    t.split(" (os error").next().unwrap_or(&t).to_owned()
}

fn mount_debugfs() -> Result<(), String> {
    let status = std::process::Command::new("mount")
        .args(["-t", "debugfs", "none", DEBUGFS])
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("cannot run mount for debugfs: {e}"))?;
    if !status.success() {
        return Err(format!(
            "debugfs is not mounted at {DEBUGFS} and mounting it failed"
        ));
    }
    Ok(())
}

/// The window's counters as it goes: read at the open, polled while it runs (a VM destroyed
/// before the close keeps the values last read) and read at the close. The first failure
/// ends the reading: its causes (lockdown, no debugfs) last.
pub struct Window {
    first: Snapshot,
    last: BTreeMap<String, BTreeMap<String, u64>>,
    /// VMs destroyed before the close.
    gone: Vec<String>,
    error: Option<String>,
    polled: Instant,
}

impl Window {
    pub fn open(pids: &[u32]) -> Window {
        let (first, error) = match read(pids).and_then(|s| readable(pids).map(|()| s)) {
            Ok(s) => (s, None),
            Err(e) => (Snapshot::default(), Some(e)),
        };
        Window {
            last: first.vms.clone(),
            first,
            gone: Vec::new(),
            error,
            polled: Instant::now(),
        }
    }

    /// Reads now, however recent the last read: the reader is about to sleep until the
    /// next exit, with no tick meanwhile, and a VM that ends while it sleeps keeps the
    /// counts read here (every exit so far is in them).
    pub fn read_now(&mut self, pids: &[u32]) {
        if let Some(long_ago) = Instant::now().checked_sub(POLL_EVERY) {
            self.polled = long_ago;
        }
        self.poll(pids, false);
    }

    /// Reads again: every [`POLL_EVERY`], at `close`, and as soon as a VM not read yet
    /// shows (one directory listing per call in between, so that a short-lived VM is seen);
    /// at `close`, VMs no longer there are noted as gone.
    pub fn poll(&mut self, pids: &[u32], close: bool) {
        if self.error.is_some() {
            return;
        }
        if !close && self.polled.elapsed() < POLL_EVERY {
            match vm_dirs(pids) {
                Ok(dirs) if dirs.iter().all(|(vm, _)| self.last.contains_key(vm)) => return,
                Ok(_) => {}
                Err(e) => {
                    self.error = Some(e);
                    return;
                }
            }
        }
        self.polled = Instant::now();
        match read(pids) {
            Ok(now) => {
                if close {
                    self.gone = self
                        .last
                        .keys()
                        .filter(|vm| !now.vms.contains_key(*vm))
                        .cloned()
                        .collect();
                }
                self.last.extend(now.vms);
            }
            Err(e) => self.error = Some(e),
        }
    }

    /// The change over the window, with a note where it is missing or partial.
    pub fn stats(&self) -> KvmStats {
        if let Some(e) = &self.error {
            // Counts read before the failure would be partial: none rather than wrong ones.
            return KvmStats {
                change: BTreeMap::new(),
                note: Some(format!("KVM's own counts unreadable: {e}")),
            };
        }
        let mut change: BTreeMap<String, u64> = BTreeMap::new();
        for (vm, stats) in &self.last {
            let before = self.first.vms.get(vm);
            for (name, v) in stats {
                // A VM created inside the window counted from zero.
                let was = before.and_then(|b| b.get(name)).copied().unwrap_or(0);
                *change.entry(name.clone()).or_default() += v.saturating_sub(was);
            }
        }
        let note = if self.last.is_empty() {
            Some(
                "KVM's own counts: no VM of the profiled processes seen in debugfs (looked for \
                 every second while exits come: a VM that lived less may be missed)"
                    .to_owned(),
            )
        } else if !self.gone.is_empty() {
            Some(format!(
                "KVM's own counts of VM {} up to their last read (every second): it was \
                 destroyed before the window closed",
                self.gone.join(", ")
            ))
        } else {
            None
        };
        KvmStats { change, note }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(vms: &[(&str, &[(&str, u64)])]) -> Snapshot {
        Snapshot {
            vms: vms
                .iter()
                .map(|(vm, s)| {
                    let s = s.iter().map(|(n, v)| (n.to_string(), *v)).collect();
                    (vm.to_string(), s)
                })
                .collect(),
        }
    }

    #[test]
    fn the_change_counts_vms_made_inside_the_window_from_zero() {
        let mut w = Window {
            first: snap(&[("10-5", &[("exits", 100), ("io_exits", 40)])]),
            last: BTreeMap::new(),
            gone: Vec::new(),
            error: None,
            polled: Instant::now(),
        };
        w.last = snap(&[
            ("10-5", &[("exits", 130), ("io_exits", 60)]),
            ("11-7", &[("exits", 5), ("io_exits", 0)]),
        ])
        .vms;
        let s = w.stats();
        assert_eq!(s.change["exits"], 35);
        assert_eq!(s.change["io_exits"], 20);
        assert_eq!(s.note, None);
        assert_eq!(
            s.lines(35, crate::data::model::Vendor::Svm),
            ["KVM's own count over the window (debugfs): exits 35, io_exits 20; kvmprof: 35 exits"]
        );
    }

    #[test]
    fn an_unreadable_debugfs_is_one_line() {
        let w = Window {
            first: Snapshot::default(),
            last: BTreeMap::new(),
            gone: Vec::new(),
            error: Some(
                "debugfs kvm/10-5/exits: Operation not permitted (kernel lockdown restricts \
                 debugfs)"
                    .to_owned(),
            ),
            polled: Instant::now(),
        };
        assert_eq!(
            w.stats().lines(3, crate::data::model::Vendor::Pvm),
            [
                "KVM's own counts unreadable: debugfs kvm/10-5/exits: Operation not permitted \
              (kernel lockdown restricts debugfs)"
            ]
        );
    }
}
