//! kvmprof: an eBPF profiler of KVM VM exits.
mod aggregate;
mod analyze;
mod attach;
mod cli;
mod collect;
mod datafile;
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
mod plan;
mod plot;
mod probes;
mod record;
mod report;
mod series;
mod spawn;
mod target;
mod tui;
mod units;
mod vendor;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use cli::{Cli, Cmd};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of causes, outermost first.
            eprintln!("kvmprof: {e:#}");
            ExitCode::FAILURE
        }
    }
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
