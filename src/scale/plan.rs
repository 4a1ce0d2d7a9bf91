//! The runs of a candidate's `scale` stage: for each compute budget, which
//! family members train and for how many steps (design §6).
//!
//! For budget `C` the sizes are centred on the Chinchilla-style
//! `N_c = √(C / (6·k))` (`k` tokens per parameter) and spaced by the
//! preset's spread: `N_c · s^(i − (n−1)/2)` for `i = 0..n`; each target
//! takes the nearest member of the family in log-parameters not yet taken
//! for this budget. A run of member `m` trains on
//! `D = C / (3 · F_m)` tokens, `F_m` its exact forward FLOPs per token
//! (backward ≈ twice forward), rounded to whole steps of
//! `batch_size · seq_len` tokens.

use serde::{Deserialize, Serialize};

use super::family::{Member, family, nearest};
use crate::genome::{ArchSpec, Context};
use crate::space::ScaleSettings;

/// One scaling run to make.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlannedRun {
    /// Nominal budget, FLOPs.
    pub budget: f64,
    /// The model.
    pub member: Member,
    /// Optimiser steps.
    pub steps: usize,
    /// Training tokens (`steps · batch_size · seq_len`).
    pub tokens: u64,
    /// Training FLOPs actually spent (`3 · F · tokens`).
    pub compute: f64,
}

impl PlannedRun {
    /// The run of `member` spending `budget`: `budget / (3 · F)` tokens
    /// rounded to whole steps of `batch_size · seq_len` (at least one).
    pub fn spending(budget: f64, member: &Member, settings: &ScaleSettings) -> PlannedRun {
        let per_step = (settings.batch_size * settings.seq_len) as f64;
        let per_token = 3.0 * member.flops_per_token as f64;
        let steps = ((budget / per_token / per_step).round() as usize).max(1);
        let tokens = (steps as f64 * per_step) as u64;
        PlannedRun {
            budget,
            member: member.clone(),
            steps,
            tokens,
            compute: per_token * tokens as f64,
        }
    }

    /// The file stem of this run in a stage directory.
    pub fn key(&self) -> String {
        format!(
            "C{:e}_d{}_r{}",
            self.budget, self.member.width, self.member.repeats
        )
    }
}

/// Why a genome has no scaling plan.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// The family has too few members for the sizes asked.
    #[error(
        "the family of `{layers}` has {members} members within width {max_width} and \
         {max_repeats} repeats, fewer than the {need} sizes per budget; raise max_width or \
         max_repeats in the preset's [scale]"
    )]
    TooFewMembers {
        /// The genome.
        layers: String,
        /// Members found.
        members: usize,
        /// Sizes per budget.
        need: usize,
        /// The preset's widest member.
        max_width: usize,
        /// The preset's most repeats.
        max_repeats: usize,
    },
}

/// The runs for `spec` under `settings` on a corpus of vocabulary `vocab`,
/// by budget then size.
///
/// # Errors
/// [`PlanError::TooFewMembers`].
pub fn plan(
    spec: &ArchSpec,
    settings: &ScaleSettings,
    vocab: usize,
) -> Result<Vec<PlannedRun>, PlanError> {
    let ctx = Context {
        vocab,
        seq_len: settings.seq_len,
    };
    let members = family(spec, ctx, settings.max_width, settings.max_repeats);
    let n = settings.sizes_per_budget;
    if members.len() < n {
        return Err(PlanError::TooFewMembers {
            layers: spec.layers_string(),
            members: members.len(),
            need: n,
            max_width: settings.max_width,
            max_repeats: settings.max_repeats,
        });
    }
    let mut runs = Vec::new();
    for &budget in &settings.budgets {
        let centre = (budget / (6.0 * settings.tokens_per_param)).sqrt();
        let mut taken = Vec::with_capacity(n);
        let mut chosen: Vec<&Member> = Vec::with_capacity(n);
        for i in 0..n {
            let target = centre * settings.size_spread.powf(i as f64 - (n - 1) as f64 / 2.0);
            let (index, member) = nearest(&members, target, &taken).expect("enough members");
            taken.push(index);
            chosen.push(member);
        }
        chosen.sort_by_key(|m| (m.params, m.width));
        runs.extend(
            chosen
                .into_iter()
                .map(|member| PlannedRun::spending(budget, member, settings)),
        );
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::SearchSpace;

    #[test]
    fn each_budget_gets_distinct_sizes_spending_its_compute() {
        let space = SearchSpace::embedded_default();
        let s = &space.presets["cpu"].scale;
        let spec = ArchSpec::from_layers_str("mh-hyena swiglu mh-attention swiglu").unwrap();
        let runs = plan(&spec, s, 256).unwrap();
        assert_eq!(runs.len(), s.budgets.len() * s.sizes_per_budget);
        for (budget, group) in s.budgets.iter().zip(runs.chunks(s.sizes_per_budget)) {
            let mut sizes: Vec<u64> = group.iter().map(|r| r.member.params).collect();
            sizes.dedup();
            assert_eq!(sizes.len(), group.len(), "distinct sizes");
            for r in group {
                assert_eq!(r.budget, *budget);
                // Whole steps: within half a step of the budget.
                let half_step =
                    1.5 * r.member.flops_per_token as f64 * (s.batch_size * s.seq_len) as f64;
                assert!((r.compute - budget).abs() <= half_step + 1.0, "{r:?}");
                assert_eq!(r.tokens, (r.steps * s.batch_size * s.seq_len) as u64);
            }
            // Sizes bracket the centre, unless the family ends first.
            let centre = (budget / (6.0 * s.tokens_per_param)).sqrt();
            let smallest = crate::scale::family::family(
                &spec,
                crate::genome::Context {
                    vocab: 256,
                    seq_len: s.seq_len,
                },
                s.max_width,
                s.max_repeats,
            )[0]
            .params;
            assert!(
                (group[0].member.params as f64) < centre || group[0].member.params == smallest,
                "{budget:e}"
            );
            assert!((group[group.len() - 1].member.params as f64) > centre);
        }
        // Every run fits the embedded corpus without repeating a token.
        let corpus = crate::scale::corpus::Corpus::embedded();
        for r in &runs {
            corpus
                .check(r.tokens as usize, s.seq_len, &r.key())
                .unwrap();
        }
    }

    #[test]
    fn a_family_too_small_is_named() {
        let s = ScaleSettings {
            max_width: 16,
            max_repeats: 1,
            ..ScaleSettings::default()
        };
        let spec = ArchSpec::from_layers_str("hyena swiglu").unwrap();
        let e = plan(&spec, &s, 256).unwrap_err();
        assert!(e.to_string().contains("max_width"), "{e}");
    }
}
