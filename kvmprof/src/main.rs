//! kvmprof: an eBPF profiler of KVM VM exits.
mod backend;
mod cli;
mod cmd;
mod data;
mod ftrace;
mod host;
#[cfg(test)]
mod layers;
mod live;
mod recording;
mod serve;
mod sinks;
#[cfg(test)]
mod testdata;
mod tui;
mod util;

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
            util::diag::note!("{e:#}");
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
    util::diag::note!(
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
        Cmd::Record(a) => rt()?.block_on(cmd::record::record(a)),
        #[cfg(feature = "demo")]
        Cmd::Demo(a) => rt()?.block_on(cmd::demo::demo(a)),
        Cmd::Top(a) => rt()?.block_on(cmd::top::top(a)),
        Cmd::Serve(a) => rt()?.block_on(cmd::serve::serve(a)),
        Cmd::Report(a) => cmd::report::command(&a),
        Cmd::Export(a) => cmd::export::command(&a),
        Cmd::Diff(a) => cmd::diff::command(&a),
        Cmd::Plot(a) => cmd::plot::command(&a),
        Cmd::Probes(a) => cmd::probes::command(&a),
        Cmd::Funcs(a) => cmd::funcs::command(&a),
        Cmd::ImportFtrace(a) => cmd::import_ftrace::command(&a),
        Cmd::Flamegraph(a) => cmd::flamegraph::command(&a),
        Cmd::Generate(a) => cmd::generate::command(&a),
        #[cfg(feature = "demo")]
        Cmd::Guest(a) => cmd::demo::guest(&a),
    }
}
