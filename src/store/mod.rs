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
//!
//! Here: opening, creating and the handles. [`trees`] names the trees,
//! [`keys`] encodes keys and values, [`tx`] is one transaction over every
//! tree with the state changes built on it, [`writes`] the store's state
//! changes, [`queries`] its reads, [`migrate`] the schema upgrades and
//! [`error`] what goes wrong.

mod error;
mod keys;
mod migrate;
mod model;
mod queries;
mod trees;
mod tx;
mod writes;

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use sled::transaction::{TransactionError, Transactional};

pub use error::StoreError;
pub use keys::{HIST_BUCKETS, board_key, bucket, hist_key};
pub use migrate::SCHEMA;
pub use model::{
    Candidate, Counts, Evaluations, Event, EventKind, FrontPoint, Job, JobId, JobState, Part,
    SearchBudget, SearchRecord, StageSummary, Stats, now,
};
pub(crate) use trees::Tree;
pub use writes::{Release, StageEnd};

use error::Abort;
#[cfg(test)]
use keys::{be, stage_key};
use keys::{decode, encode};
use tx::Tx;

/// Failures of a job before it is given up.
pub const MAX_FAILURES: u32 = 3;

/// The open database.
pub struct Store {
    dir: PathBuf,
    db: sled::Db,
    trees: [sled::Tree; 10],
}

/// sled's settings for a store at `path`.
pub fn sled_config(path: &Path) -> sled::Config {
    sled::Config::new().path(path)
}

/// The status report cached next to the database (`daemon::snapshot`).
/// Every open for writing deletes it before anything can change, which is
/// what keeps a snapshot that is present true.
pub const STATUS_SNAPSHOT: &str = "status.snapshot.json";

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
            let meta = &store.tree(Tree::Meta);
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
        let mut trees = Vec::with_capacity(Tree::ALL.len());
        for tree in Tree::ALL {
            trees.push(db.open_tree(tree.name()).map_err(|source| StoreError::Db {
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

    /// The handle of `tree`.
    pub(crate) fn tree(&self, tree: Tree) -> &sled::Tree {
        &self.trees[tree.index()]
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

    fn read<T: DeserializeOwned>(&self, tree: Tree, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.tree(tree).get(key).map_err(|e| self.db_err(e))? {
            Some(v) => decode(tree.name(), &v)
                .map(Some)
                .map_err(|d| self.corrupt(d)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests;
