//! What `status`, `show` and `export` read, computed from the store alone
//! (plus, when the daemon answers, its live view): the same code serves the
//! socket and a direct read of the database.
//!
//! The JSON form of [`StatusReport`] is `mad-search status --json`'s output
//! (schema `mad-search.status/3`, documented in the README).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::genome::ArchId;
use crate::space::{Operator, StageName};
use crate::stats::Interval;
use crate::store::{Candidate, Counts, Evaluations, Job, JobId, Store, StoreError};

/// Identifies the status schema.
pub const STATUS_SCHEMA: &str = "mad-search.status/3";

/// A job in progress, as the daemon sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunningJob {
    /// The job.
    pub job: JobId,
    /// Its candidate.
    pub arch: ArchId,
    /// Layers string.
    pub layers: String,
    /// The compact form (see [`Row::compact`]).
    #[serde(default)]
    pub compact: String,
    /// Stage.
    pub stage: StageName,
    /// The run of the stage, for a stage split into runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<String>,
    /// Try number.
    pub attempt: u32,
    /// Worker index.
    pub worker: usize,
    /// Seconds since it started.
    pub seconds: f64,
    /// The last progress line.
    pub progress: Option<String>,
}

/// The daemon's live view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Live {
    /// Its pid.
    pub pid: u32,
    /// Seconds since it started.
    pub uptime: f64,
    /// Daemon seconds of earlier runs (the stored total when it started).
    #[serde(default)]
    pub earlier_seconds: f64,
    /// Worker slots.
    pub workers: usize,
    /// Where jobs run (`local`: worker processes; `threads`); empty from a
    /// daemon older than the executors.
    #[serde(default)]
    pub executor: String,
    /// The Slurm side, when jobs run on Slurm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm: Option<crate::exec::slurm::SlurmView>,
    /// Jobs in progress.
    pub running: Vec<RunningJob>,
    /// Why it proposes nothing (budget spent, space exhausted), if so.
    pub idle: Option<String>,
    /// Whether it is draining to stop.
    pub stopping: bool,
}

/// One row of a ranking.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// 1-based rank within its stage.
    pub rank: usize,
    /// Candidate id.
    pub arch: ArchId,
    /// Reference layers string.
    pub layers: String,
    /// The compact form (`mh-attention[kv_heads=4] swiglu`, a width prefix
    /// and a norm suffix where they differ from the defaults): unlike
    /// `layers`, it tells apart genomes that differ only in parameters.
    #[serde(default)]
    pub compact: String,
    /// The stage the score comes from (the most advanced one finished).
    pub stage: Option<StageName>,
    /// Score at that stage.
    pub score: Option<f64>,
    /// Per-task scores at that stage.
    pub per_task: BTreeMap<String, f64>,
    /// At `scale`: the loss predicted at the preset's target compute; at
    /// `overtrain`: the loss at the largest token multiple (`score` is
    /// `exp(−predicted_loss)` at both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_loss: Option<f64>,
    /// Non-embedding parameters.
    pub params: u64,
    /// Recurrent state at the budget's context.
    pub state: u64,
    /// Baseline name, if one.
    pub baseline: Option<String>,
}

/// Budget use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BudgetReport {
    /// Wall-time budget, hours.
    pub hours: Option<f64>,
    /// Hours the daemon has run.
    pub hours_used: f64,
    /// Per stage: (budget, evaluations done or failed).
    pub evaluations: BTreeMap<StageName, (Option<u64>, u64)>,
    /// Hours until a budget is spent at the current throughput.
    pub forecast_hours_left: Option<f64>,
}

/// `mad-search status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// [`STATUS_SCHEMA`].
    pub schema: String,
    /// The state dir.
    pub state_dir: String,
    /// Search name.
    pub name: String,
    /// Preset.
    pub preset: String,
    /// Seed.
    pub seed: u64,
    /// Space file.
    pub space: String,
    /// The daemon, when it answered.
    pub daemon: Option<Live>,
    /// Candidates in the population.
    pub candidates: u64,
    /// Jobs per stage and state (a `mad` or `scale` evaluation is one job
    /// per run).
    pub jobs: BTreeMap<StageName, Counts>,
    /// Evaluations (candidates through a stage) per stage.
    #[serde(default)]
    pub evaluations: BTreeMap<StageName, Evaluations>,
    /// Evaluations finished per hour of daemon time.
    pub throughput_per_hour: Option<f64>,
    /// Budget use and forecast.
    pub budget: BudgetReport,
    /// The best candidates: the `scale` board (by predicted loss), then
    /// `mad`, then `screen`.
    pub leaderboard: Vec<Row>,
    /// Non-dominated candidates (score up, params down, state down) per stage.
    pub pareto: BTreeMap<StageName, Vec<Row>>,
    /// The paper's architectures, for reference.
    pub baselines: Vec<Row>,
    /// Spearman's ρ and Kendall's τ between consecutive stages (screen →
    /// mad, mad → scale's predicted likelihood): the paper's claim that
    /// cheap synthetic scores predict scaling, re-tested on this search.
    #[serde(default)]
    pub correlations: Vec<Correlation>,
    /// Every candidate through `scale`, in the paper's three regimes
    /// (compute-optimal, overtrained, state-optimal), by predicted loss.
    #[serde(default)]
    pub regimes: Vec<RegimeRow>,
}

/// One scaled candidate in the paper's three regimes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegimeRow {
    /// Candidate id.
    pub arch: ArchId,
    /// Reference layers string.
    pub layers: String,
    /// The compact form (see [`Row::compact`]).
    #[serde(default)]
    pub compact: String,
    /// Baseline name, if one.
    pub baseline: Option<String>,
    /// Compute-optimal: the loss the power law predicts at `target_compute`.
    pub predicted_loss: f64,
    /// Its standard error, where the fit has residual degrees of freedom.
    pub predicted_se: Option<f64>,
    /// The preset's target compute, FLOPs.
    pub target_compute: f64,
    /// The preset's largest budget, FLOPs.
    pub budget: f64,
    /// The compute-optimal loss there (the IsoFLOP minimum); `None` where
    /// the candidate's fit left that budget out (diverged runs).
    pub loss_opt: Option<f64>,
    /// The compute-optimal size there, non-embedding parameters.
    pub n_opt: Option<f64>,
    /// State-optimal: the recurrent state of the compute-optimal model at
    /// `budget` (fixed state plus the KV cache of `state_context` tokens).
    pub state_opt: Option<f64>,
    /// The context length the state counts attention's cache at.
    pub state_context: usize,
    /// `c` of `L* ∝ M^c` across the budgets (state `M` of each budget's
    /// compute-optimal model).
    pub state_exponent: Option<f64>,
    /// Its standard error.
    pub state_exponent_se: Option<f64>,
    /// Whether (`loss_opt`, `state_opt`) is on the front of the scaled
    /// candidates that have them (no other is at least as good on both and
    /// better on one).
    pub state_front: bool,
    /// Overtrained: the validation loss at the largest token multiple.
    pub overtrained_loss: Option<f64>,
    /// That multiple of the compute-optimal tokens.
    pub overtrain_multiple: Option<f64>,
    /// The budget whose compute-optimal size was overtrained, FLOPs.
    pub overtrain_budget: Option<f64>,
    /// The overtrained model's non-embedding parameters.
    pub overtrain_params: Option<u64>,
    /// Training tokens per parameter there.
    pub overtrain_tokens_per_param: Option<f64>,
}

/// The regimes of every candidate through `scale`, by predicted loss, and
/// which of them are on the (loss, state) front.
fn regimes(store: &Store) -> Result<Vec<RegimeRow>, StoreError> {
    use crate::stages::overtrain::OvertrainResult;
    use crate::stages::scale::ScaleResult;
    let n = store.board_len(StageName::Scale)?;
    let mut rows = Vec::new();
    for c in store.top(StageName::Scale, n)? {
        let Some(scale) = store
            .stage_result(c.id, StageName::Scale)?
            .and_then(|v| serde_json::from_value::<ScaleResult>(v).ok())
        else {
            continue;
        };
        let budget = scale.settings.budgets.iter().copied().fold(0.0, f64::max);
        let last = scale.optima.iter().find(|o| o.fit.compute == budget);
        let over = store
            .stage_result(c.id, StageName::Overtrain)?
            .and_then(|v| serde_json::from_value::<OvertrainResult>(v).ok());
        let top = over.as_ref().and_then(|o| o.points.last());
        rows.push(RegimeRow {
            arch: c.id,
            layers: c.genome.layers_string(),
            compact: c.genome.compact_string(),
            baseline: c.baseline.clone(),
            predicted_loss: scale.predicted_loss,
            predicted_se: scale.predicted_se,
            target_compute: scale.settings.target_compute,
            budget,
            loss_opt: last.map(|o| o.fit.loss_opt),
            n_opt: last.map(|o| o.fit.n_opt),
            state_opt: last.map(|o| o.state),
            state_context: scale.settings.seq_len,
            state_exponent: scale.state_law.as_ref().map(|l| l.exponent),
            state_exponent_se: scale.state_law.as_ref().and_then(|l| l.exponent_se),
            state_front: false,
            overtrained_loss: over.as_ref().map(|o| o.loss),
            overtrain_multiple: top.map(|p| p.multiple),
            overtrain_budget: over.as_ref().map(|o| o.base_budget),
            overtrain_params: top.map(|p| p.run.planned.member.params),
            overtrain_tokens_per_param: top.map(|p| p.tokens_per_param),
        });
    }
    // The front over the candidates measured at that budget (all of one
    // search share the preset's budgets).
    let measured: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].loss_opt.is_some() && rows[i].state_opt.is_some())
        .collect();
    let points: Vec<(f64, f64)> = measured
        .iter()
        .map(|&i| {
            (
                rows[i].loss_opt.unwrap_or(0.0),
                rows[i].state_opt.unwrap_or(0.0),
            )
        })
        .collect();
    for (k, &i) in measured.iter().enumerate() {
        rows[i].state_front = on_front(&points, k);
    }
    Ok(rows)
}

/// Whether `points[i]` is dominated by no other point (both coordinates
/// minimised; equal points do not dominate each other).
pub fn on_front(points: &[(f64, f64)], i: usize) -> bool {
    let (a, b) = points[i];
    !points
        .iter()
        .any(|&(x, y)| x <= a && y <= b && (x < a || y < b))
}

fn row(c: &Candidate, rank: usize, stage: Option<StageName>) -> Row {
    let stage = stage.or_else(|| c.best_stage().map(|(s, _)| s));
    let summary = stage.and_then(|s| c.stages.get(&s));
    Row {
        rank,
        arch: c.id,
        layers: c.genome.layers_string(),
        compact: c.genome.compact_string(),
        stage: summary.and(stage),
        score: summary.map(|s| s.score),
        per_task: summary
            .map(|s| {
                s.per_task
                    .iter()
                    .map(|(t, v)| (t.name().to_string(), *v))
                    .collect()
            })
            .unwrap_or_default(),
        predicted_loss: summary.and_then(|s| s.predicted_loss),
        params: c.params,
        state: c.state,
        baseline: c.baseline.clone(),
    }
}

/// How well one stage's scores predict the next's, over the candidates
/// finished at both: Spearman's ρ and Kendall's τ, each with a 90 %
/// bootstrap interval, from [`crate::stats::MIN_AGREEMENT_PAIRS`]
/// candidates on (below, only the count).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Correlation {
    /// The cheaper stage.
    pub from: StageName,
    /// The stage it should predict.
    pub to: StageName,
    /// ρ (`None` below five candidates or with a constant side).
    pub rho: Option<f64>,
    /// ρ's 90 % percentile-bootstrap interval.
    #[serde(default)]
    pub rho_interval: Option<Interval>,
    /// Kendall's τ-b.
    #[serde(default)]
    pub tau: Option<f64>,
    /// τ's 90 % percentile-bootstrap interval.
    #[serde(default)]
    pub tau_interval: Option<Interval>,
    /// Candidates it rests on.
    pub candidates: usize,
}

/// The correlation of each stage with the next, over the later stage's
/// board (the smaller one).
fn correlations(store: &Store) -> Result<Vec<Correlation>, StoreError> {
    let mut out = Vec::new();
    for pair in StageName::ALL.windows(2) {
        let (from, to) = (pair[0], pair[1]);
        let n = store.board_len(to)?;
        if n == 0 {
            continue;
        }
        let (x, y): (Vec<f64>, Vec<f64>) = store
            .top(to, n)?
            .iter()
            .filter_map(|c| Some((c.stages.get(&from)?.score, c.stages.get(&to)?.score)))
            .unzip();
        let a = crate::stats::agreement(&x, &y, 0x5eed);
        out.push(Correlation {
            from,
            to,
            rho: a.spearman.map(|e| e.value),
            rho_interval: a.spearman.and_then(|e| e.interval),
            tau: a.kendall.map(|e| e.value),
            tau_interval: a.kendall.and_then(|e| e.interval),
            candidates: a.n,
        });
    }
    Ok(out)
}

/// The status of the search in `store`.
///
/// # Errors
/// A damaged database.
pub fn status(store: &Store, live: Option<Live>, top: usize) -> Result<StatusReport, StoreError> {
    let record = store.search()?.ok_or_else(|| StoreError::Corrupt {
        dir: store.dir().to_owned(),
        detail: "no search record".into(),
    })?;
    let stats = store.stats()?;
    // The stored total lags a running daemon by up to 30 s: count its uptime instead.
    let hours_used = live
        .as_ref()
        .map_or(stats.daemon_seconds, |l| l.earlier_seconds + l.uptime)
        / 3600.0;
    let spent: u64 = stats.evaluations.values().map(Evaluations::spent).sum();
    let throughput = (hours_used > 0.0 && spent > 0).then(|| spent as f64 / hours_used);
    let mut evaluations = BTreeMap::new();
    let mut forecast: Option<f64> = record.budget.hours.map(|h| (h - hours_used).max(0.0));
    for &stage in StageName::ALL {
        let max = record.budget.evaluations.get(&stage).copied();
        let used = stats.evaluations.get(&stage).map_or(0, Evaluations::spent);
        if max.is_some() || used > 0 {
            evaluations.insert(stage, (max, used));
        }
        // The search ends when the screen budget is spent (later stages only
        // receive promotions), so only it bounds the forecast.
        if let (StageName::Screen, Some(max), Some(rate)) = (stage, max, throughput) {
            // The stage's share of the throughput so far.
            let share = used as f64 / spent.max(1) as f64;
            if share > 0.0 {
                let left = max.saturating_sub(used) as f64 / (rate * share);
                forecast = Some(forecast.map_or(left, |f| f.min(left)));
            }
        }
    }
    let mut leaderboard = Vec::new();
    let mut listed = std::collections::HashSet::new();
    for &stage in StageName::ALL.iter().rev() {
        if leaderboard.len() >= top {
            break;
        }
        // Ask for as many more as are listed already, so that every stage
        // can fill the board: the board for `top` is then a prefix of the
        // board for any larger top (what the status snapshot relies on).
        for (i, c) in store
            .top(stage, top.saturating_add(listed.len()))?
            .iter()
            .enumerate()
        {
            if leaderboard.len() >= top {
                break;
            }
            if listed.insert(c.id) {
                leaderboard.push(row(c, i + 1, Some(stage)));
            }
        }
    }
    let mut pareto = BTreeMap::new();
    for &stage in StageName::ALL {
        let front = store.front(stage)?;
        if front.is_empty() {
            continue;
        }
        let mut rows = Vec::with_capacity(front.len());
        for p in front {
            if let Some(c) = store.candidate(p.arch)? {
                let rank = store.rank_of(stage, p.score, p.arch)? + 1;
                rows.push(row(&c, rank, Some(stage)));
            }
        }
        pareto.insert(stage, rows);
    }
    let mut baselines = Vec::new();
    for (_, id) in store.baselines()? {
        if let Some(c) = store.candidate(id)? {
            let rank = match c.best_stage() {
                Some((s, r)) => store.rank_of(s, r.score, c.id)? + 1,
                None => 0,
            };
            baselines.push(row(&c, rank, None));
        }
    }
    Ok(StatusReport {
        schema: STATUS_SCHEMA.into(),
        state_dir: store.dir().display().to_string(),
        name: record.name,
        preset: record.preset,
        seed: record.seed,
        space: record.space_file,
        daemon: live,
        candidates: stats.candidates,
        jobs: stats.jobs,
        evaluations: stats.evaluations,
        throughput_per_hour: throughput,
        budget: BudgetReport {
            hours: record.budget.hours,
            hours_used,
            evaluations,
            forecast_hours_left: forecast,
        },
        leaderboard,
        pareto,
        baselines,
        correlations: correlations(store)?,
        regimes: regimes(store)?,
    })
}

/// One ancestor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ancestor {
    /// Generations back (1 = parent).
    pub depth: usize,
    /// Its id.
    pub arch: ArchId,
    /// How it was made.
    pub operator: Operator,
    /// Its layers.
    pub layers: String,
}

/// One candidate in full: `mad-search show`, and what `export` writes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CandidateReport {
    /// The record.
    pub candidate: Candidate,
    /// Reference layers string.
    pub layers: String,
    /// Its rank per finished stage (1-based).
    pub ranks: BTreeMap<StageName, usize>,
    /// Ancestors, breadth first (at most 32).
    pub lineage: Vec<Ancestor>,
    /// Its jobs.
    pub jobs: Vec<Job>,
    /// Results of its finished runs, by job (stages split into runs).
    pub results: BTreeMap<JobId, serde_json::Value>,
    /// Full results of its finished stages (with every setting, run and
    /// time).
    #[serde(default)]
    pub stage_results: BTreeMap<StageName, serde_json::Value>,
    /// The search's preset and seed.
    pub preset: String,
    /// Seed.
    pub seed: u64,
}

impl CandidateReport {
    /// What the score of `stage` measures, from its stage result: "micro
    /// accuracy" or "macro accuracy" (the protocol's, and that of results
    /// from before presets chose), or `None` for `scale` and `overtrain`
    /// (losses) or a stage without a full result.
    pub fn scored_by(&self, stage: StageName) -> Option<String> {
        if matches!(stage, StageName::Scale | StageName::Overtrain) {
            return None;
        }
        let settings = self.stage_results.get(&stage)?.get("settings")?;
        let metric = settings
            .get("metric")
            .and_then(|m| m.as_str())
            .unwrap_or(crate::space::Metric::Macro.name());
        Some(format!("{metric} accuracy"))
    }
}

/// Why `show` found nothing.
#[derive(Debug, thiserror::Error)]
pub enum ShowError {
    /// No candidate matches.
    #[error("no candidate with an id starting `{0}` (ids are hex; `mad-search status` lists them)")]
    Unknown(String),
    /// Several match.
    #[error("`{prefix}` matches several candidates: {}; give more digits", matches.join(", "))]
    Ambiguous {
        /// The prefix given.
        prefix: String,
        /// Some of the matches.
        matches: Vec<String>,
    },
    /// Not hex.
    #[error("`{0}` is not an id prefix (expected at least 4 hex digits, or a baseline's name)")]
    Malformed(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The full report of the candidate whose id starts with `key` (or the
/// baseline named `key`).
///
/// # Errors
/// No match, several, or a damaged database.
pub fn show(store: &Store, key: &str) -> Result<CandidateReport, ShowError> {
    let key = key.trim();
    if let Some((_, id)) = store
        .baselines()?
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(key))
    {
        return candidate_report(store, id)?.ok_or(ShowError::Unknown(key.into()));
    }
    if key.len() < 4 || key.len() > 32 || !key.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ShowError::Malformed(key.into()));
    }
    let found = store.candidates_with_prefix(key, 6)?;
    match found.len() {
        0 => Err(ShowError::Unknown(key.into())),
        1 => Ok(candidate_report(store, found[0].id)?.ok_or(ShowError::Unknown(key.into()))?),
        _ => Err(ShowError::Ambiguous {
            prefix: key.into(),
            matches: found.iter().map(|c| c.id.short()).collect(),
        }),
    }
}

/// The full report of candidate `id`.
///
/// # Errors
/// A damaged database.
pub fn candidate_report(store: &Store, id: ArchId) -> Result<Option<CandidateReport>, StoreError> {
    let Some(c) = store.candidate(id)? else {
        return Ok(None);
    };
    let record = store.search()?;
    let mut ranks = BTreeMap::new();
    for (stage, s) in &c.stages {
        ranks.insert(*stage, store.rank_of(*stage, s.score, c.id)? + 1);
    }
    let mut lineage = Vec::new();
    let mut frontier: Vec<(usize, ArchId)> = c.parents.iter().map(|p| (1, *p)).collect();
    let mut seen = std::collections::HashSet::new();
    while let Some((depth, p)) = (!frontier.is_empty()).then(|| frontier.remove(0)) {
        if lineage.len() >= 32 || !seen.insert(p) {
            continue;
        }
        if let Some(a) = store.candidate(p)? {
            frontier.extend(a.parents.iter().map(|q| (depth + 1, *q)));
            lineage.push(Ancestor {
                depth,
                arch: a.id,
                operator: a.operator,
                layers: a.genome.layers_string(),
            });
        }
    }
    let mut jobs = Vec::new();
    let mut results = BTreeMap::new();
    for &j in &c.jobs {
        if let Some(job) = store.job(j)? {
            jobs.push(job);
        }
        if let Some(r) = store.result(j)? {
            results.insert(j, r);
        }
    }
    let mut stage_results = BTreeMap::new();
    for &stage in c.stages.keys() {
        if let Some(r) = store.stage_result(c.id, stage)? {
            stage_results.insert(stage, r);
        }
    }
    Ok(Some(CandidateReport {
        layers: c.genome.layers_string(),
        candidate: c,
        ranks,
        lineage,
        jobs,
        results,
        stage_results,
        preset: record
            .as_ref()
            .map(|r| r.preset.clone())
            .unwrap_or_default(),
        seed: record.map_or(0, |r| r.seed),
    }))
}

/// Which candidates `export` takes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Selection {
    /// The best `n` of the leaderboard.
    Top(usize),
    /// The Pareto front of the most advanced stage with results.
    Pareto,
    /// The front of one of the paper's scaling regimes.
    Regime(Regime),
}

/// The paper's three views of scaling, for `export --pareto --view`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Regime {
    /// Compute-optimal: the `scale` stage's front (predicted loss ↓,
    /// parameters ↓, state ↓).
    Compute,
    /// Overtrained: the `overtrain` stage's front (loss at the largest
    /// multiple ↓, parameters ↓, state ↓).
    Overtrained,
    /// State-optimal: compute-optimal loss ↓ against the state of the
    /// compute-optimal model ↓, at the largest budget.
    State,
}

/// The ids on `stage`'s Pareto front.
fn front_ids(store: &Store, stage: StageName) -> Result<Vec<ArchId>, StoreError> {
    Ok(store.front(stage)?.iter().map(|p| p.arch).collect())
}

/// The candidates of `selection`, best first.
///
/// # Errors
/// A damaged database.
pub fn select(store: &Store, selection: Selection) -> Result<Vec<CandidateReport>, StoreError> {
    let ids: Vec<ArchId> = match selection {
        Selection::Top(n) => status(store, None, n)?
            .leaderboard
            .iter()
            .map(|r| r.arch)
            .collect(),
        Selection::Regime(Regime::Compute) => front_ids(store, StageName::Scale)?,
        Selection::Regime(Regime::Overtrained) => front_ids(store, StageName::Overtrain)?,
        Selection::Regime(Regime::State) => {
            let mut rows: Vec<RegimeRow> = regimes(store)?
                .into_iter()
                .filter(|r| r.state_front)
                .collect();
            rows.sort_by(|a, b| {
                a.loss_opt
                    .unwrap_or(f64::INFINITY)
                    .total_cmp(&b.loss_opt.unwrap_or(f64::INFINITY))
            });
            rows.iter().map(|r| r.arch).collect()
        }
        Selection::Pareto => {
            let mut ids = Vec::new();
            for &stage in StageName::ALL.iter().rev() {
                let front = store.front(stage)?;
                if !front.is_empty() {
                    ids = front.iter().map(|p| p.arch).collect();
                    break;
                }
            }
            ids
        }
    };
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(r) = candidate_report(store, id)? {
            out.push(r);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::on_front;

    #[test]
    fn the_state_front_keeps_the_undominated() {
        // (loss, state): b dominates d; a and c trade loss for state; e
        // equals a (neither dominates the other).
        let pts = [
            (2.0, 100.0),
            (2.5, 50.0),
            (3.0, 10.0),
            (2.6, 60.0),
            (2.0, 100.0),
        ];
        let front: Vec<bool> = (0..pts.len()).map(|i| on_front(&pts, i)).collect();
        assert_eq!(front, vec![true, true, true, false, true]);
        assert!(on_front(&[(1.0, 1.0)], 0));
    }
}
