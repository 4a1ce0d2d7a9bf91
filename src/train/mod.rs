//! Training: the loss and metrics on scored positions, one training run of a
//! genome on a task setting ([`run::run`]), and the checkpoints that let a
//! killed run resume with identical results.

pub mod checkpoint;
pub(crate) mod feed;
pub mod loss;
pub mod metrics;
pub mod run;

pub use checkpoint::{Checkpoint, CheckpointError};
pub use loss::{IGNORE, masked_accuracy, masked_cross_entropy};
pub use metrics::{Accuracy, Metric, Scores};
pub use run::{EpochReport, Outcome, RunConfig, RunControl, RunResult, TrainError, run};
