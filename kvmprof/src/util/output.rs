//! Where results go: stdout ([`stdout`]) and files kvmprof writes (`-o`, `--exits`,
//! `--folded`). Files are opened before any work starts, so a
//! bad path fails at once; a symlink is followed; a device node or FIFO is written through,
//! never replaced by a regular file; an existing regular file is emptied only when the first
//! byte is written, so a command that fails before that leaves it as it was.
use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{FileTypeExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use anyhow::{bail, Result};

/// An output file, open for writing.
#[derive(Debug)]
pub struct Output {
    file: File,
    path: PathBuf,
    /// A regular file (emptied on first write, synced at the end) rather than a device,
    /// FIFO or other special file (written through as is).
    regular: bool,
    /// We created it: removed again if nothing was ever written.
    created: bool,
    written: bool,
}

/// Opens `path` for writing, following symlinks; see the module documentation.
pub fn open(path: &Path) -> Result<Output> {
    if path.as_os_str().is_empty() {
        bail!("the output path is empty");
    }
    let fail =
        |e: io::Error| anyhow::anyhow!("{}: cannot write: {}", path.display(), why(&e, path));
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => bail!("{}: cannot write: it is a directory", path.display()),
        Ok(m) if m.file_type().is_socket() => {
            bail!("{}: cannot write: it is a socket", path.display())
        }
        Ok(m) if m.file_type().is_fifo() => {
            // Opening a FIFO for writing blocks until it has a reader: refuse instead.
            let file = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
                .map_err(|e| match e.raw_os_error() {
                    Some(libc::ENXIO) => anyhow::anyhow!(
                        "{}: cannot write: it is a FIFO with no reader (start its reader first)",
                        path.display()
                    ),
                    _ => fail(e),
                })?;
            blocking(&file).map_err(fail)?;
            Ok(Output::special(file, path))
        }
        Ok(m) if !m.is_file() => {
            // A device node: write through it (e.g. /dev/null), never truncate or replace.
            let file = OpenOptions::new().write(true).open(path).map_err(fail)?;
            Ok(Output::special(file, path))
        }
        Ok(_) => {
            let file = OpenOptions::new().write(true).open(path).map_err(fail)?;
            Ok(Output {
                file,
                path: path.to_owned(),
                regular: true,
                created: false,
                written: false,
            })
        }
        Err(_) => {
            // Missing (or a dangling symlink, created through): create it now, so a missing
            // or read-only directory fails here rather than after the work.
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(fail)?;
            Ok(Output {
                file,
                path: path.to_owned(),
                regular: true,
                created: true,
                written: false,
            })
        }
    }
}

/// Writes `bytes` to `path` as a whole (see [`open`]).
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut out = open(path)?;
    out.write_all(bytes)
        .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", path.display()))?;
    out.finish()
}

/// Writes `bytes` to `path`, or to stdout for `-`.
pub fn write_to(path: &Path, bytes: &[u8]) -> Result<()> {
    if path.as_os_str() == "-" {
        return stdout(bytes).map(drop);
    }
    write_file(path, bytes)
}

/// Writes `bytes` to stdout, the one way results go there: `println!` panics on a closed
/// pipe. `Ok(false)`: the reader went away (`kvmprof report | head`), which is not an error.
pub fn stdout(bytes: &[u8]) -> Result<bool> {
    let mut out = io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(anyhow::Error::new(e).context("write to stdout")),
    }
}

/// A clearer reason for the usual failures.
fn why(e: &io::Error, path: &Path) -> String {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match e.kind() {
        io::ErrorKind::NotFound if !dir.is_dir() => {
            format!("the directory {} does not exist", dir.display())
        }
        _ => e.to_string(),
    }
}

/// Clears O_NONBLOCK again once the FIFO is open.
fn blocking(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on an fd we own, with flag arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Output {
    fn special(file: File, path: &Path) -> Output {
        Output {
            file,
            path: path.to_owned(),
            regular: false,
            created: false,
            written: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether both are the same regular file (through links or not): two writers would
    /// interleave into garbage. Devices and FIFOs may well be shared (`/dev/null`).
    pub fn same_file(&self, other: &Output) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (self.file.metadata(), other.file.metadata()) {
            (Ok(a), Ok(b)) => a.is_file() && a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }

    /// Flushes to disk when it is a regular file (a device or FIFO has nothing to sync).
    pub fn finish(self) -> Result<()> {
        if self.regular {
            self.file
                .sync_data()
                .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", self.path.display()))?;
        }
        Ok(())
    }
}

impl Output {
    /// Takes the file over: an old regular file is emptied. Writing does this first.
    pub fn begin(&mut self) -> io::Result<()> {
        if !self.written && self.regular && !self.created {
            self.file.set_len(0)?;
        }
        self.written = true;
        Ok(())
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The old content goes only now that there is new content to replace it.
        self.begin()?;
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if self.created && !self.written {
            // Best effort: an empty file we made for a command that then failed.
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_directory_fails_at_open_and_names_it() {
        let e = open(Path::new("/nonexistent-dir/k.data")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/nonexistent-dir/k.data: cannot write: the directory /nonexistent-dir does not exist"
        );
        let dir = tempfile::tempdir().unwrap();
        let e = open(dir.path()).unwrap_err().to_string();
        assert!(e.ends_with("cannot write: it is a directory"), "{e}");
    }

    #[test]
    fn an_old_file_stays_until_new_content_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.data");
        fs::write(&path, "old content").unwrap();
        drop(open(&path).unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), "old content");
        let mut out = open(&path).unwrap();
        out.write_all(b"new").unwrap();
        out.finish().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        // A file we created and never wrote is removed again.
        let fresh = dir.path().join("fresh.data");
        drop(open(&fresh).unwrap());
        assert!(!fresh.exists());
    }

    #[test]
    fn symlinks_are_followed_and_dev_null_is_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let (real, link) = (dir.path().join("real"), dir.path().join("link"));
        fs::write(&real, "old").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_file(&link, b"new").unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read_to_string(&real).unwrap(), "new");
        write_file(Path::new("/dev/null"), b"x").unwrap();
        assert!(fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device());
    }

    #[test]
    fn the_same_file_under_two_names_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let first = open(&a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        assert!(first.same_file(&open(&b).unwrap()));
        assert!(!first.same_file(&open(&dir.path().join("c")).unwrap()));
        let null = open(Path::new("/dev/null")).unwrap();
        assert!(!null.same_file(&open(Path::new("/dev/null")).unwrap()));
    }

    #[test]
    fn a_fifo_without_reader_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = open(&fifo).unwrap_err().to_string();
        assert!(e.contains("FIFO with no reader"), "{e}");
    }
}
