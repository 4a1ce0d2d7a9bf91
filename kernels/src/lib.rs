//! CubeCL kernels of mad-search's sequence mixers, registered as Burn custom
//! ops on the CubeCL backends (CUDA and wgpu, with or without burn-fusion,
//! with or without autodiff): what `layers/fused/` is for the CPU.
//!
//! Composed from Burn ops, causal attention materialises `[batch, heads,
//! seq, seq]` scores, their mask, the softmax and each of their gradients;
//! at the protocol's shape (batch 128, 16 heads, length 128) every one of
//! them is 134 MB of memory traffic. [`Kernels::causal_attention`] is one
//! kernel forward and two backward instead (flash attention's recurrence:
//! online softmax forward, probabilities recomputed from the saved
//! log-sum-exp backward), with nothing of size `seq²` in memory; likewise Hyena's long
//! convolution, [`Kernels::causal_conv`], without a Toeplitz matrix, and
//! gated linear attention's recurrence, [`Kernels::gated_recurrence`],
//! without chunk tensors or stored states, multi-head Hyena's mix,
//! [`Kernels::toeplitz_mix`], without its `[heads, seq, seq]` matrix or the
//! scores, and Mamba's selective scan, [`Kernels::selective_scan`], with the
//! state in registers instead of `[batch, seq, d_inner, d_state]` decays
//! and a log-depth scan over them.
//!
//! The layers are generic over the backend, so they reach these kernels
//! through [`Kernels`], which every CubeCL backend type implements:
//! `CubeBackend<R, ..>`, `Fusion<B>` (the kernel runs as a custom
//! operation in the fusion stream, lazily, as Burn's own ops do) and
//! `Autodiff<B, C>` over either (the forward saves what the backward
//! needs; the backward is kernels too). The element type is `f32`, the one
//! mad-search trains in.
//!
//! Tested against the same functions composed from Burn ops ([`reference`]),
//! values and gradients, by mad-search's `layers::tests_gpu` on wgpu
//! (lavapipe, Mesa's software Vulkan, in CI).

#![warn(missing_docs)]

use burn::prelude::*;
use burn::tensor::ops::FloatTensor;

mod attention;
mod autodiff;
mod conv;
mod cube;
mod fusion;
mod gla;
mod launch;
pub mod reference;
mod scan;
mod toeplitz;

/// The kernels' primitive operations, forward and backward, on a backend
/// that runs CubeCL (`CubeBackend` and `Fusion` over it). Layers call
/// [`Kernels`] instead, which adds autodiff.
pub trait KernelOps: Backend {
    /// Causal softmax attention per head, each query seeing itself and
    /// the `window` keys before it (`0`: every earlier key), and the
    /// log-sum-exp of each query's scaled scores (for the backward).
    ///
    /// # Shapes
    /// - q, k, v: `[batch, heads, seq, hd]`
    /// - output: `([batch, heads, seq, hd], [batch, heads, seq])`
    fn attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
        window: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// The gradients of q, k and v given the forward's inputs, output,
    /// log-sum-exp and the output's gradient.
    ///
    /// # Shapes
    /// - q, k, v, out, dout: `[batch, heads, seq, hd]`; lse: `[batch, heads, seq]`
    /// - output: `[dq, dk, dv]`, each `[batch, heads, seq, hd]`
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        dout: FloatTensor<Self>,
        scale: f32,
        window: usize,
    ) -> [FloatTensor<Self>; 3];

    /// Causal convolution of each channel with its own taps, lag-major:
    /// `y[b, t, c] = Σ_{s≤t} taps[t − s, c] · v[b, s, c]`.
    ///
    /// # Shapes
    /// - v: `[batch, seq, channels]`; taps: `[seq, channels]` → `[batch, seq, channels]`
    fn conv_forward(v: FloatTensor<Self>, taps: FloatTensor<Self>) -> FloatTensor<Self>;

    /// The gradients of v and the taps given the output's gradient.
    ///
    /// # Shapes
    /// - v, dy: `[batch, seq, channels]`; taps: `[seq, channels]`
    /// - output: `[dv, dtaps]`
    fn conv_backward(
        v: FloatTensor<Self>,
        taps: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 2];

    /// Gated linear attention's recurrence per head: `S_t = diag(exp(g_t))
    /// S_{t−1} + k_tᵀ v_t`, `o_t = q_t S_t`, from `S_{−1} = 0`.
    ///
    /// # Shapes
    /// - q, k, g: `[batch, heads, seq, dk]`; v: `[batch, heads, seq, dv]` → `[batch, heads, seq, dv]`
    fn gla_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        g: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// The gradients of q, k, v and g given the output's gradient.
    ///
    /// # Shapes
    /// - q, k, g: `[batch, heads, seq, dk]`; v, dout: `[batch, heads, seq, dv]`
    /// - output: `[dq, dk, dv, dg]`
    fn gla_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        g: FloatTensor<Self>,
        dout: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 4];

    /// Multi-head Hyena's mix: per head `h` (columns `h·hd .. (h+1)·hd`),
    /// `y_t = Σ_{s≤t} taps[h, t − s] (q_t · k_s) v_s`.
    ///
    /// # Shapes
    /// - q, k, v: `[batch, seq, d]`; taps: `[heads, seq]` → `[batch, seq, d]`
    fn toeplitz_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        taps: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// The gradients of q, k, v and the taps given the output's gradient.
    ///
    /// # Shapes
    /// - q, k, v, dout: `[batch, seq, d]`; taps: `[heads, seq]`
    /// - output: `[dq, dk, dv, dtaps]`
    fn toeplitz_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        taps: FloatTensor<Self>,
        dout: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 4];

    /// Mamba's selective scan per (batch, channel `d`): `h_t = exp(Δ_t
    /// A[d]) ⊙ h_{t−1} + Δ_t x_t B_t`, `y_t = C_t · h_t`, from `h_0 = 0`.
    ///
    /// # Shapes
    /// - x, dt: `[batch, seq, channels]`; a: `[channels, n]`; b, c: `[batch, seq, n]`
    ///   → `[batch, seq, channels]`
    fn scan_forward(
        x: FloatTensor<Self>,
        dt: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        c: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// The gradients of x, Δ, A, B and C given the output's gradient.
    ///
    /// # Shapes
    /// - x, dt, dy: `[batch, seq, channels]`; a: `[channels, n]`; b, c: `[batch, seq, n]`
    /// - output: `[dx, ddt, da, db, dc]`, each the shape of its input
    fn scan_backward(
        x: FloatTensor<Self>,
        dt: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        c: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 5];
}

/// The kernels as layers use them: tensors in, tensors out, gradients
/// recorded where the backend is an autodiff one.
pub trait Kernels: Backend {
    /// `softmax(Q Kᵀ · scale + causal mask) V` per head, each query seeing
    /// itself and the `window` keys before it (`0`: every earlier key).
    ///
    /// # Shapes
    /// - q, k, v: `[batch, heads, seq, hd]` → `[batch, heads, seq, hd]`
    ///
    /// # Panics
    /// If the shapes differ or the element type is not `f32`.
    fn causal_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        scale: f32,
        window: usize,
    ) -> Tensor<Self, 4>;

    /// Causal convolution of each channel with its own taps, given
    /// lag-major: `y[b, t, c] = Σ_{s≤t} taps[t − s, c] · v[b, s, c]`.
    ///
    /// # Shapes
    /// - v: `[batch, seq, channels]`; taps: `[seq, channels]` → `[batch, seq, channels]`
    ///
    /// # Panics
    /// If the taps' shape is not `[seq, channels]` or the element type is not `f32`.
    fn causal_conv(v: Tensor<Self, 3>, taps: Tensor<Self, 2>) -> Tensor<Self, 3>;

    /// Gated linear attention's recurrence per head: `S_t = diag(exp(g_t))
    /// S_{t−1} + k_tᵀ v_t`, `o_t = q_t S_t`, from `S_{−1} = 0` (`g` the
    /// log-decays; the layer scales q beforehand).
    ///
    /// # Shapes
    /// - q, k, g: `[batch, heads, seq, dk]`; v: `[batch, heads, seq, dv]` → `[batch, heads, seq, dv]`
    ///
    /// # Panics
    /// If the shapes disagree, a head dim is 0 or the element type is not `f32`.
    fn gated_recurrence(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        g: Tensor<Self, 4>,
    ) -> Tensor<Self, 4>;

    /// Multi-head Hyena's mix `(T ⊙ Q Kᵀ) V` per head, `T[h, t, s] =
    /// taps[h, t − s]` below and on the diagonal: `y_t = Σ_{s≤t}
    /// taps[h, t − s] (q_t · k_s) v_s`, head `h` being columns
    /// `h·hd .. (h+1)·hd` of the streams.
    ///
    /// # Shapes
    /// - q, k, v: `[batch, seq, d]`; taps: `[heads, seq]` → `[batch, seq, d]`
    ///
    /// # Panics
    /// If the streams' shapes differ, `d` or `heads` is 0, `heads` does not
    /// divide `d`, the taps are not `[heads, seq]` or the element type is
    /// not `f32`.
    fn toeplitz_mix(
        q: Tensor<Self, 3>,
        k: Tensor<Self, 3>,
        v: Tensor<Self, 3>,
        taps: Tensor<Self, 2>,
    ) -> Tensor<Self, 3>;

    /// Mamba's selective scan without the `D x` skip: per (batch, channel
    /// `d`), `h_t = exp(Δ_t A[d]) ⊙ h_{t−1} + Δ_t x_t B_t`, `y_t = C_t ·
    /// h_t`, from `h_0 = 0`.
    ///
    /// # Shapes
    /// - x, dt: `[batch, seq, channels]`; a: `[channels, n]`; b, c: `[batch, seq, n]`
    ///   → `[batch, seq, channels]`
    ///
    /// # Panics
    /// If the shapes disagree, `channels` or `n` is 0, or the element type
    /// is not `f32`.
    fn selective_scan(
        x: Tensor<Self, 3>,
        dt: Tensor<Self, 3>,
        a: Tensor<Self, 2>,
        b: Tensor<Self, 3>,
        c: Tensor<Self, 3>,
    ) -> Tensor<Self, 3>;
}

/// The forward of a backend without autodiff.
fn attention_plain<B: KernelOps>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    scale: f32,
    window: usize,
) -> Tensor<B, 4> {
    check_shapes(&q, &k, &v);
    let (out, _) = B::attention_forward(
        q.into_primitive().tensor(),
        k.into_primitive().tensor(),
        v.into_primitive().tensor(),
        scale,
        window,
    );
    Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(out))
}

/// The convolution of a backend without autodiff.
fn conv_plain<B: KernelOps>(v: Tensor<B, 3>, taps: Tensor<B, 2>) -> Tensor<B, 3> {
    check_taps(&v, &taps);
    let y = B::conv_forward(v.into_primitive().tensor(), taps.into_primitive().tensor());
    Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(y))
}

/// The recurrence of a backend without autodiff.
fn gla_plain<B: KernelOps>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    g: Tensor<B, 4>,
) -> Tensor<B, 4> {
    check_gla(&q, &k, &v, &g);
    let [q, k, v, g] = [q, k, v, g].map(|t| t.into_primitive().tensor());
    Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(B::gla_forward(
        q, k, v, g,
    )))
}

/// The mix of a backend without autodiff.
fn toeplitz_plain<B: KernelOps>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    taps: Tensor<B, 2>,
) -> Tensor<B, 3> {
    check_toeplitz(&q, &k, &v, &taps);
    let [q, k, v] = [q, k, v].map(|t| t.into_primitive().tensor());
    let taps = taps.into_primitive().tensor();
    Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(B::toeplitz_forward(
        q, k, v, taps,
    )))
}

/// The scan's forward on a backend without autodiff.
fn scan_plain<B: KernelOps>(
    x: Tensor<B, 3>,
    dt: Tensor<B, 3>,
    a: Tensor<B, 2>,
    b: Tensor<B, 3>,
    c: Tensor<B, 3>,
) -> Tensor<B, 3> {
    check_scan(&x, &dt, &a, &b, &c);
    let [x, dt, b, c] = [x, dt, b, c].map(|t| t.into_primitive().tensor());
    let a = a.into_primitive().tensor();
    Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(B::scan_forward(
        x, dt, a, b, c,
    )))
}

/// Panics with the shapes when the scan's operands disagree.
fn check_scan<B: Backend>(
    x: &Tensor<B, 3>,
    dt: &Tensor<B, 3>,
    a: &Tensor<B, 2>,
    b: &Tensor<B, 3>,
    c: &Tensor<B, 3>,
) {
    check_f32(&[x.dtype(), dt.dtype(), a.dtype(), b.dtype(), c.dtype()]);
    let [batch, seq, channels] = x.dims();
    let [a_channels, n] = a.dims();
    assert!(
        dt.dims() == x.dims()
            && a_channels == channels
            && b.dims() == [batch, seq, n]
            && c.dims() == [batch, seq, n]
            && channels > 0
            && n > 0,
        "selective_scan: x {:?} and dt {:?} must be [batch, seq, channels], A {:?} [channels, n] \
         and B {:?}, C {:?} [batch, seq, n], channels and n positive",
        x.dims(),
        dt.dims(),
        a.dims(),
        b.dims(),
        c.dims()
    );
}

/// Panics with the shapes when the streams and taps of a mix disagree.
fn check_toeplitz<B: Backend>(
    q: &Tensor<B, 3>,
    k: &Tensor<B, 3>,
    v: &Tensor<B, 3>,
    taps: &Tensor<B, 2>,
) {
    check_f32(&[q.dtype(), k.dtype(), v.dtype(), taps.dtype()]);
    let [_, seq, d] = q.dims();
    let [heads, taps_seq] = taps.dims();
    assert!(
        k.dims() == q.dims()
            && v.dims() == q.dims()
            && heads > 0
            && d % heads == 0
            && d > 0
            && taps_seq == seq,
        "toeplitz_mix: q {:?}, k {:?}, v {:?} must be one [batch, seq, d] and the taps {:?} \
         [heads, seq] with heads dividing d",
        q.dims(),
        k.dims(),
        v.dims(),
        taps.dims()
    );
}

/// Panics with the shapes when q, k, v and g of a recurrence disagree.
fn check_gla<B: Backend>(q: &Tensor<B, 4>, k: &Tensor<B, 4>, v: &Tensor<B, 4>, g: &Tensor<B, 4>) {
    check_f32(&[q.dtype(), k.dtype(), v.dtype(), g.dtype()]);
    let [b, h, seq, dk] = q.dims();
    let [vb, vh, vseq, dv] = v.dims();
    assert!(
        k.dims() == q.dims() && g.dims() == q.dims() && [vb, vh, vseq] == [b, h, seq],
        "gated_recurrence: q {:?}, k {:?}, g {:?} must be [batch, heads, seq, dk] and v {:?} \
         [batch, heads, seq, dv]",
        q.dims(),
        k.dims(),
        g.dims(),
        v.dims()
    );
    assert!(
        dk > 0 && dv > 0,
        "gated_recurrence: head dims must be positive"
    );
}

/// Panics when an operand is not `f32` (the kernels' element type): here,
/// at the call, rather than when a fusion stream runs the kernel.
fn check_f32(dtypes: &[burn::tensor::DType]) {
    assert!(
        dtypes.iter().all(|d| *d == burn::tensor::DType::F32),
        "mad-kernels run in f32; got {dtypes:?}"
    );
}

/// Panics with the shapes when the taps are not `[seq, channels]` of v.
fn check_taps<B: Backend>(v: &Tensor<B, 3>, taps: &Tensor<B, 2>) {
    check_f32(&[v.dtype(), taps.dtype()]);
    let [_, seq, channels] = v.dims();
    assert!(
        taps.dims() == [seq, channels],
        "causal_conv: taps {:?} must be [seq, channels] = [{seq}, {channels}] (lag-major)",
        taps.dims()
    );
}

/// Panics with the shapes when q, k and v disagree.
fn check_shapes<B: Backend>(q: &Tensor<B, 4>, k: &Tensor<B, 4>, v: &Tensor<B, 4>) {
    check_f32(&[q.dtype(), k.dtype(), v.dtype()]);
    assert!(
        q.dims() == k.dims() && k.dims() == v.dims(),
        "causal_attention: q {:?}, k {:?} and v {:?} must have one shape [batch, heads, seq, hd]",
        q.dims(),
        k.dims(),
        v.dims()
    );
}

impl<R, F, I, BT> Kernels for burn_cubecl::CubeBackend<R, F, I, BT>
where
    R: burn_cubecl::CubeRuntime,
    F: burn_cubecl::FloatElement,
    I: burn_cubecl::IntElement,
    BT: burn_cubecl::BoolElement,
{
    fn causal_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        scale: f32,
        window: usize,
    ) -> Tensor<Self, 4> {
        attention_plain(q, k, v, scale, window)
    }

    fn causal_conv(v: Tensor<Self, 3>, taps: Tensor<Self, 2>) -> Tensor<Self, 3> {
        conv_plain(v, taps)
    }

    fn gated_recurrence(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        g: Tensor<Self, 4>,
    ) -> Tensor<Self, 4> {
        gla_plain(q, k, v, g)
    }

    fn toeplitz_mix(
        q: Tensor<Self, 3>,
        k: Tensor<Self, 3>,
        v: Tensor<Self, 3>,
        taps: Tensor<Self, 2>,
    ) -> Tensor<Self, 3> {
        toeplitz_plain(q, k, v, taps)
    }

    fn selective_scan(
        x: Tensor<Self, 3>,
        dt: Tensor<Self, 3>,
        a: Tensor<Self, 2>,
        b: Tensor<Self, 3>,
        c: Tensor<Self, 3>,
    ) -> Tensor<Self, 3> {
        scan_plain(x, dt, a, b, c)
    }
}

impl<B: burn_fusion::FusionBackend + KernelOps> Kernels for burn_fusion::Fusion<B> {
    fn causal_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        scale: f32,
        window: usize,
    ) -> Tensor<Self, 4> {
        attention_plain(q, k, v, scale, window)
    }

    fn causal_conv(v: Tensor<Self, 3>, taps: Tensor<Self, 2>) -> Tensor<Self, 3> {
        conv_plain(v, taps)
    }

    fn gated_recurrence(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        g: Tensor<Self, 4>,
    ) -> Tensor<Self, 4> {
        gla_plain(q, k, v, g)
    }

    fn toeplitz_mix(
        q: Tensor<Self, 3>,
        k: Tensor<Self, 3>,
        v: Tensor<Self, 3>,
        taps: Tensor<Self, 2>,
    ) -> Tensor<Self, 3> {
        toeplitz_plain(q, k, v, taps)
    }

    fn selective_scan(
        x: Tensor<Self, 3>,
        dt: Tensor<Self, 3>,
        a: Tensor<Self, 2>,
        b: Tensor<Self, 3>,
        c: Tensor<Self, 3>,
    ) -> Tensor<Self, 3> {
        scan_plain(x, dt, a, b, c)
    }
}
