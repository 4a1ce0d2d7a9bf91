//! The difficulty grid of mad-protocol §2.1: each task's baseline plus every
//! one-factor-at-a-time variation, 66 settings in all.

use super::{TaskKind, TaskSetting};

/// A named change to a baseline.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Variation {
    /// The baseline itself.
    Baseline,
    /// Another vocabulary size.
    Vocab(usize),
    /// Another sequence length.
    SeqLen(usize),
    /// Fewer training examples.
    Train(usize),
    /// Another noise fraction (noisy recall).
    Noise(f64),
    /// More tokens to copy (selective copying).
    Copy(usize),
}

const TRAIN: [usize; 4] = [6_400, 3_200, 1_600, 800];

/// The variations of `task`, baseline first.
pub fn variations(task: TaskKind) -> Vec<Variation> {
    use Variation::*;
    let mut v = vec![Baseline];
    match task {
        TaskKind::InContextRecall | TaskKind::FuzzyInContextRecall => {
            v.extend([32, 64, 128].map(Vocab));
            v.extend([256, 512, 1024].map(SeqLen));
            v.extend(TRAIN.map(Train));
        }
        TaskKind::NoisyInContextRecall => {
            // Key and value vocabulary 32, 64, 128, plus the 16 noise tokens.
            v.extend([48, 80, 144].map(Vocab));
            v.extend([256, 512, 1024].map(SeqLen));
            v.extend(TRAIN.map(Train));
            v.extend([0.4, 0.6, 0.8].map(Noise));
        }
        TaskKind::SelectiveCopying => {
            v.extend([32, 64, 128].map(Vocab));
            v.extend([512, 1024].map(SeqLen));
            v.extend(TRAIN.map(Train));
            v.extend([32, 64, 96].map(Copy));
        }
        TaskKind::Compression => {
            v.extend([32, 64, 128].map(Vocab));
            v.extend([64, 128, 256].map(SeqLen));
            v.extend(TRAIN.map(Train));
        }
        TaskKind::Memorization => v.extend([512, 1024, 2048, 4096, 8192].map(Vocab)),
    }
    v
}

impl TaskSetting {
    /// The baseline with one variation applied.
    pub fn varied(task: TaskKind, variation: Variation) -> TaskSetting {
        let mut s = TaskSetting::baseline(task);
        match variation {
            Variation::Baseline => {}
            Variation::Vocab(v) => s.vocab = v,
            Variation::SeqLen(l) => s.seq_len = l,
            Variation::Train(n) => s.num_train = n,
            Variation::Noise(f) => s.frac_noise = f,
            Variation::Copy(n) => s.tokens_to_copy = n,
        }
        s
    }

    /// Every setting of `task` in the protocol's grid, baseline first.
    pub fn grid(task: TaskKind) -> Vec<TaskSetting> {
        variations(task)
            .into_iter()
            .map(|v| TaskSetting::varied(task, v))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_has_66_valid_settings() {
        let counts: Vec<usize> = TaskKind::ALL
            .iter()
            .map(|&t| TaskSetting::grid(t).len())
            .collect();
        assert_eq!(counts, vec![11, 11, 14, 13, 11, 6]);
        assert_eq!(counts.iter().sum::<usize>(), 66);
        for &t in TaskKind::ALL {
            let grid = TaskSetting::grid(t);
            assert_eq!(grid[0], TaskSetting::baseline(t));
            for s in &grid {
                s.validate()
                    .unwrap_or_else(|e| panic!("{}: {e}", s.reference_dir_name()));
            }
            let mut names: Vec<_> = grid.iter().map(|s| s.reference_dir_name()).collect();
            names.dedup();
            assert_eq!(names.len(), grid.len(), "{t}: settings are distinct");
        }
    }
}
