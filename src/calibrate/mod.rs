//! Calibration: does a preset's screen rank architectures the way MAD does?
//! `mad-search calibrate` evaluates named architectures (by default the
//! paper's baselines) under several seeds, then reports per-task scores with
//! their spread, how stable the ranking is across seeds (Kendall's τ), how
//! well the screen predicts the `mad` stage (Spearman's ρ, Kendall's τ with
//! bootstrap intervals) and which of the paper's findings hold.
//!
//! Every evaluation keeps its runs in a directory of its own
//! (`<dir>/<stage>/<arch>/seed-<k>/`), so an interrupted calibration resumes
//! where it stopped, and a finished one is read back, not re-run.

pub mod clock;
pub mod findings;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::genome::{ArchSpec, Primitive};
use crate::space::{Baseline, StageName, StageSettings};
use crate::stats::{Agreement, agreement, kendall, mean_std};
use crate::tasks::TaskKind;
use findings::{Check, Finding, Scored};

/// The protocol's data seed (every setting's generator; mad-protocol §1).
pub const PROTOCOL_DATA_SEED: u64 = 12345;

/// One architecture to calibrate.
#[derive(Clone, Debug, PartialEq)]
pub struct Subject {
    /// Shown name: the baseline's name, or the layer string.
    pub name: String,
    /// The genome.
    pub spec: ArchSpec,
}

impl Subject {
    /// `spec` under its baseline name when it is one of `baselines`.
    pub fn named(spec: ArchSpec, baselines: &[Baseline]) -> Subject {
        let name = baselines
            .iter()
            .find(|b| b.genome.arch_id() == spec.arch_id())
            .map_or_else(|| spec.compact_string(), |b| b.name.clone());
        Subject { name, spec }
    }

    /// The directory of this subject's evaluations under a stage directory:
    /// its short layer form and the start of its id (stable, readable).
    pub fn dir_name(&self) -> String {
        format!(
            "{}-{}",
            self.spec.short_string(),
            self.spec.arch_id().short()
        )
    }

    fn primitives(&self) -> Vec<Primitive> {
        self.spec.layers.iter().map(|l| l.primitive()).collect()
    }
}

/// Seeds of evaluation `k` of a calibration: model initialisation and batch
/// order from `base + k`, data from the protocol's seed for `k = 0` (so seed
/// 0 is what `eval --seed base` measures) and `12345 + k` after.
pub fn seeds(base: u64, k: usize) -> (u64, Option<u64>) {
    let data = (k > 0).then(|| PROTOCOL_DATA_SEED + k as u64);
    (base.wrapping_add(k as u64), data)
}

/// A finished evaluation as kept in its directory (`result.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Kept {
    /// The identity of the evaluation: genome, stage settings and seeds.
    pub fingerprint: String,
    /// Whether its wall time undercounts: some of its runs were left by
    /// an invocation no clock counted (a version before [`clock`], a clock
    /// lost or damaged). Kept as `resumed`, the name versions before the
    /// clock read and write (with this meaning); `undercounts` is what the
    /// clock's first version wrote.
    #[serde(rename = "resumed", alias = "undercounts")]
    pub undercounts: bool,
    /// Invocations that worked on it (a lower bound where it undercounts;
    /// 1 in results kept before the clock): 1 when it ran without
    /// interruption. Its wall time is their sum (see [`clock`]).
    #[serde(default = "one")]
    pub invocations: u32,
    /// The result.
    pub result: crate::stages::StageResult,
}

fn one() -> u32 {
    1
}

/// Version of the kept-result format and identity; a change makes earlier
/// `result.json` files stale (their runs are still reused where their own
/// identities match).
pub const KEPT_FORMAT: u32 = 1;

/// The identity of one evaluation: the genome, the stage settings, every
/// run's own identity (optimiser, schedule, data, seeds: what the stage's
/// finished-run files are checked against), and the device kind (`cpu`,
/// `cuda`, `wgpu`: results differ in the last bits between them).
pub fn fingerprint(
    spec: &ArchSpec,
    settings: &StageSettings,
    seed: u64,
    data_seed: Option<u64>,
    device: &str,
) -> String {
    let runs = crate::stages::run_fingerprints(spec, settings, seed, data_seed);
    let kind = device.split(':').next().unwrap_or(device);
    let text = serde_json::to_string(&(
        KEPT_FORMAT,
        spec.arch_id().to_string(),
        kind,
        settings,
        runs,
    ))
    .expect("an evaluation's identity serialises");
    blake3::hash(text.as_bytes()).to_hex()[..32].to_string()
}

/// What is at an evaluation's `result.json`.
#[derive(Debug)]
pub enum KeptState {
    /// Nothing: the evaluation has not finished.
    Absent,
    /// The result of this evaluation.
    Current(Box<Kept>),
    /// Of another evaluation identity (the preset, the seeds or the
    /// format changed): it is evaluated again, its runs reused where they
    /// still match (the old result is kept for [`carry_wall_time`]).
    Stale(Box<Kept>),
    /// A file that does not parse (a write cut short by hand, a disk
    /// error): evaluated again, and the file is overwritten.
    Damaged(String),
}

/// What is kept at `dir` for evaluation `print`.
pub fn read_kept(dir: &Path, print: &str) -> KeptState {
    let path = dir.join("result.json");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return KeptState::Absent,
        Err(e) => return KeptState::Damaged(format!("{}: {e}", path.display())),
    };
    match serde_json::from_slice::<Kept>(&bytes) {
        Ok(k) if k.fingerprint == print => KeptState::Current(Box::new(k)),
        Ok(k) => KeptState::Stale(Box::new(k)),
        Err(e) => KeptState::Damaged(format!("{}: {e}", path.display())),
    }
}

/// Re-evaluating a stale result that reused every one of its runs (only
/// the identity's format changed) gives the same runs back: their wall time
/// is then the old evaluation's, not the few milliseconds of reading them.
pub fn carry_wall_time(old: &Kept, new: &mut Kept) {
    let runs = |k: &Kept| -> Vec<crate::train::RunResult> {
        k.result
            .per_setting
            .iter()
            .flat_map(|s| s.runs.iter().map(|r| r.result.clone()))
            .collect()
    };
    if runs(old) == runs(new) && !runs(new).is_empty() {
        new.result.seconds = old.result.seconds;
        new.undercounts = old.undercounts;
        new.invocations = old.invocations;
    }
}

/// Keeps a finished evaluation in `dir`.
///
/// # Errors
/// The file cannot be written.
pub fn write_kept(dir: &Path, kept: &Kept) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(kept).expect("results serialise");
    crate::train::checkpoint::write_atomic(&dir.join("result.json"), &bytes)
}

/// Whether `dir` holds runs of an earlier invocation (checkpoints or
/// finished runs): the evaluation is then a resumption.
pub fn has_runs(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name() != "result.json" && !clock::is_clock_file(&e.file_name()))
}

/// Where evaluation (`stage`, `subject`, seed `k`) keeps its runs.
pub fn eval_dir(root: &Path, stage: StageName, subject: &Subject, k: usize) -> PathBuf {
    root.join(stage.name())
        .join(subject.dir_name())
        .join(format!("seed-{k}"))
}

/// One subject's results at one stage, one per seed (`None` where not run).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SubjectResults {
    /// Shown name.
    pub name: String,
    /// Compact layer string (with parameters where they differ from the defaults).
    pub layers: String,
    /// Per seed.
    pub seeds: Vec<Option<Kept>>,
}

/// Mean ± standard deviation over seeds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (0 for one seed).
    pub std: f64,
}

/// One subject's summary at a stage.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    /// Shown name.
    pub name: String,
    /// Compact layer string (with parameters where they differ from the defaults).
    pub layers: String,
    /// Seeds finished.
    pub seeds: usize,
    /// Per task, over seeds.
    pub per_task: BTreeMap<TaskKind, Spread>,
    /// The MAD score, over seeds.
    pub score: Spread,
    /// Mean wall time of an evaluation, seconds.
    pub seconds: f64,
    /// Whether a finished evaluation's wall time undercounts (some runs
    /// left by an invocation no clock counted).
    pub undercounts: bool,
    /// The most invocations one evaluation took (1: none was interrupted).
    pub invocations: u32,
}

impl SubjectResults {
    fn done(&self) -> Vec<&Kept> {
        self.seeds.iter().flatten().collect()
    }

    /// Mean and spread over the finished seeds; `None` when none finished.
    pub fn summary(&self) -> Option<Summary> {
        let done = self.done();
        if done.is_empty() {
            return None;
        }
        let spread = |v: Vec<f64>| {
            let (mean, std) = mean_std(&v).expect("at least one seed");
            Spread { mean, std }
        };
        let mut tasks: BTreeMap<TaskKind, Vec<f64>> = BTreeMap::new();
        for k in &done {
            for (t, s) in &k.result.per_task {
                tasks.entry(*t).or_default().push(*s);
            }
        }
        Some(Summary {
            name: self.name.clone(),
            layers: self.layers.clone(),
            seeds: done.len(),
            per_task: tasks.into_iter().map(|(t, v)| (t, spread(v))).collect(),
            score: spread(done.iter().map(|k| k.result.score).collect()),
            seconds: done.iter().map(|k| k.result.seconds).sum::<f64>() / done.len() as f64,
            undercounts: done.iter().any(|k| k.undercounts),
            invocations: done.iter().map(|k| k.invocations).max().unwrap_or(1),
        })
    }
}

/// How stable the ranking of the subjects is across seeds: Kendall's τ
/// between each pair of seeds' rankings, over the subjects finished under
/// both.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeedAgreement {
    /// `(seed i, seed j, τ, subjects)` per pair of seeds.
    pub pairs: Vec<(usize, usize, Option<f64>, usize)>,
    /// Mean τ over the pairs with one.
    pub mean: Option<f64>,
}

/// Kendall's τ between the seeds' rankings of `results` by MAD score.
pub fn seed_agreement(results: &[SubjectResults], seeds: usize) -> SeedAgreement {
    let mut pairs = Vec::new();
    for i in 0..seeds {
        for j in i + 1..seeds {
            let (x, y): (Vec<f64>, Vec<f64>) = results
                .iter()
                .filter_map(|r| {
                    let a = r.seeds.get(i)?.as_ref()?;
                    let b = r.seeds.get(j)?.as_ref()?;
                    Some((a.result.score, b.result.score))
                })
                .unzip();
            pairs.push((i, j, kendall(&x, &y), x.len()));
        }
    }
    let taus: Vec<f64> = pairs.iter().filter_map(|p| p.2).collect();
    let mean = (!taus.is_empty()).then(|| taus.iter().sum::<f64>() / taus.len() as f64);
    SeedAgreement { pairs, mean }
}

/// The screen → mad agreement of a calibration run at both stages (means
/// over seeds).
pub fn stage_agreement(screen: &[SubjectResults], mad: &[SubjectResults]) -> Agreement {
    let (x, y): (Vec<f64>, Vec<f64>) = screen
        .iter()
        .zip(mad)
        .filter_map(|(s, m)| Some((s.summary()?.score.mean, m.summary()?.score.mean)))
        .unzip();
    agreement(&x, &y, 0x5eed)
}

/// The findings checked on the subjects' mean scores.
pub fn check_findings(
    findings: &[Finding],
    subjects: &[Subject],
    results: &[SubjectResults],
) -> Vec<Check> {
    let scored: Vec<Scored> = subjects
        .iter()
        .zip(results)
        .filter_map(|(s, r)| {
            let sum = r.summary()?;
            Some(Scored {
                name: s.name.clone(),
                id: s.spec.arch_id(),
                primitives: s.primitives(),
                per_task: sum.per_task.iter().map(|(t, x)| (*t, x.mean)).collect(),
                score: sum.score.mean,
            })
        })
        .collect();
    findings.iter().map(|f| f.check(&scored)).collect()
}

#[cfg(test)]
mod tests;
