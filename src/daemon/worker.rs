//! A worker thread: takes leased jobs from the scheduler, runs the stage in
//! its own thread pool with checkpoints under `<state>/runs/`, and reports
//! back. A panic in a job is caught and reported as a failure; the worker
//! lives on.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crossbeam_channel::{Receiver, Sender};

use super::Shared;
use crate::genome::{ArchId, ArchSpec};
use crate::layers::device::{DeviceSlots, on_device};
use crate::scale::corpus::Corpus;
use crate::space::{Preset, ScaleSettings, StageName};
use crate::stages::scale::{ScaleControl, ScaleProgress, ScaleResult, ScaleRun};
use crate::stages::{SettingResult, StageControl, StageProgress, StageResult, evaluate};
use crate::store::{Job, JobId};
use crate::train::TrainError;

/// What the workers share.
pub(crate) struct WorkerConfig {
    pub state: PathBuf,
    pub preset: Preset,
    pub corpus: Arc<Corpus>,
    pub seed: u64,
    pub threads: usize,
    pub device: DeviceSlots,
    pub checkpoint_every: usize,
}

/// A job for a worker.
pub(crate) struct WorkItem {
    pub job: Job,
    pub genome: ArchSpec,
    pub worker: usize,
    pub stop: Arc<AtomicBool>,
}

/// What a finished job produced.
pub(crate) enum Evaluation {
    /// A whole task stage (`screen`; `mad` when queued whole).
    Tasks(StageResult),
    /// A whole `scale` stage (queued whole).
    Scale(ScaleResult),
    /// One task setting of a `mad` stage split into settings.
    Setting(SettingResult),
    /// One training run of a `scale` stage split into runs.
    Run(ScaleRun),
}

impl Evaluation {
    /// Compute time, seconds (summed over runs).
    pub fn seconds(&self) -> f64 {
        match self {
            Evaluation::Tasks(r) => r.seconds,
            Evaluation::Scale(r) => r.seconds,
            Evaluation::Setting(r) => r.runs.iter().map(|x| x.result.seconds).sum(),
            Evaluation::Run(r) => r.result.seconds,
        }
    }
}

/// How a job ended.
pub(crate) enum Outcome {
    Finished(Box<Evaluation>),
    Interrupted,
    Failed { reason: String, retry: bool },
}

/// A worker's report.
pub(crate) struct Done {
    pub job: JobId,
    pub arch: ArchId,
    pub stage: StageName,
    /// The run's name, for a stage split into runs.
    pub part: Option<String>,
    pub worker: usize,
    pub outcome: Outcome,
}

/// Where a job keeps its checkpoints and finished runs (every job of a
/// candidate's stage shares it; each run's files carry the run's name).
pub(crate) fn runs_dir(state: &Path, arch: ArchId, stage: StageName) -> PathBuf {
    state.join("runs").join(format!("{arch}-{}", stage.name()))
}

/// The worker loop: until the scheduler drops its sender.
pub(crate) fn work(
    w: usize,
    rx: &Receiver<WorkItem>,
    tx: &Sender<Done>,
    cfg: &WorkerConfig,
    shared: &Shared,
) {
    let pool = match rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.threads.max(1))
        .thread_name(move |i| format!("worker-{w}-{i}"))
        .build()
    {
        Ok(p) => p,
        Err(e) => {
            super::log(format!("worker {w}: no thread pool ({e}); worker exits"));
            return;
        }
    };
    for item in rx {
        let outcome = pool.install(|| execute(&item, cfg, shared));
        let done = Done {
            job: item.job.id,
            arch: item.job.arch,
            stage: item.job.stage,
            part: item.job.part.as_ref().map(|p| p.key.clone()),
            worker: item.worker,
            outcome,
        };
        if tx.send(done).is_err() {
            return;
        }
    }
}

fn execute(item: &WorkItem, cfg: &WorkerConfig, shared: &Shared) -> Outcome {
    let job = &item.job;
    let dir = runs_dir(&cfg.state, job.arch, job.stage);
    let seed = crate::seed::derive(cfg.seed, &[&job.arch.to_string(), job.stage.name()]);
    let slot = cfg.device.for_worker(item.worker);
    let show = |line: String| {
        if let Some(r) = shared
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_mut(&job.id)
        {
            r.progress = Some(line);
        }
    };
    let run = || -> Result<Evaluation, TrainError> {
        if super::hooks::panics(&item.genome.layers_string()) {
            panic!(
                "test hook {} matched this genome",
                super::hooks::PANIC_LAYERS
            );
        }
        match cfg.preset.tasks(job.stage) {
            Some(settings) => {
                let mut settings = settings.clone();
                if super::hooks::diverges(&item.genome.layers_string()) {
                    settings.lr = vec![f64::INFINITY];
                }
                let ctl = StageControl {
                    dir: Some(&dir),
                    checkpoint_every: cfg.checkpoint_every,
                    stop: Some(&item.stop),
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
                        p.epoch.valid.macro_
                    ))
                };
                match &job.part {
                    None => on_device!(slot, B, device => evaluate::<B>(
                        &item.genome, job.stage, &settings, seed, &device, ctl, &progress,
                    ))
                    .map(Evaluation::Tasks),
                    Some(part) => on_device!(slot, B, device =>
                    crate::stages::evaluate_setting::<B>(
                        &item.genome, &settings, part.index as usize, &part.key, seed,
                        &device, ctl, &progress,
                    ))
                    .map(Evaluation::Setting),
                }
            }
            None => {
                let ctl = ScaleControl {
                    dir: Some(&dir),
                    checkpoint_every: cfg.checkpoint_every,
                    stop: Some(&item.stop),
                    parallel: 1,
                    threads: None,
                };
                let settings = &cfg.preset.scale;
                match &job.part {
                    None => {
                        let progress = |p: &ScaleProgress<'_>| show(p.line());
                        on_device!(slot, B, device =>
                        crate::stages::scale::evaluate::<B>(
                            &item.genome, settings, &cfg.corpus, seed, &device, ctl,
                            &progress,
                        ))
                        .map(Evaluation::Scale)
                    }
                    Some(part) => {
                        let planned = crate::stages::scale::planned_runs(
                            &item.genome,
                            settings,
                            &cfg.corpus,
                        )?;
                        let Some(p) = planned
                            .get(part.index as usize)
                            .filter(|p| p.key() == part.key)
                        else {
                            return Err(TrainError::Data(format!(
                                "the scaling plan has no run {} named {} (it has {}): was the \
                                 preset changed?",
                                part.index,
                                part.key,
                                planned.len()
                            )));
                        };
                        let diverging;
                        let settings = if super::hooks::scale_run_diverges(part.index) {
                            diverging = ScaleSettings {
                                lr: f64::INFINITY,
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
                                super::log(format!(
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
                            p, settings, &cfg.corpus, seed, &device, Some(&ckpt), ctl,
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
        Err(panic) => {
            let msg = super::panic_text(panic.as_ref());
            Outcome::Failed {
                reason: format!("panicked: {msg}"),
                retry: true,
            }
        }
    }
}
