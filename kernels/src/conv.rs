//! Hyena's causal long convolution in CubeCL:
//! `y[b, t, c] = Σ_{s≤t} taps[t − s, c] · v[b, s, c]`, with no Toeplitz
//! matrix (Burn ops build a `[channels, seq, seq]` one per call).
//!
//! One unit per output element; the channel is the fastest index, so
//! neighbouring units read neighbouring channels of `v` and of the taps
//! (lag-major, `[seq, channels]`). Backward: one unit per element of `dv`
//! (the same sum run forwards in time), one per tap for `dtaps` (a sum over
//! the batch and the steps, in a fixed order: deterministic).

use crate::launch::{empty, fits_u32, launch_size};
use burn::tensor::DType;
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

/// `y[b, t, c] = Σ_{s ≤ t} taps[t − s, c] · v[b, s, c]`.
///
/// # Shapes
/// - v, y: `[batch · seq · channels]`; taps: `[seq · channels]`
#[cube(launch)]
fn forward_kernel<F: Float>(
    v: &Tensor<F>,
    taps: &Tensor<F>,
    y: &mut Tensor<F>,
    seq: usize,
    channels: usize,
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= y.len() {
        terminate!();
    }
    let c = pos % channels;
    let t = (pos / channels) % seq;
    let start = pos - t * channels; // (b, 0, c)
    let mut acc = F::new(0.0);
    for s in 0..t + 1 {
        acc += taps[(t - s) * channels + c] * v[start + s * channels];
    }
    y[pos] = acc;
}

/// `dv[b, s, c] = Σ_{t ≥ s} taps[t − s, c] · dy[b, t, c]`.
///
/// # Shapes
/// - dy, dv: `[batch · seq · channels]`; taps: `[seq · channels]`
#[cube(launch)]
fn backward_input_kernel<F: Float>(
    taps: &Tensor<F>,
    dy: &Tensor<F>,
    dv: &mut Tensor<F>,
    seq: usize,
    channels: usize,
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= dv.len() {
        terminate!();
    }
    let c = pos % channels;
    let s = (pos / channels) % seq;
    let start = pos - s * channels;
    let mut acc = F::new(0.0);
    for t in s..seq {
        acc += taps[(t - s) * channels + c] * dy[start + t * channels];
    }
    dv[pos] = acc;
}

/// `dtaps[k, c] = Σ_b Σ_{t ≥ k} dy[b, t, c] · v[b, t − k, c]`.
///
/// # Shapes
/// - v, dy: `[batch · seq · channels]`; dtaps: `[seq · channels]`
#[cube(launch)]
fn backward_taps_kernel<F: Float>(
    v: &Tensor<F>,
    dy: &Tensor<F>,
    dtaps: &mut Tensor<F>,
    batch: usize,
    seq: usize,
    channels: usize,
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= dtaps.len() {
        terminate!();
    }
    let c = pos % channels;
    let k = pos / channels;
    let mut acc = F::new(0.0);
    for b in 0..batch {
        let start = b * seq * channels + c;
        for t in k..seq {
            acc += dy[start + t * channels] * v[start + (t - k) * channels];
        }
    }
    dtaps[pos] = acc;
}

/// `[batch, seq, channels]` of v, checked against the taps `[seq, channels]`.
fn dims<R: CubeRuntime>(v: &CubeTensor<R>, taps: &CubeTensor<R>) -> [usize; 3] {
    let shape = v.meta.shape();
    assert_eq!(
        shape.num_dims(),
        3,
        "causal_conv: v must be [batch, seq, channels]"
    );
    let [batch, seq, channels] = shape.dims::<3>();
    assert_eq!(
        taps.meta.shape().dims::<2>(),
        [seq, channels],
        "causal_conv: the taps must be [seq, channels] (lag-major)"
    );
    assert_eq!(v.dtype, DType::F32, "conv kernels run in f32");
    fits_u32(batch * seq * channels);
    [batch, seq, channels]
}

/// See [`crate::KernelOps::conv_forward`].
pub(crate) fn forward<R: CubeRuntime>(v: CubeTensor<R>, taps: CubeTensor<R>) -> CubeTensor<R> {
    let [batch, seq, channels] = dims(&v, &taps);
    let (v, taps) = (into_contiguous(v), into_contiguous(taps));
    let y = empty(&v, vec![batch, seq, channels]);
    let n = batch * seq * channels;
    if n == 0 {
        return y;
    }
    let client = v.client.clone();
    let dtype = v.dtype;
    let (count, dim) = launch_size(&client, n);
    forward_kernel::launch::<R>(
        &client,
        count,
        dim,
        v.into_tensor_arg(),
        taps.into_tensor_arg(),
        y.clone().into_tensor_arg(),
        seq,
        channels,
        dtype.into(),
    );
    y
}

/// See [`crate::KernelOps::conv_backward`].
pub(crate) fn backward<R: CubeRuntime>(
    v: CubeTensor<R>,
    taps: CubeTensor<R>,
    dy: CubeTensor<R>,
) -> [CubeTensor<R>; 2] {
    let [batch, seq, channels] = dims(&v, &taps);
    let (v, taps, dy) = (
        into_contiguous(v),
        into_contiguous(taps),
        into_contiguous(dy),
    );
    let dv = empty(&v, vec![batch, seq, channels]);
    let dtaps = empty(&v, vec![seq, channels]);
    let client = v.client.clone();
    let dtype = v.dtype;
    let n = batch * seq * channels;
    if n > 0 {
        let (count, dim) = launch_size(&client, n);
        backward_input_kernel::launch::<R>(
            &client,
            count,
            dim,
            taps.into_tensor_arg(),
            dy.clone().into_tensor_arg(),
            dv.clone().into_tensor_arg(),
            seq,
            channels,
            dtype.into(),
        );
    }
    // Also with no batch: the taps' gradient is then zeros, written here.
    if seq * channels > 0 {
        let (count, dim) = launch_size(&client, seq * channels);
        backward_taps_kernel::launch::<R>(
            &client,
            count,
            dim,
            v.into_tensor_arg(),
            dy.into_tensor_arg(),
            dtaps.clone().into_tensor_arg(),
            batch,
            seq,
            channels,
            dtype.into(),
        );
    }
    [dv, dtaps]
}
