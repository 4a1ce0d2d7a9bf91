//! Channel mixers (mad-protocol §3.1): SwiGLU, MLP, and the dense-computed
//! mixture of experts `moe-mlp`.

use burn::nn::Linear;
use burn::prelude::*;

use super::Init;
use super::fused::glu::silu_gate;
use super::ops::{fit, gelu_tanh, linear};
use super::routing::route;
use crate::genome::{self, Routing};

/// `W3 (SiLU(W1 x) ⊙ W2 x)`, bias-free.
#[derive(Module, Debug)]
pub struct SwiGlu<B: Backend> {
    /// `[d, inner]`.
    pub w1: Linear<B>,
    /// `[d, inner]`.
    pub w2: Linear<B>,
    /// `[inner, d]`.
    pub w3: Linear<B>,
}

impl<B: Backend> SwiGlu<B> {
    /// Builds the layer for width `d`.
    pub fn new(spec: &genome::SwiGlu, d: usize, init: &mut Init<'_, B>) -> Self {
        let inner = spec.inner.unwrap_or(genome::swiglu_default_inner(d));
        SwiGlu {
            w1: init.linear(d, inner, false),
            w2: init.linear(d, inner, false),
            w3: init.linear(inner, d, false),
        }
    }

    /// # Shapes
    /// - x: `[batch, seq, d]` → `[batch, seq, d]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        linear(
            &self.w3,
            silu_gate(linear(&self.w1, x.clone()), linear(&self.w2, x)),
        )
    }
}

/// `W2 GELU_tanh(W1 x)`, bias-free.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `[d, expansion·d]`.
    pub w1: Linear<B>,
    /// `[expansion·d, d]`.
    pub w2: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    /// Builds the layer for width `d`.
    pub fn new(spec: &genome::Mlp, d: usize, init: &mut Init<'_, B>) -> Self {
        let inner = spec.expansion * d;
        Mlp {
            w1: init.linear(d, inner, false),
            w2: init.linear(inner, d, false),
        }
    }

    /// # Shapes
    /// - x: `[batch, seq, d]` → `[batch, seq, d]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        linear(&self.w2, gelu_tanh(linear(&self.w1, x)))
    }
}

/// The reference's MoE, computed densely: `h = u1(x) ⊙ GELU_tanh(u2(x))`
/// (`n_experts·expert_dim` wide), `z = W h` read as `[d, n_experts]` (expert
/// index fastest), output `Σ_e w_e z[:, e]` with router weights `w`.
#[derive(Module, Debug)]
pub struct MoeMlp<B: Backend> {
    /// `[d, n·e]`, no bias.
    pub u1: Linear<B>,
    /// `[d, n·e]`, no bias.
    pub u2: Linear<B>,
    /// `[n·e, d·n]`, no bias.
    pub experts: Linear<B>,
    /// `[d, n]` with bias.
    pub router: Linear<B>,
    /// Number of experts.
    pub n_experts: usize,
    /// Experts kept per token.
    pub top_k: usize,
    /// `true` for sparse top-k, `false` for the reference's soft top-2.
    pub sparse: bool,
}

impl<B: Backend> MoeMlp<B> {
    /// Builds the layer for width `d`.
    pub fn new(spec: &genome::MoeMlp, d: usize, init: &mut Init<'_, B>) -> Self {
        let inner = spec.n_experts * spec.expert_dim;
        MoeMlp {
            u1: init.linear(d, inner, false),
            u2: init.linear(d, inner, false),
            experts: init.linear(inner, d * spec.n_experts, false),
            router: init.linear(d, spec.n_experts, true),
            n_experts: spec.n_experts,
            top_k: spec.top_k,
            sparse: spec.routing == Routing::TopK,
        }
    }

    /// # Shapes
    /// - x: `[batch, seq, d]` → `[batch, seq, d]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, d] = x.dims();
        let routing = if self.sparse {
            Routing::TopK
        } else {
            Routing::SoftTop2
        };
        let w = route(linear(&self.router, x.clone()), routing, self.top_k);
        let h = linear(&self.u1, x.clone()) * gelu_tanh(linear(&self.u2, x));
        let shape = [batch, seq, d, self.n_experts];
        let z = linear(&self.experts, h).reshape(shape);
        (z * fit(w.unsqueeze_dim::<4>(2), shape))
            .sum_dim(3)
            .reshape([batch, seq, d])
    }
}
