//! Gated short convolution (LFM2's convolution block; `search_spaces/
//! README.md` `gated-short-conv`): one bias-free projection to three
//! streams `b, c, x`, the input gate `b ⊙ x`, a depthwise causal
//! convolution of `kernel` taps without bias, the output gate `c ⊙ ·`, and
//! a bias-free output projection. Its only state is the convolution's
//! buffer of `kernel − 1` positions.
//!
//! Between the projections, the gates and the convolution are one fused
//! kernel on flex ([`super::fused::gated_conv`]), reading `b, c, x` from
//! the input projection's output without slicing it.

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;

use super::Init;
use super::ops::linear;
use crate::genome;

/// LFM2-style gated short convolution.
#[derive(Module, Debug)]
pub struct GatedShortConv<B: Backend> {
    /// `Linear(d, 3d)`, no bias: `b`, `c`, `x` in that order.
    pub in_proj: Linear<B>,
    /// Taps `[kernel, d]`, PyTorch's `Conv1d(groups = d, bias = False)`
    /// init U(±1/√kernel); tap `kernel − 1` multiplies the current position.
    pub conv: Param<Tensor<B, 2>>,
    /// `Linear(d, d)`, no bias.
    pub out_proj: Linear<B>,
}

impl<B: Backend> GatedShortConv<B> {
    /// Builds the layer for width `d`.
    pub fn new(spec: &genome::GatedShortConv, d: usize, init: &mut Init<'_, B>) -> Self {
        let k = spec.short_conv;
        GatedShortConv {
            in_proj: init.linear(d, 3 * d, false),
            conv: init.uniform([k, d], 1.0 / (k as f64).sqrt()),
            out_proj: init.linear(d, d, false),
        }
    }

    /// # Shapes
    /// - x: `[batch, seq, d]` → `[batch, seq, d]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let bcx = linear(&self.in_proj, x);
        linear(
            &self.out_proj,
            super::fused::gated_conv::gated_short_conv(bcx, self.conv.val()),
        )
    }
}
