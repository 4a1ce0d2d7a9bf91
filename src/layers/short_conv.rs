//! Depthwise causal convolution with a short kernel (Hyena's short filter,
//! Mamba's conv): `y[t, c] = b[c] + Σ_{j<k} w[c, j] · x[t − (k−1) + j, c]`,
//! zero-padded on the left. On the CPU backends one fused kernel
//! ([`super::fused::short_conv`]); elsewhere [`composite`], a sum of k
//! shifted copies, which is causal by construction.

use burn::module::Param;
use burn::prelude::*;

use super::Init;
use super::ops::fit;

/// A depthwise causal convolution over `[batch, seq, channels]`.
#[derive(Module, Debug)]
pub struct ShortConv<B: Backend> {
    /// Taps, `[kernel, channels]`; tap `kernel − 1` multiplies the current position.
    pub weight: Param<Tensor<B, 2>>,
    /// Per-channel bias, `[channels]`.
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> ShortConv<B> {
    /// PyTorch's `Conv1d(groups = channels)` init: weight and bias U(±1/√kernel).
    pub fn new(channels: usize, kernel: usize, init: &mut Init<'_, B>) -> ShortConv<B> {
        let bound = 1.0 / (kernel as f64).sqrt();
        ShortConv {
            weight: init.uniform([kernel, channels], bound),
            bias: init.uniform([channels], bound),
        }
    }

    /// # Shapes
    /// - x: `[batch, seq, channels]` → `[batch, seq, channels]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        super::fused::short_conv::short_conv(x, self.weight.val(), self.bias.val())
    }
}

/// The convolution composed from Burn ops: the bias plus `kernel` shifted
/// copies of `x`, each times its tap. What backends without a fused kernel
/// run, and the reference the kernel is tested against.
///
/// # Shapes
/// - x: `[batch, seq, channels]`; w: `[kernel, channels]`; bias: `[channels]`
///   → `[batch, seq, channels]`
pub fn composite<B: Backend>(x: Tensor<B, 3>, w: Tensor<B, 2>, bias: Tensor<B, 1>) -> Tensor<B, 3> {
    let [batch, seq, channels] = x.dims();
    let [kernel, _] = w.dims();
    let dims = [batch, seq, channels];
    let mut y = fit(bias.reshape([1, 1, channels]), dims);
    for j in 0..kernel {
        let shift = kernel - 1 - j;
        let tap = w.clone().narrow(0, j, 1).reshape([1, 1, channels]);
        let shifted = shift_right(x.clone(), shift);
        y = y + shifted * fit(tap, dims);
    }
    y
}

/// Delays a sequence by `shift` steps along dim 1, filling with zeros.
///
/// # Shapes
/// - x: `[batch, seq, channels]` → `[batch, seq, channels]`
pub fn shift_right<B: Backend>(x: Tensor<B, 3>, shift: usize) -> Tensor<B, 3> {
    let [batch, seq, channels] = x.dims();
    if shift == 0 {
        return x;
    }
    if shift >= seq {
        return x.zeros_like();
    }
    let pad = Tensor::zeros([batch, shift, channels], &x.device());
    Tensor::cat(vec![pad, x.slice([0..batch, 0..seq - shift])], 1)
}
