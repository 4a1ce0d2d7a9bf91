//! Checkpoint files of a training run: enough to continue a killed run so
//! that it ends exactly as an uninterrupted one would (same weights, same
//! optimiser moments, same batch order, same best-so-far weights).
//!
//! One file per run, replaced atomically (written beside, synced, renamed),
//! so a reader sees either the previous checkpoint or the new one, never a
//! torn mix. Layout: the magic `MADCKPT1`, then four length-prefixed parts
//! (little-endian u64 lengths): the JSON header, the model record, the
//! optimiser record, the best-validation weights' record (empty when none),
//! and finally the BLAKE3 hash of everything before it. Records are Burn's
//! named MessagePack at full precision.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::metrics::Scores;

const MAGIC: &[u8; 8] = b"MADCKPT1";

/// Checkpoints asked of this process from outside (a worker process's
/// SIGUSR1: Slurm's warning that the time limit nears). A run in progress
/// remembers the count it last saw and checkpoints after its next step when
/// the count has grown. Process-wide, as a signal is.
static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// Asks every run in progress to checkpoint after its next step (and go on).
/// Async-signal-safe: one atomic add.
pub fn request() {
    REQUESTS.fetch_add(1, Ordering::Relaxed);
}

/// How many checkpoints have been asked for so far ([`request`]).
pub fn requests() -> u64 {
    REQUESTS.load(Ordering::Relaxed)
}
const HASH_LEN: usize = 32;

/// Where a run is at when the checkpoint is written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The run's identity: a checkpoint of another run is never resumed.
    pub fingerprint: String,
    /// The epoch in progress (0-based).
    pub epoch: usize,
    /// Batches of that epoch already taken.
    pub batch: usize,
    /// Optimiser steps taken in all.
    pub steps: usize,
    /// Sum of this epoch's batch losses so far.
    pub loss_sum: f64,
    /// Mean loss of the last finished epoch (NaN before the first).
    pub last_loss: Option<f64>,
    /// Epoch (1-based) and validation scores of the best weights so far.
    pub best: Option<(usize, Scores)>,
    /// Wall time spent before this checkpoint, seconds.
    pub seconds: f64,
}

/// A checkpoint as bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// Where the run is.
    pub progress: Progress,
    /// The model's record.
    pub model: Vec<u8>,
    /// The optimiser's record.
    pub optim: Vec<u8>,
    /// The best-validation weights' record, if any epoch finished.
    pub best: Option<Vec<u8>>,
}

/// A checkpoint that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading or writing failed.
    #[error("checkpoint {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file is not a checkpoint, or is damaged.
    #[error("checkpoint {}: {why}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

impl Checkpoint {
    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = serde_json::to_vec(&self.progress).expect("progress serialises");
        let best = self.best.as_deref().unwrap_or(&[]);
        let mut out = Vec::with_capacity(
            MAGIC.len() + 32 + header.len() + self.model.len() + self.optim.len() + best.len(),
        );
        out.extend_from_slice(MAGIC);
        for part in [&header[..], &self.model, &self.optim, best] {
            out.extend_from_slice(&(part.len() as u64).to_le_bytes());
            out.extend_from_slice(part);
        }
        let hash = blake3::hash(&out);
        out.extend_from_slice(hash.as_bytes());
        out
    }

    /// Parses a file's bytes; `Err` says what is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Result<Checkpoint, String> {
        if bytes.len() < MAGIC.len() + HASH_LEN || &bytes[..MAGIC.len()] != MAGIC {
            return Err("not a mad-search checkpoint (bad magic or too short)".into());
        }
        let (body, hash) = bytes.split_at(bytes.len() - HASH_LEN);
        if blake3::hash(body).as_bytes() != hash {
            return Err("checksum mismatch (damaged file)".into());
        }
        let mut rest = &body[MAGIC.len()..];
        let mut parts = Vec::with_capacity(4);
        for name in ["header", "model", "optimiser", "best weights"] {
            if rest.len() < 8 {
                return Err(format!("truncated before the {name} length"));
            }
            let (len, tail) = rest.split_at(8);
            let len = u64::from_le_bytes(len.try_into().expect("8 bytes")) as usize;
            if tail.len() < len {
                return Err(format!("truncated inside the {name}"));
            }
            let (part, tail) = tail.split_at(len);
            parts.push(part.to_vec());
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(format!("{} trailing bytes", rest.len()));
        }
        let best = parts.pop().expect("four parts");
        let optim = parts.pop().expect("four parts");
        let model = parts.pop().expect("four parts");
        let progress = serde_json::from_slice(&parts[0]).map_err(|e| format!("header: {e}"))?;
        Ok(Checkpoint {
            progress,
            model,
            optim,
            best: (!best.is_empty()).then_some(best),
        })
    }

    /// Writes `path` atomically (a sibling temporary file, synced, renamed).
    ///
    /// # Errors
    /// Any I/O failure, naming the file.
    pub fn write(&self, path: &Path) -> Result<(), CheckpointError> {
        write_atomic(path, &self.to_bytes()).map_err(|source| CheckpointError::Io {
            path: path.to_owned(),
            source,
        })
    }

    /// Reads `path`; `Ok(None)` when there is no such file.
    ///
    /// # Errors
    /// An unreadable or damaged file.
    pub fn read(path: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CheckpointError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Checkpoint::from_bytes(&bytes)
            .map(Some)
            .map_err(|why| CheckpointError::Corrupt {
                path: path.to_owned(),
                why,
            })
    }
}

/// The checkpoint at `path` if it belongs to the run `fingerprint` names;
/// `None` when there is none. A damaged checkpoint, or one of other
/// settings, is said on stderr (the daemon's log) with what is lost: the run
/// starts afresh and its first checkpoint replaces that file.
pub fn resumable(path: &Path, fingerprint: &str) -> Option<Checkpoint> {
    match Checkpoint::read(path) {
        Ok(Some(c)) if c.progress.fingerprint == fingerprint => Some(c),
        Ok(Some(c)) => {
            eprintln!(
                "warning: {} is a checkpoint of other settings (at step {}); the run starts \
                 afresh",
                path.display(),
                c.progress.steps
            );
            None
        }
        Ok(None) => None,
        Err(e) => {
            eprintln!("warning: {e}; the run starts afresh (the steps it kept are lost)");
            None
        }
    }
}

pub use crate::fsutil::write_atomic;

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            progress: Progress {
                fingerprint: "abc".into(),
                epoch: 3,
                batch: 7,
                steps: 55,
                loss_sum: 0.1 + 0.2,
                last_loss: Some(1.0 / 3.0),
                best: Some((
                    2,
                    Scores {
                        micro: 0.123_456_789_012_345_67,
                        macro_: 2.0f64.sqrt() / 7.0,
                        scored: 99,
                    },
                )),
                seconds: 12.5,
            },
            model: vec![1, 2, 3],
            optim: vec![4; 100],
            best: Some(vec![9, 9]),
        }
    }

    #[test]
    fn round_trips_exactly_including_floats() {
        let c = sample();
        assert_eq!(Checkpoint::from_bytes(&c.to_bytes()).unwrap(), c);
        let none = Checkpoint { best: None, ..c };
        assert_eq!(Checkpoint::from_bytes(&none.to_bytes()).unwrap(), none);
    }

    #[test]
    fn any_damage_is_detected() {
        let bytes = sample().to_bytes();
        for i in (0..bytes.len()).step_by(3) {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(Checkpoint::from_bytes(&b).is_err(), "flip at {i} accepted");
        }
        for len in 0..bytes.len() {
            assert!(Checkpoint::from_bytes(&bytes[..len]).is_err());
        }
    }

    #[test]
    fn files_are_replaced_atomically_and_missing_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/run.ckpt");
        assert!(Checkpoint::read(&path).unwrap().is_none());
        let c = sample();
        c.write(&path).unwrap();
        assert_eq!(Checkpoint::read(&path).unwrap().unwrap(), c);
        let mut d = c.clone();
        d.progress.steps = 56;
        d.write(&path).unwrap();
        assert_eq!(Checkpoint::read(&path).unwrap().unwrap(), d);
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary files left behind");
        fs::write(&path, [&MAGIC[..], &[7u8; 64]].concat()).unwrap();
        let err = Checkpoint::read(&path).unwrap_err().to_string();
        assert!(
            err.contains("run.ckpt") && err.contains("checksum"),
            "{err}"
        );
    }
}
