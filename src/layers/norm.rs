//! The norm before every layer and at the end of the backbone: RMSNorm
//! (eps 1e-5, learnable scale; mad-protocol §8) or LayerNorm (learnable
//! scale and bias). Written here rather than taken from burn-nn so that the
//! broadcasts stay on flex's fast path ([`super::ops::fit`]).

use burn::module::Param;
use burn::prelude::*;

use super::Init;
use super::ops::{fit, scale_last};
use crate::genome::Norm as NormKind;

/// RMSNorm or LayerNorm over the last dimension.
#[derive(Module, Debug)]
pub struct Norm<B: Backend> {
    /// Scale γ, `[d]`, init 1.
    pub gamma: Param<Tensor<B, 1>>,
    /// Bias β, `[d]`, init 0 (LayerNorm only).
    pub beta: Option<Param<Tensor<B, 1>>>,
    /// ε inside the square root.
    pub epsilon: f64,
}

impl<B: Backend> Norm<B> {
    /// A norm of width `d`.
    pub fn new(kind: NormKind, d: usize, init: &mut Init<'_, B>) -> Norm<B> {
        Norm {
            gamma: init.constant([d], 1.0),
            beta: (kind == NormKind::Layer).then(|| init.constant([d], 0.0)),
            epsilon: 1e-5,
        }
    }

    /// # Shapes
    /// - x: `[..., d]` → `[..., d]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dims = x.dims();
        let centred = match self.beta {
            Some(_) => x.clone() - fit(x.mean_dim(D - 1), dims),
            None => x,
        };
        let ms = centred.clone().square().mean_dim(D - 1);
        let inv = (ms + self.epsilon).sqrt().recip();
        let y = scale_last(centred * fit(inv, dims), self.gamma.val());
        match &self.beta {
            Some(beta) => {
                let mut shape = [1usize; D];
                shape[D - 1] = dims[D - 1];
                y + fit(beta.val().reshape(shape), dims)
            }
            None => y,
        }
    }
}
