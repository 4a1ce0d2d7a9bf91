//! The `overtrain` stage (the paper's overtrained regime, design §6): the
//! compute-optimal size of one budget, read from the candidate's `scale`
//! result, trained on multiples of its compute-optimal tokens
//! (`scale::overtrain`), the loss against tokens at that fixed size fitted
//! as `L(D) = E + B·(D/D₀)^(−β)` (`E = 0` below four points), and the loss
//! at the largest multiple as the stage's verdict. Its score is
//! `exp(−loss)`, like `scale`'s.
//!
//! The run at multiple 1 is the `scale` stage's own when that stage trained
//! the same member at the same budget (same steps, tokens and schedule);
//! otherwise it is one of this stage's runs.

use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use super::scale::{ScaleControl, ScaleProgress, ScaleResult, ScaleRun, runs_in_dir};
use crate::genome::ArchSpec;
use crate::scale::corpus::Corpus;
use crate::scale::fit::{PowerLaw, power_law};
use crate::scale::overtrain::{OvertrainRun, plan_overtrain};
use crate::scale::plan::PlannedRun;
use crate::space::ScaleSettings;
use crate::train::TrainError;

/// One point of the loss-against-tokens curve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OvertrainPoint {
    /// Multiple of the compute-optimal tokens.
    pub multiple: f64,
    /// Training tokens per non-embedding parameter.
    pub tokens_per_param: f64,
    /// The run and what it measured.
    pub run: ScaleRun,
    /// Whether the run is the `scale` stage's (multiple 1 only).
    pub from_scale: bool,
}

/// The `overtrain` stage's verdict on one genome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OvertrainResult {
    /// The preset's settings.
    pub settings: ScaleSettings,
    /// The corpus.
    pub corpus: String,
    /// The budget whose compute-optimal size is trained.
    pub base_budget: f64,
    /// The `scale` stage's compute-optimal size at that budget.
    pub n_opt: f64,
    /// And its compute-optimal loss there (the IsoFLOP minimum).
    pub loss_opt: f64,
    /// By multiple, 1 first.
    pub points: Vec<OvertrainPoint>,
    /// Loss against training tokens at the fixed size (`None` when fewer
    /// than two points finished with a finite loss).
    pub curve: Option<PowerLaw>,
    /// Validation loss at the largest multiple, nats per token.
    pub loss: f64,
    /// `exp(−loss)`.
    pub score: f64,
    /// Wall time of this stage's own runs, seconds.
    pub seconds: f64,
}

impl OvertrainResult {
    /// The points and the fit as a plain-text table.
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let m = self.points.first().map(|p| &p.run.planned.member);
        let _ = writeln!(
            s,
            "overtrained at the compute-optimal size of C={:.1e} (N*={:.0}, L*={:.4}): {}",
            self.base_budget,
            self.n_opt,
            self.loss_opt,
            m.map_or(String::new(), |m| format!(
                "width {} × {} repeats, {} parameters",
                m.width, m.repeats, m.params
            ))
        );
        let _ = writeln!(
            s,
            "{:>8} {:>10} {:>9} {:>7} {:>10} {:>7} {:>8}",
            "multiple", "tokens", "tok/param", "steps", "loss", "bpb", "seconds"
        );
        for p in &self.points {
            let r = &p.run;
            let _ = writeln!(
                s,
                "{:>8} {:>10} {:>9.0} {:>7} {:>10} {:>7} {:>8}",
                format!("{}×", p.multiple),
                r.planned.tokens,
                p.tokens_per_param,
                r.planned.steps,
                match r.result.diverged_at {
                    Some(_) => "diverged".to_string(),
                    None => format!("{:.4}", r.result.valid_loss),
                },
                r.result
                    .bits_per_byte
                    .map_or("-".into(), |b| format!("{b:.3}")),
                if p.from_scale {
                    "(scale)".to_string()
                } else {
                    format!("{:.1}", r.result.seconds)
                }
            );
        }
        if let Some(c) = &self.curve {
            let se = |i: usize| c.se.map_or(String::new(), |se| format!(" ± {:.3}", se[i]));
            let _ = writeln!(
                s,
                "L(D) = {:.4}{} + {:.4}{}·(D/{:.2e})^−({:.4}{}), rmse {:.4}",
                c.e,
                if c.e_fixed { " (fixed)".into() } else { se(0) },
                c.a,
                se(1),
                c.c0,
                c.alpha,
                se(2),
                c.rmse
            );
        }
        let _ = writeln!(
            s,
            "loss at {}× the compute-optimal tokens: {:.4} nats/token (score exp(−L) = {:.4})",
            self.points.last().map_or(1.0, |p| p.multiple),
            self.loss,
            self.score
        );
        s
    }
}

/// The compute-optimal point of `scale` at the base budget: (`N*`, `L*`).
///
/// # Errors
/// [`TrainError::Fit`] when the `scale` stage left that budget out (its
/// runs diverged).
pub fn basis(settings: &ScaleSettings, scale: &ScaleResult) -> Result<(f64, f64), TrainError> {
    let base = settings.overtrain_base();
    scale
        .optima
        .iter()
        .find(|o| o.fit.compute == base)
        .map(|o| (o.fit.n_opt, o.fit.loss_opt))
        .ok_or_else(|| {
            TrainError::Fit(format!(
                "the scale stage has no compute-optimal point at C={base:e} (runs there diverged \
                 and left too few for its fit, or the preset's budgets changed since): nothing \
                 to overtrain"
            ))
        })
}

/// The stage's plan: the runs to train, and the `scale` stage's run that
/// stands for multiple 1 when there is one. Every run to train is checked
/// against the corpus.
///
/// # Errors
/// No basis ([`basis`]), no family member, or a run the corpus is too
/// small for ([`TrainError::Data`], naming the run, the tokens and what
/// to do).
pub fn planned_runs(
    spec: &ArchSpec,
    settings: &ScaleSettings,
    corpus: &Corpus,
    scale: &ScaleResult,
) -> Result<(Vec<OvertrainRun>, Option<OvertrainPoint>), TrainError> {
    spec.validate_layers()?;
    let (n_opt, _) = basis(settings, scale)?;
    let (member, runs) = plan_overtrain(spec, settings, corpus.vocab(), n_opt)
        .map_err(|e| TrainError::Data(e.to_string()))?;
    let reused = runs.first().and_then(|one| {
        scale
            .runs
            .iter()
            .find(|r| {
                r.planned.budget == one.base_budget
                    && r.planned.member.width == member.width
                    && r.planned.member.repeats == member.repeats
                    && r.planned.steps == one.planned.steps
                    && r.result.valid_loss.is_finite()
            })
            .map(|r| OvertrainPoint {
                multiple: 1.0,
                tokens_per_param: one.tokens_per_param(),
                run: r.clone(),
                from_scale: true,
            })
    });
    let to_train: Vec<OvertrainRun> = runs
        .into_iter()
        .filter(|r| !(reused.is_some() && r.multiple == 1.0))
        .collect();
    for r in &to_train {
        corpus
            .check(r.planned.tokens as usize, settings.seq_len, &r.key())
            .map_err(|e| {
                TrainError::Data(format!(
                    "{e}; the overtrained run {} needs {} × the {} compute-optimal tokens of a \
                     {}-parameter model: lower the preset's [scale] overtrain multiples or \
                     overtrain_budget, or give a larger corpus",
                    r.key(),
                    r.multiple,
                    (r.planned.tokens as f64 / r.multiple).round(),
                    r.planned.member.params
                ))
            })?;
    }
    Ok((to_train, reused))
}

/// The runs' names, one job each.
///
/// # Errors
/// As [`planned_runs`].
pub fn parts(
    spec: &ArchSpec,
    settings: &ScaleSettings,
    corpus: &Corpus,
    scale: &ScaleResult,
) -> Result<Vec<String>, TrainError> {
    Ok(planned_runs(spec, settings, corpus, scale)?
        .0
        .iter()
        .map(OvertrainRun::key)
        .collect())
}

/// The run named `key` of the plan.
///
/// # Errors
/// As [`planned_runs`], or no such run (the preset changed).
pub fn planned_run(
    spec: &ArchSpec,
    settings: &ScaleSettings,
    corpus: &Corpus,
    scale: &ScaleResult,
    key: &str,
) -> Result<OvertrainRun, TrainError> {
    let (runs, _) = planned_runs(spec, settings, corpus, scale)?;
    let names: Vec<String> = runs.iter().map(OvertrainRun::key).collect();
    runs.into_iter().find(|r| r.key() == key).ok_or_else(|| {
        TrainError::Data(format!(
            "the overtrain plan has no run named {key} (it has {}): was the preset changed?",
            names.join(", ")
        ))
    })
}

/// The stage's result from its trained runs and the `scale` stage's.
///
/// # Errors
/// [`TrainError::Fit`] when there is no basis, or the run at the largest
/// multiple diverged.
pub fn assemble(
    settings: &ScaleSettings,
    corpus: &str,
    scale: &ScaleResult,
    runs: Vec<ScaleRun>,
    seconds: f64,
) -> Result<OvertrainResult, TrainError> {
    let (n_opt, loss_opt) = basis(settings, scale)?;
    let base = settings.overtrain_base();
    let point = |run: ScaleRun, from_scale: bool| OvertrainPoint {
        multiple: run.planned.budget / base,
        tokens_per_param: run.planned.tokens as f64 / run.planned.member.params.max(1) as f64,
        run,
        from_scale,
    };
    let trained_one = runs.iter().any(|r| r.planned.budget == base);
    let mut points: Vec<OvertrainPoint> = runs.into_iter().map(|r| point(r, false)).collect();
    if !trained_one {
        // The scale stage's run of the same size stands for multiple 1.
        let size = points
            .first()
            .map(|p| (p.run.planned.member.width, p.run.planned.member.repeats));
        if let Some(r) = scale.runs.iter().find(|r| {
            r.planned.budget == base
                && Some((r.planned.member.width, r.planned.member.repeats)) == size
                && r.result.valid_loss.is_finite()
        }) {
            points.push(point(r.clone(), true));
        }
    }
    points.sort_by(|a, b| a.multiple.total_cmp(&b.multiple));
    let Some(last) = points.last() else {
        return Err(TrainError::Fit("the overtrain stage has no runs".into()));
    };
    if !last.run.result.valid_loss.is_finite() {
        return Err(TrainError::Fit(format!(
            "the run at {}× the compute-optimal tokens diverged (step {})",
            last.multiple,
            last.run
                .result
                .diverged_at
                .map_or("?".into(), |s| s.to_string())
        )));
    }
    let loss = last.run.result.valid_loss;
    let finite: Vec<(f64, f64)> = points
        .iter()
        .filter(|p| p.run.result.valid_loss.is_finite())
        .map(|p| (p.run.planned.tokens as f64, p.run.result.valid_loss))
        .collect();
    let curve = power_law(&finite).ok();
    Ok(OvertrainResult {
        settings: settings.clone(),
        corpus: corpus.to_string(),
        base_budget: base,
        n_opt,
        loss_opt,
        points,
        curve,
        loss,
        score: (-loss).exp(),
        seconds,
    })
}

/// Runs the `overtrain` stage on `spec` from its `scale` result, every run
/// in this call (finished runs are kept as files in `ctl.dir` and read back
/// by a later call).
///
/// # Errors
/// As [`planned_runs`] and [`assemble`], a file that cannot be written, or
/// an interruption.
#[allow(clippy::too_many_arguments)]
pub fn evaluate<B: AutodiffBackend>(
    spec: &ArchSpec,
    settings: &ScaleSettings,
    corpus: &Corpus,
    scale: &ScaleResult,
    seed: u64,
    device: &B::Device,
    ctl: ScaleControl<'_>,
    progress: &(dyn Fn(&ScaleProgress<'_>) + Sync),
) -> Result<OvertrainResult, TrainError> {
    let start = Instant::now();
    let (planned, _) = planned_runs(spec, settings, corpus, scale)?;
    let keyed: Vec<(&PlannedRun, String)> = planned.iter().map(|r| (&r.planned, r.key())).collect();
    let runs = runs_in_dir::<B>(&keyed, settings, corpus, seed, device, ctl, progress)?;
    assemble(
        settings,
        corpus.name(),
        scale,
        runs,
        start.elapsed().as_secs_f64(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::CpuAutodiff;
    use crate::space::SearchSpace;
    use crate::stages::scale::evaluate as scale_evaluate;

    #[test]
    fn the_tiny_overtrain_stage_runs_from_the_scale_result_and_resumes() {
        let space = SearchSpace::embedded_default();
        let settings = &space.presets["tiny"].scale;
        let spec = ArchSpec::from_layers_str("hyena swiglu mh-attention swiglu").unwrap();
        let corpus = Corpus::embedded();
        let device = Default::default();
        let dir = tempfile::tempdir().unwrap();
        let scale_ctl = ScaleControl {
            dir: None,
            parallel: 2,
            ..ScaleControl::default()
        };
        let scale =
            scale_evaluate::<CpuAutodiff>(&spec, settings, &corpus, 1, &device, scale_ctl, &|_| {})
                .unwrap();
        let (to_train, reused) = planned_runs(&spec, settings, &corpus, &scale).unwrap();
        let (n_opt, loss_opt) = basis(settings, &scale).unwrap();
        let ctl = ScaleControl {
            dir: Some(dir.path()),
            checkpoint_every: 5,
            parallel: 2,
            ..ScaleControl::default()
        };
        let r = evaluate::<CpuAutodiff>(&spec, settings, &corpus, &scale, 1, &device, ctl, &|_| {})
            .unwrap();
        assert_eq!((r.n_opt, r.loss_opt), (n_opt, loss_opt));
        assert_eq!(r.base_budget, 2e9);
        let multiples: Vec<f64> = r.points.iter().map(|p| p.multiple).collect();
        assert_eq!(multiples, vec![1.0, 2.0, 4.0]);
        assert_eq!(
            r.points.iter().filter(|p| p.from_scale).count(),
            usize::from(reused.is_some())
        );
        assert_eq!(to_train.len() + usize::from(reused.is_some()), 3);
        // One size throughout, more tokens per multiple.
        let size = &r.points[0].run.planned.member;
        for w in r.points.windows(2) {
            assert_eq!(&w[1].run.planned.member, size);
            assert!(w[1].run.planned.tokens > w[0].run.planned.tokens);
        }
        assert_eq!(r.loss, r.points[2].run.result.valid_loss);
        assert!((r.score - (-r.loss).exp()).abs() < 1e-12);
        assert!(r.curve.is_some(), "three finite points fit a power law");
        assert!(r.text().contains("4×"), "{}", r.text());
        // The finished runs are files; a second call trains nothing.
        let again =
            evaluate::<CpuAutodiff>(&spec, settings, &corpus, &scale, 1, &device, ctl, &|_| {
                panic!("nothing should train")
            })
            .unwrap();
        assert_eq!(again.points, r.points);
    }

    fn lm(valid_loss: f64) -> crate::scale::train::LmResult {
        crate::scale::train::LmResult {
            steps: 1,
            tokens: 1,
            train_loss: valid_loss,
            valid_loss,
            bits_per_byte: None,
            diverged_at: None,
            seconds: 1.0,
        }
    }

    #[test]
    fn assemble_reuses_the_scale_run_and_refuses_a_diverged_last_run() {
        let space = SearchSpace::embedded_default();
        let settings = &space.presets["tiny"].scale;
        let spec = ArchSpec::from_layers_str("hyena swiglu hyena swiglu").unwrap();
        let corpus = Corpus::embedded();
        let planned = crate::scale::plan::plan(&spec, settings, corpus.vocab()).unwrap();
        // A made-up scale result: loss falls with size at every budget but
        // the middle size is the minimum, so N* is the middle member.
        let runs: Vec<ScaleRun> = planned
            .iter()
            .enumerate()
            .map(|(i, p)| ScaleRun {
                planned: p.clone(),
                result: lm(3.0 - 0.1 * (p.budget.log10()) + [0.05, 0.0, 0.04][i % 3]),
            })
            .collect();
        let scale = crate::stages::scale::assemble(settings, "c", runs, 1.0).unwrap();
        let (to_train, reused) = planned_runs(&spec, settings, &corpus, &scale).unwrap();
        let reused = reused.expect("the middle member at 2e9 is N*'s nearest");
        assert_eq!(reused.multiple, 1.0);
        assert!(to_train.iter().all(|r| r.multiple > 1.0));
        let trained: Vec<ScaleRun> = to_train
            .iter()
            .map(|r| ScaleRun {
                planned: r.planned.clone(),
                result: lm(2.0 / r.multiple.powf(0.1)),
            })
            .collect();
        let r = assemble(settings, "c", &scale, trained.clone(), 2.0).unwrap();
        assert_eq!(r.points.len(), 3);
        assert!(r.points[0].from_scale && !r.points[1].from_scale);
        assert_eq!(r.loss, 2.0 / 4f64.powf(0.1));
        let c = r.curve.as_ref().unwrap();
        assert!(c.alpha > 0.0, "{c:?}");
        // The last run diverged: no verdict, said why.
        let mut bad = trained;
        let last = bad.len() - 1;
        bad[last].result.valid_loss = f64::NAN;
        bad[last].result.diverged_at = Some(7);
        let e = assemble(settings, "c", &scale, bad, 2.0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("4×") && e.contains("diverged") && e.contains('7'),
            "{e}"
        );
        // No compute-optimal point at the base budget: named.
        let mut gone = scale.clone();
        gone.optima.retain(|o| o.fit.compute != 2e9);
        let e = planned_runs(&spec, settings, &corpus, &gone)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no compute-optimal point at C=2e9"), "{e}");
        // A multiple the corpus cannot hold is refused with what to do.
        let greedy = ScaleSettings {
            overtrain: vec![4.0, 1e4],
            ..settings.clone()
        };
        let e = planned_runs(&spec, &greedy, &corpus, &scale)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("x10000_C2e9")
                && e.contains("overtrain multiples")
                && e.contains("larger corpus"),
            "{e}"
        );
    }
}
