//! The kernels' functions composed from Burn ops, on any backend: what the
//! tests compare the kernels with (values and gradients).

use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::softmax;

/// `softmax(Q Kᵀ · scale + mask) V` with the `[seq, seq]` scores and mask
/// materialised; the same visibility as [`crate::Kernels::causal_attention`].
///
/// # Shapes
/// - q, k, v: `[batch, heads, seq, hd]` → `[batch, heads, seq, hd]`
pub fn causal_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    scale: f32,
    window: usize,
) -> Tensor<B, 4> {
    let [b, h, seq, _] = q.dims();
    let mut mask = vec![f32::NEG_INFINITY; seq * seq];
    for i in 0..seq {
        let first = if window == 0 {
            0
        } else {
            i.saturating_sub(window)
        };
        for j in first..=i {
            mask[i * seq + j] = 0.0;
        }
    }
    let mask = Tensor::<B, 4>::from_data(TensorData::new(mask, [1, 1, seq, seq]), &q.device())
        .expand([b, h, seq, seq]);
    let scores = q.matmul(k.swap_dims(2, 3)) * scale + mask;
    softmax(scores, 3).matmul(v)
}

/// `y[b, t, c] = Σ_{s≤t} taps[t − s, c] · v[b, s, c]` as one masked
/// `[channels, seq, seq]` Toeplitz product per call; the same function as
/// [`crate::Kernels::causal_conv`].
///
/// # Shapes
/// - v: `[batch, seq, channels]`; taps: `[seq, channels]` → `[batch, seq, channels]`
pub fn causal_conv<B: Backend>(v: Tensor<B, 3>, taps: Tensor<B, 2>) -> Tensor<B, 3> {
    let [_, seq, channels] = v.dims();
    let device = v.device();
    // lag[t, s] = t − s below the diagonal (0 above, masked out).
    let lags: Vec<i64> = (0..seq * seq)
        .map(|i| (i / seq).saturating_sub(i % seq) as i64)
        .collect();
    let mask: Vec<f32> = (0..seq * seq)
        .map(|i| if i % seq <= i / seq { 1.0 } else { 0.0 })
        .collect();
    let lags = Tensor::<B, 1, Int>::from_data(TensorData::new(lags, [seq * seq]), &device);
    let mask = Tensor::<B, 3>::from_data(TensorData::new(mask, [1, seq, seq]), &device);
    let toeplitz = taps
        .swap_dims(0, 1)
        .select(1, lags)
        .reshape([channels, seq, seq])
        * mask.expand([channels, seq, seq]);
    // [channels, seq, seq] × [channels, seq, batch] → [batch, seq, channels]
    toeplitz.matmul(v.permute([2, 1, 0])).permute([2, 1, 0])
}

/// Gated linear attention's recurrence token by token: `S_t =
/// diag(exp(g_t)) S_{t−1} + k_tᵀ v_t`, `o_t = q_t S_t`; the same function
/// as [`crate::Kernels::gated_recurrence`].
///
/// # Shapes
/// - q, k, g: `[batch, heads, seq, dk]`; v: `[batch, heads, seq, dv]` → `[batch, heads, seq, dv]`
pub fn gated_recurrence<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    g: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [b, h, seq, dk] = q.dims();
    let dv = v.dims()[3];
    let mut state = Tensor::<B, 4>::zeros([b, h, dk, dv], &q.device());
    let mut out = Vec::with_capacity(seq);
    for t in 0..seq {
        let at = |x: &Tensor<B, 4>, e: usize| x.clone().slice([0..b, 0..h, t..t + 1, 0..e]);
        let decay = at(&g, dk).exp().swap_dims(2, 3).expand([b, h, dk, dv]);
        state = state * decay + at(&k, dk).swap_dims(2, 3).matmul(at(&v, dv));
        out.push(at(&q, dk).matmul(state.clone()));
    }
    Tensor::cat(out, 2)
}

/// Multi-head Hyena's mix `(T ⊙ Q Kᵀ) V` per head with `T[h, t, s] =
/// taps[h, t − s]` below and on the diagonal, the scores and `T`
/// materialised; the same function as [`crate::Kernels::toeplitz_mix`].
///
/// # Shapes
/// - q, k, v: `[batch, seq, d]`; taps: `[heads, seq]` → `[batch, seq, d]`
pub fn toeplitz_mix<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    taps: Tensor<B, 2>,
) -> Tensor<B, 3> {
    let [b, seq, d] = q.dims();
    let heads = taps.dims()[0];
    let hd = d / heads;
    let device = q.device();
    let lags: Vec<i64> = (0..seq * seq)
        .map(|i| (i / seq).saturating_sub(i % seq) as i64)
        .collect();
    let mask: Vec<f32> = (0..seq * seq)
        .map(|i| if i % seq <= i / seq { 1.0 } else { 0.0 })
        .collect();
    let lags = Tensor::<B, 1, Int>::from_data(TensorData::new(lags, [seq * seq]), &device);
    let mask = Tensor::<B, 3>::from_data(TensorData::new(mask, [1, seq, seq]), &device);
    // [heads, seq, seq]
    let t = taps.select(1, lags).reshape([heads, seq, seq]) * mask.expand([heads, seq, seq]);
    let split = |x: Tensor<B, 3>| x.reshape([b, seq, heads, hd]).swap_dims(1, 2);
    let scores = split(q).matmul(split(k).swap_dims(2, 3));
    let y = (scores * t.unsqueeze_dim::<4>(0).expand([b, heads, seq, seq])).matmul(split(v));
    y.swap_dims(1, 2).reshape([b, seq, d])
}

/// Mamba's selective scan token by token: `h_t = exp(Δ_t A) ⊙ h_{t−1} +
/// Δ_t x_t B_t`, `y_t = C_t · h_t` per channel; the same function as
/// [`crate::Kernels::selective_scan`].
///
/// # Shapes
/// - x, dt: `[batch, seq, channels]`; a: `[channels, n]`; b, c: `[batch, seq, n]`
///   → `[batch, seq, channels]`
pub fn selective_scan<B: Backend>(
    x: Tensor<B, 3>,
    dt: Tensor<B, 3>,
    a: Tensor<B, 2>,
    b: Tensor<B, 3>,
    c: Tensor<B, 3>,
) -> Tensor<B, 3> {
    let [batch, seq, channels] = x.dims();
    let n = a.dims()[1];
    let full = [batch, channels, n];
    let a = a.unsqueeze::<3>().expand(full);
    let mut h = Tensor::<B, 3>::zeros(full, &x.device());
    let mut out = Vec::with_capacity(seq);
    for t in 0..seq {
        let column = |s: &Tensor<B, 3>| {
            s.clone()
                .slice([0..batch, t..t + 1, 0..channels])
                .reshape([batch, channels, 1])
                .expand(full)
        };
        let row = |s: &Tensor<B, 3>| {
            s.clone()
                .slice([0..batch, t..t + 1, 0..n])
                .reshape([batch, 1, n])
                .expand(full)
        };
        let step = column(&dt);
        h = (step.clone() * a.clone()).exp() * h + step * column(&x) * row(&b);
        out.push(
            (h.clone() * row(&c))
                .sum_dim(2)
                .reshape([batch, 1, channels]),
        );
    }
    Tensor::cat(out, 1)
}
