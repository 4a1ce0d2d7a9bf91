//! Known faults on wgpu, held by ignored tests until mended upstream or
//! here: run them with `cargo test --release --features wgpu --lib
//! tests_gpu_faults -- --ignored` (README, Backends). Each fails today.

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use super::CpuAutodiff;
use super::tests_gpu::{Gpu, assert_close, filled, forward_backward, grad_values};
use crate::genome::{ArchSpec, Context, Primitive};

/// Gated linear attention's recurrence from Burn ops ([`reference`]'s
/// composition: `S_t = S_{t−1} ⊙ exp(g_t)ᵀ + k_tᵀ v_t`, `o_t = q_t S_t`),
/// reduced to two steps, and the gradient of `v` on `B`.
///
/// [`reference`]: mad_kernels::reference::gated_recurrence
fn two_step_recurrence_dv<B: AutodiffBackend>(dims: [usize; 4]) -> Vec<f32> {
    let dev = B::Device::default();
    let [b, h, _, d] = dims;
    let q = filled::<B>(dims, 0.0, &dev) * 0.5;
    let k = (filled::<B>(dims, 1.0, &dev) * 0.5).require_grad();
    let v = filled::<B>(dims, 2.0, &dev).require_grad();
    let g = filled::<B>(dims, 4.0, &dev).abs().neg().require_grad();
    let at = |x: &Tensor<B, 4>, t: usize| x.clone().slice([0..b, 0..h, t..t + 1, 0..d]);
    let s1 = at(&k, 0).swap_dims(2, 3).matmul(at(&v, 0));
    let decay = at(&g, 1).exp().swap_dims(2, 3).expand([b, h, d, d]);
    let s2 = s1.clone() * decay + at(&k, 1).swap_dims(2, 3).matmul(at(&v, 1));
    let y = Tensor::cat(vec![at(&q, 0).matmul(s1), at(&q, 1).matmul(s2)], 2);
    let grads = (y * filled::<B>(dims, 3.0, &dev)).sum().backward();
    grad_values(&v, &grads)
}

/// A fault of burn-fusion 0.21 on wgpu (lavapipe), reduced from the one
/// `kernel-check` found in the gated recurrence's Burn-ops reference: with
/// k, v and g all requiring gradients, the fused backend's ∂v of the
/// two-step recurrence above is wrong (relative error 0.35–1.8) at head
/// dims 32 and 64 with two or more (batch, head) pairs; unfused wgpu
/// agrees with flex (≈ 1e-7), and so does the fused one at head dims 8–24,
/// with one pair, without `exp`, or with any of k, v, g not requiring
/// gradients. mad-search's models do not compose these ops (the recurrence
/// runs as `mad-kernels`' kernel on the GPU backends, and `kernel-check
/// --models` checks every model on the device). Ignored until a Burn that
/// passes it: `cargo test --release --features wgpu --lib burn_fusion --
/// --ignored`.
#[test]
#[ignore = "fails: burn-fusion 0.21 on lavapipe computes this gradient wrong"]
fn burn_fusion_computes_the_two_step_recurrence_gradient_right() {
    for dims in [[2, 2, 2, 32], [1, 2, 2, 64], [8, 1, 2, 32]] {
        let want = two_step_recurrence_dv::<CpuAutodiff>(dims);
        assert_close(
            &format!("{dims:?}: unfused wgpu's gradient of v against flex"),
            &two_step_recurrence_dv::<burn::backend::Autodiff<super::device::WgpuPlain>>(dims),
            &want,
        );
        assert_close(
            &format!("{dims:?}: fused wgpu's gradient of v against flex"),
            &two_step_recurrence_dv::<Gpu>(dims),
            &want,
        );
    }
}

/// Every primitive at the protocol's width (128, default heads: gated
/// DeltaNet's dk 32 / dv 64, MH linear attention's 16 heads) on wgpu
/// against flex, fused and not. Fails today: gated DeltaNet's logits differ
/// by 1.3 of their largest magnitude and MH linear attention's gradients
/// (embedding, q, k) by ≈ 1.0, fused and unfused alike, while the other
/// primitives agree within 1.4e-6 (and all of them at width 32, the test
/// above). Flex is the right side for gated DeltaNet: its layer equals the
/// token-by-token definition at width 128 (`layers::tests::
/// gated_deltanet_layer_is_its_definition`), and so does the chunked form
/// the GPU backends run, on the layer's own operands, on flex. Found by
/// `kernel-check --models` (2026-12-07); ignored until mended.
#[test]
#[ignore = "fails: gated-deltanet and mh-linear-attention disagree with flex on wgpu at width 128"]
fn every_primitive_at_the_protocols_width_on_wgpu_equals_flex() {
    let ctx = Context {
        vocab: 16,
        seq_len: 32,
    };
    for &p in Primitive::ALL {
        let layers = match p.role() {
            crate::genome::Role::Channel => format!("mh-attention {}", p.name()),
            crate::genome::Role::Sequence => format!("{} swiglu", p.name()),
            crate::genome::Role::Fused => p.name().to_string(),
        };
        let spec = ArchSpec::from_layers_str(&layers).expect("a valid stack");
        let (cpu_y, cpu_g) = forward_backward::<CpuAutodiff>(&spec, ctx, 2);
        for fused in [true, false] {
            let (y, g) = if fused {
                forward_backward::<Gpu>(&spec, ctx, 2)
            } else {
                forward_backward::<burn::backend::Autodiff<super::device::WgpuPlain>>(&spec, ctx, 2)
            };
            let what = format!("{layers} (fused: {fused})");
            assert_close(&format!("{what}: logits"), &y, &cpu_y);
            for ((path, g), (_, c)) in g.iter().zip(&cpu_g) {
                assert_close(&format!("{what}: gradient of {path}"), g, c);
            }
        }
    }
}
