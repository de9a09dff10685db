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

/// The processes whose name or executable contains `pattern`, by pid.
fn by_name(pattern: &str) -> Result<Vec<Target>> {
    Ok(pids()?
        .into_iter()
        .filter_map(|pid| matching(pid, pattern))
        .collect())
}

/// Every process but this one, by pid.
pub fn pids() -> Result<Vec<u32>> {
    let me = std::process::id();
    let mut out: Vec<u32> = fs::read_dir("/proc")
        .context("read /proc")?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&pid| pid != me)
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// `pid` as a target if its name or its executable's file name contains `pattern`.
pub fn matching(pid: u32, pattern: &str) -> Option<Target> {
    let comm = process_name(pid)?;
    let exe = fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|c| c.split('\0').next().map(str::to_string))
        .map(|a| a.rsplit('/').next().unwrap_or_default().to_string())
        .unwrap_or_default();
    (comm.contains(pattern) || exe.contains(pattern)).then_some(Target { pid, name: comm })
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
