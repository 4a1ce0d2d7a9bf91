//! Stages: what a candidate runs at each rung and how it is scored
//! (design §6). `screen` runs each task's baseline setting under one
//! optimiser setting; `mad` runs the protocol's grid and lr × wd sweep
//! (mad-protocol §2): per setting the best test accuracy over the sweep, per
//! task the mean over its settings, overall the mean of the tasks. Scores
//! are accuracies by the preset's `metric` (macro, the reference's, unless
//! the preset says micro); both are kept.

pub mod overtrain;
pub mod scale;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use crate::genome::ArchSpec;
use crate::space::{Grid, StageName, StageSettings};
use crate::tasks::{Dataset, Splits, TaskKind, TaskSetting};
use crate::train::checkpoint::write_atomic;
use crate::train::{
    CheckpointError, EpochReport, Metric, RunConfig, RunControl, RunResult, Scores, TrainError, run,
};

/// One optimiser setting's run on one task setting.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepRun {
    /// Learning rate.
    pub lr: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// What the run produced.
    pub result: RunResult,
}

/// One task setting: its runs and its best test scores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SettingResult {
    /// The data setting (after the preset's caps).
    pub setting: TaskSetting,
    /// One run per (lr, wd).
    pub runs: Vec<SweepRun>,
    /// Best test accuracy over the runs (by the stage's metric).
    pub best: Scores,
}

/// A stage's verdict on one genome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageResult {
    /// Which stage.
    pub stage: StageName,
    /// The stage settings used.
    pub settings: StageSettings,
    /// Per task setting.
    pub per_setting: Vec<SettingResult>,
    /// Per task: mean of its settings' best accuracy by the stage's metric
    /// (`settings.metric`).
    pub per_task: BTreeMap<TaskKind, f64>,
    /// Mean of the task scores.
    pub score: f64,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// Progress of a stage, for bars and logs.
#[derive(Clone, Debug)]
pub struct StageProgress<'a> {
    /// The run's task setting.
    pub setting: &'a TaskSetting,
    /// Its learning rate and weight decay.
    pub lr: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Index of this run among the stage's runs, and their number.
    pub run: (usize, usize),
    /// The epoch just finished.
    pub epoch: &'a EpochReport,
    /// The accuracy the stage selects and scores by.
    pub metric: Metric,
}

impl StageProgress<'_> {
    /// The validation accuracy after this epoch, by the stage's metric.
    pub fn valid(&self) -> f64 {
        self.epoch.valid.of(self.metric)
    }
}

/// The task settings a stage runs, with the preset's caps applied.
///
/// Caps can make two of the grid's settings one: under `cpu`'s 64-token
/// cap, fuzzy recall at length 256, 512 and 1,024 is its baseline at 64
/// (and under a 3,200-example cap, so would be 6,400 and 3,200 examples).
/// Such a setting is kept once, where it first appears (53 of the 66 under
/// `cpu`): the same experiment run twice would cost a second run for the
/// same numbers, would weigh the baseline four times in its task's mean,
/// and two workers running it at once would share one checkpoint file.
pub fn stage_settings(s: &StageSettings) -> Vec<TaskSetting> {
    let mut out: Vec<TaskSetting> = Vec::new();
    for &task in &s.tasks {
        let grid = match s.grid {
            Grid::Baseline => vec![TaskSetting::baseline(task)],
            Grid::Full => TaskSetting::grid(task),
        };
        for mut setting in grid {
            if let Some(cap) = s.train_examples_of(task) {
                setting.num_train = setting.num_train.min(cap);
            }
            setting.num_test = s.test_examples;
            setting.num_valid = s.test_examples;
            if let Some(cap) = s.max_seq_len {
                shorten(&mut setting, cap);
            }
            if !out.contains(&setting) {
                out.push(setting);
            }
        }
    }
    out
}

/// Caps the sequence length, keeping the task's constraints.
fn shorten(s: &mut TaskSetting, cap: usize) {
    let min = match s.task {
        TaskKind::SelectiveCopying => 2 * s.tokens_to_copy + 2,
        TaskKind::FuzzyInContextRecall => 4 * (s.k_motif + s.v_motif) + 2,
        _ => 4,
    };
    let len = s.seq_len.min(cap.max(min));
    s.seq_len = len + len % 2;
}

/// How a stage runs: where its runs keep checkpoints and finished results,
/// how many run side by side, and who may stop it.
#[derive(Clone, Copy, Debug)]
pub struct StageControl<'a> {
    /// Directory for this (genome, stage, seed): one checkpoint per run in
    /// progress and one result file per finished run. A stage started again
    /// with the same directory reuses finished runs and resumes the others.
    pub dir: Option<&'a Path>,
    /// Checkpoint interval in optimiser steps.
    pub checkpoint_every: usize,
    /// Raised to stop: runs checkpoint and the stage returns
    /// [`TrainError::Interrupted`].
    pub stop: Option<&'a AtomicBool>,
    /// Runs side by side (each in its own thread pool).
    pub parallel: usize,
    /// Threads per run's pool; `None` with `parallel == 1` uses the caller's pool.
    pub threads: Option<usize>,
    /// Read each setting's data from this root in the reference layout
    /// (`<root>/<setting dir>/{train,test}/{inputs,targets}.npy`) instead of
    /// generating it; the test split doubles as validation split, as in the
    /// reference. The preset's example caps keep the first rows.
    pub data: Option<&'a Path>,
    /// Generate every setting's data from this seed instead of the
    /// protocol's (12345): another draw of the same tasks, for measuring how
    /// much a score owes to its data (`calibrate --seeds`). Not used with
    /// `data`.
    pub data_seed: Option<u64>,
}

impl Default for StageControl<'_> {
    fn default() -> Self {
        StageControl {
            dir: None,
            checkpoint_every: 50,
            stop: None,
            parallel: 1,
            threads: None,
            data: None,
            data_seed: None,
        }
    }
}

/// `settings` with their data drawn from `ctl.data_seed`, when it is set.
fn reseeded(mut settings: Vec<TaskSetting>, ctl: &StageControl<'_>) -> Vec<TaskSetting> {
    if let Some(seed) = ctl.data_seed {
        for s in &mut settings {
            s.seed = seed;
        }
    }
    settings
}

/// A finished run as stored in the stage directory.
#[derive(Serialize, Deserialize)]
struct DoneRun<T> {
    fingerprint: String,
    run: T,
}

/// The finished run at `path`, if it is there and of the run `print`.
pub(crate) fn read_done<T: serde::de::DeserializeOwned>(path: &Path, print: &str) -> Option<T> {
    let text = std::fs::read(path).ok()?;
    let done: DoneRun<T> = serde_json::from_slice(&text).ok()?;
    (done.fingerprint == print).then_some(done.run)
}

/// Records a finished run at `path`, then removes its checkpoint `ckpt`.
///
/// # Errors
/// The file cannot be written.
pub(crate) fn write_done<T: Serialize>(
    path: &Path,
    ckpt: &Path,
    print: String,
    run: &T,
) -> Result<(), TrainError> {
    let bytes = serde_json::to_vec_pretty(&DoneRun {
        fingerprint: print,
        run,
    })
    .expect("results serialise");
    write_atomic(path, &bytes).map_err(|source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    })?;
    remove_with_leftovers(ckpt);
    Ok(())
}

/// The file stem of one run in a stage directory.
fn run_key(setting: &TaskSetting, lr: f64, wd: f64) -> String {
    format!("{}_lr{lr:e}_wd{wd:e}", setting.reference_dir_name())
}

/// A setting directory's name without its example counts (`ntr-`, `nte-`),
/// which presets cap.
fn without_counts(name: &str) -> String {
    name.split('_')
        .filter(|f| !f.starts_with("ntr-") && !f.starts_with("nte-"))
        .collect::<Vec<_>>()
        .join("_")
}

/// The directory under `root` holding `setting`'s data: the exact name, or
/// one that differs only in its example counts (the preset keeps fewer).
fn find_data_dir(setting: &TaskSetting, root: &Path) -> Option<PathBuf> {
    let exact = setting.data_dir(root);
    if exact.is_dir() {
        return Some(exact);
    }
    let want = without_counts(&setting.reference_dir_name());
    let mut found: Vec<PathBuf> = std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir() && without_counts(&e.file_name().to_string_lossy()) == want)
        .map(|e| e.path())
        .collect();
    found.sort();
    found.pop()
}

/// The splits of `setting` from reference-layout files under `root`.
fn load_splits(setting: &TaskSetting, root: &Path) -> Result<Splits, TrainError> {
    let Some(dir) = find_data_dir(setting, root) else {
        return Err(TrainError::Data(format!(
            "no data for setting {} under {} (looked for that directory, with any example \
             counts; a preset's max_seq_len changes the names: use one without it, such as \
             `paper`)",
            setting.reference_dir_name(),
            root.display()
        )));
    };
    let read = |split: &str, keep: usize| -> Result<Dataset, TrainError> {
        let mut d =
            Dataset::load_npy(&dir.join(split)).map_err(|e| TrainError::Data(e.to_string()))?;
        if d.len != setting.model_len() {
            return Err(TrainError::Data(format!(
                "{}: sequences of length {}, but setting {} needs {}",
                dir.join(split).display(),
                d.len,
                setting.reference_dir_name(),
                setting.model_len()
            )));
        }
        if keep > d.n {
            return Err(TrainError::Data(format!(
                "{}: {} examples, the preset needs {keep}",
                dir.join(split).display(),
                d.n
            )));
        }
        if keep < d.n {
            d.n = keep;
            d.inputs.truncate(keep * d.len);
            d.targets.truncate(keep * d.len);
        }
        Ok(d)
    };
    let train = read("train", setting.num_train)?;
    let test = read("test", setting.num_test)?;
    Ok(Splits {
        train,
        valid: test.clone(),
        test,
    })
}

/// Removes `path` and the temporary files a killed writer left beside it
/// (`<name>.<pid>-<n>.tmp`).
fn remove_with_leftovers(path: &Path) {
    let _ = std::fs::remove_file(path);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let prefix = format!("{}.", name.to_string_lossy());
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let n = entry.file_name().to_string_lossy().into_owned();
        if n.starts_with(&prefix) && n.ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The optimiser settings of one run of `task`.
fn run_config(settings: &StageSettings, task: TaskKind, lr: f64, wd: f64, seed: u64) -> RunConfig {
    RunConfig {
        lr,
        weight_decay: wd,
        betas: settings.betas,
        batch_size: settings.batch_size,
        max_epochs: settings.max_epochs_of(task),
        max_steps: settings.max_steps_of(task),
        early_stop: settings.early_stop,
        embedding_std: settings.embedding_std,
        patience: settings.patience_of(task),
        metric: settings.metric,
        seed,
        ..RunConfig::default()
    }
}

/// Runs `one(0..total)`, `parallel` at a time (each in its own pool of
/// `threads`), and returns the results in index order. The first error
/// stops the others from starting; an interruption wins over success.
///
/// # Errors
/// The first error of a run, or [`TrainError::Interrupted`].
pub(crate) fn side_by_side<T: Send>(
    total: usize,
    parallel: usize,
    threads: Option<usize>,
    one: impl Fn(usize) -> Result<T, TrainError> + Sync,
) -> Result<Vec<T>, TrainError> {
    let slots: Vec<Mutex<Option<Result<T, TrainError>>>> =
        (0..total).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let parallel = parallel.clamp(1, total.max(1));
    let worker = || {
        let pool = (parallel > 1 || threads.is_some()).then(|| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads.unwrap_or(1))
                .build()
                .expect("a thread pool")
        });
        loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            if index >= total || failed.load(Ordering::Relaxed) {
                break;
            }
            let r = match &pool {
                Some(p) => p.install(|| one(index)),
                None => one(index),
            };
            if r.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            *slots[index].lock().expect("no poisoning") = Some(r);
        }
    };
    if parallel == 1 {
        worker();
    } else {
        std::thread::scope(|s| {
            for _ in 0..parallel {
                s.spawn(worker);
            }
        });
    }
    let mut runs = Vec::with_capacity(total);
    let mut interrupted = None;
    for slot in slots {
        match slot.into_inner().expect("no poisoning") {
            Some(Ok(r)) => runs.push(r),
            Some(Err(TrainError::Interrupted { steps })) => {
                interrupted.get_or_insert(TrainError::Interrupted { steps });
            }
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    if let Some(e) = interrupted {
        return Err(e);
    }
    if runs.len() < total {
        return Err(TrainError::Interrupted { steps: 0 });
    }
    Ok(runs)
}

/// The jobs a candidate's evaluation at `stage` is split into, by name:
/// none for `screen` (one job: minutes, and the bulk of a search), one per
/// task setting for `mad` (66 in the full grid, each with its lr × wd
/// sweep), one per training run for `scale` (budgets × sizes) and for
/// `overtrain` (its multiples, from the candidate's `scale` result). Split stages
/// spread one candidate over every free worker, and a retry, a lapsed lease
/// or a kill costs one run, not the stage.
///
/// # Errors
/// What [`scale::planned_runs`] finds wrong with the genome or the corpus
/// (the caller then queues the stage whole, and its job fails with this
/// error where failures are recorded).
pub fn stage_parts(
    stage: StageName,
    preset: &crate::space::Preset,
    spec: &ArchSpec,
    corpus: &crate::scale::corpus::Corpus,
    scale_result: Option<&scale::ScaleResult>,
) -> Result<Vec<String>, TrainError> {
    match stage {
        StageName::Screen => Ok(Vec::new()),
        StageName::Mad => Ok(setting_keys(&preset.mad)),
        StageName::Scale => Ok(scale::planned_runs(spec, &preset.scale, corpus)?
            .iter()
            .map(|p| p.key())
            .collect()),
        StageName::Overtrain => match scale_result {
            Some(r) => overtrain::parts(spec, &preset.scale, corpus, r),
            None => Err(TrainError::Data(
                "the overtrain stage starts from the candidate's scale result, and it has none"
                    .into(),
            )),
        },
    }
}

/// The identities of the runs [`evaluate`] runs for (`spec`, `settings`,
/// `seed`, `data_seed`): one per task setting × optimiser setting, in the
/// stage's order. A kept stage result whose runs' identities differ from
/// these is stale (the preset, the code's defaults or the data changed).
pub fn run_fingerprints(
    spec: &ArchSpec,
    settings: &StageSettings,
    seed: u64,
    data_seed: Option<u64>,
) -> Vec<String> {
    let ctl = StageControl {
        data_seed,
        ..StageControl::default()
    };
    let sweep = sweep(settings);
    reseeded(stage_settings(settings), &ctl)
        .iter()
        .flat_map(|s| {
            sweep.iter().map(move |&(lr, wd)| {
                crate::train::run::fingerprint(spec, s, &run_config(settings, s.task, lr, wd, seed))
            })
        })
        .collect()
}

/// The optimiser settings a stage sweeps, lr-major.
fn sweep(settings: &StageSettings) -> Vec<(f64, f64)> {
    settings
        .lr
        .iter()
        .flat_map(|&lr| settings.weight_decay.iter().map(move |&wd| (lr, wd)))
        .collect()
}

/// One optimiser setting's run on one task setting, read back from its
/// finished-run file in `ctl.dir` when there is one.
#[allow(clippy::too_many_arguments)]
fn sweep_run<B: AutodiffBackend>(
    spec: &ArchSpec,
    settings: &StageSettings,
    setting: &TaskSetting,
    (lr, wd): (f64, f64),
    seed: u64,
    device: &B::Device,
    ctl: StageControl<'_>,
    progress: &mut dyn FnMut(&EpochReport),
) -> Result<SweepRun, TrainError> {
    let cfg = run_config(settings, setting.task, lr, wd, seed);
    let print = crate::train::run::fingerprint(spec, setting, &cfg);
    let key = run_key(setting, lr, wd);
    let done_path = ctl.dir.map(|d| d.join(format!("{key}.done.json")));
    if let Some(done) = done_path.as_deref().and_then(|p| read_done(p, &print)) {
        return Ok(done);
    }
    let ckpt = ctl.dir.map(|d| d.join(format!("{key}.ckpt")));
    let run_ctl = RunControl {
        checkpoint: ckpt.as_deref().map(|p| (p, ctl.checkpoint_every)),
        stop: ctl.stop,
        ..RunControl::default()
    };
    let splits = match ctl.data {
        Some(root) => load_splits(setting, root)?,
        None => setting
            .generate()
            .expect("stage settings satisfy the tasks' constraints"),
    };
    let result = run::<B>(spec, setting, &splits, &cfg, device, run_ctl, progress)?;
    let done = SweepRun {
        lr,
        weight_decay: wd,
        result,
    };
    if let (Some(path), Some(ckpt)) = (&done_path, &ckpt) {
        write_done(path, ckpt, print, &done)?;
    }
    Ok(done)
}

/// The names of a stage's task settings (their data directories' names,
/// distinct: [`stage_settings`] keeps each setting once), one per job when
/// the stage runs as one job per setting.
pub fn setting_keys(settings: &StageSettings) -> Vec<String> {
    stage_settings(settings)
        .iter()
        .map(TaskSetting::reference_dir_name)
        .collect()
}

/// Runs task setting `index` of a stage (its whole lr × wd sweep): one job
/// of a stage split into settings. `key` is the name [`setting_keys`] gave
/// it, checked so that a job never runs another setting than it was queued
/// for; where `index` names another setting, the setting named `key` runs
/// (a job queued before a change of [`stage_settings`] that moved indices,
/// such as the merging of settings a preset's caps make one).
///
/// # Errors
/// As [`evaluate`], and [`TrainError::Data`] when no setting of `settings`
/// is named `key`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_setting<B: AutodiffBackend>(
    spec: &ArchSpec,
    settings: &StageSettings,
    index: usize,
    key: &str,
    seed: u64,
    device: &B::Device,
    ctl: StageControl<'_>,
    progress: &(dyn Fn(&StageProgress<'_>) + Sync),
) -> Result<SettingResult, TrainError> {
    spec.validate_layers()?;
    let keys = setting_keys(settings);
    let index = if keys.get(index).map(String::as_str) == Some(key) {
        index
    } else {
        keys.iter().position(|k| k == key).ok_or_else(|| {
            TrainError::Data(format!(
                "the stage has no task setting named {key} (job index {index}; the stage has {} \
                 settings): was the preset changed?",
                keys.len()
            ))
        })?
    };
    let setting = reseeded(stage_settings(settings), &ctl).swap_remove(index);
    let sweep = sweep(settings);
    let total = sweep.len();
    let runs = side_by_side(total, ctl.parallel, ctl.threads, |i| {
        sweep_run::<B>(
            spec,
            settings,
            &setting,
            sweep[i],
            seed,
            device,
            ctl,
            &mut |epoch| {
                progress(&StageProgress {
                    setting: &setting,
                    lr: sweep[i].0,
                    weight_decay: sweep[i].1,
                    run: (i + 1, total),
                    epoch,
                    metric: settings.metric,
                })
            },
        )
    })?;
    Ok(best_of(setting, runs, settings.metric))
}

/// A setting's runs and the best of them by `metric`.
fn best_of(setting: TaskSetting, runs: Vec<SweepRun>, metric: Metric) -> SettingResult {
    let best = runs
        .iter()
        .map(|r| r.result.test)
        .max_by(|a, b| a.of(metric).total_cmp(&b.of(metric)))
        .unwrap_or_default();
    SettingResult {
        setting,
        runs,
        best,
    }
}

/// Runs `stage` on `spec`.
///
/// # Errors
/// The genome's validation error (before any compute), a checkpoint or
/// result file that cannot be written, or an interruption.
///
/// # Panics
/// When a run panics (propagated once all runs have stopped).
pub fn evaluate<B: AutodiffBackend>(
    spec: &ArchSpec,
    stage: StageName,
    settings: &StageSettings,
    seed: u64,
    device: &B::Device,
    ctl: StageControl<'_>,
    progress: &(dyn Fn(&StageProgress<'_>) + Sync),
) -> Result<StageResult, TrainError> {
    spec.validate_layers()?;
    if ctl.data.is_some() && ctl.data_seed.is_some() {
        return Err(TrainError::Data(
            "a data seed draws new data; it cannot apply to data read from files (--data)".into(),
        ));
    }
    let start = Instant::now();
    let task_settings = reseeded(stage_settings(settings), &ctl);
    let sweep = sweep(settings);
    let jobs: Vec<(usize, (f64, f64))> = (0..task_settings.len())
        .flat_map(|i| sweep.iter().map(move |&o| (i, o)))
        .collect();
    let total = jobs.len();
    let one = |index: usize| -> Result<SweepRun, TrainError> {
        let (i, opt) = jobs[index];
        let setting = &task_settings[i];
        sweep_run::<B>(
            spec,
            settings,
            setting,
            opt,
            seed,
            device,
            ctl,
            &mut |epoch| {
                progress(&StageProgress {
                    setting,
                    lr: opt.0,
                    weight_decay: opt.1,
                    run: (index + 1, total),
                    epoch,
                    metric: settings.metric,
                })
            },
        )
    };
    let runs = side_by_side(total, ctl.parallel, ctl.threads, one)?;
    let mut per_setting = Vec::with_capacity(task_settings.len());
    let mut runs = runs.into_iter();
    for setting in task_settings {
        let runs: Vec<SweepRun> = runs.by_ref().take(sweep.len()).collect();
        per_setting.push(best_of(setting, runs, settings.metric));
    }
    Ok(assemble(
        stage,
        settings,
        per_setting,
        start.elapsed().as_secs_f64(),
    ))
}

/// A stage's result from its settings' results: per task the mean of its
/// settings' best accuracy (the preset's metric, the protocol's macro unless
/// it says otherwise), overall the mean of the tasks.
pub fn assemble(
    stage: StageName,
    settings: &StageSettings,
    mut per_setting: Vec<SettingResult>,
    seconds: f64,
) -> StageResult {
    // Each setting counts once: a stage split into jobs before
    // [`stage_settings`] merged the settings a preset's caps make one has
    // a job (and a result) per copy.
    let mut seen = std::collections::HashSet::new();
    per_setting.retain(|s| seen.insert(s.setting.reference_dir_name()));
    let mut by_task: BTreeMap<TaskKind, Vec<f64>> = BTreeMap::new();
    for s in &per_setting {
        by_task
            .entry(s.setting.task)
            .or_default()
            .push(s.best.of(settings.metric));
    }
    let per_task: BTreeMap<TaskKind, f64> = by_task
        .into_iter()
        .map(|(t, v)| (t, v.iter().sum::<f64>() / v.len() as f64))
        .collect();
    let score = if per_task.is_empty() {
        0.0
    } else {
        per_task.values().sum::<f64>() / per_task.len() as f64
    };
    StageResult {
        stage,
        settings: settings.clone(),
        per_setting,
        per_task,
        score,
        seconds,
    }
}

#[cfg(test)]
mod tests;
