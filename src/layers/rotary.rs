//! Rotary position embedding (base 10000, non-interleaved: dims `i` and
//! `i + r/2` form a pair) on the first `r` dims of each head.

use burn::prelude::*;

use super::ops::{contiguous, fit};

/// Rotates the first `rotary_dim` dims of each head by position.
///
/// # Shapes
/// - x: `[batch, heads, seq, head_dim]` → same
pub fn apply_rotary<B: Backend>(x: Tensor<B, 4>, rotary_dim: usize) -> Tensor<B, 4> {
    let [batch, heads, seq, head_dim] = x.dims();
    if rotary_dim == 0 {
        return x;
    }
    let half = rotary_dim / 2;
    let device = x.device();
    let table = |name: &'static str, f: fn(f64) -> f64| -> Tensor<B, 4> {
        crate::layers::consts::cached(name, &[seq, rotary_dim], &device, || {
            let inv = inverse_frequencies(rotary_dim);
            let v: Vec<f32> = (0..seq)
                .flat_map(|p| inv.iter().map(move |w| f(p as f64 * w) as f32))
                .collect();
            Tensor::<B, 2>::from_data(burn::tensor::TensorData::new(v, [seq, half]), &device)
                .reshape([1, 1, seq, half])
        })
    };
    let (cos, sin) = (table("rotary_cos", f64::cos), table("rotary_sin", f64::sin));
    let all = [0..batch, 0..heads, 0..seq];
    let x1 = contiguous(
        x.clone()
            .slice([all[0].clone(), all[1].clone(), all[2].clone(), 0..half]),
    );
    let x2 = contiguous(x.clone().slice([
        all[0].clone(),
        all[1].clone(),
        all[2].clone(),
        half..rotary_dim,
    ]));
    let target = [batch, heads, seq, half];
    let (cos, sin) = (fit(cos, target), fit(sin, target));
    let r1 = x1.clone() * cos.clone() - x2.clone() * sin.clone();
    let r2 = x2 * cos + x1 * sin;
    if rotary_dim == head_dim {
        Tensor::cat(vec![r1, r2], 3)
    } else {
        let rest = x.slice([0..batch, 0..heads, 0..seq, rotary_dim..head_dim]);
        Tensor::cat(vec![r1, r2, rest], 3)
    }
}

/// The angle per position of each rotated pair `i < rotary_dim / 2`:
/// `10000^(−2i / rotary_dim)`.
pub fn inverse_frequencies(rotary_dim: usize) -> Vec<f64> {
    (0..rotary_dim / 2)
        .map(|i| 10000f64.powf(-(2.0 * i as f64) / rotary_dim as f64))
        .collect()
}
