//! Tensor helpers that keep Burn 0.21's flex backend on its fast paths.
//!
//! Flex computes a binary op between tensors of different shapes
//! (broadcasting) element by element through strided indexing: adding a
//! `[1, 1, 192]` bias to a `[32, 24, 192]` tensor took 3.1 ms, against 79 µs
//! when the bias is first materialised with `repeat_dim` and added
//! same-shape (`examples/opprobe.rs`, this machine). So every broadcast in
//! the layers goes through [`fit`], and linear layers through [`linear`].
//! (With burn-flex's `simd` feature some broadcast patterns have kernels of
//! their own; measured on whole models, materialising first was still
//! faster: mh-attention + SwiGLU at d 128, batch 32 × 128: 0.87 s against
//! 1.00 s per step; Hyena + SwiGLU 1.08 s against 1.85 s.)

use burn::nn::Linear;
use burn::prelude::*;

/// Materialises `t` at shape `target` by repeating its size-1 dims, so the
/// following binary op is same-shape. Dims that already match are left alone.
///
/// # Panics
/// If a dim of `t` is neither 1 nor the target's.
pub fn fit<B: Backend, const D: usize, K>(t: Tensor<B, D, K>, target: [usize; D]) -> Tensor<B, D, K>
where
    K: burn::tensor::BasicOps<B>,
{
    let dims = t.dims();
    let mut t = t;
    for i in (0..D).rev() {
        if dims[i] != target[i] {
            assert_eq!(dims[i], 1, "cannot fit dim {i} of {dims:?} to {target:?}");
            t = t.repeat_dim(i, target[i]);
        }
    }
    t
}

/// `x W + b` for `x: [..., d_in]`, computed as one 2-D matmul.
///
/// # Shapes
/// - x: `[..., d_in]` → `[..., d_out]`
pub fn linear<B: Backend, const D: usize>(layer: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    let dims = x.dims();
    let d_in = dims[D - 1];
    let rows = dims.iter().take(D - 1).product::<usize>();
    let w = layer.weight.val();
    let d_out = w.dims()[1];
    let y = x.reshape([rows, d_in]).matmul(w);
    let y = match &layer.bias {
        Some(b) => y + fit(b.val().reshape([1, d_out]), [rows, d_out]),
        None => y,
    };
    let mut out = dims;
    out[D - 1] = d_out;
    y.reshape(out)
}

/// `x ⊙ v` with `v: [channels]` scaling the last dim of `x`.
///
/// # Shapes
/// - x: `[..., channels]`; v: `[channels]` → `[..., channels]`
pub fn scale_last<B: Backend, const D: usize>(x: Tensor<B, D>, v: Tensor<B, 1>) -> Tensor<B, D> {
    let dims = x.dims();
    let mut shape = [1usize; D];
    shape[D - 1] = dims[D - 1];
    x * fit(v.reshape(shape), dims)
}

/// The same values in a fresh row-major buffer. Flex keeps slices and
/// permutations as strided views, and every elementwise op on a strided view
/// walks it index by index (40% of a small model's step went to that, before
/// this); copying once, at the view, is far cheaper. Free when `t` is
/// already contiguous.
///
/// # Shapes
/// - t: any → same
pub fn contiguous<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    let dims = t.dims();
    let n = dims.iter().product::<usize>();
    t.reshape([n]).reshape(dims)
}
