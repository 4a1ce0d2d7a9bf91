//! Gated linear attention's recurrence in CubeCL:
//! `S_t = diag(exp(g_t)) S_{t−1} + k_tᵀ v_t`, `o_t = q_t S_t`, per
//! (batch, head), with no chunk tensors (Burn ops build a `[batch, heads,
//! chunks, chunk, chunk, dk]` one per call) and no states in memory.
//!
//! The state's columns evolve independently (`S_t[:, j]` needs only
//! `v_t[j]`), and so do its rows (`S_t[i, :]` needs only `k_t[i]`,
//! `g_t[i]`): the forward gives one unit each column `j` of one (batch,
//! head), the column (`dk` values) in registers, and writes `o_t[j]`. The
//! backward runs two kernels of the same shape and no atomics:
//!
//! - per column `j`, backwards in time, `∂S[:, j]` (`∂S_t = q_tᵀ ∂o_t +
//!   diag(exp(g_{t+1})) ∂S_{t+1}`) gives `∂v_t[j] = Σ_i k_t[i] ∂S_t[i, j]`;
//! - per row `i`: forwards, the row of `S` gives `∂q_t[i] = ∂o_t · S_t[i, :]`;
//!   backwards, the row of `∂S` gives `∂k_t[i] = ∂S_t[i, :] · v_t`, and the
//!   log-decays' gradient is the reverse running sum
//!   `∂g_t[i] = Σ_{τ ≥ t} (q_τ[i] ∂q_τ[i] − k_τ[i] ∂k_τ[i])` (the output
//!   depends on `g` only through `q_τ e^{b_τ}` and `k_s e^{−b_s}`, `b` the
//!   running sum of `g`), so no earlier state is ever needed. The identity
//!   is exact in exact arithmetic; in floats each term carries its own
//!   rounding, which adds up over `seq − t` steps; the summation itself is
//!   compensated (Kahan) so that it adds no more.
//!
//! Every unit sums in a fixed order: deterministic.

use crate::launch::{empty, fits_u32, launch_size};
use burn::tensor::DType;
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

/// Forward, one unit per (task, value column `j`).
///
/// # Shapes
/// - q, k, g: `[tasks · seq · dk]`; v, out: `[tasks · seq · dv]`
#[cube(launch)]
fn forward_kernel<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    g: &Tensor<F>,
    out: &mut Tensor<F>,
    units: usize,
    seq: usize,
    dv: usize,
    #[comptime] dk: usize,
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= units {
        terminate!();
    }
    let j = pos % dv;
    let task = pos / dv;
    let mut s = Array::<F>::new(dk);
    #[unroll]
    for i in 0..dk {
        s[i] = F::new(0.0);
    }
    for t in 0..seq {
        let row = task * seq + t;
        let vj = v[row * dv + j];
        let mut acc = F::new(0.0);
        #[unroll]
        for i in 0..dk {
            let at = row * dk + i;
            s[i] = g[at].exp() * s[i] + k[at] * vj;
            acc += q[at] * s[i];
        }
        out[row * dv + j] = acc;
    }
}

/// Backward for the values, one unit per (task, value column `j`).
///
/// # Shapes
/// - q, k, g: `[tasks · seq · dk]`; dout, dv_out: `[tasks · seq · dv]`
#[cube(launch)]
fn backward_values_kernel<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    g: &Tensor<F>,
    dout: &Tensor<F>,
    dv_out: &mut Tensor<F>,
    units: usize,
    seq: usize,
    dv: usize,
    #[comptime] dk: usize,
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= units {
        terminate!();
    }
    let j = pos % dv;
    let task = pos / dv;
    // ∂S[:, j], times the next step's decay once that step is done.
    let mut gs = Array::<F>::new(dk);
    #[unroll]
    for i in 0..dk {
        gs[i] = F::new(0.0);
    }
    for back in 0..seq {
        let row = task * seq + (seq - 1 - back);
        let doj = dout[row * dv + j];
        let mut acc = F::new(0.0);
        #[unroll]
        for i in 0..dk {
            let at = row * dk + i;
            gs[i] = gs[i] + q[at] * doj;
            acc += k[at] * gs[i];
            gs[i] = gs[i] * g[at].exp();
        }
        dv_out[row * dv + j] = acc;
    }
}

/// Backward for the queries, keys and log-decays, one unit per (task, key
/// row `i`).
///
/// # Shapes
/// - q, k, g, dq, dk_out, dg: `[tasks · seq · dk]`; v, dout: `[tasks · seq · dv]`
#[cube(launch)]
fn backward_keys_kernel<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    g: &Tensor<F>,
    dout: &Tensor<F>,
    dq: &mut Tensor<F>,
    dk_out: &mut Tensor<F>,
    dg: &mut Tensor<F>,
    units: usize,
    seq: usize,
    dk: usize,
    #[comptime] dv: usize,
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= units {
        terminate!();
    }
    let i = pos % dk;
    let task = pos / dk;
    // Forwards: S[i, :] and ∂q.
    let mut s = Array::<F>::new(dv);
    #[unroll]
    for j in 0..dv {
        s[j] = F::new(0.0);
    }
    for t in 0..seq {
        let row = task * seq + t;
        let at = row * dk + i;
        let decay = g[at].exp();
        let ki = k[at];
        let mut acc = F::new(0.0);
        #[unroll]
        for j in 0..dv {
            s[j] = decay * s[j] + ki * v[row * dv + j];
            acc += dout[row * dv + j] * s[j];
        }
        dq[at] = acc;
    }
    // Backwards: ∂S[i, :], ∂k and the running sum for ∂g.
    let mut gs = Array::<F>::new(dv);
    #[unroll]
    for j in 0..dv {
        gs[j] = F::new(0.0);
    }
    // The running sum for ∂g, compensated (Kahan).
    let mut total = F::new(0.0);
    let mut lost = F::new(0.0);
    for back in 0..seq {
        let row = task * seq + (seq - 1 - back);
        let at = row * dk + i;
        let qi = q[at];
        let mut acc = F::new(0.0);
        #[unroll]
        for j in 0..dv {
            gs[j] = gs[j] + qi * dout[row * dv + j];
            acc += gs[j] * v[row * dv + j];
        }
        dk_out[at] = acc;
        let term = qi * dq[at] - k[at] * acc - lost;
        let next = total + term;
        lost = (next - total) - term;
        total = next;
        dg[at] = total;
        let decay = g[at].exp();
        #[unroll]
        for j in 0..dv {
            gs[j] = gs[j] * decay;
        }
    }
}

/// `[tasks, seq, dk, dv]` and the 4-d shapes of q (also k, g) and v, checked.
fn dims<R: CubeRuntime>(
    q: &CubeTensor<R>,
    k: &CubeTensor<R>,
    v: &CubeTensor<R>,
    g: &CubeTensor<R>,
) -> ([usize; 4], [usize; 4], [usize; 4]) {
    let key = q.meta.shape().dims::<4>();
    let value = v.meta.shape().dims::<4>();
    let [b, h, seq, dk] = key;
    let dv = value[3];
    assert!(
        k.meta.shape().dims::<4>() == key && g.meta.shape().dims::<4>() == key,
        "gated_recurrence: q, k and g must share one shape [batch, heads, seq, dk]"
    );
    assert_eq!(
        [value[0], value[1], value[2]],
        [b, h, seq],
        "gated_recurrence: v must be [batch, heads, seq, dv] of q's batch, heads and seq"
    );
    assert!(
        dk > 0 && dv > 0,
        "gated_recurrence: head dims must be positive"
    );
    assert!(
        [q, k, v, g].iter().all(|t| t.dtype == DType::F32),
        "gla kernels run in f32"
    );
    fits_u32(b * h * seq * dk.max(dv));
    ([b * h, seq, dk, dv], key, value)
}

/// See [`crate::KernelOps::gla_forward`].
pub(crate) fn forward<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    g: CubeTensor<R>,
) -> CubeTensor<R> {
    let ([tasks, seq, dk, dv], _, value) = dims(&q, &k, &v, &g);
    let [q, k, v, g] = [q, k, v, g].map(into_contiguous);
    let out = empty(&v, value.to_vec());
    let units = tasks * dv;
    if units * seq == 0 {
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
        g.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        units,
        seq,
        dv,
        dk,
        dtype.into(),
    );
    out
}

/// See [`crate::KernelOps::gla_backward`].
pub(crate) fn backward<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    g: CubeTensor<R>,
    dout: CubeTensor<R>,
) -> [CubeTensor<R>; 4] {
    let ([tasks, seq, dk, dv], key, value) = dims(&q, &k, &v, &g);
    assert!(
        dout.meta.shape().dims::<4>() == value && dout.dtype == DType::F32,
        "gated_recurrence backward: the output's gradient must be f32 [batch, heads, seq, dv]"
    );
    let [q, k, v, g, dout] = [q, k, v, g, dout].map(into_contiguous);
    let grads = [key, key, value, key].map(|d| empty(&q, d.to_vec()));
    if tasks * seq == 0 {
        return grads;
    }
    let [dq, dk_out, dv_out, dg] = grads;
    let client = q.client.clone();
    let dtype = q.dtype;
    let units = tasks * dv;
    let (count, dim) = launch_size(&client, units);
    backward_values_kernel::launch::<R>(
        &client,
        count,
        dim,
        q.clone().into_tensor_arg(),
        k.clone().into_tensor_arg(),
        g.clone().into_tensor_arg(),
        dout.clone().into_tensor_arg(),
        dv_out.clone().into_tensor_arg(),
        units,
        seq,
        dv,
        dk,
        dtype.into(),
    );
    let units = tasks * dk;
    let (count, dim) = launch_size(&client, units);
    backward_keys_kernel::launch::<R>(
        &client,
        count,
        dim,
        q.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        g.into_tensor_arg(),
        dout.into_tensor_arg(),
        dq.clone().into_tensor_arg(),
        dk_out.clone().into_tensor_arg(),
        dg.clone().into_tensor_arg(),
        units,
        seq,
        dk,
        dv,
        dtype.into(),
    );
    [dq, dk_out, dv_out, dg]
}
