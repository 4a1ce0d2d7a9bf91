//! Hyena experts (mad-protocol §3.2 `hyena-experts`): Hyena of order 2 whose
//! inner channels (n_experts × expert_dim) are mixed by a router: the inner
//! output is read as `[expert_dim, n_experts]` (expert index fastest), weighted
//! by the router's soft top-k over experts, summed, and projected back.

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;

use super::Init;
use super::hyena::{HyenaFrontEnd, long_conv_with_skip};
use super::hyena_filter::HyenaFilter;
use super::ops::{fit, linear};
use super::routing::route;
use crate::genome::{self, Routing};

/// Hyena with routed experts.
#[derive(Module, Debug)]
pub struct HyenaExperts<B: Backend> {
    /// Projection to `3·n_experts·expert_dim` (not tiled), short conv.
    pub front: HyenaFrontEnd<B>,
    /// One implicit filter per inner channel.
    pub filter: HyenaFilter<B>,
    /// Skip term `D`, `[inner]`.
    pub skip: Param<Tensor<B, 1>>,
    /// `Linear(d, n_experts)` with bias, on the layer input.
    pub router: Linear<B>,
    /// `Linear(expert_dim, d)` with bias.
    pub out: Linear<B>,
    /// Number of experts.
    pub n_experts: usize,
    /// Experts kept by the router.
    pub top_k: usize,
}

impl<B: Backend> HyenaExperts<B> {
    /// Builds the layer for width `d` and sequences up to `seq_len`.
    pub fn new(
        spec: &genome::HyenaExperts,
        d: usize,
        seq_len: usize,
        init: &mut Init<'_, B>,
    ) -> Self {
        let inner = spec.n_experts * spec.expert_dim;
        HyenaExperts {
            front: HyenaFrontEnd::new(d, inner, 1, spec.short_conv, init),
            filter: HyenaFilter::new(inner, spec.filter_order, seq_len, init),
            skip: init.normal([inner], 1.0),
            router: init.linear(d, spec.n_experts, true),
            out: init.linear(spec.expert_dim, d, true),
            n_experts: spec.n_experts,
            top_k: spec.top_k,
        }
    }

    /// # Shapes
    /// - x: `[batch, seq, d]` → `[batch, seq, d]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, _] = x.dims();
        let weights = route(
            linear(&self.router, x.clone()),
            Routing::SoftTop2,
            self.top_k,
        );
        let [x0, x1, v] = self.front.forward(x);
        let y = long_conv_with_skip(v * x1, self.filter.forward(seq), self.skip.val()) * x0;
        let inner = y.dims()[2];
        let e = self.n_experts;
        let shape = [batch, seq, inner / e, e];
        let y = y.reshape(shape) * fit(weights.unsqueeze_dim::<4>(2), shape);
        linear(&self.out, y.sum_dim(3).reshape([batch, seq, inner / e]))
    }
}
