//! Fused CPU kernels with their own backward, for the operations that Burn
//! ops on flex compute slowly because they materialise `[batch, heads, seq,
//! seq]` tensors and walk strided views: softmax attention ([`attention`])
//! and multi-head Hyena's Toeplitz-weighted mix ([`toeplitz`]).
//!
//! Each public function is generic over the backend like every layer, and
//! dispatches on its type: for [`Cpu`] (flex) the fused forward, for
//! [`CpuAutodiff`] the fused forward plus a custom backward step registered
//! with burn-autodiff, for any other backend (CUDA) the function composed
//! from Burn ops, which is also the reference the tests compare against
//! (values and gradients). No trait bound leaks into the rest of the crate.
//! The kernels work on host `Vec<f32>`s in parallel on the caller's rayon
//! pool (a daemon worker's pool, or the global one).

use std::any::{Any, TypeId};

use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::Ops;
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{TensorData, TensorPrimitive};

use super::{Cpu, CpuAutodiff};

pub mod attention;
pub mod toeplitz;

pub use attention::{Heads, attention};
pub use toeplitz::toeplitz_mix;

/// Which implementation a backend gets.
pub(crate) enum Dispatch {
    /// `Autodiff<Flex>`: fused forward and backward.
    Autodiff,
    /// `Flex`: fused forward.
    Plain,
    /// Anything else: Burn ops.
    Composite,
}

/// The implementation for backend `B`.
pub(crate) fn dispatch<B: Backend>() -> Dispatch {
    if TypeId::of::<B>() == TypeId::of::<CpuAutodiff>() {
        Dispatch::Autodiff
    } else if TypeId::of::<B>() == TypeId::of::<Cpu>() {
        Dispatch::Plain
    } else {
        Dispatch::Composite
    }
}

/// `t` as a tensor of backend `To`, which [`dispatch`] found to be the same
/// type as `From`.
///
/// # Panics
/// If the types differ (a bug in the caller).
pub(crate) fn cast<From: Backend, To: Backend, const D: usize>(
    t: Tensor<From, D>,
) -> Tensor<To, D> {
    let boxed: Box<dyn Any> = Box::new(t);
    match boxed.downcast::<Tensor<To, D>>() {
        Ok(t) => *t,
        Err(_) => panic!("fused kernels cast only between equal backend types"),
    }
}

/// The values of a CPU tensor, row-major.
pub(crate) fn host<const D: usize>(t: Tensor<Cpu, D>) -> Vec<f32> {
    t.into_data()
        .into_vec::<f32>()
        .expect("flex float tensors hold f32")
}

/// The values of an autodiff tensor's forward value, row-major.
pub(crate) fn host_of(t: &FloatTensor<CpuAutodiff>) -> Vec<f32> {
    host(Tensor::<Cpu, 3>::from_primitive(TensorPrimitive::Float(
        t.primitive.clone(),
    )))
}

/// A flex tensor of `values` with shape `dims`.
pub(crate) fn primitive(
    values: Vec<f32>,
    dims: [usize; 3],
    device: &burn::tensor::Device<Cpu>,
) -> FloatTensor<Cpu> {
    Tensor::<Cpu, 3>::from_data(TensorData::new(values, dims), device)
        .into_primitive()
        .tensor()
}

/// The gradient arriving at an op's output, on the host, and its device.
pub(crate) fn incoming<S, const N: usize>(
    ops: &Ops<S, N>,
    grads: &mut Gradients,
) -> (Vec<f32>, burn::tensor::Device<Cpu>) {
    let g = grads.consume::<Cpu>(&ops.node);
    let g = Tensor::<Cpu, 3>::from_primitive(TensorPrimitive::Float(g));
    let device = g.device();
    (host(g), device)
}

/// Registers `values[i]` (shape `shapes[i]`) as the gradient of the op's
/// input `i`, for the inputs that need one.
pub(crate) fn give<S, const N: usize>(
    ops: &Ops<S, N>,
    grads: &mut Gradients,
    values: [Vec<f32>; N],
    shapes: [[usize; 3]; N],
    device: &burn::tensor::Device<Cpu>,
) {
    for ((parent, grad), shape) in ops.parents.iter().zip(values).zip(shapes) {
        if let Some(node) = parent {
            grads.register::<Cpu>(node.id, primitive(grad, shape, device));
        }
    }
}

/// `a · b`.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
