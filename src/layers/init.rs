//! Deterministic parameter initialisation. Every initial weight is drawn from
//! one ChaCha8 stream seeded by the caller (design §4: a rerun gives the same
//! initial weights), on the host, so CPU and GPU runs start from identical
//! values. Burn's own initialisers draw from a backend-global RNG and are not
//! used.

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::TensorData;
use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// A source of initial parameters on one device.
pub struct Init<'d, B: Backend> {
    rng: ChaCha8Rng,
    device: &'d B::Device,
}

impl<'d, B: Backend> Init<'d, B> {
    /// Initialisation from `seed` (see [`crate::seed`]), placing tensors on `device`.
    pub fn new(seed: u64, device: &'d B::Device) -> Init<'d, B> {
        Init {
            rng: crate::seed::rng(seed, &["init"]),
            device,
        }
    }

    /// The device parameters are placed on.
    pub fn device(&self) -> &'d B::Device {
        self.device
    }

    /// A tensor whose elements are `f(rng, flat_index)`, row-major.
    pub fn tensor<const D: usize>(
        &mut self,
        shape: [usize; D],
        mut f: impl FnMut(&mut ChaCha8Rng, usize) -> f32,
    ) -> Tensor<B, D> {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|i| f(&mut self.rng, i)).collect();
        Tensor::from_data(TensorData::new(values, shape), self.device)
    }

    /// A trainable parameter with elements `f(rng, flat_index)`.
    pub fn param<const D: usize>(
        &mut self,
        shape: [usize; D],
        f: impl FnMut(&mut ChaCha8Rng, usize) -> f32,
    ) -> Param<Tensor<B, D>> {
        Param::from_tensor(self.tensor(shape, f))
    }

    /// U(−bound, bound).
    pub fn uniform<const D: usize>(
        &mut self,
        shape: [usize; D],
        bound: f64,
    ) -> Param<Tensor<B, D>> {
        let b = bound as f32;
        self.param(shape, |r, _| r.random_range(-b..=b))
    }

    /// N(0, std²).
    pub fn normal<const D: usize>(&mut self, shape: [usize; D], std: f64) -> Param<Tensor<B, D>> {
        self.param(shape, |r, _| {
            let z: f64 = StandardNormal.sample(r);
            (z * std) as f32
        })
    }

    /// All elements equal to `value`.
    pub fn constant<const D: usize>(
        &mut self,
        shape: [usize; D],
        value: f32,
    ) -> Param<Tensor<B, D>> {
        self.param(shape, |_, _| value)
    }

    /// A linear layer `[.., d_in] → [.., d_out]` with PyTorch's default weight
    /// init, U(±1/√d_in), and a zero bias (the reference zeroes Linear biases).
    pub fn linear(&mut self, d_in: usize, d_out: usize, bias: bool) -> Linear<B> {
        let weight = self.uniform([d_in, d_out], 1.0 / (d_in as f64).sqrt());
        let bias = bias.then(|| self.constant([d_out], 0.0));
        Linear { weight, bias }
    }

    /// A linear layer with N(0, std²) weights and a zero bias.
    pub fn linear_normal(&mut self, d_in: usize, d_out: usize, bias: bool, std: f64) -> Linear<B> {
        let weight = self.normal([d_in, d_out], std);
        let bias = bias.then(|| self.constant([d_out], 0.0));
        Linear { weight, bias }
    }
}
