//! State changes: each one transaction over every tree ([`Store::tx`]),
//! so a kill leaves the state before it or after it.

use sled::transaction::ConflictableTransactionError;

use super::keys::be;
use super::trees::Tree;
use super::*;
use crate::genome::ArchId;
use crate::space::StageName;

/// Events removed per batch by [`Store::trim_events`].
const TRIM_BATCH: usize = 10_000;

/// How a finished job leaves its stage.
#[derive(Clone, Debug, PartialEq)]
pub enum StageEnd<'a> {
    /// Other runs of the stage are still to finish (or one failed for good).
    Pending,
    /// It was the last run (or the whole stage): the stage's verdict.
    Done {
        /// Kept on the candidate.
        summary: &'a StageSummary,
        /// The stage's full result.
        full: &'a serde_json::Value,
    },
    /// It was the last run, but the runs give no result (a scaling fit that
    /// fails, every optimiser setting of a task diverged): the stage fails
    /// for the candidate.
    Failed {
        /// Why.
        reason: String,
    },
}

/// How a lease ends without a result.
#[derive(Clone, Debug, PartialEq)]
pub enum Release {
    /// The daemon is stopping; the job resumes from its checkpoint later.
    Interrupted,
    /// The process holding the lease died (found at startup).
    Orphaned,
    /// The lease's deadline passed.
    Lapsed,
    /// The job failed; retried unless `retry` is false or it failed
    /// [`MAX_FAILURES`] times.
    Failed {
        /// Why.
        reason: String,
        /// Whether another try could succeed (a panic might be transient; a
        /// deterministic divergence is not).
        retry: bool,
    },
}

impl Store {
    /// Replaces the search's budget (a restart may give a new one).
    ///
    /// # Errors
    /// A damaged database.
    pub fn set_budget(&self, budget: &SearchBudget) -> Result<(), StoreError> {
        self.tx(|tx| {
            let mut s: SearchRecord = tx
                .get(Tree::Meta, b"search")?
                .ok_or_else(|| ConflictableTransactionError::Abort("no search record".into()))?;
            s.budget = budget.clone();
            tx.put(Tree::Meta, b"search", &s)
        })
    }

    /// Adds a candidate and queues it for `stage` (one job per run in
    /// `parts`, or one for the whole stage when it is empty); `None` when
    /// its id is already in the population (nothing changes). The
    /// candidate's `seq`, `queued` and `created` are set here. Returns the
    /// first job.
    ///
    /// # Errors
    /// A damaged database.
    pub fn add_candidate(
        &self,
        cand: &Candidate,
        stage: StageName,
        parts: &[String],
    ) -> Result<Option<JobId>, StoreError> {
        self.tx(|tx| {
            if tx.candidate(cand.id)?.is_some() {
                return Ok(None);
            }
            let mut stats = tx.stats()?;
            let mut c = cand.clone();
            c.seq = stats.candidates;
            c.created = now();
            c.queued.clear();
            c.jobs.clear();
            stats.candidates += 1;
            let job = tx.queue_stage(&mut c, stage, parts, &mut stats)?;
            tx.put(Tree::Candidates, &c.id.0, &c)?;
            tx.tree(Tree::BySeq).insert(&be(c.seq), &c.id.0)?;
            if let Some(name) = &c.baseline {
                let mut b: Vec<(String, ArchId)> =
                    tx.get(Tree::Meta, b"baselines")?.unwrap_or_default();
                b.push((name.clone(), c.id));
                tx.put(Tree::Meta, b"baselines", &b)?;
            }
            tx.event(EventKind::Created {
                arch: c.id,
                operator: c.operator,
            })?;
            tx.put(Tree::Meta, b"stats", &stats)?;
            Ok(Some(job))
        })
    }

    /// Queues `arch` for `stage` (a promotion), as [`Store::add_candidate`]
    /// does; `None` if it was queued for that stage before or is unknown.
    ///
    /// # Errors
    /// A damaged database.
    pub fn enqueue(
        &self,
        arch: ArchId,
        stage: StageName,
        parts: &[String],
    ) -> Result<Option<JobId>, StoreError> {
        self.tx(|tx| {
            let Some(mut c) = tx.candidate(arch)? else {
                return Ok(None);
            };
            if c.queued.contains(&stage) {
                return Ok(None);
            }
            let mut stats = tx.stats()?;
            let job = tx.queue_stage(&mut c, stage, parts, &mut stats)?;
            tx.put(Tree::Candidates, &c.id.0, &c)?;
            tx.put(Tree::Meta, b"stats", &stats)?;
            Ok(Some(job))
        })
    }

    /// Leases a queued job to `worker` until `deadline`; `None` if it is no
    /// longer queued.
    ///
    /// # Errors
    /// A damaged database.
    pub fn lease(
        &self,
        job: JobId,
        worker: usize,
        deadline: f64,
    ) -> Result<Option<Job>, StoreError> {
        self.tx(|tx| {
            let Some(mut j) = tx.job(job)? else {
                return Ok(None);
            };
            if j.state != JobState::Queued {
                return Ok(None);
            }
            let mut stats = tx.stats()?;
            let to = JobState::Leased {
                worker,
                pid: std::process::id(),
                started: now(),
                deadline,
            };
            tx.move_job(&mut j, to, &mut stats)?;
            tx.put(Tree::Meta, b"stats", &stats)?;
            tx.event(EventKind::Leased {
                job,
                attempt: j.attempt,
                worker,
            })?;
            Ok(Some(j))
        })
    }

    /// Takes over the lease of `job`'s attempt `attempt` from a dead daemon
    /// (its work goes on elsewhere: a Slurm job this daemon re-attaches
    /// to): the lease names this process and `worker`, and keeps its start
    /// and deadline. `None` if the job is not leased under `attempt`.
    ///
    /// # Errors
    /// A damaged database.
    pub fn adopt(
        &self,
        job: JobId,
        attempt: u32,
        worker: usize,
    ) -> Result<Option<Job>, StoreError> {
        self.tx(|tx| {
            let Some(mut j) = tx.job(job)? else {
                return Ok(None);
            };
            let JobState::Leased {
                started, deadline, ..
            } = j.state
            else {
                return Ok(None);
            };
            if j.attempt != attempt {
                return Ok(None);
            }
            let mut stats = tx.stats()?;
            let to = JobState::Leased {
                worker,
                pid: std::process::id(),
                started,
                deadline,
            };
            tx.move_job(&mut j, to, &mut stats)?;
            tx.put(Tree::Meta, b"stats", &stats)?;
            Ok(Some(j))
        })
    }

    /// Records a finished job: its run's result `part` (for a stage split
    /// into runs) under the job, `seconds` of evaluation time, and how the
    /// stage ends ([`StageEnd`]). `false` (and nothing changes) when the job
    /// is not leased under `attempt` any more (its lease lapsed meanwhile).
    /// A [`StageEnd::Done`] while another run of the stage is not done is
    /// recorded as [`StageEnd::Pending`] (the caller read a stale view).
    ///
    /// # Errors
    /// A damaged database.
    pub fn finish(
        &self,
        job: JobId,
        attempt: u32,
        seconds: f64,
        part: Option<&serde_json::Value>,
        end: &StageEnd<'_>,
    ) -> Result<bool, StoreError> {
        self.tx(|tx| {
            let Some(mut j) = tx.job(job)? else {
                return Ok(false);
            };
            if !matches!(j.state, JobState::Leased { .. }) || j.attempt != attempt {
                return Ok(false);
            }
            let Some(mut c) = tx.candidate(j.arch)? else {
                return Err(ConflictableTransactionError::Abort(format!(
                    "job {job} names a missing candidate"
                )));
            };
            let mut stats = tx.stats()?;
            tx.move_job(&mut j, JobState::Done { finished: now() }, &mut stats)?;
            stats.evaluation_seconds += seconds;
            if let Some(part) = part {
                tx.put(Tree::Results, &be(job), part)?;
            }
            let mut last = true;
            for &other in &c.jobs {
                if other != job
                    && let Some(o) = tx.job(other)?
                    && o.stage == j.stage
                    && !matches!(o.state, JobState::Done { .. })
                {
                    last = false;
                }
            }
            match end {
                StageEnd::Done { summary, full } if last => {
                    tx.complete_stage(&mut c, j.stage, summary, full, &mut stats)?;
                    tx.event(EventKind::Finished {
                        job,
                        score: summary.score,
                    })?;
                }
                StageEnd::Failed { reason } if last => {
                    tx.fail_stage(&mut c, j.stage, job, reason, &mut stats)?;
                    tx.event(EventKind::Failed {
                        job,
                        reason: reason.clone(),
                    })?;
                }
                _ => {
                    tx.event(EventKind::RunFinished {
                        job,
                        part: j.part.as_ref().map(|p| p.key.clone()).unwrap_or_default(),
                    })?;
                }
            }
            tx.put(Tree::Candidates, &c.id.0, &c)?;
            tx.put(Tree::Meta, b"stats", &stats)?;
            Ok(true)
        })
    }

    /// Ends a lease without a result: back to the queue with attempt + 1, or
    /// failed for good. Returns the job's new state, `None` if the job is not
    /// leased under `attempt`.
    ///
    /// # Errors
    /// A damaged database.
    pub fn release(
        &self,
        job: JobId,
        attempt: u32,
        how: &Release,
    ) -> Result<Option<JobState>, StoreError> {
        self.tx(|tx| {
            let Some(mut j) = tx.job(job)? else {
                return Ok(None);
            };
            if !matches!(j.state, JobState::Leased { .. }) || j.attempt != attempt {
                return Ok(None);
            }
            let mut stats = tx.stats()?;
            let (why, give_up) = match how {
                Release::Interrupted => ("interrupted by a stop".to_string(), false),
                Release::Orphaned => ("its daemon died while it ran".to_string(), false),
                Release::Lapsed => {
                    j.failures += 1;
                    (
                        "its lease lapsed (over the time limit)".to_string(),
                        j.failures >= MAX_FAILURES,
                    )
                }
                Release::Failed { reason, retry } => {
                    j.failures += 1;
                    (reason.clone(), !retry || j.failures >= MAX_FAILURES)
                }
            };
            if give_up {
                tx.move_job(
                    &mut j,
                    JobState::Failed {
                        reason: why.clone(),
                        finished: now(),
                    },
                    &mut stats,
                )?;
                if let Some(mut c) = tx.candidate(j.arch)? {
                    let stage_why = match &j.part {
                        Some(p) => format!("run {}: {why}", p.key),
                        None => why.clone(),
                    };
                    tx.fail_stage(&mut c, j.stage, job, &stage_why, &mut stats)?;
                    tx.put(Tree::Candidates, &c.id.0, &c)?;
                }
                tx.event(EventKind::Failed { job, reason: why })?;
            } else {
                j.attempt += 1;
                tx.move_job(&mut j, JobState::Queued, &mut stats)?;
                tx.event(EventKind::Requeued {
                    job,
                    attempt: j.attempt,
                    why,
                })?;
            }
            tx.put(Tree::Meta, b"stats", &stats)?;
            Ok(Some(j.state.clone()))
        })
    }

    /// Puts every lease back in the queue: run once at daemon start, when no
    /// lease can be live (the database lock proves the old daemon is gone).
    ///
    /// # Errors
    /// A damaged database.
    pub fn recover_leases(&self) -> Result<Vec<JobId>, StoreError> {
        self.recover_leases_except(&[])
    }

    /// [`Store::recover_leases`], except the jobs in `adopted` (re-attached
    /// by this daemon: their work goes on elsewhere, on Slurm).
    ///
    /// # Errors
    /// A damaged database.
    pub fn recover_leases_except(&self, adopted: &[JobId]) -> Result<Vec<JobId>, StoreError> {
        let mut out = Vec::new();
        for j in self.leased()? {
            if adopted.contains(&j.id) {
                continue;
            }
            if self.release(j.id, j.attempt, &Release::Orphaned)?.is_some() {
                out.push(j.id);
            }
        }
        Ok(out)
    }

    /// Adds to the daemon's running time and logs an event, in one transaction.
    ///
    /// # Errors
    /// A damaged database.
    pub fn daemon_event(&self, seconds: f64, kind: Option<EventKind>) -> Result<(), StoreError> {
        self.tx(|tx| {
            let mut stats = tx.stats()?;
            stats.daemon_seconds += seconds;
            tx.put(Tree::Meta, b"stats", &stats)?;
            if let Some(k) = &kind {
                tx.event(k.clone())?;
            }
            Ok(())
        })
    }

    /// Drops the oldest events so that at most `keep` remain; returns how
    /// many went. The log is append-only, so this needs no transaction: it
    /// goes oldest first in batches of [`TRIM_BATCH`] (each atomic, none
    /// holding sled's write lock for long), and a kill midway leaves a
    /// shorter log, never a gap among the newest. Walks the newest `keep`
    /// keys to find where to cut.
    ///
    /// # Errors
    /// A damaged database.
    pub fn trim_events(&self, keep: usize) -> Result<usize, StoreError> {
        self.trim_events_by(keep, TRIM_BATCH)
    }

    /// [`Store::trim_events`] in batches of `batch` keys.
    pub(super) fn trim_events_by(&self, keep: usize, batch: usize) -> Result<usize, StoreError> {
        let events = self.tree(Tree::Events);
        // The newest key not kept: everything up to it goes.
        let Some(cut) = events.iter().keys().rev().nth(keep) else {
            return Ok(0);
        };
        let cut = cut.map_err(|e| self.db_err(e))?;
        let mut gone = 0;
        loop {
            let mut removal = sled::Batch::default();
            let mut n = 0;
            for k in events
                .range::<&[u8], _>(..=cut.as_ref())
                .keys()
                .take(batch.max(1))
            {
                removal.remove(k.map_err(|e| self.db_err(e))?);
                n += 1;
            }
            if n == 0 {
                return Ok(gone);
            }
            events.apply_batch(removal).map_err(|e| self.db_err(e))?;
            gone += n;
        }
    }

    /// Writes everything to disk.
    ///
    /// # Errors
    /// An I/O failure.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(|e| self.db_err(e))
    }
}
