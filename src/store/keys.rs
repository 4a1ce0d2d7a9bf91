//! Keys and values: integers big-endian (key order is numeric order),
//! records as JSON.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::genome::ArchId;
use crate::space::StageName;

pub(super) fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub(super) fn stage_byte(s: StageName) -> u8 {
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
pub(super) fn stage_key(arch: ArchId, stage: StageName) -> [u8; 17] {
    let mut k = [0; 17];
    k[..16].copy_from_slice(&arch.0);
    k[16] = stage_byte(stage);
    k
}

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

pub(super) fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("{what}: {e}"))
}

pub(super) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store records serialise")
}
