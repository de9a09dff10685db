//! Reading a recording into memory, bounded: a device or pipe can be endless (`report
//! /dev/zero`), and a recording is text, so binary input is refused at its first bytes.
use std::{
    fs::File,
    io::{self, Read},
    path::Path,
};

use anyhow::{anyhow, bail, Result};

/// The most read from anything but a regular file (whose size is known and finite).
pub const STREAM_LIMIT: u64 = 256 << 20;

/// How much of the start is checked for binary data (a NUL byte) before the rest is read.
const HEAD: usize = 64 << 10;

/// The bytes of recording `path`; errors are one line naming it.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    read_at_most(path, STREAM_LIMIT)
}

fn read_at_most(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let fail = |e: io::Error| anyhow!("{}: cannot read: {e}", path.display());
    let file = File::open(path).map_err(fail)?;
    let regular = file.metadata().map_err(fail)?.is_file();
    let mut bytes = Vec::new();
    let mut input = file.take(if regular { u64::MAX } else { limit + 1 });
    (&mut input)
        .take(HEAD as u64)
        .read_to_end(&mut bytes)
        .map_err(fail)?;
    if bytes.contains(&0) {
        bail!(
            "{}: binary data, not a kvmprof data file or HdrHistogram log",
            path.display()
        );
    }
    input.read_to_end(&mut bytes).map_err(fail)?;
    if bytes.len() as u64 > limit {
        bail!(
            "{}: more than {} MiB from a device or pipe, not a recording (save it to a file)",
            path.display(),
            limit >> 20
        );
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_zero_is_refused_at_its_first_bytes() {
        let e = read(Path::new("/dev/zero")).unwrap_err().to_string();
        assert_eq!(
            e,
            "/dev/zero: binary data, not a kvmprof data file or HdrHistogram log"
        );
    }

    #[test]
    fn endless_text_from_a_pipe_stops_at_the_limit() {
        // `yes` writes text for ever; the read stops just past the limit.
        let mut yes = std::process::Command::new("yes")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(yes.stdout.as_ref().unwrap());
        let e = read_at_most(Path::new(&format!("/proc/self/fd/{fd}")), 1 << 20).unwrap_err();
        let _ = yes.kill();
        let _ = yes.wait();
        assert!(e.to_string().contains("more than 1 MiB"), "{e}");
    }
}
