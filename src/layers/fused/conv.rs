//! Hyena's causal long convolution `y[b, t, c] = Σ_{s≤t} h[c, t−s] · v[b, s, c]`
//! as one CPU kernel with its own backward.
//!
//! Composed from Burn ops (`long_conv::causal_conv`) it builds a `[channels,
//! seq, seq]` Toeplitz matrix per call by a gather and a mask, multiplies it
//! with the input permuted to `[channels, seq, batch]`, and permutes back;
//! the backward scatters the Toeplitz gradient into the taps. At the screen's
//! shapes (batch 32, length 64, 512 channels, one thread) `hyena` took 1.95×
//! PyTorch's time. Here the taps are read lag-major (`[seq, channels]`), so
//! each (output step, input step) pair is one multiply-add over the
//! channels, contiguous in the `[batch, seq, channels]` layout: no matrix,
//! no permutation. Same number of multiply-adds as the Toeplitz product
//! (half of it: the zeros above the diagonal are skipped). The forward runs
//! one task per batch element; the backward too, each summing its own tap
//! gradient, added in batch order at the end.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::ops::FloatTensor;
use rayon::prelude::*;

use super::{
    Dispatch, cast, dispatch, give, host, host_of, incoming, ordered_sum, primitive, record,
    transpose,
};
use crate::layers::long_conv;
use crate::layers::{Cpu, CpuAutodiff};

/// Causal convolution of `v` with per-channel filters `h` (first `seq` taps
/// used), as [`long_conv::causal_conv`].
///
/// # Shapes
/// - v: `[batch, seq, channels]`; h: `[channels, ≥ seq]` → `[batch, seq, channels]`
pub fn causal_conv<B: Backend>(v: Tensor<B, 3>, h: Tensor<B, 2>) -> Tensor<B, 3> {
    let [_, seq, channels] = v.dims();
    // Taps as `[1, channels, seq]`: every fused kernel's operand is rank 3.
    let taps = || {
        h.clone()
            .slice([0..channels, 0..seq])
            .reshape([1, channels, seq])
    };
    match dispatch::<B>() {
        Dispatch::Autodiff => cast(conv_autodiff(cast(v), cast(taps()))),
        Dispatch::Plain => cast(conv_plain(cast(v), cast(taps()))),
        Dispatch::Composite => {
            // On a CubeCL backend `mad-kernels`' kernel, with the taps
            // lag-major; elsewhere Burn ops.
            let lag_major = h.clone().slice([0..channels, 0..seq]).swap_dims(0, 1);
            match crate::layers::cube::causal_conv(v, lag_major) {
                Ok(y) => y,
                Err((v, _)) => long_conv::causal_conv(v, h),
            }
        }
    }
}

/// The input and the taps on the host.
#[derive(Clone, Debug)]
struct Inputs {
    /// `[batch, seq, channels]`.
    v: Arc<Vec<f32>>,
    /// Taps lag-major: `[seq, channels]`.
    taps: Arc<Vec<f32>>,
    /// `[batch, seq, channels]`.
    dims: [usize; 3],
}

impl Inputs {
    /// From `v` and the taps as `[channels, seq]`.
    fn new(v: Vec<f32>, h: &[f32], dims: [usize; 3]) -> Inputs {
        let [_, seq, channels] = dims;
        Inputs {
            v: Arc::new(v),
            taps: Arc::new(transpose(h, channels, seq)),
            dims,
        }
    }
}

/// `acc += a ⊙ b`.
fn fma(acc: &mut [f32], a: &[f32], b: &[f32]) {
    for ((y, x), w) in acc.iter_mut().zip(a).zip(b) {
        *y += x * w;
    }
}

fn forward(x: &Inputs) -> Vec<f32> {
    let [batch, seq, c] = x.dims;
    let mut out = vec![0f32; batch * seq * c];
    out.par_chunks_mut(seq * c)
        .zip(x.v.par_chunks(seq * c))
        .for_each(|(y, v)| {
            for t in 0..seq {
                let yt = &mut y[t * c..(t + 1) * c];
                for s in 0..=t {
                    let lag = t - s;
                    fma(yt, &x.taps[lag * c..(lag + 1) * c], &v[s * c..(s + 1) * c]);
                }
            }
        });
    out
}

/// Gradients of `v` (`[batch, seq, channels]`) and of the taps (`[channels,
/// seq]`) from the output gradient `dy`.
fn backward(x: &Inputs, dy: &[f32]) -> [Vec<f32>; 2] {
    let [batch, seq, c] = x.dims;
    let mut dv = vec![0f32; batch * seq * c];
    let partials = dv
        .par_chunks_mut(seq * c)
        .zip(x.v.par_chunks(seq * c))
        .zip(dy.par_chunks(seq * c))
        .map(|((dv, v), g)| {
            let mut dtaps = vec![0f32; seq * c];
            for t in 0..seq {
                let gt = &g[t * c..(t + 1) * c];
                for s in 0..=t {
                    let lag = t - s;
                    fma(
                        &mut dv[s * c..(s + 1) * c],
                        &x.taps[lag * c..(lag + 1) * c],
                        gt,
                    );
                    fma(
                        &mut dtaps[lag * c..(lag + 1) * c],
                        gt,
                        &v[s * c..(s + 1) * c],
                    );
                }
            }
            dtaps
        })
        .collect::<Vec<_>>();
    let dtaps = ordered_sum(partials, seq * c);
    [dv, transpose(&dtaps, seq, c)]
}

fn conv_plain(v: Tensor<Cpu, 3>, taps: Tensor<Cpu, 3>) -> Tensor<Cpu, 3> {
    let dims = v.dims();
    let device = v.device();
    let x = Inputs::new(host(v), &host(taps), dims);
    Tensor::from_data(TensorData::new(forward(&x), dims), &device)
}

#[derive(Debug)]
struct FusedBackward;

impl Backward<Cpu, 2> for FusedBackward {
    type State = Inputs;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let (g, device) = incoming(&ops, grads);
        let x = &ops.state;
        let [_, seq, channels] = x.dims;
        let shapes = [x.dims, [1, channels, seq]];
        give(&ops, grads, backward(x, &g), shapes, &device);
    }
}

fn conv_autodiff(
    v: Tensor<CpuAutodiff, 3>,
    taps: Tensor<CpuAutodiff, 3>,
) -> Tensor<CpuAutodiff, 3> {
    let dims = v.dims();
    let device = v.device();
    let [v, taps]: [FloatTensor<CpuAutodiff>; 2] = [v, taps].map(|t| t.into_primitive().tensor());
    let x = Inputs::new(host_of(&v), &host_of(&taps), dims);
    let output = primitive(forward(&x), dims, &device);
    record(FusedBackward, [&v, &taps], x, output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Init;

    fn close(a: &[f32], b: &[f32], what: &str) {
        crate::layers::fused::assert_close(a, b, 5e-5, what);
    }

    /// Output and the gradients of the input and of the whole filter
    /// (longer than the sequence: its unused taps get zero) equal the
    /// composite's; the inference path gives the same output.
    #[test]
    fn fused_equals_composite_in_values_and_gradients() {
        let device = Default::default();
        for (batch, seq, channels, taps) in [(2, 9, 5, 9), (1, 17, 3, 20), (3, 1, 8, 4)] {
            let run = |fused: bool| {
                let mut init = Init::<CpuAutodiff>::new(5, &device);
                let v = init.normal([batch, seq, channels], 1.0).val();
                let h = init.normal([channels, taps], 0.5).val();
                let y = if fused {
                    causal_conv(v.clone(), h.clone())
                } else {
                    long_conv::causal_conv(v.clone(), h.clone())
                };
                let n = batch * seq * channels;
                let w: Vec<f32> = (0..n).map(|i| ((i * 31 % 11) as f32 - 5.0) / 5.0).collect();
                let w = Tensor::<CpuAutodiff, 3>::from_data(
                    TensorData::new(w, [batch, seq, channels]),
                    &device,
                );
                let grads = (y.clone() * w).sum().backward();
                let dv: Vec<f32> = v.grad(&grads).unwrap().into_data().to_vec().unwrap();
                let dh: Vec<f32> = h.grad(&grads).unwrap().into_data().to_vec().unwrap();
                let y: Vec<f32> = y.into_data().to_vec().unwrap();
                (y, dv, dh)
            };
            let (a, b) = (run(true), run(false));
            let case = format!("batch {batch} seq {seq} channels {channels} taps {taps}");
            close(&a.0, &b.0, &format!("output, {case}"));
            close(&a.1, &b.1, &format!("dv, {case}"));
            close(&a.2, &b.2, &format!("dh, {case}"));
            let mut init = Init::<Cpu>::new(5, &device);
            let v = init.normal([batch, seq, channels], 1.0).val();
            let h = init.normal([channels, taps], 0.5).val();
            let plain: Vec<f32> = causal_conv(v.clone(), h.clone())
                .into_data()
                .to_vec()
                .unwrap();
            let reference: Vec<f32> = long_conv::causal_conv(v, h).into_data().to_vec().unwrap();
            close(&plain, &reference, &format!("inference, {case}"));
        }
    }

    /// The taps' gradient is summed in batch order: the same bits on every
    /// run whatever the thread count and the work's split.
    #[test]
    fn the_backward_is_bitwise_deterministic() {
        let (batch, seq, c) = (16, 12, 5);
        let values = |n: usize, f: f32| (0..n).map(|i| (i as f32 * f).sin()).collect::<Vec<f32>>();
        let x = Inputs::new(
            values(batch * seq * c, 0.37),
            &values(c * seq, 0.11),
            [batch, seq, c],
        );
        let dy = values(batch * seq * c, 0.23);
        crate::layers::fused::assert_same_bits_on_any_pool(|| backward(&x, &dy));
    }
}
