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

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_man_page_per_visible_command_and_completions_without_the_hidden_ones() {
        Cli::command().debug_assert();
        let tmp = tempfile::tempdir().unwrap();
        let (man, completions) = (tmp.path().join("man"), tmp.path().join("completions"));
        for (what, dir) in [
            (Generated::Man, &man),
            (Generated::Completions, &completions),
        ] {
            let dir = dir.clone();
            command(&GenerateArgs { what, dir }).unwrap();
        }
        let pages = names(&man);
        let visible = Cli::command()
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .count();
        assert_eq!(pages.len(), visible + 1, "{pages:?}");
        for page in ["kvmprof.1", "kvmprof-record.1", "kvmprof-serve.1"] {
            assert!(pages.iter().any(|p| p == page), "{pages:?}");
        }
        assert!(!pages.iter().any(|p| p.contains("generate")), "{pages:?}");
        assert_eq!(
            names(&completions),
            ["_kvmprof", "kvmprof.bash", "kvmprof.fish"]
        );
        for file in names(&completions) {
            let text = fs::read_to_string(completions.join(&file)).unwrap();
            assert!(text.contains("record"), "{file}");
            assert!(
                !text.contains("generate"),
                "{file} offers the hidden generate"
            );
        }
    }
}
