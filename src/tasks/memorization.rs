//! Memorization (mad-protocol §1.6): a fixed key→value map per setting,
//! never shown in context; each slot is `key, insert` with the key's value as
//! the insert token's target.

use rand::{Rng, RngExt};

use super::{IGNORE, Instance, TaskSetting};

/// The setting's fixed key→value pairs (keys `0..ns/2`, values `ns/2..ns`,
/// both shuffled and zipped), drawn from their own stream.
pub(super) fn key_map(s: &TaskSetting) -> Vec<i64> {
    let ns = s.vocab - 1;
    let mut rng = crate::seed::rng(s.seed, &["memorization-map", &s.vocab.to_string()]);
    let shuffle = |v: &mut Vec<i64>, rng: &mut rand_chacha::ChaCha8Rng| {
        for i in (1..v.len()).rev() {
            let j = rng.random_range(0..=i);
            v.swap(i, j);
        }
    };
    let mut keys: Vec<i64> = (0..(ns / 2) as i64).collect();
    let mut values: Vec<i64> = ((ns / 2) as i64..ns as i64).collect();
    shuffle(&mut keys, &mut rng);
    shuffle(&mut values, &mut rng);
    let mut map = vec![0; ns / 2];
    for (k, v) in keys.into_iter().zip(values) {
        map[k as usize] = v;
    }
    map
}

pub(super) fn instance<R: Rng + ?Sized>(s: &TaskSetting, rng: &mut R, map: &[i64]) -> Instance {
    let insert = (s.vocab - 1) as i64;
    let mut inputs = Vec::with_capacity(s.seq_len);
    let mut targets = Vec::with_capacity(s.seq_len);
    for _ in 0..s.seq_len / 2 {
        let k = rng.random_range(0..map.len());
        inputs.extend([k as i64, insert]);
        targets.extend([IGNORE, map[k]]);
    }
    Instance { inputs, targets }
}
