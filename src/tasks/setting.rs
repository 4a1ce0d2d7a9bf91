//! One setting of one task: the knobs of mad-protocol §1, the reference's
//! directory name for it, and its instance generator.

use serde::{Deserialize, Serialize};

use super::TaskKind;

/// Everything that determines a task's data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSetting {
    /// Which task.
    pub task: TaskKind,
    /// Vocabulary size, special and noise tokens included.
    pub vocab: usize,
    /// Sequence length before any shift (mad-protocol §1.0).
    pub seq_len: usize,
    /// Training examples.
    pub num_train: usize,
    /// Test examples.
    pub num_test: usize,
    /// Validation examples (mad-search's addition; 0 for none).
    pub num_valid: usize,
    /// Fraction of noise slots (noisy recall).
    pub frac_noise: f64,
    /// Size of the noise vocabulary (noisy recall).
    pub noise_vocab: usize,
    /// Largest key motif (fuzzy recall).
    pub k_motif: usize,
    /// Largest value motif (fuzzy recall).
    pub v_motif: usize,
    /// Score every repeated key (true in MAD) or only the final probe.
    pub multi_query: bool,
    /// Content tokens to copy (selective copying).
    pub tokens_to_copy: usize,
    /// Seed of the setting's stream (12345 in MAD).
    pub seed: u64,
}

impl TaskSetting {
    /// The protocol's baseline setting of `task` (mad-protocol §2.1).
    pub fn baseline(task: TaskKind) -> TaskSetting {
        let mut s = TaskSetting {
            task,
            vocab: 16,
            seq_len: 128,
            num_train: 12_800,
            num_test: 1_280,
            num_valid: 1_280,
            frac_noise: 0.0,
            noise_vocab: 0,
            k_motif: 1,
            v_motif: 1,
            multi_query: true,
            tokens_to_copy: 0,
            seed: 12345,
        };
        match task {
            TaskKind::InContextRecall => {}
            TaskKind::FuzzyInContextRecall => {
                s.k_motif = 3;
                s.v_motif = 3;
            }
            TaskKind::NoisyInContextRecall => {
                s.vocab = 32;
                s.noise_vocab = 16;
                s.frac_noise = 0.2;
            }
            TaskKind::SelectiveCopying => {
                s.seq_len = 256;
                s.tokens_to_copy = 16;
            }
            TaskKind::Compression => s.seq_len = 32,
            TaskKind::Memorization => {
                s.vocab = 256;
                s.seq_len = 32;
                s.num_train = 256;
            }
        }
        s
    }

    /// The reference's data directory name, e.g.
    /// `t-CR_vs-16_sl-128_ntr-12800_nte-1280_km-1_vm-1_mq-1_fn-0#0_nvs-0_ntc-0_s-12345`.
    pub fn reference_dir_name(&self) -> String {
        let noise = format!("{:?}", self.frac_noise).replace('.', "#");
        format!(
            "t-{}_vs-{}_sl-{}_ntr-{}_nte-{}_km-{}_vm-{}_mq-{}_fn-{}_nvs-{}_ntc-{}_s-{}",
            self.task.short(),
            self.vocab,
            self.seq_len,
            self.num_train,
            self.num_test,
            self.k_motif,
            self.v_motif,
            u8::from(self.multi_query),
            noise,
            self.noise_vocab,
            self.tokens_to_copy,
            self.seed
        )
    }

    /// Length of the sequences the model sees (after any shift).
    pub fn model_len(&self) -> usize {
        match self.task {
            TaskKind::InContextRecall | TaskKind::NoisyInContextRecall => self.seq_len - 1,
            _ => self.seq_len,
        }
    }

    /// Checks the knobs against the task's constraints.
    ///
    /// # Errors
    /// A message naming the knob and what was expected.
    pub fn validate(&self) -> Result<(), String> {
        let t = self.task.name();
        let need = |ok: bool, msg: String| {
            if ok {
                Ok(())
            } else {
                Err(format!("{t}: {msg}"))
            }
        };
        need(
            self.seq_len >= 4,
            format!("seq_len {} is below 4", self.seq_len),
        )?;
        match self.task {
            TaskKind::InContextRecall | TaskKind::NoisyInContextRecall => {
                need(
                    self.seq_len.is_multiple_of(2),
                    format!("seq_len {} must be even", self.seq_len),
                )?;
                need(
                    self.noise_vocab < self.vocab,
                    "noise_vocab must leave room for keys and values".into(),
                )?;
                let ns = self.vocab - self.noise_vocab;
                need(
                    ns >= 2,
                    format!("vocab {} leaves fewer than 2 key/value tokens", self.vocab),
                )?;
                need(
                    self.frac_noise == 0.0 || self.noise_vocab > 0,
                    "frac_noise > 0 needs a noise vocabulary".into(),
                )?;
                need(
                    (0.0..1.0).contains(&self.frac_noise),
                    format!("frac_noise {} not in [0, 1)", self.frac_noise),
                )
            }
            TaskKind::FuzzyInContextRecall => {
                let ns = self.vocab.saturating_sub(1);
                need(
                    ns / 2 >= self.k_motif
                        && ns - ns / 2 >= self.v_motif
                        && self.k_motif >= 1
                        && self.v_motif >= 1,
                    format!(
                        "vocab {} too small for motifs of {} and {}",
                        self.vocab, self.k_motif, self.v_motif
                    ),
                )?;
                need(
                    self.seq_len > 4 * (self.k_motif + self.v_motif),
                    format!(
                        "seq_len {} too short for motifs of {}+{}",
                        self.seq_len, self.k_motif, self.v_motif
                    ),
                )
            }
            TaskKind::SelectiveCopying => need(
                self.seq_len > 2 * self.tokens_to_copy + 1
                    && self.tokens_to_copy >= 1
                    && self.vocab >= 3,
                format!(
                    "needs seq_len > 2·tokens_to_copy + 1 and vocab ≥ 3 (seq_len {}, n {}, vocab {})",
                    self.seq_len, self.tokens_to_copy, self.vocab
                ),
            ),
            TaskKind::Compression => need(self.vocab >= 2, format!("vocab {} below 2", self.vocab)),
            TaskKind::Memorization => need(
                self.vocab >= 4 && self.seq_len.is_multiple_of(2),
                format!(
                    "needs vocab ≥ 4 and an even seq_len (vocab {}, seq_len {})",
                    self.vocab, self.seq_len
                ),
            ),
        }
    }
}
