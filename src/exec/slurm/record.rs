//! What an attempt's directory records of its Slurm job, and the copy of
//! the daemon's binary that jobs run.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::exec::local::jobs_dir;
use crate::store::{Job, JobId};

/// The submission record in an attempt's directory.
pub const SUBMISSION_FILE: &str = "slurm.json";
/// Where the daemon keeps the copy of its binary that jobs run.
const BIN_DIR: &str = "bin";
/// Copies of the binary kept (a pending job of an earlier daemon may still
/// need its own).
const BINARIES_KEPT: usize = 3;
/// What an attempt's directory records of its submission.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    /// The job.
    pub job: JobId,
    /// Its attempt.
    pub attempt: u32,
    /// Its Slurm job name (unique to the search, job and attempt).
    pub name: String,
    /// Its Slurm job id, once `sbatch` said it.
    pub id: Option<u64>,
    /// When it was submitted (or about to be), Unix seconds.
    pub submitted: f64,
    /// The binary it runs (kept under `<state>/bin/` while it may run).
    #[serde(default)]
    pub exe: Option<PathBuf>,
    /// Whether mad-search asked it to stop (`stop`): a daemon that
    /// re-attaches to it then knows that its stop was asked for.
    #[serde(default)]
    pub stop_requested: bool,
}

impl Submission {
    fn path(dir: &Path) -> PathBuf {
        dir.join(SUBMISSION_FILE)
    }

    /// The record in `dir`, if there is a readable one.
    pub fn read(dir: &Path) -> Option<Submission> {
        let text = std::fs::read(Submission::path(dir)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    pub(super) fn write(&self, dir: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::fsutil::write_atomic(&Submission::path(dir), &text)
    }
}

/// The directory of `job`'s current attempt.
pub fn attempt_dir(state: &Path, job: &Job) -> PathBuf {
    jobs_dir(state).join(format!("{}-a{}", job.id, job.attempt))
}

/// The submission `job`'s current attempt recorded, if any: a job an
/// earlier daemon handed to Slurm.
pub fn recorded(state: &Path, job: &Job) -> Option<Submission> {
    Submission::read(&attempt_dir(state, job))
        .filter(|s| s.job == job.id && s.attempt == job.attempt)
}

/// Copies `exe` to `<state>/bin/mad-search-<hash>` (once per binary) and
/// keeps the newest [`BINARIES_KEPT`] copies; the copy's path.
pub(super) fn install_binary(state: &Path, exe: &Path) -> std::io::Result<PathBuf> {
    // Streamed: a release binary with debug info is some 150 MB.
    let hash = blake3::Hasher::new()
        .update_reader(std::fs::File::open(exe)?)?
        .finalize()
        .to_hex()[..16]
        .to_string();
    let bin = state.join(BIN_DIR);
    std::fs::create_dir_all(&bin)?;
    let to = bin.join(format!("mad-search-{hash}"));
    if !to.exists() {
        let tmp = bin.join(format!(".mad-search-{hash}.{}.tmp", std::process::id()));
        std::fs::copy(exe, &tmp)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&tmp, &to)?;
    } else {
        // Newest by use: touch it.
        let _ = std::fs::File::options()
            .append(true)
            .open(&to)
            .and_then(|f| f.set_modified(SystemTime::now()));
    }
    // Copies an attempt's record names may still be run by its job.
    let in_use: Vec<PathBuf> = std::fs::read_dir(jobs_dir(state))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Submission::read(&e.path())?.exe)
        .collect();
    let mut copies: Vec<(SystemTime, PathBuf)> = std::fs::read_dir(&bin)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("mad-search-"))
        .filter(|e| !in_use.contains(&e.path()))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if copies.len() > BINARIES_KEPT {
        copies.sort();
        for (_, p) in &copies[..copies.len() - BINARIES_KEPT] {
            if *p != to {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    Ok(to)
}
