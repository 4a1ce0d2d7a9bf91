//! Causal softmax attention with rotary embeddings (mad-protocol §3.2
//! `attention`, `mh-attention`, and the sliding-window variants): fused QKV
//! projection with bias, scale 1/√head_dim, output projection with bias.

use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::softmax;

use super::Init;
use super::ops::{contiguous, fit, linear};
use super::rotary::apply_rotary;
use crate::genome;

/// Multi-head causal attention; sliding when `window` is set.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `[d, 3d]` with bias: q, k, v for all heads.
    pub qkv: Linear<B>,
    /// `[d, d]` with bias.
    pub out: Linear<B>,
    /// Number of heads.
    pub n_heads: usize,
    /// Rotated dims per head.
    pub rotary_dim: usize,
    /// Each token sees itself and at most this many earlier tokens (`0` = unbounded).
    pub window: usize,
}

impl<B: Backend> Attention<B> {
    /// Builds the layer for width `d`.
    pub fn new(spec: &genome::Attention, d: usize, init: &mut Init<'_, B>) -> Attention<B> {
        let head_dim = d / spec.n_heads;
        Attention {
            qkv: init.linear(d, 3 * d, true),
            out: init.linear(d, d, true),
            n_heads: spec.n_heads,
            rotary_dim: spec.rotary_dim.unwrap_or(head_dim),
            window: spec.window.unwrap_or(0),
        }
    }

    /// # Shapes
    /// - x: `[batch, seq, d]` → `[batch, seq, d]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, d] = x.dims();
        let h = self.n_heads;
        let hd = d / h;
        // [batch, seq, 3, heads, hd] → [3, batch, heads, seq, hd]
        let qkv = linear(&self.qkv, x)
            .reshape([batch, seq, 3, h, hd])
            .permute([2, 0, 3, 1, 4]);
        let part = |i: usize| -> Tensor<B, 4> {
            contiguous(
                qkv.clone()
                    .slice([i..i + 1, 0..batch, 0..h, 0..seq, 0..hd])
                    .reshape([batch, h, seq, hd]),
            )
        };
        let q = apply_rotary(part(0), self.rotary_dim);
        let k = apply_rotary(part(1), self.rotary_dim);
        let v = part(2);
        let scores = q.matmul(k.swap_dims(2, 3)) * (1.0 / (hd as f64).sqrt());
        let scores = scores.clone()
            + fit(
                causal_bias::<B>(seq, self.window, &v.device()),
                scores.dims(),
            );
        let y = softmax(scores, 3).matmul(v); // [batch, heads, seq, hd]
        linear(&self.out, y.swap_dims(1, 2).reshape([batch, seq, d]))
    }
}

/// Additive mask: 0 where query `t` may see key `s` (`s ≤ t`, and `t − s ≤ window`
/// when `window > 0`), −∞ elsewhere.
///
/// # Shapes
/// - output: `[1, 1, seq, seq]`
pub fn causal_bias<B: Backend>(seq: usize, window: usize, device: &B::Device) -> Tensor<B, 4> {
    let mut v = vec![0f32; seq * seq];
    for t in 0..seq {
        for s in 0..seq {
            let visible = s <= t && (window == 0 || t - s <= window);
            if !visible {
                v[t * seq + s] = f32::NEG_INFINITY;
            }
        }
    }
    Tensor::from_data(TensorData::new(v, [1, 1, seq, seq]), device)
}
