//! Mamba's selective scan in CubeCL: `h_t = exp(Δ_t A) ⊙ h_{t−1} +
//! Δ_t x_t B_t`, `y_t = C_t · h_t` per (batch, channel), with the state in
//! registers (Burn ops materialise `[batch, seq, d_inner, d_state]` decays
//! and inputs and run a log-depth scan of shifted copies: about thirty
//! passes over five-dimensional tensors, and a host loop over chunks).
//!
//! Each channel's state evolves on its own, so the forward gives one unit
//! each (batch, channel `d`), its `d_state` values in registers, reading
//! `x`, `Δ` and writing `y` at `[batch, t, d]`: neighbouring units touch
//! neighbouring addresses (coalesced), and `B_t`, `C_t` are shared by all
//! the channels of a batch element.
//!
//! The backward is one kernel of the same shape and two reductions:
//!
//! - forwards, the unit recomputes its states and writes the state entering
//!   each step, `h_{t−1}`, to a `[batch, seq, d_state, d_inner]` scratch
//!   (channel-minor: coalesced), and `∂y_t h_t[n]`, channel `d`'s term of
//!   `∂C_t[n]`;
//! - backwards, it carries `∂h_t = ∂y_t C_t + exp(Δ_{t+1} A) ⊙ ∂h_{t+1}`
//!   and reads `h_{t−1}` back: `∂x_t`, `∂Δ_t` (through the decay and the
//!   input) directly, its term of `∂B_t[n]`, `Δ_t x_t ∂h_t[n]`, to a second
//!   scratch, and `∂A[d, n] = Σ_t ∂h_t[n] h_{t−1}[n] exp(Δ_t A) Δ_t` in
//!   registers, written once per batch element;
//! - `∂B` and `∂C` sum the terms over the channels, `∂A` over the batch,
//!   each output element by one unit in a fixed order.
//!
//! No atomics and fixed summation orders: deterministic. Memory beyond the
//! inputs and gradients: three `[batch, seq, d_state, d_inner]` scratch
//! tensors during the backward (at the protocol's shape, 128 × 128 × 16 ×
//! 256 floats: 268 MB each; at the screen's, 32 × 64 × 4 × 256: 8 MB).

use burn::tensor::{DType, Shape};
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::zeros_client;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::launch::{empty, fits_u32, launch_size};

/// Forward, one unit per (batch, channel `d`).
///
/// # Shapes
/// - x, dt, y: `[batch · seq · channels]`; a: `[channels · n]`; b, c: `[batch · seq · n]`
#[cube(launch)]
fn forward_kernel<F: Float>(
    x: &Tensor<F>,
    dt: &Tensor<F>,
    a: &Tensor<F>,
    b: &Tensor<F>,
    c: &Tensor<F>,
    y: &mut Tensor<F>,
    units: usize,
    seq: usize,
    channels: usize,
    #[comptime] n: usize,
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= units {
        terminate!();
    }
    let d = pos % channels;
    let batch = pos / channels;
    let mut h = Array::<F>::new(n);
    let mut ad = Array::<F>::new(n);
    #[unroll]
    for i in 0..n {
        h[i] = F::new(0.0);
        ad[i] = a[d * n + i];
    }
    for t in 0..seq {
        let row = batch * seq + t;
        let at = row * channels + d;
        let step = dt[at];
        let u = step * x[at];
        let mut acc = F::new(0.0);
        #[unroll]
        for i in 0..n {
            let s = row * n + i;
            h[i] = (step * ad[i]).exp() * h[i] + u * b[s];
            acc += c[s] * h[i];
        }
        y[at] = acc;
    }
}

/// Backward, one unit per (batch, channel `d`): `∂x`, `∂Δ`, and the
/// channel's terms of `∂A`, `∂B`, `∂C`.
///
/// # Shapes
/// - x, dt, dy, dx, ddt: `[batch · seq · channels]`; a: `[channels · n]`;
///   b, c: `[batch · seq · n]`; states, db_terms, dc_terms:
///   `[batch · seq · n · channels]`; da_terms: `[batch · channels · n]`
#[cube(launch)]
fn backward_kernel<F: Float>(
    x: &Tensor<F>,
    dt: &Tensor<F>,
    a: &Tensor<F>,
    b: &Tensor<F>,
    c: &Tensor<F>,
    dy: &Tensor<F>,
    states: &mut Tensor<F>,
    dx: &mut Tensor<F>,
    ddt: &mut Tensor<F>,
    da_terms: &mut Tensor<F>,
    db_terms: &mut Tensor<F>,
    dc_terms: &mut Tensor<F>,
    units: usize,
    seq: usize,
    channels: usize,
    #[comptime] n: usize,
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= units {
        terminate!();
    }
    let d = pos % channels;
    let batch = pos / channels;
    let mut h = Array::<F>::new(n);
    let mut ad = Array::<F>::new(n);
    #[unroll]
    for i in 0..n {
        h[i] = F::new(0.0);
        ad[i] = a[d * n + i];
    }
    // Forwards: the state entering each step, and ∂C's terms.
    for t in 0..seq {
        let row = batch * seq + t;
        let at = row * channels + d;
        let step = dt[at];
        let u = step * x[at];
        let g = dy[at];
        #[unroll]
        for i in 0..n {
            let s = row * n + i;
            let o = s * channels + d;
            states[o] = h[i];
            h[i] = (step * ad[i]).exp() * h[i] + u * b[s];
            dc_terms[o] = g * h[i];
        }
    }
    // Backwards: ∂h carried, times the step's decay once the step is done.
    let mut gh = Array::<F>::new(n);
    let mut da = Array::<F>::new(n);
    #[unroll]
    for i in 0..n {
        gh[i] = F::new(0.0);
        da[i] = F::new(0.0);
    }
    for back in 0..seq {
        let row = batch * seq + (seq - 1 - back);
        let at = row * channels + d;
        let step = dt[at];
        let xv = x[at];
        let g = dy[at];
        let mut gx = F::new(0.0);
        let mut gdt = F::new(0.0);
        #[unroll]
        for i in 0..n {
            let s = row * n + i;
            let o = s * channels + d;
            gh[i] = gh[i] + g * c[s];
            let decay = (step * ad[i]).exp();
            // ∂L/∂(Δ_t A[d, n]) through h_t = decay · h_{t−1} + Δ_t x_t B_t[n].
            let gexp = gh[i] * states[o] * decay;
            let bs = b[s];
            gdt += gexp * ad[i] + gh[i] * xv * bs;
            gx += gh[i] * step * bs;
            da[i] = da[i] + gexp * step;
            db_terms[o] = gh[i] * step * xv;
            gh[i] = gh[i] * decay;
        }
        dx[at] = gx;
        ddt[at] = gdt;
    }
    #[unroll]
    for i in 0..n {
        da_terms[pos * n + i] = da[i];
    }
}

/// `out[o] = Σ_{r < count} input[o · step + r · stride]`, one unit per
/// output element, in order of `r`.
#[cube(launch)]
fn sum_kernel<F: Float>(
    input: &Tensor<F>,
    out: &mut Tensor<F>,
    units: usize,
    count: usize,
    stride: usize,
    step: usize,
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= units {
        terminate!();
    }
    let mut acc = F::new(0.0);
    for r in 0..count {
        acc += input[pos * step + r * stride];
    }
    out[pos] = acc;
}

/// `[batch, seq, channels, n]`, checked: x and Δ `[batch, seq, channels]`,
/// A `[channels, n]`, B and C `[batch, seq, n]`, all f32.
fn dims<R: CubeRuntime>(
    x: &CubeTensor<R>,
    dt: &CubeTensor<R>,
    a: &CubeTensor<R>,
    b: &CubeTensor<R>,
    c: &CubeTensor<R>,
) -> [usize; 4] {
    let stream = x.meta.shape().dims::<3>();
    let [batch, seq, channels] = stream;
    let [a_channels, n] = a.meta.shape().dims::<2>();
    assert!(
        dt.meta.shape().dims::<3>() == stream
            && a_channels == channels
            && b.meta.shape().dims::<3>() == [batch, seq, n]
            && c.meta.shape().dims::<3>() == [batch, seq, n],
        "selective_scan: x and dt must be [batch, seq, channels], A [channels, n], B and C \
         [batch, seq, n]"
    );
    assert!(
        channels > 0 && n > 0,
        "selective_scan: channels and state size must be positive"
    );
    assert!(
        [x, dt, a, b, c].iter().all(|t| t.dtype == DType::F32),
        "scan kernels run in f32"
    );
    fits_u32(batch * seq * channels * n);
    [batch, seq, channels, n]
}

/// See [`crate::KernelOps::scan_forward`].
pub(crate) fn forward<R: CubeRuntime>(
    x: CubeTensor<R>,
    dt: CubeTensor<R>,
    a: CubeTensor<R>,
    b: CubeTensor<R>,
    c: CubeTensor<R>,
) -> CubeTensor<R> {
    let [batch, seq, channels, n] = dims(&x, &dt, &a, &b, &c);
    let [x, dt, a, b, c] = [x, dt, a, b, c].map(into_contiguous);
    let y = empty(&x, vec![batch, seq, channels]);
    let units = batch * channels;
    if units * seq == 0 {
        return y;
    }
    let client = x.client.clone();
    let dtype = x.dtype;
    let (count, dim) = launch_size(&client, units);
    forward_kernel::launch::<R>(
        &client,
        count,
        dim,
        x.into_tensor_arg(),
        dt.into_tensor_arg(),
        a.into_tensor_arg(),
        b.into_tensor_arg(),
        c.into_tensor_arg(),
        y.clone().into_tensor_arg(),
        units,
        seq,
        channels,
        n,
        dtype.into(),
    );
    y
}

/// Sums `input` into a new tensor of `dims` (`units` elements):
/// `out[o] = Σ_{r < count} input[o · step + r · stride]`.
fn sum<R: CubeRuntime>(
    input: CubeTensor<R>,
    dims: Vec<usize>,
    count: usize,
    stride: usize,
    step: usize,
) -> CubeTensor<R> {
    let units = dims.iter().product();
    let out = empty(&input, dims);
    let client = input.client.clone();
    let dtype = input.dtype;
    let (cubes, dim) = launch_size(&client, units);
    sum_kernel::launch::<R>(
        &client,
        cubes,
        dim,
        input.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        units,
        count,
        stride,
        step,
        dtype.into(),
    );
    out
}

/// See [`crate::KernelOps::scan_backward`].
pub(crate) fn backward<R: CubeRuntime>(
    x: CubeTensor<R>,
    dt: CubeTensor<R>,
    a: CubeTensor<R>,
    b: CubeTensor<R>,
    c: CubeTensor<R>,
    dy: CubeTensor<R>,
) -> [CubeTensor<R>; 5] {
    let [batch, seq, channels, n] = dims(&x, &dt, &a, &b, &c);
    assert!(
        dy.meta.shape().dims::<3>() == [batch, seq, channels] && dy.dtype == DType::F32,
        "selective_scan backward: the output's gradient must be f32 [batch, seq, channels]"
    );
    let [x, dt, a, b, c, dy] = [x, dt, a, b, c, dy].map(into_contiguous);
    if batch * seq == 0 {
        // No steps: A's gradient is zero, the others have no elements.
        let da = zeros_client(
            a.client.clone(),
            a.device.clone(),
            Shape::new([channels, n]),
            DType::F32,
        );
        let stream = || empty(&x, vec![batch, seq, channels]);
        let state = || empty(&x, vec![batch, seq, n]);
        return [stream(), stream(), da, state(), state()];
    }
    let terms = || empty(&x, vec![batch, seq, n, channels]);
    let (states, db_terms, dc_terms) = (terms(), terms(), terms());
    let dx = empty(&x, vec![batch, seq, channels]);
    let ddt = empty(&x, vec![batch, seq, channels]);
    let da_terms = empty(&x, vec![batch, channels, n]);
    let client = x.client.clone();
    let dtype = x.dtype;
    let units = batch * channels;
    let (count, dim) = launch_size(&client, units);
    backward_kernel::launch::<R>(
        &client,
        count,
        dim,
        x.into_tensor_arg(),
        dt.into_tensor_arg(),
        a.into_tensor_arg(),
        b.into_tensor_arg(),
        c.into_tensor_arg(),
        dy.into_tensor_arg(),
        states.into_tensor_arg(),
        dx.clone().into_tensor_arg(),
        ddt.clone().into_tensor_arg(),
        da_terms.clone().into_tensor_arg(),
        db_terms.clone().into_tensor_arg(),
        dc_terms.clone().into_tensor_arg(),
        units,
        seq,
        channels,
        n,
        dtype.into(),
    );
    // Over the channels (contiguous runs of `channels`), and A's over the batch.
    let db = sum(db_terms, vec![batch, seq, n], channels, 1, channels);
    let dc = sum(dc_terms, vec![batch, seq, n], channels, 1, channels);
    let da = sum(da_terms, vec![channels, n], batch, channels * n, 1);
    [dx, ddt, da, db, dc]
}
