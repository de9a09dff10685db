//! `kvmprof record -- CMD`: start the VMM ourselves, held before `exec` until every hook is
//! attached, so that not one of its exits is missed (the way `perf record -- CMD` works).
//!
//! `Command::spawn` itself waits for the child's `exec`, so the child cannot block before
//! it: instead it execs a tiny shell that waits on a pipe (fd 3) and then execs the
//! command. The pid stays the same across both execs, so the process filter holds. Since
//! the shell would only report a bad command after recording began, and under its own
//! name, the command is looked up here first.
use std::{
    ffi::OsStr,
    io::Write,
    os::{
        fd::AsRawFd,
        unix::{fs::PermissionsExt, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus},
};

use anyhow::{bail, Context, Result};

/// Waits for a line on fd 3 (EOF means kvmprof died: give up), closes it, runs "$@".
const HOLD: &str = r#"read -r _ <&3 || exit 125; exec 3<&-; exec "$@""#;

pub struct HeldChild {
    pub child: Child,
    /// The command's file name, e.g. `qemu-system-x86_64`.
    name: String,
    /// Writing a line to this releases the child into `exec`.
    gate: std::io::PipeWriter,
}

pub fn spawn_held(argv: &[String]) -> Result<HeldChild> {
    let Some(program) = argv.first() else {
        bail!("no command given after --");
    };
    let name = Path::new(program)
        .file_name()
        .unwrap_or(OsStr::new(program))
        .to_string_lossy()
        .into_owned();
    check_executable(program)?;
    let (read_end, write_end) = std::io::pipe().context("create a pipe")?;
    let fd = read_end.as_raw_fd();
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    let mut cmd = Command::new("/bin/sh");
    // $0 names the messages the shell itself might print: say they come from kvmprof.
    cmd.args(["-c", HOLD, "kvmprof"]).args(argv);
    // SAFETY: only async-signal-safe calls (dup2, fcntl, prctl, getppid) between fork and
    // exec.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec: clear it instead.
            let gate = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if gate < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The command dies with kvmprof, even with `kill -9 kvmprof`: SIGTERM lets a
            // VMM shut down cleanly. It survives the exec into the command.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // kvmprof may have died before the prctl: then nobody would send the signal.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let child = cmd.spawn().with_context(|| format!("start {program}"))?;
    drop(read_end);
    Ok(HeldChild {
        child,
        name,
        gate: write_end,
    })
}

/// Fails with the command's own name when it cannot be run, as a shell would find it.
fn check_executable(program: &str) -> Result<()> {
    if program.is_empty() {
        bail!("the command after -- is empty");
    }
    let path = if program.contains('/') {
        PathBuf::from(program)
    } else {
        let path = std::env::var_os("PATH").unwrap_or_default();
        match std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
        {
            Some(p) => p,
            None => bail!("cannot run {program}: command not found in PATH"),
        }
    };
    let meta =
        std::fs::metadata(&path).map_err(|e| anyhow::anyhow!("cannot run {program}: {e}"))?;
    if meta.is_dir() {
        bail!("cannot run {program}: it is a directory");
    }
    if meta.permissions().mode() & 0o111 == 0 {
        bail!("cannot run {program}: not executable");
    }
    Ok(())
}

impl HeldChild {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Lets the child exec and run.
    pub fn release(mut self) -> Child {
        // A failed write means the child already died; `wait` will report it.
        let _ = self.gate.write_all(b"go\n");
        self.child
    }
}

/// How a command ended, in words: `exited with status 0`, `was killed by signal 15`.
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        (None, None) => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_command_is_named() {
        let e = spawn_held(&["/nonexistent".into()]).err().unwrap();
        assert_eq!(
            e.to_string(),
            "cannot run /nonexistent: No such file or directory (os error 2)"
        );
        let e = spawn_held(&["no-such-command-xyz".into()]).err().unwrap();
        assert_eq!(
            e.to_string(),
            "cannot run no-such-command-xyz: command not found in PATH"
        );
        let plain = tempfile::NamedTempFile::new().unwrap();
        let plain = plain.path().to_str().unwrap().to_owned();
        let e = spawn_held(std::slice::from_ref(&plain)).err().unwrap();
        assert_eq!(e.to_string(), format!("cannot run {plain}: not executable"));
    }

    #[test]
    fn a_held_command_runs_once_released_and_reports_its_status() {
        let held = spawn_held(&["sh".into(), "-c".into(), "exit 3".into()]).unwrap();
        assert_eq!(held.name(), "sh");
        let status = held.release().wait().unwrap();
        assert_eq!(describe(status), "exited with status 3");
    }
}
