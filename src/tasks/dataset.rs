//! Data sets: a setting's train, test and validation splits drawn in that
//! order from one stream seeded by (seed, setting), stored row-major.

use super::{Instance, TaskKind, TaskSetting};

/// `n` sequences of length `len`, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    /// Token ids, `n × len`.
    pub inputs: Vec<i64>,
    /// Targets, `n × len`, `IGNORE` where unscored.
    pub targets: Vec<i64>,
    /// Number of sequences.
    pub n: usize,
    /// Sequence length.
    pub len: usize,
}

impl Dataset {
    fn with_capacity(n: usize, len: usize) -> Dataset {
        Dataset {
            inputs: Vec::with_capacity(n * len),
            targets: Vec::with_capacity(n * len),
            n: 0,
            len,
        }
    }

    fn push(&mut self, i: Instance) {
        assert_eq!(i.inputs.len(), self.len, "instance length");
        assert_eq!(i.targets.len(), self.len, "target length");
        self.inputs.extend(i.inputs);
        self.targets.extend(i.targets);
        self.n += 1;
    }

    /// Row `i` as `(inputs, targets)`.
    pub fn row(&self, i: usize) -> (&[i64], &[i64]) {
        let r = i * self.len..(i + 1) * self.len;
        (&self.inputs[r.clone()], &self.targets[r])
    }
}

/// The three splits of one setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Splits {
    /// Training data (recall tasks: full next-token targets).
    pub train: Dataset,
    /// Test data (recall tasks: only the task-relevant positions scored).
    pub test: Dataset,
    /// Validation data, drawn like the test data after it.
    pub valid: Dataset,
}

impl TaskSetting {
    /// Generates the splits, sequentially from one stream.
    ///
    /// # Errors
    /// A message from [`TaskSetting::validate`].
    pub fn generate(&self) -> Result<Splits, String> {
        self.validate()?;
        let mut rng = crate::seed::rng(self.seed, &["task-data", &self.reference_dir_name()]);
        let map = (self.task == TaskKind::Memorization).then(|| super::memorization::key_map(self));
        let len = self.model_len();
        let mut draw = |n: usize, training: bool| {
            let mut d = Dataset::with_capacity(n, len);
            for _ in 0..n {
                d.push(match self.task {
                    TaskKind::InContextRecall | TaskKind::NoisyInContextRecall => {
                        super::recall::instance(self, &mut rng, training)
                    }
                    TaskKind::FuzzyInContextRecall => {
                        super::fuzzy::instance(self, &mut rng, training)
                    }
                    TaskKind::SelectiveCopying => super::copying::instance(self, &mut rng),
                    TaskKind::Compression => super::compression::instance(self, &mut rng),
                    TaskKind::Memorization => super::memorization::instance(
                        self,
                        &mut rng,
                        map.as_deref().expect("built for memorization"),
                    ),
                });
            }
            d
        };
        let train = draw(self.num_train, true);
        let test = draw(self.num_test, false);
        let valid = draw(self.num_valid, false);
        Ok(Splits { train, test, valid })
    }
}
