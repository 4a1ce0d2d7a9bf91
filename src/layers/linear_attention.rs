//! Causal linear attention (mad-protocol §3.2 `linear-attention`,
//! `mh-linear-attention`): bias-free q, k, v, output projections; feature map
//! φ(x) = L1(x) ⊙ L2(x) per head (separate maps for q and k, shared across
//! heads); `y_t = Σ_{s≤t} (φq_t·φk_s) v_s / (φq_t · Σ_{s≤t} φk_s + ε)`.
//!
//! Computed in chunks: within a chunk the masked quadratic form, across
//! chunks a running `Σ φkᵀ v` state; [`recurrent`] is the token-by-token form
//! the tests compare against. On the CubeCL backends the numerator is
//! gated linear attention's recurrence kernel with no decay instead.

use burn::nn::Linear;
use burn::prelude::*;

use super::Init;
use super::ops::{contiguous, fit, linear};
use crate::genome;

/// The reference's ε in the normaliser.
const EPS: f64 = 1e-12;
/// Chunk length of the parallel form.
pub const CHUNK: usize = 64;

/// φ(x) = L1(x) ⊙ L2(x), both `Linear(head_dim, head_dim)` with bias.
#[derive(Module, Debug)]
pub struct FeatureMap<B: Backend> {
    /// L1.
    pub l1: Linear<B>,
    /// L2.
    pub l2: Linear<B>,
}

impl<B: Backend> FeatureMap<B> {
    fn new(hd: usize, init: &mut Init<'_, B>) -> FeatureMap<B> {
        FeatureMap {
            l1: init.linear(hd, hd, true),
            l2: init.linear(hd, hd, true),
        }
    }

    /// # Shapes
    /// - x: `[..., head_dim]` → same
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        linear(&self.l1, x.clone()) * linear(&self.l2, x)
    }
}

/// Linear attention, single- or multi-head.
#[derive(Module, Debug)]
pub struct LinearAttention<B: Backend> {
    /// Query projection `[d, d]`.
    pub q: Linear<B>,
    /// Key projection `[d, d]`.
    pub k: Linear<B>,
    /// Value projection `[d, d]`.
    pub v: Linear<B>,
    /// Output projection `[d, d]`.
    pub out: Linear<B>,
    /// φ for queries.
    pub phi_q: FeatureMap<B>,
    /// φ for keys.
    pub phi_k: FeatureMap<B>,
    /// Number of heads.
    pub n_heads: usize,
}

impl<B: Backend> LinearAttention<B> {
    /// Builds the layer for width `d`.
    pub fn new(spec: &genome::LinearAttention, d: usize, init: &mut Init<'_, B>) -> Self {
        let hd = d / spec.n_heads;
        LinearAttention {
            q: init.linear(d, d, false),
            k: init.linear(d, d, false),
            v: init.linear(d, d, false),
            out: init.linear(d, d, false),
            phi_q: FeatureMap::new(hd, init),
            phi_k: FeatureMap::new(hd, init),
            n_heads: spec.n_heads,
        }
    }

    /// The feature-mapped heads `(φq, φk, v)`, each `[batch, heads, seq, head_dim]`.
    pub fn heads(&self, x: Tensor<B, 3>) -> [Tensor<B, 4>; 3] {
        let split = |t: Tensor<B, 3>| split_heads(t, self.n_heads);
        [
            self.phi_q.forward(split(linear(&self.q, x.clone()))),
            self.phi_k.forward(split(linear(&self.k, x.clone()))),
            split(linear(&self.v, x)),
        ]
    }

    /// # Shapes
    /// - x: `[batch, seq, d]` → `[batch, seq, d]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [q, k, v] = self.heads(x);
        linear(&self.out, merge_heads(causal(q, k, v)))
    }
}

/// Causal linear attention, `y_t = φq_t S_t / (φq_t · z_t + ε)` with
/// `S_t = Σ_{s≤t} φk_sᵀ v_s`, `z_t = Σ_{s≤t} φk_s`: on a CubeCL backend the
/// numerator is `mad-kernels`' gated recurrence with zero log-decays (the
/// state in registers, no chunk tensors), elsewhere [`chunked`].
///
/// # Shapes
/// - as [`chunked`]
fn causal<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
    if super::fused::on_flex::<B>() {
        return chunked(q, k, v, CHUNK);
    }
    let norm = (q.clone() * k.clone().cumsum(2)).sum_dim(3) + EPS;
    let no_decay = Tensor::zeros(k.dims(), &k.device());
    match super::cube::gated_recurrence(q, k, v, no_decay) {
        Ok(y) => {
            let dims = y.dims();
            y / fit(norm, dims)
        }
        Err((q, k, v, _)) => chunked(q, k, v, CHUNK),
    }
}

/// `[batch, seq, d]` → `[batch, heads, seq, d / heads]`.
pub fn split_heads<B: Backend>(x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [batch, seq, d] = x.dims();
    contiguous(x.reshape([batch, seq, heads, d / heads]).swap_dims(1, 2))
}

/// `[batch, heads, seq, hd]` → `[batch, seq, heads · hd]`.
pub fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [batch, heads, seq, hd] = x.dims();
    x.swap_dims(1, 2).reshape([batch, seq, heads * hd])
}

/// Pads dim 2 with zeros to a multiple of `chunk`. Zeros at the end never
/// reach earlier outputs of a causal operator.
pub fn pad_seq<B: Backend>(x: Tensor<B, 4>, chunk: usize) -> Tensor<B, 4> {
    let [b, h, seq, e] = x.dims();
    let padded = seq.div_ceil(chunk) * chunk;
    if padded == seq {
        return x;
    }
    let zeros = Tensor::zeros([b, h, padded - seq, e], &x.device());
    Tensor::cat(vec![x, zeros], 2)
}

/// The chunked parallel form.
///
/// # Shapes
/// - q, k: `[batch, heads, seq, dk]`; v: `[batch, heads, seq, dv]` → `[batch, heads, seq, dv]`
pub fn chunked<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    chunk: usize,
) -> Tensor<B, 4> {
    let [b, h, seq, dk] = q.dims();
    let dv = v.dims()[3];
    let norm = (q.clone() * k.clone().cumsum(2)).sum_dim(3) + EPS; // [b, h, seq, 1]
    let y = if seq <= chunk {
        q.matmul(k.swap_dims(2, 3)).tril(0).matmul(v)
    } else {
        let n = seq.div_ceil(chunk);
        let q = contiguous(pad_seq(q, chunk)).reshape([b, h, n, chunk, dk]);
        let k = contiguous(pad_seq(k, chunk)).reshape([b, h, n, chunk, dk]);
        let v = contiguous(pad_seq(v, chunk)).reshape([b, h, n, chunk, dv]);
        let intra = q
            .clone()
            .matmul(k.clone().swap_dims(3, 4))
            .tril(0)
            .matmul(v.clone());
        let kv = k.swap_dims(3, 4).matmul(v); // [b, h, n, dk, dv]
        let before = kv.clone().cumsum(2) - kv; // state entering each chunk
        let inter = q.matmul(before);
        (intra + inter)
            .reshape([b, h, n * chunk, dv])
            .slice([0..b, 0..h, 0..seq, 0..dv])
    };
    let dims = y.dims();
    y / fit(norm, dims)
}

/// The token-by-token recurrent form: state `S += φk_tᵀ v_t`, `z += φk_t`.
///
/// # Shapes
/// - as [`chunked`]
pub fn recurrent<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, h, seq, dk] = q.dims();
    let dv = v.dims()[3];
    let device = q.device();
    let mut state = Tensor::<B, 4>::zeros([b, h, dk, dv], &device);
    let mut z = Tensor::<B, 4>::zeros([b, h, 1, dk], &device);
    let mut out = Vec::with_capacity(seq);
    for t in 0..seq {
        let at = |x: &Tensor<B, 4>, e| x.clone().slice([0..b, 0..h, t..t + 1, 0..e]);
        let (qt, kt, vt) = (at(&q, dk), at(&k, dk), at(&v, dv));
        state = state + kt.clone().swap_dims(2, 3).matmul(vt);
        z = z + kt;
        let num = qt.clone().matmul(state.clone());
        let den = (qt * z.clone()).sum_dim(3) + EPS;
        out.push(num / den);
    }
    Tensor::cat(out, 2)
}
