//! Mamba-2 (Dao & Gu 2024, "Transformers are SSMs"; `search_spaces/
//! README.md` `mamba2`), a fused block: one bias-free projection to the
//! gate `z`, the SSM input `x`, the shared `B` and `C` (one group) and one
//! `Δ` per head; a causal depthwise convolution with bias and SiLU over
//! `x, B, C`; per head `h` the scan
//! `H_t = exp(Δ_t A_h) H_{t−1} + Δ_t x_t B_tᵀ`, `y_t = H_t C_t + D_h x_t`
//! with a scalar `A_h` (the state transition is `A_h` times the identity);
//! then the gated RMSNorm `norm(y ⊙ SiLU(z))` (norm after the gate, over
//! all of `d_inner`) and a bias-free output projection.
//!
//! The scan is a fused kernel on flex ([`super::fused::ssd`]: one decay
//! per head and step); elsewhere Mamba-1's selective scan (`mad-kernels`'
//! on CubeCL, [`super::mamba::chunked_scan`] otherwise) with each head's
//! `Δ` and `A` given to its `head_dim` channels: the recurrence is the
//! same, channel by channel. The chunked SSD form (the scan as block
//! matrix products) is what a GPU wants at long sequences; it is not built
//! here (the selective scan's GPU kernel runs the recurrence).
//! [`recurrent`] is the token-by-token definition, per head and with a
//! `[head_dim, d_state]` state, that the tests hold the layer to.

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::silu;

use super::Init;
use super::fused::glu::silu_gate;
use super::mamba::softplus;
use super::ops::{contiguous, fit, linear, scale_last};
use super::short_conv::ShortConv;
use crate::genome;

/// ε of the gated RMSNorm.
const EPS: f64 = 1e-5;

/// Mamba-2.
#[derive(Module, Debug)]
pub struct Mamba2<B: Backend> {
    /// `Linear(d, 2·d_inner + 2·d_state + heads)`, no bias: z, x, B, C, Δ.
    pub in_proj: Linear<B>,
    /// Depthwise causal conv with bias over `d_inner + 2·d_state` channels (x, B, C).
    pub conv: ShortConv<B>,
    /// Δ bias per head, `[heads]`: softplus of it log-uniform in [1e-3, 0.1].
    pub dt_bias: Param<Tensor<B, 1>>,
    /// `log(−A)` per head, `[heads]`, `A` uniform in [1, 16] at init.
    pub a_log: Param<Tensor<B, 1>>,
    /// Skip `D` per head, `[heads]`, init 1.
    pub skip: Param<Tensor<B, 1>>,
    /// Scale of the gated RMSNorm, `[d_inner]`, init 1.
    pub norm: Param<Tensor<B, 1>>,
    /// `Linear(d_inner, d)`, no bias.
    pub out_proj: Linear<B>,
    /// SSM state per channel.
    pub d_state: usize,
    /// Channels per head.
    pub head_dim: usize,
}

impl<B: Backend> Mamba2<B> {
    /// Builds the layer for width `d`.
    pub fn new(spec: &genome::Mamba2, d: usize, init: &mut Init<'_, B>) -> Self {
        use rand::RngExt;
        let di = spec.expand * d;
        let n = spec.d_state;
        let heads = di / spec.head_dim;
        let in_proj = init.linear(d, 2 * di + 2 * n + heads, false);
        let conv = ShortConv::new(di + 2 * n, spec.d_conv, init);
        // As Mamba-1's Δ bias: softplus(bias) log-uniform in [1e-3, 0.1], floor 1e-4.
        let (lo, hi) = (1e-3f64.ln(), 0.1f64.ln());
        let dt_bias = init.param([heads], |rng, _| {
            let dt = (lo + (hi - lo) * rng.random::<f64>()).exp().max(1e-4);
            (dt + (-(-dt).exp_m1()).ln()) as f32
        });
        let a_log = init.param([heads], |rng, _| {
            (1.0 + 15.0 * rng.random::<f64>()).ln() as f32
        });
        Mamba2 {
            in_proj,
            conv,
            dt_bias,
            a_log,
            skip: init.constant([heads], 1.0),
            norm: init.constant([di], 1.0),
            out_proj: init.linear(di, d, false),
            d_state: n,
            head_dim: spec.head_dim,
        }
    }

    /// The scan's per-head inputs and the gate.
    ///
    /// # Shapes
    /// - x: `[batch, seq, d]` → x, z: `[batch, seq, d_inner]`; Δ:
    ///   `[batch, seq, heads]`; A: `[heads]`; B, C: `[batch, seq, d_state]`
    pub fn inputs(&self, x: Tensor<B, 3>) -> HeadInputs<B> {
        let [batch, seq, _] = x.dims();
        let p = linear(&self.in_proj, x);
        let heads = self.a_log.dims()[0];
        let n = self.d_state;
        let di = heads * self.head_dim;
        let at = |t: &Tensor<B, 3>, from: usize, len: usize| {
            contiguous(t.clone().slice([0..batch, 0..seq, from..from + len]))
        };
        let z = at(&p, 0, di);
        let xbc = silu(self.conv.forward(at(&p, di, di + 2 * n)));
        let dt_raw = at(&p, 2 * di + 2 * n, heads);
        let dt = softplus(
            dt_raw
                + fit(
                    self.dt_bias.val().reshape([1, 1, heads]),
                    [batch, seq, heads],
                ),
        );
        HeadInputs {
            x: at(&xbc, 0, di),
            b: at(&xbc, di, n),
            c: at(&xbc, di + n, n),
            dt,
            a: self.a_log.val().exp().neg(),
            z,
        }
    }

    /// # Shapes
    /// - x: `[batch, seq, d]` → `[batch, seq, d]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let s = self.inputs(x);
        let heads = s.a.dims()[0];
        let p = self.head_dim;
        let skip = fit(self.skip.val().reshape([heads, 1]), [heads, p]).reshape([heads * p]);
        let y = self.scan(&s) + scale_last(s.x, skip);
        linear(&self.out_proj, self.gated_norm(y, s.z))
    }

    /// The SSM without the `D` skip ([`super::fused::ssd::head_scan`]).
    ///
    /// # Shapes
    /// - as [`Mamba2::inputs`] → `[batch, seq, d_inner]`
    pub fn scan(&self, s: &HeadInputs<B>) -> Tensor<B, 3> {
        super::fused::ssd::head_scan(
            s.x.clone(),
            s.dt.clone(),
            s.a.clone(),
            s.b.clone(),
            s.c.clone(),
        )
    }

    /// `RMSNorm(y ⊙ SiLU(z)) · scale` over the last dim.
    ///
    /// # Shapes
    /// - y, z: `[batch, seq, d_inner]` → `[batch, seq, d_inner]`
    fn gated_norm(&self, y: Tensor<B, 3>, z: Tensor<B, 3>) -> Tensor<B, 3> {
        let g = silu_gate(z, y);
        let dims = g.dims();
        let inv = (g.clone().square().mean_dim(2) + EPS).sqrt().recip();
        scale_last(g * fit(inv, dims), self.norm.val())
    }
}

/// What Mamba-2's scan consumes, per head.
pub struct HeadInputs<B: Backend> {
    /// Input after conv and SiLU, `[batch, seq, d_inner]`.
    pub x: Tensor<B, 3>,
    /// Δ per head, `[batch, seq, heads]`.
    pub dt: Tensor<B, 3>,
    /// A per head (negative), `[heads]`.
    pub a: Tensor<B, 1>,
    /// B, `[batch, seq, d_state]`.
    pub b: Tensor<B, 3>,
    /// C, `[batch, seq, d_state]`.
    pub c: Tensor<B, 3>,
    /// Gate, `[batch, seq, d_inner]`.
    pub z: Tensor<B, 3>,
}

/// The SSM by its definition, token by token and head by head, with a
/// `[head_dim, d_state]` state per head (no `D` skip):
/// `H ← exp(Δ_t A_h) H + Δ_t x_t B_tᵀ`, `y_t = H C_t`.
///
/// # Shapes
/// - x: `[batch, seq, heads · head_dim]`; dt: `[batch, seq, heads]`;
///   a: `[heads]`; b, c: `[batch, seq, d_state]` → `[batch, seq, heads · head_dim]`
pub fn recurrent<B: Backend>(
    x: Tensor<B, 3>,
    dt: Tensor<B, 3>,
    a: Tensor<B, 1>,
    b: Tensor<B, 3>,
    c: Tensor<B, 3>,
) -> Tensor<B, 3> {
    let [batch, seq, di] = x.dims();
    let heads = a.dims()[0];
    let p = di / heads;
    let n = b.dims()[2];
    let mut state = Tensor::<B, 4>::zeros([batch, heads, p, n], &x.device());
    let mut out = Vec::with_capacity(seq);
    let a = a.reshape([1, heads, 1, 1]);
    for t in 0..seq {
        let dt_t = dt
            .clone()
            .slice([0..batch, t..t + 1, 0..heads])
            .reshape([batch, heads, 1, 1]);
        let x_t = x
            .clone()
            .slice([0..batch, t..t + 1, 0..di])
            .reshape([batch, heads, p, 1]);
        let b_t = b
            .clone()
            .slice([0..batch, t..t + 1, 0..n])
            .reshape([batch, 1, 1, n])
            .repeat_dim(1, heads);
        let c_t = c
            .clone()
            .slice([0..batch, t..t + 1, 0..n])
            .reshape([batch, 1, n, 1]);
        let decay = (dt_t.clone() * a.clone().repeat_dim(0, batch)).exp();
        let decay = decay.repeat_dim(2, p).repeat_dim(3, n);
        let scaled = x_t * dt_t.repeat_dim(2, p);
        state = state * decay + scaled.matmul(b_t);
        out.push(
            state
                .clone()
                .matmul(c_t.repeat_dim(1, heads))
                .reshape([batch, 1, di]),
        );
    }
    Tensor::cat(out, 1)
}
