//! `mad-search worker --job SPEC --out RESULT`: one job in a process of its
//! own, as the executors start it (see [`crate::exec::worker`] for the
//! signals and exit codes).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::exec::worker::EXIT_NO_RESULT;

/// Arguments of `worker`.
#[derive(Debug, Args)]
#[command(after_help = "\
Signals: SIGTERM or SIGINT: checkpoint and stop; SIGUSR1: checkpoint and go on.
Exit codes: 0 a result was written (finished or failed); 3 stopped after a
checkpoint (signal or the spec's own time budget; result written); 1 no
result (a bad spec, an unwritable result: see stderr); 2 a command-line error.")]
pub struct WorkerArgs {
    /// The job's spec (JSON, as the daemon writes it under `<state>/jobs/`).
    #[arg(long, value_name = "SPEC")]
    pub job: PathBuf,
    /// Where the result goes (written atomically: the file appears whole).
    #[arg(long, value_name = "RESULT")]
    pub out: PathBuf,
}

/// Runs `worker`.
///
/// # Errors
/// Never: a worker says what went wrong on stderr and by its exit code.
pub fn run(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    match crate::exec::worker::run(&args.job, &args.out) {
        Ok(code) => Ok(ExitCode::from(code)),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(EXIT_NO_RESULT))
        }
    }
}
