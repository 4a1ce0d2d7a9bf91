//! The command line: one file per subcommand, each a clap `Args` struct and a
//! `run` function. This is the edge where library errors get context
//! (`anyhow`) and are printed once.

#[cfg(feature = "models")]
mod eval;
mod space;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Architecture search for hybrid sequence models, screened on the MAD synthetic tasks.
#[derive(Debug, Parser)]
#[command(name = "mad-search", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a search-space file, sample genomes from it, or list the paper's baselines.
    #[command(subcommand)]
    Space(space::SpaceCommand),
    /// Train and score one architecture on a stage (screen or mad), without a daemon.
    #[cfg(feature = "models")]
    Eval(eval::EvalArgs),
}

/// Runs a parsed command line.
///
/// # Errors
/// Any failure, with context for the user.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let result = match cli.command {
        Command::Space(cmd) => space::run(cmd),
        #[cfg(feature = "models")]
        Command::Eval(args) => eval::run(args),
    };
    match result {
        // A closed pipe (`mad-search space sample | head`) is not an error.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(ExitCode::SUCCESS)
        }
        other => other,
    }
}

/// Writes to stdout, turning a write error into an error value (not a panic).
pub(crate) fn out(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}
