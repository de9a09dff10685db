//! `kvmprof report`: reads the data files (merging several) and prints their report.
use std::io::{self, Write as _};

use anyhow::{Context as _, Result};

use crate::{
    cli::ReportArgs,
    cmd::load,
    data::series::{self, Selection},
    sinks::report::{render_with, Extras, Intervals},
};

pub fn command(a: &ReportArgs) -> Result<()> {
    let r = load::load(&a.paths())?;
    let intervals = if a.intervals {
        let stage = series::default_stage(&r.aggregate);
        let rows = series::intervals(&r.aggregate, &Selection::default(), stage)?;
        Some(Intervals { stage, rows })
    } else {
        None
    };
    let extras = Extras {
        merged: r.merged,
        intervals,
    };
    let text = render_with(&r.header, &r.aggregate, a.by, a.format, extras);
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // `kvmprof report | head` is not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("write the report to stdout"),
    }
}
