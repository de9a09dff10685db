//! `kvmprof generate man|completions DIR` (hidden): the man pages and shell completions of
//! this very command line, for the package (`cargo xtask deb`), so none is kept by hand.
use std::fs;

use anyhow::{Context, Result};
use clap::{Command, CommandFactory};
use clap_complete::Shell;

use crate::cli::{Cli, GenerateArgs, Generated, NAME, VERSION};

pub fn command(a: &GenerateArgs) -> Result<()> {
    fs::create_dir_all(&a.dir).with_context(|| format!("cannot create {}", a.dir.display()))?;
    let cli = Cli::command();
    let written = || format!("cannot write into {}", a.dir.display());
    match a.what {
        // One page per visible command (kvmprof.1, kvmprof-record.1, ...), as git and perf
        // ship them, so `man kvmprof-record` finds the page of the command.
        Generated::Man => clap_mangen::generate_to(cli, &a.dir).with_context(written)?,
        Generated::Completions => {
            let mut cli = without_hidden(&cli);
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                clap_complete::generate_to(shell, &mut cli, NAME, &a.dir).with_context(written)?;
            }
        }
    }
    Ok(())
}

/// The command line without its hidden commands (`guest`, `generate`): clap_complete offers
/// every subcommand, hidden or not (clap_mangen leaves them out itself). clap cannot remove a
/// subcommand, so the top level is built again around the visible ones.
fn without_hidden(cli: &Command) -> Command {
    let mut top = Command::new(NAME)
        .version(VERSION)
        .subcommands(cli.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(about) = cli.get_about() {
        top = top.about(about.clone());
    }
    top
}
