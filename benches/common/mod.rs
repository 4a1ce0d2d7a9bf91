//! Step timing shared by the `layers` and `torch` benchmarks: forward +
//! backward of one layer, and forward + backward + AdamW of a language model,
//! median of `reps` after one warm-up step.

use std::time::{Duration, Instant};

use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::TensorData;
use mad_search::genome::{ArchSpec, Context, Layer};
use mad_search::layers::{CpuAutodiff, Init, Mixer, Model};
use mad_search::train::masked_cross_entropy;

type B = CpuAutodiff;

/// The binary's allocator (src/main.rs), so the benchmarks time what runs.
#[global_allocator]
static ALLOC: mad_search::alloc::Allocator = mad_search::alloc::Allocator;

/// Input shape and repetitions.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub batch: usize,
    pub seq: usize,
    pub d: usize,
    pub reps: usize,
}

impl Shape {
    /// The MAD protocol's shapes: batch 128, length 128, width 128.
    pub const PROTOCOL: Shape = Shape {
        batch: 128,
        seq: 128,
        d: 128,
        reps: 3,
    };
    /// Tiny shapes, one repetition (a smoke test).
    pub const QUICK: Shape = Shape {
        batch: 2,
        seq: 16,
        d: 128,
        reps: 1,
    };
}

/// The paper's architectures the benchmarks time.
pub const ARCHITECTURES: &[&str] = &[
    "mh-attention swiglu mh-attention swiglu",
    "hyena swiglu hyena swiglu",
    "mh-hyena swiglu mh-hyena swiglu",
    "mh-hyena swiglu mh-attention swiglu",
    "mh-hyena moe-mlp mh-attention moe-mlp",
    "hyena moe-mlp mh-attention moe-mlp",
    "hyena-experts moe-mlp mh-attention moe-mlp",
    "mamba mamba mamba mamba",
    "mamba mamba mh-attention swiglu",
    "hyena swiglu mh-attention swiglu",
    "mh-gated-linear-attention swiglu mh-gated-linear-attention swiglu",
    "mamba2 mamba2 mamba2 mamba2",
    "gated-short-conv swiglu gated-short-conv swiglu",
    "gated-deltanet swiglu gated-deltanet swiglu",
];

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Median forward + backward time of one layer on `[batch, seq, d]`.
pub fn layer_step(layer: &Layer, s: &Shape) -> Duration {
    let dev = Default::default();
    let mut init = Init::<B>::new(1, &dev);
    let mixer = Mixer::<B>::new(layer, s.d, s.seq, &mut init);
    let x = init.normal([s.batch, s.seq, s.d], 1.0).val();
    let run = || {
        let t0 = Instant::now();
        let y = mixer.forward(x.clone());
        let grads = y.sum().backward();
        drop(grads);
        t0.elapsed()
    };
    run(); // warm-up
    median((0..s.reps).map(|_| run()).collect())
}

/// Median forward + backward + AdamW time of a language model (vocab 16).
pub fn model_step(spec: &ArchSpec, s: &Shape) -> Duration {
    let dev = Default::default();
    let ctx = Context {
        vocab: 16,
        seq_len: s.seq,
    };
    let mut model = Model::<B>::new(spec, ctx, 1, &dev).expect("valid genome");
    let mut optim = AdamWConfig::new().with_epsilon(1e-8).init::<B, Model<B>>();
    let n = s.batch * s.seq;
    let tokens: Vec<i64> = (0..n).map(|i| (i * 7 % 16) as i64).collect();
    let targets: Vec<i64> = (0..n).map(|i| (i * 3 % 16) as i64).collect();
    let mut times = Vec::new();
    for i in 0..=s.reps {
        let t0 = Instant::now();
        let tok =
            Tensor::<B, 2, Int>::from_data(TensorData::new(tokens.clone(), [s.batch, s.seq]), &dev);
        let tgt = Tensor::<B, 1, Int>::from_data(TensorData::new(targets.clone(), [n]), &dev);
        let logits = model.forward(tok).reshape([n, 16]);
        let loss = masked_cross_entropy(logits, tgt);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-3, model, grads);
        if i > 0 {
            times.push(t0.elapsed());
        }
    }
    median(times)
}
