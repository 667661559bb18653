//! `coracle completion SHELL` and the hidden `coracle generate-man DIR`: both are derived
//! from the clap definition of the command line, so they never drift from it.

use std::path::PathBuf;

use clap::{Args, CommandFactory, ValueEnum};

use super::{Cli, CmdResult, Failure};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Args, Debug)]
pub struct CompletionArgs {
    /// The shell to write the completion script for
    #[arg(value_enum)]
    shell: Shell,
}

#[derive(Args, Debug)]
pub struct GenerateManArgs {
    /// Directory to write the pages into (created if missing)
    dir: PathBuf,
}

pub fn completion(a: CompletionArgs) -> CmdResult {
    let shell = match a.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut cmd = visible_command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "coracle", &mut out);
    std::io::Write::write_all(&mut std::io::stdout().lock(), &out)?;
    Ok(0)
}

/// The command line without its hidden commands, which clap_complete would offer too.
fn visible_command() -> clap::Command {
    let full = Cli::command();
    let mut cmd = clap::Command::new("coracle")
        .version(super::version::VERSION)
        .propagate_version(true)
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(about) = full.get_about() {
        cmd = cmd.about(about.clone());
    }
    cmd
}

/// Writes `coracle.1` and one `coracle-COMMAND.1` per visible command; prints their paths.
pub fn generate_man(a: GenerateManArgs) -> CmdResult {
    let fail = |what: &str, e: std::io::Error| Failure { code: super::EXIT_ERROR, message: format!("{what}: {e}") };
    std::fs::create_dir_all(&a.dir).map_err(|e| fail(&format!("create {}", a.dir.display()), e))?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = vec![cmd.clone()];
    pages.extend(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    for page in pages {
        let path = clap_mangen::Man::new(page)
            .source(format!("coracle {}", super::version::VERSION))
            .manual("coracle manual")
            .generate_to(&a.dir)
            .map_err(|e| fail(&format!("write a page into {}", a.dir.display()), e))?;
        println!("{}", path.display());
    }
    Ok(0)
}
