//! Multi-head Hyena's mix `y = (T ⊙ Q Kᵀ) V` per head, with `T` the head's
//! causal Toeplitz kernel (`src/layers/mh_hyena.rs`), as one fused kernel.
//!
//! Composed from Burn ops it materialises `[batch, heads, seq, seq]` scores,
//! the kernel fitted to that shape, their product and the gradients, as
//! attention did. Here each (batch, head) pair walks its queries row by row;
//! the backward runs one task per head over the batch, so the kernel's
//! gradient `[heads, seq, seq]` is summed without a per-pair copy. Streams
//! are read in their `[batch, seq, d]` layout (head `h` is columns
//! `h·hd..(h+1)·hd`), so no head split or merge is needed either.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::ops::FloatTensor;
use rayon::prelude::*;

use super::{
    Dispatch, axpy, cast, dispatch, dot, give, host, host_of, incoming, primitive, record,
    transpose,
};
use crate::layers::linear_attention::{merge_heads, split_heads};
use crate::layers::mh_hyena::mix;
use crate::layers::{Cpu, CpuAutodiff};

/// `(T_h ⊙ Q_h K_hᵀ) V_h` for every head `h`, with `kernel[h]` read below
/// and on the diagonal only (a causal kernel is zero above it).
///
/// # Shapes
/// - q, k, v: `[batch, seq, d]`; kernel: `[heads, seq, seq]` → `[batch, seq, d]`
pub fn toeplitz_mix<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    kernel: Tensor<B, 3>,
) -> Tensor<B, 3> {
    match dispatch::<B>() {
        Dispatch::Autodiff => cast(mix_autodiff(cast(q), cast(k), cast(v), cast(kernel))),
        Dispatch::Plain => cast(mix_plain(cast(q), cast(k), cast(v), cast(kernel))),
        Dispatch::Composite => composite(q, k, v, kernel),
    }
}

/// The same function from Burn ops (every backend; the reference in tests).
///
/// # Shapes
/// - as [`toeplitz_mix`]
pub fn composite<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    kernel: Tensor<B, 3>,
) -> Tensor<B, 3> {
    let heads = kernel.dims()[0];
    let [q, k, v] = [q, k, v].map(|t| split_heads(t, heads));
    merge_heads(mix(q, k, v, kernel))
}

/// The streams and the kernel on the host.
#[derive(Clone, Debug)]
struct Inputs {
    q: Arc<Vec<f32>>,
    k: Arc<Vec<f32>>,
    v: Arc<Vec<f32>>,
    /// `[heads, seq, seq]`.
    kernel: Arc<Vec<f32>>,
    /// `[batch, seq, d]`.
    dims: [usize; 3],
    heads: usize,
}

impl Inputs {
    fn new([q, k, v, kernel]: [Vec<f32>; 4], dims: [usize; 3], heads: usize) -> Inputs {
        let [q, k, v, kernel] = [q, k, v, kernel].map(Arc::new);
        Inputs {
            q,
            k,
            v,
            kernel,
            dims,
            heads,
        }
    }

    fn head_dim(&self) -> usize {
        self.dims[2] / self.heads
    }

    /// Rows of head `head` of batch element `b` of `m` (`[batch, seq, d]`),
    /// as `[seq, hd]`.
    fn rows(&self, m: &[f32], b: usize, head: usize) -> Vec<f32> {
        let [_, seq, d] = self.dims;
        let hd = self.head_dim();
        let mut out = Vec::with_capacity(seq * hd);
        for t in 0..seq {
            let i = (b * seq + t) * d + head * hd;
            out.extend_from_slice(&m[i..i + hd]);
        }
        out
    }

    /// Head `head` of batch element `b` of `m` (`[batch, seq, d]`),
    /// transposed: `[hd, seq]`, so that loops over positions are contiguous.
    fn cols(&self, m: &[f32], b: usize, head: usize) -> Vec<f32> {
        let [_, seq, d] = self.dims;
        let hd = self.head_dim();
        let mut out = vec![0f32; hd * seq];
        for t in 0..seq {
            let i = (b * seq + t) * d + head * hd;
            for (c, &x) in m[i..i + hd].iter().enumerate() {
                out[c * seq + t] = x;
            }
        }
        out
    }

    /// Writes `[seq, hd]` rows of head `head` of batch element `b` into `m`.
    fn scatter(&self, m: &mut [f32], b: usize, head: usize, rows: &[f32]) {
        let [_, seq, d] = self.dims;
        let hd = self.head_dim();
        for t in 0..seq {
            let i = (b * seq + t) * d + head * hd;
            m[i..i + hd].copy_from_slice(&rows[t * hd..(t + 1) * hd]);
        }
    }
}

fn forward(x: &Inputs) -> Vec<f32> {
    let [batch, seq, _] = x.dims;
    let (heads, hd) = (x.heads, x.head_dim());
    let per_pair: Vec<Vec<f32>> = (0..batch * heads)
        .into_par_iter()
        .map(|p| {
            let (b, head) = (p / heads, p % heads);
            // Keys and values transposed: every inner loop below runs over
            // the positions 0..=t, contiguous and long enough to vectorise
            // (a head is only 8 wide in the paper's MH Hyena).
            let (q, kt, vt) = (
                x.rows(&x.q, b, head),
                x.cols(&x.k, b, head),
                x.cols(&x.v, b, head),
            );
            let kernel = &x.kernel[head * seq * seq..(head + 1) * seq * seq];
            let mut y = vec![0f32; seq * hd];
            let mut scores = vec![0f32; seq];
            for t in 0..seq {
                let n = t + 1;
                let sc = &mut scores[..n];
                sc.fill(0.0);
                for (i, &qi) in q[t * hd..(t + 1) * hd].iter().enumerate() {
                    axpy(qi, &kt[i * seq..i * seq + n], sc);
                }
                for (s, w) in sc.iter_mut().zip(&kernel[t * seq..t * seq + n]) {
                    *s *= w;
                }
                for (i, yi) in y[t * hd..(t + 1) * hd].iter_mut().enumerate() {
                    *yi = dot(sc, &vt[i * seq..i * seq + n]);
                }
            }
            y
        })
        .collect();
    let mut out = vec![0f32; x.q.len()];
    for (p, y) in per_pair.iter().enumerate() {
        x.scatter(&mut out, p / heads, p % heads, y);
    }
    out
}

/// Gradients of q, k, v (`[batch, seq, d]`) and of the kernel (`[heads,
/// seq, seq]`, zero above the diagonal) from the output gradient `dy`.
fn backward(x: &Inputs, dy: &[f32]) -> [Vec<f32>; 4] {
    let [batch, seq, _] = x.dims;
    let hd = x.head_dim();
    let per_head: Vec<([Vec<f32>; 3], Vec<f32>)> = (0..x.heads)
        .into_par_iter()
        .map(|head| {
            let kernel = &x.kernel[head * seq * seq..(head + 1) * seq * seq];
            let mut dkernel = vec![0f32; seq * seq];
            let mut grads = [0, 1, 2].map(|_| Vec::with_capacity(batch * seq * hd));
            let (mut a, mut gv) = (vec![0f32; seq], vec![0f32; seq]);
            for b in 0..batch {
                // As the forward: keys, values and their gradients
                // transposed, loops over positions innermost.
                let (q, kt, vt) = (
                    x.rows(&x.q, b, head),
                    x.cols(&x.k, b, head),
                    x.cols(&x.v, b, head),
                );
                let g = x.rows(dy, b, head);
                let (mut dq, mut dkt, mut dvt) = (
                    vec![0f32; seq * hd],
                    vec![0f32; hd * seq],
                    vec![0f32; hd * seq],
                );
                for t in 0..seq {
                    let n = t + 1;
                    let (qt, gt) = (&q[t * hd..(t + 1) * hd], &g[t * hd..(t + 1) * hd]);
                    // a[s] = q_t · k_s, gv[s] = g_t · v_s.
                    let (a, gv) = (&mut a[..n], &mut gv[..n]);
                    a.fill(0.0);
                    gv.fill(0.0);
                    for i in 0..hd {
                        axpy(qt[i], &kt[i * seq..i * seq + n], a);
                        axpy(gt[i], &vt[i * seq..i * seq + n], gv);
                    }
                    let w = &kernel[t * seq..t * seq + n];
                    for ((dw, &ai), &gi) in
                        dkernel[t * seq..t * seq + n].iter_mut().zip(&*a).zip(&*gv)
                    {
                        *dw += ai * gi;
                    }
                    // a ← w ⊙ a (weights of g_t into dv), gv ← w ⊙ gv (of q, k).
                    for ((ai, gi), wi) in a.iter_mut().zip(gv.iter_mut()).zip(w) {
                        *ai *= wi;
                        *gi *= wi;
                    }
                    for i in 0..hd {
                        axpy(gt[i], a, &mut dvt[i * seq..i * seq + n]);
                        axpy(qt[i], gv, &mut dkt[i * seq..i * seq + n]);
                        dq[t * hd + i] = dot(gv, &kt[i * seq..i * seq + n]);
                    }
                }
                grads[0].extend_from_slice(&dq);
                grads[1].extend_from_slice(&transpose(&dkt, hd, seq));
                grads[2].extend_from_slice(&transpose(&dvt, hd, seq));
            }
            (grads, dkernel)
        })
        .collect();
    let mut out = [0, 1, 2].map(|_| vec![0f32; x.q.len()]);
    let mut dkernel = Vec::with_capacity(x.kernel.len());
    for (head, (grads, dk)) in per_head.iter().enumerate() {
        for (m, g) in out.iter_mut().zip(grads) {
            for b in 0..batch {
                x.scatter(m, b, head, &g[b * seq * hd..(b + 1) * seq * hd]);
            }
        }
        dkernel.extend_from_slice(dk);
    }
    let [dq, dk, dv] = out;
    [dq, dk, dv, dkernel]
}

fn mix_plain(
    q: Tensor<Cpu, 3>,
    k: Tensor<Cpu, 3>,
    v: Tensor<Cpu, 3>,
    kernel: Tensor<Cpu, 3>,
) -> Tensor<Cpu, 3> {
    let dims = q.dims();
    let device = q.device();
    let heads = kernel.dims()[0];
    let x = Inputs::new([q, k, v, kernel].map(host), dims, heads);
    Tensor::from_data(TensorData::new(forward(&x), dims), &device)
}

#[derive(Debug)]
struct FusedBackward;

impl Backward<Cpu, 4> for FusedBackward {
    type State = Inputs;

    fn backward(
        self,
        ops: Ops<Self::State, 4>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let (g, device) = incoming(&ops, grads);
        let x = &ops.state;
        let seq = x.dims[1];
        let shapes = [x.dims, x.dims, x.dims, [x.heads, seq, seq]];
        let all = backward(x, &g);
        give(&ops, grads, all, shapes, &device);
    }
}

fn mix_autodiff(
    q: Tensor<CpuAutodiff, 3>,
    k: Tensor<CpuAutodiff, 3>,
    v: Tensor<CpuAutodiff, 3>,
    kernel: Tensor<CpuAutodiff, 3>,
) -> Tensor<CpuAutodiff, 3> {
    let dims = q.dims();
    let device = q.device();
    let heads = kernel.dims()[0];
    let [q, k, v, kernel]: [FloatTensor<CpuAutodiff>; 4] =
        [q, k, v, kernel].map(|t| t.into_primitive().tensor());
    let x = Inputs::new([&q, &k, &v, &kernel].map(host_of), dims, heads);
    let output = primitive(forward(&x), dims, &device);
    record(FusedBackward, [&q, &k, &v, &kernel], x, output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Init;
    use crate::layers::mh_hyena::head_kernels;

    fn close(a: Vec<f32>, b: Vec<f32>, what: &str) {
        crate::layers::fused::assert_close(&a, &b, 5e-5, what);
    }

    /// Output and the gradients of q, k, v, the filter taps and the skip
    /// (through `head_kernels`, as the layer uses it) equal the composite's.
    #[test]
    fn fused_equals_composite_in_values_and_gradients() {
        let device = Default::default();
        for (batch, seq, heads, hd) in [(2, 9, 3, 4), (1, 17, 1, 8), (3, 6, 4, 2)] {
            let d = heads * hd;
            let run = |fused: bool| {
                let mut init = Init::<CpuAutodiff>::new(11, &device);
                let [q, k, v] = [0, 1, 2].map(|_| init.normal([batch, seq, d], 1.0).val());
                let taps = init.normal([heads, seq], 0.5).val();
                let skip = init.normal([heads], 1.0).val();
                let kernel = head_kernels(taps.clone(), skip.clone());
                let y = if fused {
                    toeplitz_mix(q.clone(), k.clone(), v.clone(), kernel)
                } else {
                    composite(q.clone(), k.clone(), v.clone(), kernel)
                };
                let n = batch * seq * d;
                let w: Vec<f32> = (0..n).map(|i| ((i * 29 % 13) as f32 - 6.0) / 6.0).collect();
                let w = Tensor::<CpuAutodiff, 3>::from_data(
                    TensorData::new(w, [batch, seq, d]),
                    &device,
                );
                let grads = (y.clone() * w).sum().backward();
                let g3 = |t: &Tensor<CpuAutodiff, 3>| -> Vec<f32> {
                    t.grad(&grads).expect("grad").into_data().to_vec().unwrap()
                };
                let taps_grad: Vec<f32> = taps
                    .grad(&grads)
                    .expect("grad")
                    .into_data()
                    .to_vec()
                    .unwrap();
                let skip_grad: Vec<f32> = skip
                    .grad(&grads)
                    .expect("grad")
                    .into_data()
                    .to_vec()
                    .unwrap();
                let y: Vec<f32> = y.into_data().to_vec().unwrap();
                (y, g3(&q), g3(&k), g3(&v), taps_grad, skip_grad)
            };
            let (a, b) = (run(true), run(false));
            let case = format!("batch {batch} seq {seq} heads {heads} hd {hd}");
            close(a.0, b.0, &format!("output, {case}"));
            close(a.1, b.1, &format!("dq, {case}"));
            close(a.2, b.2, &format!("dk, {case}"));
            close(a.3, b.3, &format!("dv, {case}"));
            close(a.4, b.4, &format!("d taps, {case}"));
            close(a.5, b.5, &format!("d skip, {case}"));
        }
    }

    #[test]
    fn the_inference_path_equals_the_composite() {
        let device = Default::default();
        let mut init = Init::<Cpu>::new(5, &device);
        let [q, k, v] = [0, 1, 2].map(|_| init.normal([2, 13, 12], 1.0).val());
        let kernel = head_kernels(init.normal([3, 13], 0.5).val(), init.normal([3], 1.0).val());
        let fused: Vec<f32> = toeplitz_mix(q.clone(), k.clone(), v.clone(), kernel.clone())
            .into_data()
            .to_vec()
            .unwrap();
        let reference: Vec<f32> = composite(q, k, v, kernel).into_data().to_vec().unwrap();
        close(fused, reference, "output");
    }
}
