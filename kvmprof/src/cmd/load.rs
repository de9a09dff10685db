//! What the commands that read recordings (`report`, `export`, `diff`, `plot`) share: reading
//! their files (kvmprof data files or foreign .hlog) and merging several into one where asked,
//! so that the sinks get plain data.
use std::path::PathBuf;

use anyhow::Result;

use crate::data::aggregate::Aggregate;
use crate::recording::header::Header;
use crate::recording::hlog;
use crate::recording::merge::{self, Input};

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
            crate::util::diag::note!("{}", cut.warning(path, &header));
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
