//! The population store: one sled database per search (`<state>/db`),
//! written by the daemon alone (design §4). Every state change is one
//! transaction over all trees, so a kill -9 at any moment leaves either the
//! state before the change or the state after it.
//!
//! Trees and keys (integers big-endian, so key order is numeric order):
//!
//! | tree | key | value |
//! |---|---|---|
//! | `meta` | `schema`, `search`, `stats`, `front/<stage>`, `hist/<stage>`, `baselines`, `next-job` | u32 / JSON |
//! | `candidates` | arch id (16 bytes) | [`Candidate`] |
//! | `by-seq` | creation number | arch id |
//! | `jobs` | job id | [`Job`] |
//! | `queue` | job id | (empty): jobs waiting, oldest first |
//! | `leases` | job id | (empty): jobs running |
//! | `results` | job id | the stage's full result (JSON) |
//! | `events` | event number | [`Event`] |
//! | `board` | stage, score descending, arch id | (empty): the leaderboard index |
//! | `stage-results` | arch id, stage | the stage's full result (JSON) |
//!
//! A stage runs as one job (`screen`) or as one job per run (`mad`: per task
//! setting; `scale`: per training run), each leased, retried and recorded on
//! its own. `results` holds a run's result under its job; the job that
//! finishes a stage's last run also writes the stage's result, assembled from
//! all of them, to `stage-results` and the candidate's summary, in the same
//! transaction.
//!
//! `stats`, the fronts, the score histograms and the board are maintained in the same
//! transactions as the records they summarise, so `status` reads a few keys
//! instead of scanning the population.

mod model;

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};

pub use model::{
    Candidate, Counts, Evaluations, Event, EventKind, FrontPoint, Job, JobId, JobState, Part,
    SearchBudget, SearchRecord, StageSummary, Stats, now,
};

use crate::genome::ArchId;
use crate::space::StageName;

/// The schema this binary writes. Older databases are upgraded on open by
/// [`MIGRATIONS`]; newer ones are refused.
pub const SCHEMA: u32 = 2;

/// Upgrades from schema `i + 1` to `i + 2`, applied in order when a writer
/// opens the database. Each is one transaction that writes the new schema
/// number with its changes: a kill leaves the old database whole.
const MIGRATIONS: &[Migration] = &[migrate_to_2];

/// One schema upgrade.
type Migration = fn(&Store) -> Result<(), StoreError>;

/// Failures of a job before it is given up.
pub const MAX_FAILURES: u32 = 3;

const TREES: [&str; 10] = [
    "meta",
    "candidates",
    "by-seq",
    "jobs",
    "queue",
    "leases",
    "results",
    "events",
    "board",
    "stage-results",
];

/// What went wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No database in the state dir.
    #[error("no search in {} (no database at {}); start one with `mad-search start --state {}`", dir.display(), dir.join("db").display(), dir.display())]
    Missing {
        /// The state dir.
        dir: PathBuf,
    },
    /// Another process has the database open.
    #[error("the database in {} is in use by another process (a running daemon?): {detail}", dir.display())]
    Locked {
        /// The state dir.
        dir: PathBuf,
        /// sled's words.
        detail: String,
    },
    /// Written by a newer mad-search.
    #[error("the database in {} has schema {found}, but this mad-search ({}) reads schemas up to {supported}; use a newer mad-search", dir.display(), env!("CARGO_PKG_VERSION"))]
    Newer {
        /// The state dir.
        dir: PathBuf,
        /// Its schema.
        found: u32,
        /// Ours.
        supported: u32,
    },
    /// Written by an older mad-search, opened by a reader (which never
    /// upgrades).
    #[error("the database in {} has schema {found}, older than this mad-search's {supported}; `mad-search start --state {}` upgrades it (or read it with the mad-search that wrote it)", dir.display(), dir.display())]
    Older {
        /// The state dir.
        dir: PathBuf,
        /// Its schema.
        found: u32,
        /// Ours.
        supported: u32,
    },
    /// Unreadable content.
    #[error("the database in {} is damaged: {detail}", dir.display())]
    Corrupt {
        /// The state dir.
        dir: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// sled failed.
    #[error("database in {}: {source}", dir.display())]
    Db {
        /// The state dir.
        dir: PathBuf,
        /// Why.
        source: sled::Error,
    },
}

type Abort = ConflictableTransactionError<String>;

/// The open database.
pub struct Store {
    dir: PathBuf,
    db: sled::Db,
    trees: [sled::Tree; 10],
}

/// One transaction's view of all trees.
pub struct Tx<'a> {
    t: &'a [TransactionalTree],
}

fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

fn stage_byte(s: StageName) -> u8 {
    StageName::ALL
        .iter()
        .position(|x| *x == s)
        .expect("every stage is in ALL") as u8
}

/// The `board` tree's key of a score: stage byte, score descending, arch id.
pub fn board_key(stage: StageName, score: f64, arch: ArchId) -> Vec<u8> {
    // Scores are in [0, 1]; the bits of a non-negative float order like it.
    let bits = score.max(0.0).to_bits();
    let mut k = Vec::with_capacity(25);
    k.push(stage_byte(stage));
    k.extend_from_slice(&(u64::MAX - bits).to_be_bytes());
    k.extend_from_slice(&arch.0);
    k
}

/// The `stage-results` key of a candidate's stage.
fn stage_key(arch: ArchId, stage: StageName) -> [u8; 17] {
    let mut k = [0; 17];
    k[..16].copy_from_slice(&arch.0);
    k[16] = stage_byte(stage);
    k
}

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

/// sled's settings for a store at `path`.
pub fn sled_config(path: &Path) -> sled::Config {
    sled::Config::new().path(path)
}

/// The status report cached next to the database (`daemon::snapshot`).
/// Every open for writing deletes it before anything can change, which is
/// what keeps a snapshot that is present true.
pub const STATUS_SNAPSHOT: &str = "status.snapshot.json";

/// Buckets of the per-stage score histogram behind [`Store::rank_of`].
pub const HIST_BUCKETS: usize = 4096;

/// The histogram bucket of a score in [0, 1].
pub fn bucket(score: f64) -> usize {
    ((score.clamp(0.0, 1.0) * HIST_BUCKETS as f64) as usize).min(HIST_BUCKETS - 1)
}

/// The `meta` key of a stage's score histogram.
pub fn hist_key(stage: StageName) -> String {
    format!("hist/{}", stage.name())
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("{what}: {e}"))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store records serialise")
}

impl Tx<'_> {
    fn meta(&self) -> &TransactionalTree {
        &self.t[0]
    }

    fn get<T: DeserializeOwned>(&self, tree: usize, key: &[u8]) -> Result<Option<T>, Abort> {
        match self.t[tree].get(key)? {
            Some(v) => decode(TREES[tree], &v)
                .map(Some)
                .map_err(ConflictableTransactionError::Abort),
            None => Ok(None),
        }
    }

    fn put<T: Serialize>(&self, tree: usize, key: &[u8], value: &T) -> Result<(), Abort> {
        self.t[tree].insert(key, encode(value))?;
        Ok(())
    }

    fn stats(&self) -> Result<Stats, Abort> {
        Ok(self.get(0, b"stats")?.unwrap_or_default())
    }

    fn event(&self, kind: EventKind) -> Result<(), Abort> {
        let id = self.meta().generate_id()?;
        self.put(7, &be(id), &Event { time: now(), kind })
    }

    fn candidate(&self, id: ArchId) -> Result<Option<Candidate>, Abort> {
        self.get(1, &id.0)
    }

    fn job(&self, id: JobId) -> Result<Option<Job>, Abort> {
        self.get(3, &be(id))
    }

    /// Writes `job` in `to`, keeping queue, leases and stats in step.
    fn move_job(&self, job: &mut Job, to: JobState, stats: &mut Stats) -> Result<(), Abort> {
        let key = be(job.id);
        match job.state {
            JobState::Queued => {
                self.t[4].remove(&key)?;
            }
            JobState::Leased { .. } => {
                self.t[5].remove(&key)?;
            }
            _ => {}
        }
        match to {
            JobState::Queued => {
                self.t[4].insert(&key, &[])?;
            }
            JobState::Leased { .. } => {
                self.t[5].insert(&key, &[])?;
            }
            _ => {}
        }
        stats.transition(job.stage, Some(&job.state), &to);
        job.state = to;
        self.put(3, &key, job)
    }

    /// Queues `cand` for `stage`: one job per run in `parts`, or one job
    /// for the whole stage when `parts` is empty. Returns the first job.
    fn queue_stage(
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
    fn new_job(
        &self,
        cand: &mut Candidate,
        stage: StageName,
        part: Option<Part>,
        stats: &mut Stats,
    ) -> Result<JobId, Abort> {
        let id: u64 = self.get(0, b"next-job")?.unwrap_or(1);
        self.put(0, b"next-job", &(id + 1))?;
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
        self.put(3, &be(id), &job)?;
        self.t[4].insert(&be(id), &[])?;
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
    fn complete_stage(
        &self,
        c: &mut Candidate,
        stage: StageName,
        summary: &StageSummary,
        full: &serde_json::Value,
        stats: &mut Stats,
    ) -> Result<(), Abort> {
        self.put(9, &stage_key(c.id, stage), full)?;
        let hkey = hist_key(stage);
        let mut hist: Vec<u64> = self
            .get(0, hkey.as_bytes())?
            .unwrap_or_else(|| vec![0; HIST_BUCKETS]);
        if let Some(old) = c.stages.get(&stage) {
            self.t[8].remove(board_key(stage, old.score, c.id))?;
            let slot = &mut hist[bucket(old.score)];
            *slot = slot.saturating_sub(1);
        } else {
            let e = stats.evaluations.entry(stage).or_default();
            e.open = e.open.saturating_sub(1);
            e.done += 1;
        }
        self.t[8].insert(board_key(stage, summary.score, c.id), &[])?;
        hist[bucket(summary.score)] += 1;
        self.put(0, hkey.as_bytes(), &hist)?;
        c.stages.insert(stage, summary.clone());
        let key = format!("front/{}", stage.name());
        let mut front: Vec<FrontPoint> = self.get(0, key.as_bytes())?.unwrap_or_default();
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
        self.put(0, key.as_bytes(), &front)
    }

    /// Gives up `c`'s evaluation at `stage` (once): the reason on the
    /// candidate, the counts, and its other runs still queued cancelled
    /// (those running finish and are recorded, the stage stays failed).
    fn fail_stage(
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
                        reason: why,
                        finished: now(),
                    },
                    stats,
                )?;
            }
        }
        Ok(())
    }
}

/// Schema 1 → 2: stages may run as several jobs. Full stage results move
/// from `results` (under the job that produced them) to `stage-results`,
/// and the per-stage evaluation counts are derived from the candidates.
/// Reads first (the caller holds the write lock: nothing changes meanwhile),
/// then every write and the new schema number in one transaction.
fn migrate_to_2(store: &Store) -> Result<(), StoreError> {
    let mut evaluations: std::collections::BTreeMap<StageName, Evaluations> = Default::default();
    let mut moves = Vec::new();
    for c in store.candidates()? {
        for &stage in &c.queued {
            let e = evaluations.entry(stage).or_default();
            if c.stages.contains_key(&stage) {
                e.done += 1;
            } else if c.failed.contains_key(&stage) {
                e.failed += 1;
            } else {
                e.open += 1;
            }
        }
        for (&stage, summary) in &c.stages {
            let old = be(summary.job);
            if let Some(full) = store.trees[6].get(old).map_err(|e| store.db_err(e))? {
                moves.push((old, stage_key(c.id, stage), full));
            }
        }
    }
    let mut stats = store.stats()?;
    stats.evaluations = evaluations;
    store.tx(|tx| {
        for (old, key, full) in &moves {
            tx.t[9].insert(&key[..], full.clone())?;
            tx.t[6].remove(&old[..])?;
        }
        tx.meta().insert("stats", encode(&stats))?;
        tx.meta().insert("schema", &2u32.to_be_bytes())?;
        Ok(())
    })
}

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
    /// Opens the database of an existing search for writing (deletes the
    /// [`STATUS_SNAPSHOT`]).
    ///
    /// # Errors
    /// [`StoreError::Missing`] when there is none; the others as they come.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(dir, true)
    }

    /// Opens the database of an existing search for reading: no background
    /// flusher, and the [`STATUS_SNAPSHOT`] is left in place. What `status`,
    /// `show` and `export` do with the daemon down; the caller must not
    /// write through it.
    ///
    /// # Errors
    /// As [`Store::open`].
    pub fn open_for_reading(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(dir, false)
    }

    fn open_with(dir: &Path, writer: bool) -> Result<Store, StoreError> {
        if !dir.join("db").join("conf").is_file() {
            return Err(StoreError::Missing {
                dir: dir.to_owned(),
            });
        }
        let store = Store::open_db(dir, writer)?;
        store.check_schema(writer)?;
        if store.search()?.is_none() {
            return Err(StoreError::Corrupt {
                dir: dir.to_owned(),
                detail: "no search record (was it created by mad-search?)".into(),
            });
        }
        Ok(store)
    }

    /// Creates the database of a new search, or opens an existing one
    /// (whose record is kept: `record` is then ignored).
    ///
    /// # Errors
    /// As [`Store::open`].
    pub fn create_or_open(dir: &Path, record: &SearchRecord) -> Result<Store, StoreError> {
        // Private: the search's database, checkpoints and control socket.
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(dir)
            .map_err(|e| StoreError::Db {
                dir: dir.to_owned(),
                source: sled::Error::Io(e),
            })?;
        let fresh = !dir.join("db").join("conf").is_file();
        let store = Store::open_db(dir, true)?;
        if fresh {
            let meta = &store.trees[0];
            let db_err = |source| StoreError::Db {
                dir: dir.to_owned(),
                source,
            };
            meta.insert("schema", &SCHEMA.to_be_bytes())
                .map_err(db_err)?;
            meta.insert("search", encode(record)).map_err(db_err)?;
            store.db.flush().map_err(db_err)?;
        } else {
            store.check_schema(true)?;
        }
        Ok(store)
    }

    fn open_db(dir: &Path, writer: bool) -> Result<Store, StoreError> {
        let path = dir.join("db");
        // sled panics on some kinds of damage; report them as such.
        let opened = std::panic::catch_unwind(|| {
            let cfg = sled_config(&path);
            let cfg = if writer {
                cfg
            } else {
                cfg.flush_every_ms(None)
            };
            cfg.open()
        });
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(sled::Error::Io(e))) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(StoreError::Locked {
                    dir: dir.to_owned(),
                    detail: e.to_string(),
                });
            }
            Ok(Err(sled::Error::Io(e))) if e.to_string().contains("could not acquire lock") => {
                return Err(StoreError::Locked {
                    dir: dir.to_owned(),
                    detail: e.to_string(),
                });
            }
            Ok(Err(sled::Error::Corruption { .. })) | Err(_) => {
                return Err(StoreError::Corrupt {
                    dir: dir.to_owned(),
                    detail: format!("sled cannot read {}", path.display()),
                });
            }
            Ok(Err(source)) => {
                return Err(StoreError::Db {
                    dir: dir.to_owned(),
                    source,
                });
            }
        };
        if writer {
            // We hold the lock now; the snapshot would go stale with our
            // first write.
            match std::fs::remove_file(dir.join(STATUS_SNAPSHOT)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(StoreError::Db {
                        dir: dir.to_owned(),
                        source: sled::Error::Io(e),
                    });
                }
                _ => {}
            }
        }
        let mut trees = Vec::with_capacity(TREES.len());
        for name in TREES {
            trees.push(db.open_tree(name).map_err(|source| StoreError::Db {
                dir: dir.to_owned(),
                source,
            })?);
        }
        Ok(Store {
            dir: dir.to_owned(),
            db,
            trees: trees.try_into().expect("one handle per tree"),
        })
    }

    /// The database's schema number.
    fn schema(&self) -> Result<u32, StoreError> {
        let raw = self.trees[0].get("schema").map_err(|e| self.db_err(e))?;
        match raw.as_deref() {
            Some(b) if b.len() == 4 => Ok(u32::from_be_bytes(b.try_into().expect("4 bytes"))),
            Some(_) => Err(self.corrupt("the schema version is not a u32")),
            None => Err(self.corrupt("no schema version (not a mad-search database?)")),
        }
    }

    /// Refuses a schema this binary cannot read; a writer upgrades an older
    /// one ([`MIGRATIONS`], each one transaction that ends with the new
    /// number); a reader never writes, and refuses it.
    fn check_schema(&self, writer: bool) -> Result<(), StoreError> {
        let found = self.schema()?;
        if found == 0 {
            return Err(self.corrupt(format!(
                "its schema number is 0, and mad-search schemas run from 1 to {SCHEMA}"
            )));
        }
        if found > SCHEMA {
            return Err(StoreError::Newer {
                dir: self.dir.clone(),
                found,
                supported: SCHEMA,
            });
        }
        if found < SCHEMA && !writer {
            return Err(StoreError::Older {
                dir: self.dir.clone(),
                found,
                supported: SCHEMA,
            });
        }
        for migrate in MIGRATIONS.iter().skip(found as usize - 1) {
            migrate(self)?;
        }
        Ok(())
    }

    fn db_err(&self, source: sled::Error) -> StoreError {
        StoreError::Db {
            dir: self.dir.clone(),
            source,
        }
    }

    fn corrupt(&self, detail: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            dir: self.dir.clone(),
            detail: detail.into(),
        }
    }

    /// The state dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `f` as one transaction over every tree.
    fn tx<T>(&self, f: impl Fn(&Tx<'_>) -> Result<T, Abort>) -> Result<T, StoreError> {
        let trees: Vec<&sled::Tree> = self.trees.iter().collect();
        let r = trees.as_slice().transaction(|views| f(&Tx { t: views }));
        match r {
            Ok(v) => Ok(v),
            Err(TransactionError::Abort(detail)) => Err(self.corrupt(detail)),
            Err(TransactionError::Storage(e)) => Err(self.db_err(e)),
        }
    }

    fn read<T: DeserializeOwned>(&self, tree: usize, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.trees[tree].get(key).map_err(|e| self.db_err(e))? {
            Some(v) => decode(TREES[tree], &v)
                .map(Some)
                .map_err(|d| self.corrupt(d)),
            None => Ok(None),
        }
    }

    /// The search's record.
    ///
    /// # Errors
    /// A damaged database.
    pub fn search(&self) -> Result<Option<SearchRecord>, StoreError> {
        self.read(0, b"search")
    }

    /// Replaces the search's budget (a restart may give a new one).
    ///
    /// # Errors
    /// A damaged database.
    pub fn set_budget(&self, budget: &SearchBudget) -> Result<(), StoreError> {
        self.tx(|tx| {
            let mut s: SearchRecord = tx
                .get(0, b"search")?
                .ok_or_else(|| ConflictableTransactionError::Abort("no search record".into()))?;
            s.budget = budget.clone();
            tx.put(0, b"search", &s)
        })
    }

    /// Running totals.
    ///
    /// # Errors
    /// A damaged database.
    pub fn stats(&self) -> Result<Stats, StoreError> {
        Ok(self.read(0, b"stats")?.unwrap_or_default())
    }

    /// One candidate.
    ///
    /// # Errors
    /// A damaged database.
    pub fn candidate(&self, id: ArchId) -> Result<Option<Candidate>, StoreError> {
        self.read(1, &id.0)
    }

    /// The candidates whose id starts with `prefix` (hex), at most `limit`.
    ///
    /// # Errors
    /// A damaged database.
    pub fn candidates_with_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<Candidate>, StoreError> {
        let prefix = prefix.to_ascii_lowercase();
        let whole: Vec<u8> = (0..prefix.len() / 2)
            .filter_map(|i| u8::from_str_radix(&prefix[2 * i..2 * i + 2], 16).ok())
            .collect();
        let mut out = Vec::new();
        for kv in self.trees[1].scan_prefix(&whole) {
            let (_, v) = kv.map_err(|e| self.db_err(e))?;
            let c: Candidate = decode("candidates", &v).map_err(|d| self.corrupt(d))?;
            if c.id.matches_prefix(&prefix) {
                out.push(c);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The candidate an index entry (`by-seq` value, `board` key tail) names.
    fn indexed(&self, id: &[u8], index: &str) -> Result<Candidate, StoreError> {
        let id = ArchId(
            id.try_into()
                .map_err(|_| self.corrupt(format!("{index}: bad id")))?,
        );
        self.candidate(id)?
            .ok_or_else(|| self.corrupt(format!("{index} names a missing candidate")))
    }

    /// Every candidate in creation order.
    ///
    /// # Errors
    /// A damaged database.
    pub fn candidates(&self) -> Result<Vec<Candidate>, StoreError> {
        let mut out = Vec::new();
        for kv in self.trees[2].iter() {
            let (_, id) = kv.map_err(|e| self.db_err(e))?;
            out.push(self.indexed(&id, "by-seq")?);
        }
        Ok(out)
    }

    /// The `n` most recent candidates, newest first.
    ///
    /// # Errors
    /// A damaged database.
    pub fn recent(&self, n: usize) -> Result<Vec<Candidate>, StoreError> {
        // `n` comes from users (`status --top`): allocate what is read.
        let mut out = Vec::new();
        for kv in self.trees[2].iter().rev().take(n) {
            let (_, id) = kv.map_err(|e| self.db_err(e))?;
            out.push(self.indexed(&id, "by-seq")?);
        }
        Ok(out)
    }

    /// The best `n` candidates of `stage`, best first.
    ///
    /// # Errors
    /// A damaged database.
    pub fn top(&self, stage: StageName, n: usize) -> Result<Vec<Candidate>, StoreError> {
        // `n` comes from users (`status --top`): allocate what is read.
        let mut out = Vec::new();
        for kv in self.trees[8].scan_prefix([stage_byte(stage)]).take(n) {
            let (k, _) = kv.map_err(|e| self.db_err(e))?;
            out.push(self.indexed(k.get(9..25).unwrap_or_default(), "board")?);
        }
        Ok(out)
    }

    /// Candidates evaluated at `stage`.
    pub fn board_len(&self, stage: StageName) -> usize {
        self.trees[8].scan_prefix([stage_byte(stage)]).count()
    }

    /// The rank (0-based) of `arch`'s score among `stage`'s results: the
    /// histogram gives the count in higher buckets, a scan of the score's
    /// own bucket the rest (a few keys, not the whole board).
    ///
    /// # Errors
    /// A damaged database.
    pub fn rank_of(&self, stage: StageName, score: f64, arch: ArchId) -> Result<usize, StoreError> {
        let hist: Vec<u64> = self
            .read(0, hist_key(stage).as_bytes())?
            .unwrap_or_else(|| vec![0; HIST_BUCKETS]);
        let b = bucket(score);
        let above: u64 = hist.iter().skip(b + 1).sum();
        let start = if b + 1 < HIST_BUCKETS {
            // Every key of bucket b sorts after every key of a score at the
            // bucket's upper edge.
            let mut k = board_key(
                stage,
                (b + 1) as f64 / HIST_BUCKETS as f64,
                ArchId([0xff; 16]),
            );
            k.push(0);
            k
        } else {
            vec![stage_byte(stage)]
        };
        let within = self.trees[8]
            .range(start..board_key(stage, score, arch))
            .count();
        Ok(above as usize + within)
    }

    /// The Pareto front of `stage` (score up, parameters and state down).
    ///
    /// # Errors
    /// A damaged database.
    pub fn front(&self, stage: StageName) -> Result<Vec<FrontPoint>, StoreError> {
        Ok(self
            .read(0, format!("front/{}", stage.name()).as_bytes())?
            .unwrap_or_default())
    }

    /// The baselines seeded into the search: (name, id).
    ///
    /// # Errors
    /// A damaged database.
    pub fn baselines(&self) -> Result<Vec<(String, ArchId)>, StoreError> {
        Ok(self.read(0, b"baselines")?.unwrap_or_default())
    }

    /// One job.
    ///
    /// # Errors
    /// A damaged database.
    pub fn job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.read(3, &be(id))
    }

    /// A job's full result, as stored.
    ///
    /// # Errors
    /// A damaged database.
    pub fn result(&self, id: JobId) -> Result<Option<serde_json::Value>, StoreError> {
        self.read(6, &be(id))
    }

    /// A candidate's full result at `stage`, as stored.
    ///
    /// # Errors
    /// A damaged database.
    pub fn stage_result(
        &self,
        arch: ArchId,
        stage: StageName,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        self.read(9, &stage_key(arch, stage))
    }

    /// The jobs of `cand` at `stage`, in creation order (for a stage split
    /// into runs, in run order).
    ///
    /// # Errors
    /// A damaged database.
    pub fn stage_jobs(&self, cand: &Candidate, stage: StageName) -> Result<Vec<Job>, StoreError> {
        let mut out = Vec::new();
        for &id in &cand.jobs {
            if let Some(j) = self.job(id)?
                && j.stage == stage
            {
                out.push(j);
            }
        }
        Ok(out)
    }

    /// The oldest queued job.
    ///
    /// # Errors
    /// A damaged database.
    pub fn next_queued(&self) -> Result<Option<Job>, StoreError> {
        match self.trees[4].first().map_err(|e| self.db_err(e))? {
            Some((k, _)) => self.read(3, &k),
            None => Ok(None),
        }
    }

    /// Jobs under a lease.
    ///
    /// # Errors
    /// A damaged database.
    pub fn leased(&self) -> Result<Vec<Job>, StoreError> {
        let mut out = Vec::new();
        for kv in self.trees[5].iter() {
            let (k, _) = kv.map_err(|e| self.db_err(e))?;
            if let Some(j) = self.read(3, &k)? {
                out.push(j);
            }
        }
        Ok(out)
    }

    /// Jobs waiting, oldest first (at most `n`).
    ///
    /// # Errors
    /// A damaged database.
    pub fn queued(&self, n: usize) -> Result<Vec<Job>, StoreError> {
        let mut out = Vec::new();
        for kv in self.trees[4].iter().take(n) {
            let (k, _) = kv.map_err(|e| self.db_err(e))?;
            if let Some(j) = self.read(3, &k)? {
                out.push(j);
            }
        }
        Ok(out)
    }

    /// Every job, in creation order.
    ///
    /// # Errors
    /// A damaged database.
    pub fn jobs(&self) -> Result<Vec<Job>, StoreError> {
        let mut out = Vec::new();
        for kv in self.trees[3].iter() {
            let (_, v) = kv.map_err(|e| self.db_err(e))?;
            out.push(decode("jobs", &v).map_err(|d| self.corrupt(d))?);
        }
        Ok(out)
    }

    /// The last `n` events, oldest first.
    ///
    /// # Errors
    /// A damaged database.
    pub fn events(&self, n: usize) -> Result<Vec<Event>, StoreError> {
        let mut out = Vec::new();
        for kv in self.trees[7].iter().rev().take(n) {
            let (_, v) = kv.map_err(|e| self.db_err(e))?;
            out.push(decode("events", &v).map_err(|d| self.corrupt(d))?);
        }
        out.reverse();
        Ok(out)
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
            tx.put(1, &c.id.0, &c)?;
            tx.t[2].insert(&be(c.seq), &c.id.0)?;
            if let Some(name) = &c.baseline {
                let mut b: Vec<(String, ArchId)> = tx.get(0, b"baselines")?.unwrap_or_default();
                b.push((name.clone(), c.id));
                tx.put(0, b"baselines", &b)?;
            }
            tx.event(EventKind::Created {
                arch: c.id,
                operator: c.operator,
            })?;
            tx.put(0, b"stats", &stats)?;
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
            tx.put(1, &c.id.0, &c)?;
            tx.put(0, b"stats", &stats)?;
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
            tx.put(0, b"stats", &stats)?;
            tx.event(EventKind::Leased {
                job,
                attempt: j.attempt,
                worker,
            })?;
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
                tx.put(6, &be(job), part)?;
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
            tx.put(1, &c.id.0, &c)?;
            tx.put(0, b"stats", &stats)?;
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
                    tx.put(1, &c.id.0, &c)?;
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
            tx.put(0, b"stats", &stats)?;
            Ok(Some(j.state.clone()))
        })
    }

    /// Puts every lease back in the queue: run once at daemon start, when no
    /// lease can be live (the database lock proves the old daemon is gone).
    ///
    /// # Errors
    /// A damaged database.
    pub fn recover_leases(&self) -> Result<Vec<JobId>, StoreError> {
        let mut out = Vec::new();
        for j in self.leased()? {
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
            tx.put(0, b"stats", &stats)?;
            if let Some(k) = &kind {
                tx.event(k.clone())?;
            }
            Ok(())
        })
    }

    /// Writes everything to disk.
    ///
    /// # Errors
    /// An I/O failure.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(|e| self.db_err(e))
    }
}

#[cfg(test)]
mod tests;
