//! Messages on stderr and results on stdout that never panic: `eprintln!` and `println!`
//! panic when the pipe is closed (`kvmprof record … 2>&1 | head -1`), which would lose the
//! recording. A message nobody reads is dropped; the work goes on.
use std::{
    fmt,
    io::{self, Write},
};

use anyhow::{Context as _, Result};

/// One line on stderr, `kvmprof: ` first; a closed or full stderr is ignored.
pub fn line(args: fmt::Arguments) {
    let _ = writeln!(io::stderr().lock(), "kvmprof: {args}");
}

/// `note!("...", args)`: [`line`] with `format!` arguments.
macro_rules! note {
    ($($arg:tt)*) => {
        $crate::util::diag::line(format_args!($($arg)*))
    };
}
pub(crate) use note;

/// Writes `text` to stdout; a reader that went away (`| head`) is not an error.
pub fn stdout(text: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("write to stdout"),
    }
}
