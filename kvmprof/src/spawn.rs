//! `kvmprof record -- CMD`: start the VMM ourselves, held before `exec` until every hook is
//! attached, so that not one of its exits is missed (the way `perf record -- CMD` works).
//!
//! `Command::spawn` itself waits for the child's `exec`, so the child cannot block before
//! it: instead it execs a tiny shell that waits on a pipe (fd 3) and then execs the
//! command. The pid stays the same across both execs, so the process filter holds.
use std::{
    io::Write,
    os::{fd::AsRawFd, unix::process::CommandExt},
    process::{Child, Command},
};

use anyhow::{bail, Context, Result};

/// Waits for a line on fd 3 (EOF means kvmprof died: give up), closes it, runs "$@".
const HOLD: &str = r#"read -r _ <&3 || exit 125; exec 3<&-; exec "$@""#;

pub struct HeldChild {
    pub child: Child,
    /// Writing a line to this releases the child into `exec`.
    gate: std::io::PipeWriter,
}

pub fn spawn_held(argv: &[String]) -> Result<HeldChild> {
    if argv.is_empty() {
        bail!("no command given after --");
    }
    let (read_end, write_end) = std::io::pipe().context("create a pipe")?;
    let fd = read_end.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", HOLD, "kvmprof-held"]).args(argv);
    // SAFETY: dup2(2) is async-signal-safe; it gives the shell the gate as fd 3.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().with_context(|| format!("start {}", argv[0]))?;
    drop(read_end);
    Ok(HeldChild {
        child,
        gate: write_end,
    })
}

impl HeldChild {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the child exec and run.
    pub fn release(mut self) -> Child {
        // A failed write means the child already died; `wait` will report it.
        let _ = self.gate.write_all(b"go\n");
        self.child
    }
}
