//! kvmprof: an eBPF profiler of KVM VM exits.
mod aggregate;
mod attach;
mod btfproto;
mod cli;
mod collect;
mod datafile;
mod flame;
mod ftrace;
mod kernel;
mod live;
mod model;
mod plan;
mod probes;
mod record;
mod report;
mod selfcost;
mod slow;
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
        Cmd::Probes(a) => {
            let (facts, plan) = live::plan_for_host(a.hooks.hooks)?;
            match a.format {
                cli::Format::Table => print!("{}", probes::render(&plan, &facts)),
                cli::Format::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
            }
            Ok(())
        }
        Cmd::ImportFtrace(a) => ftrace::command(&a),
        Cmd::Flamegraph(a) => flame::command(&a),
        Cmd::Guest(a) => record::guest(&a),
    }
}
