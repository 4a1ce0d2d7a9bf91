//! Selective copying (mad-protocol §1.4): `n` content tokens scattered among
//! blanks, then a copy token and `n` blanks at which the content must be
//! reproduced in order. No shift; train and test targets alike.

use rand::{Rng, RngExt};

use super::{IGNORE, Instance, TaskSetting};

pub(super) fn instance<R: Rng + ?Sized>(s: &TaskSetting, rng: &mut R) -> Instance {
    let copy = (s.vocab - 1) as i64;
    let blank = (s.vocab - 2) as i64;
    let n = s.tokens_to_copy;
    let content: Vec<i64> = (0..n)
        .map(|_| rng.random_range(0..s.vocab - 2) as i64)
        .collect();
    // Blanks go before content token `i`, i uniform in 0..n: never after the last.
    let mut before = vec![0usize; n];
    for _ in 0..s.seq_len - 2 * n - 1 {
        before[rng.random_range(0..n)] += 1;
    }
    let mut inputs = Vec::with_capacity(s.seq_len);
    for (i, &c) in content.iter().enumerate() {
        inputs.extend(std::iter::repeat_n(blank, before[i]));
        inputs.push(c);
    }
    inputs.push(copy);
    inputs.extend(std::iter::repeat_n(blank, n));
    let mut targets = vec![IGNORE; s.seq_len - n];
    targets.extend(&content);
    Instance { inputs, targets }
}
