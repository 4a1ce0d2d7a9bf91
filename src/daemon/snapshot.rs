//! The status report left next to the database by the last process that
//! held it for writing, so that `status` with the daemon down answers without
//! opening sled (whose recovery and shutdown cost most of a second on a large
//! store).
//!
//! Validity rests on one rule kept by the store: every open of the database
//! for writing deletes the snapshot first ([`crate::store::STATUS_SNAPSHOT`]),
//! and only two writers create it, each while holding the database's lock:
//! the daemon after its last flush, and `status` itself when it had to read
//! the database. A snapshot present is therefore the report of the database
//! as it is; a daemon killed with `-9` leaves none, and the first `status`
//! after it reads the database and writes a fresh one.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::report::StatusReport;
use crate::fsutil::write_atomic;
use crate::store::STATUS_SNAPSHOT;

/// Identifies the snapshot's layout.
const SNAPSHOT_SCHEMA: &str = "mad-search.status-snapshot/1";

/// Leaderboard rows a snapshot keeps; `status --top N` for a larger N reads
/// the database.
pub const SNAPSHOT_TOP: usize = 100;

#[derive(Serialize, Deserialize)]
struct Snapshot {
    schema: String,
    /// The mad-search that wrote it: another version's report may differ.
    version: String,
    /// The leaderboard rows it was computed with.
    top: usize,
    /// The database's files when it was written.
    files: Vec<DbFile>,
    report: StatusReport,
}

/// One file of the database directory: a second guard, against a writer
/// that does not keep the rule (another program, or sled itself at exit).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct DbFile {
    name: String,
    len: u64,
    modified_ns: u128,
}

/// The files of `state/db`, by name.
fn db_files(state: &Path) -> std::io::Result<Vec<DbFile>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(state.join("db"))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_file() {
            let modified_ns = meta
                .modified()?
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            files.push(DbFile {
                name: entry.file_name().to_string_lossy().into_owned(),
                len: meta.len(),
                modified_ns,
            });
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// The database files' names, sizes and modification times, as bytes to
/// compare: equal fingerprints mean nothing wrote the database in between
/// (a reader's own open and close may change them too).
pub fn db_fingerprint(state: &Path) -> Option<Vec<u8>> {
    serde_json::to_vec(&db_files(state).ok()?).ok()
}

/// Writes the snapshot of `report`, computed with leaderboard size `top`.
/// Call only while holding the database's lock, with the daemon down (its
/// `daemon` field is cleared).
///
/// # Errors
/// Any I/O failure.
pub fn write(state: &Path, report: &StatusReport, top: usize) -> std::io::Result<()> {
    let snapshot = Snapshot {
        schema: SNAPSHOT_SCHEMA.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        top,
        files: db_files(state)?,
        report: StatusReport {
            daemon: None,
            ..report.clone()
        },
    };
    let bytes = serde_json::to_vec(&snapshot).map_err(std::io::Error::other)?;
    write_atomic(&state.join(STATUS_SNAPSHOT), &bytes)
}

/// The report with `top` leaderboard rows from the snapshot in `state`, if
/// one is there, was written by this version, holds enough rows and the
/// database's files are as they were. Anything else (absent, unreadable,
/// another version, a database changed behind the rule's back) is `None`:
/// the caller reads the database.
pub fn read(state: &Path, top: usize) -> Option<StatusReport> {
    let bytes = std::fs::read(state.join(STATUS_SNAPSHOT)).ok()?;
    let snapshot: Snapshot = serde_json::from_slice(&bytes).ok()?;
    if snapshot.schema != SNAPSHOT_SCHEMA
        || snapshot.version != env!("CARGO_PKG_VERSION")
        || snapshot.report.schema != super::report::STATUS_SCHEMA
        || snapshot.top < top
        || db_files(state).ok()? != snapshot.files
    {
        return None;
    }
    let mut report = snapshot.report;
    // The leaderboard for `top` is a prefix of the one for a larger top
    // (see `report::status`).
    report.leaderboard.truncate(top);
    report.state_dir = state.display().to_string();
    Some(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::report::status;
    use crate::genome::ArchSpec;
    use crate::space::{Operator, StageName};
    use crate::store::{Candidate, SearchBudget, SearchRecord, StageSummary, Store};

    const LAYERS: [&str; 6] = [
        "hyena swiglu",
        "mh-attention swiglu",
        "mamba swiglu",
        "linear-attention mlp",
        "hyena-experts moe-mlp",
        "sliding-attention swiglu",
    ];

    /// A search with six screened candidates, three of them also at `mad`
    /// (so the board lists a candidate once though it ranks at two stages).
    fn search(dir: &Path) -> Store {
        search_with(dir, |i| (i % 2 == 1).then(|| 0.05 * (i + 1) as f64))
    }

    /// Six screened candidates (scores 0.1, 0.2, …), those with a `mad`
    /// score from `mad(i)` also at `mad`.
    fn search_with(dir: &Path, mad: impl Fn(usize) -> Option<f64>) -> Store {
        let record = SearchRecord {
            name: "snap".into(),
            created_by: "test".into(),
            created: 0.0,
            seed: 1,
            space_file: "x".into(),
            space_text: String::new(),
            preset: "tiny".into(),
            budget: SearchBudget::default(),
            corpus: None,
            corpus_fingerprint: None,
        };
        let s = Store::create_or_open(dir, &record).unwrap();
        for (i, layers) in LAYERS.iter().enumerate() {
            let genome = ArchSpec::from_layers_str(layers).unwrap();
            let c = Candidate {
                id: genome.arch_id(),
                seq: 0,
                genome,
                parents: vec![],
                operator: Operator::Sample,
                baseline: None,
                created: 0.0,
                params: 100 + i as u64,
                state: 10,
                queued: vec![],
                jobs: vec![],
                stages: Default::default(),
                failed: Default::default(),
            };
            let finish = |job, score| {
                let leased = s.lease(job, 0, f64::MAX).unwrap().unwrap();
                let summary = StageSummary {
                    job,
                    score,
                    per_task: Default::default(),
                    seconds: 1.0,
                    finished: 0.0,
                    predicted_loss: None,
                };
                let full = serde_json::json!("r");
                let end = crate::store::StageEnd::Done {
                    summary: &summary,
                    full: &full,
                };
                assert!(s.finish(job, leased.attempt, 1.0, None, &end).unwrap());
            };
            let job = s
                .add_candidate(&c, StageName::Screen, &[])
                .unwrap()
                .unwrap();
            finish(job, 0.1 * (i + 1) as f64);
            if let Some(score) = mad(i) {
                let job = s.enqueue(c.id, StageName::Mad, &[]).unwrap().unwrap();
                finish(job, score);
            }
        }
        s
    }

    /// Status reports screen → mad ρ and τ with intervals from five
    /// candidates at both stages; below, the count alone.
    #[test]
    fn stage_correlations_come_with_intervals_from_five_candidates() {
        let dir = tempfile::tempdir().unwrap();
        let three = status(&search(dir.path()), None, 3).unwrap();
        let c = &three.correlations[0];
        assert_eq!(
            (c.from, c.to, c.candidates),
            (StageName::Screen, StageName::Mad, 3)
        );
        assert_eq!(
            (c.rho, c.tau, c.rho_interval, c.tau_interval),
            (None, None, None, None)
        );
        let dir = tempfile::tempdir().unwrap();
        // Screen 0.1 … 0.6; mad swaps the first two and the last two.
        let mad = [0.2, 0.1, 0.3, 0.4, 0.6, 0.5];
        let six = status(&search_with(dir.path(), |i| Some(mad[i])), None, 3).unwrap();
        let c = &six.correlations[0];
        assert_eq!(c.candidates, 6);
        // Σd² = 4 → ρ = 1 − 24/210; τ = (13 − 2)/15.
        assert!(
            (c.rho.unwrap() - (1.0 - 24.0 / 210.0)).abs() < 1e-12,
            "{c:?}"
        );
        assert!((c.tau.unwrap() - 11.0 / 15.0).abs() < 1e-12, "{c:?}");
        let (r, t) = (c.rho_interval.unwrap(), c.tau_interval.unwrap());
        assert!(r.lo <= c.rho.unwrap() && c.rho.unwrap() <= r.hi, "{c:?}");
        assert!(t.lo <= c.tau.unwrap() && c.tau.unwrap() <= t.hi, "{c:?}");
        let text = crate::cli::render_status(&six);
        assert!(
            text.contains("screen → mad: Spearman's ρ +0.89 ["),
            "{text}"
        );
        assert!(text.contains("Kendall's τ +0.73 ["), "{text}");
        let text = crate::cli::render_status(&three);
        assert!(
            text.contains("screen → mad: 3 candidate(s) at both stages (shown from 5)"),
            "{text}"
        );
    }

    #[test]
    fn a_smaller_board_is_a_prefix_of_a_larger_one() {
        let dir = tempfile::tempdir().unwrap();
        let s = search(dir.path());
        let full = status(&s, None, SNAPSHOT_TOP).unwrap();
        assert_eq!(full.leaderboard.len(), LAYERS.len(), "each candidate once");
        for top in 0..=LAYERS.len() + 1 {
            let r = status(&s, None, top).unwrap();
            assert_eq!(r.leaderboard.len(), top.min(LAYERS.len()), "top {top}");
            assert_eq!(r.leaderboard[..], full.leaderboard[..r.leaderboard.len()]);
        }
    }

    #[test]
    fn the_snapshot_reads_back_as_the_report_and_any_writer_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        let s = search(state);
        let tops = [0, 3, 10, SNAPSHOT_TOP];
        let expected: Vec<_> = tops.map(|top| status(&s, None, top).unwrap()).into();
        let full = status(&s, None, SNAPSHOT_TOP).unwrap();
        // As the daemon does: close the database (sled writes at open, not
        // at close), then write.
        drop(s);
        write(state, &full, SNAPSHOT_TOP).unwrap();
        for (top, want) in tops.iter().zip(expected) {
            assert_eq!(read(state, *top), Some(want), "top {top}");
        }
        assert_eq!(read(state, SNAPSHOT_TOP + 1), None, "too few rows kept");
        // Another version's snapshot is not trusted.
        let path = state.join(STATUS_SNAPSHOT);
        let text = std::fs::read_to_string(&path).unwrap();
        let other = text.replace(
            &format!("\"version\":\"{}\"", env!("CARGO_PKG_VERSION")),
            "\"version\":\"0.0.0-other\"",
        );
        assert_ne!(text, other);
        std::fs::write(&path, other).unwrap();
        assert_eq!(read(state, 3), None);
        std::fs::write(&path, b"{ not json").unwrap();
        assert_eq!(read(state, 3), None);
        // An open for writing removes it before it can go stale.
        std::fs::write(&path, &text).unwrap();
        assert!(read(state, 3).is_some());
        drop(Store::open(state).unwrap());
        assert!(!path.exists());
        // Any change to the database's files behind the rule's back (here
        // sled's own recovery at an open for reading) invalidates it.
        std::fs::write(&path, &text).unwrap();
        drop(Store::open_for_reading(state).unwrap());
        assert_eq!(read(state, 3), None, "database files changed");
    }
}
