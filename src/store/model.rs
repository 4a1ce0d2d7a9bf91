//! The records the store keeps: plain serde data, JSON in sled.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::genome::{ArchId, ArchSpec};
use crate::space::{Operator, StageName};
use crate::tasks::TaskKind;

/// A job's number, in creation order.
pub type JobId = u64;

/// Seconds since the Unix epoch.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// What a search is: written once when the state dir is created.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchRecord {
    /// The search's name (the state dir's last component by default).
    pub name: String,
    /// mad-search version that created it.
    pub created_by: String,
    /// When, Unix seconds.
    pub created: f64,
    /// Seed of every random choice.
    pub seed: u64,
    /// Where the space came from (a path, or the embedded default's name).
    pub space_file: String,
    /// The space file's text, so a resumed search never depends on the file.
    pub space_text: String,
    /// The stage preset.
    pub preset: String,
    /// Limits on the search as a whole.
    pub budget: SearchBudget,
    /// The `scale` stage's corpus (an absolute path; `None`: the embedded
    /// default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corpus: Option<String>,
    /// The corpus's fingerprint when the search was created: a daemon or a
    /// worker process that finds another corpus there refuses to run
    /// (`None` in searches created before it was kept: not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corpus_fingerprint: Option<String>,
}

/// When the search stops proposing work.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchBudget {
    /// Wall time the daemon may run, summed over its runs, hours.
    pub hours: Option<f64>,
    /// Most evaluations per stage (finished or failed).
    pub evaluations: BTreeMap<StageName, u64>,
}

/// A stage's verdict kept on the candidate (the full result is in `results`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageSummary {
    /// The job that produced it.
    pub job: JobId,
    /// Mean of the task scores.
    pub score: f64,
    /// Per task.
    pub per_task: BTreeMap<TaskKind, f64>,
    /// Wall time of the evaluation, seconds.
    pub seconds: f64,
    /// When it finished, Unix seconds.
    pub finished: f64,
    /// `scale` only: the loss the fitted law predicts at the preset's target
    /// compute, nats per token (`score` is `exp(−predicted_loss)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_loss: Option<f64>,
}

/// One architecture in the population.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// Content id of the genome.
    pub id: ArchId,
    /// Creation order (0-based).
    pub seq: u64,
    /// The genome.
    pub genome: ArchSpec,
    /// Parents' ids (none for seeds and samples).
    pub parents: Vec<ArchId>,
    /// How it was made.
    pub operator: Operator,
    /// The baseline's name, for the paper's architectures.
    pub baseline: Option<String>,
    /// When it was created, Unix seconds.
    pub created: f64,
    /// Non-embedding parameters (at the space's budget context).
    pub params: u64,
    /// Recurrent state at the space's budget context, scalars.
    pub state: u64,
    /// Stages it has been queued for.
    pub queued: Vec<StageName>,
    /// Its jobs, oldest first.
    pub jobs: Vec<JobId>,
    /// Finished stages.
    pub stages: BTreeMap<StageName, StageSummary>,
    /// Stages whose job failed for good, with the reason.
    pub failed: BTreeMap<StageName, String>,
}

impl Candidate {
    /// The most advanced finished stage and its summary.
    pub fn best_stage(&self) -> Option<(StageName, &StageSummary)> {
        self.stages.iter().next_back().map(|(s, r)| (*s, r))
    }
}

/// Where a job is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum JobState {
    /// Waiting for a worker.
    Queued,
    /// Running under a lease.
    Leased {
        /// Worker index.
        worker: usize,
        /// Daemon process holding the lease.
        pid: u32,
        /// When it started, Unix seconds.
        started: f64,
        /// When the lease lapses, Unix seconds.
        deadline: f64,
    },
    /// Finished with a result.
    Done {
        /// Unix seconds.
        finished: f64,
    },
    /// Given up.
    Failed {
        /// Why.
        reason: String,
        /// Unix seconds.
        finished: f64,
    },
}

impl JobState {
    /// The state's name.
    pub fn name(&self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Leased { .. } => "running",
            JobState::Done { .. } => "done",
            JobState::Failed { .. } => "failed",
        }
    }
}

/// Which run of a stage a job is, when the stage is split into runs (one
/// job per `mad` task setting, one per `scale` training run).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// 0-based index among the stage's runs.
    pub index: u32,
    /// The stage's runs for this candidate.
    pub of: u32,
    /// The run's name (a task setting's directory name, a scaling run's
    /// `C<budget>_d<width>_r<repeats>`): checked against the plan the worker
    /// derives again from the genome and the preset.
    pub key: String,
}

/// One unit of work: a candidate through a stage, or through one run of a
/// stage split into runs (design §2: candidate, stage, setting, seed,
/// attempt).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Its number.
    pub id: JobId,
    /// The candidate.
    pub arch: ArchId,
    /// The stage.
    pub stage: StageName,
    /// The run of the stage; `None`: the whole stage in one job (`screen`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<Part>,
    /// 1 for the first try; +1 whenever a lease ends without a result.
    pub attempt: u32,
    /// Tries that failed (panic, timeout); three make the job failed.
    pub failures: u32,
    /// Where it is.
    pub state: JobState,
    /// When it was created, Unix seconds.
    pub created: f64,
}

/// Job counts of one stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Waiting.
    pub queued: u64,
    /// Leased.
    pub running: u64,
    /// Finished.
    pub done: u64,
    /// Given up.
    pub failed: u64,
}

impl Counts {
    fn slot(&mut self, state: &JobState) -> &mut u64 {
        match state {
            JobState::Queued => &mut self.queued,
            JobState::Leased { .. } => &mut self.running,
            JobState::Done { .. } => &mut self.done,
            JobState::Failed { .. } => &mut self.failed,
        }
    }

    /// Done plus failed: evaluations spent.
    pub fn spent(&self) -> u64 {
        self.done + self.failed
    }
}

/// Evaluations (a candidate through a stage, however many jobs it takes)
/// of one stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evaluations {
    /// Queued or running: some of its jobs are not done.
    pub open: u64,
    /// Finished with a stage result.
    pub done: u64,
    /// Given up (a job failed for good, or the stage's result could not be
    /// assembled from its runs).
    pub failed: u64,
}

impl Evaluations {
    /// Done plus failed.
    pub fn spent(&self) -> u64 {
        self.done + self.failed
    }

    /// Open, done or failed: what the stage's budget counts.
    pub fn committed(&self) -> u64 {
        self.open + self.done + self.failed
    }
}

/// Running totals, kept in one record so `status` reads them in one get.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Candidates created.
    pub candidates: u64,
    /// Jobs per stage and state.
    pub jobs: BTreeMap<StageName, Counts>,
    /// Evaluations per stage.
    #[serde(default)]
    pub evaluations: BTreeMap<StageName, Evaluations>,
    /// Seconds the daemon has run, summed over its runs (updated at leases,
    /// results and exit).
    pub daemon_seconds: f64,
    /// Evaluation wall time, summed, seconds.
    pub evaluation_seconds: f64,
}

impl Stats {
    /// Records a job moving from `from` (none for a new job) to `to`.
    pub fn transition(&mut self, stage: StageName, from: Option<&JobState>, to: &JobState) {
        let c = self.jobs.entry(stage).or_default();
        if let Some(from) = from {
            let slot = c.slot(from);
            *slot = slot.saturating_sub(1);
        }
        *c.slot(to) += 1;
    }
}

/// A point on a stage's Pareto front.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FrontPoint {
    /// The candidate.
    pub arch: ArchId,
    /// Its score at the stage (maximised).
    pub score: f64,
    /// Its parameters (minimised).
    pub params: u64,
    /// Its state (minimised).
    pub state: u64,
}

impl FrontPoint {
    /// Whether `self` is at least as good as `o` everywhere and better somewhere.
    pub fn dominates(&self, o: &FrontPoint) -> bool {
        let ge = self.score >= o.score && self.params <= o.params && self.state <= o.state;
        let gt = self.score > o.score || self.params < o.params || self.state < o.state;
        ge && gt
    }
}

/// What happened, for the append-only event log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum EventKind {
    /// A daemon started serving.
    DaemonStarted {
        /// Its pid.
        pid: u32,
    },
    /// A daemon stopped cleanly.
    DaemonStopped {
        /// Its pid.
        pid: u32,
    },
    /// A candidate joined the population.
    Created {
        /// Which.
        arch: ArchId,
        /// How.
        operator: Operator,
    },
    /// One run of a stage split into runs finished (the stage's result
    /// comes with its last run: [`EventKind::Finished`]).
    RunFinished {
        /// Which.
        job: JobId,
        /// The run's name.
        part: String,
    },
    /// A job was queued.
    Queued {
        /// Which.
        job: JobId,
        /// Candidate.
        arch: ArchId,
        /// Stage.
        stage: StageName,
    },
    /// A job started under a lease.
    Leased {
        /// Which.
        job: JobId,
        /// Try number.
        attempt: u32,
        /// Worker.
        worker: usize,
    },
    /// A job finished.
    Finished {
        /// Which.
        job: JobId,
        /// Its score.
        score: f64,
    },
    /// A job went back to the queue.
    Requeued {
        /// Which.
        job: JobId,
        /// The next try's number.
        attempt: u32,
        /// Why.
        why: String,
    },
    /// A job was given up.
    Failed {
        /// Which.
        job: JobId,
        /// Why.
        reason: String,
    },
}

/// One entry of the event log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unix seconds.
    pub time: f64,
    /// What.
    #[serde(flatten)]
    pub kind: EventKind,
}
