//! The depthwise causal short convolution (Hyena's short filter, Mamba's
//! conv) `y[b, t, c] = bias[c] + Σ_{j<k} w[j, c] · x[b, t − (k−1) + j, c]`
//! as one CPU kernel with its own backward.
//!
//! Composed from Burn ops (`short_conv::composite`) it is `k` shifted copies
//! of the input (a zero block concatenated with a slice), each multiplied by
//! a broadcast tap and summed: at the screen's shapes the copies, their
//! broadcasts and, in the backward, the slices' scatters were a fifth of an
//! `mh-hyena` model's step (`perf` of `cargo bench --bench torch -- --models
//! --only "mh-hyena swiglu mh-hyena" --batch 32 --seq 64 --threads 1`).
//! Here each output row is the bias plus `k` multiply-adds of contiguous
//! input rows over the channels; the backward is the same walk transposed.
//! One task per batch element; the taps' and bias' gradients are summed per
//! task and added in batch order.

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
};
use crate::layers::short_conv;
use crate::layers::{Cpu, CpuAutodiff};

/// The short convolution of `x` with taps `w` and `bias`, as
/// [`short_conv::composite`].
///
/// # Shapes
/// - x: `[batch, seq, channels]`; w: `[kernel, channels]` (tap `kernel − 1`
///   multiplies the current position); bias: `[channels]` → `[batch, seq, channels]`
pub fn short_conv<B: Backend>(
    x: Tensor<B, 3>,
    w: Tensor<B, 2>,
    bias: Tensor<B, 1>,
) -> Tensor<B, 3> {
    let channels = x.dims()[2];
    // Every fused kernel's operand is rank 3.
    let w3 = || w.clone().unsqueeze::<3>();
    let b3 = || bias.clone().reshape([1, 1, channels]);
    match dispatch::<B>() {
        Dispatch::Autodiff => cast(conv_autodiff([cast(x), cast(w3()), cast(b3())])),
        Dispatch::Plain => cast(conv_plain([cast(x), cast(w3()), cast(b3())])),
        Dispatch::Composite => short_conv::composite(x, w, bias),
    }
}

/// The operands on the host.
#[derive(Clone, Debug)]
struct Inputs {
    /// `[batch, seq, channels]`.
    x: Arc<Vec<f32>>,
    /// `[kernel, channels]`.
    w: Arc<Vec<f32>>,
    /// `[channels]`.
    bias: Arc<Vec<f32>>,
    /// `[batch, seq, channels]`.
    dims: [usize; 3],
    /// Taps per channel.
    kernel: usize,
}

impl Inputs {
    /// From x, the taps as `[1, kernel, channels]` and the bias as `[1, 1, channels]`.
    fn new([x, w, bias]: [Vec<f32>; 3], dims: [usize; 3], kernel: usize) -> Inputs {
        Inputs {
            x: Arc::new(x),
            w: Arc::new(w),
            bias: Arc::new(bias),
            dims,
            kernel,
        }
    }
}

/// `acc += a ⊙ b`.
pub(super) fn fma(acc: &mut [f32], a: &[f32], b: &[f32]) {
    for ((y, x), w) in acc.iter_mut().zip(a).zip(b) {
        *y += x * w;
    }
}

/// The taps `j` that reach output step `t` from input step `s = t − (k−1) + j ≥ 0`.
pub(super) fn taps(t: usize, kernel: usize) -> std::ops::Range<usize> {
    (kernel - 1).saturating_sub(t)..kernel
}

fn forward(s: &Inputs) -> Vec<f32> {
    let [batch, seq, c] = s.dims;
    let k = s.kernel;
    let mut out = vec![0f32; batch * seq * c];
    out.par_chunks_mut(seq * c)
        .zip(s.x.par_chunks(seq * c))
        .for_each(|(y, x)| {
            for t in 0..seq {
                let yt = &mut y[t * c..(t + 1) * c];
                yt.copy_from_slice(&s.bias);
                for j in taps(t, k) {
                    let src = t + j + 1 - k;
                    fma(yt, &s.w[j * c..(j + 1) * c], &x[src * c..(src + 1) * c]);
                }
            }
        });
    out
}

/// Gradients of x (`[batch, seq, channels]`), the taps (`[kernel,
/// channels]`) and the bias (`[channels]`) from the output gradient `dy`.
fn backward(s: &Inputs, dy: &[f32]) -> [Vec<f32>; 3] {
    let [batch, seq, c] = s.dims;
    let k = s.kernel;
    let mut dx = vec![0f32; batch * seq * c];
    let partials = dx
        .par_chunks_mut(seq * c)
        .zip(s.x.par_chunks(seq * c))
        .zip(dy.par_chunks(seq * c))
        .map(|((dx, x), g)| {
            let mut sums = vec![0f32; (k + 1) * c];
            let (dw, db) = sums.split_at_mut(k * c);
            for t in 0..seq {
                let gt = &g[t * c..(t + 1) * c];
                db.iter_mut().zip(gt).for_each(|(d, g)| *d += g);
                for j in taps(t, k) {
                    let src = t + j + 1 - k;
                    let tap = j * c..(j + 1) * c;
                    fma(&mut dx[src * c..(src + 1) * c], &s.w[tap.clone()], gt);
                    fma(&mut dw[tap], gt, &x[src * c..(src + 1) * c]);
                }
            }
            sums
        })
        .collect::<Vec<_>>();
    let sums = ordered_sum(partials, (k + 1) * c);
    let (dw, db) = sums.split_at(k * c);
    [dx, dw.to_vec(), db.to_vec()]
}

fn conv_plain(t: [Tensor<Cpu, 3>; 3]) -> Tensor<Cpu, 3> {
    let (dims, kernel) = (t[0].dims(), t[1].dims()[1]);
    let device = t[0].device();
    let s = Inputs::new(t.map(host), dims, kernel);
    Tensor::from_data(TensorData::new(forward(&s), dims), &device)
}

#[derive(Debug)]
struct FusedBackward;

impl Backward<Cpu, 3> for FusedBackward {
    type State = Inputs;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let (g, device) = incoming(&ops, grads);
        let s = &ops.state;
        let c = s.dims[2];
        let shapes = [s.dims, [1, s.kernel, c], [1, 1, c]];
        give(&ops, grads, backward(s, &g), shapes, &device);
    }
}

fn conv_autodiff(t: [Tensor<CpuAutodiff, 3>; 3]) -> Tensor<CpuAutodiff, 3> {
    let (dims, kernel) = (t[0].dims(), t[1].dims()[1]);
    let device = t[0].device();
    let p: [FloatTensor<CpuAutodiff>; 3] = t.map(|t| t.into_primitive().tensor());
    let s = Inputs::new(p.each_ref().map(host_of), dims, kernel);
    let output = primitive(forward(&s), dims, &device);
    let [x, w, bias] = &p;
    record(FusedBackward, [x, w, bias], s, output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Init;

    fn close(a: &[f32], b: &[f32], what: &str) {
        crate::layers::fused::assert_close(a, b, 1e-5, what);
    }

    /// Output and the gradients of the input, taps and bias equal the
    /// composite's, for kernels shorter than, as long as and longer than the
    /// sequence; the inference path gives the same output.
    #[test]
    fn fused_equals_composite_in_values_and_gradients() {
        let device = Default::default();
        for (batch, seq, channels, kernel) in
            [(2, 9, 5, 4), (1, 3, 7, 3), (3, 2, 4, 4), (2, 16, 9, 1)]
        {
            let operands = || {
                let mut init = Init::<Cpu>::new(7, &device);
                [
                    init.normal([batch, seq, channels], 1.0).val().into_data(),
                    init.normal([1, kernel, channels], 0.5).val().into_data(),
                    init.normal([1, 1, channels], 0.5).val().into_data(),
                ]
            };
            let run = |fused: bool| {
                let [x, w, b] = operands()
                    .map(|d| Tensor::<CpuAutodiff, 3>::from_data(d, &device).require_grad());
                let (w2, b1) = (
                    w.clone().reshape([kernel, channels]),
                    b.clone().reshape([channels]),
                );
                let y = if fused {
                    short_conv(x.clone(), w2, b1)
                } else {
                    short_conv::composite(x.clone(), w2, b1)
                };
                let n = batch * seq * channels;
                let g: Vec<f32> = (0..n).map(|i| ((i * 31 % 11) as f32 - 5.0) / 5.0).collect();
                let g = Tensor::<CpuAutodiff, 3>::from_data(
                    TensorData::new(g, [batch, seq, channels]),
                    &device,
                );
                let grads = (y.clone() * g).sum().backward();
                let grad = |t: &Tensor<CpuAutodiff, 3>| {
                    t.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap()
                };
                let y: Vec<f32> = y.into_data().to_vec().unwrap();
                (y, [grad(&x), grad(&w), grad(&b)])
            };
            let (a, b) = (run(true), run(false));
            let case = format!("batch {batch} seq {seq} channels {channels} kernel {kernel}");
            close(&a.0, &b.0, &format!("output, {case}"));
            for (name, (f, r)) in ["dx", "dw", "dbias"].iter().zip(a.1.iter().zip(&b.1)) {
                close(f, r, &format!("{name}, {case}"));
            }
            let [x, w, bias] = operands().map(|d| Tensor::<Cpu, 3>::from_data(d, &device));
            let (w, bias) = (w.reshape([kernel, channels]), bias.reshape([channels]));
            let plain: Vec<f32> = short_conv(x.clone(), w.clone(), bias.clone())
                .into_data()
                .to_vec()
                .unwrap();
            let reference: Vec<f32> = short_conv::composite(x, w, bias)
                .into_data()
                .to_vec()
                .unwrap();
            close(&plain, &reference, &format!("inference, {case}"));
        }
    }

    /// The shared gradients are summed in batch order: the same bits on
    /// every run whatever the thread count and the work's split.
    #[test]
    fn the_backward_is_bitwise_deterministic() {
        let (batch, seq, c, k) = (16, 12, 5, 4);
        let values = |n: usize, f: f32| (0..n).map(|i| (i as f32 * f).sin()).collect::<Vec<f32>>();
        let s = Inputs::new(
            [
                values(batch * seq * c, 0.37),
                values(k * c, 0.11),
                values(c, 0.7),
            ],
            [batch, seq, c],
            k,
        );
        let dy = values(batch * seq * c, 0.23);
        crate::layers::fused::assert_same_bits_on_any_pool(|| backward(&s, &dy));
    }
}
