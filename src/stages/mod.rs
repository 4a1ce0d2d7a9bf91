//! Stages: what a candidate runs at each rung and how it is scored
//! (design §6). `screen` runs each task's baseline setting under one
//! optimiser setting; `mad` runs the protocol's grid and lr × wd sweep
//! (mad-protocol §2): per setting the best test accuracy over the sweep, per
//! task the mean over its settings, overall the mean of the tasks. Scores
//! are macro accuracies (the reference's metric); micro is kept alongside.

use std::collections::BTreeMap;
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use crate::genome::{ArchSpec, GenomeError};
use crate::space::{Grid, StageName, StageSettings};
use crate::tasks::{TaskKind, TaskSetting};
use crate::train::{EpochReport, RunConfig, RunResult, Scores, run};

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
    /// Best test accuracy over the runs (by macro accuracy).
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
    /// Per task: mean of its settings' best macro accuracy.
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
}

/// The task settings a stage runs, with the preset's caps applied.
pub fn stage_settings(s: &StageSettings) -> Vec<TaskSetting> {
    let mut out = Vec::new();
    for &task in &s.tasks {
        let grid = match s.grid {
            Grid::Baseline => vec![TaskSetting::baseline(task)],
            Grid::Full => TaskSetting::grid(task),
        };
        for mut setting in grid {
            if let Some(cap) = s.train_examples {
                setting.num_train = setting.num_train.min(cap);
            }
            setting.num_test = s.test_examples;
            setting.num_valid = s.test_examples;
            if let Some(cap) = s.max_seq_len {
                shorten(&mut setting, cap);
            }
            out.push(setting);
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

/// Runs `stage` on `spec`.
///
/// # Errors
/// The genome's validation error, before any compute.
pub fn evaluate<B: AutodiffBackend>(
    spec: &ArchSpec,
    stage: StageName,
    settings: &StageSettings,
    seed: u64,
    device: &B::Device,
    progress: &mut dyn FnMut(&StageProgress<'_>),
) -> Result<StageResult, GenomeError> {
    spec.validate_layers()?;
    let start = Instant::now();
    let task_settings = stage_settings(settings);
    let sweep: Vec<(f64, f64)> = settings
        .lr
        .iter()
        .flat_map(|&lr| settings.weight_decay.iter().map(move |&wd| (lr, wd)))
        .collect();
    let total = task_settings.len() * sweep.len();
    let mut per_setting = Vec::with_capacity(task_settings.len());
    let mut index = 0;
    for setting in task_settings {
        let splits = setting
            .generate()
            .expect("stage settings satisfy the tasks' constraints");
        let mut runs = Vec::with_capacity(sweep.len());
        for &(lr, wd) in &sweep {
            index += 1;
            let cfg = RunConfig {
                lr,
                weight_decay: wd,
                betas: settings.betas,
                batch_size: settings.batch_size,
                max_epochs: settings.max_epochs,
                max_steps: settings.max_steps,
                early_stop: settings.early_stop,
                seed,
                ..RunConfig::default()
            };
            let result = run::<B>(spec, &setting, &splits, &cfg, device, &mut |epoch| {
                progress(&StageProgress {
                    setting: &setting,
                    lr,
                    weight_decay: wd,
                    run: (index, total),
                    epoch,
                })
            })?;
            runs.push(SweepRun {
                lr,
                weight_decay: wd,
                result,
            });
        }
        let best = runs
            .iter()
            .map(|r| r.result.test)
            .max_by(|a, b| a.macro_.total_cmp(&b.macro_))
            .unwrap_or_default();
        per_setting.push(SettingResult {
            setting,
            runs,
            best,
        });
    }
    let mut by_task: BTreeMap<TaskKind, Vec<f64>> = BTreeMap::new();
    for s in &per_setting {
        by_task
            .entry(s.setting.task)
            .or_default()
            .push(s.best.macro_);
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
    Ok(StageResult {
        stage,
        settings: settings.clone(),
        per_setting,
        per_task,
        score,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::SearchSpace;

    #[test]
    fn presets_expand_to_capped_settings() {
        let space = SearchSpace::embedded_default();
        let tiny = space.preset("tiny").unwrap();
        let screen = stage_settings(&tiny.screen);
        assert_eq!(screen.len(), 6);
        for s in &screen {
            assert!(s.num_train <= 256 && s.num_test == 64);
            assert!(s.seq_len <= 64, "{}", s.reference_dir_name());
            s.validate().unwrap();
        }
        let paper = space.preset("paper").unwrap();
        assert_eq!(stage_settings(&paper.mad).len(), 66);
        assert_eq!(stage_settings(&paper.screen).len(), 6);
    }
}
