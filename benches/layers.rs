//! Step time of every primitive and of the paper's architectures on this
//! machine: forward + backward of one layer on `[batch, seq, d]` inputs, and
//! forward + backward + AdamW step of whole language models.
//!
//! `cargo bench --bench layers` measures at batch 128, length 128, width 128
//! (the MAD protocol's shapes) and prints a table; `-- --quick` runs tiny
//! shapes once (CI's smoke test); `-- --only NAME` restricts the rows.

use std::time::{Duration, Instant};

use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::TensorData;
use mad_search::genome::{ArchSpec, Context, Layer, Primitive};
use mad_search::layers::{CpuAutodiff, Init, Mixer, Model};
use mad_search::train::masked_cross_entropy;

type B = CpuAutodiff;

struct Shape {
    batch: usize,
    seq: usize,
    d: usize,
    reps: usize,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Median forward + backward time of one layer.
fn layer_step(layer: &Layer, s: &Shape) -> Duration {
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
fn model_step(spec: &ArchSpec, s: &Shape) -> Duration {
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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let s = if quick {
        Shape {
            batch: 2,
            seq: 16,
            d: 128,
            reps: 1,
        }
    } else {
        Shape {
            batch: 128,
            seq: 128,
            d: 128,
            reps: 3,
        }
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "mad-search layer benchmark: batch {}, length {}, width {}, {} CPU threads, median of {}",
        s.batch, s.seq, s.d, threads, s.reps
    );
    let wanted = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    println!("\n{:<28} {:>14}", "primitive (one layer)", "fwd+bwd ms");
    for &p in Primitive::ALL {
        if !wanted(p.name()) {
            continue;
        }
        let t = layer_step(&Layer::default_for(p), &s);
        println!("{:<28} {:>14.1}", p.name(), t.as_secs_f64() * 1e3);
    }
    println!(
        "\n{:<44} {:>20}",
        "architecture (LM, vocab 16)", "fwd+bwd+AdamW ms"
    );
    for layers in [
        "mh-attention swiglu mh-attention swiglu",
        "hyena swiglu hyena swiglu",
        "mh-hyena swiglu mh-hyena swiglu",
        "mh-hyena swiglu mh-attention swiglu",
        "mh-hyena moe-mlp mh-attention moe-mlp",
        "hyena moe-mlp mh-attention moe-mlp",
        "hyena-experts moe-mlp mh-attention moe-mlp",
        "mamba mamba mamba mamba",
    ] {
        if !wanted(layers) {
            continue;
        }
        let spec = ArchSpec::from_layers_str(layers).expect("known names");
        let t = model_step(&spec, &s);
        println!("{:<44} {:>20.1}", layers, t.as_secs_f64() * 1e3);
    }
}
