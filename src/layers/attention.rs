//! Causal softmax attention with rotary embeddings (mad-protocol §3.2
//! `attention`, `mh-attention`, and the sliding-window variants): fused QKV
//! projection with bias, scale 1/√head_dim, output projection with bias.
//! With `kv_heads` below `n_heads` it is grouped-query attention: the
//! projection emits `kv_heads` keys and values, each shared by
//! `n_heads / kv_heads` consecutive query heads (given to them by a copy
//! before the attention kernel, which stays the multi-head one).

use burn::nn::Linear;
use burn::prelude::*;

use super::Init;
use super::fused::{self, Heads};
use super::ops::{fit, linear};
use crate::genome;

/// Multi-head causal attention; sliding when `window` is set.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `[d, d + 2·kv_heads·head_dim]` with bias: q for all heads, then the
    /// keys and the values of the key/value heads.
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
        let kv = spec.kv_heads.unwrap_or(spec.n_heads) * head_dim;
        Attention {
            qkv: init.linear(d, d + 2 * kv, true),
            out: init.linear(d, d, true),
            n_heads: spec.n_heads,
            rotary_dim: spec.rotary_dim.unwrap_or(head_dim),
            window: spec.window.unwrap_or(0),
        }
    }

    /// # Shapes
    /// - x: `[batch, seq, d]` → `[batch, seq, d]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let heads = Heads {
            heads: self.n_heads,
            rotary_dim: self.rotary_dim,
            window: self.window,
        };
        let qkv = self.share_kv(linear(&self.qkv, x));
        linear(&self.out, fused::attention(qkv, heads))
    }

    /// q, k, v for every query head: each key/value head repeated for the
    /// query heads of its group (nothing to do without groups).
    ///
    /// # Shapes
    /// - qkv: `[batch, seq, d + 2·kv_heads·head_dim]` → `[batch, seq, 3d]`
    fn share_kv(&self, qkv: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, width] = qkv.dims();
        let d = self.out.weight.dims()[0];
        let kv = (width - d) / 2;
        if kv == d {
            return qkv;
        }
        let head_dim = d / self.n_heads;
        let kv_heads = kv / head_dim;
        let group = self.n_heads / kv_heads;
        let part =
            |from: usize, len: usize| qkv.clone().slice([0..batch, 0..seq, from..from + len]);
        let share = |t: Tensor<B, 3>| {
            fit(
                t.reshape([batch, seq, kv_heads, 1, head_dim]),
                [batch, seq, kv_heads, group, head_dim],
            )
            .reshape([batch, seq, d])
        };
        Tensor::cat(
            vec![part(0, d), share(part(d, kv)), share(part(d + kv, kv))],
            2,
        )
    }
}
