//! Causal softmax attention, from the fused QKV projection to the merged
//! heads, as one CPU kernel with its own backward, for the flex backend.
//!
//! Composed from Burn ops, attention splits heads (strided copies), rotates
//! q and k (slices and a concatenation), and materialises `[batch, heads,
//! seq, seq]` scores, a mask of that size, the softmax and their gradients:
//! at batch 128, 16 heads, length 128 each is 134 MB, and `mh-attention`
//! took 3.2× PyTorch's time (`cargo bench --bench torch -- --only
//! attention`). Here each (batch, head) pair is one task on the caller's
//! rayon pool: it gathers its rows of q, k, v from the projection, rotates
//! them, and walks its queries one by one, keeping only that row's scores;
//! the backward recomputes the probabilities from the saved log-sum-exp (the
//! flash-attention recurrence, written here for the CPU) and rotates the
//! gradients back.
//!
//! [`attention`] dispatches on the backend type (see [`super`]); the tests
//! compare the fused kernel with [`composite`], values and gradients.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{TensorData, TensorPrimitive};
use rayon::prelude::*;

use super::{
    Dispatch, axpy, cast, dispatch, dot, give, host, host_of, incoming, primitive, transpose,
};
use crate::layers::ops::{contiguous, fit};
use crate::layers::rotary::{apply_rotary, inverse_frequencies};
use crate::layers::{Cpu, CpuAutodiff};

/// The attention's shape and masking.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Heads {
    /// Number of heads.
    pub heads: usize,
    /// Dims of each head rotated by position (even, at most the head dim).
    pub rotary_dim: usize,
    /// Earlier keys visible to a query besides itself (`0` = all).
    pub window: usize,
}

impl Heads {
    /// First key visible to query `t`.
    fn first(&self, t: usize) -> usize {
        if self.window == 0 {
            0
        } else {
            t.saturating_sub(self.window)
        }
    }
}

/// `softmax(Q Kᵀ/√hd + causal mask) V` per head, with rotary q and k, from
/// the fused projection `[q | k | v]` (each `heads × head_dim`, head-major).
///
/// # Shapes
/// - qkv: `[batch, seq, 3·d]` → `[batch, seq, d]`
pub fn attention<B: Backend>(qkv: Tensor<B, 3>, h: Heads) -> Tensor<B, 3> {
    match dispatch::<B>() {
        Dispatch::Autodiff => cast(attention_autodiff(cast(qkv), h)),
        Dispatch::Plain => cast(attention_plain(cast(qkv), h)),
        Dispatch::Composite => on_device(qkv, h),
    }
}

/// On a CubeCL backend: heads split and rotated with Burn ops, the softmax
/// core as `mad-kernels`' flash kernel (nothing of size `seq²` in memory);
/// on any other backend, [`composite`].
fn on_device<B: Backend>(qkv: Tensor<B, 3>, h: Heads) -> Tensor<B, 3> {
    let (q, k, v) = split_heads(qkv, h);
    let scale = 1.0 / (q.dims()[3] as f32).sqrt();
    let y = match crate::layers::cube::causal_attention(q, k, v, scale, h.window) {
        Ok(y) => y,
        Err((q, k, v)) => core(q, k, v, h),
    };
    merge_heads(y)
}

fn attention_plain(qkv: Tensor<Cpu, 3>, h: Heads) -> Tensor<Cpu, 3> {
    let [batch, seq, d3] = qkv.dims();
    let device = qkv.device();
    let x = Inputs::new(host(qkv), [batch, seq, d3 / 3], h);
    let (out, _) = forward(&x);
    Tensor::from_data(TensorData::new(out, [batch, seq, d3 / 3]), &device)
}

/// The same function from Burn ops (every backend; the reference in tests).
///
/// # Shapes
/// - as [`attention`]
pub fn composite<B: Backend>(qkv: Tensor<B, 3>, h: Heads) -> Tensor<B, 3> {
    let (q, k, v) = split_heads(qkv, h);
    merge_heads(core(q, k, v, h))
}

/// Rotated q, rotated k and v per head from the fused projection.
///
/// # Shapes
/// - qkv: `[batch, seq, 3·d]` → 3 × `[batch, heads, seq, hd]`
fn split_heads<B: Backend>(
    qkv: Tensor<B, 3>,
    h: Heads,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let [batch, seq, d3] = qkv.dims();
    let d = d3 / 3;
    let (n, hd) = (h.heads, d / h.heads);
    // [batch, seq, 3, heads, hd] → [3, batch, heads, seq, hd]
    let qkv = qkv.reshape([batch, seq, 3, n, hd]).permute([2, 0, 3, 1, 4]);
    let part = |i: usize| -> Tensor<B, 4> {
        contiguous(
            qkv.clone()
                .slice([i..i + 1, 0..batch, 0..n, 0..seq, 0..hd])
                .reshape([batch, n, seq, hd]),
        )
    };
    let q = apply_rotary(part(0), h.rotary_dim);
    let k = apply_rotary(part(1), h.rotary_dim);
    (q, k, part(2))
}

/// Heads merged back into the model's width.
///
/// # Shapes
/// - y: `[batch, heads, seq, hd]` → `[batch, seq, heads·hd]`
fn merge_heads<B: Backend>(y: Tensor<B, 4>) -> Tensor<B, 3> {
    let [batch, n, seq, hd] = y.dims();
    y.swap_dims(1, 2).reshape([batch, seq, n * hd])
}

/// `softmax(Q Kᵀ/√hd + causal mask) V` with the scores materialised.
///
/// # Shapes
/// - q, k, v: `[batch, heads, seq, hd]` → `[batch, heads, seq, hd]`
fn core<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, h: Heads) -> Tensor<B, 4> {
    let [_, _, seq, hd] = q.dims();
    let scores = q.matmul(k.swap_dims(2, 3)) * (1.0 / (hd as f64).sqrt());
    let dims = scores.dims();
    let device = v.device();
    let bias = crate::layers::consts::cached("causal_bias", &[seq, h.window], &device, || {
        causal_bias::<B>(seq, h, &device)
    });
    let scores = scores + fit(bias, dims);
    softmax(scores, 3).matmul(v)
}

/// Additive mask: 0 where query `t` may see key `s`, −∞ elsewhere.
///
/// # Shapes
/// - output: `[1, 1, seq, seq]`
pub fn causal_bias<B: Backend>(seq: usize, h: Heads, device: &B::Device) -> Tensor<B, 4> {
    let mut v = vec![f32::NEG_INFINITY; seq * seq];
    for t in 0..seq {
        for s in h.first(t)..=t {
            v[t * seq + s] = 0.0;
        }
    }
    Tensor::from_data(TensorData::new(v, [1, 1, seq, seq]), device)
}

/// The projection on the host, with its shape and the rotation table.
#[derive(Clone, Debug)]
struct Inputs {
    /// `[batch, seq, 3, heads, hd]`, row-major.
    qkv: Arc<Vec<f32>>,
    /// `[batch, seq, d]`.
    dims: [usize; 3],
    h: Heads,
    /// `cos` and `sin` of every (position, rotated pair), `[seq, rotary_dim / 2]`.
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
}

impl Inputs {
    fn new(qkv: Vec<f32>, dims: [usize; 3], h: Heads) -> Inputs {
        let seq = dims[1];
        let inv = inverse_frequencies(h.rotary_dim);
        let angles = |f: fn(f64) -> f64| -> Arc<Vec<f32>> {
            Arc::new(
                (0..seq)
                    .flat_map(|t| inv.iter().map(move |w| f(t as f64 * w) as f32))
                    .collect(),
            )
        };
        Inputs {
            qkv: Arc::new(qkv),
            dims,
            h,
            cos: angles(f64::cos),
            sin: angles(f64::sin),
        }
    }

    fn head_dim(&self) -> usize {
        self.dims[2] / self.h.heads
    }

    /// Index in `[batch, seq, 3, heads, hd]` of (batch b, step t, part, head, 0).
    fn at(&self, b: usize, t: usize, part: usize, head: usize) -> usize {
        let [_, seq, d] = self.dims;
        ((b * seq + t) * 3 + part) * d + head * self.head_dim()
    }

    /// Rotates (or with `sign = −1`, rotates back) the first `rotary_dim`
    /// dims of `row` by the angles of position `t`.
    fn rotate(&self, row: &mut [f32], t: usize, sign: f32) {
        let half = self.h.rotary_dim / 2;
        for i in 0..half {
            let (c, s) = (self.cos[t * half + i], sign * self.sin[t * half + i]);
            let (x1, x2) = (row[i], row[i + half]);
            row[i] = x1 * c - x2 * s;
            row[i + half] = x2 * c + x1 * s;
        }
    }

    /// Rotated q, rotated k and v of (batch b, head), each `[seq, hd]`.
    fn gather(&self, b: usize, head: usize) -> [Vec<f32>; 3] {
        let (seq, hd) = (self.dims[1], self.head_dim());
        [0, 1, 2].map(|part| {
            let mut out = Vec::with_capacity(seq * hd);
            for t in 0..seq {
                let i = self.at(b, t, part, head);
                out.extend_from_slice(&self.qkv[i..i + hd]);
                if part < 2 {
                    self.rotate(&mut out[t * hd..(t + 1) * hd], t, 1.0);
                }
            }
            out
        })
    }
}

/// (batch, head) pairs in order.
fn pairs(x: &Inputs) -> impl IndexedParallelIterator<Item = (usize, usize)> + use<> {
    let n = x.h.heads;
    (0..x.dims[0] * n)
        .into_par_iter()
        .map(move |p| (p / n, p % n))
}

/// Output `[batch, seq, d]` and the log-sum-exp of every query's scores,
/// `[batch, heads, seq]`.
fn forward(x: &Inputs) -> (Vec<f32>, Vec<f32>) {
    let [batch, seq, d] = x.dims;
    let hd = x.head_dim();
    let scale = 1.0 / (hd as f32).sqrt();
    let per_pair: Vec<(Vec<f32>, Vec<f32>)> = pairs(x)
        .map(|(b, head)| {
            let [q, k, v] = x.gather(b, head);
            // Keys and values transposed to `[hd, seq]`: each query's loops
            // run over its visible keys, contiguous, and vectorise whatever
            // the head dim (8 in the paper's 16-head attention).
            let (kt, vt) = (transpose(&k, seq, hd), transpose(&v, seq, hd));
            let mut o = vec![0f32; seq * hd];
            let mut lse = vec![0f32; seq];
            let mut scores = vec![0f32; seq];
            for t in 0..seq {
                let first = x.h.first(t);
                let sc = &mut scores[first..=t];
                sc.fill(0.0);
                for (i, &qi) in q[t * hd..(t + 1) * hd].iter().enumerate() {
                    axpy(scale * qi, &kt[i * seq + first..=i * seq + t], sc);
                }
                let max = sc.iter().fold(f32::NEG_INFINITY, |m, &z| m.max(z));
                let mut sum = 0f32;
                for z in sc.iter_mut() {
                    *z = (*z - max).exp();
                    sum += *z;
                }
                let inv = 1.0 / sum;
                for (i, oi) in o[t * hd..(t + 1) * hd].iter_mut().enumerate() {
                    *oi = inv * dot(sc, &vt[i * seq + first..=i * seq + t]);
                }
                lse[t] = max + sum.ln();
            }
            (o, lse)
        })
        .collect();
    let mut out = vec![0f32; batch * seq * d];
    let mut lse = Vec::with_capacity(batch * x.h.heads * seq);
    for (p, (o, l)) in per_pair.into_iter().enumerate() {
        let (b, head) = (p / x.h.heads, p % x.h.heads);
        for t in 0..seq {
            let i = (b * seq + t) * d + head * hd;
            out[i..i + hd].copy_from_slice(&o[t * hd..(t + 1) * hd]);
        }
        lse.extend_from_slice(&l);
    }
    (out, lse)
}

/// The gradient of the projection, `[batch, seq, 3, heads, hd]`, from the
/// output gradient `dout` `[batch, seq, d]`, the output and the log-sum-exp.
fn backward(x: &Inputs, out: &[f32], lse: &[f32], dout: &[f32]) -> Vec<f32> {
    let [_, seq, d] = x.dims;
    let hd = x.head_dim();
    let scale = 1.0 / (hd as f32).sqrt();
    let rows = |m: &[f32], b: usize, head: usize| -> Vec<f32> {
        (0..seq)
            .flat_map(|t| {
                let i = (b * seq + t) * d + head * hd;
                m[i..i + hd].iter().copied()
            })
            .collect()
    };
    let per_pair: Vec<[Vec<f32>; 3]> = pairs(x)
        .map(|(b, head)| {
            let [q, k, v] = x.gather(b, head);
            // As the forward: loops over keys innermost, on transposed
            // keys, values and their gradients.
            let (kt, vt) = (transpose(&k, seq, hd), transpose(&v, seq, hd));
            let (o, g) = (rows(out, b, head), rows(dout, b, head));
            let p = b * x.h.heads + head;
            let l = &lse[p * seq..(p + 1) * seq];
            let (mut dq, mut dkt, mut dvt) = (
                vec![0f32; seq * hd],
                vec![0f32; hd * seq],
                vec![0f32; hd * seq],
            );
            let (mut probs, mut ds) = (vec![0f32; seq], vec![0f32; seq]);
            for (t, &lse_t) in l.iter().enumerate() {
                let first = x.h.first(t);
                let keys = |i: usize| i * seq + first..=i * seq + t;
                let row = t * hd..(t + 1) * hd;
                let (qt, gt) = (&q[row.clone()], &g[row.clone()]);
                let delta = dot(gt, &o[row]);
                let (pr, d) = (&mut probs[first..=t], &mut ds[first..=t]);
                pr.fill(0.0);
                d.fill(0.0);
                for i in 0..hd {
                    axpy(scale * qt[i], &kt[keys(i)], pr);
                    axpy(gt[i], &vt[keys(i)], d);
                }
                // pr ← softmax probabilities; d ← dL/dscores · scale.
                for (pi, di) in pr.iter_mut().zip(d.iter_mut()) {
                    *pi = (*pi - lse_t).exp();
                    *di = *pi * (*di - delta) * scale;
                }
                for i in 0..hd {
                    axpy(gt[i], pr, &mut dvt[keys(i)]);
                    axpy(qt[i], d, &mut dkt[keys(i)]);
                    dq[t * hd + i] = dot(d, &kt[keys(i)]);
                }
            }
            let (mut dk, dv) = (transpose(&dkt, hd, seq), transpose(&dvt, hd, seq));
            for t in 0..seq {
                x.rotate(&mut dq[t * hd..(t + 1) * hd], t, -1.0);
                x.rotate(&mut dk[t * hd..(t + 1) * hd], t, -1.0);
            }
            [dq, dk, dv]
        })
        .collect();
    let mut grad = vec![0f32; x.qkv.len()];
    for (p, parts) in per_pair.into_iter().enumerate() {
        let (b, head) = (p / x.h.heads, p % x.h.heads);
        for (part, g) in parts.iter().enumerate() {
            for t in 0..seq {
                let i = x.at(b, t, part, head);
                grad[i..i + hd].copy_from_slice(&g[t * hd..(t + 1) * hd]);
            }
        }
    }
    grad
}

/// What the backward pass keeps: the projection, the output and the
/// log-sum-exp.
#[derive(Clone, Debug)]
struct Saved {
    x: Inputs,
    out: Arc<Vec<f32>>,
    lse: Arc<Vec<f32>>,
}

#[derive(Debug)]
struct FusedBackward;

impl Backward<Cpu, 1> for FusedBackward {
    type State = Saved;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let (g, device) = incoming(&ops, grads);
        let Saved { x, out, lse } = &ops.state;
        let dqkv = backward(x, out, lse, &g);
        let [batch, seq, d] = x.dims;
        give(&ops, grads, [dqkv], [[batch, seq, 3 * d]], &device);
    }
}

fn attention_autodiff(qkv: Tensor<CpuAutodiff, 3>, h: Heads) -> Tensor<CpuAutodiff, 3> {
    let [batch, seq, d3] = qkv.dims();
    let device = qkv.device();
    let qkv: FloatTensor<CpuAutodiff> = qkv.into_primitive().tensor();
    let x = Inputs::new(host_of(&qkv), [batch, seq, d3 / 3], h);
    let (out, lse) = forward(&x);
    let dims = [batch, seq, d3 / 3];
    let prep = FusedBackward
        .prepare::<NoCheckpointing>([qkv.node.clone()])
        .compute_bound()
        .stateful();
    let result = match prep {
        // The backward needs the output on the host too: one copy, only then.
        OpsKind::Tracked(prep) => prep.finish(
            Saved {
                x,
                out: Arc::new(out.clone()),
                lse: Arc::new(lse),
            },
            primitive(out, dims, &device),
        ),
        OpsKind::UnTracked(prep) => prep.finish(primitive(out, dims, &device)),
    };
    Tensor::from_primitive(TensorPrimitive::Float(result))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Init;

    fn input<B: Backend>(dims: [usize; 3], device: &B::Device) -> Tensor<B, 3> {
        Init::<B>::new(7, device).normal(dims, 1.5).val()
    }

    fn close(a: Vec<f32>, b: Vec<f32>, what: &str) {
        crate::layers::fused::assert_close(&a, &b, 3e-5, what);
    }

    const CASES: [([usize; 3], Heads); 5] = [
        (
            [2, 9, 3 * 12],
            Heads {
                heads: 3,
                rotary_dim: 4,
                window: 0,
            },
        ),
        (
            [1, 17, 3 * 8],
            Heads {
                heads: 1,
                rotary_dim: 8,
                window: 0,
            },
        ),
        (
            [2, 11, 3 * 8],
            Heads {
                heads: 2,
                rotary_dim: 2,
                window: 3,
            },
        ),
        (
            [1, 5, 3 * 4],
            Heads {
                heads: 2,
                rotary_dim: 0,
                window: 8,
            },
        ),
        (
            [2, 6, 3 * 16],
            Heads {
                heads: 2,
                rotary_dim: 8,
                window: 1,
            },
        ),
    ];

    /// The fused kernel's output and projection gradient equal the
    /// composite's: unbounded and sliding windows, full, partial and no
    /// rotation, one head or several, sequences shorter than the window.
    #[test]
    fn fused_equals_composite_in_values_and_gradients() {
        let device = Default::default();
        for (dims, h) in CASES {
            let run = |fused: bool| {
                let qkv = input::<CpuAutodiff>(dims, &device).require_grad();
                let y = if fused {
                    attention(qkv.clone(), h)
                } else {
                    composite(qkv.clone(), h)
                };
                // A loss that weighs every output differently.
                let out = [dims[0], dims[1], dims[2] / 3];
                let n = out.iter().product::<usize>();
                let w: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) / 5.0).collect();
                let w = Tensor::<CpuAutodiff, 3>::from_data(TensorData::new(w, out), &device);
                let grads = (y.clone() * w).sum().backward();
                let g: Vec<f32> = qkv
                    .grad(&grads)
                    .expect("grad")
                    .into_data()
                    .to_vec()
                    .unwrap();
                let y: Vec<f32> = y.into_data().to_vec().unwrap();
                (y, g)
            };
            let (a, b) = (run(true), run(false));
            close(a.0, b.0, &format!("output {dims:?} {h:?}"));
            close(a.1, b.1, &format!("gradient {dims:?} {h:?}"));
        }
    }

    #[test]
    fn the_inference_path_equals_the_composite() {
        let device = Default::default();
        for (dims, h) in CASES {
            let qkv = input::<Cpu>(dims, &device);
            let fused: Vec<f32> = attention(qkv.clone(), h).into_data().to_vec().unwrap();
            let reference: Vec<f32> = composite(qkv, h).into_data().to_vec().unwrap();
            close(fused, reference, &format!("output {dims:?} {h:?}"));
        }
    }

    /// A projection that needs no gradient (a constant input) gives none,
    /// and the op does not fail.
    #[test]
    fn an_untracked_input_stays_untracked() {
        let device = Default::default();
        let (dims, h) = CASES[0];
        let qkv =
            Tensor::<CpuAutodiff, 3>::from_data(input::<Cpu>(dims, &device).into_data(), &device);
        let w = Init::<CpuAutodiff>::new(3, &device).normal([1], 1.0).val();
        let y = attention(qkv.clone(), h).sum() * w.clone();
        let grads = y.backward();
        assert!(qkv.grad(&grads).is_none());
        assert!(w.grad(&grads).is_some());
    }
}
