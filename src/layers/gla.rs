//! Gated linear attention (mad-protocol §3.2 `gated-linear-attention`,
//! `mh-gated-linear-attention`): `S_t = diag(exp(g_t)) S_{t−1} + k_tᵀ v_t`,
//! `o_t = (q_t / √dk) S_t`, with a low-rank data-dependent log-decay
//! `g = logsigmoid(W2 W1 x) / 16`, per-head RMSNorm on `o`, a SiLU output gate,
//! and an output projection.
//!
//! Chunked form: within a chunk the exact pairwise decays `exp(b_t − b_s)`
//! (`b` the in-chunk cumulative log-decay; every factor ≤ 1, so nothing
//! overflows however strong the decay), across chunks a carried state. The
//! layer runs the recurrence as a fused kernel on flex (`fused::gla`) and as
//! `mad-kernels`' on the CubeCL backends; the chunked form serves any other
//! backend, and [`recurrent`] is what the tests hold all three to.

use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::log_sigmoid;

use super::Init;
use super::fused::glu::silu_gate;
use super::linear_attention::{merge_heads, pad_seq, split_heads};
use super::norm::Norm;
use super::ops::{fit, linear};
use crate::genome;

/// Chunk length of the parallel form.
pub const CHUNK: usize = 16;
/// The reference's gate-logit normaliser.
const GATE_NORMALIZER: f64 = 16.0;

/// Gated linear attention.
#[derive(Module, Debug)]
pub struct GatedLinearAttention<B: Backend> {
    /// Query projection.
    pub q: Linear<B>,
    /// Key projection.
    pub k: Linear<B>,
    /// Value projection.
    pub v: Linear<B>,
    /// Output-gate projection.
    pub g: Linear<B>,
    /// Decay gate, first factor `[d, rank]`.
    pub gk_down: Linear<B>,
    /// Decay gate, second factor `[rank, d]` with bias.
    pub gk_up: Linear<B>,
    /// RMSNorm over each head's output (weights shared by heads).
    pub norm: Norm<B>,
    /// Output projection.
    pub out: Linear<B>,
    /// Number of heads.
    pub n_heads: usize,
}

/// Xavier-uniform with gain 2^−2.5 (the reference's GLA init).
fn xavier<B: Backend>(init: &mut Init<'_, B>, d_in: usize, d_out: usize, bias: bool) -> Linear<B> {
    let bound = 2f64.powf(-2.5) * (6.0 / (d_in + d_out) as f64).sqrt();
    let weight = init.uniform([d_in, d_out], bound);
    Linear {
        weight,
        bias: bias.then(|| init.constant([d_out], 0.0)),
    }
}

impl<B: Backend> GatedLinearAttention<B> {
    /// Builds the layer for width `d`.
    pub fn new(spec: &genome::GatedLinearAttention, d: usize, init: &mut Init<'_, B>) -> Self {
        let hd = d / spec.n_heads;
        GatedLinearAttention {
            q: xavier(init, d, d, false),
            k: xavier(init, d, d, false),
            v: xavier(init, d, d, false),
            g: xavier(init, d, d, false),
            gk_down: xavier(init, d, spec.gate_rank, false),
            gk_up: xavier(init, spec.gate_rank, d, true),
            norm: Norm::new(crate::genome::Norm::Rms, hd, init),
            out: xavier(init, d, d, false),
            n_heads: spec.n_heads,
        }
    }

    /// `(q / √dk, k, v, log-decay)`, each `[batch, heads, seq, head_dim]`.
    pub fn heads(&self, x: Tensor<B, 3>) -> [Tensor<B, 4>; 4] {
        let [_, _, d] = x.dims();
        let hd = d / self.n_heads;
        let split = |t: Tensor<B, 3>| split_heads(t, self.n_heads);
        let gk =
            log_sigmoid(linear(&self.gk_up, linear(&self.gk_down, x.clone()))) / GATE_NORMALIZER;
        [
            split(linear(&self.q, x.clone())) * (1.0 / (hd as f64).sqrt()),
            split(linear(&self.k, x.clone())),
            split(linear(&self.v, x)),
            split(gk),
        ]
    }

    /// # Shapes
    /// - x: `[batch, seq, d]` → `[batch, seq, d]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let gate = linear(&self.g, x.clone());
        let [q, k, v, gk] = self.heads(x);
        let o = self
            .norm
            .forward(super::fused::gla::gated_recurrence(q, k, v, gk));
        linear(&self.out, silu_gate(gate, merge_heads(o)))
    }
}

/// `[1, 1, 1, chunk, chunk, 1]`: 0 where `s ≤ t`, −∞ elsewhere.
fn pair_mask<B: Backend>(chunk: usize, device: &B::Device) -> Tensor<B, 6> {
    super::consts::cached("gla_pair_mask", &[chunk], device, || {
        pair_mask_build(chunk, device)
    })
}

fn pair_mask_build<B: Backend>(chunk: usize, device: &B::Device) -> Tensor<B, 6> {
    let v: Vec<f32> = (0..chunk * chunk)
        .map(|i| {
            if i % chunk <= i / chunk {
                0.0
            } else {
                f32::NEG_INFINITY
            }
        })
        .collect();
    Tensor::from_data(TensorData::new(v, [1, 1, 1, chunk, chunk, 1]), device)
}

/// The chunked parallel form of the gated recurrence.
///
/// # Shapes
/// - q, k, gk: `[batch, heads, seq, dk]`; v: `[batch, heads, seq, dv]` → `[batch, heads, seq, dv]`
pub fn chunked<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    gk: Tensor<B, 4>,
    chunk: usize,
) -> Tensor<B, 4> {
    let [b, h, seq, dk] = q.dims();
    let dv = v.dims()[3];
    let device = q.device();
    let n = seq.div_ceil(chunk);
    let c = chunk;
    let q = pad_seq(q, c).reshape([b, h, n, c, dk]);
    let k = pad_seq(k, c).reshape([b, h, n, c, dk]);
    let v = pad_seq(v, c).reshape([b, h, n, c, dv]);
    let cum = pad_seq(gk, c).reshape([b, h, n, c, dk]).cumsum(3); // b_t, inclusive
    // Intra-chunk: A[t, s] = Σ_k q[t,k] k[s,k] exp(b[t,k] − b[s,k]), s ≤ t.
    let pairs = [b, h, n, c, c, dk];
    let diff: Tensor<B, 6> = fit(cum.clone().unsqueeze_dim::<6>(4), pairs)
        - fit(cum.clone().unsqueeze_dim::<6>(3), pairs)
        + fit(pair_mask(c, &device), pairs);
    let a = (fit(q.clone().unsqueeze_dim::<6>(4), pairs)
        * diff.exp()
        * fit(k.clone().unsqueeze_dim::<6>(3), pairs))
    .sum_dim(5)
    .reshape([b, h, n, c, c]);
    let intra = a.matmul(v.clone());
    // Inter-chunk: carry S across chunks; every decay factor is ≤ 1.
    let last = cum.clone().slice([0..b, 0..h, 0..n, c - 1..c, 0..dk]); // [b, h, n, 1, dk]
    let k_hat = k * (fit(last.clone(), [b, h, n, c, dk]) - cum.clone()).exp();
    let local = k_hat.swap_dims(3, 4).matmul(v); // [b, h, n, dk, dv]
    let decay = last.exp().swap_dims(3, 4); // [b, h, n, dk, 1]
    let mut state = Tensor::<B, 4>::zeros([b, h, dk, dv], &device);
    let mut entering = Vec::with_capacity(n);
    for i in 0..n {
        entering.push(state.clone());
        let di = decay
            .clone()
            .slice([0..b, 0..h, i..i + 1, 0..dk, 0..1])
            .reshape([b, h, dk, 1]);
        let li = local
            .clone()
            .slice([0..b, 0..h, i..i + 1, 0..dk, 0..dv])
            .reshape([b, h, dk, dv]);
        state = state * fit(di, [b, h, dk, dv]) + li;
    }
    let entering: Tensor<B, 5> = Tensor::stack(entering, 2); // [b, h, n, dk, dv]
    let inter = (q * cum.exp()).matmul(entering);
    (intra + inter)
        .reshape([b, h, n * c, dv])
        .slice([0..b, 0..h, 0..seq, 0..dv])
}

/// The token-by-token recurrence the chunked form must equal.
///
/// # Shapes
/// - as [`chunked`]
pub fn recurrent<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    gk: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [b, h, seq, dk] = q.dims();
    let dv = v.dims()[3];
    let mut state = Tensor::<B, 4>::zeros([b, h, dk, dv], &q.device());
    let mut out = Vec::with_capacity(seq);
    for t in 0..seq {
        let at = |x: &Tensor<B, 4>, e| x.clone().slice([0..b, 0..h, t..t + 1, 0..e]);
        let decay = at(&gk, dk).exp().swap_dims(2, 3); // [b, h, dk, 1]
        state = state * decay + at(&k, dk).swap_dims(2, 3).matmul(at(&v, dv));
        out.push(at(&q, dk).matmul(state.clone()));
    }
    Tensor::cat(out, 2)
}
