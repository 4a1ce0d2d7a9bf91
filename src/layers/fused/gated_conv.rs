//! LFM2's gated short convolution `y = c ⊙ conv(b ⊙ x)` (the layer
//! [`crate::layers::gated_conv`] between its two projections) as one CPU
//! kernel with its own backward, reading `b, c, x` straight from the input
//! projection's `[batch, seq, 3·d]` output.
//!
//! Composed it is three slices copied out of that output, the input gate,
//! the short convolution ([`super::short_conv`]) and the output gate; its
//! backward scatters three slice gradients back into a zero `[batch, seq,
//! 3·d]` tensor and runs four more products. At the protocol's shape that
//! glue cost the layer more than the convolution (`cargo bench --bench
//! torch -- --layers --only gated-short-conv`: 109 ms against PyTorch's 79
//! before this kernel). Here the forward is one walk per batch element over
//! `b ⊙ x`, and the backward one walk that recomputes the convolution for
//! `∂c`. One task per batch element; the taps' gradient is summed per task
//! and added in batch order ([`super::ordered_sum`]).

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::ops::FloatTensor;
use rayon::prelude::*;

use super::short_conv::{fma, taps};
use super::{
    Dispatch, cast, dispatch, give, host, host_of, incoming, ordered_sum, primitive, record,
};
use crate::layers::{Cpu, CpuAutodiff};

/// `c ⊙ conv(b ⊙ x)` with the bias-free depthwise causal taps `w`, where
/// `bcx` holds `b`, `c` and `x` side by side in its last dim.
///
/// # Shapes
/// - bcx: `[batch, seq, 3·d]`; w: `[kernel, d]` (tap `kernel − 1` multiplies
///   the current position) → `[batch, seq, d]`
pub fn gated_short_conv<B: Backend>(bcx: Tensor<B, 3>, w: Tensor<B, 2>) -> Tensor<B, 3> {
    match dispatch::<B>() {
        Dispatch::Autodiff => cast(gated_autodiff(cast(bcx), cast(w.unsqueeze::<3>()))),
        Dispatch::Plain => cast(gated_plain(cast(bcx), cast(w.unsqueeze::<3>()))),
        Dispatch::Composite => composite(bcx, w),
    }
}

/// The same from Burn ops: the tests' reference, and what every backend
/// but flex runs.
pub fn composite<B: Backend>(bcx: Tensor<B, 3>, w: Tensor<B, 2>) -> Tensor<B, 3> {
    let [batch, seq, width] = bcx.dims();
    let d = width / 3;
    let part = |i: usize| bcx.clone().slice([0..batch, 0..seq, i * d..(i + 1) * d]);
    let dev = bcx.device();
    // Bias-free: a zero bias built once per (width, device).
    let zero = crate::layers::consts::cached("zero_bias", &[d], &dev, || Tensor::zeros([d], &dev));
    part(1) * crate::layers::short_conv::composite(part(0) * part(2), w, zero)
}

/// The operands on the host.
#[derive(Clone, Debug)]
struct Inputs {
    /// `[batch, seq, 3·d]`.
    bcx: Arc<Vec<f32>>,
    /// `[kernel, d]`.
    w: Arc<Vec<f32>>,
    /// `[batch, seq, d]`.
    dims: [usize; 3],
    /// Taps per channel.
    kernel: usize,
}

/// `u = b ⊙ x` of one batch element (`bcx`: `[seq, 3·d]`) into `u` (`[seq, d]`).
fn gate_in(bcx: &[f32], d: usize, u: &mut [f32]) {
    for (u, row) in u.chunks_exact_mut(d).zip(bcx.chunks_exact(3 * d)) {
        let (b, x) = (&row[..d], &row[2 * d..]);
        for ((u, b), x) in u.iter_mut().zip(b).zip(x) {
            *u = b * x;
        }
    }
}

/// `acc = Σ_j w_j ⊙ u_{t − (k−1) + j}` for step `t`.
fn conv_at(acc: &mut [f32], u: &[f32], w: &[f32], t: usize, kernel: usize) {
    let d = acc.len();
    acc.fill(0.0);
    for j in taps(t, kernel) {
        let src = t + j + 1 - kernel;
        fma(acc, &w[j * d..(j + 1) * d], &u[src * d..(src + 1) * d]);
    }
}

fn forward(s: &Inputs) -> Vec<f32> {
    let [batch, seq, d] = s.dims;
    let mut out = vec![0f32; batch * seq * d];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(seq * d)
        .zip(s.bcx.par_chunks(seq * 3 * d))
        .for_each(|(y, bcx)| {
            let mut u = vec![0f32; seq * d];
            gate_in(bcx, d, &mut u);
            for t in 0..seq {
                let yt = &mut y[t * d..(t + 1) * d];
                conv_at(yt, &u, &s.w, t, s.kernel);
                let c = &bcx[t * 3 * d + d..t * 3 * d + 2 * d];
                yt.iter_mut().zip(c).for_each(|(y, c)| *y *= c);
            }
        });
    out
}

/// Gradients of `bcx` (`[batch, seq, 3·d]`) and of the taps (`[kernel, d]`)
/// from the output gradient `dy`.
fn backward(s: &Inputs, dy: &[f32]) -> [Vec<f32>; 2] {
    let [batch, seq, d] = s.dims;
    let k = s.kernel;
    let mut dbcx = vec![0f32; batch * seq * 3 * d];
    if dbcx.is_empty() {
        return [dbcx, vec![0f32; k * d]];
    }
    let partials = dbcx
        .par_chunks_mut(seq * 3 * d)
        .zip(s.bcx.par_chunks(seq * 3 * d))
        .zip(dy.par_chunks(seq * d))
        .map(|((dbcx, bcx), g)| {
            let mut u = vec![0f32; seq * d];
            gate_in(bcx, d, &mut u);
            let (mut du, mut dw) = (vec![0f32; seq * d], vec![0f32; k * d]);
            let (mut acc, mut da) = (vec![0f32; d], vec![0f32; d]);
            for t in 0..seq {
                let row = t * 3 * d;
                let (gt, c) = (&g[t * d..(t + 1) * d], &bcx[row + d..row + 2 * d]);
                // y = c ⊙ acc: ∂c = g ⊙ acc, ∂acc = g ⊙ c.
                conv_at(&mut acc, &u, &s.w, t, k);
                for (((dc, da), (&g, &c)), &a) in dbcx[row + d..row + 2 * d]
                    .iter_mut()
                    .zip(da.iter_mut())
                    .zip(gt.iter().zip(c))
                    .zip(&acc)
                {
                    *dc = g * a;
                    *da = g * c;
                }
                for j in taps(t, k) {
                    let src = t + j + 1 - k;
                    let tap = j * d..(j + 1) * d;
                    fma(&mut du[src * d..(src + 1) * d], &s.w[tap.clone()], &da);
                    fma(&mut dw[tap], &da, &u[src * d..(src + 1) * d]);
                }
            }
            // u = b ⊙ x.
            for (t, du) in du.chunks_exact(d).enumerate() {
                let row = t * 3 * d;
                for i in 0..d {
                    let (b, x) = (bcx[row + i], bcx[row + 2 * d + i]);
                    dbcx[row + i] = du[i] * x;
                    dbcx[row + 2 * d + i] = du[i] * b;
                }
            }
            dw
        })
        .collect::<Vec<_>>();
    [dbcx, ordered_sum(partials, k * d)]
}

fn inputs(bcx: Vec<f32>, w: Vec<f32>, [batch, seq, width]: [usize; 3], kernel: usize) -> Inputs {
    assert!(
        width.is_multiple_of(3),
        "the gated convolution's input holds b, c and x: width {width} is not 3·d"
    );
    assert_eq!(w.len(), kernel * (width / 3), "taps are [kernel, d]");
    Inputs {
        bcx: Arc::new(bcx),
        w: Arc::new(w),
        dims: [batch, seq, width / 3],
        kernel,
    }
}

fn gated_plain(bcx: Tensor<Cpu, 3>, w: Tensor<Cpu, 3>) -> Tensor<Cpu, 3> {
    let (dims, kernel, device) = (bcx.dims(), w.dims()[1], bcx.device());
    let s = inputs(host(bcx), host(w), dims, kernel);
    Tensor::from_data(TensorData::new(forward(&s), s.dims), &device)
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
        let s = &ops.state;
        let [batch, seq, d] = s.dims;
        let shapes = [[batch, seq, 3 * d], [1, s.kernel, d]];
        give(&ops, grads, backward(s, &g), shapes, &device);
    }
}

fn gated_autodiff(
    bcx: Tensor<CpuAutodiff, 3>,
    w: Tensor<CpuAutodiff, 3>,
) -> Tensor<CpuAutodiff, 3> {
    let (dims, kernel, device) = (bcx.dims(), w.dims()[1], bcx.device());
    let (bcx, w): (FloatTensor<CpuAutodiff>, FloatTensor<CpuAutodiff>) =
        (bcx.into_primitive().tensor(), w.into_primitive().tensor());
    let s = inputs(host_of(&bcx), host_of(&w), dims, kernel);
    let output = primitive(forward(&s), s.dims, &device);
    record(FusedBackward, [&bcx, &w], s, output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Init;

    fn close(a: &[f32], b: &[f32], what: &str) {
        crate::layers::fused::assert_close(a, b, 1e-5, what);
    }

    /// Output and the gradients of `bcx` and the taps equal the composite's,
    /// for kernels shorter than, as long as and longer than the sequence;
    /// the inference path gives the same output.
    #[test]
    fn fused_equals_composite_in_values_and_gradients() {
        let device = Default::default();
        for (batch, seq, d, kernel) in [(2, 9, 5, 3), (1, 3, 7, 3), (3, 2, 4, 4), (2, 16, 9, 1)] {
            let operands = || {
                let mut init = Init::<Cpu>::new(5, &device);
                [
                    init.normal([batch, seq, 3 * d], 1.0).val().into_data(),
                    init.normal([kernel, d, 1], 0.5).val().into_data(),
                ]
            };
            let run = |fused: bool| {
                let [bcx, w] = operands();
                let bcx = Tensor::<CpuAutodiff, 3>::from_data(bcx, &device).require_grad();
                let w = Tensor::<CpuAutodiff, 3>::from_data(w, &device).require_grad();
                let w2 = w.clone().reshape([kernel, d]);
                let y = if fused {
                    gated_short_conv(bcx.clone(), w2)
                } else {
                    composite(bcx.clone(), w2)
                };
                let n = batch * seq * d;
                let g: Vec<f32> = (0..n).map(|i| ((i * 31 % 11) as f32 - 5.0) / 5.0).collect();
                let g = Tensor::<CpuAutodiff, 3>::from_data(
                    TensorData::new(g, [batch, seq, d]),
                    &device,
                );
                let grads = (y.clone() * g).sum().backward();
                let grad = |t: &Tensor<CpuAutodiff, 3>| {
                    t.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap()
                };
                let y: Vec<f32> = y.into_data().to_vec().unwrap();
                (y, [grad(&bcx), grad(&w)])
            };
            let (a, b) = (run(true), run(false));
            let case = format!("batch {batch} seq {seq} d {d} kernel {kernel}");
            close(&a.0, &b.0, &format!("output, {case}"));
            for (name, (f, r)) in ["dbcx", "dw"].iter().zip(a.1.iter().zip(&b.1)) {
                close(f, r, &format!("{name}, {case}"));
            }
            let [bcx, w] = operands();
            let bcx = Tensor::<Cpu, 3>::from_data(bcx, &device);
            let w = Tensor::<Cpu, 3>::from_data(w, &device).reshape([kernel, d]);
            let plain: Vec<f32> = gated_short_conv(bcx.clone(), w.clone())
                .into_data()
                .to_vec()
                .unwrap();
            let reference: Vec<f32> = composite(bcx, w).into_data().to_vec().unwrap();
            close(&plain, &reference, &format!("inference, {case}"));
        }
    }

    /// The taps' gradient is summed in batch order: the same bits on every
    /// pool.
    #[test]
    fn the_backward_is_bitwise_deterministic() {
        let (batch, seq, d, k) = (16, 12, 5, 3);
        let values = |n: usize, f: f32| (0..n).map(|i| (i as f32 * f).sin()).collect::<Vec<f32>>();
        let s = inputs(
            values(batch * seq * 3 * d, 0.37),
            values(k * d, 0.11),
            [batch, seq, 3 * d],
            k,
        );
        let dy = values(batch * seq * d, 0.23);
        crate::layers::fused::assert_same_bits_on_any_pool(|| backward(&s, &dy));
    }
}
