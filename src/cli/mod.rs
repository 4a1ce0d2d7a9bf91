//! The command line: one file per subcommand, each a clap `Args` struct and a
//! `run` function. This is the edge where library errors get context
//! (`anyhow`) and are printed once.

#[cfg(feature = "models")]
mod calibrate;
#[cfg(feature = "models")]
mod dashboard;
#[cfg(feature = "models")]
mod eval;
#[cfg(feature = "models")]
mod export;
#[cfg(feature = "models")]
mod kernel_check;
#[cfg(feature = "models")]
mod show;
mod space;
#[cfg(feature = "models")]
mod start;
#[cfg(feature = "models")]
mod state;
#[cfg(feature = "models")]
mod status;
#[cfg(feature = "models")]
mod stop;
#[cfg(feature = "models")]
mod worker;

#[cfg(feature = "models")]
pub use status::render as render_status;

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
    /// Check that a preset ranks architectures the way MAD does: the paper's baselines under several seeds, and its findings as pass/fail.
    #[cfg(feature = "models")]
    Calibrate(calibrate::CalibrateArgs),
    /// Start (or resume) a search: a daemon in the background, or attached with --foreground.
    #[cfg(feature = "models")]
    Start(start::StartArgs),
    /// The search at a glance: daemon, jobs, throughput, budget, leaderboard, Pareto front.
    #[cfg(feature = "models")]
    Status(status::StatusArgs),
    /// Stop the daemon: running jobs checkpoint and go back to the queue.
    #[cfg(feature = "models")]
    Stop(stop::StopArgs),
    /// One candidate in full: genome, lineage, every evaluation.
    #[cfg(feature = "models")]
    Show(show::ShowArgs),
    /// Write the best candidates as genome files, layer strings or model cards.
    #[cfg(feature = "models")]
    Export(export::ExportArgs),
    /// The search in a browser: funnel, leaderboard, Pareto fronts, scaling fits, proxy validity.
    #[cfg(feature = "models")]
    Dashboard(dashboard::DashboardArgs),
    /// Check the GPU kernels against the same functions from Burn ops on a device (cuda or wgpu).
    #[cfg(feature = "models")]
    KernelCheck(kernel_check::KernelCheckArgs),
    /// Run one job from a spec file and write its result (what the daemon's
    /// executors start; not for everyday use).
    #[cfg(feature = "models")]
    Worker(worker::WorkerArgs),
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
        #[cfg(feature = "models")]
        Command::Calibrate(args) => calibrate::run(args),
        #[cfg(feature = "models")]
        Command::Start(args) => start::run(args),
        #[cfg(feature = "models")]
        Command::Status(args) => status::run(args),
        #[cfg(feature = "models")]
        Command::Stop(args) => stop::run(args),
        #[cfg(feature = "models")]
        Command::Show(args) => show::run(args),
        #[cfg(feature = "models")]
        Command::Export(args) => export::run(args),
        #[cfg(feature = "models")]
        Command::Dashboard(args) => dashboard::run(args),
        #[cfg(feature = "models")]
        Command::KernelCheck(args) => kernel_check::run(args),
        #[cfg(feature = "models")]
        Command::Worker(args) => worker::run(args),
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

/// `err` and its causes as one line, `: `-separated, each cause said once:
/// one whose text the line already holds (an error that prints its source
/// in its own message, as `thiserror`'s `{source}` does) is left out.
pub fn error_text(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::error_text;

    #[derive(Debug, thiserror::Error)]
    #[error("writing /x: {source}")]
    struct Wrapping {
        source: std::io::Error,
    }

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = anyhow::Error::new(Wrapping { source: io }).context("exporting 3 candidates");
        assert_eq!(
            format!("{err:#}"),
            "exporting 3 candidates: writing /x: no such file: no such file"
        );
        assert_eq!(
            error_text(&err),
            "exporting 3 candidates: writing /x: no such file"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_text(&plain), "outer: inner");
    }
}
