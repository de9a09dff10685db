//! Which processes to profile, and the checks that must pass before anything is loaded.
use std::{fs, path::Path};

use anyhow::{bail, Context, Result};

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Target {
    pub pid: u32,
    pub name: String,
}

/// Root and a usable KVM: without them nothing can be traced, so say so before loading.
pub fn preflight() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("kvmprof must run as root (loading eBPF programs needs CAP_BPF and CAP_PERFMON)");
    }
    if !Path::new("/dev/kvm").exists() {
        bail!("/dev/kvm does not exist: KVM is not available on this machine");
    }
    Ok(())
}

/// Resolves each `--pid` argument: a numeric pid, or a name matched like `pgrep` (a
/// substring of the process name or of its executable's file name).
pub fn resolve(specs: &[String]) -> Result<Vec<Target>> {
    let mut out: Vec<Target> = Vec::new();
    for spec in specs {
        let found = if let Ok(pid) = spec.parse::<u32>() {
            let name = process_name(pid).with_context(|| format!("no process with pid {pid}"))?;
            vec![Target { pid, name }]
        } else {
            let m = by_name(spec)?;
            if m.is_empty() {
                bail!("no running process matches '{spec}'");
            }
            m
        };
        for t in found {
            if !out.iter().any(|o| o.pid == t.pid) {
                out.push(t);
            }
        }
    }
    Ok(out)
}

/// The processes whose name or executable contains `pattern`, by pid (`top -p NAME`
/// matches again as processes start).
pub fn by_name(pattern: &str) -> Result<Vec<Target>> {
    let me = std::process::id();
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").context("read /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Some(comm) = process_name(pid) else {
            continue;
        };
        let exe = fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .ok()
            .and_then(|c| c.split('\0').next().map(str::to_string))
            .map(|a| a.rsplit('/').next().unwrap_or_default().to_string())
            .unwrap_or_default();
        if comm.contains(pattern) || exe.contains(pattern) {
            out.push(Target { pid, name: comm });
        }
    }
    out.sort_by_key(|t| t.pid);
    Ok(out)
}

pub fn process_name(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Whether `pid` is still running (a zombie has exited).
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_pid_and_name_are_errors() {
        let e = resolve(&["4294967295".into()]).unwrap_err().to_string();
        assert!(e.contains("no process with pid"), "{e}");
        let e = resolve(&["no-such-process-xyz".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no running process matches"), "{e}");
    }

    #[test]
    fn finds_this_test_process_by_pid() {
        let me = std::process::id();
        let t = resolve(&[me.to_string()]).unwrap();
        assert_eq!(t[0].pid, me);
        assert!(alive(me));
    }
}
