//! A worker slot: a thread that takes leased jobs from the scheduler, runs
//! each through the search's executor (in this thread's pool, or in a
//! worker process it watches) with checkpoints under `<state>/runs/`, and
//! reports back. A panic or a dead worker process is a failed attempt; the
//! slot lives on.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::Shared;
use crate::exec::spec::JobSpec;
use crate::exec::{Assignment, Executor, Outcome, execute, local, runs_dir, slurm};
use crate::genome::{ArchId, ArchSpec};
use crate::layers::device::DeviceSlots;
use crate::scale::corpus::Corpus;
use crate::space::{Preset, StageName};
use crate::store::{Job, JobId, SearchRecord};

/// What the workers share.
pub(crate) struct WorkerConfig {
    pub state: PathBuf,
    pub preset: Preset,
    pub corpus: Arc<Corpus>,
    /// Its fingerprint, which a worker process checks.
    pub corpus_fingerprint: String,
    /// The search as stored (space, preset name, corpus path, seed): what a
    /// worker process is told.
    pub record: SearchRecord,
    pub threads: usize,
    pub device: DeviceSlots,
    pub checkpoint_every: usize,
    pub executor: Executor,
    /// The binary a worker process runs (`mad-search worker`).
    pub exe: PathBuf,
    /// The Slurm executor, when jobs run on Slurm.
    pub slurm: Option<Arc<slurm::Slurm>>,
    /// A job's lease, seconds: a worker process's own budget.
    pub job_timeout: f64,
    /// How long a stopped worker process may take to checkpoint before it
    /// is killed.
    pub grace: Duration,
}

/// A worker process's own time budget, as a share of the lease.
const WALL_SHARE: f64 = 0.95;

/// A job for a worker.
pub(crate) struct WorkItem {
    pub job: Job,
    pub genome: ArchSpec,
    /// The candidate's `scale` result, for a stage that starts from it.
    pub scale: Option<Box<crate::stages::scale::ScaleResult>>,
    pub worker: usize,
    pub stop: Arc<AtomicBool>,
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

/// The worker loop: until the scheduler drops its sender.
pub(crate) fn work(
    w: usize,
    rx: &Receiver<WorkItem>,
    tx: &Sender<Done>,
    cfg: &WorkerConfig,
    shared: &Shared,
) {
    let pool = match cfg.executor {
        Executor::Threads => match rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.threads.max(1))
            .thread_name(move |i| format!("worker-{w}-{i}"))
            .build()
        {
            Ok(p) => Some(p),
            Err(e) => {
                super::log(format!("worker {w}: no thread pool ({e}); worker exits"));
                return;
            }
        },
        Executor::Local | Executor::Slurm(_) => None,
    };
    for item in rx {
        let job = &item.job;
        let show = |line: String| {
            if let Some(r) = shared
                .running
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get_mut(&job.id)
            {
                r.progress = Some(line.trim_end().to_owned());
            }
        };
        let dir = runs_dir(&cfg.state, job.arch, job.stage);
        let device = cfg.device.for_worker(item.worker);
        let outcome = match &pool {
            Some(pool) => {
                let a = Assignment {
                    job,
                    genome: &item.genome,
                    scale: item.scale.as_deref(),
                    preset: &cfg.preset,
                    corpus: &cfg.corpus,
                    seed: cfg.record.seed,
                    dir: &dir,
                    checkpoint_every: cfg.checkpoint_every,
                    device,
                    stop: &item.stop,
                };
                pool.install(|| execute(&a, &show, &|l| super::log(l)))
            }
            None => {
                let spec = JobSpec {
                    format: crate::exec::spec::FORMAT,
                    job: job.clone(),
                    genome: item.genome.clone(),
                    scale: item.scale.clone(),
                    space_file: cfg.record.space_file.clone(),
                    space_text: cfg.record.space_text.clone(),
                    preset: cfg.record.preset.clone(),
                    corpus: cfg.record.corpus.clone(),
                    corpus_fingerprint: cfg.corpus_fingerprint.clone(),
                    seed: cfg.record.seed,
                    runs_dir: dir,
                    checkpoint_every: cfg.checkpoint_every,
                    threads: cfg.threads,
                    device: device.to_string(),
                    // A little under the lease: the worker stops itself
                    // cleanly before the daemon has to.
                    wall_seconds: Some(cfg.job_timeout * WALL_SHARE),
                };
                let end = match &cfg.slurm {
                    Some(slurm) => {
                        slurm.run(&cfg.state, &spec, &item.stop, cfg.grace, &show, &|l| {
                            super::log(l)
                        })
                    }
                    None => local::run(
                        &cfg.exe,
                        &cfg.state,
                        &spec,
                        &item.stop,
                        cfg.grace,
                        &show,
                        &|l| super::log(l),
                    ),
                };
                if let Some(kib) = end.peak_kib {
                    super::log(format!(
                        "job {}: worker process{} peaked at {:.0} MiB",
                        job.id,
                        if end.pid == 0 {
                            String::new()
                        } else {
                            format!(" {}", end.pid)
                        },
                        kib as f64 / 1024.0
                    ));
                }
                end.outcome
            }
        };
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
