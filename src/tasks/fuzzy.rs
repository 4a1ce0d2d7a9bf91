//! Fuzzy in-context recall (mad-protocol §1.3): keys and values are motifs
//! of up to `k_motif` / `v_motif` distinct tokens; a probe pair is inserted at
//! a random offset and asked for at the end; left-padded, shifted as recall.

use std::collections::HashMap;

use rand::{Rng, RngExt};

use super::{IGNORE, Instance, TaskSetting};

/// `size` distinct tokens from `lo..hi`, in random order.
fn motif<R: Rng + ?Sized>(rng: &mut R, lo: usize, hi: usize, size: usize) -> Vec<i64> {
    let mut pool: Vec<i64> = (lo as i64..hi as i64).collect();
    for i in 0..size {
        let j = rng.random_range(i..pool.len());
        pool.swap(i, j);
    }
    pool.truncate(size);
    pool
}

pub(super) fn instance<R: Rng + ?Sized>(s: &TaskSetting, rng: &mut R, training: bool) -> Instance {
    let pad = (s.vocab - 1) as i64;
    let ns = s.vocab - 1;
    let (key_lo, key_hi, val_lo, val_hi) = (0, ns / 2, ns / 2, ns);
    let key_size = |rng: &mut R| {
        if training {
            rng.random_range(1..=s.k_motif)
        } else {
            s.k_motif
        }
    };
    let val_size = |rng: &mut R| rng.random_range(1..=s.v_motif);
    let ks = key_size(rng);
    let probe_key = motif(rng, key_lo, key_hi, ks);
    let vs = val_size(rng);
    let probe_val = motif(rng, val_lo, val_hi, vs);
    let probe_len = probe_key.len() + probe_val.len();
    let offset = rng.random_range(0..s.seq_len.saturating_sub(2 * probe_len).max(1));
    let stop = s.seq_len.saturating_sub(probe_len + s.k_motif + s.v_motif);
    let mut tokens: Vec<i64> = Vec::with_capacity(s.seq_len + 1);
    let mut scored: Vec<i64> = Vec::with_capacity(s.seq_len + 1);
    let mut values: HashMap<Vec<i64>, Vec<i64>> = HashMap::new();
    let mut probe_placed = false;
    while tokens.len() < stop {
        if tokens.len() >= offset && !probe_placed {
            tokens.extend(&probe_key);
            tokens.extend(&probe_val);
            scored.extend(std::iter::repeat_n(IGNORE, probe_len));
            values.insert(probe_key.clone(), probe_val.clone());
            probe_placed = true;
            continue;
        }
        if s.frac_noise > 0.0 && rng.random_bool(s.frac_noise) {
            let n = s.k_motif + s.v_motif;
            for _ in 0..n {
                tokens.push(rng.random_range(0..ns) as i64);
                scored.push(IGNORE);
            }
            continue;
        }
        let size = key_size(rng);
        let key = motif(rng, key_lo, key_hi, size);
        let presented = values.contains_key(&key);
        let value = if key == probe_key {
            probe_val.clone()
        } else if let Some(v) = values.get(&key) {
            v.clone()
        } else {
            let vs = val_size(rng);
            motif(rng, val_lo, val_hi, vs)
        };
        values.insert(key.clone(), value.clone());
        tokens.extend(&key);
        scored.extend(std::iter::repeat_n(IGNORE, key.len()));
        tokens.extend(&value);
        if presented && s.multi_query {
            scored.extend(&value);
        } else {
            scored.extend(std::iter::repeat_n(IGNORE, value.len()));
        }
    }
    tokens.extend(&probe_key);
    scored.extend(std::iter::repeat_n(IGNORE, probe_key.len()));
    tokens.extend(&probe_val);
    scored.extend(&probe_val);
    // Left-pad to seq_len + 1, then shift.
    let fill = (s.seq_len + 1).saturating_sub(tokens.len());
    let mut padded = vec![pad; fill];
    padded.extend(tokens);
    let mut padded_scored = vec![IGNORE; fill];
    padded_scored.extend(scored);
    let inputs = padded[..padded.len() - 1].to_vec();
    let targets = if training {
        padded[1..].to_vec()
    } else {
        padded_scored[1..].to_vec()
    };
    Instance { inputs, targets }
}
