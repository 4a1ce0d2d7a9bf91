//! [`Kernels`] on `Autodiff<B, C>`: the forward kernel runs on the inner
//! backend and, when any input is tracked, saves what the backward kernels
//! need (the inputs; for attention also the output and the log-sum-exp).

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::ops::FloatTensor;

use crate::{KernelOps, Kernels, check_gla, check_scan, check_shapes, check_taps, check_toeplitz};

/// One backward step: the output's gradient and the saved state through
/// `backward` to the `N` inputs' gradients, each registered where its input
/// is tracked.
fn step<B: Backend, S, const N: usize>(
    ops: Ops<S, N>,
    grads: &mut Gradients,
    backward: impl FnOnce(S, FloatTensor<B>) -> [FloatTensor<B>; N],
) {
    let dout = grads.consume::<B>(&ops.node);
    let g = backward(ops.state, dout);
    for (parent, g) in ops.parents.into_iter().zip(g) {
        if let Some(node) = parent {
            grads.register::<B>(node.id, g);
        }
    }
}

/// The attention's backward step.
#[derive(Debug)]
struct AttentionBackward;

/// What the backward needs: q, k, v, the output, the log-sum-exp, the scale
/// and the window.
type Saved<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    f32,
    usize,
);

impl<B: KernelOps> Backward<B, 3> for AttentionBackward {
    type State = Saved<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        step::<B, _, _>(ops, grads, |(q, k, v, out, lse, scale, window), dout| {
            B::attention_backward(q, k, v, out, lse, dout, scale, window)
        });
    }
}

/// The convolution's backward step; its state is the input and the taps.
#[derive(Debug)]
struct ConvBackward;

impl<B: KernelOps> Backward<B, 2> for ConvBackward {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        step::<B, _, _>(ops, grads, |(v, taps), dy| B::conv_backward(v, taps, dy));
    }
}

/// The recurrence's backward step; its state is q, k, v and g.
#[derive(Debug)]
struct GlaBackward;

impl<B: KernelOps> Backward<B, 4> for GlaBackward {
    type State = [FloatTensor<B>; 4];

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        step::<B, _, _>(ops, grads, |[q, k, v, g], dout| {
            B::gla_backward(q, k, v, g, dout)
        });
    }
}

/// The Toeplitz mix's backward step; its state is q, k, v and the taps.
#[derive(Debug)]
struct ToeplitzBackward;

impl<B: KernelOps> Backward<B, 4> for ToeplitzBackward {
    type State = [FloatTensor<B>; 4];

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        step::<B, _, _>(ops, grads, |[q, k, v, taps], dout| {
            B::toeplitz_backward(q, k, v, taps, dout)
        });
    }
}

/// The scan's backward step; its state is x, Δ, A, B and C.
#[derive(Debug)]
struct ScanBackward;

impl<B: KernelOps> Backward<B, 5> for ScanBackward {
    type State = [FloatTensor<B>; 5];

    fn backward(self, ops: Ops<Self::State, 5>, grads: &mut Gradients, _: &mut Checkpointer) {
        step::<B, _, _>(ops, grads, |[x, dt, a, b, c], dy| {
            B::scan_backward(x, dt, a, b, c, dy)
        });
    }
}

impl<B: KernelOps, C: CheckpointStrategy> Kernels for Autodiff<B, C> {
    fn selective_scan(
        x: Tensor<Self, 3>,
        dt: Tensor<Self, 3>,
        a: Tensor<Self, 2>,
        b: Tensor<Self, 3>,
        c: Tensor<Self, 3>,
    ) -> Tensor<Self, 3> {
        check_scan(&x, &dt, &a, &b, &c);
        let [x, dt, b, c] = [x, dt, b, c].map(|t| t.into_primitive().tensor());
        let a = a.into_primitive().tensor();
        let nodes = [&x, &dt, &a, &b, &c].map(|t| t.node.clone());
        let y = match ScanBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let inputs = [x, dt, a, b, c].map(|t| t.primitive);
                let [x, dt, a, b, c] = inputs.clone();
                prep.finish(inputs, B::scan_forward(x, dt, a, b, c))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::scan_forward(
                x.primitive,
                dt.primitive,
                a.primitive,
                b.primitive,
                c.primitive,
            )),
        };
        Tensor::from_primitive(TensorPrimitive::Float(y))
    }

    fn toeplitz_mix(
        q: Tensor<Self, 3>,
        k: Tensor<Self, 3>,
        v: Tensor<Self, 3>,
        taps: Tensor<Self, 2>,
    ) -> Tensor<Self, 3> {
        check_toeplitz(&q, &k, &v, &taps);
        let [q, k, v] = [q, k, v].map(|t| t.into_primitive().tensor());
        let taps = taps.into_primitive().tensor();
        let nodes = [&q, &k, &v, &taps].map(|t| t.node.clone());
        let out = match ToeplitzBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let inputs = [q, k, v, taps].map(|t| t.primitive);
                let [q, k, v, taps] = inputs.clone();
                prep.finish(inputs, B::toeplitz_forward(q, k, v, taps))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::toeplitz_forward(
                q.primitive,
                k.primitive,
                v.primitive,
                taps.primitive,
            )),
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }

    fn gated_recurrence(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        g: Tensor<Self, 4>,
    ) -> Tensor<Self, 4> {
        check_gla(&q, &k, &v, &g);
        let [q, k, v, g] = [q, k, v, g].map(|t| t.into_primitive().tensor());
        let nodes = [&q, &k, &v, &g].map(|t| t.node.clone());
        let out = match GlaBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let inputs = [q, k, v, g].map(|t| t.primitive);
                let [q, k, v, g] = inputs.clone();
                prep.finish(inputs, B::gla_forward(q, k, v, g))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::gla_forward(
                q.primitive,
                k.primitive,
                v.primitive,
                g.primitive,
            )),
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }

    fn causal_conv(v: Tensor<Self, 3>, taps: Tensor<Self, 2>) -> Tensor<Self, 3> {
        check_taps(&v, &taps);
        let (v, taps) = (v.into_primitive().tensor(), taps.into_primitive().tensor());
        let nodes = [v.node.clone(), taps.node.clone()];
        let y = match ConvBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = B::conv_forward(v.primitive.clone(), taps.primitive.clone());
                prep.finish((v.primitive, taps.primitive), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv_forward(v.primitive, taps.primitive)),
        };
        Tensor::from_primitive(TensorPrimitive::Float(y))
    }

    fn causal_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        scale: f32,
        window: usize,
    ) -> Tensor<Self, 4> {
        check_shapes(&q, &k, &v);
        let (q, k, v) = (
            q.into_primitive().tensor(),
            k.into_primitive().tensor(),
            v.into_primitive().tensor(),
        );
        let nodes = [q.node.clone(), k.node.clone(), v.node.clone()];
        let out = match AttentionBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (out, lse) = B::attention_forward(
                    q.primitive.clone(),
                    k.primitive.clone(),
                    v.primitive.clone(),
                    scale,
                    window,
                );
                let saved = (
                    q.primitive,
                    k.primitive,
                    v.primitive,
                    out.clone(),
                    lse,
                    scale,
                    window,
                );
                prep.finish(saved, out)
            }
            OpsKind::UnTracked(prep) => {
                let (out, _) =
                    B::attention_forward(q.primitive, k.primitive, v.primitive, scale, window);
                prep.finish(out)
            }
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }
}
