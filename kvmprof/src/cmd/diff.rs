//! `kvmprof diff`: two recordings compared per reason and stage.
use std::path::Path;

use anyhow::Result;

use crate::{
    cli::DiffArgs,
    cmd::load::{load, Loaded},
    sinks::diff,
    sinks::report::Format,
    util::output,
};

pub fn command(a: &DiffArgs) -> Result<()> {
    let (ra, rb) = (
        load(std::slice::from_ref(&a.a))?,
        load(std::slice::from_ref(&a.b))?,
    );
    let sel = a.select.selection();
    if let (Err(e), Err(_)) = (sel.check(&ra.aggregate), sel.check(&rb.aggregate)) {
        return Err(e);
    }
    let d = diff::diff(&side(&a.a, &ra), &side(&a.b, &rb), &sel);
    let text = match a.format {
        Format::Table => diff::table_text(&d),
        Format::Json => diff::json(&d),
    };
    output::stdout(text.as_bytes()).map(drop)
}

fn side<'a>(path: &Path, r: &'a Loaded) -> diff::Side<'a> {
    diff::Side {
        name: path.display().to_string(),
        header: &r.header,
        aggregate: &r.aggregate,
    }
}
