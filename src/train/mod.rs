//! Training: the loss and metrics on scored positions, and one training run
//! of a genome on a task setting ([`run::run`]). Checkpoint / resume is still
//! to come (tasks issue).

pub mod loss;
pub mod metrics;
pub mod run;

pub use loss::{IGNORE, masked_accuracy, masked_cross_entropy};
pub use metrics::{Accuracy, Scores};
pub use run::{EpochReport, Outcome, RunConfig, RunResult, run};
