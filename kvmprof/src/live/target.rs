//! Which processes to profile, and the checks that must pass before anything is loaded.
use std::{
    fs,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::data::target::{list, Target};

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
        if spec.trim().is_empty() {
            // An empty name would match every process on the host.
            bail!("an empty --pid pattern matches every process: give a pid or a name");
        }
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

/// How long a VMM that was just started (`qemu … & kvmprof record --pid $!`) may take to
/// create its first vCPU.
const VCPU_WAIT: Duration = Duration::from_secs(5);

/// A process younger than this that has not opened KVM yet may still be a VMM starting up.
const YOUNG: Duration = Duration::from_secs(2);

/// [`resolve`], keeping only processes that run a KVM vCPU: a pid without one is an error,
/// as is a name none of whose matches has one. Checked before recording, not after it. A
/// process that has opened KVM but has no vCPU yet, or is younger than [`YOUNG`], may be a
/// VMM starting up: it gets up to [`VCPU_WAIT`] to create one.
pub fn resolve_vmms(specs: &[String]) -> Result<Vec<Target>> {
    let mut out: Vec<Target> = Vec::new();
    for spec in specs {
        let found = resolve(std::slice::from_ref(spec))?;
        let deadline = Instant::now() + VCPU_WAIT;
        let vmms = loop {
            let uses: Vec<Kvm> = found.iter().map(|t| kvm_use(t.pid)).collect();
            let vmms: Vec<&Target> = found
                .iter()
                .zip(&uses)
                .filter(|(_, u)| u.vcpus > 0)
                .map(|(t, _)| t)
                .collect();
            let starting = found
                .iter()
                .zip(&uses)
                .any(|(t, u)| u.open || age(t.pid).is_some_and(|a| a < YOUNG));
            if !vmms.is_empty() || !starting || Instant::now() >= deadline {
                break vmms;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if vmms.is_empty() {
            let more = if found.len() > 5 { ", ..." } else { "" };
            bail!(
                "'{spec}' runs no KVM vCPU: {}{more} (no anon_inode:kvm-vcpu fd in \
                 /proc/PID/fd); start recording once the VM runs",
                list(found.iter().take(5))
            );
        }
        for t in vmms {
            if !out.iter().any(|o| o.pid == t.pid) {
                out.push(t.clone());
            }
        }
    }
    Ok(out)
}

/// The `-p` arguments of `top` and `serve`: a pid must run a KVM vCPU, as `record` holds it
/// to ([`resolve_vmms`]); a name may match processes that start their VM later, and is
/// followed.
pub fn resolve_watched(specs: &[String]) -> Result<Vec<Target>> {
    let mut out: Vec<Target> = Vec::new();
    for spec in specs {
        let one = std::slice::from_ref(spec);
        let found = if spec.parse::<u32>().is_ok() {
            resolve_vmms(one)?
        } else {
            resolve(one)?
        };
        for t in found {
            if !out.iter().any(|o| o.pid == t.pid) {
                out.push(t);
            }
        }
    }
    Ok(out)
}

/// How long ago `pid` started (`None` when it is gone).
fn age(pid: u32) -> Option<Duration> {
    let stat = read_lossy(&format!("/proc/{pid}/stat"))?;
    // Field 22, counted after the `(comm)` that may hold spaces.
    let start_ticks: u64 = stat
        .rsplit(')')
        .next()?
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    let uptime: f64 = fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let started = start_ticks as f64 / hz.max(1) as f64;
    Duration::try_from_secs_f64((uptime - started).max(0.0)).ok()
}

/// What a process holds of KVM, from its file descriptors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Kvm {
    /// vCPU fds (`anon_inode:kvm-vcpu:N`).
    pub vcpus: usize,
    /// `/dev/kvm` or a VM fd is open: a VMM, perhaps still creating its vCPUs.
    pub open: bool,
}

/// [`Kvm`] of `pid` (nothing when it is gone or its fds cannot be read).
pub fn kvm_use(pid: u32) -> Kvm {
    let mut k = Kvm::default();
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return k;
    };
    for link in fds.filter_map(|fd| fs::read_link(fd.ok()?.path()).ok()) {
        let link = link.to_string_lossy();
        // `anon_inode:kvm-vcpu:0` since Linux 4.x, `anon_inode:kvm-vcpu` before.
        if link.starts_with("anon_inode:kvm-vcpu") {
            k.vcpus += 1;
        } else if link == "/dev/kvm" || link == "anon_inode:kvm-vm" {
            k.open = true;
        }
    }
    k
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
    let exe = read_lossy(&format!("/proc/{pid}/cmdline"))
        .and_then(|c| c.split('\0').next().map(str::to_string))
        .map(|a| a.rsplit('/').next().unwrap_or_default().to_string())
        .unwrap_or_default();
    (comm.contains(pattern) || exe.contains(pattern)).then_some(Target { pid, name: comm })
}

pub fn process_name(pid: u32) -> Option<String> {
    read_lossy(&format!("/proc/{pid}/comm")).map(|s| s.trim().to_string())
}

/// A /proc file as text, bytes that are not UTF-8 replaced: names are bytes, and the kernel
/// cuts `comm` at 15 of them, often inside a character (`qemu-xééééé`). A strict read would
/// lose the process over its name.
pub fn read_lossy(path: &str) -> Option<String> {
    fs::read(path)
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Whether `pid` is still running (a zombie has exited).
pub fn alive(pid: u32) -> bool {
    match read_lossy(&format!("/proc/{pid}/stat")) {
        Some(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        None => false,
    }
}

/// The `--pid` values that are names rather than pids: the ones followed as processes start.
pub fn names(specs: &[String]) -> Vec<String> {
    specs
        .iter()
        .filter(|s| s.parse::<u32>().is_err())
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_are_followed() {
        let specs = ["123", "qemu", "4x"].map(String::from);
        assert_eq!(names(&specs), ["qemu", "4x"]);
    }

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
    fn an_empty_pattern_is_an_error_not_every_process() {
        for spec in ["", " "] {
            let e = resolve(&[spec.into()]).unwrap_err().to_string();
            assert!(e.contains("empty --pid pattern"), "{e}");
        }
    }

    #[test]
    fn a_process_without_a_vcpu_is_not_a_vm() {
        let me = std::process::id();
        assert_eq!(kvm_use(me), Kvm::default());
        let e = resolve_vmms(&[me.to_string()]).unwrap_err().to_string();
        assert!(e.contains("runs no KVM vCPU"), "{e}");
        assert!(e.contains(&format!("{me} (")), "{e}");
    }

    #[test]
    fn a_process_just_started_is_young() {
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let a = age(child.id()).expect("age");
        let _ = child.kill();
        let _ = child.wait();
        assert!(a < YOUNG, "{a:?}");
        assert!(age(1).expect("init") > Duration::from_millis(10));
        assert_eq!(age(4_194_999), None);
    }

    #[test]
    fn a_name_cut_inside_a_character_keeps_its_process() {
        // The kernel keeps 15 bytes of the name: "slp-" and five é, then half of the sixth.
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("slp-éééééééé");
        fs::copy("/bin/sleep", &exe).unwrap();
        let mut child = std::process::Command::new(&exe).arg("10").spawn().unwrap();
        let pid = child.id();
        // The child has its name once it has exec'd: until then it has its parent's.
        let t0 = std::time::Instant::now();
        while !fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("slp-"))
            && t0.elapsed() < std::time::Duration::from_secs(5)
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let name = process_name(pid);
        let alive_then = alive(pid);
        let by_name = by_name("slp-éé").unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(name.as_deref(), Some("slp-ééééé\u{fffd}"));
        assert!(alive_then);
        assert!(by_name.iter().any(|t| t.pid == pid), "{by_name:?}");
    }

    #[test]
    fn finds_this_test_process_by_pid() {
        let me = std::process::id();
        let t = resolve(&[me.to_string()]).unwrap();
        assert_eq!(t[0].pid, me);
        assert!(alive(me));
    }
}
