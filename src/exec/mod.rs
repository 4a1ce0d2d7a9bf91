//! Executors (design §4): where a leased job runs. `threads` runs it on a
//! worker thread of the daemon; `local` (the default) in a worker process
//! of its own (`mad-search worker`), so that a job that runs out of memory,
//! aborts or hangs takes only its own attempt with it; `slurm` runs that
//! worker process as a Slurm batch job.
//!
//! The daemon's scheduler does not know which: each worker slot is a
//! thread that takes a leased job, runs it through its executor and reports
//! the [`Outcome`].

pub mod hooks;
pub mod job;
pub mod local;
pub mod slurm;
pub mod spec;
pub mod worker;

use std::fmt;
use std::str::FromStr;

pub use job::{Assignment, Evaluation, Outcome, execute, panic_text, runs_dir};

/// Where jobs run.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Executor {
    /// A worker process per job, on this machine.
    #[default]
    Local,
    /// The daemon's own worker threads (one process: a job that aborts or
    /// runs out of memory takes the daemon down).
    Threads,
    /// A worker process per job, as a Slurm batch job.
    Slurm(Box<slurm::SlurmOptions>),
}

impl FromStr for Executor {
    type Err = String;

    fn from_str(s: &str) -> Result<Executor, String> {
        match s {
            "local" => Ok(Executor::Local),
            "threads" => Ok(Executor::Threads),
            "slurm" => Ok(Executor::Slurm(Box::default())),
            other => Err(format!(
                "unknown executor `{other}`; expected local (a worker process per job), \
                 threads (jobs on the daemon's threads) or slurm (a Slurm job per job)"
            )),
        }
    }
}

impl fmt::Display for Executor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Executor::Local => "local",
            Executor::Threads => "threads",
            Executor::Slurm(_) => "slurm",
        })
    }
}

#[cfg(test)]
mod tests;
