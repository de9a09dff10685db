//! The commands that read recordings and hand them to a sink: `export`, `diff`, `plot`.
//! Each reads its files (kvmprof data files or foreign .hlog), merges several into one where
//! asked, and passes plain data on.
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::aggregate::Aggregate;
use crate::cli::{DiffArgs, ExportArgs, ExportFormat, PlotArgs};
use crate::datafile::Header;
use crate::merge::{self, Input};
use crate::model::Stage;
use crate::plot::{self, Curve, Timeline};
use crate::report::Format;
use crate::series::{self, Selection};
use crate::{diff, export, hlog};

/// A recording read from one or more files.
pub struct Loaded {
    pub header: Header,
    pub aggregate: Aggregate,
    /// What was merged, when more than one file was read.
    pub merged: Option<merge::Merged>,
}

/// Reads `paths` and merges them.
pub fn load(paths: &[PathBuf]) -> Result<Loaded> {
    let mut inputs = Vec::new();
    for path in paths {
        let (header, aggregate) = hlog::open(path)?;
        if let Some(cut) = &header.cut {
            crate::diag::note!("{}", cut.warning(path, &header));
        }
        inputs.push(Input {
            path: path.clone(),
            header,
            aggregate,
        });
    }
    let merged = (inputs.len() > 1).then(|| merge::describe(&inputs));
    let (header, aggregate) = merge::merge(inputs)?;
    Ok(Loaded {
        header,
        aggregate,
        merged,
    })
}

pub fn export_command(a: &ExportArgs) -> Result<()> {
    let r = load(&a.inputs)?;
    let sel = a.select.selection();
    sel.check(&r.aggregate)?;
    let bytes = match a.format {
        ExportFormat::Hlog => export::hlog(&r.header, &r.aggregate)?,
        ExportFormat::Hgrm => export::hgrm(&r.aggregate, &sel, a.unit)?.into_bytes(),
        ExportFormat::Csv if a.intervals => {
            export::csv_intervals(&r.aggregate, a.by, &sel)?.into_bytes()
        }
        ExportFormat::Csv => export::csv(&r.header, &r.aggregate, a.by, &sel).into_bytes(),
        ExportFormat::Json => {
            export::json(&r.header, &r.aggregate, &sel, a.intervals)?.into_bytes()
        }
    };
    export::write_out(&a.output, &bytes)
}

pub fn diff_command(a: &DiffArgs) -> Result<()> {
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
    export::write_out(Path::new("-"), text.as_bytes())
}

fn side<'a>(path: &Path, r: &'a Loaded) -> diff::Side<'a> {
    diff::Side {
        name: path.display().to_string(),
        header: &r.header,
        aggregate: &r.aggregate,
    }
}

/// Curves of one file: per chosen reason (all reasons together when none is chosen) and
/// per chosen stage (the cycle, or the first measured stage, when none is chosen).
fn choices(a: &Aggregate, sel: &Selection) -> Vec<(String, Selection, Stage)> {
    let stages = if sel.stages.is_empty() {
        vec![series::default_stage(a)]
    } else {
        sel.stages.clone()
    };
    let reasons: Vec<Option<String>> = if sel.reasons.is_empty() {
        vec![None]
    } else {
        sel.reasons.iter().cloned().map(Some).collect()
    };
    let mut out = Vec::new();
    for r in &reasons {
        for &stage in &stages {
            let what = r.clone().unwrap_or_else(|| "all exits".to_owned());
            out.push((
                format!("{what} {}", stage.name()),
                Selection {
                    reasons: r.iter().cloned().collect(),
                    stages: vec![stage],
                },
                stage,
            ));
        }
    }
    out
}

pub fn plot_command(a: &PlotArgs) -> Result<()> {
    let sel = a.select.selection();
    let many = a.files.len() > 1;
    let mut curves = Vec::new();
    let mut timelines = Vec::new();
    for path in &a.files {
        let r = load(std::slice::from_ref(path))?;
        sel.check(&r.aggregate)?;
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        for (what, one, stage) in choices(&r.aggregate, &sel) {
            let label = if many {
                format!("{name}: {what}")
            } else {
                what
            };
            if a.time_series {
                timelines.push(Timeline {
                    label,
                    rows: series::intervals(&r.aggregate, &one, stage)?,
                });
            } else if let Some(hist) = series::by_stage(&r.aggregate, &one).remove(&stage) {
                let label = format!("{label} ({} samples)", hist.len());
                curves.push(Curve { label, hist });
            }
        }
    }
    let names: Vec<String> = a.files.iter().map(|p| p.display().to_string()).collect();
    if a.time_series {
        let title = a.title.clone().unwrap_or_else(|| {
            format!("kvmprof: rate and p99 per interval — {}", names.join(", "))
        });
        plot::time_series(&a.output, &title, &timelines)?;
    } else {
        let title = a.title.clone().unwrap_or_else(|| {
            let reasons = if sel.reasons.is_empty() {
                "all exits".to_owned()
            } else {
                sel.reasons.join(", ")
            };
            format!("kvmprof: exit latency by percentile — {reasons}")
        });
        plot::percentiles(&a.output, &title, &curves)?;
    }
    eprintln!("kvmprof: wrote {}", a.output.display());
    Ok(())
}
