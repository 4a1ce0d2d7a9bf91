//! Hyena of order 2 (mad-protocol §3.2 `hyena`): tied input projection tiled
//! `proj_groups` times, depthwise causal short conv, `v ← v ⊙ x1`, long causal
//! convolution with an implicit filter plus a per-channel skip `D`, `⊙ x0`,
//! output projection.

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;

use super::Init;
use super::fused::conv::causal_conv;
use super::hyena_filter::HyenaFilter;
use super::ops::{contiguous, linear, scale_last};
use super::short_conv::ShortConv;
use crate::genome;

/// Projection, tiling and short conv shared by the Hyena family:
/// `[batch, seq, d]` → three `[batch, seq, inner]` streams.
#[derive(Module, Debug)]
pub struct HyenaFrontEnd<B: Backend> {
    /// `Linear(d, 3·inner / groups)` with bias.
    pub in_proj: Linear<B>,
    /// Depthwise causal conv over `3·inner` channels.
    pub short: ShortConv<B>,
    /// Times the projection is tiled.
    pub groups: usize,
}

impl<B: Backend> HyenaFrontEnd<B> {
    /// A front end producing three streams of `inner` channels.
    pub fn new(
        d: usize,
        inner: usize,
        groups: usize,
        kernel: usize,
        init: &mut Init<'_, B>,
    ) -> Self {
        HyenaFrontEnd {
            in_proj: init.linear(d, 3 * inner / groups, true),
            short: ShortConv::new(3 * inner, kernel, init),
            groups,
        }
    }

    /// The streams `[x0, x1, v]`.
    ///
    /// # Shapes
    /// - x: `[batch, seq, d]` → 3 × `[batch, seq, inner]`
    pub fn forward(&self, x: Tensor<B, 3>) -> [Tensor<B, 3>; 3] {
        let u = linear(&self.in_proj, x);
        let u = if self.groups > 1 {
            Tensor::cat(vec![u; self.groups], 2)
        } else {
            u
        };
        let u = self.short.forward(u);
        let [batch, seq, width] = u.dims();
        let inner = width / 3;
        let part = |i: usize| {
            contiguous(
                u.clone()
                    .slice([0..batch, 0..seq, i * inner..(i + 1) * inner]),
            )
        };
        [part(0), part(1), part(2)]
    }
}

/// Hyena, order 2.
#[derive(Module, Debug)]
pub struct Hyena<B: Backend> {
    /// Projection, tiling, short conv.
    pub front: HyenaFrontEnd<B>,
    /// One implicit filter per inner channel.
    pub filter: HyenaFilter<B>,
    /// Skip term `D`, `[inner]`.
    pub skip: Param<Tensor<B, 1>>,
    /// `Linear(inner, d)` with bias.
    pub out: Linear<B>,
}

impl<B: Backend> Hyena<B> {
    /// Builds the layer for width `d` and sequences up to `seq_len`.
    pub fn new(spec: &genome::Hyena, d: usize, seq_len: usize, init: &mut Init<'_, B>) -> Self {
        let inner = spec.expansion * d;
        Hyena {
            front: HyenaFrontEnd::new(d, inner, spec.proj_groups, spec.short_conv, init),
            filter: HyenaFilter::new(inner, spec.filter_order, seq_len, init),
            skip: init.normal([inner], 1.0),
            out: init.linear(inner, d, true),
        }
    }

    /// # Shapes
    /// - x: `[batch, seq, d]` → `[batch, seq, d]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let seq = x.dims()[1];
        let [x0, x1, v] = self.front.forward(x);
        let v = v * x1;
        let y = long_conv_with_skip(v, self.filter.forward(seq), self.skip.val());
        linear(&self.out, y * x0)
    }
}

/// `causal_conv(v, h) + D ⊙ v`.
///
/// # Shapes
/// - v: `[batch, seq, channels]`; h: `[channels, seq]`; skip: `[channels]` → `[batch, seq, channels]`
pub fn long_conv_with_skip<B: Backend>(
    v: Tensor<B, 3>,
    h: Tensor<B, 2>,
    skip: Tensor<B, 1>,
) -> Tensor<B, 3> {
    causal_conv(v.clone(), h) + scale_last(v, skip)
}
