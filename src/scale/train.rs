//! One scaling run: causal language modelling of one family member on the
//! corpus for a fixed number of steps (its token budget), AdamW with linear
//! warmup then cosine decay, checkpoints that let a killed run resume
//! bit-identically, and the validation loss at the end (bits per byte for
//! text corpora).
//!
//! Batches are `batch` windows of `seq_len + 1` tokens drawn at offsets
//! derived from (seed, step), so a resumed run sees the batches the
//! uninterrupted one would.

use std::sync::atomic::Ordering;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use super::corpus::Corpus;
use crate::genome::{ArchSpec, Backbone, Context};
use crate::layers::Model;
use crate::train::checkpoint::{Checkpoint, Progress};
use crate::train::run::{
    GPU_CHECKPOINT_SECONDS, LOSS_READ_EVERY, RunControl, TrainError, adamw, load, save,
};

/// Optimiser, schedule and size of one scaling run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LmConfig {
    /// Context length.
    pub seq_len: usize,
    /// Windows per step.
    pub batch_size: usize,
    /// Optimiser steps (the token budget is `steps · batch_size · seq_len`).
    pub steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate.
    pub min_lr: f64,
    /// Warmup steps (linear from 0).
    pub warmup: usize,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// AdamW betas.
    pub betas: [f64; 2],
    /// Seed of weights and batches.
    pub seed: u64,
    /// Validation windows at the end (all of the held-out tail at most).
    pub valid_windows: usize,
}

/// The learning rate at `step` (0-based): linear warmup to `lr`, then a
/// cosine to `min_lr` at the last step.
pub fn lm_lr(cfg: &LmConfig, step: usize) -> f64 {
    if step < cfg.warmup {
        return cfg.lr * (step + 1) as f64 / cfg.warmup as f64;
    }
    let span = cfg.steps.saturating_sub(cfg.warmup).max(1) as f64;
    let t = ((step - cfg.warmup) as f64 / span).min(1.0);
    cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
}

/// What one scaling run measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LmResult {
    /// Steps taken.
    pub steps: usize,
    /// Training tokens seen.
    pub tokens: u64,
    /// Mean training loss over the last tenth of the steps (nats/token).
    #[serde(with = "crate::train::run::nan_as_null")]
    pub train_loss: f64,
    /// Validation loss at the end (nats/token); NaN for a run that diverged
    /// (written `null` in JSON, read back as NaN: the fit skips it).
    #[serde(with = "crate::train::run::nan_as_null")]
    pub valid_loss: f64,
    /// `valid_loss / ln 2` for byte-level corpora (none when diverged).
    pub bits_per_byte: Option<f64>,
    /// The step at which the loss became NaN or infinite, if it did.
    pub diverged_at: Option<usize>,
    /// Wall time, seconds (over all resumptions).
    pub seconds: f64,
}

/// The identity of a scaling run (a checkpoint of another is never resumed).
pub fn fingerprint(spec: &ArchSpec, corpus: &Corpus, cfg: &LmConfig) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"mad-search/lm-run/1");
    h.update(spec.canonical().as_bytes());
    h.update(corpus.name().as_bytes());
    h.update(&(corpus.train().len() as u64).to_le_bytes());
    h.update(
        serde_json::to_string(cfg)
            .expect("config serialises")
            .as_bytes(),
    );
    h.finalize().to_hex()[..32].to_string()
}

/// `(inputs [batch, seq], targets [batch·seq])` from windows of `seq + 1`.
fn split<B: Backend>(
    windows: &[u16],
    seq: usize,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 1, Int>) {
    let n = windows.len() / (seq + 1);
    let mut x = Vec::with_capacity(n * seq);
    let mut y = Vec::with_capacity(n * seq);
    for w in windows.chunks_exact(seq + 1) {
        x.extend(w[..seq].iter().map(|&t| i64::from(t)));
        y.extend(w[1..].iter().map(|&t| i64::from(t)));
    }
    (
        Tensor::from_data(TensorData::new(x, [n, seq]), device),
        Tensor::from_data(TensorData::new(y, [n * seq]), device),
    )
}

/// Mean next-token cross-entropy, nats.
///
/// # Shapes
/// - logits: `[n, vocab]`; targets: `[n]` → `[1]`
fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let [n, _] = logits.dims();
    -log_softmax(logits, 1)
        .gather(1, targets.reshape([n, 1]))
        .mean()
}

/// Reads the pending `(step, loss)` pairs (one device read), in step
/// order: those of steps from `tail_from` on into the training loss, each
/// reported as `(steps done, loss)`. At the first NaN or infinite loss,
/// returns its step and sets `at.steps` to it (the run ends there; the
/// losses after it are dropped).
fn read_losses<B: Backend>(
    pending: &mut Vec<(usize, Tensor<B, 1>)>,
    at: &mut Progress,
    tail_from: usize,
    report: &mut dyn FnMut(usize, f64),
) -> Option<usize> {
    if pending.is_empty() {
        return None;
    }
    for (step, v) in crate::train::feed::take_losses(pending) {
        if !v.is_finite() {
            at.steps = step;
            return Some(step);
        }
        if step >= tail_from {
            at.loss_sum += v;
            at.batch += 1;
        }
        report(step + 1, v);
    }
    None
}

/// Validation loss of `model` over the corpus's held-out windows.
pub fn valid_loss<B: Backend>(
    model: &Model<B>,
    corpus: &Corpus,
    cfg: &LmConfig,
    device: &B::Device,
) -> f64 {
    let windows = corpus.valid_windows(cfg.seq_len, cfg.valid_windows.max(1));
    let span = cfg.seq_len + 1;
    // Each batch's mean stays on the device; one read at the end.
    let (mut means, mut sizes) = (Vec::new(), Vec::new());
    for chunk in windows.chunks(span * cfg.batch_size.max(1)) {
        let (x, y) = split::<B>(chunk, cfg.seq_len, device);
        let n = y.dims()[0];
        let logits = model.forward(x).reshape([n, corpus.vocab()]);
        means.push(cross_entropy(logits, y));
        sizes.push(n);
    }
    if means.is_empty() {
        return 0.0;
    }
    let means: Vec<f32> = Tensor::cat(means, 0)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("losses are floats");
    let (mut sum, mut count) = (0.0, 0usize);
    for (mean, n) in means.into_iter().zip(sizes) {
        sum += f64::from(mean) * n as f64;
        count += n;
    }
    sum / count.max(1) as f64
}

/// Trains `spec` (a language model) on `corpus`.
///
/// # Errors
/// The genome cannot be built, the corpus is too small for the run, a
/// checkpoint cannot be written, or `ctl.stop` was raised (the run then
/// checkpoints first and resumes later).
pub fn run<B: AutodiffBackend>(
    spec: &ArchSpec,
    corpus: &Corpus,
    cfg: &LmConfig,
    device: &B::Device,
    ctl: RunControl<'_>,
    report: &mut dyn FnMut(usize, f64),
) -> Result<LmResult, TrainError> {
    let start = Instant::now();
    let tokens = cfg.steps * cfg.batch_size * cfg.seq_len;
    corpus
        .check(
            tokens,
            cfg.seq_len,
            &format!(
                "{} steps of {} × {}",
                cfg.steps, cfg.batch_size, cfg.seq_len
            ),
        )
        .map_err(|e| TrainError::Data(e.to_string()))?;
    let spec = ArchSpec {
        backbone: Backbone::LanguageModel,
        ..spec.clone()
    };
    let ctx = Context {
        vocab: corpus.vocab(),
        seq_len: cfg.seq_len,
    };
    let mut model = Model::<B>::new(
        &spec,
        ctx,
        crate::seed::derive(cfg.seed, &["lm-weights"]),
        device,
    )?;
    let mut optim = adamw::<B>(cfg.betas, 1e-8, cfg.weight_decay);
    let print = fingerprint(&spec, corpus, cfg);
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
    if let Some((path, _)) = ctl.checkpoint
        && let Some(c) = crate::train::checkpoint::resumable(path, &print)
    {
        match (
            load::<B, _>(&c.model, device),
            load::<B, _>(&c.optim, device),
        ) {
            (Ok(m), Ok(o)) => {
                model = model.load_record(m);
                optim = optim.load_record(o);
                at = c.progress;
            }
            (m, o) => eprintln!(
                "warning: {}: its weights do not load ({}); the run starts afresh (the {} \
                 steps it kept are lost)",
                path.display(),
                m.err().or(o.err()).unwrap_or_default(),
                c.progress.steps
            ),
        }
    }
    let spent_before = at.seconds;
    let checkpoint = |at: &Progress, model: &Model<B>, optim: &_| -> Result<(), TrainError> {
        let Some((path, _)) = ctl.checkpoint else {
            return Ok(());
        };
        let mut progress = at.clone();
        progress.seconds = spent_before + start.elapsed().as_secs_f64();
        Checkpoint {
            progress,
            model: save::<B, _>(model.clone().into_record()),
            optim: save::<B, _>(Optimizer::<Model<B>, B>::to_record(optim)),
            best: None,
        }
        .write(path)?;
        Ok(())
    };
    let every = ctl.checkpoint.map_or(usize::MAX, |(_, n)| n.max(1));
    // The training loss is averaged over the last tenth of the steps.
    let tail_from = cfg.steps - cfg.steps.div_ceil(10);
    let mut asked = crate::train::checkpoint::requests();
    let mut diverged_at = None;
    // As a task run: on a GPU backend the losses are read every
    // `LOSS_READ_EVERY` steps (one device read each), and periodic
    // checkpoints (a copy of the model to the host) are kept apart.
    let gpu = !crate::layers::fused::on_flex::<B>();
    let read_every = ctl
        .loss_read_every
        .unwrap_or(if gpu { LOSS_READ_EVERY } else { 1 })
        .max(1);
    let min_gap = if gpu { GPU_CHECKPOINT_SECONDS } else { 0.0 };
    let mut last_checkpoint = Instant::now();
    let mut pending: Vec<(usize, Tensor<B::InnerBackend, 1>)> = Vec::new();
    while at.steps < cfg.steps {
        let step = at.steps;
        let mut rng = crate::seed::rng(cfg.seed, &["lm-batch", &step.to_string()]);
        let windows = corpus.train_batch(&mut rng, cfg.batch_size, cfg.seq_len);
        let (x, y) = split::<B>(&windows, cfg.seq_len, device);
        let n = cfg.batch_size * cfg.seq_len;
        let logits = model.forward(x).reshape([n, corpus.vocab()]);
        let loss = cross_entropy(logits, y);
        pending.push((step, loss.clone().inner()));
        if pending.len() >= read_every
            && let Some(s) = read_losses(&mut pending, &mut at, tail_from, report)
        {
            diverged_at = Some(s);
            break;
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(lm_lr(cfg, step), model, grads);
        at.steps += 1;
        let stop = ctl.stop.is_some_and(|s| s.load(Ordering::Relaxed));
        let requested = crate::train::checkpoint::requests() != asked;
        let due =
            at.steps.is_multiple_of(every) && last_checkpoint.elapsed().as_secs_f64() >= min_gap;
        if stop || ((due || requested) && at.steps < cfg.steps) {
            // A checkpoint holds every step's loss up to its own.
            if let Some(s) = read_losses(&mut pending, &mut at, tail_from, report) {
                diverged_at = Some(s);
                break;
            }
            asked = crate::train::checkpoint::requests();
            checkpoint(&at, &model, &optim)?;
            last_checkpoint = Instant::now();
            if stop {
                return Err(TrainError::Interrupted { steps: at.steps });
            }
        }
    }
    if diverged_at.is_none() {
        diverged_at = read_losses(&mut pending, &mut at, tail_from, report);
    }
    let valid = match diverged_at {
        Some(_) => f64::NAN,
        None => valid_loss(&model.valid(), corpus, cfg, device),
    };
    Ok(LmResult {
        steps: at.steps,
        tokens: (at.steps * cfg.batch_size * cfg.seq_len) as u64,
        train_loss: at.loss_sum / at.batch.max(1) as f64,
        valid_loss: valid,
        bits_per_byte: (corpus.is_bytes() && diverged_at.is_none())
            .then(|| valid / std::f64::consts::LN_2),
        diverged_at,
        seconds: spent_before + start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::CpuAutodiff;
    use std::sync::atomic::AtomicBool;

    fn cfg(steps: usize) -> LmConfig {
        LmConfig {
            seq_len: 32,
            batch_size: 8,
            steps,
            lr: 3e-3,
            min_lr: 3e-4,
            warmup: 4,
            weight_decay: 0.0,
            betas: [0.9, 0.98],
            seed: 5,
            valid_windows: 16,
        }
    }

    #[test]
    fn warmup_then_cosine() {
        let c = cfg(100);
        assert!((lm_lr(&c, 0) - 3e-3 / 4.0).abs() < 1e-15);
        assert!((lm_lr(&c, 3) - 3e-3).abs() < 1e-15);
        assert!((lm_lr(&c, 4) - 3e-3).abs() < 1e-15);
        assert!((lm_lr(&c, 100) - 3e-4).abs() < 1e-15);
        for s in 4..99 {
            assert!(lm_lr(&c, s + 1) <= lm_lr(&c, s));
        }
    }

    /// Losses read from the device in batches (a GPU backend's way) give
    /// the run of losses read every step, the same reports in the same
    /// order, and the same divergence step.
    #[test]
    fn losses_read_in_batches_give_the_same_run_and_the_same_divergence_step() {
        let spec = ArchSpec::from_layers_str("mh-attention swiglu")
            .map(|s| crate::scale::family::scaled(&s, 32, 1).unwrap())
            .unwrap();
        let corpus = Corpus::embedded();
        let device = Default::default();
        let go = |c: &LmConfig, every: Option<usize>| {
            let mut reports = Vec::new();
            let r = run::<CpuAutodiff>(
                &spec,
                &corpus,
                c,
                &device,
                RunControl {
                    loss_read_every: every,
                    ..RunControl::default()
                },
                &mut |step, loss| reports.push((step, loss.to_bits())),
            )
            .unwrap();
            (r, reports)
        };
        // 23 steps, read 7 at a time (steps 0–6, 7–13, 14–20, 21–22): the
        // last read is a partial one, and the training loss's tail (steps
        // 20–22) straddles two reads.
        let c = cfg(23);
        let (each, each_reports) = go(&c, None);
        let (batched, batched_reports) = go(&c, Some(7));
        assert_eq!(batched_reports, each_reports);
        assert_eq!(
            each_reports.iter().map(|r| r.0).collect::<Vec<_>>(),
            (1..=23).collect::<Vec<_>>()
        );
        assert_eq!(batched.train_loss.to_bits(), each.train_loss.to_bits());
        assert_eq!(batched.valid_loss.to_bits(), each.valid_loss.to_bits());
        assert_eq!((batched.steps, batched.diverged_at), (23, None));
        // A learning rate that overflows diverges at the same step either way.
        let wild = LmConfig { lr: 1e30, ..c };
        let (each, _) = go(&wild, None);
        let (batched, _) = go(&wild, Some(16));
        let step = each.diverged_at.expect("lr 1e30 diverges");
        assert_eq!(batched.diverged_at, Some(step));
        assert_eq!((batched.steps, each.steps), (step, step));
        assert!(batched.valid_loss.is_nan() && batched.bits_per_byte.is_none());
    }

    /// Losses read 4 at a time through a stop and a resume: the checkpoint
    /// holds every loss up to its step, and the resumed run ends where the
    /// uninterrupted one does, bit for bit.
    #[test]
    fn a_run_reading_losses_in_batches_resumes_exactly() {
        let spec = ArchSpec::from_layers_str("hyena swiglu")
            .map(|s| crate::scale::family::scaled(&s, 32, 1).unwrap())
            .unwrap();
        let corpus = Corpus::embedded();
        let device = Default::default();
        let c = cfg(30);
        let ctl = |path, stop| RunControl {
            checkpoint: Some((path, 5)),
            stop,
            loss_read_every: Some(4),
        };
        let whole = run::<CpuAutodiff>(
            &spec,
            &corpus,
            &c,
            &device,
            RunControl::default(),
            &mut |_, _| {},
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lm.ckpt");
        let stop = AtomicBool::new(false);
        // Losses are read at the checkpoint after step 10 and then four at
        // a time: the stop is seen when step 13's loss is read (steps
        // 10–13), so the run stops after 14 steps.
        let r = run::<CpuAutodiff>(
            &spec,
            &corpus,
            &c,
            &device,
            ctl(&path, Some(&stop)),
            &mut |step, _| {
                if step == 13 {
                    stop.store(true, Ordering::Relaxed);
                }
            },
        );
        assert!(
            matches!(r, Err(TrainError::Interrupted { steps: 14 })),
            "{r:?}"
        );
        stop.store(false, Ordering::Relaxed);
        let resumed = run::<CpuAutodiff>(
            &spec,
            &corpus,
            &c,
            &device,
            ctl(&path, Some(&stop)),
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(resumed.steps, 30);
        assert_eq!(resumed.valid_loss.to_bits(), whole.valid_loss.to_bits());
        assert_eq!(resumed.train_loss.to_bits(), whole.train_loss.to_bits());
    }

    #[test]
    fn a_small_model_learns_the_corpus_and_resumes_exactly() {
        let spec = ArchSpec::from_layers_str("hyena swiglu")
            .map(|s| crate::scale::family::scaled(&s, 32, 1).unwrap())
            .unwrap();
        let corpus = Corpus::embedded();
        let device = Default::default();
        let c = cfg(40);
        let whole = run::<CpuAutodiff>(
            &spec,
            &corpus,
            &c,
            &device,
            RunControl::default(),
            &mut |_, _| {},
        )
        .unwrap();
        // Uniform over bytes is ln 256 = 5.55 nats; unigram English ≈ 3.
        assert!(whole.valid_loss < 4.0, "{whole:?}");
        assert_eq!(whole.tokens, 40 * 8 * 32);
        assert!(whole.bits_per_byte.is_some());
        // Stop after 13 steps, resume, and end where the whole run ended.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lm.ckpt");
        let stop = AtomicBool::new(false);
        let mut seen = 0;
        let r = run::<CpuAutodiff>(
            &spec,
            &corpus,
            &c,
            &device,
            RunControl {
                checkpoint: Some((&path, 5)),
                stop: Some(&stop),
                ..RunControl::default()
            },
            &mut |step, _| {
                seen = step;
                if step == 13 {
                    stop.store(true, Ordering::Relaxed);
                }
            },
        );
        assert!(
            matches!(r, Err(TrainError::Interrupted { steps: 13 })),
            "{r:?}"
        );
        assert_eq!(seen, 13);
        stop.store(false, Ordering::Relaxed);
        let resumed = run::<CpuAutodiff>(
            &spec,
            &corpus,
            &c,
            &device,
            RunControl {
                checkpoint: Some((&path, 5)),
                stop: Some(&stop),
                ..RunControl::default()
            },
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(resumed.valid_loss.to_bits(), whole.valid_loss.to_bits());
        assert_eq!(resumed.train_loss.to_bits(), whole.train_loss.to_bits());
    }

    #[test]
    fn a_corpus_too_small_for_the_budget_is_refused() {
        let spec = ArchSpec::from_layers_str("hyena swiglu").unwrap();
        let mut c = cfg(1_000_000);
        c.batch_size = 64;
        let r = run::<CpuAutodiff>(
            &spec,
            &Corpus::embedded(),
            &c,
            &Default::default(),
            RunControl::default(),
            &mut |_, _| {},
        );
        let Err(TrainError::Data(msg)) = r else {
            panic!("{r:?}")
        };
        assert!(msg.contains("--corpus"), "{msg}");
    }
}
