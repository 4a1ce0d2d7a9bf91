//! The store's errors.

use std::path::PathBuf;

use sled::transaction::ConflictableTransactionError;

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

/// A transaction's abort: what is damaged.
pub(super) type Abort = ConflictableTransactionError<String>;
