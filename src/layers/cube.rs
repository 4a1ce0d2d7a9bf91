//! The CubeCL kernels of `mad-kernels` for the layers, on the backends
//! this build has (`wgpu`, `cuda`; each with and without burn-fusion and
//! autodiff). Like [`super::fused`] for flex, the choice is made on the
//! backend's type, so no trait bound reaches the layers: a backend without
//! kernels gets its inputs back and the layer composes Burn ops.

use burn::prelude::*;

thread_local! {
    /// Calls this thread made into `mad-kernels` (tests check that layers
    /// reach the kernels rather than falling back to Burn ops).
    static CALLS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Calls this thread has made into `mad-kernels` so far.
#[cfg_attr(not(all(test, feature = "wgpu")), allow(dead_code))]
pub(crate) fn calls() -> u64 {
    CALLS.with(|c| c.get())
}

/// Returns `Ok($body)` from the enclosing function, with `$k` the type of
/// backend `$b`, when `$b` is a backend with kernels; falls through
/// otherwise.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
macro_rules! with_kernels {
    ($b:ty, $k:ident => $body:expr) => {{
        #[cfg(feature = "wgpu")]
        with_kernels!(@each $b, $k => $body;
            burn::backend::Wgpu,
            super::device::WgpuPlain,
            burn::backend::Autodiff<burn::backend::Wgpu>,
            burn::backend::Autodiff<super::device::WgpuPlain>);
        #[cfg(feature = "cuda")]
        with_kernels!(@each $b, $k => $body;
            burn::backend::Cuda,
            super::device::CudaPlain,
            burn::backend::Autodiff<burn::backend::Cuda>,
            burn::backend::Autodiff<super::device::CudaPlain>);
    }};
    (@each $b:ty, $k:ident => $body:expr; $($t:ty),*) => {$(
        if std::any::TypeId::of::<$b>() == std::any::TypeId::of::<$t>() {
            type $k = $t;
            CALLS.with(|c| c.set(c.get() + 1));
            return Ok($body);
        }
    )*};
}

/// q, k and v of an attention, handed back when the backend has no kernel.
pub(crate) type Qkv<B> = (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>);

/// Causal softmax attention by `mad-kernels` (each query sees itself and
/// the `window` keys before it; `0`: all), or the inputs back when `B`
/// has no kernels.
///
/// # Shapes
/// - q, k, v: `[batch, heads, seq, hd]` → `[batch, heads, seq, hd]`
#[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(unused_variables))]
pub(crate) fn causal_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    scale: f32,
    window: usize,
) -> Result<Tensor<B, 4>, Qkv<B>> {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    {
        use super::fused::cast;
        use mad_kernels::Kernels;
        with_kernels!(B, K => cast::<K, B, 4>(K::causal_attention(
            cast(q), cast(k), cast(v), scale, window
        )));
    }
    Err((q, k, v))
}

/// Causal convolution `y[b, t, c] = Σ_{s≤t} taps[t − s, c] · v[b, s, c]`
/// by `mad-kernels`, or the inputs back when `B` has no kernels.
///
/// # Shapes
/// - v: `[batch, seq, channels]`; taps: `[seq, channels]` → `[batch, seq, channels]`
pub(crate) fn causal_conv<B: Backend>(
    v: Tensor<B, 3>,
    taps: Tensor<B, 2>,
) -> Result<Tensor<B, 3>, (Tensor<B, 3>, Tensor<B, 2>)> {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    {
        use super::fused::cast;
        use mad_kernels::Kernels;
        with_kernels!(B, K => cast::<K, B, 3>(K::causal_conv(cast(v), cast(taps))));
    }
    Err((v, taps))
}

/// q, k, v and g of a gated recurrence, handed back when the backend has no
/// kernel.
pub(crate) type Qkvg<B> = (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>);

/// Gated linear attention's recurrence `S_t = diag(exp(g_t)) S_{t−1} +
/// k_tᵀ v_t`, `o_t = q_t S_t` by `mad-kernels`, or the inputs back when `B`
/// has no kernels.
///
/// # Shapes
/// - q, k, g: `[batch, heads, seq, dk]`; v: `[batch, heads, seq, dv]` → `[batch, heads, seq, dv]`
pub(crate) fn gated_recurrence<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    g: Tensor<B, 4>,
) -> Result<Tensor<B, 4>, Qkvg<B>> {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    {
        use super::fused::cast;
        use mad_kernels::Kernels;
        with_kernels!(B, K => cast::<K, B, 4>(K::gated_recurrence(
            cast(q), cast(k), cast(v), cast(g)
        )));
    }
    Err((q, k, v, g))
}

/// The streams and taps of a Toeplitz mix, handed back when the backend has
/// no kernel.
pub(crate) type Mix<B> = (Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 2>);

/// Multi-head Hyena's mix `y_t = Σ_{s≤t} taps[h, t − s] (q_t · k_s) v_s`
/// per head (columns `h·hd .. (h+1)·hd`) by `mad-kernels`, or the inputs
/// back when `B` has no kernels.
///
/// # Shapes
/// - q, k, v: `[batch, seq, d]`; taps: `[heads, seq]` → `[batch, seq, d]`
pub(crate) fn toeplitz_mix<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    taps: Tensor<B, 2>,
) -> Result<Tensor<B, 3>, Mix<B>> {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    {
        use super::fused::cast;
        use mad_kernels::Kernels;
        with_kernels!(B, K => cast::<K, B, 3>(K::toeplitz_mix(
            cast(q), cast(k), cast(v), cast(taps)
        )));
    }
    Err((q, k, v, taps))
}

/// The operands of a selective scan, handed back when the backend has no
/// kernel.
pub(crate) type Scan<B> = (
    Tensor<B, 3>,
    Tensor<B, 3>,
    Tensor<B, 2>,
    Tensor<B, 3>,
    Tensor<B, 3>,
);

/// Mamba's selective scan without the `D x` skip (`h_t = exp(Δ_t A) ⊙
/// h_{t−1} + Δ_t x_t B_t`, `y_t = C_t · h_t`) by `mad-kernels`, or the
/// inputs back when `B` has no kernels.
///
/// # Shapes
/// - x, dt: `[batch, seq, d_inner]`; a: `[d_inner, d_state]`; b, c: `[batch, seq, d_state]`
///   → `[batch, seq, d_inner]`
pub(crate) fn selective_scan<B: Backend>(
    x: Tensor<B, 3>,
    dt: Tensor<B, 3>,
    a: Tensor<B, 2>,
    b: Tensor<B, 3>,
    c: Tensor<B, 3>,
) -> Result<Tensor<B, 3>, Scan<B>> {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    {
        use super::fused::cast;
        use mad_kernels::Kernels;
        with_kernels!(B, K => cast::<K, B, 3>(K::selective_scan(
            cast(x), cast(dt), cast(a), cast(b), cast(c)
        )));
    }
    Err((x, dt, a, b, c))
}
