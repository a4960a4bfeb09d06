//! `lbx completions` and `lbx man`: shell completions and man pages, generated from the
//! command line's own definitions so they cannot drift from it.

use std::{io, path::PathBuf};

use anyhow::{Context as _, Result};
use clap::Subcommand;
use clap_complete::Shell;

#[derive(Subcommand)]
pub enum DocsCmd {
    /// Print a completion script for SHELL on stdout, e.g.
    /// `lbx completions bash > /etc/bash_completion.d/lbx`.
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the man page lbx(1) on stdout (`lbx man | man -l -`), or with --out-dir write
    /// one page per command there (lbx.1, lbx-run.1, lbx-vip-add.1, ...).
    Man {
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

/// Writes what `cmd` asks for, of `command`: the whole command line's definition.
pub fn run(cmd: DocsCmd, mut command: clap::Command) -> Result<()> {
    match cmd {
        DocsCmd::Completions { shell } => {
            clap_complete::generate(shell, &mut command, "lbx", &mut io::stdout());
        }
        DocsCmd::Man { out_dir: None } => clap_mangen::Man::new(command)
            .render(&mut io::stdout())
            .context("writing the man page")?,
        DocsCmd::Man { out_dir: Some(dir) } => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(command, &dir)
                .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
        }
    }
    Ok(())
}
