//! Causal softmax attention in CubeCL, flash-style: no `[seq, seq]` tensor
//! exists in memory in either direction.
//!
//! Each unit owns one row: the forward one query (online softmax over its
//! visible keys, the head's dims in registers), the backward one query for
//! `dq` and one key for `dk` and `dv`, recomputing the probabilities from
//! the forward's log-sum-exp. Neighbouring units of a cube hold
//! neighbouring rows of one (batch, head), so at each step they read
//! neighbouring rows of k and v.
//!
//! Visibility: query `i` sees keys `first(i) ..= i`, `first(i) = i − window`
//! (or 0 when `window` is 0 or `i ≤ window`); so key `j` is seen by queries
//! `j ..= j + window` (all later ones when `window` is 0).
//!
//! No infinity is written as a literal: WGSL may reject it, so the running
//! maximum starts at −1e30 (scores are scaled dot products of activations,
//! far from that).

use crate::launch::{empty, fits_u32, launch_size};
use burn::tensor::DType;
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

/// Forward: `out[i] = Σ_j softmax_j(q_i·k_j·scale) v_j` over the keys `i`
/// sees, and `lse[i] = log Σ_j exp(q_i·k_j·scale)`.
///
/// # Shapes
/// - q, k, v, out: `[rows · hd]` (rows = batch · heads · seq, contiguous)
/// - lse: `[rows]`
#[cube(launch)]
fn forward_kernel<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    out: &mut Tensor<F>,
    lse: &mut Tensor<F>,
    seq: usize,
    scale: f32,
    window: usize,
    #[comptime] hd: usize,
    #[define(F)] _dtype: StorageType,
) {
    let row = ABSOLUTE_POS;
    if row >= lse.len() {
        terminate!();
    }
    let i = row % seq;
    let head = row - i; // the row of query 0 of this (batch, head)
    let mut first = 0usize;
    if window > 0 && i > window {
        first = i - window;
    }
    let scale = F::cast_from(scale);
    let mut qi = Array::<F>::new(hd);
    let mut acc = Array::<F>::new(hd);
    #[unroll]
    for c in 0..hd {
        qi[c] = q[row * hd + c] * scale;
        acc[c] = F::new(0.0);
    }
    let mut m = F::new(-1.0e30);
    let mut l = F::new(0.0);
    for j in first..i + 1 {
        let kj = (head + j) * hd;
        let mut s = F::new(0.0);
        #[unroll]
        for c in 0..hd {
            s += qi[c] * k[kj + c];
        }
        let mut m_new = m;
        if s > m {
            m_new = s;
        }
        let correction = (m - m_new).exp();
        let p = (s - m_new).exp();
        l = l * correction + p;
        #[unroll]
        for c in 0..hd {
            acc[c] = acc[c] * correction + p * v[kj + c];
        }
        m = m_new;
    }
    let inv = F::new(1.0) / l;
    #[unroll]
    for c in 0..hd {
        out[row * hd + c] = acc[c] * inv;
    }
    lse[row] = m + l.ln();
}

/// Backward, per query row `i`: `delta[i] = dout_i · out_i` and
/// `dq_i = scale · Σ_j p_ij (dout_i·v_j − delta_i) k_j`.
///
/// # Shapes
/// - q, k, v, out, dout, dq: `[rows · hd]`; lse, delta: `[rows]`
#[cube(launch)]
fn backward_query_kernel<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    out: &Tensor<F>,
    lse: &Tensor<F>,
    dout: &Tensor<F>,
    dq: &mut Tensor<F>,
    delta: &mut Tensor<F>,
    seq: usize,
    scale: f32,
    window: usize,
    #[comptime] hd: usize,
    #[define(F)] _dtype: StorageType,
) {
    let row = ABSOLUTE_POS;
    if row >= lse.len() {
        terminate!();
    }
    let i = row % seq;
    let head = row - i;
    let mut first = 0usize;
    if window > 0 && i > window {
        first = i - window;
    }
    let scale = F::cast_from(scale);
    let mut qi = Array::<F>::new(hd);
    let mut gi = Array::<F>::new(hd);
    let mut acc = Array::<F>::new(hd);
    let mut d = F::new(0.0);
    #[unroll]
    for c in 0..hd {
        qi[c] = q[row * hd + c] * scale;
        gi[c] = dout[row * hd + c];
        d += gi[c] * out[row * hd + c];
        acc[c] = F::new(0.0);
    }
    let li = lse[row];
    for j in first..i + 1 {
        let kj = (head + j) * hd;
        let mut s = F::new(0.0);
        let mut dp = F::new(0.0);
        #[unroll]
        for c in 0..hd {
            s += qi[c] * k[kj + c];
            dp += gi[c] * v[kj + c];
        }
        let ds = (s - li).exp() * (dp - d);
        #[unroll]
        for c in 0..hd {
            acc[c] += ds * k[kj + c];
        }
    }
    #[unroll]
    for c in 0..hd {
        dq[row * hd + c] = acc[c] * scale;
    }
    delta[row] = d;
}

/// Backward, per key row `j`: `dv_j = Σ_i p_ij dout_i` and
/// `dk_j = scale · Σ_i p_ij (dout_i·v_j − delta_i) q_i` over the queries
/// that see `j`. Runs after [`backward_query_kernel`] (its `delta`).
///
/// # Shapes
/// - q, k, v, dout, dk, dv: `[rows · hd]`; lse, delta: `[rows]`
#[cube(launch)]
fn backward_key_kernel<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    lse: &Tensor<F>,
    delta: &Tensor<F>,
    dout: &Tensor<F>,
    dk: &mut Tensor<F>,
    dv: &mut Tensor<F>,
    seq: usize,
    scale: f32,
    window: usize,
    #[comptime] hd: usize,
    #[define(F)] _dtype: StorageType,
) {
    let row = ABSOLUTE_POS;
    if row >= lse.len() {
        terminate!();
    }
    let j = row % seq;
    let head = row - j;
    let mut last = seq;
    if window > 0 && j + window + 1 < seq {
        last = j + window + 1;
    }
    let scale = F::cast_from(scale);
    let mut kj = Array::<F>::new(hd);
    let mut vj = Array::<F>::new(hd);
    let mut gk = Array::<F>::new(hd);
    let mut gv = Array::<F>::new(hd);
    #[unroll]
    for c in 0..hd {
        kj[c] = k[row * hd + c] * scale;
        vj[c] = v[row * hd + c];
        gk[c] = F::new(0.0);
        gv[c] = F::new(0.0);
    }
    for i in j..last {
        let qi = (head + i) * hd;
        let mut s = F::new(0.0);
        let mut dp = F::new(0.0);
        #[unroll]
        for c in 0..hd {
            s += q[qi + c] * kj[c];
            dp += dout[qi + c] * vj[c];
        }
        let p = (s - lse[head + i]).exp();
        let ds = p * (dp - delta[head + i]);
        #[unroll]
        for c in 0..hd {
            gv[c] += p * dout[qi + c];
            gk[c] += ds * q[qi + c];
        }
    }
    #[unroll]
    for c in 0..hd {
        dk[row * hd + c] = gk[c] * scale;
        dv[row * hd + c] = gv[c];
    }
}

/// Shape `[batch, heads, seq, hd]` of q, checked against k and v.
fn dims<R: CubeRuntime>(q: &CubeTensor<R>, others: &[&CubeTensor<R>]) -> [usize; 4] {
    let shape = q.meta.shape();
    assert_eq!(
        shape.num_dims(),
        4,
        "attention: q must be [batch, heads, seq, hd]"
    );
    for t in others {
        assert_eq!(
            t.meta.shape(),
            shape,
            "attention: every input must have q's shape"
        );
    }
    assert_eq!(q.dtype, DType::F32, "attention kernels run in f32");
    let dims = shape.dims::<4>();
    fits_u32(dims.iter().product());
    dims
}

/// The window as the kernels take it: one at least as long as the
/// sequence sees every earlier key, as `0` does (and `j + window` cannot
/// wrap on the device).
fn effective_window(window: usize, seq: usize) -> usize {
    if window >= seq { 0 } else { window }
}

/// See [`crate::KernelOps::attention_forward`].
pub(crate) fn forward<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    scale: f32,
    window: usize,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let [b, h, seq, hd] = dims(&q, &[&k, &v]);
    let window = effective_window(window, seq);
    let (q, k, v) = (into_contiguous(q), into_contiguous(k), into_contiguous(v));
    let out = empty(&q, vec![b, h, seq, hd]);
    let lse = empty(&q, vec![b, h, seq]);
    let rows = b * h * seq;
    // With no head dims there is nothing to attend with: the output is
    // empty, and the backward (the only reader of `lse`) returns at once.
    if rows == 0 || hd == 0 {
        return (out, lse);
    }
    let client = q.client.clone();
    let dtype = q.dtype;
    let (count, dim) = launch_size(&client, rows);
    forward_kernel::launch::<R>(
        &client,
        count,
        dim,
        q.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        seq,
        scale,
        window,
        hd,
        dtype.into(),
    );
    (out, lse)
}

/// See [`crate::KernelOps::attention_backward`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    out: CubeTensor<R>,
    lse: CubeTensor<R>,
    dout: CubeTensor<R>,
    scale: f32,
    window: usize,
) -> [CubeTensor<R>; 3] {
    let [b, h, seq, hd] = dims(&q, &[&k, &v, &out, &dout]);
    let window = effective_window(window, seq);
    let (q, k, v) = (into_contiguous(q), into_contiguous(k), into_contiguous(v));
    let (out, lse, dout) = (
        into_contiguous(out),
        into_contiguous(lse),
        into_contiguous(dout),
    );
    let dq = empty(&q, vec![b, h, seq, hd]);
    let dk = empty(&q, vec![b, h, seq, hd]);
    let dv = empty(&q, vec![b, h, seq, hd]);
    let rows = b * h * seq;
    if rows == 0 || hd == 0 {
        return [dq, dk, dv];
    }
    let delta = empty(&q, vec![b, h, seq]);
    let client = q.client.clone();
    let dtype = q.dtype;
    let (count, dim) = launch_size(&client, rows);
    backward_query_kernel::launch::<R>(
        &client,
        count.clone(),
        dim,
        q.clone().into_tensor_arg(),
        k.clone().into_tensor_arg(),
        v.clone().into_tensor_arg(),
        out.into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        dout.clone().into_tensor_arg(),
        dq.clone().into_tensor_arg(),
        delta.clone().into_tensor_arg(),
        seq,
        scale,
        window,
        hd,
        dtype.into(),
    );
    backward_key_kernel::launch::<R>(
        &client,
        count,
        dim,
        q.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        lse.into_tensor_arg(),
        delta.into_tensor_arg(),
        dout.into_tensor_arg(),
        dk.clone().into_tensor_arg(),
        dv.clone().into_tensor_arg(),
        seq,
        scale,
        window,
        hd,
        dtype.into(),
    );
    [dq, dk, dv]
}
