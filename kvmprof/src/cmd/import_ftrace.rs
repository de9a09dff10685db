//! `kvmprof import-ftrace`: ftrace/trace-cmd function_graph text as kvmprof data files.
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::{
    cli::ImportArgs,
    data::model::Vendor,
    ftrace::{header, import},
    recording::datafile,
};

/// Length of the data file's intervals, as `record` writes by default.
const INTERVAL_NS: u64 = 1_000_000_000;

/// `kvmprof import-ftrace FILE... -o OUT`: writes the exits of the traces as a data file
/// that `report` reads like a live recording; one per vendor (`OUT` named after it) where
/// the traces hold captures of several.
pub fn command(args: &ImportArgs) -> Result<()> {
    let import = import(&args.files)?;
    let several = import.captures.len() > 1;
    for capture in &import.captures {
        let output = if several {
            vendor_path(&args.output, capture.vendor)
        } else {
            args.output.clone()
        };
        datafile::write(&output, &header(capture), &capture.exits, INTERVAL_NS)?;
        crate::util::diag::note!(
            "{} exits ({}) written to {}",
            capture.exits.len(),
            capture.vendor.label(),
            output.display(),
        );
    }
    crate::util::diag::note!("{}", import.stats);
    Ok(())
}

/// `OUT` with the vendor before its extension: `trace.data` → `trace.svm.data`.
fn vendor_path(output: &Path, vendor: Vendor) -> PathBuf {
    let tag = match vendor {
        Vendor::Vmx => "vmx",
        Vendor::Svm => "svm",
        Vendor::Pvm => "pvm",
        Vendor::Unknown => "unknown",
    };
    let mut name = output.file_stem().unwrap_or_default().to_os_string();
    name.push(format!(".{tag}"));
    if let Some(ext) = output.extension() {
        name.push(".");
        name.push(ext);
    }
    output.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::model::Stage;
    use crate::recording::header::Source;

    fn fixture(name: &str) -> String {
        format!(
            "{}/tests/fixtures/ftrace/{name}",
            env!("CARGO_MANIFEST_DIR")
        )
    }

    #[test]
    fn data_file_reads_like_a_live_recording() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("amd.data");
        let args = ImportArgs {
            files: vec![fixture("amd.txt").into()],
            output: output.clone(),
        };
        command(&args).unwrap();
        let (header, aggregate) = datafile::read(&output).unwrap();
        assert_eq!(header.source, Source::FtraceImport);
        assert_eq!(header.vendor, Vendor::Svm);
        assert_eq!(header.cycle_source, "vcpu_enter_guest duration");
        let hooks: Vec<_> = header
            .hooks
            .iter()
            .map(|h| (h.stage, h.symbol.as_str()))
            .collect();
        assert_eq!(
            hooks,
            [
                (Stage::Cycle, "vcpu_enter_guest"),
                (Stage::VendorRun, "svm_vcpu_run"),
                (Stage::Handler, "handle_exit"),
                (Stage::FastPio, "kvm_fast_pio"),
            ]
        );
        // no timestamps in this capture
        assert_eq!((header.start_ts_ns, header.duration_ns), (0, 0));
        assert_eq!(aggregate.total_exits(), 1);
        let io = crate::testdata::IO;
        let (key, stats) = aggregate.keys().iter().next().unwrap();
        assert_eq!((key.pid, key.vcpu, key.reason), (0, None, io));
        let sums: Vec<_> = [
            Stage::Cycle,
            Stage::VendorRun,
            Stage::Handler,
            Stage::FastPio,
        ]
        .map(|s| stats.stage(s).map(|s| s.sum_ns))
        .to_vec();
        assert_eq!(sums, [Some(7915), Some(3206), Some(3116), Some(2594)]);
    }

    #[test]
    fn several_vendors_write_one_data_file_each() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("seed.data");
        let args = ImportArgs {
            files: vec![fixture("amd_and_intel.txt").into()],
            output: output.clone(),
        };
        command(&args).unwrap();
        assert!(!output.exists(), "no file mixes the vendors");
        for (name, vendor) in [
            ("seed.svm.data", Vendor::Svm),
            ("seed.vmx.data", Vendor::Vmx),
        ] {
            let (header, aggregate) = datafile::read(&dir.path().join(name)).unwrap();
            assert_eq!((header.vendor, aggregate.total_exits()), (vendor, 1));
        }
        assert_eq!(
            vendor_path(Path::new("/a/b"), Vendor::Unknown),
            Path::new("/a/b.unknown")
        );
    }
}
