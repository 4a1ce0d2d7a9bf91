//! SwiGLU's gate `h = SiLU(a) ⊙ b = a σ(a) b` as one CPU kernel with its own
//! backward.
//!
//! Composed from Burn ops it is a sigmoid (a libm `exp` per element, an add,
//! a reciprocal), two products, and in the backward the sigmoid's and both
//! products' gradients: seven passes over `[batch, seq, inner]` tensors that
//! were a quarter of a SwiGLU layer's step at the protocol's shape (`perf`
//! of `cargo bench --bench torch -- --layers --only swiglu`: `__expf_fma`
//! 14 %, flex's unary ops 9 %, its binary ops 4 %, beside the matrix
//! products' 60 %). Here the forward is one pass and the backward one pass,
//! with the vectorised [`super::exp`]:
//! `∂a = g b σ(a) (1 + a (1 − σ(a)))`, `∂b = g a σ(a)`.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::silu;
use rayon::prelude::*;

use super::{Dispatch, cast, dispatch, give, host, host_of, incoming, primitive, record};
use crate::layers::{Cpu, CpuAutodiff};

/// Elements per parallel task: large enough that a task's overhead is
/// noise, small enough that two cores share a `[128, 128, 352]` tensor.
const CHUNK: usize = 1 << 14;

/// `SiLU(a) ⊙ b`.
///
/// # Shapes
/// - a, b: `[batch, seq, inner]` → `[batch, seq, inner]`
///
/// # Panics
/// If the shapes differ (the kernel does not broadcast).
pub fn silu_gate<B: Backend>(a: Tensor<B, 3>, b: Tensor<B, 3>) -> Tensor<B, 3> {
    assert_eq!(a.dims(), b.dims(), "the gate's operands have one shape");
    match dispatch::<B>() {
        Dispatch::Autodiff => cast(gate_autodiff(cast(a), cast(b))),
        Dispatch::Plain => cast(gate_plain(cast(a), cast(b))),
        Dispatch::Composite => composite(a, b),
    }
}

/// The gate from Burn ops: the reference of the tests, and what every
/// backend but flex runs.
pub fn composite<B: Backend>(a: Tensor<B, 3>, b: Tensor<B, 3>) -> Tensor<B, 3> {
    silu(a) * b
}

/// σ(x), through the vectorised `exp` of `−|x|` only: that `exp` saturates
/// above 88.3 instead of overflowing, so `1 / (1 + e^{−x})` would leave σ
/// at 4.6e−39 below −88.3 and `x σ(x)` would grow with `|x|`; here σ is 0
/// there (and SiLU of −∞ is NaN, as Burn's).
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    let e = super::exp(-x.abs());
    let r = 1.0 / (1.0 + e);
    if x >= 0.0 { r } else { e * r }
}

fn forward(a: &[f32], b: &[f32]) -> Vec<f32> {
    let mut h = vec![0f32; a.len()];
    h.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(h, (a, b))| {
            for ((h, &a), &b) in h.iter_mut().zip(a).zip(b) {
                *h = a * sigmoid(a) * b;
            }
        });
    h
}

/// `[∂a, ∂b]` from the output gradient `g`.
fn backward(a: &[f32], b: &[f32], g: &[f32]) -> [Vec<f32>; 2] {
    let (mut da, mut db) = (vec![0f32; a.len()], vec![0f32; a.len()]);
    da.par_chunks_mut(CHUNK)
        .zip(db.par_chunks_mut(CHUNK))
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .zip(g.par_chunks(CHUNK))
        .for_each(|(((da, db), (a, b)), g)| {
            for i in 0..da.len().min(g.len()) {
                let (x, s) = (a[i], sigmoid(a[i]));
                da[i] = g[i] * b[i] * s * (1.0 + x * (1.0 - s));
                db[i] = g[i] * x * s;
            }
        });
    [da, db]
}

fn gate_plain(a: Tensor<Cpu, 3>, b: Tensor<Cpu, 3>) -> Tensor<Cpu, 3> {
    let (dims, device) = (a.dims(), a.device());
    let h = forward(&host(a), &host(b));
    Tensor::from_data(TensorData::new(h, dims), &device)
}

/// The operands, kept for the backward.
#[derive(Clone, Debug)]
struct Inputs {
    a: Arc<Vec<f32>>,
    b: Arc<Vec<f32>>,
    dims: [usize; 3],
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
        give(
            &ops,
            grads,
            backward(&s.a, &s.b, &g),
            [s.dims, s.dims],
            &device,
        );
    }
}

fn gate_autodiff(a: Tensor<CpuAutodiff, 3>, b: Tensor<CpuAutodiff, 3>) -> Tensor<CpuAutodiff, 3> {
    let (dims, device) = (a.dims(), a.device());
    let (a, b) = (a.into_primitive().tensor(), b.into_primitive().tensor());
    let s = Inputs {
        a: Arc::new(host_of(&a)),
        b: Arc::new(host_of(&b)),
        dims,
    };
    let output = primitive(forward(&s.a, &s.b), dims, &device);
    record(FusedBackward, [&a, &b], s, output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Init;

    fn close(a: &[f32], b: &[f32], what: &str) {
        crate::layers::fused::assert_close(a, b, 2e-6, what);
    }

    /// Output and both gradients equal the composite's, over inputs from
    /// deep negative (σ ≈ 0) to large positive (σ ≈ 1), on shapes that do
    /// and do not fill a parallel chunk; the inference path gives the same
    /// output; an input that needs no gradient gets none.
    #[test]
    fn fused_equals_composite_in_values_and_gradients() {
        let device = Default::default();
        for dims in [[2, 5, 7], [1, 3, 1], [3, 64, 200]] {
            let operands = || {
                let mut init = Init::<Cpu>::new(11, &device);
                [
                    init.normal(dims, 6.0).val().into_data(),
                    init.normal(dims, 1.0).val().into_data(),
                ]
            };
            let n: usize = dims.iter().product();
            let g: Vec<f32> = (0..n).map(|i| ((i * 31 % 11) as f32 - 5.0) / 5.0).collect();
            let run = |fused: bool, track_b: bool| {
                let [a, b] = operands().map(|d| Tensor::<CpuAutodiff, 3>::from_data(d, &device));
                let a = a.require_grad();
                let b = if track_b { b.require_grad() } else { b };
                let h = if fused {
                    silu_gate(a.clone(), b.clone())
                } else {
                    composite(a.clone(), b.clone())
                };
                let g =
                    Tensor::<CpuAutodiff, 3>::from_data(TensorData::new(g.clone(), dims), &device);
                let grads = (h.clone() * g).sum().backward();
                let grad = |t: &Tensor<CpuAutodiff, 3>| {
                    t.grad(&grads)
                        .map(|d| d.into_data().to_vec::<f32>().unwrap())
                };
                (h.into_data().to_vec::<f32>().unwrap(), grad(&a), grad(&b))
            };
            let (f, r) = (run(true, true), run(false, true));
            let case = format!("{dims:?}");
            close(&f.0, &r.0, &format!("output {case}"));
            close(&f.1.unwrap(), &r.1.unwrap(), &format!("da {case}"));
            close(&f.2.unwrap(), &r.2.unwrap(), &format!("db {case}"));
            let untracked = run(true, false);
            assert!(untracked.2.is_none(), "b needs no gradient");
            close(
                &untracked.1.unwrap(),
                &run(false, false).1.unwrap(),
                "da, b untracked",
            );

            let [a, b] = operands().map(|d| Tensor::<Cpu, 3>::from_data(d, &device));
            let plain: Vec<f32> = silu_gate(a.clone(), b.clone())
                .into_data()
                .to_vec()
                .unwrap();
            let reference: Vec<f32> = composite(a, b).into_data().to_vec().unwrap();
            close(&plain, &reference, &format!("inference {case}"));
        }
    }

    /// Saturated and non-finite inputs behave as SiLU does: σ(−100) ≈ 0
    /// gives a vanishing output and gradients, far below the `exp`'s range
    /// exactly 0 (not `x · e^{−88.3}`, which grows with `|x|`), σ(100) = 1
    /// gives `a b`, NaN stays NaN and −∞ gives NaN (∞ · 0), as Burn's SiLU.
    #[test]
    fn saturated_and_nan_inputs() {
        let h = forward(
            &[-100.0, 100.0, f32::NAN, -1e38, f32::MIN, f32::NEG_INFINITY],
            &[2.0, 2.0, 1.0, 1.0, 1.0, 1.0],
        );
        assert!(h[0].abs() < 1e-30, "{}", h[0]);
        assert_eq!(h[1], 200.0);
        assert!(h[2].is_nan());
        assert_eq!((h[3], h[4]), (0.0, 0.0));
        assert!(h[5].is_nan());
        for x in [-1e38, f32::MIN] {
            let [da, db] = backward(&[x], &[1.0], &[1.0]);
            assert_eq!((da[0], db[0]), (0.0, 0.0), "at {x}");
        }
        let [da, db] = backward(&[-100.0, 100.0], &[2.0, 2.0], &[1.0, 1.0]);
        assert!(da[0].abs() < 1e-30 && db[0].abs() < 1e-30, "{da:?} {db:?}");
        assert_eq!((da[1], db[1]), (2.0, 100.0));
    }
}
