//! Compression (mad-protocol §1.5): random tokens ending in a compression
//! token; the target is the input itself, to be decoded from the last
//! position's state (autoencoder backbone).

use rand::{Rng, RngExt};

use super::{Instance, TaskSetting};

pub(super) fn instance<R: Rng + ?Sized>(s: &TaskSetting, rng: &mut R) -> Instance {
    let mut inputs: Vec<i64> = (0..s.seq_len - 1)
        .map(|_| rng.random_range(0..s.vocab - 1) as i64)
        .collect();
    inputs.push((s.vocab - 1) as i64);
    Instance {
        targets: inputs.clone(),
        inputs,
    }
}
