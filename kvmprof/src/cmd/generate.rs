//! `kvmprof generate man|completions DIR` (hidden): the man pages and shell completions of
//! this very command line, for the package (`cargo xtask deb`), so none is kept by hand.
use std::fs;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::{Cli, GenerateArgs, Generated};

pub fn command(a: &GenerateArgs) -> Result<()> {
    fs::create_dir_all(&a.dir).with_context(|| format!("cannot create {}", a.dir.display()))?;
    let mut cli = Cli::command();
    let written = || format!("cannot write into {}", a.dir.display());
    match a.what {
        // One page per visible command (kvmprof.1, kvmprof-record.1, ...), as git and perf
        // ship them, so `man kvmprof-record` finds the page of the command.
        Generated::Man => clap_mangen::generate_to(cli, &a.dir).with_context(written)?,
        Generated::Completions => {
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                clap_complete::generate_to(shell, &mut cli, "kvmprof", &a.dir)
                    .with_context(written)?;
            }
        }
    }
    Ok(())
}
