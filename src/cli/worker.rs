//! `mad-search worker --job SPEC --out RESULT`: one job in a process of its
//! own, as the executors start it (see [`crate::exec::worker`] for the
//! signals and exit codes).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

/// Arguments of `worker`.
#[derive(Debug, Args)]
#[command(after_help = "\
Signals: SIGTERM or SIGINT: checkpoint and stop; SIGUSR1: checkpoint and go on.
Exit codes: 0 a result was written (finished or failed); 3 stopped after a
checkpoint (signal or the spec's own time budget; result written); 4 no
result: the job cannot run here (its corpus, space or device: see stderr);
1 no result: a bad spec or an unwritable result (see stderr); 2 a
command-line error.
To try a failed attempt again by hand (<state>/jobs/failed/<job>-a<n>/), give
it a runs directory of its own with --runs, so that it does not write into
the running search's checkpoints.")]
pub struct WorkerArgs {
    /// The job's spec (JSON, as the daemon writes it under `<state>/jobs/`).
    #[arg(long, value_name = "SPEC")]
    pub job: PathBuf,
    /// Where the result goes (written atomically: the file appears whole).
    #[arg(long, value_name = "RESULT")]
    pub out: PathBuf,
    /// Keep checkpoints and finished runs here instead of the spec's runs
    /// directory (the search's own).
    #[arg(long, value_name = "DIR")]
    pub runs: Option<PathBuf>,
}

/// Runs `worker`.
///
/// # Errors
/// Never: a worker says what went wrong on stderr and by its exit code.
pub fn run(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    match crate::exec::worker::run(&args.job, &args.out, args.runs.as_deref()) {
        Ok(code) => Ok(ExitCode::from(code)),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(e.exit_code()))
        }
    }
}
