//! Gated DeltaNet (Yang, Kautz & Hatamizadeh 2025, the linear layer of
//! Qwen3-Next; `search_spaces/README.md` `gated-deltanet`): per head the
//! gated delta rule
//! `S_t = α_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ`, `o_t = S_tᵀ q_t`
//! with a state `S` of `[dk, dv]`, a scalar decay `α_t = exp(g_t)`,
//! `g_t = −exp(A_log) · softplus(a_t + dt_bias)` and a write strength
//! `β_t = σ(b_t)` per head and token; q, k, v through a causal depthwise
//! convolution and SiLU, q and k L2-normalised (q scaled by `dk^−½`); the
//! output RMS-normalised per head and gated by `SiLU(W_g x)`.
//!
//! Three forms of the rule: [`recurrent`] (token by token, what the tests
//! hold the others to), the chunked WY form [`chunked`] (within a chunk the
//! rule's pseudo-values come from one triangular solve, `(I + L)⁻¹` by
//! forward substitution, and the state is carried across chunks: matrix
//! products, what a GPU runs), and on flex a fused kernel
//! ([`super::fused::delta`]) running the recurrence with its own backward.

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::{sigmoid, silu};

use super::Init;
use super::fused::glu::silu_gate;
use super::linear_attention::pad_seq;
use super::mamba::softplus;
use super::ops::{contiguous, fit, linear, scale_last};
use crate::genome;

/// Chunk length of the WY form.
pub const CHUNK: usize = 16;
/// ε of the L2 norm of q and k.
const L2_EPS: f64 = 1e-6;
/// ε of the output RMSNorm.
const NORM_EPS: f64 = 1e-5;

/// Gated DeltaNet.
#[derive(Module, Debug)]
pub struct GatedDeltaNet<B: Backend> {
    /// `Linear(d, 2·d + d_v)`, no bias: q, k (`d` each), v (`d_v = expand_v · d`).
    pub qkv: Linear<B>,
    /// Taps of the causal depthwise conv over q, k, v, `[kernel, 2·d + d_v]`,
    /// no bias (PyTorch's `Conv1d` init U(±1/√kernel)).
    pub conv: Param<Tensor<B, 2>>,
    /// `Linear(d, heads)`, no bias: the decay's input `a`.
    pub a: Linear<B>,
    /// `Linear(d, heads)`, no bias: β's logit.
    pub beta: Linear<B>,
    /// `log A` per head, `A` uniform in (0, 16] at init.
    pub a_log: Param<Tensor<B, 1>>,
    /// Bias of the decay's softplus per head: softplus of it log-uniform in [1e-3, 0.1].
    pub dt_bias: Param<Tensor<B, 1>>,
    /// `Linear(d, d_v)`, no bias: the output gate.
    pub gate: Linear<B>,
    /// Scale of the per-head RMSNorm, `[dv]` shared by the heads, init 1.
    pub norm: Param<Tensor<B, 1>>,
    /// `Linear(d_v, d)`, no bias.
    pub out: Linear<B>,
    /// Number of heads.
    pub n_heads: usize,
}

impl<B: Backend> GatedDeltaNet<B> {
    /// Builds the layer for width `d`.
    pub fn new(spec: &genome::GatedDeltaNet, d: usize, init: &mut Init<'_, B>) -> Self {
        use rand::RngExt;
        let (h, dv_all) = (spec.n_heads, spec.expand_v * d);
        let kernel = spec.short_conv;
        let qkv = init.linear(d, 2 * d + dv_all, false);
        let conv = init.uniform([kernel, 2 * d + dv_all], 1.0 / (kernel as f64).sqrt());
        let a = init.linear(d, h, false);
        let beta = init.linear(d, h, false);
        let a_log = init.param([h], |rng, _| {
            (16.0 * (1.0 - rng.random::<f64>())).ln() as f32
        });
        let (lo, hi) = (1e-3f64.ln(), 0.1f64.ln());
        let dt_bias = init.param([h], |rng, _| {
            let dt = (lo + (hi - lo) * rng.random::<f64>()).exp().max(1e-4);
            (dt + (-(-dt).exp_m1()).ln()) as f32
        });
        GatedDeltaNet {
            qkv,
            conv,
            a,
            beta,
            a_log,
            dt_bias,
            gate: init.linear(d, dv_all, false),
            norm: init.constant([dv_all / h], 1.0),
            out: init.linear(dv_all, d, false),
            n_heads: h,
        }
    }

    /// The rule's operands, token-major: q (L2-normalised per head, scaled)
    /// and k (L2-normalised per head), `[batch, seq, heads·dk]`; v, `[batch,
    /// seq, heads·dv]`; the log-decay g and β, `[batch, seq, heads]`.
    pub fn operands(&self, x: Tensor<B, 3>) -> [Tensor<B, 3>; 5] {
        let [batch, seq, d] = x.dims();
        let h = self.n_heads;
        let width = self.qkv.weight.dims()[1];
        let dev = x.device();
        // Bias-free: a zero bias built once per (width, device).
        let zero =
            super::consts::cached("zero_bias", &[width], &dev, || Tensor::zeros([width], &dev));
        let p = silu(super::fused::short_conv::short_conv(
            linear(&self.qkv, x.clone()),
            self.conv.val(),
            zero,
        ));
        let part = |from: usize, len: usize| {
            contiguous(p.clone().slice([0..batch, 0..seq, from..from + len]))
        };
        let dk = d / h;
        // Per head: the last dim split in `h` groups of `dk`, a free reshape.
        let unit =
            |t: Tensor<B, 3>| l2_normalize(t.reshape([batch, seq, h, dk])).reshape([batch, seq, d]);
        let q = unit(part(0, d)) * (1.0 / (dk as f64).sqrt());
        let k = unit(part(d, d));
        let v = part(2 * d, width - 2 * d);
        let bias = fit(self.dt_bias.val().reshape([1, 1, h]), [batch, seq, h]);
        let rate = softplus(linear(&self.a, x.clone()) + bias);
        let a = fit(self.a_log.val().exp().reshape([1, 1, h]), [batch, seq, h]);
        let g = -(rate * a);
        let beta = sigmoid(linear(&self.beta, x));
        [q, k, v, g, beta]
    }

    /// # Shapes
    /// - x: `[batch, seq, d]` → `[batch, seq, d]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let gate = linear(&self.gate, x.clone());
        let [q, k, v, g, beta] = self.operands(x);
        let h = self.n_heads;
        let o = super::fused::delta::delta_rule_tokens(q, k, v, g, beta, h);
        let [batch, seq, width] = o.dims();
        // The per-head RMSNorm over groups of `dv` of the last dim.
        let o = o.reshape([batch, seq, h, width / h]);
        let dims = o.dims();
        let inv = (o.clone().square().mean_dim(3) + NORM_EPS).sqrt().recip();
        let o = scale_last(o * fit(inv, dims), self.norm.val());
        linear(&self.out, silu_gate(gate, o.reshape([batch, seq, width])))
    }
}

/// `x / √(Σ x² + ε)` over the last dim.
///
/// # Shapes
/// - x: `[..., e]` (the layer's `[batch, seq, heads, dk]`) → same
pub fn l2_normalize<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let dims = x.dims();
    let inv = (x.clone().square().sum_dim(3) + L2_EPS).sqrt().recip();
    x * fit(inv, dims)
}

/// The gated delta rule token by token, as defined:
/// `Ŝ = α_t S`, `S_t = Ŝ + k_t (β_t (v_t − Ŝᵀ k_t))ᵀ`, `o_t = S_tᵀ q_t`.
///
/// # Shapes
/// - q, k: `[batch, heads, seq, dk]`; v: `[batch, heads, seq, dv]`;
///   g, beta: `[batch, heads, seq, 1]` → `[batch, heads, seq, dv]`
pub fn recurrent<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    g: Tensor<B, 4>,
    beta: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [b, h, seq, dk] = q.dims();
    let dv = v.dims()[3];
    let mut s = Tensor::<B, 4>::zeros([b, h, dk, dv], &q.device());
    let mut out = Vec::with_capacity(seq);
    for t in 0..seq {
        let at = |x: &Tensor<B, 4>, e: usize| x.clone().slice([0..b, 0..h, t..t + 1, 0..e]);
        let (qt, kt, vt) = (at(&q, dk), at(&k, dk), at(&v, dv));
        let (alpha, bt) = (at(&g, 1).exp(), at(&beta, 1));
        let s_hat = s * fit(alpha, [b, h, dk, dv]);
        let u = kt.clone().matmul(s_hat.clone()); // [b, h, 1, dv]
        let w = (vt - u) * fit(bt, [b, h, 1, dv]);
        s = s_hat + kt.swap_dims(2, 3).matmul(w);
        out.push(qt.matmul(s.clone()));
    }
    Tensor::cat(out, 2)
}

/// `[1, 1, 1, c, c]` masks: 1 where `i < t` (strict) or `i ≤ t`, else 0.
fn lower<B: Backend>(c: usize, strict: bool, device: &B::Device) -> Tensor<B, 5> {
    let key = if strict {
        "delta_strict"
    } else {
        "delta_lower"
    };
    super::consts::cached(key, &[c], device, || {
        let v: Vec<f32> = (0..c * c)
            .map(|i| {
                let (t, s) = (i / c, i % c);
                f32::from(if strict { s < t } else { s <= t })
            })
            .collect();
        Tensor::<B, 1>::from_floats(v.as_slice(), device).reshape([1, 1, 1, c, c])
    })
}

/// `(I + L)⁻¹` for strictly lower-triangular `L`, by forward substitution:
/// row t of the inverse is `e_t − L[t, :t] T[:t, :]`. (A Neumann product
/// `Π (I + (−L)^(2^j))` reaches the same by cancellation, and loses all
/// precision in f32 when keys repeat with β ≈ 1 and no decay: its terms
/// grow like binomial coefficients.)
///
/// # Shapes
/// - l: `[batch, heads, chunks, c, c]` → same
fn unit_lower_inverse<B: Backend>(l: Tensor<B, 5>) -> Tensor<B, 5> {
    let [b, h, n, c, _] = l.dims();
    let eye = Tensor::<B, 2>::eye(c, &l.device()).reshape([1, 1, 1, c, c]);
    let mut rows: Vec<Tensor<B, 5>> = Vec::with_capacity(c);
    for t in 0..c {
        let e = fit(
            eye.clone().slice([0..1, 0..1, 0..1, t..t + 1, 0..c]),
            [b, h, n, 1, c],
        );
        let row = if t == 0 {
            e
        } else {
            let before = Tensor::cat(rows.clone(), 3); // [b, h, n, t, c]
            e - l
                .clone()
                .slice([0..b, 0..h, 0..n, t..t + 1, 0..t])
                .matmul(before)
        };
        rows.push(row);
    }
    Tensor::cat(rows, 3)
}

/// The chunked WY form of the gated delta rule. Within a chunk (in-chunk
/// cumulative log-decay `γ`, `Γ = exp(γ)`, entering state `S₀`), the state
/// after step t is `Γ_t S₀ + Σ_{i≤t} (Γ_t/Γ_i) k_i w_iᵀ` with pseudo-values
/// `W = T (diag(β) V − diag(βΓ) K S₀)`, `T = (I + L)⁻¹`,
/// `L_{ti} = β_t (Γ_t/Γ_i) k_t·k_i` for `i < t` ([`unit_lower_inverse`]),
/// so the form is matrix products and one triangular solve per chunk.
/// Every decay ratio is `exp` of a difference `≤ 0`.
///
/// # Shapes
/// - as [`recurrent`]
pub fn chunked<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    g: Tensor<B, 4>,
    beta: Tensor<B, 4>,
    chunk: usize,
) -> Tensor<B, 4> {
    let [b, h, seq, dk] = q.dims();
    let dv = v.dims()[3];
    let device = q.device();
    let c = chunk.min(seq).max(1);
    let n = seq.div_ceil(c);
    // Copied first where strided (free where not): Burn 0.21's cubecl
    // backends split a strided view with a unit dim (g, β) wrongly.
    let blocks = |t: Tensor<B, 4>, e: usize| contiguous(pad_seq(t, c)).reshape([b, h, n, c, e]);
    let (q, k, v) = (blocks(q, dk), blocks(k, dk), blocks(v, dv));
    // Padding: g = 0 (no decay), β = 0 (no write): the state passes unchanged.
    let (g, beta) = (blocks(g, 1), blocks(beta, 1));
    let gamma = g.cumsum(3); // [b, h, n, c, 1], inclusive
    let pairs = [b, h, n, c, c];
    let diff = fit(gamma.clone(), pairs) - fit(gamma.clone().swap_dims(3, 4), pairs);
    let below = fit(lower::<B>(c, false, &device), pairs);
    // exp(γ_t − γ_i) where i ≤ t, 0 above (masked before the exp: the
    // differences above the diagonal are positive).
    let decay = (diff.mask_fill(below.clone().equal_elem(0.0), -1e30)).exp() * below;
    let strict = fit(lower::<B>(c, true, &device), pairs);
    let kk = k.clone().matmul(k.clone().swap_dims(3, 4));
    let l = kk * decay.clone() * strict * fit(beta.clone(), pairs);
    let t = unit_lower_inverse(l);
    let big_gamma = gamma.clone().exp();
    let u = t.clone().matmul(v * fit(beta.clone(), [b, h, n, c, dv]));
    let wk = t.matmul(k.clone() * fit(beta * big_gamma.clone(), [b, h, n, c, dk]));
    let qk = q.clone().matmul(k.clone().swap_dims(3, 4)) * decay;
    let q_gamma = q * fit(big_gamma, [b, h, n, c, dk]);
    let last = gamma.clone().slice([0..b, 0..h, 0..n, c - 1..c, 0..1]);
    let k_to_end = k * fit(
        (fit(last.clone(), [b, h, n, c, 1]) - gamma).exp(),
        [b, h, n, c, dk],
    );
    let chunk_decay = last.exp(); // [b, h, n, 1, 1]
    let mut s = Tensor::<B, 4>::zeros([b, h, dk, dv], &device);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let at = |t: &Tensor<B, 5>, r: usize, e: usize| {
            t.clone()
                .slice([0..b, 0..h, i..i + 1, 0..r, 0..e])
                .reshape([b, h, r, e])
        };
        let w = at(&u, c, dv) - at(&wk, c, dk).matmul(s.clone());
        out.push(at(&q_gamma, c, dk).matmul(s.clone()) + at(&qk, c, c).matmul(w.clone()));
        let carry = fit(at(&chunk_decay, 1, 1), [b, h, dk, dv]);
        s = s * carry + at(&k_to_end, c, dk).swap_dims(2, 3).matmul(w);
    }
    Tensor::cat(out, 2).slice([0..b, 0..h, 0..seq, 0..dv])
}
