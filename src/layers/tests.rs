//! Tests of every primitive: causality, chunked = recurrent, the long
//! convolution paths against the definition, parameter counts against the
//! genome's formulas, and finite non-zero gradients for every parameter.

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::{Distribution, Int, TensorData};

use super::{Cpu, CpuAutodiff, Init, Mixer, Model};
use crate::genome::{ArchSpec, Context, Layer, ParamValue, Primitive, Role};
use crate::space::SearchSpace;

pub(super) type B = Cpu;

pub(super) fn device() -> burn::tensor::Device<B> {
    Default::default()
}

/// A tensor of N(0, 1) values from a fixed seed (host-side, deterministic).
pub(super) fn randn<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<B, D> {
    let dev = device();
    let mut init = Init::<B>::new(seed, &dev);
    init.normal(shape, 1.0).val()
}

fn max_abs_diff<const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
    (a - b).abs().max().into_scalar()
}

fn max_abs<const D: usize>(a: Tensor<B, D>) -> f32 {
    a.abs().max().into_scalar()
}

pub(super) fn assert_close<const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>, rel: f32, what: &str) {
    let scale = max_abs(b.clone()).max(1.0);
    let diff = max_abs_diff(a, b);
    assert!(
        diff <= rel * scale,
        "{what}: max |diff| = {diff} (scale {scale})"
    );
}

/// Primitive `p` at small width `d`: default hyper-parameters, heads cut
/// to fit, sliding windows of 5.
pub(super) fn small_layer(p: Primitive, d: usize) -> Layer {
    let mut l = Layer::default_for(p);
    if let Some(ParamValue::Int(h)) = l.param("n_heads", d) {
        l.set_param("n_heads", ParamValue::Int(h.min(d / 4)))
            .unwrap();
    }
    if let Some(ParamValue::Int(_)) = l.param("window", d) {
        l.set_param("window", ParamValue::Int(5)).unwrap();
    }
    l.validate(d).unwrap();
    l
}

/// Every sequence mixer (and fused block) at small width, and
/// grouped-query attention (two query heads per key/value head).
fn sequence_mixers(d: usize) -> Vec<Layer> {
    let mut layers: Vec<Layer> = Primitive::ALL
        .iter()
        .filter(|p| p.role() != Role::Channel)
        .map(|&p| small_layer(p, d))
        .collect();
    layers.push(gqa(d / 4, d / 8, d));
    layers
}

/// Grouped-query attention with `heads` query and `kv_heads` key/value heads.
fn gqa(heads: usize, kv_heads: usize, d: usize) -> Layer {
    let mut l = Layer::default_for(Primitive::MhAttention);
    l.set_param("n_heads", ParamValue::Int(heads)).unwrap();
    l.set_param("kv_heads", ParamValue::Int(kv_heads)).unwrap();
    l.validate(d).unwrap();
    l
}

#[test]
fn every_sequence_mixer_is_causal() {
    let (d, seq, t) = (32, 40, 17);
    for layer in sequence_mixers(d) {
        let mixer = Mixer::<B>::new(&layer, d, seq, &mut Init::new(3, &device()));
        let x = randn([2, seq, d], 1);
        let y = mixer.forward(x.clone());
        // Change every input after position t.
        let noise = randn([2, seq - t - 1, d], 2) * 3.0;
        let changed = x.clone().slice_assign(
            [0..2, t + 1..seq, 0..d],
            x.slice([0..2, t + 1..seq, 0..d]) + noise,
        );
        let y2 = mixer.forward(changed);
        let before = |y: Tensor<B, 3>| y.slice([0..2, 0..t + 1, 0..d]);
        let after = |y: Tensor<B, 3>| y.slice([0..2, t + 1..seq, 0..d]);
        let diff = max_abs_diff(before(y.clone()), before(y2.clone()));
        assert!(
            diff <= 1e-5,
            "{}: output at ≤ {t} moved by {diff}",
            layer.primitive()
        );
        // And the later outputs do depend on the later inputs.
        assert!(
            max_abs_diff(after(y), after(y2)) > 1e-3,
            "{}: later outputs ignore later inputs",
            layer.primitive()
        );
    }
}

#[test]
fn linear_attention_chunked_equals_recurrent() {
    use super::linear_attention::{chunked, recurrent};
    // Positive features keep the normaliser away from 0 for a clean comparison.
    let q = randn([2, 3, 19, 4], 10).abs() + 0.1;
    let k = randn([2, 3, 19, 4], 11).abs() + 0.1;
    let v = randn([2, 3, 19, 5], 12);
    let reference = recurrent(q.clone(), k.clone(), v.clone());
    for chunk in [4, 8, 19, 64] {
        let y = chunked(q.clone(), k.clone(), v.clone(), chunk);
        assert_close(
            y,
            reference.clone(),
            1e-4,
            &format!("linear attention, chunk {chunk}"),
        );
    }
}

#[test]
fn gla_chunked_equals_recurrent() {
    use super::gla::{chunked, recurrent};
    let q = randn([2, 2, 23, 4], 20);
    let k = randn([2, 2, 23, 4], 21);
    let v = randn([2, 2, 23, 3], 22);
    // Log-decays from gentle to very strong (exp(−30) per step): the chunked
    // form must not overflow.
    let gk = -(randn([2, 2, 23, 4], 23).abs() * 10.0);
    let reference = recurrent(q.clone(), k.clone(), v.clone(), gk.clone());
    for chunk in [1, 4, 16, 32] {
        let y = chunked(q.clone(), k.clone(), v.clone(), gk.clone(), chunk);
        assert!(
            !y.clone().is_nan().any().into_scalar(),
            "NaN at chunk {chunk}"
        );
        assert_close(y, reference.clone(), 1e-4, &format!("GLA, chunk {chunk}"));
    }
}

#[test]
fn mamba_chunked_scan_equals_recurrent() {
    use super::mamba::{chunked_scan, recurrent};
    let (b, seq, di, n) = (2, 37, 6, 4);
    let x = randn([b, seq, di], 30);
    let dt = randn([b, seq, di], 31).abs() * 2.0; // large Δ: strong decays
    let a = -(randn([di, n], 32).abs() + 0.5);
    let bm = randn([b, seq, n], 33);
    let cm = randn([b, seq, n], 34);
    let reference = recurrent(x.clone(), dt.clone(), a.clone(), bm.clone(), cm.clone());
    for chunk in [1, 3, 8, 32, 64] {
        let y = chunked_scan(
            x.clone(),
            dt.clone(),
            a.clone(),
            bm.clone(),
            cm.clone(),
            chunk,
        );
        assert_close(
            y,
            reference.clone(),
            1e-4,
            &format!("mamba scan, chunk {chunk}"),
        );
    }
}

/// Mamba-2's scan (the selective scan with each head's Δ and A given to
/// its channels) equals the per-head recurrence with a `[head_dim,
/// d_state]` state: channel `c` belongs to head `c / head_dim`.
#[test]
fn mamba2_scan_equals_its_per_head_recurrence() {
    use super::mamba2::{Mamba2, recurrent};
    let spec = crate::genome::Mamba2 {
        expand: 2,
        d_state: 5,
        d_conv: 4,
        head_dim: 4,
    };
    let layer = Mamba2::<B>::new(&spec, 8, &mut Init::new(4, &device()));
    let s = layer.inputs(randn([2, 29, 8], 60));
    assert_eq!(s.a.dims(), [4]);
    let reference = recurrent(
        s.x.clone(),
        s.dt.clone(),
        s.a.clone(),
        s.b.clone(),
        s.c.clone(),
    );
    assert_close(layer.scan(&s), reference.clone(), 1e-4, "mamba2 scan");
    // The path of backends without the fused kernel.
    let broadcast = super::fused::ssd::as_selective_scan(
        s.x.clone(),
        s.dt.clone(),
        s.a.clone(),
        s.b.clone(),
        s.c.clone(),
    );
    assert_close(
        broadcast,
        reference.clone(),
        1e-4,
        "mamba2 as a selective scan",
    );
    // Strong decays too (Δ up to ~6, A down to −16).
    let mut strong = s;
    strong.dt = strong.dt * 60.0;
    let reference = recurrent(
        strong.x.clone(),
        strong.dt.clone(),
        strong.a.clone(),
        strong.b.clone(),
        strong.c.clone(),
    );
    assert_close(
        layer.scan(&strong),
        reference,
        1e-4,
        "mamba2 scan, strong decays",
    );
}

/// Mamba-2's forward against the reference's order of operations, composed
/// here from the layer's weights: `in_proj` → z, x, B, C, Δ; conv and SiLU
/// over x, B, C; `Δ = softplus(Δ + bias)`, `A = −exp(A_log)`; the per-head
/// recurrence plus `D x`; `RMSNorm(y ⊙ SiLU(z)) · w`; `out_proj`. The norm's
/// scale and `D` are randomised so that their init of 1 hides nothing.
#[test]
fn mamba2_layer_is_its_definition() {
    use super::mamba::softplus;
    use super::mamba2::{Mamba2, recurrent};
    use super::ops::linear;
    use burn::tensor::activation::silu;
    let (d, p, n, heads) = (8, 4, 3, 4);
    let di = p * heads;
    let spec = crate::genome::Mamba2 {
        expand: 2,
        d_state: n,
        d_conv: 4,
        head_dim: p,
    };
    let mut layer = Mamba2::<B>::new(&spec, d, &mut Init::new(8, &device()));
    layer.norm = Param::from_tensor(randn([di], 80));
    layer.skip = Param::from_tensor(randn([heads], 81));
    let (batch, seq) = (2, 11);
    let x = randn([batch, seq, d], 82);
    let proj = linear(&layer.in_proj, x.clone());
    let at = |t: &Tensor<B, 3>, from: usize, len: usize| {
        t.clone().slice([0..batch, 0..seq, from..from + len])
    };
    let z = at(&proj, 0, di);
    let xbc = silu(super::short_conv::composite(
        at(&proj, di, di + 2 * n),
        layer.conv.weight.val(),
        layer.conv.bias.val(),
    ));
    let (xs, bm, cm) = (at(&xbc, 0, di), at(&xbc, di, n), at(&xbc, di + n, n));
    let dt =
        softplus(at(&proj, 2 * di + 2 * n, heads) + layer.dt_bias.val().reshape([1, 1, heads]));
    let a = layer.a_log.val().exp().neg();
    let skip = layer
        .skip
        .val()
        .reshape([heads, 1])
        .repeat_dim(1, p)
        .reshape([1, 1, di]);
    let y = recurrent(xs.clone(), dt, a, bm, cm) + xs * skip;
    let gated = y * silu(z);
    let rms = (gated.clone().square().mean_dim(2) + 1e-5).sqrt();
    let normed = gated / rms * layer.norm.val().reshape([1, 1, di]);
    let reference = linear(&layer.out_proj, normed);
    assert_close(layer.forward(x), reference, 1e-4, "mamba2 layer");
}

/// Grouped-query attention is multi-head attention whose key and value
/// projections repeat each key/value head for the consecutive query heads
/// of its group.
#[test]
fn grouped_query_attention_is_mha_with_shared_key_value_heads() {
    use super::attention::Attention;
    let (d, heads, kv_heads) = (32, 8, 2);
    let Layer::Attention(spec) = gqa(heads, kv_heads, d) else {
        unreachable!("gqa builds attention")
    };
    let g = Attention::<B>::new(&spec, d, &mut Init::new(5, &device()));
    let (hd, kv) = (d / heads, kv_heads * d / heads);
    assert_eq!(g.qkv.weight.dims(), [d, d + 2 * kv]);
    let mut mha_spec = spec.clone();
    mha_spec.kv_heads = None;
    let mut m = Attention::<B>::new(&mha_spec, d, &mut Init::new(6, &device()));
    // Columns of the shared projection: head h of q, k, v reads kv head h / 4.
    let group = heads / kv_heads;
    let w: Vec<f32> = g.qkv.weight.val().into_data().to_vec().unwrap();
    let bias: Vec<f32> = g
        .qkv
        .bias
        .as_ref()
        .unwrap()
        .val()
        .into_data()
        .to_vec()
        .unwrap();
    let column = |j: usize| -> usize {
        if j < d {
            return j;
        }
        let (part, within) = ((j - d) / d, (j - d) % d);
        let (h, i) = (within / hd, within % hd);
        d + part * kv + (h / group) * hd + i
    };
    let width = d + 2 * kv;
    let wm: Vec<f32> = (0..d * 3 * d)
        .map(|x| w[(x / (3 * d)) * width + column(x % (3 * d))])
        .collect();
    let bm: Vec<f32> = (0..3 * d).map(|j| bias[column(j)]).collect();
    m.qkv.weight = burn::module::Param::from_tensor(Tensor::from_data(
        TensorData::new(wm, [d, 3 * d]),
        &device(),
    ));
    m.qkv.bias = Some(burn::module::Param::from_tensor(Tensor::from_data(
        TensorData::new(bm, [3 * d]),
        &device(),
    )));
    m.out = g.out.clone();
    let x = randn([2, 13, d], 61);
    assert_close(g.forward(x.clone()), m.forward(x), 1e-5, "gqa against mha");
}

/// The gated short convolution against its definition, composed here from
/// the projection's thirds and the reference short convolution.
#[test]
fn gated_short_conv_is_its_definition() {
    use super::gated_conv::GatedShortConv;
    use super::ops::linear;
    let d = 12;
    let spec = crate::genome::GatedShortConv { short_conv: 4 };
    let layer = GatedShortConv::<B>::new(&spec, d, &mut Init::new(7, &device()));
    let x = randn([3, 17, d], 62);
    let p = linear(&layer.in_proj, x.clone());
    let third = |i: usize| p.clone().slice([0..3, 0..17, i * d..(i + 1) * d]);
    let conv = super::short_conv::composite(
        third(0) * third(2),
        layer.conv.val(),
        Tensor::zeros([d], &device()),
    );
    let reference = linear(&layer.out_proj, third(1) * conv);
    assert_close(layer.forward(x), reference, 1e-5, "gated short conv");
}

#[test]
fn long_convolution_paths_equal_the_definition() {
    use super::long_conv::{block_toeplitz_conv, direct, toeplitz_conv};
    let v = randn([3, 37, 5], 40);
    let h = randn([5, 37], 41);
    let reference = direct(v.clone(), h.clone());
    assert_close(
        toeplitz_conv(v.clone(), h.clone()),
        reference.clone(),
        1e-5,
        "toeplitz",
    );
    for block in [1, 5, 8, 37, 64] {
        let y = block_toeplitz_conv(v.clone(), h.clone(), block);
        assert_close(
            y,
            reference.clone(),
            1e-5,
            &format!("block toeplitz, block {block}"),
        );
    }
}

#[test]
fn mh_hyena_mixing_equals_the_outer_product_definition() {
    use super::mh_hyena::{direct, head_kernels, mix, mix_blocked};
    let (b, heads, seq, hd) = (2, 3, 29, 4);
    let q = randn([b, heads, seq, hd], 50);
    let k = randn([b, heads, seq, hd], 51);
    let v = randn([b, heads, seq, hd], 52);
    let h = randn([heads, seq], 53);
    let skip = randn([heads], 54);
    let reference = direct(q.clone(), k.clone(), v.clone(), h.clone(), skip.clone());
    let kernel = head_kernels(h, skip);
    let y = mix(q.clone(), k.clone(), v.clone(), kernel.clone());
    assert_close(y, reference.clone(), 1e-4, "mh-hyena, full");
    for block in [1, 7, 16] {
        let y = mix_blocked(q.clone(), k.clone(), v.clone(), kernel.clone(), block);
        assert_close(
            y,
            reference.clone(),
            1e-4,
            &format!("mh-hyena, block {block}"),
        );
    }
}

/// The taps the GPU kernel gets are the Toeplitz matrix the CPU path
/// builds: `T[h, t, s] = taps[h, t − s]` on and below the diagonal, 0 above.
#[test]
fn mh_hyena_taps_are_its_toeplitz_kernels() {
    use super::mh_hyena::{head_kernels, head_taps};
    for seq in [1, 2, 13] {
        let heads = 3;
        let h = randn([heads, seq], 55);
        let skip = randn([heads], 56);
        let taps: Vec<f32> = head_taps(h.clone(), skip.clone())
            .into_data()
            .to_vec()
            .unwrap();
        let kernel: Vec<f32> = head_kernels(h, skip).into_data().to_vec().unwrap();
        for hh in 0..heads {
            for t in 0..seq {
                for s in 0..seq {
                    let want = if s <= t { taps[hh * seq + t - s] } else { 0.0 };
                    let got = kernel[(hh * seq + t) * seq + s];
                    assert!(
                        (got - want).abs() <= 1e-6,
                        "seq {seq}, head {hh}, [{t}, {s}]: {got} vs {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn parameter_counts_match_the_genome_for_every_primitive() {
    let (d, seq) = (128, 128);
    for &p in Primitive::ALL {
        let layer = Layer::default_for(p);
        let mixer = Mixer::<B>::new(&layer, d, seq, &mut Init::new(0, &device()));
        assert_eq!(mixer.num_params() as u64, layer.params(d, seq), "{p}");
    }
    // Non-default hyper-parameters too.
    let mut m = Layer::default_for(Primitive::Mamba);
    m.set_param("d_state", ParamValue::Int(8)).unwrap();
    m.set_param("dt_rank", ParamValue::Int(3)).unwrap();
    let mut s = Layer::default_for(Primitive::SwiGlu);
    s.set_param("inner", ParamValue::Int(100)).unwrap();
    let mut m2 = Layer::default_for(Primitive::Mamba2);
    m2.set_param("head_dim", ParamValue::Int(16)).unwrap();
    m2.set_param("d_state", ParamValue::Int(8)).unwrap();
    m2.set_param("expand", ParamValue::Int(1)).unwrap();
    let mut g = Layer::default_for(Primitive::GatedShortConv);
    g.set_param("short_conv", ParamValue::Int(5)).unwrap();
    let mut gdn = Layer::default_for(Primitive::GatedDeltaNet);
    gdn.set_param("n_heads", ParamValue::Int(8)).unwrap();
    gdn.set_param("expand_v", ParamValue::Int(3)).unwrap();
    gdn.set_param("short_conv", ParamValue::Int(2)).unwrap();
    for layer in [m, s, m2, g, gdn, gqa(8, 2, 64), gqa(4, 1, 64)] {
        let mixer = Mixer::<B>::new(&layer, 64, 50, &mut Init::new(0, &device()));
        assert_eq!(mixer.num_params() as u64, layer.params(64, 50));
    }
}

#[test]
fn parameter_counts_match_for_sampled_genomes_and_both_backbones() {
    let space = SearchSpace::embedded_default();
    let mut rng = crate::seed::rng(1, &["layers-test"]);
    let ctx = Context {
        vocab: 24,
        seq_len: 64,
    };
    for i in 0..200 {
        let mut spec = space.sample(&mut rng).unwrap();
        if i % 10 == 0 {
            spec.backbone = crate::genome::Backbone::AutoEncoder;
        }
        if i % 7 == 0 {
            spec.norm = crate::genome::Norm::Layer;
        }
        let model = Model::<B>::new(&spec, ctx, i, &device()).unwrap();
        assert_eq!(
            model.num_params() as u64,
            spec.params(ctx).total(),
            "{}",
            spec.compact_string()
        );
    }
}

#[test]
fn models_run_forward_and_are_deterministic() {
    let spec = ArchSpec::from_layers_str("mh-hyena moe-mlp mh-attention moe-mlp").unwrap();
    let ctx = Context {
        vocab: 16,
        seq_len: 24,
    };
    let tokens = Tensor::<B, 2, Int>::random([3, 24], Distribution::Uniform(0.0, 16.0), &device());
    let a = Model::<B>::new(&spec, ctx, 7, &device()).unwrap();
    let b = Model::<B>::new(&spec, ctx, 7, &device()).unwrap();
    let ya = a.forward(tokens.clone());
    assert_eq!(ya.dims(), [3, 24, 16]);
    assert_eq!(max_abs_diff(ya.clone(), b.forward(tokens.clone())), 0.0);
    let c = Model::<B>::new(&spec, ctx, 8, &device()).unwrap();
    assert!(max_abs_diff(ya, c.forward(tokens.clone())) > 0.0);
    // Compression backbone.
    let mut ae = spec.clone();
    ae.backbone = crate::genome::Backbone::AutoEncoder;
    let m = Model::<B>::new(&ae, ctx, 7, &device()).unwrap();
    assert_eq!(m.forward(tokens).dims(), [3, 24, 16]);
}

/// Collects, for every parameter, whether its gradient is finite and non-zero.
struct GradCheck<'a> {
    grads: &'a <CpuAutodiff as burn::tensor::backend::AutodiffBackend>::Gradients,
    path: Vec<String>,
    problems: Vec<String>,
    seen: usize,
}

impl ModuleVisitor<CpuAutodiff> for GradCheck<'_> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<CpuAutodiff, D>>) {
        self.seen += 1;
        let at = self.path.join(".");
        match param.val().grad(self.grads) {
            None => self.problems.push(format!("{at}: no gradient")),
            Some(g) => {
                let finite = !g.clone().is_nan().any().into_scalar()
                    && !g.clone().is_inf().any().into_scalar();
                let nonzero = g.abs().max().into_scalar() > 0.0;
                if !finite {
                    self.problems.push(format!("{at}: non-finite gradient"));
                } else if !nonzero {
                    self.problems.push(format!("{at}: zero gradient"));
                }
            }
        }
    }
}

#[test]
fn every_parameter_gets_a_finite_nonzero_gradient() {
    let dev = device();
    let d = 32;
    let ctx = Context {
        vocab: 11,
        seq_len: 20,
    };
    let mut layers = sequence_mixers(d);
    for p in [Primitive::SwiGlu, Primitive::Mlp, Primitive::MoeMlp] {
        layers.push(Layer::default_for(p));
    }
    let mut topk = Layer::default_for(Primitive::MoeMlp);
    topk.set_param("routing", ParamValue::Routing(crate::genome::Routing::TopK))
        .unwrap();
    layers.push(topk);
    for backbone in [
        crate::genome::Backbone::LanguageModel,
        crate::genome::Backbone::AutoEncoder,
    ] {
        for layer in &layers {
            let mut spec = ArchSpec::new(d, vec![layer.clone()]);
            spec.backbone = backbone;
            let model = Model::<CpuAutodiff>::new(&spec, ctx, 5, &dev).unwrap();
            let tokens = Tensor::<CpuAutodiff, 2, Int>::from_data(
                TensorData::new((0..4 * 20).map(|i| (i * 7 % 11) as i64).collect(), [4, 20]),
                &dev,
            );
            let targets = Tensor::<CpuAutodiff, 1, Int>::from_data(
                TensorData::new((0..4 * 20).map(|i| (i * 3 % 11) as i64).collect(), [80]),
                &dev,
            );
            let logits = model.forward(tokens).reshape([80, 11]);
            let loss = burn::nn::loss::CrossEntropyLossConfig::new()
                .init(&dev)
                .forward(logits, targets);
            let grads = loss.backward();
            let mut check = GradCheck {
                grads: &grads,
                path: Vec::new(),
                problems: Vec::new(),
                seen: 0,
            };
            model.visit(&mut check);
            assert!(
                check.seen > 4,
                "{}: visited {} params",
                layer.primitive(),
                check.seen
            );
            assert!(
                check.problems.is_empty(),
                "{} ({}): {:?}",
                layer.primitive(),
                backbone.name(),
                check.problems
            );
        }
    }
}

#[test]
fn a_thousand_sampled_genomes_build_and_run() {
    let space = SearchSpace::embedded_default();
    let mut rng = crate::seed::rng(2, &["build-1000"]);
    let ctx = Context {
        vocab: 16,
        seq_len: 16,
    };
    let tokens = Tensor::<B, 2, Int>::from_data(
        TensorData::new((0..16).map(|i| (i % 16) as i64).collect(), [1, 16]),
        &device(),
    );
    for i in 0..1000 {
        let spec = space.sample(&mut rng).unwrap();
        let model = Model::<B>::new(&spec, ctx, i, &device()).unwrap();
        let y = model.forward(tokens.clone());
        assert_eq!(y.dims(), [1, 16, 16]);
        assert!(!y.is_nan().any().into_scalar(), "{}", spec.compact_string());
    }
}
