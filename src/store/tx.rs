//! One transaction over every tree, and the state changes built on it.

use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use super::error::Abort;
use super::keys::{be, board_key, bucket, decode, encode, hist_key, stage_key};
use super::trees::Tree;
use super::*;
use crate::genome::ArchId;
use crate::space::StageName;

/// One transaction's view of all trees.
pub struct Tx<'a> {
    pub(super) t: &'a [TransactionalTree],
}

impl Tx<'_> {
    /// The view of `tree`.
    pub(super) fn tree(&self, tree: Tree) -> &TransactionalTree {
        &self.t[tree.index()]
    }

    pub(super) fn meta(&self) -> &TransactionalTree {
        self.tree(Tree::Meta)
    }

    pub(super) fn get<T: DeserializeOwned>(
        &self,
        tree: Tree,
        key: &[u8],
    ) -> Result<Option<T>, Abort> {
        match self.tree(tree).get(key)? {
            Some(v) => decode(tree.name(), &v)
                .map(Some)
                .map_err(ConflictableTransactionError::Abort),
            None => Ok(None),
        }
    }

    pub(super) fn put<T: Serialize>(&self, tree: Tree, key: &[u8], value: &T) -> Result<(), Abort> {
        self.tree(tree).insert(key, encode(value))?;
        Ok(())
    }

    pub(super) fn stats(&self) -> Result<Stats, Abort> {
        Ok(self.get(Tree::Meta, b"stats")?.unwrap_or_default())
    }

    pub(super) fn event(&self, kind: EventKind) -> Result<(), Abort> {
        let id = self.meta().generate_id()?;
        self.put(Tree::Events, &be(id), &Event { time: now(), kind })
    }

    pub(super) fn candidate(&self, id: ArchId) -> Result<Option<Candidate>, Abort> {
        self.get(Tree::Candidates, &id.0)
    }

    pub(super) fn job(&self, id: JobId) -> Result<Option<Job>, Abort> {
        self.get(Tree::Jobs, &be(id))
    }

    /// Writes `job` in `to`, keeping queue, leases and stats in step.
    pub(super) fn move_job(
        &self,
        job: &mut Job,
        to: JobState,
        stats: &mut Stats,
    ) -> Result<(), Abort> {
        let key = be(job.id);
        match job.state {
            JobState::Queued => {
                self.tree(Tree::Queue).remove(&key)?;
            }
            JobState::Leased { .. } => {
                self.tree(Tree::Leases).remove(&key)?;
            }
            _ => {}
        }
        match to {
            JobState::Queued => {
                self.tree(Tree::Queue).insert(&key, &[])?;
            }
            JobState::Leased { .. } => {
                self.tree(Tree::Leases).insert(&key, &[])?;
            }
            _ => {}
        }
        stats.transition(job.stage, Some(&job.state), &to);
        job.state = to;
        self.put(Tree::Jobs, &key, job)
    }

    /// Queues `cand` for `stage`: one job per run in `parts`, or one job
    /// for the whole stage when `parts` is empty. Returns the first job.
    pub(super) fn queue_stage(
        &self,
        cand: &mut Candidate,
        stage: StageName,
        parts: &[String],
        stats: &mut Stats,
    ) -> Result<JobId, Abort> {
        stats.evaluations.entry(stage).or_default().open += 1;
        cand.queued.push(stage);
        if parts.is_empty() {
            return self.new_job(cand, stage, None, stats);
        }
        let mut first = None;
        for (i, key) in parts.iter().enumerate() {
            let part = Part {
                index: i as u32,
                of: parts.len() as u32,
                key: key.clone(),
            };
            let id = self.new_job(cand, stage, Some(part), stats)?;
            first.get_or_insert(id);
        }
        Ok(first.expect("at least one part"))
    }

    /// A new queued job for `arch` at `stage`.
    pub(super) fn new_job(
        &self,
        cand: &mut Candidate,
        stage: StageName,
        part: Option<Part>,
        stats: &mut Stats,
    ) -> Result<JobId, Abort> {
        let id: u64 = self.get(Tree::Meta, b"next-job")?.unwrap_or(1);
        self.put(Tree::Meta, b"next-job", &(id + 1))?;
        let job = Job {
            id,
            arch: cand.id,
            stage,
            part,
            attempt: 1,
            failures: 0,
            state: JobState::Queued,
            created: now(),
        };
        stats.transition(stage, None, &job.state);
        self.put(Tree::Jobs, &be(id), &job)?;
        self.tree(Tree::Queue).insert(&be(id), &[])?;
        cand.jobs.push(id);
        self.event(EventKind::Queued {
            job: id,
            arch: cand.id,
            stage,
        })?;
        Ok(id)
    }

    /// Records `cand`'s verdict at `stage`: summary, board, histogram,
    /// front, full result, counts.
    pub(super) fn complete_stage(
        &self,
        c: &mut Candidate,
        stage: StageName,
        summary: &StageSummary,
        full: &serde_json::Value,
        stats: &mut Stats,
    ) -> Result<(), Abort> {
        self.put(Tree::StageResults, &stage_key(c.id, stage), full)?;
        let hkey = hist_key(stage);
        let mut hist: Vec<u64> = self
            .get(Tree::Meta, hkey.as_bytes())?
            .unwrap_or_else(|| vec![0; HIST_BUCKETS]);
        if let Some(old) = c.stages.get(&stage) {
            self.tree(Tree::Board)
                .remove(board_key(stage, old.score, c.id))?;
            let slot = &mut hist[bucket(old.score)];
            *slot = slot.saturating_sub(1);
        } else {
            let e = stats.evaluations.entry(stage).or_default();
            e.open = e.open.saturating_sub(1);
            e.done += 1;
        }
        self.tree(Tree::Board)
            .insert(board_key(stage, summary.score, c.id), &[])?;
        hist[bucket(summary.score)] += 1;
        self.put(Tree::Meta, hkey.as_bytes(), &hist)?;
        c.stages.insert(stage, summary.clone());
        let key = format!("front/{}", stage.name());
        let mut front: Vec<FrontPoint> = self.get(Tree::Meta, key.as_bytes())?.unwrap_or_default();
        let p = FrontPoint {
            arch: c.id,
            score: summary.score,
            params: c.params,
            state: c.state,
        };
        front.retain(|q| q.arch != p.arch);
        if !front.iter().any(|q| q.dominates(&p)) {
            front.retain(|q| !p.dominates(q));
            front.push(p);
            front.sort_by(|a, b| b.score.total_cmp(&a.score));
        }
        self.put(Tree::Meta, key.as_bytes(), &front)
    }

    /// Gives up `c`'s evaluation at `stage` (once): the reason on the
    /// candidate, the counts, and its other runs still queued cancelled
    /// (those running finish and are recorded, the stage stays failed).
    pub(super) fn fail_stage(
        &self,
        c: &mut Candidate,
        stage: StageName,
        job: JobId,
        reason: &str,
        stats: &mut Stats,
    ) -> Result<(), Abort> {
        if c.stages.contains_key(&stage) || c.failed.contains_key(&stage) {
            return Ok(());
        }
        c.failed.insert(stage, reason.to_string());
        let e = stats.evaluations.entry(stage).or_default();
        e.open = e.open.saturating_sub(1);
        e.failed += 1;
        for &other in &c.jobs {
            if other == job {
                continue;
            }
            if let Some(mut o) = self.job(other)?
                && o.stage == stage
                && o.state == JobState::Queued
            {
                let why = format!("not run: job {job} of the same stage failed");
                self.move_job(
                    &mut o,
                    JobState::Failed {
                        reason: why.clone(),
                        finished: now(),
                    },
                    stats,
                )?;
                // Every job's end is in the log.
                self.event(EventKind::Failed {
                    job: other,
                    reason: why,
                })?;
            }
        }
        Ok(())
    }
}
