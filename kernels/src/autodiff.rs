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

use crate::{KernelOps, Kernels, check_gla, check_shapes, check_taps};

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
        let dout = grads.consume::<B>(&ops.node);
        let (q, k, v, out, lse, scale, window) = ops.state;
        let g = B::attention_backward(q, k, v, out, lse, dout, scale, window);
        for (parent, g) in ops.parents.into_iter().zip(g) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, g);
            }
        }
    }
}

/// The convolution's backward step; its state is the input and the taps.
#[derive(Debug)]
struct ConvBackward;

impl<B: KernelOps> Backward<B, 2> for ConvBackward {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<B>(&ops.node);
        let (v, taps) = ops.state;
        let g = B::conv_backward(v, taps, dy);
        for (parent, g) in ops.parents.into_iter().zip(g) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, g);
            }
        }
    }
}

/// The recurrence's backward step; its state is q, k, v and g.
#[derive(Debug)]
struct GlaBackward;

impl<B: KernelOps> Backward<B, 4> for GlaBackward {
    type State = [FloatTensor<B>; 4];

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dout = grads.consume::<B>(&ops.node);
        let [q, k, v, g] = ops.state;
        let grad = B::gla_backward(q, k, v, g, dout);
        for (parent, grad) in ops.parents.into_iter().zip(grad) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: KernelOps, C: CheckpointStrategy> Kernels for Autodiff<B, C> {
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
