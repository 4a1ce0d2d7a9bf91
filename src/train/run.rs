//! One training run: a genome on one task setting with one optimiser
//! setting (mad-protocol §2.3 with mad-search's decisions of §8). AdamW with
//! weight decay on all parameters, cosine schedule stepped per epoch down to
//! `min_lr`, batches reshuffled every epoch, the validation split checked
//! after every epoch for early stopping and for choosing the checkpoint whose
//! test accuracy is reported. A NaN or infinite loss ends the run as diverged.

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::backend::AutodiffBackend;
use rand::RngExt;
use serde::{Deserialize, Serialize};

use super::loss::masked_cross_entropy;
use super::metrics::{Accuracy, Scores};
use crate::genome::{ArchSpec, Backbone, Context, GenomeError};
use crate::layers::Model;
use crate::tasks::{Dataset, Splits, TaskKind, TaskSetting};

/// Optimiser and schedule of one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW weight decay (all parameters).
    pub weight_decay: f64,
    /// AdamW betas.
    pub betas: [f64; 2],
    /// AdamW ε.
    pub epsilon: f64,
    /// Examples per batch.
    pub batch_size: usize,
    /// Most epochs.
    pub max_epochs: usize,
    /// Cap on optimiser steps.
    pub max_steps: Option<usize>,
    /// Floor of the cosine schedule.
    pub min_lr: f64,
    /// Stop once validation accuracy (macro) reaches this.
    pub early_stop: f64,
    /// Seed of initial weights and batch order.
    pub seed: u64,
}

impl Default for RunConfig {
    fn default() -> RunConfig {
        RunConfig {
            lr: 5e-4,
            weight_decay: 0.0,
            betas: [0.9, 0.98],
            epsilon: 1e-8,
            batch_size: 128,
            max_epochs: 200,
            max_steps: None,
            min_lr: 1e-6,
            early_stop: 0.999,
            seed: 12345,
        }
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Outcome {
    /// All epochs (or the step cap) ran.
    Completed,
    /// Validation accuracy reached the threshold.
    EarlyStopped,
    /// The loss became NaN or infinite.
    Diverged {
        /// Step at which it happened.
        step: usize,
    },
}

/// What a run produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// How it ended.
    pub outcome: Outcome,
    /// Epochs run.
    pub epochs: usize,
    /// Optimiser steps taken.
    pub steps: usize,
    /// Epoch whose weights were evaluated on the test split (best validation).
    pub best_epoch: usize,
    /// Validation accuracy of those weights.
    pub valid: Scores,
    /// Test accuracy of those weights.
    pub test: Scores,
    /// Mean training loss of the last epoch.
    pub train_loss: f64,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// Progress reported after every epoch.
#[derive(Clone, Debug)]
pub struct EpochReport {
    /// Epoch just finished (1-based).
    pub epoch: usize,
    /// Of at most.
    pub max_epochs: usize,
    /// Mean training loss of the epoch.
    pub loss: f64,
    /// Validation accuracy after it.
    pub valid: Scores,
}

/// The learning rate of `epoch` (0-based): cosine from `lr` to `min_lr` over
/// `max_epochs`, as PyTorch's `CosineAnnealingLR` stepped once per epoch.
pub fn cosine_lr(cfg: &RunConfig, epoch: usize) -> f64 {
    let t = epoch as f64 / cfg.max_epochs.max(1) as f64;
    cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
}

/// The genome as the task needs it: compression uses the autoencoder.
pub fn spec_for(spec: &ArchSpec, task: TaskKind) -> ArchSpec {
    let mut s = spec.clone();
    s.backbone = if task == TaskKind::Compression {
        Backbone::AutoEncoder
    } else {
        Backbone::LanguageModel
    };
    s
}

/// Rows `idx` of `d` as `(inputs [n, len], targets [n·len])`.
fn batch<B: Backend>(
    d: &Dataset,
    idx: &[usize],
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 1, Int>) {
    let (mut x, mut y) = (
        Vec::with_capacity(idx.len() * d.len),
        Vec::with_capacity(idx.len() * d.len),
    );
    for &i in idx {
        let (xi, yi) = d.row(i);
        x.extend_from_slice(xi);
        y.extend_from_slice(yi);
    }
    (
        Tensor::from_data(TensorData::new(x, [idx.len(), d.len]), device),
        Tensor::from_data(TensorData::new(y, [idx.len() * d.len]), device),
    )
}

/// Accuracy of `model` on `d`.
pub fn evaluate<B: Backend>(
    model: &Model<B>,
    d: &Dataset,
    vocab: usize,
    batch_size: usize,
    device: &B::Device,
) -> Scores {
    let mut acc = Accuracy::new(vocab);
    let all: Vec<usize> = (0..d.n).collect();
    for idx in all.chunks(batch_size.max(1)) {
        let (x, _) = batch::<B>(d, idx, device);
        let n = idx.len() * d.len;
        let pred: Vec<i64> = model
            .forward(x)
            .reshape([n, vocab])
            .argmax(1)
            .reshape([n])
            .into_data()
            .convert::<i64>()
            .to_vec()
            .expect("argmax gives integers");
        acc.update(&pred, &d.targets[idx[0] * d.len..idx[0] * d.len + n]);
    }
    acc.scores()
}

/// Trains `spec` on `splits` of `setting`.
///
/// # Errors
/// The genome's validation error, before any compute.
pub fn run<B: AutodiffBackend>(
    spec: &ArchSpec,
    setting: &TaskSetting,
    splits: &Splits,
    cfg: &RunConfig,
    device: &B::Device,
    report: &mut dyn FnMut(&EpochReport),
) -> Result<RunResult, GenomeError> {
    let start = Instant::now();
    let spec = spec_for(spec, setting.task);
    let ctx = Context {
        vocab: setting.vocab,
        seq_len: setting.model_len(),
    };
    let mut model = Model::<B>::new(
        &spec,
        ctx,
        crate::seed::derive(cfg.seed, &["weights"]),
        device,
    )?;
    let mut optim = AdamWConfig::new()
        .with_beta_1(cfg.betas[0] as f32)
        .with_beta_2(cfg.betas[1] as f32)
        .with_epsilon(cfg.epsilon as f32)
        .with_weight_decay(cfg.weight_decay as f32)
        .init::<B, Model<B>>();
    let vocab = setting.vocab;
    let train = &splits.train;
    let (mut steps, mut epochs, mut train_loss) = (0usize, 0usize, f64::NAN);
    let mut best: Option<(usize, Scores, Model<B::InnerBackend>)> = None;
    let mut outcome = Outcome::Completed;
    'epochs: for epoch in 0..cfg.max_epochs {
        let lr = cosine_lr(cfg, epoch);
        let mut order: Vec<usize> = (0..train.n).collect();
        let mut rng = crate::seed::rng(cfg.seed, &["shuffle", &epoch.to_string()]);
        for i in (1..order.len()).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        let (mut loss_sum, mut batches) = (0.0, 0usize);
        for idx in order.chunks(cfg.batch_size.max(1)) {
            if cfg.max_steps.is_some_and(|m| steps >= m) {
                break;
            }
            let (x, y) = batch::<B>(train, idx, device);
            let n = idx.len() * train.len;
            let logits = model.forward(x).reshape([n, vocab]);
            let loss = masked_cross_entropy(logits, y);
            let value: f64 = loss.clone().into_scalar().elem();
            if !value.is_finite() {
                outcome = Outcome::Diverged { step: steps };
                epochs = epoch + 1;
                break 'epochs;
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
            steps += 1;
            loss_sum += value;
            batches += 1;
        }
        epochs = epoch + 1;
        train_loss = loss_sum / batches.max(1) as f64;
        let inner = model.valid();
        let valid = evaluate(&inner, &splits.valid, vocab, cfg.batch_size, device);
        report(&EpochReport {
            epoch: epochs,
            max_epochs: cfg.max_epochs,
            loss: train_loss,
            valid,
        });
        if best
            .as_ref()
            .is_none_or(|(_, b, _)| valid.macro_ > b.macro_)
        {
            best = Some((epochs, valid, inner));
        }
        if valid.macro_ >= cfg.early_stop {
            outcome = Outcome::EarlyStopped;
            break;
        }
        if cfg.max_steps.is_some_and(|m| steps >= m) {
            break;
        }
    }
    let (best_epoch, valid, weights) = match best {
        Some(b) => b,
        None => (0, Scores::default(), model.valid()),
    };
    let test = evaluate(&weights, &splits.test, vocab, cfg.batch_size, device);
    Ok(RunResult {
        outcome,
        epochs,
        steps,
        best_epoch,
        valid,
        test,
        train_loss,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::CpuAutodiff;

    fn tiny_recall() -> (TaskSetting, Splits) {
        let mut s = TaskSetting::baseline(TaskKind::InContextRecall);
        s.seq_len = 32;
        s.num_train = 1024;
        s.num_test = 256;
        s.num_valid = 256;
        let splits = s.generate().unwrap();
        (s, splits)
    }

    #[test]
    fn cosine_schedule_runs_from_lr_to_the_floor() {
        let cfg = RunConfig {
            lr: 1e-3,
            max_epochs: 10,
            ..RunConfig::default()
        };
        assert_eq!(cosine_lr(&cfg, 0), 1e-3);
        assert!((cosine_lr(&cfg, 5) - (1e-3 + 1e-6) / 2.0).abs() < 1e-12);
        assert!((cosine_lr(&cfg, 10) - 1e-6).abs() < 1e-15);
    }

    #[test]
    fn compression_trains_the_autoencoder() {
        let spec = ArchSpec::from_layers_str("hyena swiglu").unwrap();
        assert_eq!(
            spec_for(&spec, TaskKind::Compression).backbone,
            Backbone::AutoEncoder
        );
        assert_eq!(
            spec_for(&spec, TaskKind::Memorization).backbone,
            Backbone::LanguageModel
        );
    }

    #[test]
    fn a_short_run_learns_recall_and_reports_every_epoch() {
        let (setting, splits) = tiny_recall();
        let mut spec = ArchSpec::from_layers_str("mh-hyena swiglu mh-hyena swiglu").unwrap();
        spec.d_model = 64;
        let cfg = RunConfig {
            lr: 3e-3,
            batch_size: 64,
            max_epochs: 12,
            ..RunConfig::default()
        };
        let mut reports = Vec::new();
        let r = run::<CpuAutodiff>(
            &spec,
            &setting,
            &splits,
            &cfg,
            &Default::default(),
            &mut |e| reports.push(e.clone()),
        )
        .unwrap();
        assert_eq!(reports.len(), r.epochs);
        assert_eq!(r.steps, r.epochs * 16);
        assert!(r.train_loss.is_finite());
        // 8 values: chance is 1/8 (measured: 0.445 after 12 epochs).
        assert!(
            r.test.micro > 0.3,
            "test accuracy {:?} after {} epochs",
            r.test,
            r.epochs
        );
        assert!(r.test.scored > 0);
    }

    #[test]
    fn step_cap_stops_the_run() {
        let (setting, splits) = tiny_recall();
        let mut spec = ArchSpec::from_layers_str("mh-attention swiglu").unwrap();
        spec.d_model = 32;
        let cfg = RunConfig {
            batch_size: 64,
            max_epochs: 5,
            max_steps: Some(20),
            ..RunConfig::default()
        };
        let r = run::<CpuAutodiff>(
            &spec,
            &setting,
            &splits,
            &cfg,
            &Default::default(),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(r.steps, 20);
        assert_eq!(r.epochs, 2);
        assert_eq!(r.outcome, Outcome::Completed);
        // Same seed, same run.
        let again = run::<CpuAutodiff>(
            &spec,
            &setting,
            &splits,
            &cfg,
            &Default::default(),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(
            (again.test, again.valid, again.train_loss),
            (r.test, r.valid, r.train_loss)
        );
    }
}
