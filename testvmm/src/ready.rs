//! The ready file: tells a waiting test which threads to watch, before the
//! guest starts.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The ready file's one JSON line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    pub pid: u32,
    /// The guest starts this long after the file appears.
    pub start_delay_ms: u64,
    pub vcpus: Vec<ReadyVcpu>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyVcpu {
    pub index: u32,
    pub thread: String,
    pub tid: i32,
}

impl Ready {
    /// Writes to a temporary file and renames it, so a reader polling for
    /// `path` never sees a partial line.
    pub(crate) fn write(&self, path: &Path) -> Result<()> {
        let mut line = serde_json::to_string(self).context("serialize ready file")?;
        line.push('\n');
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        fs::write(&tmp, line).with_context(|| format!("write {}", Path::new(&tmp).display()))?;
        fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_one_json_line() {
        let dir = std::env::temp_dir().join(format!("testvmm-ready-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ready");
        let ready = Ready {
            pid: 7,
            start_delay_ms: 500,
            vcpus: vec![ReadyVcpu {
                index: 0,
                thread: "CPU 0/KVM".into(),
                tid: 8,
            }],
        };
        ready.write(&path).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert_eq!(serde_json::from_str::<Ready>(&text).unwrap(), ready);
        fs::remove_dir_all(&dir).unwrap();
    }
}
