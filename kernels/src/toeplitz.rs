//! Multi-head Hyena's mix in CubeCL: per head `h`,
//! `y_t = Σ_{s≤t} taps[h, t − s] (q_t · k_s) v_s`, that is `(T ⊙ Q Kᵀ) V`
//! with `T` the head's causal Toeplitz matrix given by its taps. Neither
//! `T` (`[heads, seq, seq]`) nor the scores (`[batch, heads, seq, seq]`)
//! exist in memory in either direction.
//!
//! The streams are read in their `[batch, seq, d]` layout, head `h` being
//! columns `h·hd .. (h+1)·hd`: no head split or merge. Each unit owns one
//! row of one (batch, head), as in [`crate::attention`]: forward one query
//! (`out`), backward one query (`dq`) and one key (`dk`, `dv`); the taps'
//! gradient has one unit per (head, lag), summing over the batch and the
//! positions in a fixed order (deterministic).

use crate::launch::{empty, fits_u32, launch_size};
use burn::tensor::DType;
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

/// Forward, one unit per (batch, head, query `t`).
///
/// # Shapes
/// - q, k, v, out: `[batch · seq · d]`; taps: `[heads · seq]`
#[cube(launch)]
fn forward_kernel<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    taps: &Tensor<F>,
    out: &mut Tensor<F>,
    units: usize,
    seq: usize,
    heads: usize,
    #[comptime] hd: usize,
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= units {
        terminate!();
    }
    let t = pos % seq;
    let h = (pos / seq) % heads;
    let b = pos / (seq * heads);
    let d = heads * hd;
    let first = b * seq * d + h * hd; // (b, 0, head h)
    let mut qt = Array::<F>::new(hd);
    let mut acc = Array::<F>::new(hd);
    #[unroll]
    for c in 0..hd {
        qt[c] = q[first + t * d + c];
        acc[c] = F::new(0.0);
    }
    for s in 0..t + 1 {
        let at = first + s * d;
        let mut score = F::new(0.0);
        #[unroll]
        for c in 0..hd {
            score += qt[c] * k[at + c];
        }
        let w = taps[h * seq + t - s] * score;
        #[unroll]
        for c in 0..hd {
            acc[c] = acc[c] + w * v[at + c];
        }
    }
    #[unroll]
    for c in 0..hd {
        out[first + t * d + c] = acc[c];
    }
}

/// Backward for the queries: `dq_t = Σ_{s≤t} taps[t − s] (do_t · v_s) k_s`,
/// one unit per (batch, head, query `t`).
///
/// # Shapes
/// - k, v, dout, dq: `[batch · seq · d]`; taps: `[heads · seq]`
#[cube(launch)]
fn backward_query_kernel<F: Float>(
    k: &Tensor<F>,
    v: &Tensor<F>,
    taps: &Tensor<F>,
    dout: &Tensor<F>,
    dq: &mut Tensor<F>,
    units: usize,
    seq: usize,
    heads: usize,
    #[comptime] hd: usize,
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= units {
        terminate!();
    }
    let t = pos % seq;
    let h = (pos / seq) % heads;
    let b = pos / (seq * heads);
    let d = heads * hd;
    let first = b * seq * d + h * hd;
    let mut gt = Array::<F>::new(hd);
    let mut acc = Array::<F>::new(hd);
    #[unroll]
    for c in 0..hd {
        gt[c] = dout[first + t * d + c];
        acc[c] = F::new(0.0);
    }
    for s in 0..t + 1 {
        let at = first + s * d;
        let mut dp = F::new(0.0);
        #[unroll]
        for c in 0..hd {
            dp += gt[c] * v[at + c];
        }
        let w = taps[h * seq + t - s] * dp;
        #[unroll]
        for c in 0..hd {
            acc[c] = acc[c] + w * k[at + c];
        }
    }
    #[unroll]
    for c in 0..hd {
        dq[first + t * d + c] = acc[c];
    }
}

/// Backward for the keys and values, one unit per (batch, head, key `s`):
/// `dk_s = Σ_{t≥s} taps[t − s] (do_t · v_s) q_t`,
/// `dv_s = Σ_{t≥s} taps[t − s] (q_t · k_s) do_t`.
///
/// # Shapes
/// - q, k, v, dout, dk, dv: `[batch · seq · d]`; taps: `[heads · seq]`
#[cube(launch)]
fn backward_key_kernel<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    taps: &Tensor<F>,
    dout: &Tensor<F>,
    dk: &mut Tensor<F>,
    dv: &mut Tensor<F>,
    units: usize,
    seq: usize,
    heads: usize,
    #[comptime] hd: usize,
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= units {
        terminate!();
    }
    let s = pos % seq;
    let h = (pos / seq) % heads;
    let b = pos / (seq * heads);
    let d = heads * hd;
    let first = b * seq * d + h * hd;
    let mut ks = Array::<F>::new(hd);
    let mut vs = Array::<F>::new(hd);
    let mut gk = Array::<F>::new(hd);
    let mut gv = Array::<F>::new(hd);
    #[unroll]
    for c in 0..hd {
        ks[c] = k[first + s * d + c];
        vs[c] = v[first + s * d + c];
        gk[c] = F::new(0.0);
        gv[c] = F::new(0.0);
    }
    for t in s..seq {
        let at = first + t * d;
        let mut score = F::new(0.0);
        let mut dp = F::new(0.0);
        #[unroll]
        for c in 0..hd {
            score += q[at + c] * ks[c];
            dp += dout[at + c] * vs[c];
        }
        let tap = taps[h * seq + t - s];
        let wk = tap * dp;
        let wv = tap * score;
        #[unroll]
        for c in 0..hd {
            gk[c] = gk[c] + wk * q[at + c];
            gv[c] = gv[c] + wv * dout[at + c];
        }
    }
    #[unroll]
    for c in 0..hd {
        dk[first + s * d + c] = gk[c];
        dv[first + s * d + c] = gv[c];
    }
}

/// Backward for the taps: `dtaps[h, lag] = Σ_b Σ_{t≥lag} (q_t · k_{t−lag})
/// (do_t · v_{t−lag})`, one unit per (head, lag).
///
/// # Shapes
/// - q, k, v, dout: `[batch · seq · d]`; dtaps: `[heads · seq]`
#[cube(launch)]
fn backward_taps_kernel<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    dout: &Tensor<F>,
    dtaps: &mut Tensor<F>,
    units: usize,
    batch: usize,
    seq: usize,
    heads: usize,
    #[comptime] hd: usize,
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= units {
        terminate!();
    }
    let lag = pos % seq;
    let h = pos / seq;
    let d = heads * hd;
    let mut total = F::new(0.0);
    for b in 0..batch {
        let first = b * seq * d + h * hd;
        for t in lag..seq {
            let at = first + t * d;
            let from = first + (t - lag) * d;
            let mut score = F::new(0.0);
            let mut dp = F::new(0.0);
            #[unroll]
            for c in 0..hd {
                score += q[at + c] * k[from + c];
                dp += dout[at + c] * v[from + c];
            }
            total += score * dp;
        }
    }
    dtaps[pos] = total;
}

/// `[batch, seq, d]` of the streams and the head dim, checked: q, k and v
/// one shape, the taps `[heads, seq]`, all f32 (the kernels index every
/// operand by q's shape).
fn dims<R: CubeRuntime>([q, k, v, taps]: [&CubeTensor<R>; 4]) -> ([usize; 3], usize, usize) {
    let [batch, seq, d] = q.meta.shape().dims::<3>();
    let [heads, taps_seq] = taps.meta.shape().dims::<2>();
    assert!(
        k.meta.shape() == q.meta.shape() && v.meta.shape() == q.meta.shape(),
        "toeplitz_mix: q, k and v must share one shape [batch, seq, d]"
    );
    assert!(
        heads > 0 && d % heads == 0 && d > 0 && taps_seq == seq,
        "toeplitz_mix: taps [{heads}, {taps_seq}] must be [heads, seq] with heads dividing \
         d = {d} and seq = {seq}"
    );
    assert!(
        [q, k, v, taps].iter().all(|t| t.dtype == DType::F32),
        "toeplitz kernels run in f32"
    );
    fits_u32(batch * seq * d);
    ([batch, seq, d], heads, d / heads)
}

/// See [`crate::KernelOps::toeplitz_forward`].
pub(crate) fn forward<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    taps: CubeTensor<R>,
) -> CubeTensor<R> {
    let ([batch, seq, d], heads, hd) = dims([&q, &k, &v, &taps]);
    let [q, k, v, taps] = [q, k, v, taps].map(into_contiguous);
    let out = empty(&q, vec![batch, seq, d]);
    let units = batch * heads * seq;
    if units == 0 {
        return out;
    }
    let client = q.client.clone();
    let dtype = q.dtype;
    let (count, dim) = launch_size(&client, units);
    forward_kernel::launch::<R>(
        &client,
        count,
        dim,
        q.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        taps.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        units,
        seq,
        heads,
        hd,
        dtype.into(),
    );
    out
}

/// See [`crate::KernelOps::toeplitz_backward`].
pub(crate) fn backward<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    taps: CubeTensor<R>,
    dout: CubeTensor<R>,
) -> [CubeTensor<R>; 4] {
    let ([batch, seq, d], heads, hd) = dims([&q, &k, &v, &taps]);
    assert!(
        dout.meta.shape().dims::<3>() == [batch, seq, d] && dout.dtype == DType::F32,
        "toeplitz_mix backward: the output's gradient must be f32 [batch, seq, d]"
    );
    let [q, k, v, taps, dout] = [q, k, v, taps, dout].map(into_contiguous);
    let [dq, dk, dv] = [0; 3].map(|_| empty(&q, vec![batch, seq, d]));
    let dtaps = empty(&q, vec![heads, seq]);
    let client = q.client.clone();
    let dtype = q.dtype;
    let units = batch * heads * seq;
    if units > 0 {
        let (count, dim) = launch_size(&client, units);
        backward_query_kernel::launch::<R>(
            &client,
            count.clone(),
            dim,
            k.clone().into_tensor_arg(),
            v.clone().into_tensor_arg(),
            taps.clone().into_tensor_arg(),
            dout.clone().into_tensor_arg(),
            dq.clone().into_tensor_arg(),
            units,
            seq,
            heads,
            hd,
            dtype.into(),
        );
        backward_key_kernel::launch::<R>(
            &client,
            count,
            dim,
            q.clone().into_tensor_arg(),
            k.clone().into_tensor_arg(),
            v.clone().into_tensor_arg(),
            taps.into_tensor_arg(),
            dout.clone().into_tensor_arg(),
            dk.clone().into_tensor_arg(),
            dv.clone().into_tensor_arg(),
            units,
            seq,
            heads,
            hd,
            dtype.into(),
        );
    }
    // Also with no batch: the taps' gradient is then zeros, written here.
    let tap_units = heads * seq;
    if tap_units > 0 {
        let (count, dim) = launch_size(&client, tap_units);
        backward_taps_kernel::launch::<R>(
            &client,
            count,
            dim,
            q.into_tensor_arg(),
            k.into_tensor_arg(),
            v.into_tensor_arg(),
            dout.into_tensor_arg(),
            dtaps.clone().into_tensor_arg(),
            tap_units,
            batch,
            seq,
            heads,
            hd,
            dtype.into(),
        );
    }
    [dq, dk, dv, dtaps]
}
