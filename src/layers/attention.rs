//! Causal softmax attention with rotary embeddings (mad-protocol §3.2
//! `attention`, `mh-attention`, and the sliding-window variants): fused QKV
//! projection with bias, scale 1/√head_dim, output projection with bias.

use burn::nn::Linear;
use burn::prelude::*;

use super::Init;
use super::fused::{self, Heads};
use super::ops::linear;
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
        let heads = Heads {
            heads: self.n_heads,
            rotary_dim: self.rotary_dim,
            window: self.window,
        };
        linear(&self.out, fused::attention(linear(&self.qkv, x), heads))
    }
}
