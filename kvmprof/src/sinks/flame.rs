//! `flamegraph`: draws where the time of imported exit cycles goes, as an SVG flame graph
//! (inferno) of the exit path weighted by time, and as the folded stacks it is drawn from
//! (for `inferno-flamegraph`, speedscope and friends).
use crate::data::model::Stage;
use crate::ftrace::{Capture, Folded, Import};
use crate::util::output;
use anyhow::{bail, Context, Result};
use inferno::flamegraph::{self, color::BasicPalette, Palette};
use std::io::{BufWriter, Write};
use std::path::Path;

/// Writes the flame graph of `import` to `svg`, and its folded stacks to `folded` if given.
pub fn write(import: &Import, svg: &Path, folded: Option<&Path>) -> Result<()> {
    let stacks = stacks(import);
    // Both are opened first, so a bad path fails before anything is written.
    let svg_out = output::open(svg)?;
    let folded_out = folded.map(output::open).transpose()?;
    if let Some(mut out) = folded_out {
        let text = folded_text(&stacks);
        out.write_all(text.as_bytes())
            .with_context(|| format!("{}: cannot write", out.path().display()))?;
        out.finish()?;
    }
    let mut out = BufWriter::new(svg_out);
    render(import, &stacks, &mut out)?;
    out.flush()
        .with_context(|| format!("{}: cannot write", svg.display()))?;
    out.into_inner().map_err(|e| e.into_error())?.finish()
}

/// The folded stacks of every capture; with several vendors, each under a root frame named
/// after its vendor, so that their exit paths stand side by side instead of mixing.
fn stacks(import: &Import) -> Folded {
    match &import.captures[..] {
        [one] => one.folded.clone(),
        several => several
            .iter()
            .flat_map(|c| {
                let root = c.vendor.label();
                c.folded
                    .iter()
                    .map(move |(stack, &ns)| (format!("{root};{stack}"), ns))
            })
            .collect(),
    }
}

/// One `frame;frame;frame ns` line per stack, the format inferno and FlameGraph read.
pub fn folded_text(folded: &Folded) -> String {
    folded
        .iter()
        .map(|(stack, ns)| format!("{stack} {ns}\n"))
        .collect()
}

fn render(import: &Import, stacks: &Folded, out: impl Write) -> Result<()> {
    if stacks.values().all(|&ns| ns == 0) {
        bail!("no time in the exit path to draw");
    }
    let vendors: Vec<&str> = import.captures.iter().map(|c| c.vendor.label()).collect();
    let mut options = flamegraph::Options::default();
    options.title = format!("kvmprof: VM exit path ({})", vendors.join(", "));
    options.subtitle = Some(subtitle(import));
    options.count_name = "ns".to_owned();
    options.colors = Palette::Basic(BasicPalette::Hot);
    // Colour by function name so that the same function looks the same in every graph.
    options.hash = true;
    let text = folded_text(stacks);
    // inferno expects the lines sorted by stack, which a BTreeMap already gives.
    flamegraph::from_lines(&mut options, text.lines(), out).context("drawing the flame graph")
}

/// How many exits the graph sums, and their mean cycle, per vendor where there are several.
fn subtitle(import: &Import) -> String {
    let several = import.captures.len() > 1;
    let parts: Vec<String> = import
        .captures
        .iter()
        .map(|c| {
            let vendor = if several {
                format!("{}: ", c.vendor.label())
            } else {
                String::new()
            };
            format!("{vendor}{}", exits_and_mean(c))
        })
        .collect();
    format!("{}; width = time spent in each function", parts.join("; "))
}

fn exits_and_mean(capture: &Capture) -> String {
    let exits = capture.exits.len();
    let cycles: Vec<u64> = capture
        .exits
        .iter()
        .filter_map(|e| e.stages[Stage::Cycle.index()])
        .collect();
    let total_ns: u128 = cycles.iter().map(|&ns| u128::from(ns)).sum();
    let mean_ns = total_ns / cycles.len().max(1) as u128;
    let plural = if exits == 1 { "" } else { "s" };
    format!(
        "{exits} exit{plural}, mean cycle {:.3} us",
        mean_ns as f64 / 1000.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ftrace;

    fn seed_import(name: &str) -> Import {
        let path = format!(
            "{}/tests/fixtures/ftrace/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        ftrace::import(&[path]).unwrap()
    }

    #[test]
    fn several_vendors_stand_side_by_side() {
        let dir = tempfile::tempdir().unwrap();
        let (svg, folded) = (dir.path().join("both.svg"), dir.path().join("both.folded"));
        write(&seed_import("amd_and_intel.txt"), &svg, Some(&folded)).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.contains("kvmprof: VM exit path (Intel VMX, AMD SVM)"));
        assert!(text.contains(
            "Intel VMX: 1 exit, mean cycle 7.717 us; AMD SVM: 1 exit, mean cycle 7.915 us;"
        ));
        assert!(text.contains("<title>AMD SVM (7,915 ns, 50.63%)</title>"));
        assert!(text.contains("<title>Intel VMX (7,717 ns, 49.37%)</title>"));
        let lines = std::fs::read_to_string(&folded).unwrap();
        assert!(lines
            .lines()
            .all(|l| l.starts_with("AMD SVM;vcpu_enter_guest")
                || l.starts_with("Intel VMX;vcpu_enter_guest")));
    }

    #[test]
    fn folded_stacks_print_one_line_per_stack() {
        let folded = Folded::from([("a;b".to_owned(), 5), ("a".to_owned(), 2)]);
        assert_eq!(folded_text(&folded), "a 2\na;b 5\n");
    }

    #[test]
    fn svg_names_the_vendor_and_the_frames() {
        let dir = tempfile::tempdir().unwrap();
        let (svg, folded) = (dir.path().join("amd.svg"), dir.path().join("amd.folded"));
        let import = seed_import("amd.txt");
        write(&import, &svg, Some(&folded)).unwrap();

        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.starts_with("<?xml"));
        assert!(text.contains("kvmprof: VM exit path (AMD SVM)"));
        assert!(text.contains("1 exit, mean cycle 7.915 us;"));
        // the root spans the whole cycle, the vendor run its 3.206 us
        assert!(text.contains("<title>vcpu_enter_guest (7,915 ns, 100.00%)</title>"));
        assert!(text.contains("<title>svm_vcpu_run (3,206 ns, 40.51%)</title>"));
        assert!(text.contains("<title>kvm_fast_pio (2,594 ns, 32.77%)</title>"));

        let lines = std::fs::read_to_string(&folded).unwrap();
        let total: u64 = lines
            .lines()
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
            .sum();
        assert_eq!(total, 7915);
    }

    #[test]
    fn unwritable_outputs_are_errors() {
        let import = seed_import("intel.txt");
        let err = write(&import, Path::new("/nonexistent/x.svg"), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/nonexistent/x.svg: cannot write: the directory /nonexistent does not exist"
        );
    }
}
