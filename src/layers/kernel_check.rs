//! `mad-search kernel-check`: every `mad-kernels` kernel on the device at
//! hand against the same function composed from Burn ops
//! ([`mad_kernels::reference`]) on flex, the CPU, at run time (the CPU side
//! shares no code with the GPU backend, so a fault in the backend's own ops
//! cannot hide in both): the output and every input's gradient of a
//! weighted sum. The GPU machine has no Rust toolchain, so the CUDA path's
//! equality checks travel in the release binary (`scripts/gpu-check` runs
//! this first); CI runs the same on wgpu (lavapipe). The cases are the
//! layers' shapes at small width plus the edges the kernels' indexing has
//! (a sequence of one, odd sizes, more units than one cube holds).
//!
//! [`run_models`] does the same for whole models — the paper's baselines and
//! one model per other primitive, at the protocol's width — so that a
//! fault in the backend's own ops (burn-fusion included) that the kernels'
//! cases do not reach still shows before a search trains on the device.

#![cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::backend::AutodiffBackend;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
use mad_kernels::{Kernels, reference};

/// The reference's backend: flex, the CPU, with gradients.
type Flex = crate::layers::CpuAutodiff;

/// Largest error allowed, relative to the reference's largest magnitude
/// (at least 1): the kernels sum in another order than Burn's ops.
pub const TOLERANCE: f32 = 2e-3;

/// Relative size of the nudge [`run_models`] gives every parameter of the
/// reference model to measure its noise floor: about ten f32 roundings.
const NUDGE: f32 = 1e-6;

/// How many noise floors a model's difference may hold on top of
/// [`TOLERANCE`].
const FLOOR_SLACK: f32 = 4.0;

/// One kernel (or model) on one shape against its reference.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Check {
    /// The kernel, or `model`.
    pub kernel: &'static str,
    /// The case, in words (shapes and parameters).
    pub case: String,
    /// The largest relative error (to the reference's largest magnitude,
    /// at least 1) of the tensor whose value is furthest over its allowance:
    /// the output or a gradient.
    pub worst: f32,
    /// That value's allowance, relative as `worst`: [`TOLERANCE`], plus its
    /// noise floor for a model ([`run_model`]).
    pub allowed: f32,
    /// Which of them it is (`output`, `gradient of q`, …).
    pub worst_of: String,
    /// Whether every value the kernel gave is finite.
    pub finite: bool,
    /// Whether every value is within its allowance (and the reference and
    /// its floor finite).
    pub within: bool,
}

impl Check {
    /// Within its allowance and finite.
    pub fn passed(&self) -> bool {
        self.finite && self.within
    }
}

/// `dims` of deterministic values in (−2, 2).
fn filled<B: Backend, const D: usize>(
    dims: [usize; D],
    salt: f32,
    dev: &B::Device,
) -> Tensor<B, D> {
    let n = dims.iter().product::<usize>();
    let values = (0..n)
        .map(|i| 2.0 * ((i as f32) * 0.37 + salt).sin() * ((i as f32) * 0.011).cos())
        .collect::<Vec<f32>>();
    Tensor::from_data(TensorData::new(values, dims), dev)
}

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap_or_default()
}

fn grad<B: AutodiffBackend, const D: usize>(t: &Tensor<B, D>, grads: &B::Gradients) -> Vec<f32> {
    t.grad(grads).map(values).unwrap_or_default()
}

/// Compares `pairs` of (what, kernel's values, reference's values).
fn check(kernel: &'static str, case: String, pairs: Vec<(String, Vec<f32>, Vec<f32>)>) -> Check {
    let pairs = pairs
        .into_iter()
        .map(|(what, got, want)| (what, got, want, Vec::new()))
        .collect();
    check_floored(kernel, case, pairs)
}

/// What is compared, its values, the reference's and their noise floors.
type Floored = (String, Vec<f32>, Vec<f32>, Vec<f32>);

/// [`check`] with a noise floor per value: each pair carries, besides the
/// value and its reference, how far the reference moves under a nudge
/// (empty: not measured, no floor). A value passes within [`TOLERANCE`] of
/// the reference's scale plus [`FLOOR_SLACK`] times its own floor; a
/// non-finite value, reference or floor fails.
fn check_floored(kernel: &'static str, case: String, pairs: Vec<Floored>) -> Check {
    let mut out = Check {
        kernel,
        case,
        worst: 0.0,
        allowed: TOLERANCE,
        worst_of: "output".into(),
        finite: true,
        within: true,
    };
    // The pair with the value furthest over (or least under) its allowance
    // is the one shown.
    let mut most = -1f32;
    for (what, got, want, floor) in pairs {
        out.finite &= got.iter().all(|v| v.is_finite());
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        let floored = !floor.is_empty();
        let (error, allowed, ratio) = if got.len() != want.len()
            || (floored && floor.len() != want.len())
        {
            (f32::INFINITY, TOLERANCE, f32::INFINITY)
        } else {
            // The largest difference, and the value furthest over its
            // allowance (its allowance, the ratio).
            let (mut error, mut at) = (0f32, (TOLERANCE * scale, -1f32));
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                let d = (a - b).abs();
                let allow = TOLERANCE * scale + if floored { FLOOR_SLACK * floor[i] } else { 0.0 };
                // NaN anywhere (value, reference or floor) counts as over.
                let (d, r) = if d.is_nan() || !allow.is_finite() {
                    (if d.is_nan() { f32::INFINITY } else { d }, f32::INFINITY)
                } else {
                    (d, d / allow)
                };
                error = error.max(d);
                if r > at.1 {
                    at = (allow, r);
                }
            }
            (error / scale, at.0 / scale, at.1)
        };
        out.within &= ratio <= 1.0;
        if ratio > most {
            most = ratio;
            out.worst = error;
            out.allowed = allowed;
            out.worst_of = what;
        }
    }
    out
}

/// Runs `kernel` on `a` (backend `B`) and `reference` on `b` (the same
/// inputs on flex, the CPU: a reference independent of the GPU backend's
/// own ops), each through the same weighted sum and its backward, and
/// compares the outputs and every input's gradient.
#[allow(clippy::too_many_arguments)]
fn compare<B: AutodiffBackend, I, J, const D: usize>(
    name: &'static str,
    case: String,
    names: &[&str],
    (a, b): (I, J),
    leaves: impl Fn(&I, &B::Gradients) -> Vec<Vec<f32>>,
    cpu_leaves: impl Fn(&J, &<Flex as AutodiffBackend>::Gradients) -> Vec<Vec<f32>>,
    kernel: impl Fn(&I) -> Tensor<B, D>,
    reference: impl Fn(&J) -> Tensor<Flex, D>,
) -> Check {
    let (y, want) = (kernel(&a), reference(&b));
    let ga = (y.clone() * filled::<B, D>(y.dims(), 3.0, &y.device()))
        .sum()
        .backward();
    let gb = (want.clone() * filled::<Flex, D>(want.dims(), 3.0, &want.device()))
        .sum()
        .backward();
    let mut pairs = vec![("output".to_string(), values(y), values(want))];
    for ((n, got), want) in names.iter().zip(leaves(&a, &ga)).zip(cpu_leaves(&b, &gb)) {
        pairs.push((format!("gradient of {n}"), got, want));
    }
    check(name, case, pairs)
}

/// Attention's inputs on any backend.
fn qkv<B: AutodiffBackend>(dims: [usize; 4], dev: &B::Device) -> [Tensor<B, 4>; 3] {
    [0.0, 1.0, 2.0].map(|s| filled::<B, 4>(dims, s, dev).require_grad())
}

/// The long convolution's inputs.
fn conv_inputs<B: AutodiffBackend>(
    [batch, seq, channels]: [usize; 3],
    dev: &B::Device,
) -> (Tensor<B, 3>, Tensor<B, 2>) {
    (
        filled::<B, 3>([batch, seq, channels], 0.0, dev).require_grad(),
        filled::<B, 2>([seq, channels], 1.0, dev).require_grad(),
    )
}

/// The gated recurrence's inputs (log-decays in (−2, 0]).
fn gla_inputs<B: AutodiffBackend>(
    key: [usize; 4],
    value: [usize; 4],
    dev: &B::Device,
) -> [Tensor<B, 4>; 4] {
    [
        filled::<B, 4>(key, 0.0, dev) * 0.5,
        filled::<B, 4>(key, 1.0, dev) * 0.5,
        filled::<B, 4>(value, 2.0, dev),
        filled::<B, 4>(key, 4.0, dev).abs().neg(),
    ]
    .map(|t| t.require_grad())
}

/// The Toeplitz mix's inputs.
type MixInputs<B> = ([Tensor<B, 3>; 3], Tensor<B, 2>);

fn mix_inputs<B: AutodiffBackend>(
    stream: [usize; 3],
    heads: usize,
    dev: &B::Device,
) -> MixInputs<B> {
    (
        [0.0, 1.0, 2.0].map(|s| filled::<B, 3>(stream, s, dev).require_grad()),
        filled::<B, 2>([heads, stream[1]], 4.0, dev).require_grad(),
    )
}

/// The selective scan's inputs (Δ > 0, A < 0).
type ScanInputs<B> = (
    Tensor<B, 3>,
    Tensor<B, 3>,
    Tensor<B, 2>,
    Tensor<B, 3>,
    Tensor<B, 3>,
);

fn scan_inputs<B: AutodiffBackend>(
    [batch, seq, channels]: [usize; 3],
    n: usize,
    dev: &B::Device,
) -> ScanInputs<B> {
    let stream = |s| filled::<B, 3>([batch, seq, channels], s, dev);
    let state = |s| filled::<B, 3>([batch, seq, n], s, dev).require_grad();
    (
        stream(0.0).require_grad(),
        (stream(1.0).abs() + 0.01).require_grad(),
        (filled::<B, 2>([channels, n], 2.0, dev).abs() + 0.5)
            .neg()
            .require_grad(),
        state(3.0),
        state(4.0),
    )
}

/// Every kernel on its cases, on backend `B` and `dev`, each against its
/// reference on flex (the CPU).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub fn run<B: AutodiffBackend + Kernels>(dev: &B::Device) -> Vec<Check> {
    let cpu = Default::default();
    let mut out = Vec::new();
    for (dims, window) in [
        ([2, 4, 37, 16], 0),
        ([1, 2, 20, 8], 5),
        ([2, 1, 1, 4], 0),
        ([2, 4, 70, 32], 0),
    ] {
        let scale = 1.0 / (dims[3] as f32).sqrt();
        out.push(compare::<B, _, _, 4>(
            "causal attention",
            format!("[batch, heads, seq, hd] {dims:?}, window {window}"),
            &["q", "k", "v"],
            (qkv::<B>(dims, dev), qkv::<Flex>(dims, &cpu)),
            |t, g| t.iter().map(|t| grad(t, g)).collect(),
            |t, g| t.iter().map(|t| grad(t, g)).collect(),
            |[q, k, v]| B::causal_attention(q.clone(), k.clone(), v.clone(), scale, window),
            |[q, k, v]| reference::causal_attention(q.clone(), k.clone(), v.clone(), scale, window),
        ));
    }
    for stream in [[2, 24, 32], [1, 1, 3], [3, 64, 40]] {
        out.push(compare::<B, _, _, 3>(
            "long convolution",
            format!("[batch, seq, channels] {stream:?}"),
            &["v", "taps"],
            (
                conv_inputs::<B>(stream, dev),
                conv_inputs::<Flex>(stream, &cpu),
            ),
            |(v, taps), g| vec![grad(v, g), grad(taps, g)],
            |(v, taps), g| vec![grad(v, g), grad(taps, g)],
            |(v, taps)| B::causal_conv(v.clone(), taps.clone()),
            |(v, taps)| reference::causal_conv(v.clone(), taps.clone()),
        ));
    }
    for (key, dv) in [
        ([2, 3, 21, 16], 16),
        ([1, 2, 9, 4], 7),
        ([2, 2, 65, 32], 32),
    ] {
        let value = [key[0], key[1], key[2], dv];
        out.push(compare::<B, _, _, 4>(
            "gated recurrence",
            format!("q, k, g {key:?}, v {value:?}"),
            &["q", "k", "v", "g"],
            (
                gla_inputs::<B>(key, value, dev),
                gla_inputs::<Flex>(key, value, &cpu),
            ),
            |t, g| t.iter().map(|t| grad(t, g)).collect(),
            |t, g| t.iter().map(|t| grad(t, g)).collect(),
            |[q, k, v, g]| B::gated_recurrence(q.clone(), k.clone(), v.clone(), g.clone()),
            |[q, k, v, g]| reference::gated_recurrence(q.clone(), k.clone(), v.clone(), g.clone()),
        ));
    }
    for (stream, heads) in [([2, 33, 32], 4), ([1, 1, 8], 1), ([2, 40, 64], 16)] {
        out.push(compare::<B, _, _, 3>(
            "toeplitz mix",
            format!("[batch, seq, d] {stream:?}, {heads} heads"),
            &["q", "k", "v", "taps"],
            (
                mix_inputs::<B>(stream, heads, dev),
                mix_inputs::<Flex>(stream, heads, &cpu),
            ),
            |([q, k, v], taps), g| vec![grad(q, g), grad(k, g), grad(v, g), grad(taps, g)],
            |([q, k, v], taps), g| vec![grad(q, g), grad(k, g), grad(v, g), grad(taps, g)],
            |([q, k, v], taps)| B::toeplitz_mix(q.clone(), k.clone(), v.clone(), taps.clone()),
            |([q, k, v], taps)| {
                reference::toeplitz_mix(q.clone(), k.clone(), v.clone(), taps.clone())
            },
        ));
    }
    for (stream, n) in [([2, 21, 16], 4), ([1, 1, 8], 4), ([2, 40, 256], 16)] {
        out.push(compare::<B, _, _, 3>(
            "selective scan",
            format!("[batch, seq, d_inner] {stream:?}, d_state {n}"),
            &["x", "dt", "A", "B", "C"],
            (
                scan_inputs::<B>(stream, n, dev),
                scan_inputs::<Flex>(stream, n, &cpu),
            ),
            |(x, dt, a, b, c), g| vec![grad(x, g), grad(dt, g), grad(a, g), grad(b, g), grad(c, g)],
            |(x, dt, a, b, c), g| vec![grad(x, g), grad(dt, g), grad(a, g), grad(b, g), grad(c, g)],
            |(x, dt, a, b, c)| {
                B::selective_scan(x.clone(), dt.clone(), a.clone(), b.clone(), c.clone())
            },
            |(x, dt, a, b, c)| {
                reference::selective_scan(x.clone(), dt.clone(), a.clone(), b.clone(), c.clone())
            },
        ));
    }
    out
}

/// Every parameter's gradient, in visiting order, with its path.
struct Grads<'a, B: AutodiffBackend> {
    grads: &'a B::Gradients,
    path: Vec<String>,
    out: Vec<(String, Vec<f32>)>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Grads<'_, B> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let at = self.path.join(".");
        let g = param.val().grad(self.grads).map(values).unwrap_or_default();
        self.out.push((at, g));
    }
}

/// Every float parameter times `1 + nudge · s`, `s` a fixed pattern in
/// (−1, 1), still a leaf that requires its gradient.
struct Nudge {
    nudge: f32,
}

impl<B: AutodiffBackend> burn::module::ModuleMapper<B> for Nudge {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let dims = tensor.dims();
        let n = dims.iter().product::<usize>();
        let factor = filled::<B::InnerBackend, 1>([n], 5.0, &tensor.device()).reshape(dims)
            * 0.5
            * self.nudge
            + 1.0;
        let nudged = Tensor::from_inner(tensor.inner() * factor).require_grad();
        Param::from_mapped_value(id, nudged, mapper)
    }
}

/// The logits of `spec` (weights from seed 5: equal on every backend) on
/// `batch` fixed sequences, and every parameter's gradient (with its path)
/// of the tasks' masked cross-entropy on them (every third position
/// unscored), on backend `B`.
///
/// # Panics
/// If `spec` does not build at `ctx` (the callers' specs are fixed).
pub(crate) fn forward_backward<B: AutodiffBackend>(
    spec: &crate::genome::ArchSpec,
    ctx: crate::genome::Context,
    batch: usize,
    dev: &B::Device,
) -> (Vec<f32>, Vec<(String, Vec<f32>)>) {
    nudged_forward_backward::<B>(spec, ctx, batch, dev, 0.0)
}

/// [`forward_backward`] with every parameter nudged ([`Nudge`]; `0`: not).
fn nudged_forward_backward<B: AutodiffBackend>(
    spec: &crate::genome::ArchSpec,
    ctx: crate::genome::Context,
    batch: usize,
    dev: &B::Device,
    nudge: f32,
) -> (Vec<f32>, Vec<(String, Vec<f32>)>) {
    let mut model = crate::layers::Model::<B>::new(spec, ctx, 5, dev).expect("the spec builds");
    if nudge != 0.0 {
        model = model.map(&mut Nudge { nudge });
    }
    let n = batch * ctx.seq_len;
    let tokens = Tensor::<B, 2, Int>::from_data(
        TensorData::new(
            (0..n).map(|i| (i * 7 % ctx.vocab) as i64).collect(),
            [batch, ctx.seq_len],
        ),
        dev,
    );
    let targets = Tensor::<B, 1, Int>::from_data(
        TensorData::new(
            (0..n)
                .map(|i| {
                    if i % 3 == 2 {
                        crate::tasks::IGNORE
                    } else {
                        (i * 3 % ctx.vocab) as i64
                    }
                })
                .collect(),
            [n],
        ),
        dev,
    );
    let logits = model.forward(tokens).reshape([n, ctx.vocab]);
    let y = values(logits.clone());
    let grads = crate::train::loss::masked_cross_entropy(logits, targets).backward();
    let mut visit = Grads::<B> {
        grads: &grads,
        path: Vec::new(),
        out: Vec::new(),
    };
    model.visit(&mut visit);
    (y, visit.out)
}

/// The models [`run_models`] checks: the paper's baselines, and one model
/// per primitive none of them has (a sequence mixer followed by SwiGLU, a
/// channel mixer after attention, a fused block alone), so a failure names
/// its primitive.
pub fn model_cases() -> Vec<(String, crate::genome::ArchSpec)> {
    use crate::genome::{ArchSpec, Primitive, Role};
    let mut out: Vec<(String, ArchSpec)> = crate::space::Baseline::embedded()
        .into_iter()
        .map(|b| (b.name, b.genome))
        .collect();
    let used: std::collections::HashSet<Primitive> = out
        .iter()
        .flat_map(|(_, g)| g.layers.iter().map(|l| l.primitive()))
        .collect();
    for &p in Primitive::ALL.iter().filter(|p| !used.contains(p)) {
        let layers = match p.role() {
            Role::Channel => format!("mh-attention {}", p.name()),
            Role::Sequence => format!("{} swiglu", p.name()),
            Role::Fused => p.name().to_string(),
        };
        let spec = ArchSpec::from_layers_str(&layers).expect("a valid model of one primitive");
        out.push((layers, spec));
    }
    out
}

/// Every model of [`model_cases`] on backend `B` and `dev` against flex (the
/// CPU): [`run_model`] for each.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub fn run_models<B: AutodiffBackend + Kernels>(dev: &B::Device) -> Vec<Check> {
    model_cases()
        .into_iter()
        .map(|(name, spec)| run_model::<B>(&name, &spec, dev))
        .collect()
}

/// One model on backend `B` and `dev` against flex: the logits and every
/// parameter's gradient of the tasks' loss, at the protocol's width on a
/// short sequence. Each compared value has a noise floor: how far flex's
/// own result moves when every parameter is nudged by [`NUDGE`] (relative);
/// [`FLOOR_SLACK`] floors are allowed on top of [`TOLERANCE`]. A model whose
/// result is ill-conditioned — MH linear attention's normaliser `φq · Σ φk`
/// comes within 3e-5 of zero at init, its gradients reach 1e5 and any two
/// f32 summation orders differ by up to their own size — passes on a
/// correct device, while a wrong one (a fault is far above the floor of a
/// well-conditioned model) still fails.
pub(crate) fn run_model<B: AutodiffBackend>(
    name: &str,
    spec: &crate::genome::ArchSpec,
    dev: &B::Device,
) -> Check {
    let ctx = crate::genome::Context {
        vocab: 16,
        seq_len: 32,
    };
    let batch = 2;
    let cpu = Default::default();
    let (y, g) = forward_backward::<B>(spec, ctx, batch, dev);
    let (want_y, want_g) = forward_backward::<Flex>(spec, ctx, batch, &cpu);
    let (near_y, near_g) = nudged_forward_backward::<Flex>(spec, ctx, batch, &cpu, NUDGE);
    let floor = |a: &[f32], b: &[f32]| -> Vec<f32> {
        a.iter().zip(b).map(|(a, b)| (a - b).abs()).collect()
    };
    let mut pairs = vec![(
        "logits".to_string(),
        y,
        want_y.clone(),
        floor(&want_y, &near_y),
    )];
    if g.len() != want_g.len() {
        // Lengths that differ fail the check (infinite error).
        pairs.push((
            "the parameters".into(),
            vec![0.0; g.len()],
            vec![0.0; want_g.len()],
            Vec::new(),
        ));
    }
    for (((path, got), (want_path, want)), (near_path, near)) in
        g.into_iter().zip(want_g).zip(near_g)
    {
        assert_eq!(near_path, want_path, "the nudged model visits alike");
        let floor = floor(&want, &near);
        // A missing gradient on either side, or parameters visited in
        // another order, fails rather than comparing empty to empty.
        let got = if path == want_path && !want.is_empty() {
            got
        } else {
            Vec::new()
        };
        let want = if want.is_empty() {
            vec![f32::NAN]
        } else {
            want
        };
        pairs.push((format!("gradient of {path}"), got, want, floor));
    }
    check_floored(
        "model",
        format!(
            "{name} [batch {batch}, seq {}, vocab {}]",
            ctx.seq_len, ctx.vocab
        ),
        pairs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::genome::{Context, Primitive};

    /// The comparison fails where it should: a value off by more than the
    /// tolerance, a non-finite value, a missing gradient (lengths differ).
    #[test]
    fn the_comparison_catches_disagreement() {
        let pair = |what: &str, got: Vec<f32>, want: Vec<f32>| (what.to_string(), got, want);
        let agree = check(
            "k",
            "c".into(),
            vec![pair("output", vec![1.0, 2.0], vec![1.0, 2.0 + 1e-4])],
        );
        assert!(agree.passed(), "{agree:?}");
        // Relative to the reference's largest magnitude (at least 1).
        let big = check(
            "k",
            "c".into(),
            vec![pair("output", vec![1000.0, 1.0], vec![1000.5, 1.0])],
        );
        assert!(big.passed(), "{big:?}");
        let off = check(
            "k",
            "c".into(),
            vec![
                pair("output", vec![1.0], vec![1.0]),
                pair("gradient of q", vec![0.5, 0.0], vec![0.5, 0.01]),
            ],
        );
        assert!(!off.passed());
        assert_eq!(off.worst_of, "gradient of q");
        let nan = check(
            "k",
            "c".into(),
            vec![pair("output", vec![f32::NAN], vec![0.0])],
        );
        assert!(!nan.passed() && !nan.finite);
        let missing = check(
            "k",
            "c".into(),
            vec![pair("gradient of v", vec![], vec![1.0])],
        );
        assert!(!missing.passed());
    }

    #[test]
    fn the_model_cases_cover_every_primitive_and_train_on_the_cpu() {
        let cases = model_cases();
        let baselines = crate::space::Baseline::embedded().len();
        assert_eq!(baselines, 11);
        for &p in Primitive::ALL {
            assert!(
                cases
                    .iter()
                    .any(|(_, g)| g.layers.iter().any(|l| l.primitive() == p)),
                "{} is in no case",
                p.name()
            );
        }
        let ctx = Context {
            vocab: 16,
            seq_len: 32,
        };
        assert!(
            cases.len() > baselines,
            "the baselines lack some primitives"
        );
        for (name, spec) in &cases[baselines..] {
            let (y, grads) = forward_backward::<Flex>(spec, ctx, 2, &Default::default());
            assert_eq!(y.len(), 2 * 32 * 16, "{name}");
            assert!(y.iter().all(|v| v.is_finite()), "{name}");
            for (path, g) in &grads {
                assert!(
                    !g.is_empty() && g.iter().any(|v| *v != 0.0),
                    "{name}: {path}: no gradient"
                );
            }
        }
    }

    /// A model against itself passes with no error; the noise floor moves
    /// every value (the nudge moves every gradient) by far less than the
    /// tolerance on a well-conditioned model, and lets through a difference
    /// within its slack but not beyond.
    #[test]
    fn the_noise_floor_is_small_where_the_model_is_well_conditioned() {
        let spec = crate::genome::ArchSpec::from_layers_str("hyena swiglu").unwrap();
        let ctx = Context {
            vocab: 16,
            seq_len: 32,
        };
        let dev = Default::default();
        let (y, g) = forward_backward::<Flex>(&spec, ctx, 2, &dev);
        let (ny, ng) = nudged_forward_backward::<Flex>(&spec, ctx, 2, &dev, NUDGE);
        let moved = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max)
        };
        let floor = moved(&y, &ny);
        assert!(floor > 0.0 && floor < 1e-4, "logits' floor {floor}");
        for ((path, a), (_, b)) in g.iter().zip(&ng) {
            let scale = a.iter().fold(1f32, |m, v| m.max(v.abs()));
            assert!(moved(a, b) > 0.0, "{path}: the nudge changed nothing");
            assert!(moved(a, b) < 1e-4 * scale, "{path}: floor {}", moved(a, b));
        }
        let itself = run_model::<Flex>("hyena swiglu", &spec, &dev);
        assert!(itself.passed() && itself.worst == 0.0, "{itself:?}");
        assert!(itself.allowed >= TOLERANCE && itself.allowed < 2.0 * TOLERANCE);
        let pair = |d: f32, floor: f32| {
            check_floored(
                "model",
                "c".into(),
                vec![("logits".into(), vec![0.5 + d], vec![0.5], vec![floor])],
            )
        };
        let within = pair(0.5, 0.2);
        assert!(within.passed(), "within 4 floors and the tolerance");
        assert_eq!(within.worst, 0.5, "the error shown is the raw one");
        assert!(!pair(0.5, 0.1).passed(), "0.1 beyond 4 floors");
        assert!(!pair(0.5, 0.0).passed());
        assert!(
            !pair(0.5, f32::INFINITY).passed(),
            "an infinite floor fails"
        );
        assert!(!pair(0.5, f32::NAN).passed(), "a NaN floor fails");
        // Per value: a large floor on one value does not cover another.
        let per_value = check_floored(
            "model",
            "c".into(),
            vec![("g".into(), vec![0.5, 0.5], vec![0.0, 0.0], vec![1.0, 0.0])],
        );
        assert!(!per_value.passed(), "{per_value:?}");
        // Over several pairs: one failing pair fails the check and is shown,
        // whatever comes after it.
        let several = check_floored(
            "model",
            "c".into(),
            vec![
                ("a".into(), vec![0.0], vec![0.0], vec![0.0]),
                ("b".into(), vec![0.1], vec![0.0], vec![0.0]),
                ("c".into(), vec![0.001], vec![0.0], vec![0.0]),
                ("d".into(), vec![f32::NAN], vec![0.0], vec![0.0]),
            ],
        );
        assert!(!several.passed());
        assert_eq!(several.worst_of, "d");
        let reference_nan = check_floored(
            "model",
            "c".into(),
            vec![("a".into(), vec![0.0], vec![f32::NAN], vec![0.0])],
        );
        assert!(!reference_nan.passed(), "a NaN reference fails");
    }
}
