//! Small helpers shared by the tasks: running commands and finding the workspace's paths.

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// The workspace root: xtask lives one level below it.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Cargo's target directory, honouring CARGO_TARGET_DIR like cargo does.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// The cargo that runs us (`cargo run` sets $CARGO), so nested builds use the same toolchain.
pub fn cargo() -> Command {
    let mut cmd =
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")));
    cmd.current_dir(workspace_root());
    cmd
}

/// Shows a command the way a user would type it, for messages.
pub fn display(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs a command with inherited stdio and fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{}`", display(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// Runs a command and returns its stdout; fails unless it exits 0 (with its stderr in the error).
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start `{}`", display(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Finds an executable on $PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A child whose stdout and stderr are being copied into writers by two threads. Pipes, not
/// files, because QEMU opens its console as `/proc/self/fd/2` (and fd/1), which truncates a
/// regular file and wipes what was written before; and reading while waiting means a chatty
/// child never blocks on a full pipe.
pub struct Running<O, E> {
    child: Child,
    what: String,
    copies: (JoinHandle<O>, JoinHandle<E>),
}

/// Starts `cmd` with its output copied into `out` and `err`.
pub fn spawn_piped<O, E>(cmd: &mut Command, out: O, err: E) -> Result<Running<O, E>>
where
    O: Write + Send + 'static,
    E: Write + Send + 'static,
{
    let what = display(cmd);
    let (out_reader, out_writer) = io::pipe().context("cannot create a pipe")?;
    let (err_reader, err_writer) = io::pipe().context("cannot create a pipe")?;
    let child = cmd
        .stdout(out_writer)
        .stderr(err_writer)
        .spawn()
        .with_context(|| format!("cannot start `{what}`"));
    // The Command keeps the write ends: replace them so the copies see EOF when the child exits.
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    Ok(Running {
        child: child?,
        what,
        copies: (forward(out_reader, out), forward(err_reader, err)),
    })
}

fn forward<W: Write + Send + 'static>(mut from: io::PipeReader, mut to: W) -> JoinHandle<W> {
    std::thread::spawn(move || {
        // A failed copy only loses output; the exit status still tells what happened.
        let _ = io::copy(&mut from, &mut to);
        to
    })
}

impl<O, E> Running<O, E> {
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Whether the child has ended (its status stays for [`Running::wait`]).
    pub fn ended(&mut self) -> Result<bool> {
        Ok(self.child.try_wait()?.is_some())
    }

    /// Waits for the child and returns its status and the writers holding its output. After
    /// `limit` it kills the child and its descendants and fails.
    pub fn wait(self, limit: Duration) -> Result<(ExitStatus, O, E)> {
        self.wait_watched(limit, || None)
    }

    /// As [`Running::wait`], and also kills the child as soon as `stalled` says why it will
    /// not finish (polled every second).
    pub fn wait_watched(
        mut self,
        limit: Duration,
        mut stalled: impl FnMut() -> Option<String>,
    ) -> Result<(ExitStatus, O, E)> {
        let start = Instant::now();
        let mut polls = 0u32;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            polls += 1;
            let why = if start.elapsed() > limit {
                Some(format!("did not finish within {} s", limit.as_secs()))
            } else if polls.is_multiple_of(10) {
                stalled()
            } else {
                None
            };
            if let Some(why) = why {
                kill_tree(self.child.id());
                let _ = self.child.wait();
                bail!("`{}` {why}", self.what);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let join = "an output copy thread panicked";
        let out = self.copies.0.join().map_err(|_| anyhow!(join))?;
        let err = self.copies.1.join().map_err(|_| anyhow!(join))?;
        Ok((status, out, err))
    }
}

/// SIGKILL to a process and all its descendants (vng runs virtme-run, which runs QEMU).
/// Best effort: a process that is already gone needs no killing. (Not a process group: Ctrl-C
/// from the terminal must still reach every process of a run.)
fn kill_tree(pid: u32) {
    // Collected before killing anything: orphans are re-parented and could no longer be found.
    let mut tree = vec![pid.to_string()];
    let mut next = 0;
    while next < tree.len() {
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", tree[next]))
            .unwrap_or_default();
        tree.extend(children.split_whitespace().map(str::to_string));
        next += 1;
    }
    let _ = Command::new("kill").arg("-KILL").args(&tree).status();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process's state letter from /proc, or None once it is gone.
    fn state(pid: &str) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit(')')
            .next()?
            .split_whitespace()
            .next()?
            .chars()
            .next()
    }

    #[test]
    fn a_child_past_its_limit_is_killed_with_all_its_descendants() {
        // sh -> sh -> sleep, like vng -> virtme-run -> qemu.
        let file = std::env::temp_dir().join(format!("xtask-kill-{}", std::process::id()));
        let script = format!("sh -c 'sleep 60 & echo $! > {}; wait'", file.display());
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script]);
        let running = spawn_piped(&mut cmd, Vec::new(), Vec::new()).unwrap();
        let err = running.wait(Duration::from_millis(500)).unwrap_err();
        assert!(
            err.to_string().contains("did not finish within 0 s"),
            "{err}"
        );
        let sleep = std::fs::read_to_string(&file).unwrap();
        let _ = std::fs::remove_file(&file);
        // Killed: gone, or a zombie whose new parent has not reaped it yet. SIGKILL is
        // delivered asynchronously, so give the kernel a moment to finish the job.
        let gone = || matches!(state(sleep.trim()), None | Some('Z'));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !gone() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let s = state(sleep.trim());
        assert!(gone(), "sleep is still {s:?}");
    }

    #[test]
    fn output_is_collected_while_waiting() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let (status, out, err) = spawn_piped(&mut cmd, Vec::new(), Vec::new())
            .unwrap()
            .wait(Duration::from_secs(10))
            .unwrap();
        assert_eq!(status.code(), Some(3));
        assert_eq!(
            (out.as_slice(), err.as_slice()),
            (&b"out\n"[..], &b"err\n"[..])
        );
    }
}
