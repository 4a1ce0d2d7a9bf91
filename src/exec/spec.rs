//! The files between the daemon and a worker process: the job's spec (what
//! to run), its result (how it ended: the source of truth) and its progress
//! line (for `status`). All plain JSON, written atomically; one directory
//! per attempt, `<state>/jobs/<job>-a<attempt>/`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::job::Outcome;
use crate::genome::ArchSpec;
use crate::store::{Job, JobId};

/// The version of [`JobSpec`] and [`JobResult`]: a worker refuses files of
/// another (the daemon and its workers are one binary; a mismatch means a
/// binary was replaced under a running search).
pub const FORMAT: u32 = 1;

/// The spec's file name in an attempt's directory.
pub const SPEC_FILE: &str = "spec.json";
/// The result's file name.
pub const RESULT_FILE: &str = "result.json";
/// The progress line's file name.
pub const PROGRESS_FILE: &str = "progress";
/// The worker's stderr.
pub const LOG_FILE: &str = "worker.log";

/// One job for a worker process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// [`FORMAT`].
    pub format: u32,
    /// The job as leased (its id, stage, part and attempt).
    pub job: Job,
    /// Its candidate's genome.
    pub genome: ArchSpec,
    /// Its candidate's `scale` result, for a stage that starts from it
    /// (`overtrain`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<Box<crate::stages::scale::ScaleResult>>,
    /// The search space's file name (for messages) and text.
    pub space_file: String,
    /// The search space as the search stored it.
    pub space_text: String,
    /// The stage preset's name in the space.
    pub preset: String,
    /// The `scale` corpus's path; `None`: the embedded one.
    pub corpus: Option<String>,
    /// Its [`Corpus::fingerprint`](crate::scale::corpus::Corpus::fingerprint)
    /// as the daemon loaded it.
    pub corpus_fingerprint: String,
    /// The search's seed.
    pub seed: u64,
    /// The candidate's runs directory (checkpoints, finished runs).
    pub runs_dir: PathBuf,
    /// Checkpoint interval, optimiser steps.
    pub checkpoint_every: usize,
    /// Tensor threads.
    pub threads: usize,
    /// The device (`cpu`, `cuda:N`, `wgpu`).
    pub device: String,
    /// The worker's own wall-clock budget, seconds: past it the job
    /// checkpoints and ends [`Outcome::OutOfTime`]. `None`: no limit.
    pub wall_seconds: Option<f64>,
}

/// How a worker's job ended, as it writes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// [`FORMAT`].
    pub format: u32,
    /// The job.
    pub job: JobId,
    /// Its attempt.
    pub attempt: u32,
    /// How it ended.
    pub outcome: Outcome,
    /// The worker's peak resident memory, KiB (`VmHWM`), where known.
    #[serde(default)]
    pub peak_kib: Option<u64>,
}

/// Why a spec or result file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// It cannot be read or written.
    #[error("{}: {reason}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: std::io::Error,
    },
    /// It is not the JSON expected.
    #[error("{}: not a {what} ({reason})", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What it should be.
        what: &'static str,
        /// serde's message (line and column).
        reason: serde_json::Error,
    },
    /// It is of another format version.
    #[error(
        "{}: format {found}, this binary reads {FORMAT}: was mad-search replaced under a \
         running search? restart the daemon with one binary",
        path.display()
    )]
    Format {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
}

/// Reads `path` as a `what`, its `format` checked first (a file of another
/// version is named as such, not as malformed).
fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &'static str,
) -> Result<T, SpecError> {
    #[derive(Deserialize)]
    struct Format {
        format: u32,
    }
    let text = std::fs::read_to_string(path).map_err(|reason| SpecError::Io {
        path: path.to_owned(),
        reason,
    })?;
    let malformed = |reason| SpecError::Malformed {
        path: path.to_owned(),
        what,
        reason,
    };
    let Format { format } = serde_json::from_str(&text).map_err(malformed)?;
    if format != FORMAT {
        return Err(SpecError::Format {
            path: path.to_owned(),
            found: format,
        });
    }
    serde_json::from_str(&text).map_err(malformed)
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), SpecError> {
    let io = |reason| SpecError::Io {
        path: path.to_owned(),
        reason,
    };
    let text = serde_json::to_vec_pretty(value).map_err(|e| io(std::io::Error::other(e)))?;
    crate::fsutil::write_atomic(path, &text).map_err(io)
}

impl JobSpec {
    /// Reads a spec file.
    ///
    /// # Errors
    /// Unreadable, malformed, or of another format.
    pub fn read(path: &Path) -> Result<JobSpec, SpecError> {
        read_json(path, "job spec")
    }

    /// Writes it atomically.
    ///
    /// # Errors
    /// An I/O failure.
    pub fn write(&self, path: &Path) -> Result<(), SpecError> {
        write_json(path, self)
    }
}

impl JobResult {
    /// Reads a result file.
    ///
    /// # Errors
    /// Unreadable, malformed, or of another format.
    pub fn read(path: &Path) -> Result<JobResult, SpecError> {
        read_json(path, "job result")
    }

    /// Writes it atomically (a reader sees the whole result or none).
    ///
    /// # Errors
    /// An I/O failure.
    pub fn write(&self, path: &Path) -> Result<(), SpecError> {
        write_json(path, self)
    }
}

/// This process's peak resident memory, KiB (`VmHWM` in
/// `/proc/self/status`); `None` where there is no such file.
pub fn peak_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Replaces a progress file with `line` (no sync: it is for display and a
/// torn one is never seen: it is renamed into place).
pub fn write_progress(path: &Path, line: &str) {
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, line).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}
