//! What the dashboard's plots need beyond `status`: every candidate as a
//! point (scores per stage, parameters, state, lineage, when each stage
//! finished) and every scaled candidate's IsoFLOP runs and fitted law.
//! Served as JSON, schema [`POINTS_SCHEMA`]; built by the daemon (through
//! the control socket) or from the store when no daemon runs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::genome::ArchId;
use crate::space::StageName;
use crate::stages::scale::ScaleResult;
use crate::store::{Candidate, Store, StoreError};

/// Schema of [`Points`].
pub const POINTS_SCHEMA: &str = "mad-search.points/1";

/// Every candidate of a search, and the scaled ones' fits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Points {
    /// [`POINTS_SCHEMA`].
    pub schema: String,
    /// One per candidate, in creation order.
    pub points: Vec<Point>,
    /// One per candidate that finished `scale`, in creation order.
    pub scaling: Vec<Scaling>,
}

/// One candidate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Its id (32 hex digits).
    pub arch: ArchId,
    /// Creation order (0-based).
    pub seq: u64,
    /// The reference layer string.
    pub layers: String,
    /// The compact form, with parameters (`mh-attention[kv_heads=4]`).
    #[serde(default)]
    pub compact: String,
    /// The paper baseline it is, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// How it was made (`sample`, `mutation`, `crossover`, `seed`, …).
    pub operator: String,
    /// Its parents' ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<ArchId>,
    /// Non-embedding parameters.
    pub params: u64,
    /// Recurrent state, scalars.
    pub state: u64,
    /// When it was created, Unix seconds.
    pub created: f64,
    /// Score per finished stage.
    pub scores: BTreeMap<StageName, f64>,
    /// When each finished stage finished, Unix seconds.
    pub finished: BTreeMap<StageName, f64>,
    /// `scale` only: the predicted loss at the target compute, nats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_loss: Option<f64>,
    /// Stages that failed for good.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<StageName>,
}

impl Point {
    /// The point of candidate `c`.
    pub fn of(c: &Candidate) -> Point {
        Point {
            arch: c.id,
            seq: c.seq,
            layers: c.genome.layers_string(),
            compact: c.genome.compact_string(),
            baseline: c.baseline.clone(),
            operator: c.operator.to_string(),
            parents: c.parents.clone(),
            params: c.params,
            state: c.state,
            created: c.created,
            scores: c.stages.iter().map(|(s, r)| (*s, r.score)).collect(),
            finished: c.stages.iter().map(|(s, r)| (*s, r.finished)).collect(),
            predicted_loss: c
                .stages
                .get(&StageName::Scale)
                .and_then(|r| r.predicted_loss),
            failed: c.failed.keys().copied().collect(),
        }
    }
}

/// One scaled candidate: its runs, the compute-optimal point per budget
/// and the law fitted through them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scaling {
    /// Its id.
    pub arch: ArchId,
    /// The reference layer string.
    pub layers: String,
    /// The paper baseline it is, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// Every run: budget, compute spent, size, validation loss.
    pub runs: Vec<ScalingRun>,
    /// Per budget: the IsoFLOP parabola's minimum.
    pub optima: Vec<Optimum>,
    /// `L*(C) = E + A·(C/C₀)^(−α)`.
    pub law: Law,
    /// The compute the search ranks at, FLOPs.
    pub target_compute: f64,
    /// The law's loss there, nats per token.
    pub predicted_loss: f64,
}

/// One scaling run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScalingRun {
    /// Nominal budget, FLOPs.
    pub budget: f64,
    /// Training FLOPs spent.
    pub compute: f64,
    /// Non-embedding parameters.
    pub params: u64,
    /// Validation loss, nats per token (NaN where the run diverged:
    /// serialised as null).
    pub valid_loss: Option<f64>,
}

/// The compute-optimal point of one budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Optimum {
    /// The budget, FLOPs.
    pub compute: f64,
    /// Compute-optimal parameters.
    pub n_opt: f64,
    /// Loss there.
    pub loss_opt: f64,
    /// Whether the minimum lies within the sizes run.
    pub bracketed: bool,
}

/// The fitted law `L(C) = e + a·(C / c0)^(−alpha)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Law {
    /// Irreducible loss.
    pub e: f64,
    /// Scale at `c0`.
    pub a: f64,
    /// Exponent.
    pub alpha: f64,
    /// Reference compute.
    pub c0: f64,
}

impl Scaling {
    /// The plot's data from candidate `c`'s `scale` result.
    pub fn of(c: &Candidate, r: &ScaleResult) -> Scaling {
        Scaling {
            arch: c.id,
            layers: c.genome.layers_string(),
            baseline: c.baseline.clone(),
            runs: r
                .runs
                .iter()
                .map(|run| ScalingRun {
                    budget: run.planned.budget,
                    compute: run.planned.compute,
                    params: run.planned.member.params,
                    valid_loss: Some(run.result.valid_loss).filter(|l| l.is_finite()),
                })
                .collect(),
            optima: r
                .optima
                .iter()
                .map(|o| Optimum {
                    compute: o.fit.compute,
                    n_opt: o.fit.n_opt,
                    loss_opt: o.fit.loss_opt,
                    bracketed: o.fit.bracketed,
                })
                .collect(),
            law: Law {
                e: r.law.e,
                a: r.law.a,
                alpha: r.law.alpha,
                c0: r.law.c0,
            },
            target_compute: r.settings.target_compute,
            predicted_loss: r.predicted_loss,
        }
    }
}

/// Every candidate of the search in `store` as a point, and every scaled
/// one's fit. A stored `scale` result this build cannot read (written by
/// another version) leaves that candidate out of `scaling`, not the answer.
///
/// # Errors
/// A damaged database.
pub fn points(store: &Store) -> Result<Points, StoreError> {
    let mut candidates = store.candidates()?;
    candidates.sort_by_key(|c| c.seq);
    let mut scaling = Vec::new();
    for c in &candidates {
        if !c.stages.contains_key(&StageName::Scale) {
            continue;
        }
        if let Some(r) = store
            .stage_result(c.id, StageName::Scale)?
            .and_then(|v| serde_json::from_value::<ScaleResult>(v).ok())
        {
            scaling.push(Scaling::of(c, &r));
        }
    }
    Ok(Points {
        schema: POINTS_SCHEMA.into(),
        points: candidates.iter().map(Point::of).collect(),
        scaling,
    })
}
