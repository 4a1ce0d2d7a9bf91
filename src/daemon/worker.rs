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
use crate::layers::device::{DeviceSpec, on_device};
use crate::scale::corpus::Corpus;
use crate::space::{Preset, StageName};
use crate::stages::scale::{ScaleControl, ScaleProgress, ScaleResult};
use crate::stages::{StageControl, StageProgress, StageResult, evaluate};
use crate::store::{Job, JobId};
use crate::train::TrainError;

/// Test hook: a job whose genome's layers string equals this variable's
/// value panics (to test that the daemon records it and keeps serving).
pub const PANIC_HOOK_ENV: &str = "MAD_SEARCH_TEST_PANIC_LAYERS";
/// Test hook: a job whose genome's layers string equals this variable's
/// value trains with an infinite learning rate, so its loss becomes NaN
/// (search spaces cannot ask for that: learning rates are checked).
pub const NAN_HOOK_ENV: &str = "MAD_SEARCH_TEST_NAN_LAYERS";

/// What the workers share.
pub(crate) struct WorkerConfig {
    pub state: PathBuf,
    pub preset: Preset,
    pub corpus: Arc<Corpus>,
    pub seed: u64,
    pub threads: usize,
    pub device: DeviceSpec,
    pub checkpoint_every: usize,
}

/// A job for a worker.
pub(crate) struct WorkItem {
    pub job: Job,
    pub genome: ArchSpec,
    pub worker: usize,
    pub stop: Arc<AtomicBool>,
}

/// A finished evaluation.
pub(crate) enum Evaluation {
    /// `screen` or `mad`.
    Tasks(StageResult),
    /// `scale`.
    Scale(ScaleResult),
}

impl Evaluation {
    /// The stage's score.
    pub fn score(&self) -> f64 {
        match self {
            Evaluation::Tasks(r) => r.score,
            Evaluation::Scale(r) => r.score,
        }
    }

    /// Wall time, seconds.
    pub fn seconds(&self) -> f64 {
        match self {
            Evaluation::Tasks(r) => r.seconds,
            Evaluation::Scale(r) => r.seconds,
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
    pub worker: usize,
    pub outcome: Outcome,
}

/// Where a job keeps its checkpoints and finished runs.
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
    let show = |line: String| {
        if let Some(r) = shared
            .running
            .lock()
            .expect("no poisoning")
            .get_mut(&job.id)
        {
            r.progress = Some(line);
        }
    };
    let run = || -> Result<Evaluation, TrainError> {
        if std::env::var(PANIC_HOOK_ENV).is_ok_and(|v| v == item.genome.layers_string()) {
            panic!("test hook {PANIC_HOOK_ENV} matched this genome");
        }
        match cfg.preset.tasks(job.stage) {
            Some(settings) => {
                let mut settings = settings.clone();
                if std::env::var(NAN_HOOK_ENV).is_ok_and(|v| v == item.genome.layers_string()) {
                    settings.lr = vec![f64::INFINITY];
                }
                let ctl = StageControl {
                    dir: Some(&dir),
                    checkpoint_every: cfg.checkpoint_every,
                    stop: Some(&item.stop),
                    parallel: 1,
                    threads: None,
                    data: None,
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
                on_device!(cfg.device, B, device => evaluate::<B>(
                    &item.genome, job.stage, &settings, seed, &device, ctl, &progress,
                ))
                .map(Evaluation::Tasks)
            }
            None => {
                let ctl = ScaleControl {
                    dir: Some(&dir),
                    checkpoint_every: cfg.checkpoint_every,
                    stop: Some(&item.stop),
                    parallel: 1,
                    threads: None,
                };
                let progress = |p: &ScaleProgress<'_>| show(p.line());
                on_device!(cfg.device, B, device => crate::stages::scale::evaluate::<B>(
                    &item.genome, &cfg.preset.scale, &cfg.corpus, seed, &device, ctl, &progress,
                ))
                .map(Evaluation::Scale)
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
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            Outcome::Failed {
                reason: format!("panicked: {msg}"),
                retry: true,
            }
        }
    }
}
