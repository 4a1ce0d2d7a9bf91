//! How a Slurm job that has ended counts: by its result file where it
//! wrote one, else by Slurm's state and the batch script's exit code.

use std::path::Path;

use super::cli::{Ended, Queued, SlurmState};
use crate::exec::job::Outcome;
use crate::exec::local::log_tail;
use crate::exec::spec::JobResult;

/// How a Slurm job that has ended counts: its result where it wrote one
/// (a stop nobody here asked for is told by Slurm's state), else by
/// Slurm's state and the batch script's exit code.
pub fn classify(
    q: &Queued,
    ended: Option<&Ended>,
    result: Option<&JobResult>,
    stopped_by_us: bool,
    dir: &Path,
) -> Outcome {
    let state = ended.map_or(&q.state, |e| &e.state);
    if let Some(r) = result {
        if r.outcome != Outcome::Interrupted || stopped_by_us {
            return r.outcome.clone();
        }
        // Stopped (it checkpointed), but not by mad-search: Slurm says why.
        return match state {
            SlurmState::Cancelled => Outcome::Failed {
                reason: format!(
                    "Slurm job {} was cancelled (not by mad-search; it checkpointed)",
                    q.id
                ),
                retry: true,
            },
            SlurmState::Timeout => Outcome::OutOfTime,
            SlurmState::NodeFail => Outcome::Failed {
                reason: format!("Slurm job {}: its node failed (it checkpointed)", q.id),
                retry: true,
            },
            // Preempted, or a SIGTERM from elsewhere: nothing against the job.
            _ => Outcome::Interrupted,
        };
    }
    if stopped_by_us {
        return Outcome::Interrupted;
    }
    let code = ended.and_then(|e| e.code);
    let signal = ended.and_then(|e| e.signal);
    let how = match (code, signal) {
        (_, Some(s)) => format!("killed by signal {s}"),
        (Some(c), None) => format!("exit code {c}"),
        (None, None) => "exit code unknown".to_string(),
    };
    let tail = log_tail(dir);
    let failed = |reason: String| Outcome::Failed {
        reason,
        retry: true,
    };
    match state {
        SlurmState::Timeout => Outcome::OutOfTime,
        SlurmState::Preempted => Outcome::Interrupted,
        SlurmState::Cancelled => failed(format!(
            "Slurm job {} was cancelled (not by mad-search){tail}",
            q.id
        )),
        SlurmState::OutOfMemory => failed(format!(
            "Slurm job {} ran out of memory (OUT_OF_MEMORY){tail}",
            q.id
        )),
        SlurmState::NodeFail => failed(format!("Slurm job {}: its node failed{tail}", q.id)),
        _ if code == Some(i32::from(crate::exec::worker::EXIT_SETUP)) => Outcome::Unrunnable {
            reason: format!(
                "the worker of Slurm job {} cannot set up on its node{tail}",
                q.id
            ),
        },
        other => failed(format!(
            "Slurm job {} ended {other:?} ({how}, reason {}) without a result{tail}",
            q.id,
            ended.map_or(q.reason.as_str(), |e| e.reason.as_str())
        )),
    }
}
