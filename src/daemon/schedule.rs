//! The scheduler (design §4): leases queued jobs to free workers, asks the
//! search policy for new work, records what workers report, and on an error
//! drains what is in flight. [`super::run`] sets it up and tears it down.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use crossbeam_channel::RecvTimeoutError;

use super::report::RunningJob;
use super::worker::{self, Done, WorkItem};
use super::{DaemonConfig, Shared, log};
use crate::exec::hooks;
use crate::exec::{Evaluation, Outcome};
use crate::search::{Policy, Proposal};
use crate::space::StageName;
use crate::store::{Job, JobId, JobState, Release, StageEnd, StageSummary, Store, now};

/// Settled jobs between two trims of the event log.
pub const TRIM_EVERY: u64 = 64;

/// Drops events beyond `keep`, logging how many went; a failure is logged
/// (the log only grows until the next trim).
pub(super) fn trim_events(store: &Store, keep: usize) {
    match store.trim_events(keep) {
        Ok(0) => {}
        Ok(n) => log(format!(
            "dropped the {n} oldest event(s) (--keep-events {keep})"
        )),
        Err(e) => log(format!("could not trim the event log: {e}")),
    }
}

/// A job handed to a worker.
struct InFlight {
    attempt: u32,
    deadline: f64,
    stop: Arc<AtomicBool>,
    lapsed: bool,
}

/// Why a task setting's result counts as a failure: a divergence in every
/// optimiser setting, which another try would repeat (training is
/// deterministic).
fn divergence(s: &crate::stages::SettingResult) -> Option<String> {
    let diverged: Vec<_> = s
        .runs
        .iter()
        .filter_map(|r| match r.result.outcome {
            crate::train::Outcome::Diverged { step } => Some(step),
            _ => None,
        })
        .collect();
    (!s.runs.is_empty() && diverged.len() == s.runs.len()).then(|| {
        format!(
            "diverged (NaN or infinite loss) on {} at step {} in every optimiser setting",
            s.setting.reference_dir_name(),
            diverged[0]
        )
    })
}

mod assemble;
use assemble::assemble_split;

/// The jobs `arch` needs at `stage` (its runs, or none: the whole stage in
/// one job). A genome the stage cannot split (no scaling plan, a corpus too
/// small) is queued whole; its job then fails with the reason, recorded on
/// the candidate like any failure.
fn parts_of(
    store: &Store,
    arch: crate::genome::ArchId,
    stage: StageName,
    wcfg: &worker::WorkerConfig,
) -> anyhow::Result<Vec<String>> {
    let Some(c) = store.candidate(arch)? else {
        return Ok(Vec::new());
    };
    let scale = prior_scale(store, arch, stage)?;
    Ok(
        crate::stages::stage_parts(stage, &wcfg.preset, &c.genome, &wcfg.corpus, scale.as_ref())
            .unwrap_or_default(),
    )
}

/// The candidate's `scale` result, for a stage that starts from it
/// (`overtrain`); `None` for the others, or when it is missing or
/// unreadable (said in the log; the stage's job then fails saying so).
fn prior_scale(
    store: &Store,
    arch: crate::genome::ArchId,
    stage: StageName,
) -> anyhow::Result<Option<crate::stages::scale::ScaleResult>> {
    if stage != StageName::Overtrain {
        return Ok(None);
    }
    let Some(v) = store.stage_result(arch, StageName::Scale)? else {
        log(format!("{}: no stored scale result", arch.short()));
        return Ok(None);
    };
    match serde_json::from_value(v) {
        Ok(r) => Ok(Some(r)),
        Err(e) => {
            log(format!(
                "{}: its stored scale result is unreadable: {e}",
                arch.short()
            ));
            Ok(None)
        }
    }
}

/// What the scheduler holds between its steps: free workers, jobs in
/// flight, time not yet accounted.
pub(super) struct Schedule {
    /// Worker slots for new jobs (slots beyond, for re-attached jobs, end
    /// with their job).
    workers: usize,
    /// Whether a job past its lease is stopped here (not on Slurm, where
    /// its time limit does).
    enforce_leases: bool,
    free: Vec<usize>,
    in_flight: BTreeMap<JobId, InFlight>,
    /// Since when the daemon's running time is not yet in the store.
    pub(super) accounted: Instant,
    /// Jobs whose end is recorded (by this daemon run).
    settled: u64,
}

impl Schedule {
    /// `workers` free workers, nothing in flight.
    pub(super) fn new(workers: usize, enforce_leases: bool) -> Schedule {
        Schedule {
            workers,
            enforce_leases,
            free: (0..workers).rev().collect(),
            in_flight: BTreeMap::new(),
            accounted: Instant::now(),
            settled: 0,
        }
    }

    /// Hands a leased `job` to a worker as `worker`, seen by `status` and
    /// watched until `deadline` (where the daemon enforces leases).
    ///
    /// # Errors
    /// Every worker gone.
    fn dispatch(
        &mut self,
        shared: &Shared,
        job: Job,
        genome: crate::genome::ArchSpec,
        worker: usize,
        deadline: f64,
        work_tx: &crossbeam_channel::Sender<WorkItem>,
    ) -> anyhow::Result<()> {
        let stop = Arc::new(AtomicBool::new(false));
        let scale = prior_scale(&shared.store, job.arch, job.stage)?.map(Box::new);
        shared
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                job.id,
                RunningJob {
                    job: job.id,
                    arch: job.arch,
                    layers: genome.layers_string(),
                    compact: genome.compact_string(),
                    stage: job.stage,
                    part: job.part.as_ref().map(|p| p.key.clone()),
                    attempt: job.attempt,
                    worker,
                    seconds: now(),
                    progress: None,
                },
            );
        self.in_flight.insert(
            job.id,
            InFlight {
                attempt: job.attempt,
                deadline: if self.enforce_leases {
                    deadline
                } else {
                    f64::INFINITY
                },
                stop: Arc::clone(&stop),
                lapsed: false,
            },
        );
        work_tx
            .send(WorkItem {
                job,
                genome,
                scale,
                worker,
                stop,
            })
            .context("a worker is gone")?;
        Ok(())
    }

    /// Hands the jobs a previous daemon left on Slurm (their leases taken
    /// over, worker slots 0, 1, … in order) to workers that re-attach to
    /// them.
    ///
    /// # Errors
    /// Every worker gone.
    pub(super) fn adopt(
        &mut self,
        shared: &Shared,
        jobs: Vec<Job>,
        work_tx: &crossbeam_channel::Sender<WorkItem>,
    ) -> anyhow::Result<()> {
        for job in jobs {
            let JobState::Leased {
                worker, deadline, ..
            } = job.state
            else {
                continue;
            };
            let Some(cand) = shared.store.candidate(job.arch)? else {
                continue;
            };
            self.free.retain(|&w| w != worker);
            self.dispatch(shared, job, cand.genome, worker, deadline, work_tx)?;
        }
        Ok(())
    }
}

/// The scheduler loop: leases queued jobs to free workers, proposes new
/// work, settles what workers report, until the search is stopped (`None`)
/// or finished (why). An error leaves `sched` as it was, for [`drain`].
///
/// # Errors
/// A database error, or every worker gone.
#[allow(clippy::too_many_arguments)]
pub(super) fn schedule(
    cfg: &DaemonConfig,
    shared: &Shared,
    policy: &Policy,
    wcfg: &worker::WorkerConfig,
    budget: &crate::store::SearchBudget,
    work_tx: &crossbeam_channel::Sender<WorkItem>,
    done_rx: &crossbeam_channel::Receiver<Done>,
    sched: &mut Schedule,
) -> anyhow::Result<Option<String>> {
    let store = &shared.store;
    let fail_after = hooks::scheduler_error_after();
    let mut finished_reason = None;
    // A job that cannot run where it was sent: drain, then fail with this.
    let mut unrunnable: Option<String> = None;
    loop {
        let stopping = shared.stop.load(Ordering::SeqCst);
        if !stopping && let Some(h) = budget.hours {
            let used = store.stats()?.daemon_seconds + sched.accounted.elapsed().as_secs_f64();
            if used >= h * 3600.0 {
                log(format!("the time budget ({h} h) is spent; stopping"));
                shared.stop.store(true, Ordering::SeqCst);
                finished_reason = Some("time budget spent".to_string());
                continue;
            }
        }
        if !stopping {
            while let Some(&w) = sched.free.last() {
                if let Some(job) = store.next_queued()? {
                    let deadline = now() + cfg.job_timeout;
                    let Some(job) = store.lease(job.id, w, deadline)? else {
                        continue;
                    };
                    if wcfg.slurm.is_some() {
                        // A Slurm job outlives a daemon killed with -9: its
                        // lease must be on disk before it is submitted, so
                        // that the next daemon re-attaches to it.
                        store.flush()?;
                    }
                    let Some(cand) = store.candidate(job.arch)? else {
                        store.release(
                            job.id,
                            job.attempt,
                            &Release::Failed {
                                reason: "its candidate is missing".into(),
                                retry: false,
                            },
                        )?;
                        continue;
                    };
                    sched.free.pop();
                    log(format!(
                        "job {} (attempt {}): {}{} {} → worker {w}",
                        job.id,
                        job.attempt,
                        job.stage.name(),
                        job.part
                            .as_ref()
                            .map(|p| format!(" run {}/{} {}", p.index + 1, p.of, p.key))
                            .unwrap_or_default(),
                        cand.genome.layers_string()
                    ));
                    sched.dispatch(shared, job, cand.genome, w, deadline, work_tx)?;
                    continue;
                }
                match policy.propose(store, budget)? {
                    Proposal::Promote { arch, stage } => {
                        let parts = parts_of(store, arch, stage, wcfg)?;
                        if let Some(j) = store.enqueue(arch, stage, &parts)? {
                            log(format!(
                                "promoted {} to {} ({})",
                                arch.short(),
                                stage.name(),
                                if parts.is_empty() {
                                    format!("job {j}")
                                } else {
                                    format!("jobs {j}–{}", j + parts.len() as u64 - 1)
                                }
                            ));
                        }
                    }
                    Proposal::New(c) => {
                        let parts = crate::stages::stage_parts(
                            StageName::Screen,
                            &wcfg.preset,
                            &c.genome,
                            &wcfg.corpus,
                            None,
                        )
                        .unwrap_or_default();
                        if let Some(j) = store.add_candidate(&c, StageName::Screen, &parts)? {
                            log(format!(
                                "new candidate {} by {}: {} (job {j})",
                                c.id.short(),
                                c.operator,
                                c.genome.layers_string()
                            ));
                        }
                    }
                    Proposal::Idle(why) => {
                        let mut idle = shared.idle.lock().unwrap_or_else(PoisonError::into_inner);
                        if idle.as_deref() != Some(why.as_str()) {
                            log(format!("idle: {why}"));
                        }
                        *idle = Some(why);
                        break;
                    }
                }
            }
        }
        let idle = shared
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if sched.in_flight.is_empty() && (stopping || idle.is_some()) {
            if !stopping {
                finished_reason = idle;
            }
            break;
        }
        if stopping {
            for f in sched.in_flight.values() {
                f.stop.store(true, Ordering::SeqCst);
            }
        }
        match done_rx.recv_timeout(Duration::from_millis(200)) {
            Ok(done) => {
                let Some(f) = sched.in_flight.remove(&done.job) else {
                    continue;
                };
                if let Outcome::Unrunnable { reason } = &done.outcome
                    && unrunnable.is_none()
                {
                    log(format!(
                        "job {}: cannot run: {reason}; stopping the search (the job goes back \
                         to the queue)",
                        done.job
                    ));
                    unrunnable = Some(reason.clone());
                    shared.stop.store(true, Ordering::SeqCst);
                }
                shared
                    .running
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&done.job);
                *shared.idle.lock().unwrap_or_else(PoisonError::into_inner) = None;
                if done.worker < sched.workers {
                    sched.free.push(done.worker);
                }
                settle(store, wcfg, &done, &f)?;
                sched.settled += 1;
                if sched.settled.is_multiple_of(TRIM_EVERY) {
                    trim_events(store, cfg.keep_events);
                }
                if fail_after.is_some_and(|n| sched.settled >= n) {
                    anyhow::bail!(
                        "test hook {}: a scheduler error after {} settled jobs",
                        hooks::SCHEDULER_ERROR_AFTER,
                        sched.settled
                    );
                }
                let dt = sched.accounted.elapsed().as_secs_f64();
                sched.accounted = Instant::now();
                store.daemon_event(dt, None)?;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => anyhow::bail!("every worker is gone"),
        }
        let t = now();
        for (job, f) in &mut sched.in_flight {
            if !f.lapsed && t > f.deadline {
                log(format!(
                    "job {job}: lease lapsed after {:.0} s; stopping it",
                    cfg.job_timeout
                ));
                f.lapsed = true;
                f.stop.store(true, Ordering::SeqCst);
            }
        }
        if sched.accounted.elapsed() > Duration::from_secs(30) {
            store.daemon_event(sched.accounted.elapsed().as_secs_f64(), None)?;
            sched.accounted = Instant::now();
        }
    }
    if let Some(reason) = unrunnable {
        anyhow::bail!("a job cannot run in a worker process: {reason}");
    }
    Ok(finished_reason)
}

/// After a scheduler error: asks every job in flight to stop, and records
/// each end that comes back (they checkpoint and go back to the queue)
/// until none is left or the workers are gone. Errors are logged: the next
/// start puts back whatever lease is left.
pub(super) fn drain(
    store: &Store,
    wcfg: &worker::WorkerConfig,
    done_rx: &crossbeam_channel::Receiver<Done>,
    sched: &mut Schedule,
) {
    for f in sched.in_flight.values() {
        f.stop.store(true, Ordering::SeqCst);
    }
    while !sched.in_flight.is_empty() {
        match done_rx.recv_timeout(Duration::from_secs(1)) {
            Ok(done) => {
                let Some(f) = sched.in_flight.remove(&done.job) else {
                    continue;
                };
                if let Err(e) = settle(store, wcfg, &done, &f) {
                    log(format!(
                        "job {}: its end could not be recorded ({e:#}); it runs again from its \
                         last checkpoint at the next start",
                        done.job
                    ));
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                log(format!(
                    "every worker is gone with {} job(s) in flight; they are put back at the \
                     next start",
                    sched.in_flight.len()
                ));
                return;
            }
        }
    }
}

/// Records what a worker reported.
fn settle(
    store: &Store,
    wcfg: &worker::WorkerConfig,
    done: &Done,
    f: &InFlight,
) -> anyhow::Result<()> {
    settle_outcome(store, wcfg, done, f)?;
    if let Some(slurm) = &wcfg.slurm {
        // The end on disk before the attempt's result file goes.
        store.flush()?;
        slurm.settled(&wcfg.state, done.job, f.attempt, &done.outcome);
    }
    Ok(())
}

/// Records how a job ended.
fn settle_outcome(
    store: &Store,
    wcfg: &worker::WorkerConfig,
    done: &Done,
    f: &InFlight,
) -> anyhow::Result<()> {
    let job = done.job;
    let fail = |why: String| -> anyhow::Result<()> {
        log(format!("job {job}: failed: {why}"));
        store.release(
            job,
            f.attempt,
            &Release::Failed {
                reason: why,
                retry: false,
            },
        )?;
        Ok(())
    };
    match &done.outcome {
        Outcome::Finished(result) => {
            let result = result.as_ref();
            let diverged = match result {
                Evaluation::Tasks(r) => r.per_setting.iter().find_map(divergence),
                Evaluation::Setting(r) => divergence(r),
                Evaluation::Scale(_) | Evaluation::Overtrain(_) | Evaluation::Run(_) => None,
            };
            if let Some(why) = diverged {
                fail(why)?;
            } else {
                let seconds = result.seconds();
                let summary = |score, per_task, predicted_loss| StageSummary {
                    job,
                    score,
                    per_task,
                    seconds,
                    finished: now(),
                    predicted_loss,
                };
                let (part, whole) = match result {
                    Evaluation::Tasks(r) => (
                        None,
                        Some((
                            summary(r.score, r.per_task.clone(), None),
                            serde_json::to_value(r)?,
                        )),
                    ),
                    Evaluation::Scale(r) => (
                        None,
                        Some((
                            summary(r.score, Default::default(), Some(r.predicted_loss)),
                            serde_json::to_value(r)?,
                        )),
                    ),
                    Evaluation::Overtrain(r) => (
                        None,
                        Some((
                            summary(r.score, Default::default(), Some(r.loss)),
                            serde_json::to_value(r)?,
                        )),
                    ),
                    Evaluation::Setting(r) => (Some(serde_json::to_value(r)?), None),
                    Evaluation::Run(r) => (Some(serde_json::to_value(r)?), None),
                };
                let assembled = match whole {
                    Some(w) => Ok(Some(w)),
                    None => assemble_split(store, done, result, &wcfg.preset, wcfg.corpus.name())?,
                };
                let end = match &assembled {
                    Ok(Some((summary, full))) => StageEnd::Done { summary, full },
                    Ok(None) => StageEnd::Pending,
                    Err(reason) => StageEnd::Failed {
                        reason: reason.clone(),
                    },
                };
                let recorded = store.finish(job, f.attempt, seconds, part.as_ref(), &end)?;
                // On disk before the log says so: a kill -9 after the line
                // below never loses what it reports.
                store.flush()?;
                if recorded {
                    match &end {
                        StageEnd::Done { summary, .. } => {
                            let what = match summary.predicted_loss {
                                Some(l) => {
                                    format!("predicted loss {l:.4} (score {:.4})", summary.score)
                                }
                                None => format!("score {:.4}", summary.score),
                            };
                            log(format!(
                                "job {job}: {} {what} in {:.1} s",
                                done.stage.name(),
                                summary.seconds
                            ));
                        }
                        StageEnd::Failed { reason } => {
                            log(format!("job {job}: {} failed: {reason}", done.stage.name()));
                        }
                        StageEnd::Pending => log(format!(
                            "job {job}: {} run {} done in {seconds:.1} s",
                            done.stage.name(),
                            done.part.as_deref().unwrap_or("?")
                        )),
                    }
                }
            }
            clean_up(store, &wcfg.state, done)?;
        }
        Outcome::OutOfTime => {
            let state = store.release(job, f.attempt, &Release::Lapsed)?;
            log(format!(
                "job {job}: its worker's own time budget is spent (checkpointed); now {state:?}"
            ));
            if matches!(state, Some(JobState::Failed { .. })) {
                clean_up(store, &wcfg.state, done)?;
            }
        }
        Outcome::Detached { reason } => {
            // The lease stays: the next daemon re-attaches to the job.
            log(format!("job {job}: {reason}"));
        }
        Outcome::Unrunnable { .. } => {
            let state = store.release(job, f.attempt, &Release::Interrupted)?;
            log(format!("job {job}: not run; now {state:?}"));
        }
        Outcome::Interrupted => {
            let how = if f.lapsed {
                Release::Lapsed
            } else {
                Release::Interrupted
            };
            let state = store.release(job, f.attempt, &how)?;
            log(format!("job {job}: interrupted; now {state:?}"));
            if matches!(state, Some(JobState::Failed { .. })) {
                clean_up(store, &wcfg.state, done)?;
            }
        }
        Outcome::Failed { reason, retry } => {
            let state = store.release(
                job,
                f.attempt,
                &Release::Failed {
                    reason: reason.clone(),
                    retry: *retry,
                },
            )?;
            log(format!("job {job}: failed: {reason}; now {state:?}"));
            if matches!(state, Some(JobState::Failed { .. })) {
                clean_up(store, &wcfg.state, done)?;
            }
        }
    }
    Ok(())
}

/// Removes what a finished job kept on disk: the stage's directory once no
/// job of the candidate's stage is queued or running, else the run's own
/// files (the others' checkpoints stay).
fn clean_up(store: &Store, state: &Path, done: &Done) -> anyhow::Result<()> {
    // The job's end on disk before its checkpoints go, on every path (done,
    // diverged, failed): a kill -9 after this line cannot send it back to
    // square one.
    store.flush()?;
    let dir = crate::exec::runs_dir(state, done.arch, done.stage);
    let open = match store.candidate(done.arch)? {
        Some(c) => store
            .stage_jobs(&c, done.stage)?
            .iter()
            .any(|j| matches!(j.state, JobState::Queued | JobState::Leased { .. })),
        None => false,
    };
    match (&done.part, open) {
        (Some(key), true) => {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                // `<key>.ckpt…`, `<key>_lr…` (a setting's sweep runs); not
                // `<key>0.ckpt` of another run.
                let name = entry.file_name().to_string_lossy().into_owned();
                if name
                    .strip_prefix(key.as_str())
                    .is_some_and(|rest| rest.starts_with(['.', '_']))
                {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        _ => {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    Ok(())
}
