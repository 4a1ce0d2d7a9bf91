//! Scaling-law fits (mad-protocol §4.2): per compute budget a parabola of
//! loss against `ln N` (the IsoFLOP curve) gives the compute-optimal size
//! `N*(C)` and loss `L*(C)`; across budgets a saturating power law
//! `L*(C) = E + A·(C/C₀)^(−α)` (`C₀` the geometric mean of the budgets, for
//! conditioning) with Gauss–Newton standard errors, or a pure power law
//! (`E = 0`) where fewer than four budgets leave no degree of freedom for
//! `E`; a log–log line for the state-optimal view (`L* ∝ M^c`); and
//! Spearman's rank correlation for comparing stages.

// Small dense linear algebra reads best with explicit indices.
#![allow(clippy::needless_range_loop)]

use serde::{Deserialize, Serialize};

/// Why a fit is not possible.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FitError {
    /// Too few points.
    #[error("{what} needs at least {need} points with distinct x, got {got}")]
    TooFew {
        /// Which fit.
        what: &'static str,
        /// Points needed.
        need: usize,
        /// Points given.
        got: usize,
    },
    /// A value that is not finite and positive where it must be.
    #[error("{what}: {value} is not a finite positive number")]
    Invalid {
        /// Which fit.
        what: &'static str,
        /// The value.
        value: f64,
    },
}

/// The IsoFLOP analysis of one compute budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IsoFlop {
    /// The budget, FLOPs.
    pub compute: f64,
    /// `a·x² + b·x + c` with `x = ln N`.
    pub parabola: [f64; 3],
    /// Compute-optimal non-embedding parameters.
    pub n_opt: f64,
    /// Loss there.
    pub loss_opt: f64,
    /// Whether the minimum lies within the sizes run (else `n_opt` and
    /// `loss_opt` are the best size run, and the budget's sizes should move).
    pub bracketed: bool,
}

/// Solves `m · x = v` (n ≤ 3) by Gauss–Jordan elimination with pivoting;
/// `None` when singular.
fn solve<const N: usize>(mut m: [[f64; N]; N], mut v: [f64; N]) -> Option<[f64; N]> {
    for col in 0..N {
        let pivot = (col..N).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))?;
        if m[pivot][col].abs() < 1e-300 {
            return None;
        }
        m.swap(col, pivot);
        v.swap(col, pivot);
        for row in 0..N {
            if row != col {
                let f = m[row][col] / m[col][col];
                for k in col..N {
                    m[row][k] -= f * m[col][k];
                }
                v[row] -= f * v[col];
            }
        }
    }
    let mut x = [0.0; N];
    for i in 0..N {
        x[i] = v[i] / m[i][i];
    }
    Some(x)
}

/// The inverse of a small symmetric matrix.
fn inverse<const N: usize>(m: [[f64; N]; N]) -> Option<[[f64; N]; N]> {
    let mut out = [[0.0; N]; N];
    for j in 0..N {
        let mut e = [0.0; N];
        e[j] = 1.0;
        let col = solve(m, e)?;
        for i in 0..N {
            out[i][j] = col[i];
        }
    }
    Some(out)
}

/// Least squares of `y` on the columns of `x` (rows are points).
fn least_squares<const N: usize>(x: &[[f64; N]], y: &[f64]) -> Option<[f64; N]> {
    let mut xtx = [[0.0; N]; N];
    let mut xty = [0.0; N];
    for (row, &yi) in x.iter().zip(y) {
        for i in 0..N {
            xty[i] += row[i] * yi;
            for j in 0..N {
                xtx[i][j] += row[i] * row[j];
            }
        }
    }
    solve(xtx, xty)
}

fn check(what: &'static str, v: f64) -> Result<f64, FitError> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(FitError::Invalid { what, value: v })
    }
}

/// Fits one budget's IsoFLOP curve from `(N, loss)` pairs.
///
/// # Errors
/// Fewer than three distinct sizes, or a non-positive size or loss.
pub fn isoflop(compute: f64, points: &[(f64, f64)]) -> Result<IsoFlop, FitError> {
    const WHAT: &str = "an IsoFLOP parabola";
    let mut xs = Vec::with_capacity(points.len());
    for &(n, l) in points {
        xs.push(check(WHAT, n)?.ln());
        check(WHAT, l)?;
    }
    let mut distinct = xs.clone();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    if distinct.len() < 3 {
        return Err(FitError::TooFew {
            what: WHAT,
            need: 3,
            got: distinct.len(),
        });
    }
    let rows: Vec<[f64; 3]> = xs.iter().map(|&x| [x * x, x, 1.0]).collect();
    let ys: Vec<f64> = points.iter().map(|p| p.1).collect();
    let [a, b, c] = least_squares(&rows, &ys).ok_or(FitError::TooFew {
        what: WHAT,
        need: 3,
        got: distinct.len(),
    })?;
    let (lo, hi) = (distinct[0], distinct[distinct.len() - 1]);
    let vertex = -b / (2.0 * a);
    let best = points
        .iter()
        .min_by(|p, q| p.1.total_cmp(&q.1))
        .copied()
        .expect("three points");
    let (n_opt, loss_opt, bracketed) = if a > 0.0 && (lo..=hi).contains(&vertex) {
        (vertex.exp(), c - b * b / (4.0 * a), true)
    } else {
        (best.0, best.1, false)
    };
    Ok(IsoFlop {
        compute,
        parabola: [a, b, c],
        n_opt,
        loss_opt,
        bracketed,
    })
}

/// `L(C) = E + A·(C/C₀)^(−α)`, with standard errors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PowerLaw {
    /// Irreducible loss.
    pub e: f64,
    /// Scale at `C₀`.
    pub a: f64,
    /// Exponent.
    pub alpha: f64,
    /// Reference compute (geometric mean of the budgets).
    pub c0: f64,
    /// Whether `E` was held at 0 (fewer than four budgets, or a free fit
    /// that put it below 0).
    pub e_fixed: bool,
    /// Standard errors of (E, A, α) (E's is 0 when fixed); `None` with no
    /// residual degree of freedom.
    pub se: Option<[f64; 3]>,
    /// Covariance of the free parameters, in the order (E, A, α) or (A, α).
    pub cov: Option<Vec<Vec<f64>>>,
    /// Root-mean-square residual.
    pub rmse: f64,
    /// Points fitted.
    pub points: usize,
}

impl PowerLaw {
    /// The predicted loss at `c`.
    pub fn predict(&self, c: f64) -> f64 {
        self.e + self.a * (c / self.c0).powf(-self.alpha)
    }

    /// The prediction's standard error at `c` (delta method), if known.
    pub fn predict_se(&self, c: f64) -> Option<f64> {
        let cov = self.cov.as_ref()?;
        let x = c / self.c0;
        let p = x.powf(-self.alpha);
        let g_a = p;
        let g_alpha = -self.a * p * x.ln();
        let g: Vec<f64> = if self.e_fixed {
            vec![g_a, g_alpha]
        } else {
            vec![1.0, g_a, g_alpha]
        };
        let mut var = 0.0;
        for i in 0..g.len() {
            for j in 0..g.len() {
                var += g[i] * cov[i][j] * g[j];
            }
        }
        Some(var.max(0.0).sqrt())
    }
}

/// For a fixed α: the least-squares (E, A) (or A with E = 0) and the SSE.
fn profile(xs: &[f64], ys: &[f64], alpha: f64, free_e: bool) -> Option<(f64, f64, f64)> {
    let (e, a) = if free_e {
        let rows: Vec<[f64; 2]> = xs.iter().map(|&x| [1.0, x.powf(-alpha)]).collect();
        let [e, a] = least_squares(&rows, ys)?;
        (e, a)
    } else {
        let rows: Vec<[f64; 1]> = xs.iter().map(|&x| [x.powf(-alpha)]).collect();
        let [a] = least_squares(&rows, ys)?;
        (0.0, a)
    };
    let sse = xs
        .iter()
        .zip(ys)
        .map(|(&x, &y)| (y - e - a * x.powf(-alpha)).powi(2))
        .sum();
    Some((e, a, sse))
}

/// The α in [0, 3] minimising the profiled SSE: a grid, then golden section.
fn best_alpha(xs: &[f64], ys: &[f64], free_e: bool) -> Option<f64> {
    let sse = |alpha: f64| profile(xs, ys, alpha, free_e).map_or(f64::INFINITY, |p| p.2);
    let steps = 600;
    let grid = |i: usize| 3.0 * i as f64 / steps as f64;
    let i = (1..=steps).min_by(|&i, &j| sse(grid(i)).total_cmp(&sse(grid(j))))?;
    let (mut lo, mut hi) = (grid(i - 1).max(1e-6), grid((i + 1).min(steps)));
    let phi = (5f64.sqrt() - 1.0) / 2.0;
    for _ in 0..100 {
        let m1 = hi - phi * (hi - lo);
        let m2 = lo + phi * (hi - lo);
        if sse(m1) < sse(m2) {
            hi = m2;
        } else {
            lo = m1;
        }
    }
    Some((lo + hi) / 2.0)
}

/// Fits `L*(C)` to `(compute, loss)` points: E free with four or more
/// budgets, else (or if E would fall below 0) E = 0.
///
/// # Errors
/// Fewer than two distinct budgets, or a non-positive value.
pub fn power_law(points: &[(f64, f64)]) -> Result<PowerLaw, FitError> {
    const WHAT: &str = "a power law in compute";
    let mut logs = Vec::with_capacity(points.len());
    for &(c, l) in points {
        logs.push(check(WHAT, c)?.ln());
        check(WHAT, l)?;
    }
    let mut distinct = logs.clone();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    if distinct.len() < 2 {
        return Err(FitError::TooFew {
            what: WHAT,
            need: 2,
            got: distinct.len(),
        });
    }
    let c0 = (logs.iter().sum::<f64>() / logs.len() as f64).exp();
    let xs: Vec<f64> = points.iter().map(|p| p.0 / c0).collect();
    let ys: Vec<f64> = points.iter().map(|p| p.1).collect();
    let singular = FitError::TooFew {
        what: WHAT,
        need: 2,
        got: distinct.len(),
    };
    let mut free_e = distinct.len() >= 4;
    let (e, a, alpha, sse) = loop {
        let alpha = best_alpha(&xs, &ys, free_e).ok_or(singular.clone())?;
        let (e, a, sse) = profile(&xs, &ys, alpha, free_e).ok_or(singular.clone())?;
        if free_e && e < 0.0 {
            free_e = false;
            continue;
        }
        break (e, a, alpha, sse);
    };
    let n = xs.len();
    let p = if free_e { 3 } else { 2 };
    let (se, cov) = if n > p {
        let s2 = sse / (n - p) as f64;
        // Jacobian columns: ∂/∂E = 1, ∂/∂A = x^−α, ∂/∂α = −A·x^−α·ln x.
        let jac: Vec<Vec<f64>> = xs
            .iter()
            .map(|&x| {
                let q = x.powf(-alpha);
                let mut row = vec![q, -a * q * x.ln()];
                if free_e {
                    row.insert(0, 1.0);
                }
                row
            })
            .collect();
        let cov: Option<Vec<Vec<f64>>> = if free_e {
            let mut jtj = [[0.0; 3]; 3];
            for r in &jac {
                for i in 0..3 {
                    for j in 0..3 {
                        jtj[i][j] += r[i] * r[j];
                    }
                }
            }
            inverse(jtj).map(|m| {
                m.iter()
                    .map(|r| r.iter().map(|v| v * s2).collect())
                    .collect()
            })
        } else {
            let mut jtj = [[0.0; 2]; 2];
            for r in &jac {
                for i in 0..2 {
                    for j in 0..2 {
                        jtj[i][j] += r[i] * r[j];
                    }
                }
            }
            inverse(jtj).map(|m| {
                m.iter()
                    .map(|r| r.iter().map(|v| v * s2).collect())
                    .collect()
            })
        };
        let se = cov.as_ref().map(|c| {
            let d = |i: usize| c[i][i].max(0.0).sqrt();
            if free_e {
                [d(0), d(1), d(2)]
            } else {
                [0.0, d(0), d(1)]
            }
        });
        (se, cov)
    } else {
        (None, None)
    };
    Ok(PowerLaw {
        e,
        a,
        alpha,
        c0,
        e_fixed: !free_e,
        se,
        cov,
        rmse: (sse / n as f64).sqrt(),
        points: n,
    })
}

/// `y = k · x^c`, fitted as a line in log–log space.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogLog {
    /// The exponent `c`.
    pub exponent: f64,
    /// `ln k`.
    pub log_coef: f64,
    /// Standard error of the exponent (`None` with two points).
    pub exponent_se: Option<f64>,
}

/// Fits `y = k · x^c` (the state-optimal view: `L* ∝ M^c`).
///
/// # Errors
/// Fewer than two distinct x, or a non-positive value.
pub fn loglog(points: &[(f64, f64)]) -> Result<LogLog, FitError> {
    const WHAT: &str = "a log-log line";
    let mut lx = Vec::new();
    let mut ly = Vec::new();
    for &(x, y) in points {
        lx.push(check(WHAT, x)?.ln());
        ly.push(check(WHAT, y)?.ln());
    }
    let n = lx.len() as f64;
    let mx = lx.iter().sum::<f64>() / n;
    let my = ly.iter().sum::<f64>() / n;
    let sxx: f64 = lx.iter().map(|x| (x - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return Err(FitError::TooFew {
            what: WHAT,
            need: 2,
            got: 1,
        });
    }
    let sxy: f64 = lx.iter().zip(&ly).map(|(x, y)| (x - mx) * (y - my)).sum();
    let c = sxy / sxx;
    let k = my - c * mx;
    let exponent_se = (lx.len() > 2).then(|| {
        let sse: f64 = lx
            .iter()
            .zip(&ly)
            .map(|(x, y)| (y - k - c * x).powi(2))
            .sum();
        (sse / (n - 2.0) / sxx).sqrt()
    });
    Ok(LogLog {
        exponent: c,
        log_coef: k,
        exponent_se,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};

    fn rng() -> rand_chacha::ChaCha8Rng {
        rand_chacha::ChaCha8Rng::seed_from_u64(7)
    }

    #[test]
    fn an_isoflop_parabola_recovers_its_minimum() {
        // L = 0.3·(ln N − ln 2e6)² + 1.8, five sizes, noise σ = 0.002.
        let noise = Normal::new(0.0, 0.002).unwrap();
        let mut r = rng();
        let pts: Vec<(f64, f64)> = [0.25, 0.5, 1.0, 2.0, 4.0]
            .iter()
            .map(|f| {
                let n = 2e6 * f;
                let x: f64 = (n / 2e6_f64).ln();
                (n, 0.3 * x * x + 1.8 + noise.sample(&mut r))
            })
            .collect();
        let f = isoflop(1e15, &pts).unwrap();
        assert!(f.bracketed);
        assert!((f.n_opt / 2e6 - 1.0).abs() < 0.05, "{}", f.n_opt);
        assert!((f.loss_opt - 1.8).abs() < 0.005, "{}", f.loss_opt);
        // Monotone losses have no interior minimum: the best size is reported.
        let down = [(1e6, 3.0), (2e6, 2.5), (4e6, 2.2)];
        let g = isoflop(1e15, &down).unwrap();
        assert!(!g.bracketed);
        assert_eq!((g.n_opt, g.loss_opt), (4e6, 2.2));
        assert!(matches!(
            isoflop(1e15, &[(1e6, 2.0), (1e6, 2.1), (2e6, 2.0)]),
            Err(FitError::TooFew { got: 2, .. })
        ));
        assert!(matches!(
            isoflop(1e15, &[(1e6, f64::NAN), (2e6, 2.0), (3e6, 2.0)]),
            Err(FitError::Invalid { .. })
        ));
    }

    #[test]
    fn a_saturating_power_law_is_recovered_with_honest_errors() {
        // E = 1.7, A·C₀^α: L = 1.7 + 410·C^−0.15 over eight budgets.
        let (e, a_raw, alpha) = (1.7, 410.0, 0.15);
        let noise = Normal::new(0.0, 0.003).unwrap();
        let mut r = rng();
        let pts: Vec<(f64, f64)> = (0..8)
            .map(|i| {
                let c = 1e13 * 3f64.powi(i);
                (c, e + a_raw * c.powf(-alpha) + noise.sample(&mut r))
            })
            .collect();
        let f = power_law(&pts).unwrap();
        assert!(!f.e_fixed);
        let se = f.se.unwrap();
        assert!(
            (f.alpha - alpha).abs() < 3.0 * se[2] + 1e-3,
            "α {} ± {}",
            f.alpha,
            se[2]
        );
        assert!(
            (f.e - e).abs() < 3.0 * se[0] + 1e-3,
            "E {} ± {}",
            f.e,
            se[0]
        );
        // Prediction beyond the budgets, within its error bars.
        let target: f64 = 1e18;
        let truth = e + a_raw * target.powf(-alpha);
        let (p, s) = (f.predict(target), f.predict_se(target).unwrap());
        assert!((p - truth).abs() < 3.0 * s + 2e-3, "{p} ± {s} vs {truth}");
        assert!(f.rmse < 0.01);
    }

    #[test]
    fn three_budgets_fit_a_pure_power_law() {
        let pts: Vec<(f64, f64)> = [1e12, 1e13, 1e14]
            .iter()
            .map(|&c: &f64| (c, 50.0 * c.powf(-0.1)))
            .collect();
        let f = power_law(&pts).unwrap();
        assert!(f.e_fixed && f.e == 0.0);
        assert!((f.alpha - 0.1).abs() < 1e-4, "{}", f.alpha);
        assert!((f.predict(1e16) - 50.0 * 1e16f64.powf(-0.1)).abs() < 1e-3);
        assert!(f.se.is_some(), "one residual degree of freedom");
        let two = power_law(&pts[..2]).unwrap();
        assert!(two.se.is_none() && two.predict_se(1e16).is_none());
        assert!(power_law(&pts[..1]).is_err());
    }

    #[test]
    fn the_state_line_matches_a_hand_computed_fit() {
        // ln M = 0, 1, 2 and ln L = 0, 1, 1: slope 1/2, intercept 1/6,
        // residuals −1/6, 1/3, −1/6, so SSE = 1/6 and
        // se = √(SSE / (n − 2) / Sxx) = √(1/6 / 1 / 2) = 1/√12.
        let e = std::f64::consts::E;
        let f = loglog(&[(1.0, 1.0), (e, e), (e * e, e)]).unwrap();
        assert!((f.exponent - 0.5).abs() < 1e-12, "{f:?}");
        assert!((f.log_coef - 1.0 / 6.0).abs() < 1e-12, "{f:?}");
        assert!((f.exponent_se.unwrap() - 1.0 / 12f64.sqrt()).abs() < 1e-12);
        // Two points: a line, no standard error; one state: no line.
        assert!(
            loglog(&[(1.0, 2.0), (e, 3.0)])
                .unwrap()
                .exponent_se
                .is_none()
        );
        assert!(loglog(&[(5.0, 2.0), (5.0, 3.0)]).is_err());
    }

    #[test]
    fn the_state_exponent_is_recovered() {
        // P* ∝ M^−0.28 (the paper's state-optimal exponent).
        let noise = Normal::new(0.0, 0.01).unwrap();
        let mut r = rng();
        let pts: Vec<(f64, f64)> = (0..10)
            .map(|i| {
                let m = 1e3 * 2f64.powi(i);
                (m, 40.0 * m.powf(-0.28) * (1.0 + noise.sample(&mut r)))
            })
            .collect();
        let f = loglog(&pts).unwrap();
        let se = f.exponent_se.unwrap();
        assert!(
            (f.exponent + 0.28).abs() < 3.0 * se + 1e-3,
            "{} ± {se}",
            f.exponent
        );
    }
}
