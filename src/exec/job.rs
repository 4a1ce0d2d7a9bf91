//! One job, run where it is: the stage (or the stage's one run) a leased
//! job asks for, trained on a device with checkpoints under the
//! candidate's runs directory. The thread executor calls [`execute`] in the
//! daemon; a worker process (`mad-search worker`) calls it in a process of
//! its own. Its [`Outcome`] is plain serde data, so that a worker process can
//! hand it back in a file.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use super::hooks;
use crate::genome::{ArchId, ArchSpec};
use crate::layers::device::{DeviceSpec, on_device};
use crate::scale::corpus::Corpus;
use crate::space::{Preset, ScaleSettings, StageName};
use crate::stages::overtrain::OvertrainResult;
use crate::stages::scale::{ScaleControl, ScaleProgress, ScaleResult, ScaleRun};
use crate::stages::{SettingResult, StageControl, StageProgress, StageResult, evaluate};
use crate::store::Job;
use crate::train::TrainError;

/// What a finished job produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Evaluation {
    /// A whole task stage (`screen`; `mad` when queued whole).
    Tasks(StageResult),
    /// A whole `scale` stage (queued whole).
    Scale(ScaleResult),
    /// A whole `overtrain` stage (queued whole when its plan failed: the job
    /// then fails with the plan's error).
    Overtrain(OvertrainResult),
    /// One task setting of a `mad` stage split into settings.
    Setting(SettingResult),
    /// One training run of a `scale` or `overtrain` stage split into runs.
    Run(ScaleRun),
}

impl Evaluation {
    /// Compute time, seconds (summed over runs).
    pub fn seconds(&self) -> f64 {
        match self {
            Evaluation::Tasks(r) => r.seconds,
            Evaluation::Scale(r) => r.seconds,
            Evaluation::Overtrain(r) => r.seconds,
            Evaluation::Setting(r) => r.runs.iter().map(|x| x.result.seconds).sum(),
            Evaluation::Run(r) => r.result.seconds,
        }
    }
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A result (which may still be a divergence the scheduler fails).
    Finished(Box<Evaluation>),
    /// Stopped on request (a drain, a lapsed lease): checkpointed, to be
    /// retried from there.
    Interrupted,
    /// Stopped by its own wall-clock budget: checkpointed; counts as a
    /// lapsed lease (a failure), retried from the checkpoint.
    OutOfTime,
    /// The job could not even start where it was sent (a worker process
    /// that cannot set up: a corpus moved or changed, a device missing):
    /// nothing to do with the candidate, and nothing another try changes.
    /// The daemon drains and exits with the reason.
    Unrunnable {
        /// What is wrong, and what to do.
        reason: String,
    },
    /// The job goes on where it runs and could not be stopped (a Slurm job
    /// while Slurm does not answer): its lease stays, and the next daemon
    /// re-attaches to it.
    Detached {
        /// Why.
        reason: String,
    },
    /// No result: why, and whether another try may do better.
    Failed {
        /// What went wrong.
        reason: String,
        /// A panic, a lost worker or an unwritable checkpoint may pass on
        /// another try; a genome that cannot be built will not.
        retry: bool,
    },
}

/// Where a job keeps its checkpoints and finished runs (every job of a
/// candidate's stage shares it; each run's files carry the run's name).
pub fn runs_dir(state: &Path, arch: ArchId, stage: StageName) -> PathBuf {
    state.join("runs").join(format!("{arch}-{}", stage.name()))
}

/// Everything a job needs to run.
pub struct Assignment<'a> {
    /// The leased job (its stage, part and attempt).
    pub job: &'a Job,
    /// Its candidate's genome.
    pub genome: &'a ArchSpec,
    /// Its candidate's `scale` result, for a stage that starts from it
    /// (`overtrain`).
    pub scale: Option<&'a ScaleResult>,
    /// The search's stage settings.
    pub preset: &'a Preset,
    /// The `scale` stage's corpus.
    pub corpus: &'a Corpus,
    /// The search's seed (the job's seed derives from it and the job).
    pub seed: u64,
    /// The candidate's runs directory ([`runs_dir`]).
    pub dir: &'a Path,
    /// Checkpoint interval, optimiser steps.
    pub checkpoint_every: usize,
    /// Where its tensors live.
    pub device: DeviceSpec,
    /// Raised to stop: the job checkpoints and ends [`Outcome::Interrupted`].
    pub stop: &'a AtomicBool,
}

/// Runs `a`'s job in the caller's thread pool. `show` gets a progress line
/// now and then; `log` a line worth keeping. A panic is caught and ends
/// the job failed (to be retried).
pub fn execute(
    a: &Assignment<'_>,
    show: &(dyn Fn(String) + Sync),
    log: &(dyn Fn(String) + Sync),
) -> Outcome {
    let job = a.job;
    let dir = a.dir;
    let seed = crate::seed::derive(a.seed, &[&job.arch.to_string(), job.stage.name()]);
    let slot = a.device;
    let layers = a.genome.layers_string();
    let run = || -> Result<Evaluation, TrainError> {
        hooks::process_faults(&layers, job.attempt);
        if hooks::panics(&layers) {
            panic!("test hook {} matched this genome", hooks::PANIC_LAYERS);
        }
        match a.preset.tasks(job.stage) {
            Some(settings) => {
                let mut settings = settings.clone();
                if hooks::diverges(&layers) {
                    settings.lr = vec![hooks::DIVERGING_LR];
                }
                let ctl = StageControl {
                    dir: Some(dir),
                    checkpoint_every: a.checkpoint_every,
                    stop: Some(a.stop),
                    parallel: 1,
                    threads: None,
                    data: None,
                    data_seed: None,
                };
                let progress = |p: &StageProgress<'_>| {
                    show(format!(
                        "run {}/{} {} epoch {}/{} loss {:.4} valid {:.3}",
                        p.run.0,
                        p.run.1,
                        p.setting.task,
                        p.epoch.epoch,
                        p.epoch.max_epochs,
                        p.epoch.loss,
                        p.valid()
                    ));
                };
                match &job.part {
                    None => on_device!(slot, B, device => evaluate::<B>(
                        a.genome, job.stage, &settings, seed, &device, ctl, &progress,
                    ))
                    .map(Evaluation::Tasks),
                    Some(part) => on_device!(slot, B, device =>
                    crate::stages::evaluate_setting::<B>(
                        a.genome, &settings, part.index as usize, &part.key, seed,
                        &device, ctl, &progress,
                    ))
                    .map(Evaluation::Setting),
                }
            }
            None => {
                let ctl = ScaleControl {
                    dir: Some(dir),
                    checkpoint_every: a.checkpoint_every,
                    stop: Some(a.stop),
                    parallel: 1,
                    threads: None,
                };
                let settings = &a.preset.scale;
                let overtrain = match job.stage {
                    StageName::Overtrain => Some(a.scale.ok_or_else(|| {
                        TrainError::Data(
                            "the overtrain stage starts from the candidate's scale result, and \
                             the job came without one"
                                .into(),
                        )
                    })?),
                    _ => None,
                };
                match &job.part {
                    None => {
                        let progress = |p: &ScaleProgress<'_>| show(p.line());
                        match overtrain {
                            Some(scale) => on_device!(slot, B, device =>
                            crate::stages::overtrain::evaluate::<B>(
                                a.genome, settings, a.corpus, scale, seed, &device, ctl,
                                &progress,
                            ))
                            .map(Evaluation::Overtrain),
                            None => on_device!(slot, B, device =>
                            crate::stages::scale::evaluate::<B>(
                                a.genome, settings, a.corpus, seed, &device, ctl, &progress,
                            ))
                            .map(Evaluation::Scale),
                        }
                    }
                    Some(part) => {
                        let owned;
                        let p = match overtrain {
                            Some(scale) => {
                                owned = crate::stages::overtrain::planned_run(
                                    a.genome, settings, a.corpus, scale, &part.key,
                                )?
                                .planned;
                                &owned
                            }
                            None => {
                                owned = crate::stages::scale::planned_runs(
                                    a.genome, settings, a.corpus,
                                )?
                                .into_iter()
                                .nth(part.index as usize)
                                .filter(|p| p.key() == part.key)
                                .ok_or_else(|| {
                                    TrainError::Data(format!(
                                        "the scaling plan has no run {} named {}: was the \
                                         preset changed?",
                                        part.index, part.key,
                                    ))
                                })?;
                                &owned
                            }
                        };
                        let diverging;
                        let settings =
                            if overtrain.is_none() && hooks::scale_run_diverges(part.index) {
                                diverging = ScaleSettings {
                                    lr: hooks::DIVERGING_LR,
                                    ..settings.clone()
                                };
                                &diverging
                            } else {
                                settings
                            };
                        let ckpt = dir.join(format!("{}.ckpt", part.key));
                        let run = (part.index as usize + 1, part.of as usize);
                        let mut first = true;
                        let mut progress = |step: usize, loss: f64| {
                            if std::mem::take(&mut first) && step > 1 {
                                log(format!(
                                    "job {}: run {} resumed from its checkpoint at step {}",
                                    job.id,
                                    part.key,
                                    step - 1
                                ));
                            }
                            show(
                                ScaleProgress {
                                    planned: p,
                                    run,
                                    step,
                                    loss,
                                }
                                .line(),
                            );
                        };
                        on_device!(slot, B, device =>
                        crate::stages::scale::train_run::<B>(
                            p, settings, a.corpus, seed, &device, Some(&ckpt), ctl,
                            &mut progress,
                        ))
                        .map(Evaluation::Run)
                    }
                }
            }
        }
    };
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(Ok(result)) => Outcome::Finished(Box::new(result)),
        Ok(Err(TrainError::Interrupted { .. })) => Outcome::Interrupted,
        Ok(Err(e @ TrainError::Checkpoint(_))) => Outcome::Failed {
            reason: e.to_string(),
            retry: true,
        },
        Ok(Err(e)) => Outcome::Failed {
            reason: e.to_string(),
            retry: false,
        },
        Err(panic) => Outcome::Failed {
            reason: format!("panicked: {}", panic_text(panic.as_ref())),
            retry: true,
        },
    }
}

/// A panic's message, for the log.
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}
