//! `kvmprof flamegraph`: where exit-handling time goes, from function_graph traces.
use anyhow::Result;

use crate::{cli::FlameArgs, ftrace, sinks::flame::write};

/// `kvmprof flamegraph -i TRACE... -o OUT.svg [--folded OUT.folded]`.
pub fn command(args: &FlameArgs) -> Result<()> {
    let import = ftrace::import(&args.inputs)?;
    write(&import, &args.output, args.folded.as_deref())?;
    let counts: Vec<String> = import
        .captures
        .iter()
        .map(|c| format!("{} exits ({})", c.exits.len(), c.vendor.label()))
        .collect();
    crate::util::diag::note!(
        "{}: {}; {}",
        args.output.display(),
        counts.join(", "),
        import.stats
    );
    Ok(())
}
