//! AMD SVM: a stock Debian kernel under QEMU's software emulation (TCG), whose `-cpu max` has
//! SVM, so `kvm_amd` and real nested guests run there. virtme-ng (`vng`) boots it with the
//! host's filesystem as the VM's (read-only) root, so the release binaries built here run
//! there as they are, and shares the results directory read-write.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

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
/// Why the idle VM: KVM flips a static key (`preempt_notifier_key`, patched into `__schedule`)
/// when the first VM is created and the last destroyed, so every test VMM run alone patches
/// kernel text twice. Under QEMU TCG a vCPU now and then executes the patch's stale `int3`
/// after it is done: "Oops: int3 … RIP: __schedule+0x428 … Kernel panic - not syncing: Fatal
/// exception in interrupt" in the idle task (6.12, console captured with `vng -v`, 6th of 8
/// `record -- testvmm` in a row), which ends the VM at once ("the VM stopped early"). With a VM
/// alive throughout, the key never goes back to 0. It makes no exit (never enters KVM_RUN),
/// and no check records it.
pub fn prelude(bins: &Binaries) -> String {
    format!(
        "export KVMPROF='{}' TESTVMM='{}'\nTIMEOUT=timeout DATE=date\nmodprobe kvm_amd\n\
         \"$TESTVMM\" --vcpus 1 --start-delay 36000s > /dev/null 2>&1 &\n",
        bins.kvmprof.display(),
        bins.testvmm.display()
    )
}

/// The vng command line of PLATFORM.md: `--disable-kvm` because QEMU with KVM acceleration on
/// the PVM host cannot run this kernel; no microvm so the full PC machine (and `-cpu max`, with
/// SVM) is used.
fn command(version: &str, rwdir: &Path, exec: &str) -> Result<Command> {
    let vng = find_vng().context("`vng` (virtme-ng) not found: run `cargo xtask setup`")?;
    let mut cmd = Command::new(vng);
    cmd.arg("-r")
        .arg(image(version)?)
        .args(["--disable-kvm", "--disable-microvm", "--qemu-opts=-cpu max"])
        .args(["-m", "2G", "--rwdir"])
        .arg(rwdir)
        .args(["--exec", exec])
        .current_dir(rwdir)
        .stdin(Stdio::null());
    Ok(cmd)
}

/// Runs `sh <dir>/payload/run.sh` in a VM of kernel `version`, the console in `<dir>/vm.log`; the
/// runner writes its results into `dir` itself. `None` when the VM hung and was killed.
pub fn run(version: &str, dir: &Path, deadline: Duration) -> Result<Option<ExitStatus>> {
    let log = File::create(dir.join("vm.log")).context("cannot create vm.log")?;
    let exec = format!("sh {}", dir.join("payload/run.sh").display());
    run_vm(
        &mut command(version, dir, &exec)?,
        log.try_clone()?,
        log,
        deadline,
    )
}

/// `--shell-cmd`: runs `script` in the workspace root, its output straight to the terminal.
pub fn shell(version: &str, script: &str, deadline: Duration) -> Result<Option<ExitStatus>> {
    let root = crate::util::workspace_root();
    run_vm(
        &mut command(version, &root, script)?,
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
