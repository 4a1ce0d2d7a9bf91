//! The six MAD synthetic tasks (mad-protocol §1): their settings, their
//! instance generators, and data sets with train / test / validation splits.
//! Free of Burn: the training loop turns [`Dataset`]s into tensors.
//!
//! Conventions (mad-protocol §1.0): tokens are `0..vocab`, special tokens at
//! the top; unscored positions carry target [`IGNORE`]; every setting draws
//! its splits sequentially from one seeded stream, train first, then test,
//! then validation (mad-search's addition, used for early stopping).

mod compression;
mod copying;
mod dataset;
mod fuzzy;
mod grid;
mod memorization;
mod npy;
mod recall;
mod setting;

pub use dataset::{Dataset, Splits};
pub use grid::{Variation, variations};
pub use npy::{NpyError, read_i64, write_i64};
pub use setting::TaskSetting;

/// The target of a position that is not scored (the reference's −100).
pub const IGNORE: i64 = -100;

/// One generated sequence: model inputs and per-position targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// Token ids fed to the model.
    pub inputs: Vec<i64>,
    /// Target per input position, [`IGNORE`] where not scored.
    pub targets: Vec<i64>,
}

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One MAD task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    /// Multi-query associative recall (CR).
    InContextRecall,
    /// Recall with keys and values as multi-token motifs (FR).
    FuzzyInContextRecall,
    /// Recall with noise tokens interleaved (NR).
    NoisyInContextRecall,
    /// Copy the content tokens scattered among blanks (SC).
    SelectiveCopying,
    /// Reconstruct the sequence from the last position's state (C).
    Compression,
    /// Recall a fixed key→value map from the weights (M).
    Memorization,
}

impl TaskKind {
    /// The six tasks, in protocol order.
    pub const ALL: &'static [TaskKind] = &[
        TaskKind::InContextRecall,
        TaskKind::FuzzyInContextRecall,
        TaskKind::NoisyInContextRecall,
        TaskKind::SelectiveCopying,
        TaskKind::Compression,
        TaskKind::Memorization,
    ];

    /// The name used in files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::InContextRecall => "in-context-recall",
            TaskKind::FuzzyInContextRecall => "fuzzy-in-context-recall",
            TaskKind::NoisyInContextRecall => "noisy-in-context-recall",
            TaskKind::SelectiveCopying => "selective-copying",
            TaskKind::Compression => "compression",
            TaskKind::Memorization => "memorization",
        }
    }

    /// The reference's shorthand (CR, FR, NR, SC, C, M).
    pub fn short(self) -> &'static str {
        match self {
            TaskKind::InContextRecall => "CR",
            TaskKind::FuzzyInContextRecall => "FR",
            TaskKind::NoisyInContextRecall => "NR",
            TaskKind::SelectiveCopying => "SC",
            TaskKind::Compression => "C",
            TaskKind::Memorization => "M",
        }
    }
}

impl FromStr for TaskKind {
    type Err = String;

    fn from_str(s: &str) -> Result<TaskKind, String> {
        TaskKind::ALL
            .iter()
            .copied()
            .find(|t| t.name() == s || t.short() == s)
            .ok_or_else(|| {
                let names: Vec<_> = TaskKind::ALL.iter().map(|t| t.name()).collect();
                format!("unknown task `{s}`; expected one of: {}", names.join(", "))
            })
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
#[cfg(test)]
mod tests;
