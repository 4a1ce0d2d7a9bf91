//! Fused CPU kernels with their own backward, for the operations that Burn
//! ops on flex compute slowly because they materialise `[batch, heads, seq,
//! seq]` tensors and walk strided views: softmax attention ([`attention`]),
//! multi-head Hyena's Toeplitz-weighted mix ([`toeplitz`]), Hyena's long
//! convolution ([`conv`]), Mamba's selective scan ([`scan`]), gated linear
//! attention's recurrence ([`gla`]), Gated DeltaNet's delta rule
//! ([`delta`]), Mamba-2's per-head scan ([`ssd`]), SwiGLU's gate
//! ([`glu`]), LFM2's gated short convolution ([`gated_conv`]) and the short
//! depthwise convolution of Hyena and Mamba ([`short_conv`]),
//! which they compute as chains of small ops.
//!
//! Each public function is generic over the backend like every layer, and
//! dispatches on its type: for [`Cpu`] (flex) the fused forward, for
//! [`CpuAutodiff`] the fused forward plus a custom backward step registered
//! with burn-autodiff, for any other backend the function composed from
//! Burn ops, which is also the reference the tests compare against (values
//! and gradients); on the CubeCL backends (CUDA, wgpu) attention's core and
//! the long convolution are `mad-kernels`' instead (`layers/cube.rs`). No trait bound leaks into the rest of the crate.
//! The kernels work on host `Vec<f32>`s in parallel on the caller's rayon
//! pool (a daemon worker's pool, or the global one).

use std::any::{Any, TypeId};

use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{TensorData, TensorPrimitive};

use super::{Cpu, CpuAutodiff};

pub mod attention;
pub mod conv;
pub mod delta;
pub mod gated_conv;
pub mod gla;
pub mod glu;
pub mod scan;
pub mod short_conv;
pub mod ssd;
pub mod toeplitz;

pub use attention::{Heads, attention};
pub use toeplitz::toeplitz_mix;

/// Which implementation a backend gets.
pub(crate) enum Dispatch {
    /// `Autodiff<Flex>`: fused forward and backward.
    Autodiff,
    /// `Flex`: fused forward.
    Plain,
    /// Anything else: Burn ops.
    Composite,
}

/// The implementation for backend `B`.
pub(crate) fn dispatch<B: Backend>() -> Dispatch {
    if TypeId::of::<B>() == TypeId::of::<CpuAutodiff>() {
        Dispatch::Autodiff
    } else if TypeId::of::<B>() == TypeId::of::<Cpu>() {
        Dispatch::Plain
    } else {
        Dispatch::Composite
    }
}

/// Whether `B` is flex (with or without autodiff): the backend whose
/// broadcasts are slow and whose kernels here are fused.
pub(crate) fn on_flex<B: Backend>() -> bool {
    !matches!(dispatch::<B>(), Dispatch::Composite)
}

/// `t` as a tensor of backend `To`, which [`dispatch`] found to be the same
/// type as `From`.
///
/// # Panics
/// If the types differ (a bug in the caller).
pub(crate) fn cast<From: Backend, To: Backend, const D: usize>(
    t: Tensor<From, D>,
) -> Tensor<To, D> {
    let boxed: Box<dyn Any> = Box::new(t);
    match boxed.downcast::<Tensor<To, D>>() {
        Ok(t) => *t,
        Err(_) => panic!("fused kernels cast only between equal backend types"),
    }
}

/// The values of a CPU tensor, row-major.
pub(crate) fn host<const D: usize>(t: Tensor<Cpu, D>) -> Vec<f32> {
    t.into_data()
        .into_vec::<f32>()
        .expect("flex float tensors hold f32")
}

/// The values of an autodiff tensor's forward value, row-major.
pub(crate) fn host_of(t: &FloatTensor<CpuAutodiff>) -> Vec<f32> {
    host(Tensor::<Cpu, 3>::from_primitive(TensorPrimitive::Float(
        t.primitive.clone(),
    )))
}

/// A flex tensor of `values` with shape `dims`.
pub(crate) fn primitive(
    values: Vec<f32>,
    dims: [usize; 3],
    device: &burn::tensor::Device<Cpu>,
) -> FloatTensor<Cpu> {
    Tensor::<Cpu, 3>::from_data(TensorData::new(values, dims), device)
        .into_primitive()
        .tensor()
}

/// The gradient arriving at an op's output, on the host, and its device.
pub(crate) fn incoming<S, const N: usize>(
    ops: &Ops<S, N>,
    grads: &mut Gradients,
) -> (Vec<f32>, burn::tensor::Device<Cpu>) {
    let g = grads.consume::<Cpu>(&ops.node);
    let g = Tensor::<Cpu, 3>::from_primitive(TensorPrimitive::Float(g));
    let device = g.device();
    (host(g), device)
}

/// Records a fused op on the autodiff graph: `output` (computed already)
/// becomes the result, with `bw` and `state` run at the backward pass when
/// any of `inputs` is tracked (the state is dropped otherwise).
pub(crate) fn record<BW, const N: usize>(
    bw: BW,
    inputs: [&FloatTensor<CpuAutodiff>; N],
    state: BW::State,
    output: FloatTensor<Cpu>,
) -> Tensor<CpuAutodiff, 3>
where
    BW: Backward<Cpu, N>,
{
    let nodes = inputs.map(|t| t.node.clone());
    let result = match bw
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state, output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    Tensor::from_primitive(TensorPrimitive::Float(result))
}

/// Registers `values[i]` (shape `shapes[i]`) as the gradient of the op's
/// input `i`, for the inputs that need one.
pub(crate) fn give<S, const N: usize>(
    ops: &Ops<S, N>,
    grads: &mut Gradients,
    values: [Vec<f32>; N],
    shapes: [[usize; 3]; N],
    device: &burn::tensor::Device<Cpu>,
) {
    for ((parent, grad), shape) in ops.parents.iter().zip(values).zip(shapes) {
        if let Some(node) = parent {
            grads.register::<Cpu>(node.id, primitive(grad, shape, device));
        }
    }
}

/// `a · b` over the shorter length, in eight interleaved partial sums so
/// that the compiler vectorises it (a single running sum is a dependency
/// chain it may not reorder).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let halves = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    (halves[0] + halves[2]) + (halves[1] + halves[3]) + tail
}

/// `m` (`[rows, cols]`, row-major) transposed: `[cols, rows]`.
pub(crate) fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * cols];
    if cols == 0 {
        return out;
    }
    for (r, row) in m.chunks_exact(cols).take(rows).enumerate() {
        for (c, &x) in row.iter().enumerate() {
            out[c * rows + r] = x;
        }
    }
    out
}

/// `e^x` in single precision, branch-free so that a loop over it vectorises
/// (`f32::exp` is a libm call per element). `x = k ln 2 + r` with `|r| ≤
/// ln 2 / 2` (ln 2 split in two for an exact reduction), `e^r` by the
/// degree-7 minimax polynomial of Cephes' `expf`, `2^k` built in the
/// exponent bits. Relative error ≤ 2e-7 on the normal range; below
/// −87.3 (where `e^x` leaves the normal floats) it returns 0, above 88.3 it
/// saturates at `e^88.3`. NaN gives NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and removing 1.5 · 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let v = x.clamp(-87.3, 88.3);
    let k = (v * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = (v - k * LN2_HI) - k * LN2_LO;
    let p = ((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5;
    let e = (p * r * r + r) + 1.0;
    let scale = f32::from_bits(((k as i32 + 127) as u32) << 23);
    let y = e * scale;
    if x < -87.3 {
        0.0
    } else if x.is_nan() {
        x
    } else {
        y
    }
}

/// The element-wise sum of `partials` (one per batch element, each `len`
/// long), added in their order. A kernel's shared gradient (taps, `A`) is
/// summed this way rather than by a rayon `fold`/`reduce`, whose grouping
/// follows how the work happened to be split: the gradient's bits, and so a
/// resumed run's, would change from run to run.
pub(crate) fn ordered_sum(partials: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut total = vec![0f32; len];
    for p in &partials {
        total.iter_mut().zip(p).for_each(|(x, y)| *x += y);
    }
    total
}

/// `y += alpha · x` over the shorter length.
pub(crate) fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// Asserts that `a` is finite and equals `b` element by element within
/// `tol` relative to `1 + |b|`: a fused kernel against its composite
/// reference.
#[cfg(test)]
pub(crate) fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            x.is_finite() && (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

/// Asserts that `backward` gives the same bits on pools of 1, 3 and 4
/// threads, twice on the last: what [`ordered_sum`] is for.
#[cfg(test)]
pub(crate) fn assert_same_bits_on_any_pool<T>(backward: impl Fn() -> T + Sync)
where
    T: PartialEq + std::fmt::Debug + Send,
{
    let runs: Vec<T> = [1, 3, 4, 4]
        .iter()
        .map(|&threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a test thread pool");
            pool.install(&backward)
        })
        .collect();
    for r in &runs[1..] {
        assert_eq!(r, &runs[0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulps_of_libm_over_the_float_range() {
        let mut worst = 0f64;
        let mut x = -87.3f32;
        while x <= 88.3 {
            let (ours, libm) = (f64::from(exp(x)), f64::from(x).exp());
            worst = worst.max((ours - libm).abs() / libm);
            x += 0.001_37;
        }
        assert!(worst < 2.5e-7, "relative error {worst}");
        for x in [0.0f32, -0.0, 1e-30, -1e-30, 1.0, -1.0] {
            assert!((exp(x) - x.exp()).abs() <= 1.2e-7 * x.exp(), "{x}");
        }
        assert_eq!(exp(-87.4), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-1e30), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(1e30).is_finite() && exp(1e30) > 1e38);
    }

    #[test]
    fn dot_and_axpy_match_the_plain_loops_at_every_length() {
        for n in 0..40 {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let plain: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(x * y)).sum();
            assert!((f64::from(dot(&a, &b)) - plain).abs() < 1e-5, "n = {n}");
            // The shorter length counts.
            assert!(
                (f64::from(dot(&a, &b[..n / 2])) - f64::from(dot(&a[..n / 2], &b))).abs() < 1e-6
            );
            let m: Vec<f32> = (0..n * 3).map(|i| i as f32).collect();
            let t = transpose(&m, n, 3);
            for r in 0..n {
                for c in 0..3 {
                    assert_eq!(t[c * n + r], m[r * 3 + c]);
                }
            }
            assert_eq!(transpose(&t, 3, n), m);
            let mut y = b.clone();
            axpy(0.5, &a, &mut y);
            for i in 0..n {
                assert_eq!(y[i], b[i] + 0.5 * a[i]);
            }
        }
    }
}
