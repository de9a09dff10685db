//! `kvmprof report`: reads the data files (merging several) and prints their report.
use anyhow::Result;

use crate::{
    cli::ReportArgs,
    cmd::load,
    data::series::{self, Selection},
    sinks::report::{render_with, Extras, Intervals},
    util::output,
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
    output::stdout(text.as_bytes()).map(drop)
}
