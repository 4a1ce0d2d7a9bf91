//! Rank statistics: how well one stage's scores predict another's (screen
//! → mad → scale) and how stable a ranking is across seeds. Spearman's ρ,
//! Kendall's τ-b, percentile-bootstrap intervals, mean and spread.

use serde::{Deserialize, Serialize};

/// Fractional ranks of `x`, 1-based: tied values share the mean of the
/// ranks they span (`[10, 20, 20, 30]` → `[1, 2.5, 2.5, 4]`). Values are
/// ordered by [`f64::total_cmp`] (a NaN ranks above every number).
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut out = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]].total_cmp(&x[order[i]]).is_eq() {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            out[k] = mean;
        }
        i = j + 1;
    }
    out
}

fn pearson(a: &[f64], b: &[f64]) -> Option<f64> {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    (va > 0.0 && vb > 0.0).then(|| (cov / (va * vb).sqrt()).clamp(-1.0, 1.0))
}

/// Spearman's rank correlation: Pearson's correlation of the fractional
/// ranks. `None` when the lengths differ, with fewer than two pairs, or when
/// either side is all tied.
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.len() < 2 {
        return None;
    }
    pearson(&ranks(x), &ranks(y))
}

/// Kendall's τ-b: `(C − D) / √((n₀ − n₁)(n₀ − n₂))` with `C`, `D` the
/// concordant and discordant pairs, `n₀ = n(n−1)/2` and `n₁`, `n₂` the
/// pairs tied in `x` and in `y`. `None` when the lengths differ, with fewer
/// than two pairs, or when either side is all tied.
///
/// O(n log n) by Knight's method: sorted by (x, y), the discordant pairs are
/// the inversions of y, counted by a merge sort; then
/// `C − D = n₀ − n₁ − n₂ + n₃ − 2·D` with `n₃` the pairs tied in both.
/// Values compare by [`f64::total_cmp`].
pub fn kendall(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len();
    if n != y.len() || n < 2 {
        return None;
    }
    let mut pairs: Vec<(f64, f64)> = x.iter().copied().zip(y.iter().copied()).collect();
    pairs.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let tied_pairs = |runs: &mut dyn Iterator<Item = usize>| -> i64 {
        runs.map(|t| (t * (t - 1) / 2) as i64).sum()
    };
    let tied_x = tied_pairs(&mut runs(&pairs, |a, b| a.0.total_cmp(&b.0).is_eq()));
    let tied_xy = tied_pairs(&mut runs(&pairs, |a, b| {
        a.0.total_cmp(&b.0).is_eq() && a.1.total_cmp(&b.1).is_eq()
    }));
    let mut ys: Vec<f64> = pairs.iter().map(|p| p.1).collect();
    let mut scratch = vec![0.0; n];
    let discordant = inversions(&mut ys, &mut scratch) as i64;
    let tied_y = tied_pairs(&mut runs(&ys, |a, b| a.total_cmp(b).is_eq()));
    let n0 = (n * (n - 1) / 2) as i64;
    let numerator = n0 - tied_x - tied_y + tied_xy - 2 * discordant;
    let denominator = ((n0 - tied_x) as f64 * (n0 - tied_y) as f64).sqrt();
    (denominator > 0.0).then(|| numerator as f64 / denominator)
}

/// The lengths of the runs of neighbours of sorted `v` that `same` joins.
fn runs<'v, T>(v: &'v [T], same: impl Fn(&T, &T) -> bool + 'v) -> impl Iterator<Item = usize> + 'v {
    let mut i = 0;
    std::iter::from_fn(move || {
        if i >= v.len() {
            return None;
        }
        let start = i;
        i += 1;
        while i < v.len() && same(&v[start], &v[i]) {
            i += 1;
        }
        Some(i - start)
    })
}

/// Sorts `v` (by [`f64::total_cmp`], stably) and returns the number of
/// pairs `i < j` with `v[i] > v[j]` it had.
fn inversions(v: &mut [f64], scratch: &mut [f64]) -> u64 {
    let n = v.len();
    if n < 2 {
        return 0;
    }
    let mid = n / 2;
    let mut count = {
        let (a, b) = v.split_at_mut(mid);
        inversions(a, &mut scratch[..mid]) + inversions(b, &mut scratch[mid..n])
    };
    let (mut i, mut j, mut k) = (0, mid, 0);
    while i < mid && j < n {
        if v[j].total_cmp(&v[i]).is_lt() {
            // v[j] is below every element left in the first half.
            count += (mid - i) as u64;
            scratch[k] = v[j];
            j += 1;
        } else {
            scratch[k] = v[i];
            i += 1;
        }
        k += 1;
    }
    scratch[k..k + mid - i].copy_from_slice(&v[i..mid]);
    k += mid - i;
    scratch[k..k + n - j].copy_from_slice(&v[j..n]);
    v.copy_from_slice(&scratch[..n]);
    count
}

/// A confidence interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Lower end.
    pub lo: f64,
    /// Upper end.
    pub hi: f64,
}

/// A statistic with its bootstrap interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// On the data.
    pub value: f64,
    /// The percentile-bootstrap interval (`None` when fewer than half of
    /// the resamples give a value, e.g. most are all tied).
    pub interval: Option<Interval>,
    /// Pairs.
    pub n: usize,
}

/// SplitMix64: a small deterministic generator (same seed, same interval).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n ≤ 2³²: the multiply-shift bias is below 2⁻³²).
    fn below(&mut self, n: usize) -> usize {
        (((self.next() >> 32) * n as u64) >> 32) as usize
    }
}

/// The value at quantile `q` of sorted `v`, linearly interpolated between
/// neighbouring order statistics (numpy's default).
fn quantile(v: &[f64], q: f64) -> f64 {
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// `stat` on the pairs `(x, y)` with its `level` (e.g. 0.9) percentile
/// bootstrap interval from `reps` resamples of the pairs with replacement,
/// drawn from `seed`. Resamples where `stat` is undefined (all tied) are
/// skipped. `None` when `stat` is undefined on the data itself.
pub fn bootstrap(
    x: &[f64],
    y: &[f64],
    stat: fn(&[f64], &[f64]) -> Option<f64>,
    reps: usize,
    level: f64,
    seed: u64,
) -> Option<Estimate> {
    let value = stat(x, y)?;
    let n = x.len();
    let mut rng = SplitMix(seed);
    let (mut rx, mut ry) = (vec![0.0; n], vec![0.0; n]);
    let mut values = Vec::with_capacity(reps);
    for _ in 0..reps {
        for k in 0..n {
            let i = rng.below(n);
            rx[k] = x[i];
            ry[k] = y[i];
        }
        if let Some(v) = stat(&rx, &ry) {
            values.push(v);
        }
    }
    let interval = (values.len() * 2 >= reps && !values.is_empty()).then(|| {
        values.sort_by(f64::total_cmp);
        let tail = (1.0 - level.clamp(0.0, 1.0)) / 2.0;
        Interval {
            lo: quantile(&values, tail),
            hi: quantile(&values, 1.0 - tail),
        }
    });
    Some(Estimate { value, interval, n })
}

/// How well one ranking predicts another over paired scores: Spearman's ρ
/// and Kendall's τ-b, each with its [`INTERVAL_LEVEL`] bootstrap interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// Pairs.
    pub n: usize,
    /// Spearman's ρ (`None` below [`MIN_AGREEMENT_PAIRS`] or with a constant side).
    pub spearman: Option<Estimate>,
    /// Kendall's τ-b (likewise).
    pub kendall: Option<Estimate>,
}

/// Fewest pairs for which an agreement is reported (below, only the count:
/// with fewer, one swap moves τ by a third or more).
pub const MIN_AGREEMENT_PAIRS: usize = 5;

/// Coverage of the agreement's intervals. With few pairs (under about ten)
/// resamples repeat pairs and the interval's coverage is nominal at best.
pub const INTERVAL_LEVEL: f64 = 0.9;

/// Resamples behind an agreement's intervals: 2,000, fewer for boards of
/// thousands (each resample sorts its pairs: O(n log n); at least 200) so
/// that `status` stays quick.
pub fn bootstrap_reps(n: usize) -> usize {
    let work = n.max(2) as f64 * (n.max(2) as f64).log2();
    ((20_000_000.0 / work) as usize).clamp(200, 2000)
}

/// ρ and τ between `x` and `y` with their bootstrap intervals (resampled
/// from `seed`), from [`MIN_AGREEMENT_PAIRS`] pairs on. The pairs are put in
/// a canonical order first, so the result does not depend on the order
/// they were listed in.
pub fn agreement(x: &[f64], y: &[f64], seed: u64) -> Agreement {
    let n = x.len().min(y.len());
    if n < MIN_AGREEMENT_PAIRS {
        return Agreement {
            n,
            spearman: None,
            kendall: None,
        };
    }
    let mut pairs: Vec<(f64, f64)> = x.iter().copied().zip(y.iter().copied()).collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let (x, y): (Vec<f64>, Vec<f64>) = pairs.into_iter().unzip();
    let reps = bootstrap_reps(n);
    Agreement {
        n,
        spearman: bootstrap(&x, &y, spearman, reps, INTERVAL_LEVEL, seed),
        kendall: bootstrap(&x, &y, kendall, reps, INTERVAL_LEVEL, seed),
    }
}

/// Mean and sample standard deviation (`n − 1`; 0 for one value); `None`
/// for no values.
pub fn mean_std(x: &[f64]) -> Option<(f64, f64)> {
    if x.is_empty() {
        return None;
    }
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let std = if x.len() < 2 {
        0.0
    } else {
        (x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    };
    Some((mean, std))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn ranks_share_the_mean_rank_of_ties() {
        assert_eq!(ranks(&[10.0, 20.0, 20.0, 30.0]), [1.0, 2.5, 2.5, 4.0]);
        assert_eq!(ranks(&[3.0, 1.0, 2.0]), [3.0, 1.0, 2.0]);
        assert_eq!(ranks(&[f64::NAN, 1.0]), [2.0, 1.0]);
        assert_eq!(ranks(&[5.0, 5.0, 5.0]), [2.0, 2.0, 2.0]);
        assert!(ranks(&[]).is_empty());
    }

    #[test]
    fn spearman_on_hand_computed_cases() {
        // Monotone but not linear: 1; reversed: −1.
        let x: Vec<f64> = (1..20).map(f64::from).collect();
        let e: Vec<f64> = x.iter().map(|v| v.exp()).collect();
        assert!(close(spearman(&x, &e).unwrap(), 1.0));
        let r: Vec<f64> = x.iter().map(|v| -v).collect();
        assert!(close(spearman(&x, &r).unwrap(), -1.0));
        // Ties: x = [1, 2, 2, 3] → ranks [1, 2.5, 2.5, 4]; y ranks [1, 2, 3, 4].
        // Centred: a = [−1.5, 0, 0, 1.5], b = [−1.5, −0.5, 0.5, 1.5];
        // Σab = 4.5, Σa² = 4.5, Σb² = 5 → ρ = 4.5 / √22.5 = 0.948683.
        let rho = spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert!((rho - 4.5 / 22.5f64.sqrt()).abs() < 1e-12, "{rho}");
        // Without ties ρ = 1 − 6Σd²/(n(n²−1)): x = [1..5], y = [3, 4, 1, 2, 5]:
        // d = [−2, −2, 2, 2, 0], Σd² = 16 → ρ = 1 − 96/120 = 0.2.
        let rho = spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[3.0, 4.0, 1.0, 2.0, 5.0]).unwrap();
        assert!(close(rho, 0.2), "{rho}");
        assert_eq!(spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
        assert_eq!(spearman(&[1.0, 2.0], &[1.0]), None);
        assert_eq!(spearman(&[1.0], &[1.0]), None);
    }

    #[test]
    fn kendall_on_hand_computed_cases() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert!(close(kendall(&x, &x).unwrap(), 1.0));
        assert!(close(
            kendall(&x, &[5.0, 4.0, 3.0, 2.0, 1.0]).unwrap(),
            -1.0
        ));
        // y = [3, 4, 1, 2, 5]; of the ten pairs (i < j) the discordant are
        // (1,3) (1,4) (2,3) (2,4): C = 6, D = 4 → τ = 2/10.
        assert!(close(kendall(&x, &[3.0, 4.0, 1.0, 2.0, 5.0]).unwrap(), 0.2));
        // Ties: x = [1, 2, 2, 3], y = [1, 2, 3, 3]. Pairs: (1,2) C, (1,3) C,
        // (1,4) C, (2,3) tied in x, (2,4) C, (3,4) tied in y: C = 4, D = 0,
        // n₀ = 6, n₁ = n₂ = 1 → τ-b = 4 / √(5·5) = 0.8.
        assert!(close(
            kendall(&[1.0, 2.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 3.0]).unwrap(),
            0.8
        ));
        assert_eq!(kendall(&[1.0], &[2.0]), None);
        assert_eq!(kendall(&[2.0, 2.0], &[1.0, 3.0]), None);
        assert_eq!(kendall(&[1.0, 2.0], &[1.0]), None);
    }

    /// τ-b by its definition, every pair compared: the reference for the
    /// O(n log n) count.
    fn kendall_by_pairs(x: &[f64], y: &[f64]) -> Option<f64> {
        let n = x.len();
        let (mut c, mut d, mut tx, mut ty) = (0i64, 0i64, 0i64, 0i64);
        for i in 0..n {
            for j in i + 1..n {
                let dx = x[i].total_cmp(&x[j]) as i64;
                let dy = y[i].total_cmp(&y[j]) as i64;
                tx += i64::from(dx == 0);
                ty += i64::from(dy == 0);
                match dx * dy {
                    1 => c += 1,
                    -1 => d += 1,
                    _ => {}
                }
            }
        }
        let n0 = (n * (n - 1) / 2) as i64;
        let den = ((n0 - tx) as f64 * (n0 - ty) as f64).sqrt();
        (den > 0.0).then(|| (c - d) as f64 / den)
    }

    #[test]
    fn kendall_by_merge_sort_equals_every_pair_compared_with_ties() {
        let mut rng = SplitMix(11);
        for n in [2usize, 3, 5, 8, 31, 64, 257] {
            for levels in [2u64, 3, 7, 1 << 40] {
                let x: Vec<f64> = (0..n).map(|_| (rng.next() % levels) as f64).collect();
                let y: Vec<f64> = (0..n).map(|_| (rng.next() % levels) as f64).collect();
                let (fast, slow) = (kendall(&x, &y), kendall_by_pairs(&x, &y));
                match (fast, slow) {
                    (Some(a), Some(b)) => assert!((a - b).abs() < 1e-12, "{n} {levels}: {a} {b}"),
                    (a, b) => assert_eq!(a, b, "{n} {levels}"),
                }
            }
        }
        // Reversed, constant and NaN-holding inputs.
        let up: Vec<f64> = (0..100).map(f64::from).collect();
        let down: Vec<f64> = up.iter().rev().copied().collect();
        assert_eq!(kendall(&up, &down), Some(-1.0));
        assert_eq!(kendall(&up, &[1.0; 100]), None);
        let nan = [1.0, f64::NAN, 2.0, 0.5];
        assert_eq!(
            kendall(&nan, &[4.0, 3.0, 2.0, 1.0]),
            kendall_by_pairs(&nan, &[4.0, 3.0, 2.0, 1.0])
        );
    }

    #[test]
    fn kendall_matches_a_brute_force_sign_sum_without_ties() {
        let mut rng = SplitMix(7);
        for n in [2usize, 5, 17, 40] {
            let x: Vec<f64> = (0..n).map(|_| rng.next() as f64).collect();
            let y: Vec<f64> = (0..n).map(|_| rng.next() as f64).collect();
            let mut s = 0.0;
            // Over ordered pairs i ≠ j (each unordered pair twice; 0.0's
            // signum is 1, so the diagonal is left out).
            for i in 0..n {
                for j in (0..n).filter(|&j| j != i) {
                    s += ((x[i] - x[j]).signum() * (y[i] - y[j]).signum()) * 0.5;
                }
            }
            let want = s / (n * (n - 1) / 2) as f64;
            assert!((kendall(&x, &y).unwrap() - want).abs() < 1e-12);
            // And ρ against the no-ties formula.
            let (rx, ry) = (ranks(&x), ranks(&y));
            let d2: f64 = rx.iter().zip(&ry).map(|(a, b)| (a - b).powi(2)).sum();
            let nf = n as f64;
            let rho = 1.0 - 6.0 * d2 / (nf * (nf * nf - 1.0));
            assert!((spearman(&x, &y).unwrap() - rho).abs() < 1e-9);
        }
    }

    #[test]
    fn bootstrap_is_deterministic_and_brackets_the_estimate() {
        let x: Vec<f64> = (0..30).map(f64::from).collect();
        let y: Vec<f64> = x
            .iter()
            .enumerate()
            .map(|(i, v)| v + if i % 3 == 0 { 4.0 } else { -2.0 })
            .collect();
        let a = bootstrap(&x, &y, spearman, 1000, 0.9, 1).unwrap();
        assert_eq!(a, bootstrap(&x, &y, spearman, 1000, 0.9, 1).unwrap());
        assert_ne!(
            a.interval,
            bootstrap(&x, &y, spearman, 1000, 0.9, 2).unwrap().interval
        );
        let i = a.interval.unwrap();
        assert!(i.lo <= a.value && a.value <= i.hi && i.hi <= 1.0, "{a:?}");
        let wide = bootstrap(&x, &y, spearman, 1000, 0.99, 1)
            .unwrap()
            .interval
            .unwrap();
        assert!(wide.lo <= i.lo && wide.hi >= i.hi, "{wide:?} vs {i:?}");
        assert_eq!(a.n, 30);
        // Perfectly monotone data: every defined resample gives exactly 1.
        let e: Vec<f64> = x.iter().map(|v| v * v).collect();
        let m = bootstrap(&x, &e, kendall, 500, 0.9, 3).unwrap();
        assert_eq!(m.interval, Some(Interval { lo: 1.0, hi: 1.0 }));
        // Undefined on the data: no estimate.
        assert_eq!(
            bootstrap(&[1.0, 1.0], &[1.0, 2.0], spearman, 100, 0.9, 1),
            None
        );
        // A statistic defined on the data but on only about a fifth of the
        // resamples (those whose first pair has x > 0.8: 2 of 10 pairs) gets
        // no interval; one defined on every resample does.
        fn rare(x: &[f64], _: &[f64]) -> Option<f64> {
            (x[0] > 0.8).then_some(x[0])
        }
        let xs = [0.9, 0.95, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.1];
        let r = bootstrap(&xs, &xs, rare, 1000, 0.9, 1).unwrap();
        assert_eq!((r.value, r.interval), (0.9, None));
        fn first(x: &[f64], _: &[f64]) -> Option<f64> {
            Some(x[0])
        }
        let f = bootstrap(&xs, &xs, first, 1000, 0.9, 1).unwrap();
        assert!(
            f.interval.is_some_and(|i| i.lo <= 0.2 && i.hi >= 0.9),
            "{f:?}"
        );
        let tied: Vec<f64> = vec![1.0; 10];
        assert_eq!(
            bootstrap(&x[..10], &tied, kendall, 100, 0.9, 1),
            None,
            "a constant side has no τ"
        );
    }

    #[test]
    fn agreement_needs_five_pairs_and_ignores_their_order() {
        let few = agreement(&[1.0, 2.0, 3.0, 4.0], &[1.0, 2.0, 3.0, 4.0], 1);
        assert_eq!((few.n, few.spearman, few.kendall), (4, None, None));
        let x = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6];
        let y = [0.15, 0.1, 0.35, 0.3, 0.55, 0.7];
        let a = agreement(&x, &y, 1);
        // Ranks of y: [2, 1, 4, 3, 5, 6]; Σd² = 4 → ρ = 1 − 24/210.
        assert!(close(a.spearman.unwrap().value, 1.0 - 24.0 / 210.0));
        // τ: 13 concordant, 2 discordant of 15.
        assert!(close(a.kendall.unwrap().value, 11.0 / 15.0));
        let (mut rx, mut ry) = (x.to_vec(), y.to_vec());
        rx.reverse();
        ry.reverse();
        assert_eq!(agreement(&rx, &ry, 1), a, "same pairs, another order");
        assert_eq!(bootstrap_reps(10), 2000);
        assert_eq!(bootstrap_reps(1000), 2000);
        assert_eq!(bootstrap_reps(5_000), 325);
        assert_eq!(bootstrap_reps(100_000), 200);
    }

    #[test]
    fn mean_and_sample_std() {
        let (m, s) = mean_std(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap();
        assert!(close(m, 5.0));
        assert!(close(s, (32.0f64 / 7.0).sqrt()));
        assert_eq!(mean_std(&[3.0]), Some((3.0, 0.0)));
        assert_eq!(mean_std(&[]), None);
    }
}
