//! AMD SVM: a stock Debian kernel under QEMU's software emulation (TCG), whose `-cpu max` has
//! SVM, so `kvm_amd` and real nested guests run there. virtme-ng (`vng`) boots it with the
//! host's filesystem as the VM's (read-only) root, so the release binaries built here run
//! there as they are, and shares the results directory read-write.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::Binaries;
use crate::setup::find_vng;
use crate::util::spawn_piped;

/// vng boots the host's root, so the kernel must be installed (`cargo xtask setup` does it).
fn image(version: &str) -> Result<PathBuf> {
    let image = Path::new("/boot").join(format!("vmlinuz-{version}"));
    if !image.is_file() || !Path::new("/lib/modules").join(version).is_dir() {
        bail!(
            "kernel {version} is not installed (no {} or /lib/modules/{version}): run `cargo xtask setup`",
            image.display()
        );
    }
    Ok(image)
}

/// What the runner starts with here: the host's release binaries, the vendor module, and one
/// idle VM held for the whole boot.
///
/// Why the idle VM: the VM's deaths ("the VM stopped early", in the 6.12 cell mostly during
/// `record -- testvmm`) are a kernel panic, captured with `vng -v` on the 6th of 8 such records
/// in a row: "Oops: int3 … RIP: __schedule+0x428" in the idle task, "Kernel panic - not
/// syncing: Fatal exception in interrupt". The faulting byte is a 5-byte jump-label site: a
/// text patch's temporary `int3` that a TCG vCPU still ran after the patch was done. The static
/// key there is most likely KVM's `preempt_notifier_key`, switched on when the first VM is
/// created and off when the last is destroyed, so every test VMM run alone patched
/// `__schedule` twice. With one VM alive throughout the key stays on. It makes no exit (never
/// enters KVM_RUN), and no check records it. The scheduler stages' hooks switch the keys of
/// the `sched_switch` and `sched_wakeup` tracepoints, also in `__schedule`, at every
/// recording; the VM froze often once they came, so those events are enabled for the whole
/// boot too (with `tracing_on` 0, nothing is recorded into ftrace's buffer).
pub fn prelude(bins: &Binaries) -> String {
    format!(
        "export KVMPROF='{}' TESTVMM='{}'\nTIMEOUT=timeout DATE=date\nmodprobe kvm_amd\n\
         \"$TESTVMM\" --vcpus 1 --start-delay 36000s > /dev/null 2>&1 &\n\
         t=/sys/kernel/tracing\n\
         [ -d $t/events ] || mount -t tracefs nodev $t 2> /dev/null || true\n\
         echo 0 > $t/tracing_on 2> /dev/null || true\n\
         for e in sched_switch sched_wakeup; do echo 1 > $t/events/sched/$e/enable 2> /dev/null || true; done\n",
        bins.kvmprof.display(),
        bins.testvmm.display()
    )
}

/// The vng command line of PLATFORM.md: `--disable-kvm` because QEMU with KVM acceleration on
/// the PVM host cannot run this kernel; no microvm so the full PC machine (and `-cpu max`, with
/// SVM) is used. `icount`: the guest clock counts emulated instructions (see `--icount`).
fn command(version: &str, rwdir: &Path, exec: &str, icount: bool) -> Result<Command> {
    let vng = find_vng().context("`vng` (virtme-ng) not found: run `cargo xtask setup`")?;
    let mut cmd = Command::new(vng);
    cmd.arg("-r")
        .arg(image(version)?)
        .args(["--disable-kvm", "--disable-microvm"])
        .arg(if icount {
            "--qemu-opts=-cpu max -icount shift=0,sleep=off"
        } else {
            "--qemu-opts=-cpu max"
        })
        .args(["--cpus", "1", "-m", "2G", "--rwdir"])
        .arg(rwdir)
        .args(["--exec", exec])
        .current_dir(rwdir)
        .stdin(Stdio::null());
    Ok(cmd)
}

/// The file the runner touches every few seconds in the shared results directory.
const HEARTBEAT: &str = "heartbeat";
/// A VM that neither touched [`HEARTBEAT`] for this long, nor made it this long after
/// starting, has frozen: its guest clock stopped (README, "Known issues"), and waiting for
/// the deadline of all its checks would only lose the time of the retry VM.
const STALL: Duration = Duration::from_secs(120);

/// The runner's line (after `OUT` is set) that shows the host the guest's clock still runs.
pub fn heartbeat() -> String {
    format!("( while :; do : > \"$OUT/{HEARTBEAT}\"; sleep 5; done ) &\n")
}

/// Why the VM of results directory `dir`, started at `start`, has frozen, if it has.
fn frozen(dir: &Path, start: Instant) -> Option<String> {
    let beat = std::fs::metadata(dir.join(HEARTBEAT)).and_then(|m| m.modified());
    let silent = match beat {
        Ok(t) => t.elapsed().unwrap_or_default(),
        Err(_) => start.elapsed(),
    };
    (silent > STALL).then(|| {
        format!(
            "froze: no heartbeat from the guest for {} s",
            silent.as_secs()
        )
    })
}

/// Runs `sh <dir>/payload/run.sh` in a VM of kernel `version`, the console in `<dir>/vm.log`; the
/// runner writes its results into `dir` itself, and [`heartbeat`]. `None` when the VM hung
/// (or froze) and was killed.
pub fn run(version: &str, dir: &Path, deadline: Duration) -> Result<Option<ExitStatus>> {
    let log = File::create(dir.join("vm.log")).context("cannot create vm.log")?;
    let exec = format!("sh {}", dir.join("payload/run.sh").display());
    let start = Instant::now();
    let running = spawn_piped(
        &mut command(version, dir, &exec, false)?,
        log.try_clone()?,
        log,
    )?;
    match running.wait_watched(deadline, || frozen(dir, start)) {
        Ok((status, _, _)) => Ok(Some(status)),
        Err(e) => {
            eprintln!("vm: hung, killed: {e:#}");
            Ok(None)
        }
    }
}

/// `--shell-cmd`: runs `script` in the workspace root, its output straight to the terminal.
pub fn shell(
    version: &str,
    script: &str,
    deadline: Duration,
    icount: bool,
) -> Result<Option<ExitStatus>> {
    let root = crate::util::workspace_root();
    run_vm(
        &mut command(version, &root, script, icount)?,
        io::stdout(),
        io::stderr(),
        deadline,
    )
}

/// Runs the VM to completion, its output copied to `out` and `err`; `None` when it hung and
/// was killed at `deadline` (said on stderr).
fn run_vm(
    cmd: &mut Command,
    out: impl Write + Send + 'static,
    err: impl Write + Send + 'static,
    deadline: Duration,
) -> Result<Option<ExitStatus>> {
    match spawn_piped(cmd, out, err)?.wait(deadline) {
        Ok((status, _, _)) => Ok(Some(status)),
        Err(e) => {
            eprintln!("vm: hung, killed: {e:#}");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_is_frozen_once_its_heartbeat_is_older_than_the_stall_limit() {
        let dir = crate::util::target_dir().join("xtask/test-heartbeat");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let now = Instant::now();
        assert_eq!(frozen(&dir, now), None, "booting, no heartbeat yet");
        let booted_long_ago = now - STALL - Duration::from_secs(1);
        assert!(frozen(&dir, booted_long_ago).is_some(), "never beat");
        let beat = File::create(dir.join(HEARTBEAT)).unwrap();
        assert_eq!(frozen(&dir, booted_long_ago), None, "beats");
        beat.set_modified(std::time::SystemTime::now() - STALL - Duration::from_secs(5))
            .unwrap();
        let why = frozen(&dir, booted_long_ago).unwrap();
        assert!(
            why.starts_with("froze: no heartbeat from the guest for 12"),
            "{why}"
        );
    }
}
