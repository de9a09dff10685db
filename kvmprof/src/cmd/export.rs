//! `kvmprof export`: a recording as a standalone .hlog, a .hgrm percentile distribution,
//! CSV or JSON.
use anyhow::Result;

use crate::{
    cli::{ExportArgs, ExportFormat},
    cmd::load::load,
    sinks::{export, hgrm},
    util::output,
};

pub fn command(a: &ExportArgs) -> Result<()> {
    let r = load(&a.inputs)?;
    let sel = a.select.selection();
    sel.check(&r.aggregate)?;
    let bytes = match a.format {
        ExportFormat::Hlog => export::hlog(&r.header, &r.aggregate)?,
        ExportFormat::Hgrm => hgrm::hgrm(&r.header, &r.aggregate, &sel, a.unit)?.into_bytes(),
        ExportFormat::Csv if a.intervals => {
            export::csv_intervals(&r.aggregate, a.by, &sel)?.into_bytes()
        }
        ExportFormat::Csv => export::csv(&r.header, &r.aggregate, a.by, &sel).into_bytes(),
        ExportFormat::Json => {
            export::json(&r.header, &r.aggregate, &sel, a.intervals)?.into_bytes()
        }
    };
    output::write_to(&a.output, &bytes)
}
