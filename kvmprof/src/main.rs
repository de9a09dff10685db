//! kvmprof: an eBPF profiler of KVM VM exits.
mod aggregate;
mod analyze;
mod attach;
mod btfproto;
mod cli;
mod collect;
mod datafile;
mod diag;
mod diff;
mod exits;
mod export;
mod flame;
mod ftrace;
mod hlog;
mod kernel;
mod live;
mod merge;
mod model;
mod output;
mod plan;
mod plot;
mod probes;
mod record;
mod report;
mod selfcost;
mod series;
mod serve;
mod slow;
mod spawn;
mod target;
mod tui;
mod units;
mod vendor;
mod vmname;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser as _;

use cli::{Cli, Cmd};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of causes, outermost first.
            diag::note!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Help and version as clap prints them; a usage error as one line, like every other error.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        // Printing help to a closed stdout is not worth a panic either.
        let _ = e.print();
        return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
    }
    // "error: <what>\n  <detail>\n\nUsage: ...\n\nFor more information, try '--help'."
    let text = e.render().to_string();
    let what: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    let what = what.join(" ");
    diag::note!(
        "{} (see --help)",
        what.strip_prefix("error: ").unwrap_or(&what)
    );
    ExitCode::from(2)
}

fn run(cli: Cli) -> Result<()> {
    let rt = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    match cli.cmd {
        Cmd::Record(a) => rt()?.block_on(record::record(a)),
        Cmd::Demo(a) => rt()?.block_on(record::demo(a)),
        Cmd::Top(a) => rt()?.block_on(tui::top(a)),
        Cmd::Serve(a) => rt()?.block_on(serve::serve(a)),
        Cmd::Report(a) => report::command(&a),
        Cmd::Export(a) => analyze::export_command(&a),
        Cmd::Diff(a) => analyze::diff_command(&a),
        Cmd::Plot(a) => analyze::plot_command(&a),
        Cmd::Probes(a) => probes::command(&a),
        Cmd::ImportFtrace(a) => ftrace::command(&a),
        Cmd::Flamegraph(a) => flame::command(&a),
        Cmd::Guest(a) => record::guest(&a),
    }
}
