//! Accuracy over scored positions, accumulated over a whole split: micro
//! (hits / scored) and macro (per-class recall averaged over the classes that
//! occur in the targets or the predictions; the reference's torchmetrics
//! default, mad-protocol §2.4 and §8).

use serde::{Deserialize, Serialize};

use super::IGNORE;
pub use crate::space::Metric;

/// Running confusion counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accuracy {
    hits: Vec<u64>,
    support: Vec<u64>,
    predicted: Vec<u64>,
}

/// Both accuracies of a split.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Hits over scored positions.
    pub micro: f64,
    /// Mean per-class recall over classes seen in targets or predictions.
    pub macro_: f64,
    /// Scored positions.
    pub scored: u64,
}

impl Scores {
    /// The accuracy `metric` reads.
    pub fn of(&self, metric: Metric) -> f64 {
        match metric {
            Metric::Macro => self.macro_,
            Metric::Micro => self.micro,
        }
    }
}

impl Accuracy {
    /// Empty counts for `classes` classes.
    pub fn new(classes: usize) -> Accuracy {
        Accuracy {
            hits: vec![0; classes],
            support: vec![0; classes],
            predicted: vec![0; classes],
        }
    }

    /// Adds predictions against targets; targets equal to [`IGNORE`] are skipped.
    ///
    /// # Panics
    /// If the slices differ in length, or a class is out of range.
    pub fn update(&mut self, predictions: &[i64], targets: &[i64]) {
        assert_eq!(
            predictions.len(),
            targets.len(),
            "one prediction per target"
        );
        for (&p, &t) in predictions.iter().zip(targets) {
            if t == IGNORE {
                continue;
            }
            let (p, t) = (p as usize, t as usize);
            self.support[t] += 1;
            self.predicted[p] += 1;
            if p == t {
                self.hits[t] += 1;
            }
        }
    }

    /// The accuracies so far (0 when nothing was scored).
    pub fn scores(&self) -> Scores {
        let scored: u64 = self.support.iter().sum();
        let hits: u64 = self.hits.iter().sum();
        let (mut sum, mut classes) = (0.0, 0u64);
        for c in 0..self.support.len() {
            if self.support[c] > 0 || self.predicted[c] > 0 {
                classes += 1;
                if self.support[c] > 0 {
                    sum += self.hits[c] as f64 / self.support[c] as f64;
                }
            }
        }
        Scores {
            micro: if scored > 0 {
                hits as f64 / scored as f64
            } else {
                0.0
            },
            macro_: if classes > 0 {
                sum / classes as f64
            } else {
                0.0
            },
            scored,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_and_macro_differ_on_imbalanced_classes() {
        let mut a = Accuracy::new(4);
        // Class 0: 3 of 3 right; class 1: 0 of 1 right (predicted 2).
        a.update(&[0, 0, 0, 2, 3], &[0, 0, 0, 1, IGNORE]);
        let s = a.scores();
        assert_eq!(s.scored, 4);
        assert!((s.micro - 0.75).abs() < 1e-12);
        // Classes present: 0 (recall 1), 1 (recall 0), 2 (predicted only, recall 0).
        assert!((s.macro_ - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(Accuracy::new(3).scores(), Scores::default());
    }
}
