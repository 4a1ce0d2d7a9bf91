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

/// `t` at shape `target`, its size-1 dims broadcast: on flex materialised
/// by repeating them, so the following binary op is same-shape; on the
/// CubeCL backends an expanded view (stride 0), which their kernels read
/// without a copy (materialising there cost a `[batch, heads, T, T]` write
/// per attention mask). Dims that already match are left alone.
///
/// # Panics
/// If a dim of `t` is neither 1 nor the target's.
pub fn fit<B: Backend, const D: usize, K>(t: Tensor<B, D, K>, target: [usize; D]) -> Tensor<B, D, K>
where
    K: burn::tensor::BasicOps<B>,
{
    let dims = t.dims();
    if !super::fused::on_flex::<B>() {
        for i in 0..D {
            assert!(
                dims[i] == target[i] || dims[i] == 1,
                "cannot fit dim {i} of {dims:?} to {target:?}"
            );
        }
        return if dims == target { t } else { t.expand(target) };
    }
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

/// GELU with the tanh approximation, `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`,
/// computed as the equal `x·σ(2·√(2/π)·x·(1 + 0.044715·x²))`: one `square`
/// and one sigmoid instead of Burn's `powf_scalar(3)` and `tanh` (`mlp`
/// layer on `[128, 128, 128]`, forward + backward, 2 threads: 861 ms with
/// `gelu_approximate`, 427 ms with this; `cargo bench --bench torch --
/// --only mlp --layers`).
///
/// # Shapes
/// - x: any → same
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    const TWO_SQRT_2_OVER_PI: f64 =
        2.0 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2;
    let inner = x.clone() * (x.clone().square() * 0.044715 + 1.0) * TWO_SQRT_2_OVER_PI;
    x * burn::tensor::activation::sigmoid(inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Cpu;
    use burn::tensor::TensorData;
    use burn::tensor::activation::gelu_approximate;

    #[test]
    fn gelu_tanh_equals_burns_gelu_approximate() {
        let v: Vec<f32> = (-80..=80).map(|i| i as f32 * 0.1).collect();
        let n = v.len();
        let x = Tensor::<Cpu, 1>::from_data(TensorData::new(v, [n]), &Default::default());
        let ours: Vec<f32> = gelu_tanh(x.clone()).into_data().to_vec().unwrap();
        let burn: Vec<f32> = gelu_approximate(x).into_data().to_vec().unwrap();
        for (a, b) in ours.iter().zip(&burn) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }
}
