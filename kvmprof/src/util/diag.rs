//! Messages on stderr that never panic: `eprintln!` panics when the pipe is closed
//! (`kvmprof record … 2>&1 | head -1`), which would lose the recording. A message nobody
//! reads is dropped; the work goes on. Results go to stdout through `output::stdout`.
use std::{
    fmt,
    io::{self, Write},
};

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
