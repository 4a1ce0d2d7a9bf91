//! Multi-head (state-expanded) Hyena (mad-protocol §3.2 `mh-hyena`): per head
//! the outer products `k_s v_sᵀ` (head_dim²) are long-convolved along time with
//! the head's implicit filter `h` (plus skip `D`) and contracted with `q`:
//! `y_t = Σ_a q_t[a] · (h ∗ k[a] vᵀ)_t`. Paper configuration: 16 heads ×
//! head dim 8, filter order 2.
//!
//! Since one filter serves all head_dim² entries of a head, the contraction
//! is computed as `y = (T ⊙ Q Kᵀ) V` with `T[t, s] = h[t − s] + D·[t = s]`
//! the head's causal Toeplitz matrix: exactly the same sum without
//! materialising the `[seq, hd, hd]` state, `2·seq²·d` multiply-adds per
//! sequence. On the CPU backend the mix is one fused kernel
//! ([`toeplitz_mix`]); on a CubeCL backend it is `mad-kernels`' kernel,
//! given each head's taps ([`head_taps`]); on any other backend Burn ops
//! compute it, long sequences query block by query block ([`mix`]).

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::TensorData;

use super::Init;
use super::fused::toeplitz_mix;
use super::hyena::HyenaFrontEnd;
use super::hyena_filter::HyenaFilter;
use super::long_conv::{BLOCK, TOEPLITZ_MAX, toeplitz};
use super::ops::{fit, linear};
use crate::genome;

/// Multi-head Hyena.
#[derive(Module, Debug)]
pub struct MhHyena<B: Backend> {
    /// Projection (inner = d), tiling, short conv.
    pub front: HyenaFrontEnd<B>,
    /// One implicit filter per head.
    pub filter: HyenaFilter<B>,
    /// Skip term `D`, one per head.
    pub skip: Param<Tensor<B, 1>>,
    /// `Linear(d, d)` with bias.
    pub out: Linear<B>,
    /// Number of heads.
    pub n_heads: usize,
}

impl<B: Backend> MhHyena<B> {
    /// Builds the layer for width `d` and sequences up to `seq_len`.
    pub fn new(spec: &genome::MhHyena, d: usize, seq_len: usize, init: &mut Init<'_, B>) -> Self {
        MhHyena {
            front: HyenaFrontEnd::new(d, d, spec.proj_groups, spec.short_conv, init),
            filter: HyenaFilter::new(spec.n_heads, spec.filter_order, seq_len, init),
            skip: init.normal([spec.n_heads], 1.0),
            out: init.linear(d, d, true),
            n_heads: spec.n_heads,
        }
    }

    /// # Shapes
    /// - x: `[batch, seq, d]` → `[batch, seq, d]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let seq = x.dims()[1];
        let [q, k, v] = self.front.forward(x);
        let h = self.filter.forward(seq);
        let (q, k, v) = if super::fused::on_flex::<B>() {
            (q, k, v)
        } else {
            // A CubeCL backend runs the mix from the taps; nothing of size
            // `seq²` is built.
            match super::cube::toeplitz_mix(q, k, v, head_taps(h.clone(), self.skip.val())) {
                Ok(y) => return linear(&self.out, y),
                Err((q, k, v, _)) => (q, k, v),
            }
        };
        let kernel = head_kernels(h, self.skip.val());
        linear(&self.out, toeplitz_mix(q, k, v, kernel))
    }
}

/// Each head's taps by lag, the skip added at lag 0: `T[h, t, s] =
/// taps[h, t − s]` is [`head_kernels`].
///
/// # Shapes
/// - h: `[heads, seq]`; skip: `[heads]` → `[heads, seq]`
pub fn head_taps<B: Backend>(h: Tensor<B, 2>, skip: Tensor<B, 1>) -> Tensor<B, 2> {
    let [heads, seq] = h.dims();
    if seq == 0 {
        return h;
    }
    let lag0 = h.clone().slice([0..heads, 0..1]) + skip.reshape([heads, 1]);
    if seq == 1 {
        return lag0;
    }
    Tensor::cat(vec![lag0, h.slice([0..heads, 1..seq])], 1)
}

/// `T[h, t, s] = filter[h, t − s] + D[h]·[t = s]` below the diagonal, 0 above.
///
/// # Shapes
/// - h: `[heads, seq]`; skip: `[heads]` → `[heads, seq, seq]`
pub fn head_kernels<B: Backend>(h: Tensor<B, 2>, skip: Tensor<B, 1>) -> Tensor<B, 3> {
    let [heads, seq] = h.dims();
    let device = h.device();
    let eye = super::consts::cached("eye", &[seq], &device, || {
        let eye: Vec<f32> = (0..seq * seq)
            .map(|i| if i / seq == i % seq { 1.0 } else { 0.0 })
            .collect();
        Tensor::<B, 3>::from_data(TensorData::new(eye, [1, seq, seq]), &device)
    });
    toeplitz(h) + fit(eye, [heads, seq, seq]) * fit(skip.reshape([heads, 1, 1]), [heads, seq, seq])
}

/// `(T ⊙ Q Kᵀ) V` per head, by query blocks for long sequences.
///
/// # Shapes
/// - q, k, v: `[batch, heads, seq, hd]`; kernel: `[heads, seq, seq]` → `[batch, heads, seq, hd]`
pub fn mix<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    kernel: Tensor<B, 3>,
) -> Tensor<B, 4> {
    let [b, h, seq, _] = q.dims();
    if seq <= TOEPLITZ_MAX {
        (q.matmul(k.swap_dims(2, 3)) * fit(kernel.unsqueeze_dim::<4>(0), [b, h, seq, seq]))
            .matmul(v)
    } else {
        mix_blocked(q, k, v, kernel, BLOCK)
    }
}

/// [`mix`] one block of `block` queries at a time: each block sees only the
/// keys up to its end.
///
/// # Shapes
/// - as [`mix`]
pub fn mix_blocked<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    kernel: Tensor<B, 3>,
    block: usize,
) -> Tensor<B, 4> {
    let [b, h, seq, hd] = q.dims();
    let kernel = kernel.unsqueeze_dim::<4>(0);
    let mut out = Vec::with_capacity(seq.div_ceil(block));
    for start in (0..seq).step_by(block) {
        let end = (start + block).min(seq);
        let qb = q.clone().slice([0..b, 0..h, start..end, 0..hd]);
        let kb = k.clone().slice([0..b, 0..h, 0..end, 0..hd]);
        let vb = v.clone().slice([0..b, 0..h, 0..end, 0..hd]);
        let tb = kernel.clone().slice([0..1, 0..h, start..end, 0..end]);
        let tb = fit(tb, [b, h, end - start, end]);
        out.push((qb.matmul(kb.swap_dims(2, 3)) * tb).matmul(vb));
    }
    Tensor::cat(out, 2)
}

/// The definition: materialise `k vᵀ` per head, long-convolve every entry,
/// contract with `q`. The reference for tests.
///
/// # Shapes
/// - as [`mix`], with `h: [heads, seq]` and `skip: [heads]`
pub fn direct<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    h: Tensor<B, 2>,
    skip: Tensor<B, 1>,
) -> Tensor<B, 4> {
    let [b, heads, seq, hd] = q.dims();
    // kv[b, t, head, a, c] = k[a] v[c], flattened to channels (head, a, c).
    let kv = k.swap_dims(1, 2).reshape([b, seq, heads, hd, 1])
        * v.swap_dims(1, 2).reshape([b, seq, heads, 1, hd]);
    let kv = kv.reshape([b, seq, heads * hd * hd]);
    let h_ch = h
        .reshape([heads, 1, seq])
        .expand([heads, hd * hd, seq])
        .reshape([heads * hd * hd, seq]);
    let skip_ch = skip
        .reshape([heads, 1])
        .expand([heads, hd * hd])
        .reshape([heads * hd * hd]);
    let conv = super::long_conv::direct(kv.clone(), h_ch) + kv * skip_ch.unsqueeze::<3>();
    let conv = conv.reshape([b, seq, heads, hd, hd]);
    let y = (q.swap_dims(1, 2).reshape([b, seq, heads, hd, 1]) * conv).sum_dim(3); // [b, seq, heads, 1, hd]
    y.reshape([b, seq, heads, hd]).swap_dims(1, 2)
}
