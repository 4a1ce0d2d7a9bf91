//! In-context recall and noisy in-context recall (mad-protocol §1.1, §1.2):
//! key-value pairs with a per-sequence map, multi-query scoring of repeated
//! keys, noise slots for the noisy variant; autoregressive shift.

use rand::{Rng, RngExt};

use super::{IGNORE, Instance, TaskSetting};

/// One sequence. Training targets are the full next-token shift; test targets
/// score only the values of keys seen before, predicted at the key position.
pub(super) fn instance<R: Rng + ?Sized>(s: &TaskSetting, rng: &mut R, training: bool) -> Instance {
    let ns = s.vocab - s.noise_vocab; // keys and values
    let n_keys = ns / 2;
    let n_values = ns - n_keys;
    let slots = s.seq_len / 2;
    let mut map: Vec<Option<i64>> = vec![None; n_keys];
    let mut tokens = Vec::with_capacity(s.seq_len);
    let mut scored = Vec::with_capacity(s.seq_len);
    let mut shown = Vec::new();
    // One slot is always real so that the probe has a key to ask for (the
    // reference may pick the probe's own slot here and then fail; we pick
    // among the loop's slots).
    let forced = rng.random_range(0..slots - 1);
    for slot in 0..slots - 1 {
        if s.frac_noise > 0.0 && slot != forced && rng.random_bool(s.frac_noise) {
            for _ in 0..2 {
                tokens.push((ns + rng.random_range(0..s.noise_vocab)) as i64);
                scored.push(IGNORE);
            }
            continue;
        }
        let k = rng.random_range(0..n_keys);
        let repeated = map[k].is_some();
        let v = *map[k].get_or_insert_with(|| (n_keys + rng.random_range(0..n_values)) as i64);
        tokens.extend([k as i64, v]);
        scored.extend([IGNORE, if repeated && s.multi_query { v } else { IGNORE }]);
        shown.push(k);
    }
    let k = shown[rng.random_range(0..shown.len())];
    let v = map[k].expect("shown keys have values");
    tokens.extend([k as i64, v]);
    scored.extend([IGNORE, v]);
    let inputs = tokens[..tokens.len() - 1].to_vec();
    let targets = if training {
        tokens[1..].to_vec()
    } else {
        scored[1..].to_vec()
    };
    Instance { inputs, targets }
}
