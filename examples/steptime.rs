use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::TensorData;
use mad_search::genome::{ArchSpec, Context};
use mad_search::layers::{CpuAutodiff, Model};
use mad_search::train::masked_cross_entropy;
type B = CpuAutodiff;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let layers = &args[1];
    let d: usize = args[2].parse().unwrap();
    let batch: usize = args[3].parse().unwrap();
    let seq: usize = args[4].parse().unwrap();
    let spec = ArchSpec {
        d_model: d,
        ..ArchSpec::from_layers_str(layers).unwrap()
    };
    let dev = Default::default();
    let ctx = Context {
        vocab: 16,
        seq_len: seq,
    };
    let mut model = Model::<B>::new(&spec, ctx, 1, &dev).unwrap();
    let mut optim = AdamWConfig::new().with_epsilon(1e-8).init::<B, Model<B>>();
    let tok: Vec<i64> = (0..batch * seq).map(|i| (i * 7 % 16) as i64).collect();
    let tgt: Vec<i64> = (0..batch * seq).map(|i| (i * 3 % 16) as i64).collect();
    let mut times = vec![];
    for _ in 0..6 {
        let t0 = std::time::Instant::now();
        let tk = Tensor::<B, 2, Int>::from_data(TensorData::new(tok.clone(), [batch, seq]), &dev);
        let tg = Tensor::<B, 1, Int>::from_data(TensorData::new(tgt.clone(), [batch * seq]), &dev);
        let t1 = std::time::Instant::now();
        let logits = model.forward(tk).reshape([batch * seq, 16]);
        let loss = masked_cross_entropy(logits, tg);
        let _ = loss.clone().into_scalar();
        let t2 = std::time::Instant::now();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let t3 = std::time::Instant::now();
        model = optim.step(1e-3, model, grads);
        let t4 = std::time::Instant::now();
        times.push((t1 - t0, t2 - t1, t3 - t2, t4 - t3));
    }
    for t in &times[2..] {
        println!("data {:?} fwd {:?} bwd {:?} opt {:?}", t.0, t.1, t.2, t.3);
    }
    let _ = model.valid();
}
