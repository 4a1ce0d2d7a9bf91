//! Can the space produce anything? Lower bounds on parameters and state from
//! the grammar, a trial of random draws against the budgets, and warnings for
//! primitives that can never fit.

use serde::Serialize;

use super::SearchSpace;
use super::sample::all_layers;
use super::toml_walk::{Doc, R, Table};
use crate::genome::{Layer, Norm, Role};

/// Draws tried when checking a space.
pub const TRIAL_DRAWS: usize = 2000;
/// Seed of the trial draws (fixed: `space check` is deterministic).
const TRIAL_SEED: u64 = 0x5eed_c4ec;
/// Above this many combinations a primitive's bounds are not enumerated.
const MAX_ENUMERATED: usize = 4096;

/// What a check of the space found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Feasibility {
    /// Smallest non-embedding parameter count the grammar allows (budgets aside).
    pub min_params: u64,
    /// Smallest fixed state the grammar allows (budgets aside).
    pub min_state: u64,
    /// Share of unconstrained draws that fit the budgets.
    pub acceptance: f64,
    /// Problems that do not make the space unusable.
    pub warnings: Vec<String>,
}

#[derive(Clone, Copy)]
struct Bounds {
    params: u64,
    state: u64,
    per_token: u64,
}

impl Bounds {
    const NONE: Bounds = Bounds {
        params: u64::MAX,
        state: u64::MAX,
        per_token: u64::MAX,
    };

    fn min(self, o: Bounds) -> Bounds {
        Bounds {
            params: self.params.min(o.params),
            state: self.state.min(o.state),
            per_token: self.per_token.min(o.per_token),
        }
    }

    fn plus(self, o: Bounds) -> Bounds {
        Bounds {
            params: self.params.saturating_add(o.params),
            state: self.state.saturating_add(o.state),
            per_token: self.per_token.saturating_add(o.per_token),
        }
    }
}

fn layer_bounds(layer: &Layer, d: usize, seq_len: usize) -> Bounds {
    let s = layer.state(d);
    Bounds {
        params: layer.params(d, seq_len),
        state: s.fixed,
        per_token: s.per_token,
    }
}

impl SearchSpace {
    /// Smallest parameters / state of one layer of each role at width `d`;
    /// `None` when some primitive has too many combinations to enumerate.
    fn role_bounds(&self, d: usize) -> Option<[Bounds; 3]> {
        let mut out = [Bounds::NONE; 3];
        for (p, choices) in &self.primitives {
            let layers = all_layers(*p, &choices.params);
            if layers.len() > MAX_ENUMERATED {
                return None;
            }
            let slot = match p.role() {
                Role::Sequence => 0,
                Role::Channel => 1,
                Role::Fused => 2,
            };
            for l in layers.iter().filter(|l| l.validate(d).is_ok()) {
                out[slot] = out[slot].min(layer_bounds(l, d, self.budget.seq_len));
            }
        }
        Some(out)
    }

    /// Lower bounds over all widths and depths, budgets aside.
    fn lower_bounds(&self) -> Option<Bounds> {
        let mut best = Bounds::NONE;
        for &d in &self.model.d_model {
            let [seq, chan, fused] = self.role_bounds(d)?;
            let norm = match self.model.norm.iter().min_by_key(|n| **n != Norm::Rms) {
                Some(Norm::Layer) => 2 * d as u64,
                _ => d as u64,
            };
            let norm_b = Bounds {
                params: norm,
                state: 0,
                per_token: 0,
            };
            let pair = seq.plus(chan).plus(norm_b).plus(norm_b);
            let single = fused.plus(norm_b);
            let max_depth = self.model.layers.iter().copied().max().unwrap_or(0);
            // dp[n]: bounds of the cheapest n layers of whole blocks.
            let mut dp = vec![Bounds::NONE; max_depth + 1];
            dp[0] = Bounds {
                params: 0,
                state: 0,
                per_token: 0,
            };
            for n in 1..=max_depth {
                let mut b = dp[n - 1].plus(single);
                if n >= 2 {
                    b = b.min(dp[n - 2].plus(pair));
                }
                dp[n] = b;
            }
            for &depth in &self.model.layers {
                best = best.min(dp[depth].plus(norm_b));
            }
        }
        Some(best)
    }

    /// Checks the space for producibility and collects warnings.
    pub fn feasibility(&self) -> Feasibility {
        let bounds = self.lower_bounds();
        let mut rng = crate::seed::rng(TRIAL_SEED, &["space-check"]);
        let admitted = (0..TRIAL_DRAWS)
            .filter(|_| {
                self.draw(&mut rng)
                    .is_some_and(|spec| self.admits(&spec).is_ok())
            })
            .count();
        let mut warnings = Vec::new();
        for (p, choices) in &self.primitives {
            let layers = all_layers(*p, &choices.params);
            if layers.len() > MAX_ENUMERATED {
                continue;
            }
            for &d in &self.model.d_model {
                let b = layers
                    .iter()
                    .filter(|l| l.validate(d).is_ok())
                    .fold(Bounds::NONE, |acc, l| {
                        acc.min(layer_bounds(l, d, self.budget.seq_len))
                    });
                let why = if b.state > self.budget.max_state {
                    Some(format!(
                        "its smallest state ({}) exceeds budget.max_state ({})",
                        b.state, self.budget.max_state
                    ))
                } else if b.per_token > self.budget.max_state_per_token {
                    Some(format!(
                        "its state growth per token ({}) exceeds budget.max_state_per_token ({})",
                        b.per_token, self.budget.max_state_per_token
                    ))
                } else if b.params > self.budget.max_params {
                    Some(format!(
                        "its smallest parameter count ({}) exceeds budget.max_params ({})",
                        b.params, self.budget.max_params
                    ))
                } else {
                    None
                };
                if let Some(why) = why {
                    warnings.push(format!(
                        "primitives.{p}: can never appear at d_model = {d}: {why}"
                    ));
                }
            }
        }
        Feasibility {
            min_params: bounds.map_or(0, |b| b.params),
            min_state: bounds.map_or(0, |b| b.state),
            acceptance: admitted as f64 / TRIAL_DRAWS as f64,
            warnings,
        }
    }
}

/// Rejects a space that cannot produce a genome within its budgets.
pub(super) fn check(space: &SearchSpace, doc: Doc<'_>, budget: &Table<'_, '_>) -> R<()> {
    if let Some(b) = space.lower_bounds() {
        let over = |field: &str, smallest: u64, limit: u64, what: &str| {
            doc.error(
                &budget.span_of(field),
                &format!("budget.{field}"),
                format!(
                    "the space can produce nothing: its smallest model has {smallest} {what}, more than {limit}; raise the limit or allow smaller primitives"
                ),
            )
        };
        if b.params > space.budget.max_params {
            return Err(over(
                "max_params",
                b.params,
                space.budget.max_params,
                "non-embedding parameters",
            ));
        }
        if b.state > space.budget.max_state {
            return Err(over(
                "max_state",
                b.state,
                space.budget.max_state,
                "values of fixed state",
            ));
        }
        if b.per_token > space.budget.max_state_per_token {
            return Err(over(
                "max_state_per_token",
                b.per_token,
                space.budget.max_state_per_token,
                "values of state per token",
            ));
        }
    }
    let f = space.feasibility();
    if f.acceptance == 0.0 {
        return Err(budget.error(format!(
            "the space can produce nothing: none of {TRIAL_DRAWS} random draws fits the budgets together; loosen [budget] or the primitives' choices"
        )));
    }
    Ok(())
}
