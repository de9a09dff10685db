//! `kvmprof plot`: percentile distributions (several files overlaid) or the time series of
//! a recording, as SVG or PNG.
use anyhow::Result;

use crate::{
    cli::PlotArgs,
    cmd::load::load,
    data::aggregate::Aggregate,
    data::model::Stage,
    data::series::{self, Selection},
    sinks::plot::{self, Curve, Timeline},
};

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

pub fn command(a: &PlotArgs) -> Result<()> {
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
                    rows: series::intervals(
                        &r.aggregate,
                        &one,
                        stage,
                        series::window(r.header.start_ts_ns, r.header.duration_ns),
                    )?,
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
