//! A real learning test: every sequence mixer learns a small in-context
//! associative-recall problem that a model without a sequence mixer cannot
//! solve (its best is to guess one value of eight). Fixed seeds, a margin,
//! held-out sequences.
//!
//! Problem: each sequence first shows `PAIRS` key-value pairs, each as one
//! token (`key · VALUES + value`; 4 keys, 8 values, the key→value map drawn
//! afresh for every sequence), then `QUERIES` query tokens (one per key,
//! keys that were shown); at each query the model must output the key's
//! value. One pair per token keeps the problem within reach of a single
//! layer of any mixer (two-token pairs need an induction circuit, which
//! softmax attention forms only after thousands of steps).

use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::TensorData;
use mad_search::genome::{ArchSpec, Context, Layer, ParamValue, Primitive, Role};
use mad_search::layers::{CpuAutodiff, Model};
use mad_search::train::{IGNORE, masked_accuracy, masked_cross_entropy};
use rand::RngExt;

const KEYS: usize = 4;
const VALUES: usize = 8;
const PAIRS: usize = 8;
const QUERIES: usize = 8;
const SEQ: usize = PAIRS + QUERIES;
/// Pair tokens, then one query token per key.
const VOCAB: usize = KEYS * VALUES + KEYS;
const D: usize = 64;
const STEPS: usize = 300;
const BATCH: usize = 32;

type B = CpuAutodiff;

/// `(tokens [batch, SEQ], targets [batch·SEQ])`.
fn batch(rng: &mut rand_chacha::ChaCha8Rng, n: usize) -> (Vec<i64>, Vec<i64>) {
    let (mut tokens, mut targets) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let map: Vec<usize> = (0..KEYS).map(|_| rng.random_range(0..VALUES)).collect();
        let mut shown = Vec::new();
        for _ in 0..PAIRS {
            let k = rng.random_range(0..KEYS);
            tokens.push((k * VALUES + map[k]) as i64);
            targets.push(IGNORE);
            shown.push(k);
        }
        for _ in 0..QUERIES {
            let k = shown[rng.random_range(0..shown.len())];
            tokens.push((KEYS * VALUES + k) as i64);
            targets.push(map[k] as i64);
        }
    }
    (tokens, targets)
}

fn tensors(
    tokens: Vec<i64>,
    targets: Vec<i64>,
    n: usize,
    dev: &<B as burn::tensor::backend::BackendTypes>::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 1, Int>) {
    (
        Tensor::from_data(TensorData::new(tokens, [n, SEQ]), dev),
        Tensor::from_data(TensorData::new(targets, [n * SEQ]), dev),
    )
}

/// Held-out accuracy after training `spec`.
fn learn(spec: &ArchSpec) -> f64 {
    let dev = Default::default();
    let ctx = Context {
        vocab: VOCAB,
        seq_len: SEQ,
    };
    let mut model = Model::<B>::new(spec, ctx, 1, &dev).unwrap();
    let mut optim = AdamWConfig::new()
        .with_beta_2(0.98)
        .with_epsilon(1e-8)
        .with_weight_decay(0.0)
        .init::<B, Model<B>>();
    let mut rng = mad_search::seed::rng(7, &["learning-train"]);
    for step in 0..STEPS {
        let (tok, tgt) = batch(&mut rng, BATCH);
        let (tok, tgt) = tensors(tok, tgt, BATCH, &dev);
        let logits = model.forward(tok).reshape([BATCH * SEQ, VOCAB]);
        let loss = masked_cross_entropy(logits, tgt);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        // Linear warm-up over the first 10%, then constant.
        let lr = 3e-3 * ((step + 1) as f64 / (STEPS / 10) as f64).min(1.0);
        model = optim.step(lr, model, grads);
    }
    let eval = model.valid();
    let mut rng = mad_search::seed::rng(7, &["learning-test"]);
    let n = 256;
    let (tok, tgt) = batch(&mut rng, n);
    let dev = Default::default();
    let tok = Tensor::from_data(TensorData::new(tok, [n, SEQ]), &dev);
    let tgt = Tensor::from_data(TensorData::new(tgt, [n * SEQ]), &dev);
    let logits = eval.forward(tok).reshape([n * SEQ, VOCAB]);
    let (correct, total) = masked_accuracy(logits, tgt);
    correct as f64 / total as f64
}

/// `p` at its defaults with at most 8 heads, and the gated short
/// convolution with a kernel as long as the sequence: at its default 3
/// taps it sees the last 3 tokens (by design a local mixer, LFM2 leaves
/// recall to its attention layers; measured here: 0.207, the baseline's
/// level), so the test asks whether its gates learn recall over what the
/// kernel reaches.
fn learnable(p: Primitive) -> Layer {
    let mut l = Layer::default_for(p);
    if let Some(ParamValue::Int(h)) = l.param("n_heads", D) {
        l.set_param("n_heads", ParamValue::Int(h.min(8))).unwrap();
    }
    if p == Primitive::GatedShortConv {
        l.set_param("short_conv", ParamValue::Int(SEQ)).unwrap();
    }
    l
}

#[test]
fn every_sequence_mixer_learns_in_context_recall() {
    let verbose = std::env::var_os("MAD_LEARN_VERBOSE").is_some();
    let baseline = learn(&ArchSpec::new(
        D,
        vec![
            Layer::default_for(Primitive::SwiGlu),
            Layer::default_for(Primitive::SwiGlu),
        ],
    ));
    if verbose {
        eprintln!("no sequence mixer: {baseline:.3}");
    }
    assert!(
        baseline < 0.25,
        "a mixer-free model should not recall: {baseline:.3}"
    );
    let mut failures = Vec::new();
    // Every sequence mixer, and grouped-query attention (8 query heads on
    // 2 key/value heads).
    let mut gqa = learnable(Primitive::MhAttention);
    gqa.set_param("kv_heads", ParamValue::Int(2)).unwrap();
    let mixers = Primitive::ALL
        .iter()
        .filter(|p| p.role() != Role::Channel)
        .map(|&p| (p.name().to_string(), learnable(p)))
        .chain([("mh-attention, kv_heads 2".to_string(), gqa)]);
    for (name, mixer) in mixers {
        let layers = match mixer.role() {
            Role::Fused => vec![mixer],
            _ => vec![mixer, Layer::default_for(Primitive::SwiGlu)],
        };
        let acc = learn(&ArchSpec::new(D, layers));
        if verbose {
            eprintln!("{name}: {acc:.3}");
        }
        if acc < baseline + 0.4 {
            failures.push(format!("{name}: {acc:.3}"));
        }
    }
    assert!(
        failures.is_empty(),
        "below the mixer-free baseline ({baseline:.3}) + 0.4: {failures:?}"
    );
}
