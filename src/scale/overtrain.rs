//! The runs of a candidate's `overtrain` stage (the paper's overtrained
//! regime): one model, the family member nearest the compute-optimal size
//! `N*` that the `scale` stage fitted at one budget `C`
//! ([`ScaleSettings::overtrain_base`]), trained on `m · D` tokens for each
//! multiple `m` of [`ScaleSettings::overtrain`] and for `m = 1`, where
//! `D = C / (3 · F)` is that member's compute-optimal token count at `C`
//! (`F` its forward FLOPs per token). Steps round by
//! [`PlannedRun::spending`], as in `scale`, so the run at `m = 1` is exactly
//! the `scale` stage's run of that member at `C` when it made one.

use serde::{Deserialize, Serialize};

use super::family::{Member, family, nearest};
use super::plan::{PlanError, PlannedRun};
use crate::genome::{ArchSpec, Context};
use crate::space::ScaleSettings;

/// One run of the `overtrain` stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OvertrainRun {
    /// Multiple of the compute-optimal token count.
    pub multiple: f64,
    /// The budget whose compute-optimal size it is.
    pub base_budget: f64,
    /// The run: `budget` is `multiple · base_budget`.
    pub planned: PlannedRun,
}

impl OvertrainRun {
    /// The file stem of this run in a stage directory (and its job's part
    /// name): `x<multiple>_C<base>_d<width>_r<repeats>`.
    pub fn key(&self) -> String {
        format!(
            "x{}_C{:e}_d{}_r{}",
            self.multiple, self.base_budget, self.planned.member.width, self.planned.member.repeats
        )
    }

    /// Training tokens per non-embedding parameter.
    pub fn tokens_per_param(&self) -> f64 {
        self.planned.tokens as f64 / self.planned.member.params.max(1) as f64
    }
}

/// The member `n_opt` points at and its runs, multiple 1 first and then
/// `settings.overtrain` in order, on a corpus of vocabulary `vocab`.
///
/// # Errors
/// [`PlanError::TooFewMembers`] when the genome has no family member
/// within the preset's width and repeats.
pub fn plan_overtrain(
    spec: &ArchSpec,
    settings: &ScaleSettings,
    vocab: usize,
    n_opt: f64,
) -> Result<(Member, Vec<OvertrainRun>), PlanError> {
    let ctx = Context {
        vocab,
        seq_len: settings.seq_len,
    };
    let members = family(spec, ctx, settings.max_width, settings.max_repeats);
    let Some((_, member)) = nearest(&members, n_opt, &[]) else {
        return Err(PlanError::TooFewMembers {
            layers: spec.layers_string(),
            members: 0,
            need: 1,
            max_width: settings.max_width,
            max_repeats: settings.max_repeats,
        });
    };
    let base = settings.overtrain_base();
    let runs = std::iter::once(1.0)
        .chain(settings.overtrain.iter().copied())
        .map(|multiple| OvertrainRun {
            multiple,
            base_budget: base,
            planned: PlannedRun::spending(multiple * base, member, settings),
        })
        .collect();
    Ok((member.clone(), runs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scale::plan::plan;
    use crate::space::SearchSpace;

    #[test]
    fn the_runs_multiply_the_compute_optimal_tokens_of_one_size() {
        let space = SearchSpace::embedded_default();
        let s = &space.presets["cpu"].scale;
        let spec = ArchSpec::from_layers_str("hyena swiglu mh-attention swiglu").unwrap();
        let base = s.overtrain_base();
        let n_opt = (base / (6.0 * s.tokens_per_param)).sqrt();
        let (member, runs) = plan_overtrain(&spec, s, 256, n_opt).unwrap();
        assert_eq!(runs.len(), 1 + s.overtrain.len());
        assert_eq!(runs[0].multiple, 1.0);
        let per_step = (s.batch_size * s.seq_len) as u64;
        for r in &runs {
            assert_eq!(r.planned.member, member);
            assert_eq!(r.base_budget, base);
            assert_eq!(r.planned.tokens, r.planned.steps as u64 * per_step);
            // Whole steps: within half a step of m·C.
            let half_step = 1.5 * member.flops_per_token as f64 * per_step as f64;
            assert!(
                (r.planned.compute - r.multiple * base).abs() <= half_step + 1.0,
                "{r:?}"
            );
        }
        // Tokens grow with the multiple, in proportion (to a step).
        for w in runs.windows(2) {
            let ratio = w[1].planned.tokens as f64 / runs[0].planned.tokens as f64;
            assert!((ratio / w[1].multiple - 1.0).abs() < 0.02, "{ratio}");
            assert!(w[1].tokens_per_param() > w[0].tokens_per_param());
        }
        // Keys are distinct and name the multiple and the size.
        let keys: std::collections::BTreeSet<String> = runs.iter().map(|r| r.key()).collect();
        assert_eq!(keys.len(), runs.len());
        assert!(runs[1].key().starts_with(&format!("x{}_C", s.overtrain[0])));
        // Multiple 1 is the scale stage's own run of that size at the base
        // budget, when the scale plan made one: same steps, same tokens.
        let scale = plan(&spec, s, 256).unwrap();
        if let Some(same) = scale
            .iter()
            .find(|p| p.budget == base && p.member == member)
        {
            assert_eq!(same.steps, runs[0].planned.steps);
            assert_eq!(same.tokens, runs[0].planned.tokens);
        }
    }

    #[test]
    fn the_cpu_overtrained_runs_of_the_baselines_fit_the_embedded_corpus() {
        let space = SearchSpace::embedded_default();
        let s = &space.presets["cpu"].scale;
        let corpus = crate::scale::corpus::Corpus::embedded();
        let base = s.overtrain_base();
        for b in crate::space::Baseline::embedded() {
            // The compute-optimal size anywhere within a factor of two of
            // the Chinchilla centre (where the IsoFLOP minima fall).
            let centre = (base / (6.0 * s.tokens_per_param)).sqrt();
            for n_opt in [centre / 2.0, centre, centre * 2.0] {
                let (m, runs) = plan_overtrain(&b.genome, s, corpus.vocab(), n_opt).unwrap();
                let last = runs.last().unwrap();
                eprintln!(
                    "{:<40} N*={n_opt:>7.0} member {:>7} params: {}× = {} tokens ({:.0}/param)",
                    b.name,
                    m.params,
                    last.multiple,
                    last.planned.tokens,
                    last.tokens_per_param()
                );
                corpus
                    .check(last.planned.tokens as usize, s.seq_len, &last.key())
                    .unwrap();
            }
        }
    }

    #[test]
    fn the_size_is_the_family_member_nearest_n_opt() {
        let space = SearchSpace::embedded_default();
        let s = &space.presets["cpu"].scale;
        let spec = ArchSpec::from_layers_str("mamba mamba mamba mamba").unwrap();
        let ctx = Context {
            vocab: 256,
            seq_len: s.seq_len,
        };
        let members = family(&spec, ctx, s.max_width, s.max_repeats);
        for target in [1e4, 5e4, 2e5, 1e9] {
            let (m, _) = plan_overtrain(&spec, s, 256, target).unwrap();
            let best = members
                .iter()
                .map(|x| (x.params as f64 / target).ln().abs())
                .fold(f64::INFINITY, f64::min);
            assert_eq!((m.params as f64 / target).ln().abs(), best, "{target}");
        }
        let tiny = ScaleSettings {
            max_width: 8,
            max_repeats: 1,
            ..s.clone()
        };
        let e = plan_overtrain(&spec, &tiny, 256, 1e5).unwrap_err();
        assert!(e.to_string().contains("max_width"), "{e}");
    }
}
