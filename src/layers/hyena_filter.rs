//! Hyena's implicit long filter: trainable positional features
//! `[t, cos(2π·1e-4·n/T), −sin(2π·1e-4·n/T)]` through an MLP with sine
//! activations (one frequency vector shared by the three sines), times a fixed
//! exponential decay window `exp(−t·|δ_c|)`, δ spaced linearly from
//! ln(0.01)/1.5 to ln(0.01)/0.3 across channels.

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::TensorData;

use super::Init;
use super::ops::{linear, scale_last};

/// The implicit filter generator for `channels` filters of length ≤ `max_len`.
#[derive(Module, Debug)]
pub struct HyenaFilter<B: Backend> {
    /// Positional features, `[max_len, 3]` (trainable).
    pub z: Param<Tensor<B, 2>>,
    /// `Linear(3, order)`.
    pub l1: Linear<B>,
    /// `Linear(order, order)`.
    pub l2: Linear<B>,
    /// `Linear(order, order)`.
    pub l3: Linear<B>,
    /// `Linear(order, channels)`, no bias.
    pub out: Linear<B>,
    /// Sine frequencies, `[order]`, initialised to 1.
    pub freq: Param<Tensor<B, 1>>,
    /// Number of filters.
    pub channels: usize,
    /// Longest filter.
    pub max_len: usize,
}

impl<B: Backend> HyenaFilter<B> {
    /// A filter bank of `channels` filters, MLP width `order`, up to `max_len` taps.
    pub fn new(channels: usize, order: usize, max_len: usize, init: &mut Init<'_, B>) -> Self {
        let t_den = max_len.saturating_sub(1).max(1) as f64;
        let z = init.param([max_len, 3], |_, i| {
            let (n, j) = ((i / 3) as f64, i % 3);
            let w = 2.0 * std::f64::consts::PI * 1e-4 * n / max_len as f64;
            (match j {
                0 => n / t_den,
                1 => w.cos(),
                _ => -w.sin(),
            }) as f32
        });
        HyenaFilter {
            z,
            l1: init.linear(3, order, true),
            l2: init.linear(order, order, true),
            l3: init.linear(order, order, true),
            out: init.linear(order, channels, false),
            freq: init.constant([order], 1.0),
            channels,
            max_len,
        }
    }

    /// The first `len` taps of every filter.
    ///
    /// # Shapes
    /// - output: `[channels, len]`
    ///
    /// # Panics
    /// If `len > max_len` (the model was built for shorter sequences).
    pub fn forward(&self, len: usize) -> Tensor<B, 2> {
        assert!(
            len <= self.max_len,
            "sequence of {len} exceeds the filter length {} the model was built for",
            self.max_len
        );
        let device = self.z.device();
        let freq = self.freq.val();
        let z = self.z.val().slice([0..len, 0..3]);
        let h = scale_last(linear(&self.l1, z), freq.clone()).sin();
        let h = scale_last(linear(&self.l2, h), freq.clone()).sin();
        let h = scale_last(linear(&self.l3, h), freq).sin();
        let h = linear(&self.out, h); // [len, channels]
        let c = self.channels;
        let t_den = self.max_len.saturating_sub(1).max(1) as f64;
        let (lo, hi) = (0.01f64.ln() / 1.5, 0.01f64.ln() / 0.3);
        let window =
            super::consts::cached("hyena_window", &[len, c, self.max_len], &device, || {
                let window: Vec<f32> = (0..len * c)
                    .map(|i| {
                        let (n, ch) = (i / c, i % c);
                        let delta = if c > 1 {
                            lo + (hi - lo) * ch as f64 / (c - 1) as f64
                        } else {
                            lo
                        };
                        (-(n as f64 / t_den) * delta.abs()).exp() as f32
                    })
                    .collect();
                Tensor::<B, 2>::from_data(TensorData::new(window, [len, c]), &device)
            });
        (h * window).swap_dims(0, 1)
    }
}
