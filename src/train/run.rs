//! One training run: a genome on one task setting with one optimiser
//! setting (mad-protocol §2.3 with mad-search's decisions of §8). AdamW with
//! weight decay on all parameters, cosine schedule stepped per epoch down to
//! `min_lr`, batches reshuffled every epoch, the validation split checked
//! after every epoch for early stopping and for choosing the checkpoint whose
//! test accuracy is reported. A NaN or infinite loss ends the run as diverged.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Record, Recorder};
use burn::tensor::backend::AutodiffBackend;
use rand::RngExt;
use serde::{Deserialize, Serialize};

use super::checkpoint::{Checkpoint, CheckpointError, Progress};
use super::feed::{Rows, read_losses};
use super::loss::masked_cross_entropy;
use super::metrics::{Accuracy, Metric, Scores};
use crate::genome::{ArchSpec, Backbone, Context, GenomeError};
use crate::layers::{Model, ModelInit};
use crate::space::PROTOCOL_EMBEDDING_STD;
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
    /// Stop once validation accuracy (by `metric`) reaches this.
    pub early_stop: f64,
    /// Seed of initial weights and batch order.
    pub seed: u64,
    /// Standard deviation of the token embedding's initial weights (the
    /// protocol's 0.02 is left out of the run's identity, so runs from
    /// before the field keep their fingerprints and checkpoints).
    #[serde(
        default = "crate::space::protocol_embedding_std",
        skip_serializing_if = "crate::space::is_protocol_embedding_std"
    )]
    pub embedding_std: f64,
    /// Stop once validation accuracy has not improved for this many epochs
    /// (`None`: the protocol, which runs every epoch). The reported weights
    /// are the best epoch's either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patience: Option<usize>,
    /// The validation accuracy that picks the best epoch and triggers early
    /// stop and patience (the protocol's macro is left out of the run's
    /// identity, so runs from before the field keep their fingerprints).
    #[serde(default, skip_serializing_if = "Metric::is_protocol")]
    pub metric: Metric,
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
            embedding_std: PROTOCOL_EMBEDDING_STD,
            patience: None,
            metric: Metric::Macro,
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
    /// Validation accuracy did not improve for the preset's `patience` epochs.
    Plateaued,
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
    /// Mean training loss of the last epoch (NaN when no epoch finished:
    /// a run that diverged in its first; written `null` in JSON).
    #[serde(with = "nan_as_null")]
    pub train_loss: f64,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// An `f64` that may be NaN, as JSON: NaN ↔ `null`. (serde_json writes NaN
/// as `null` and then refuses to read it back into an `f64`: a diverged
/// run's finished-run file would never be read again.)
pub(crate) mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_nan() {
            s.serialize_none()
        } else {
            s.serialize_f64(*x)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

/// Progress reported after every epoch.
#[derive(Clone, Debug)]
pub struct EpochReport {
    /// Epoch just finished (1-based).
    pub epoch: usize,
    /// Of at most (fewer than the schedule's `max_epochs` where the step
    /// cap ends the run first).
    pub max_epochs: usize,
    /// Mean training loss of the epoch.
    pub loss: f64,
    /// Validation accuracy after it.
    pub valid: Scores,
}

/// Whether an epoch scoring `valid` becomes the run's best: strictly better
/// than the best so far by `metric` (a tie keeps the earlier epoch).
pub(crate) fn improves(valid: &Scores, best: Option<&Scores>, metric: Metric) -> bool {
    best.is_none_or(|b| valid.of(metric) > b.of(metric))
}

/// The learning rate of `epoch` (0-based): cosine from `lr` to `min_lr` over
/// `max_epochs`, as PyTorch's `CosineAnnealingLR` stepped once per epoch.
pub fn cosine_lr(cfg: &RunConfig, epoch: usize) -> f64 {
    let t = epoch as f64 / cfg.max_epochs.max(1) as f64;
    cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
}

/// Epochs a run on `train_rows` examples can take, as progress shows them:
/// `max_epochs`, or as many (the last one partial) as `max_steps` fills when
/// it ends the run first. `max_epochs` alone sets the schedule.
pub fn epoch_cap(
    max_epochs: usize,
    max_steps: Option<usize>,
    train_rows: usize,
    batch_size: usize,
) -> usize {
    let per_epoch = train_rows.div_ceil(batch_size.max(1));
    match max_steps {
        Some(m) if per_epoch > 0 => max_epochs.min(m.div_ceil(per_epoch)),
        _ => max_epochs,
    }
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

/// Losses a GPU backend keeps on the device between two reads: a read waits
/// for the device to finish every queued step, so reading each step's loss
/// kept the GPU idle while the host queued the next. A NaN or infinite loss
/// is still found (and the run ends as diverged at that step) within this
/// many steps; flex reads every step (a read costs nothing there).
pub const LOSS_READ_EVERY: usize = 16;

/// Least wall time between two periodic checkpoints on a GPU backend (an
/// interrupted run still checkpoints at once): a step there takes
/// milliseconds, and every checkpoint copies the model and the optimiser's
/// moments to the host. On flex every interval's checkpoint is written.
pub const GPU_CHECKPOINT_SECONDS: f64 = 30.0;

/// Accuracy of `model` on `d`.
pub fn evaluate<B: Backend>(
    model: &Model<B>,
    d: &Dataset,
    vocab: usize,
    batch_size: usize,
    device: &B::Device,
) -> Scores {
    let mut acc = Accuracy::new(vocab);
    if d.n == 0 {
        return acc.scores();
    }
    // Every batch's predictions stay on the device; one read at the end.
    let rows = Rows::<B>::new(d, device);
    let all: Vec<usize> = (0..d.n).collect();
    let preds: Vec<Tensor<B, 1, Int>> = all
        .chunks(batch_size.max(1))
        .map(|idx| {
            let (x, _) = rows.batch(idx);
            let n = idx.len() * d.len;
            model.forward(x).reshape([n, vocab]).argmax(1).reshape([n])
        })
        .collect();
    let pred: Vec<i64> = Tensor::cat(preds, 0)
        .into_data()
        .convert::<i64>()
        .to_vec()
        .expect("argmax gives integers");
    acc.update(&pred, &d.targets[..d.n * d.len]);
    acc.scores()
}

/// Where and how often a run checkpoints, and who may stop it.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunControl<'a> {
    /// Checkpoint file and the interval in optimiser steps (also written
    /// after every epoch and when stopped; on GPU backends the periodic ones
    /// at least [`GPU_CHECKPOINT_SECONDS`] apart). A checkpoint there from
    /// the same run is resumed; one from another run is ignored and replaced.
    pub checkpoint: Option<(&'a Path, usize)>,
    /// Checked after every step: once set, the run checkpoints (if it can)
    /// and returns [`TrainError::Interrupted`].
    pub stop: Option<&'a AtomicBool>,
    /// Steps whose losses are read from the device at once (`None`: the
    /// backend's own, 1 on flex and [`LOSS_READ_EVERY`] on GPU backends).
    /// Training is the same either way; a NaN ends the run at its own step.
    /// (The scale stage's language-model runs take the same setting.)
    pub loss_read_every: Option<usize>,
}

/// Why a run did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The genome cannot be built.
    #[error(transparent)]
    Genome(#[from] GenomeError),
    /// A checkpoint could not be written or read back.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Data files that cannot be read or do not fit the setting.
    #[error("{0}")]
    Data(String),
    /// The scaling runs finished but the scaling law cannot be fitted
    /// (diverged runs, no curvature): deterministic, not worth a retry.
    #[error("{0}")]
    Fit(String),
    /// The stop flag was raised; the run can be resumed from its checkpoint.
    #[error("interrupted after {steps} steps")]
    Interrupted {
        /// Optimiser steps taken.
        steps: usize,
    },
}

/// The identity of a run: genome (as the task builds it), data and
/// optimiser; not the control.
pub fn fingerprint(spec: &ArchSpec, setting: &TaskSetting, cfg: &RunConfig) -> String {
    let spec = spec_for(spec, setting.task);
    let text = serde_json::to_string(&(spec.arch_id().to_string(), setting, cfg))
        .expect("run identity serialises");
    blake3::hash(text.as_bytes()).to_hex()[..32].to_string()
}

type Mpk = NamedMpkBytesRecorder<FullPrecisionSettings>;

pub(crate) fn save<B: Backend, R: Record<B>>(record: R) -> Vec<u8> {
    Recorder::<B>::record(&Mpk::new(), record, ()).expect("records serialise to memory")
}

pub(crate) fn load<B: Backend, R: Record<B>>(
    bytes: &[u8],
    device: &B::Device,
) -> Result<R, String> {
    Recorder::<B>::load(&Mpk::new(), bytes.to_vec(), device).map_err(|e| e.to_string())
}

/// A fresh AdamW (decoupled weight decay) for a model.
pub(crate) fn adamw<B: AutodiffBackend>(
    betas: [f64; 2],
    epsilon: f64,
    weight_decay: f64,
) -> OptimizerAdaptor<AdamW, Model<B>, B> {
    AdamWConfig::new()
        .with_beta_1(betas[0] as f32)
        .with_beta_2(betas[1] as f32)
        .with_epsilon(epsilon as f32)
        .with_weight_decay(weight_decay as f32)
        .init::<B, Model<B>>()
}

/// Trains `spec` on `splits` of `setting`.
///
/// # Errors
/// The genome's validation error (before any compute), a checkpoint that
/// cannot be written, or an interruption through `ctl.stop`.
pub fn run<B: AutodiffBackend>(
    spec: &ArchSpec,
    setting: &TaskSetting,
    splits: &Splits,
    cfg: &RunConfig,
    device: &B::Device,
    ctl: RunControl<'_>,
    report: &mut dyn FnMut(&EpochReport),
) -> Result<RunResult, TrainError> {
    let start = Instant::now();
    let spec = spec_for(spec, setting.task);
    let ctx = Context {
        vocab: setting.vocab,
        seq_len: setting.model_len(),
    };
    let mut model = Model::<B>::with_init(
        &spec,
        ctx,
        crate::seed::derive(cfg.seed, &["weights"]),
        ModelInit {
            embedding_std: cfg.embedding_std,
        },
        device,
    )?;
    let new_optim = || adamw::<B>(cfg.betas, cfg.epsilon, cfg.weight_decay);
    let mut optim = new_optim();
    let print = fingerprint(&spec, setting, cfg);
    let vocab = setting.vocab;
    let train = &splits.train;
    let mut at = Progress {
        fingerprint: print.clone(),
        epoch: 0,
        batch: 0,
        steps: 0,
        loss_sum: 0.0,
        last_loss: None,
        best: None,
        seconds: 0.0,
    };
    let mut best: Option<(usize, Scores, Model<B::InnerBackend>)> = None;
    if let Some((path, _)) = ctl.checkpoint {
        // A damaged checkpoint or one of another run: start afresh (it is
        // overwritten by the first new checkpoint).
        let restored = super::checkpoint::resumable(path, &print).and_then(|c| {
            match restore::<B>(&c, model.clone(), optim, device) {
                Ok(r) => Some((r, c.progress)),
                Err(e) => {
                    eprintln!(
                        "warning: {}: its weights do not load ({e}); the run starts afresh \
                         (the {} steps it kept are lost)",
                        path.display(),
                        c.progress.steps
                    );
                    None
                }
            }
        });
        match restored {
            Some((r, progress)) => {
                (model, optim, best) = r;
                at = progress;
            }
            None => optim = new_optim(),
        }
    }
    let spent_before = at.seconds;
    let checkpoint = |at: &Progress,
                      model: &Model<B>,
                      optim: &OptimizerAdaptor<AdamW, Model<B>, B>,
                      best: &Option<(usize, Scores, Model<B::InnerBackend>)>|
     -> Result<(), TrainError> {
        let Some((path, _)) = ctl.checkpoint else {
            return Ok(());
        };
        let mut progress = at.clone();
        progress.seconds = spent_before + start.elapsed().as_secs_f64();
        Checkpoint {
            progress,
            model: save::<B, _>(model.clone().into_record()),
            optim: save::<B, _>(optim.to_record()),
            best: best
                .as_ref()
                .map(|(_, _, m)| save::<B::InnerBackend, _>(m.clone().into_record())),
        }
        .write(path)?;
        Ok(())
    };
    let every = ctl.checkpoint.map_or(usize::MAX, |(_, n)| n.max(1));
    let stopped = || ctl.stop.is_some_and(|s| s.load(Ordering::Relaxed));
    let gpu = !crate::layers::fused::on_flex::<B>();
    let read_every = ctl
        .loss_read_every
        .unwrap_or(if gpu { LOSS_READ_EVERY } else { 1 })
        .max(1);
    let min_gap = if gpu { GPU_CHECKPOINT_SECONDS } else { 0.0 };
    let mut last_checkpoint = Instant::now();
    let mut asked = super::checkpoint::requests();
    let rows = Rows::<B>::new(train, device);
    // Losses not read yet: (step, loss) in step order.
    let mut pending: Vec<(usize, Tensor<B::InnerBackend, 1>)> = Vec::new();
    let mut outcome = Outcome::Completed;
    let mut epochs = at.epoch;
    let epoch_cap = epoch_cap(cfg.max_epochs, cfg.max_steps, train.n, cfg.batch_size);
    while at.epoch < cfg.max_epochs {
        let epoch = at.epoch;
        let lr = cosine_lr(cfg, epoch);
        let mut order: Vec<usize> = (0..train.n).collect();
        let mut rng = crate::seed::rng(cfg.seed, &["shuffle", &epoch.to_string()]);
        for i in (1..order.len()).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        let batches: Vec<&[usize]> = order.chunks(cfg.batch_size.max(1)).collect();
        let mut diverged = false;
        while at.batch < batches.len() {
            if cfg.max_steps.is_some_and(|m| at.steps >= m) {
                break;
            }
            let idx = batches[at.batch];
            let (x, y) = rows.batch(idx);
            let n = idx.len() * train.len;
            let logits = model.forward(x).reshape([n, vocab]);
            let loss = masked_cross_entropy(logits, y);
            pending.push((at.steps, loss.clone().inner()));
            if pending.len() >= read_every
                && let Some(step) = read_losses(&mut pending, &mut at)
            {
                outcome = Outcome::Diverged { step };
                diverged = true;
                break;
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
            at.steps += 1;
            at.batch += 1;
            let due = at.steps.is_multiple_of(every)
                && last_checkpoint.elapsed().as_secs_f64() >= min_gap;
            let requested = super::checkpoint::requests() != asked;
            if stopped() || due || requested {
                asked = super::checkpoint::requests();
                if let Some(step) = read_losses(&mut pending, &mut at) {
                    outcome = Outcome::Diverged { step };
                    diverged = true;
                    break;
                }
                checkpoint(&at, &model, &optim, &best)?;
                last_checkpoint = Instant::now();
                if stopped() {
                    return Err(TrainError::Interrupted { steps: at.steps });
                }
            }
        }
        if !diverged && let Some(step) = read_losses(&mut pending, &mut at) {
            outcome = Outcome::Diverged { step };
            diverged = true;
        }
        epochs = epoch + 1;
        if diverged {
            break;
        }
        let train_loss = at.loss_sum / at.batch.max(1) as f64;
        let inner = model.valid();
        let valid = evaluate(&inner, &splits.valid, vocab, cfg.batch_size, device);
        report(&EpochReport {
            epoch: epochs,
            max_epochs: epoch_cap,
            loss: train_loss,
            valid,
        });
        if improves(&valid, best.as_ref().map(|(_, b, _)| b), cfg.metric) {
            best = Some((epochs, valid, inner));
            at.best = Some((epochs, valid));
        }
        at.last_loss = Some(train_loss);
        at.epoch += 1;
        at.batch = 0;
        at.loss_sum = 0.0;
        if valid.of(cfg.metric) >= cfg.early_stop {
            outcome = Outcome::EarlyStopped;
            break;
        }
        if let (Some(p), Some((best_epoch, _, _))) = (cfg.patience, &best)
            && epochs - best_epoch >= p
        {
            outcome = Outcome::Plateaued;
            break;
        }
        if cfg.max_steps.is_some_and(|m| at.steps >= m) {
            break;
        }
        if at.epoch < cfg.max_epochs && last_checkpoint.elapsed().as_secs_f64() >= min_gap {
            checkpoint(&at, &model, &optim, &best)?;
            last_checkpoint = Instant::now();
        }
    }
    // No epoch ended: the weights the run has (a diverged run's last
    // weights: read every step, those before the NaN step; read every k
    // steps, up to k − 1 steps after it).
    let (best_epoch, valid, weights) = match best {
        Some(b) => b,
        None => (0, Scores::default(), model.valid()),
    };
    let test = evaluate(&weights, &splits.test, vocab, cfg.batch_size, device);
    Ok(RunResult {
        outcome,
        epochs,
        steps: at.steps,
        best_epoch,
        valid,
        test,
        train_loss: at.last_loss.unwrap_or(f64::NAN),
        seconds: spent_before + start.elapsed().as_secs_f64(),
    })
}

type Restored<B> = (
    Model<B>,
    OptimizerAdaptor<AdamW, Model<B>, B>,
    Option<(usize, Scores, Model<<B as AutodiffBackend>::InnerBackend>)>,
);

/// The model, optimiser and best weights of checkpoint `c`, loaded into
/// freshly built modules (the records carry the parameter ids, so the
/// optimiser's moments attach to the right tensors).
fn restore<B: AutodiffBackend>(
    c: &Checkpoint,
    model: Model<B>,
    optim: OptimizerAdaptor<AdamW, Model<B>, B>,
    device: &B::Device,
) -> Result<Restored<B>, String> {
    let inner = model.valid();
    let model = model.load_record(load::<B, _>(&c.model, device)?);
    let optim = optim.load_record(load::<B, _>(&c.optim, device)?);
    let best = match (&c.best, c.progress.best) {
        (Some(bytes), Some((epoch, scores))) => Some((
            epoch,
            scores,
            inner.load_record(load::<B::InnerBackend, _>(bytes, device)?),
        )),
        (None, None) => None,
        _ => return Err("best weights and best scores disagree".into()),
    };
    Ok((model, optim, best))
}

#[cfg(test)]
#[path = "run_tests.rs"]
mod tests;
