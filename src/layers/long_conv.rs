//! Causal long convolution `y[t, c] = Σ_{s≤t} h[c, t−s] · v[s, c]` without FFT
//! (Burn 0.21's FFT has no gradient): a Toeplitz batched matmul for short
//! sequences, and a block-Toeplitz scheme for long ones that never builds a
//! `T × T` matrix per channel. [`direct`] is the reference the tests use.

use burn::prelude::*;
use burn::tensor::{Int, TensorData};

use super::ops::{contiguous, fit};

/// Longest sequence convolved through one full Toeplitz matrix per channel.
pub const TOEPLITZ_MAX: usize = 256;
/// Block length of the block-Toeplitz scheme.
pub const BLOCK: usize = 128;

/// The causal Toeplitz matrices of filters `h`: `out[c, t, s] = h[c, t − s]`
/// for `s ≤ t`, 0 above the diagonal.
///
/// # Shapes
/// - h: `[channels, len]` → `[channels, len, len]`
pub fn toeplitz<B: Backend>(h: Tensor<B, 2>) -> Tensor<B, 3> {
    let [channels, len] = h.dims();
    let device = h.device();
    let (idx, mask) = toeplitz_index::<B>(len, &device);
    h.select(1, idx).reshape([channels, len, len]) * fit(mask, [channels, len, len])
}

/// The lag of every `(t, s)` of a `[len, len]` Toeplitz matrix (0 above the
/// diagonal), flattened, and the causal mask, `[1, len, len]`: built once
/// per size and device ([`consts`](super::consts)).
fn toeplitz_index<B: Backend>(len: usize, device: &B::Device) -> (Tensor<B, 1, Int>, Tensor<B, 3>) {
    let idx = super::consts::cached("toeplitz_idx", &[len], device, || {
        let idx: Vec<i64> = (0..len * len)
            .map(|i| {
                let (t, s) = (i / len, i % len);
                if s <= t { (t - s) as i64 } else { 0 }
            })
            .collect();
        Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [len * len]), device)
    });
    let mask = super::consts::cached("toeplitz_mask", &[len], device, || {
        let mask: Vec<f32> = (0..len * len)
            .map(|i| if i % len <= i / len { 1.0 } else { 0.0 })
            .collect();
        Tensor::<B, 3>::from_data(TensorData::new(mask, [1, len, len]), device)
    });
    (idx, mask)
}

/// Causal convolution of `v` with per-channel filters `h` (first `seq` taps used).
///
/// # Shapes
/// - v: `[batch, seq, channels]`; h: `[channels, ≥ seq]` → `[batch, seq, channels]`
pub fn causal_conv<B: Backend>(v: Tensor<B, 3>, h: Tensor<B, 2>) -> Tensor<B, 3> {
    let seq = v.dims()[1];
    if seq <= TOEPLITZ_MAX {
        toeplitz_conv(v, h)
    } else {
        block_toeplitz_conv(v, h, BLOCK)
    }
}

/// One `[T, T]` Toeplitz matrix per channel, one batched matmul.
pub fn toeplitz_conv<B: Backend>(v: Tensor<B, 3>, h: Tensor<B, 2>) -> Tensor<B, 3> {
    let [_, seq, channels] = v.dims();
    let h = h.slice([0..channels, 0..seq]);
    let vt = contiguous(v.permute([2, 1, 0])); // [channels, seq, batch]
    contiguous(toeplitz(h).matmul(vt).permute([2, 1, 0]))
}

/// Blocks of `block` steps: `y_i = Σ_{k ≤ i} H_k v_{i−k}` with `H_k` the
/// `[block, block]` Toeplitz block of lag `k` (`H_k[a, b] = h[k·block + a − b]`).
pub fn block_toeplitz_conv<B: Backend>(
    v: Tensor<B, 3>,
    h: Tensor<B, 2>,
    block: usize,
) -> Tensor<B, 3> {
    let [batch, seq, channels] = v.dims();
    let device = v.device();
    let nb = seq.div_ceil(block);
    let padded = nb * block;
    // Filter taps 0..padded + block (zeros beyond seq), input padded to whole blocks.
    let h = h.slice([0..channels, 0..seq]);
    let h = Tensor::cat(
        vec![h, Tensor::zeros([channels, padded + block - seq], &device)],
        1,
    );
    let v = if padded > seq {
        Tensor::cat(
            vec![v, Tensor::zeros([batch, padded - seq, channels], &device)],
            1,
        )
    } else {
        v
    };
    // Copied first: Burn 0.21's cubecl backends give a strided view ending
    // in a size-1 dim (batch 1) wrong strides when it is split
    // (`tests_gpu_faults`).
    let vt = contiguous(v.permute([2, 1, 0])).reshape([channels, nb, block, batch]);
    let mut y: Option<Tensor<B, 4>> = None;
    for lag in 0..nb {
        let build = || -> (Vec<i64>, Vec<f32>) {
            (0..block * block)
                .map(|i| {
                    let (a, b) = (i / block, i % block);
                    let tap = (lag * block + a) as i64 - b as i64;
                    if tap >= 0 { (tap, 1.0) } else { (0, 0.0) }
                })
                .unzip()
        };
        let idx = super::consts::cached("block_idx", &[block, lag], &device, || {
            Tensor::<B, 1, Int>::from_data(TensorData::new(build().0, [block * block]), &device)
        });
        let mask = super::consts::cached("block_mask", &[block, lag], &device, || {
            Tensor::<B, 3>::from_data(TensorData::new(build().1, [1, block, block]), &device)
        });
        let hk = h.clone().select(1, idx).reshape([channels, block, block])
            * fit(mask, [channels, block, block]);
        let src = vt.clone().narrow(1, 0, nb - lag); // blocks 0..nb−lag feed blocks lag..nb
        let contrib = hk.unsqueeze_dim::<4>(1).matmul(src); // [channels, nb − lag, block, batch]
        let contrib = if lag > 0 {
            Tensor::cat(
                vec![
                    Tensor::zeros([channels, lag, block, batch], &device),
                    contrib,
                ],
                1,
            )
        } else {
            contrib
        };
        y = Some(match y {
            Some(acc) => acc + contrib,
            None => contrib,
        });
    }
    let y = y.expect("at least one block");
    y.reshape([channels, padded, batch])
        .permute([2, 1, 0])
        .slice([0..batch, 0..seq, 0..channels])
}

/// The definition, one shifted product per lag: the reference for tests.
pub fn direct<B: Backend>(v: Tensor<B, 3>, h: Tensor<B, 2>) -> Tensor<B, 3> {
    let [_, seq, channels] = v.dims();
    let mut y = v.zeros_like();
    for lag in 0..seq {
        let tap = h
            .clone()
            .slice([0..channels, lag..lag + 1])
            .reshape([1, 1, channels]);
        y = y + super::short_conv::shift_right(v.clone(), lag) * tap;
    }
    y
}
