//! The `scale` stage (design §6, mad-protocol §4.2): a candidate's family
//! trained as small language models at every (budget, size) of its plan
//! (`scale::plan`), then the IsoFLOP parabolas, the power law of the
//! compute-optimal loss, and the loss it predicts at the preset's target
//! compute. The stage's score is `exp(−L̂)` (the predicted per-token
//! likelihood, 1 / perplexity), in (0, 1] and higher-is-better like the
//! other stages' scores.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use super::{read_done, side_by_side, write_done};
use crate::genome::ArchSpec;
use crate::scale::corpus::Corpus;
use crate::scale::fit::{IsoFlop, LogLog, PowerLaw, isoflop, loglog, power_law};
use crate::scale::plan::{PlannedRun, plan};
use crate::scale::train::{LmConfig, LmResult, fingerprint, run};
use crate::space::ScaleSettings;
use crate::train::{RunControl, TrainError};

/// One scaling run and what it measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScaleRun {
    /// What was run.
    pub planned: PlannedRun,
    /// What it measured.
    pub result: LmResult,
}

/// The compute-optimal point of one budget, with its state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Optimum {
    /// The budget's IsoFLOP fit.
    pub fit: IsoFlop,
    /// The state of a model of `fit.n_opt` parameters (interpolated in
    /// log–log between the budget's runs).
    pub state: f64,
}

/// The `scale` stage's verdict on one genome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScaleResult {
    /// The preset's settings.
    pub settings: ScaleSettings,
    /// The corpus.
    pub corpus: String,
    /// Every run, by budget then size.
    pub runs: Vec<ScaleRun>,
    /// Per budget.
    pub optima: Vec<Optimum>,
    /// `L*(C)` across budgets.
    pub law: PowerLaw,
    /// `L*` against the state of the compute-optimal model (`None` when the
    /// optima's states do not differ).
    pub state_law: Option<LogLog>,
    /// Loss predicted at `settings.target_compute`, nats per token.
    pub predicted_loss: f64,
    /// Its standard error, if the fit has residual degrees of freedom.
    pub predicted_se: Option<f64>,
    /// `exp(−predicted_loss)`.
    pub score: f64,
    /// Wall time, seconds.
    pub seconds: f64,
}

impl ScaleResult {
    /// The runs, the optima and the fits as a plain-text table.
    pub fn text(&self) -> String {
        let r = self;
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:>9} {:>9} {:>10} {:>7} {:>10} {:>8} {:>7} {:>8}",
            "budget", "width×rep", "params", "steps", "tokens", "loss", "bpb", "seconds"
        );
        for run in &r.runs {
            let p = &run.planned;
            let _ = writeln!(
                s,
                "{:>9.1e} {:>9} {:>10} {:>7} {:>10} {:>8} {:>7} {:>8.1}",
                p.budget,
                format!("{}×{}", p.member.width, p.member.repeats),
                p.member.params,
                p.steps,
                p.tokens,
                match run.result.diverged_at {
                    Some(_) => "diverged".to_string(),
                    None => format!("{:.4}", run.result.valid_loss),
                },
                run.result
                    .bits_per_byte
                    .map_or("-".into(), |b| format!("{b:.3}")),
                run.result.seconds
            );
        }
        let _ = writeln!(s, "compute-optimal points (IsoFLOP parabolas in ln N):");
        for o in &r.optima {
            let _ = writeln!(
                s,
                "  C={:.1e}: N*={:.0} L*={:.4} state {:.0}{}",
                o.fit.compute,
                o.fit.n_opt,
                o.fit.loss_opt,
                o.state,
                if o.fit.bracketed {
                    ""
                } else {
                    " (minimum at an end: the best size run)"
                }
            );
        }
        // Budgets the fit went on without ([`fit`] leaves out a budget
        // whose diverged runs leave too few points for its parabola).
        for &budget in &r.settings.budgets {
            if r.optima.iter().any(|o| o.fit.compute == budget) {
                continue;
            }
            let diverged = r
                .runs
                .iter()
                .filter(|run| run.planned.budget == budget && run.result.diverged_at.is_some())
                .count();
            let _ = writeln!(
                s,
                "  C={budget:.1e}: left out ({diverged} run(s) diverged, too few points left)"
            );
        }
        let l = &r.law;
        let se = |i: usize| l.se.map_or(String::new(), |se| format!(" ± {:.3}", se[i]));
        let _ = writeln!(
            s,
            "L*(C) = {:.4}{} + {:.4}{}·(C/{:.2e})^−({:.4}{}), rmse {:.4}",
            l.e,
            if l.e_fixed { " (fixed)".into() } else { se(0) },
            l.a,
            se(1),
            l.c0,
            l.alpha,
            se(2),
            l.rmse
        );
        let _ = writeln!(
            s,
            "predicted loss at C={:.1e}: {:.4}{} nats/token (score exp(−L) = {:.4})",
            r.settings.target_compute,
            r.predicted_loss,
            r.predicted_se
                .map_or(String::new(), |e| format!(" ± {e:.4}")),
            r.score
        );
        if let Some(st) = &r.state_law {
            let _ = writeln!(
                s,
                "state-optimal: L* ∝ M^{:.3}{}",
                st.exponent,
                st.exponent_se
                    .map_or(String::new(), |e| format!(" ± {e:.3}"))
            );
        }
        s
    }
}

/// How the stage runs (as [`super::StageControl`], less the task data).
#[derive(Clone, Copy, Debug, Default)]
pub struct ScaleControl<'a> {
    /// Directory for the runs' checkpoints and finished results.
    pub dir: Option<&'a Path>,
    /// Checkpoint interval, optimiser steps.
    pub checkpoint_every: usize,
    /// Raised to stop.
    pub stop: Option<&'a AtomicBool>,
    /// Runs side by side.
    pub parallel: usize,
    /// Threads per run.
    pub threads: Option<usize>,
}

/// Progress of one step of one run.
#[derive(Clone, Debug)]
pub struct ScaleProgress<'a> {
    /// The run.
    pub planned: &'a PlannedRun,
    /// Its index among the stage's runs and their number.
    pub run: (usize, usize),
    /// Steps done.
    pub step: usize,
    /// The step's training loss.
    pub loss: f64,
}

impl ScaleProgress<'_> {
    /// One line for logs, bars and `status`.
    pub fn line(&self) -> String {
        let p = self.planned;
        format!(
            "[run {}/{} C={:e} d={}×{} N={}] step {}/{} loss {:.4}",
            self.run.0,
            self.run.1,
            p.budget,
            p.member.width,
            p.member.repeats,
            p.member.params,
            self.step,
            p.steps,
            self.loss
        )
    }
}

/// The run configuration of `p`.
pub fn lm_config(settings: &ScaleSettings, p: &PlannedRun, seed: u64) -> LmConfig {
    LmConfig {
        seq_len: settings.seq_len,
        batch_size: settings.batch_size,
        steps: p.steps,
        lr: settings.lr,
        min_lr: settings.min_lr,
        warmup: ((p.steps as f64 * settings.warmup).round() as usize).min(p.steps),
        weight_decay: settings.weight_decay,
        betas: [0.9, 0.95],
        seed,
        valid_windows: settings.valid_windows,
    }
}

/// `ln state` at `ln n` by linear interpolation over `(ln N, ln state)`
/// points sorted by N (clamped at the ends).
fn state_at(n: f64, runs: &[&ScaleRun]) -> f64 {
    let pts: Vec<(f64, f64)> = runs
        .iter()
        .map(|r| {
            (
                (r.planned.member.params as f64).ln(),
                (r.planned.member.state.max(1) as f64).ln(),
            )
        })
        .collect();
    let x = n.ln();
    let (first, last) = (pts[0], pts[pts.len() - 1]);
    if x <= first.0 {
        return first.1.exp();
    }
    if x >= last.0 {
        return last.1.exp();
    }
    for w in pts.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        if x <= x1 && x1 > x0 {
            return (y0 + (y1 - y0) * (x - x0) / (x1 - x0)).exp();
        }
    }
    last.1.exp()
}

/// The fits over finished runs.
///
/// # Errors
/// [`TrainError::Fit`] naming what cannot be fitted.
pub fn fit(
    settings: &ScaleSettings,
    runs: &[ScaleRun],
) -> Result<(Vec<Optimum>, PowerLaw, Option<LogLog>), TrainError> {
    let mut optima = Vec::new();
    // Budgets left out because runs of theirs diverged (NaN loss): the fit
    // goes on from the others while two budgets remain.
    let mut skipped = Vec::new();
    for &budget in &settings.budgets {
        let group: Vec<&ScaleRun> = runs
            .iter()
            .filter(|r| r.planned.budget == budget && r.result.valid_loss.is_finite())
            .collect();
        let points: Vec<(f64, f64)> = group
            .iter()
            .map(|r| (r.planned.member.params as f64, r.result.valid_loss))
            .collect();
        match isoflop(budget, &points) {
            Ok(f) => optima.push(Optimum {
                state: state_at(f.n_opt, &group),
                fit: f,
            }),
            Err(e) => {
                let why = format!(
                    "budget {budget:e}: {e} ({} of {} runs finished with a finite loss)",
                    group.len(),
                    settings.sizes_per_budget
                );
                if group.len() == settings.sizes_per_budget {
                    return Err(TrainError::Fit(why));
                }
                skipped.push(why);
            }
        }
    }
    if !skipped.is_empty() && optima.len() < 2 {
        return Err(TrainError::Fit(format!(
            "too few budgets left to fit once diverged runs are left out: {}",
            skipped.join("; ")
        )));
    }
    let law = power_law(
        &optima
            .iter()
            .map(|o| (o.fit.compute, o.fit.loss_opt))
            .collect::<Vec<_>>(),
    )
    .map_err(|e| TrainError::Fit(e.to_string()))?;
    let state_law = loglog(
        &optima
            .iter()
            .map(|o| (o.state, o.fit.loss_opt))
            .collect::<Vec<_>>(),
    )
    .ok();
    Ok((optima, law, state_law))
}

/// The runs of `spec`'s `scale` stage, checked against the corpus.
///
/// # Errors
/// The genome is invalid or has no plan ([`TrainError::Data`]), or the
/// corpus is too small for a run.
pub fn planned_runs(
    spec: &ArchSpec,
    settings: &ScaleSettings,
    corpus: &Corpus,
) -> Result<Vec<PlannedRun>, TrainError> {
    spec.validate_layers()?;
    let planned =
        plan(spec, settings, corpus.vocab()).map_err(|e| TrainError::Data(e.to_string()))?;
    for p in &planned {
        corpus
            .check(
                p.tokens as usize,
                settings.seq_len,
                &format!("the run {}", p.key()),
            )
            .map_err(|e| TrainError::Data(e.to_string()))?;
    }
    Ok(planned)
}

/// Trains one planned run, checkpointing to `ckpt` every `ctl.checkpoint_every`
/// steps and resuming from it.
///
/// # Errors
/// As [`run`].
#[allow(clippy::too_many_arguments)]
pub fn train_run<B: AutodiffBackend>(
    p: &PlannedRun,
    settings: &ScaleSettings,
    corpus: &Corpus,
    seed: u64,
    device: &B::Device,
    ckpt: Option<&Path>,
    ctl: ScaleControl<'_>,
    progress: &mut dyn FnMut(usize, f64),
) -> Result<ScaleRun, TrainError> {
    let cfg = lm_config(settings, p, seed);
    let result = run::<B>(
        &p.member.spec,
        corpus,
        &cfg,
        device,
        RunControl {
            checkpoint: ckpt.map(|c| (c, ctl.checkpoint_every.max(1))),
            stop: ctl.stop,
            ..RunControl::default()
        },
        progress,
    )?;
    Ok(ScaleRun {
        planned: p.clone(),
        result,
    })
}

/// The stage's result from its finished runs: the fits and the prediction.
///
/// # Errors
/// [`TrainError::Fit`] naming what cannot be fitted.
pub fn assemble(
    settings: &ScaleSettings,
    corpus: &str,
    runs: Vec<ScaleRun>,
    seconds: f64,
) -> Result<ScaleResult, TrainError> {
    let (optima, law, state_law) = fit(settings, &runs)?;
    let predicted_loss = law.predict(settings.target_compute);
    Ok(ScaleResult {
        settings: settings.clone(),
        corpus: corpus.to_string(),
        predicted_se: law.predict_se(settings.target_compute),
        score: (-predicted_loss).exp(),
        predicted_loss,
        runs,
        optima,
        law,
        state_law,
        seconds,
    })
}

/// Runs the `scale` stage on `spec`, every run in this call (finished runs
/// are kept as files in `ctl.dir` and read back by a later call).
///
/// # Errors
/// The genome or its plan is invalid, the corpus is too small, a file
/// cannot be written, the fit fails ([`TrainError::Fit`]), or it was
/// interrupted.
pub fn evaluate<B: AutodiffBackend>(
    spec: &ArchSpec,
    settings: &ScaleSettings,
    corpus: &Corpus,
    seed: u64,
    device: &B::Device,
    ctl: ScaleControl<'_>,
    progress: &(dyn Fn(&ScaleProgress<'_>) + Sync),
) -> Result<ScaleResult, TrainError> {
    let start = Instant::now();
    let planned = planned_runs(spec, settings, corpus)?;
    let keyed: Vec<(&PlannedRun, String)> = planned.iter().map(|p| (p, p.key())).collect();
    let runs = runs_in_dir::<B>(&keyed, settings, corpus, seed, device, ctl, progress)?;
    assemble(settings, corpus.name(), runs, start.elapsed().as_secs_f64())
}

/// Every run of `runs` (each with its file stem in `ctl.dir`), side by
/// side: read back from its finished-run file when there is one, else
/// trained (resuming from its checkpoint) and recorded. In `runs`' order.
///
/// # Errors
/// As [`train_run`], or a file that cannot be written.
pub(crate) fn runs_in_dir<B: AutodiffBackend>(
    runs: &[(&PlannedRun, String)],
    settings: &ScaleSettings,
    corpus: &Corpus,
    seed: u64,
    device: &B::Device,
    ctl: ScaleControl<'_>,
    progress: &(dyn Fn(&ScaleProgress<'_>) + Sync),
) -> Result<Vec<ScaleRun>, TrainError> {
    let total = runs.len();
    let one = |index: usize| -> Result<ScaleRun, TrainError> {
        let (p, key) = &runs[index];
        let print = fingerprint(&p.member.spec, corpus, &lm_config(settings, p, seed));
        let done_path = ctl.dir.map(|d| d.join(format!("{key}.done.json")));
        if let Some(done) = done_path
            .as_deref()
            .and_then(|path| read_done(path, &print))
        {
            return Ok(done);
        }
        let ckpt = ctl.dir.map(|d| d.join(format!("{key}.ckpt")));
        let done = train_run::<B>(
            p,
            settings,
            corpus,
            seed,
            device,
            ckpt.as_deref(),
            ctl,
            &mut |step, loss| {
                progress(&ScaleProgress {
                    planned: p,
                    run: (index + 1, total),
                    step,
                    loss,
                })
            },
        )?;
        if let (Some(path), Some(ckpt)) = (&done_path, &ckpt) {
            write_done(path, ckpt, print, &done)?;
        }
        Ok(done)
    };
    side_by_side(total, ctl.parallel, ctl.threads, one)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::CpuAutodiff;
    use crate::space::SearchSpace;

    #[test]
    fn the_tiny_scale_stage_runs_fits_and_resumes_from_its_files() {
        let space = SearchSpace::embedded_default();
        let settings = &space.presets["tiny"].scale;
        let spec = ArchSpec::from_layers_str("hyena swiglu mh-attention swiglu").unwrap();
        let corpus = Corpus::embedded();
        let dir = tempfile::tempdir().unwrap();
        let ctl = ScaleControl {
            dir: Some(dir.path()),
            checkpoint_every: 5,
            parallel: 2,
            ..ScaleControl::default()
        };
        let device = Default::default();
        let r =
            evaluate::<CpuAutodiff>(&spec, settings, &corpus, 1, &device, ctl, &|_| {}).unwrap();
        assert_eq!(r.runs.len(), 9);
        assert_eq!(r.optima.len(), 3);
        assert!(
            r.predicted_loss.is_finite() && r.predicted_loss > 0.0,
            "{r:?}"
        );
        assert!((r.score - (-r.predicted_loss).exp()).abs() < 1e-12);
        for run in &r.runs {
            assert!(
                run.result.valid_loss < (256f64).ln(),
                "learns something: {run:?}"
            );
        }
        // Nine finished-run files and no checkpoints left; a second call
        // reads them back instead of training.
        let files: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            files.iter().filter(|f| f.ends_with(".done.json")).count(),
            9
        );
        assert!(!files.iter().any(|f| f.ends_with(".ckpt")), "{files:?}");
        let again = evaluate::<CpuAutodiff>(&spec, settings, &corpus, 1, &device, ctl, &|_| {
            panic!("nothing should train")
        })
        .unwrap();
        assert_eq!(again.runs, r.runs);
        assert_eq!(again.predicted_loss.to_bits(), r.predicted_loss.to_bits());

        // A run that diverged: its result is written, read back as NaN, and
        // the fit goes on from the other budgets.
        let mut runs = r.runs.clone();
        runs[0].result.valid_loss = f64::NAN;
        runs[0].result.bits_per_byte = None;
        runs[0].result.diverged_at = Some(3);
        let json = serde_json::to_string(&runs[0]).unwrap();
        assert!(json.contains("\"valid_loss\":null"), "{json}");
        let back: ScaleRun = serde_json::from_str(&json).unwrap();
        assert!(back.result.valid_loss.is_nan());
        assert_eq!(back.result.diverged_at, Some(3));
        runs[0] = back;
        let (optima, law, _) = fit(settings, &runs).unwrap();
        assert_eq!(optima.len(), settings.budgets.len() - 1);
        assert!(law.predict(settings.target_compute).is_finite());
        // Two diverged budgets leave one: no law, said why.
        let first_of_second = settings.sizes_per_budget;
        runs[first_of_second].result.valid_loss = f64::NAN;
        let e = fit(settings, &runs).unwrap_err().to_string();
        assert!(e.contains("too few budgets"), "{e}");
    }
}
