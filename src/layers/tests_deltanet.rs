//! Tests of gated DeltaNet: the chunked WY form against the token-by-token
//! rule (values and gradients, repeated keys), and the layer against its
//! definition composed from its weights.

use burn::module::Param;
use burn::prelude::*;

use super::tests::{B, assert_close, device, randn};
use super::{CpuAutodiff, Init};

/// The chunked WY form of the gated delta rule equals the token-by-token
/// rule, for chunks from 1 to longer than the sequence, with L2-normalised
/// keys (as the layer gives them), β in (0, 1) and decays from none to
/// strong (exp(−20) a step).
#[test]
fn deltanet_chunked_equals_recurrent() {
    use super::deltanet::{chunked, l2_normalize, recurrent};
    use burn::tensor::activation::sigmoid;
    let (b, h, seq, dk, dv) = (2, 3, 37, 4, 5);
    let q = randn([b, h, seq, dk], 70);
    let k = l2_normalize(randn([b, h, seq, dk], 71));
    let v = randn([b, h, seq, dv], 72);
    let g = -(randn([b, h, seq, 1], 73).powi_scalar(2) * 2.0);
    let beta = sigmoid(randn([b, h, seq, 1], 74) * 2.0);
    let reference = recurrent(q.clone(), k.clone(), v.clone(), g.clone(), beta.clone());
    for chunk in [1, 3, 8, 16, 64] {
        let y = chunked(
            q.clone(),
            k.clone(),
            v.clone(),
            g.clone(),
            beta.clone(),
            chunk,
        );
        assert!(
            !y.clone().is_nan().any().into_scalar(),
            "NaN at chunk {chunk}"
        );
        assert_close(
            y,
            reference.clone(),
            1e-4,
            &format!("gated delta rule, chunk {chunk}"),
        );
    }
    // No decay and full writes: the plain delta rule.
    let (zero, one) = (g.zeros_like(), beta.ones_like());
    let reference = recurrent(q.clone(), k.clone(), v.clone(), zero.clone(), one.clone());
    let y = chunked(q, k, v, zero, one, 16);
    assert_close(y, reference, 1e-4, "delta rule, β = 1, no decay");
}

/// The chunked form stays exact in f32 where a Neumann series for the
/// triangular solve cancels catastrophically: one key repeated (a run of
/// one token), β ≈ 1, almost no decay, chunks of 16 and 32 in a sequence
/// longer than both; and its gradients equal the recurrence's.
#[test]
fn deltanet_chunked_is_exact_on_repeated_keys_and_in_gradients() {
    use super::deltanet::{chunked, l2_normalize, recurrent};
    let (b, h, seq, dk, dv) = (1, 2, 70, 4, 3);
    let one_key = l2_normalize(randn([b, h, 1, dk], 75)).repeat_dim(2, seq);
    let q = randn([b, h, seq, dk], 76);
    let v = randn([b, h, seq, dv], 77);
    let g = Tensor::<B, 4>::full([b, h, seq, 1], -1e-3, &device());
    let beta = Tensor::<B, 4>::full([b, h, seq, 1], 0.99, &device());
    let reference = recurrent(
        q.clone(),
        one_key.clone(),
        v.clone(),
        g.clone(),
        beta.clone(),
    );
    for chunk in [16, 32] {
        let y = chunked(
            q.clone(),
            one_key.clone(),
            v.clone(),
            g.clone(),
            beta.clone(),
            chunk,
        );
        assert_close(
            y,
            reference.clone(),
            1e-4,
            &format!("repeated key, chunk {chunk}"),
        );
    }
    // Gradients of every operand, chunked against the recurrence.
    type A = CpuAutodiff;
    let grads_of = |chunk: Option<usize>| {
        let dev = Default::default();
        let lift = |t: Tensor<B, 4>| Tensor::<A, 4>::from_data(t.into_data(), &dev).require_grad();
        let ops = [
            lift(randn([2, 2, 23, 4], 78)),
            lift(l2_normalize(randn([2, 2, 23, 4], 79))),
            lift(randn([2, 2, 23, 3], 80)),
            lift(-(randn([2, 2, 23, 1], 81).powi_scalar(2))),
            lift(burn::tensor::activation::sigmoid(randn([2, 2, 23, 1], 82))),
        ];
        let [q, k, v, g, beta] = ops.clone();
        let y = match chunk {
            Some(c) => super::deltanet::chunked(q, k, v, g, beta, c),
            None => super::deltanet::recurrent(q, k, v, g, beta),
        };
        let w = Tensor::<A, 4>::from_data(randn([2, 2, 23, 3], 83).into_data(), &dev);
        let grads = (y * w).sum().backward();
        ops.map(|t| Tensor::<B, 4>::from_data(t.grad(&grads).unwrap().into_data(), &device()))
    };
    let reference = grads_of(None);
    for chunk in [4, 16] {
        for (name, (got, want)) in ["q", "k", "v", "g", "beta"]
            .iter()
            .zip(grads_of(Some(chunk)).into_iter().zip(reference.clone()))
        {
            assert_close(got, want, 1e-4, &format!("∂{name}, chunk {chunk}"));
        }
    }
}

/// Gated DeltaNet's forward against its definition, composed here from the
/// layer's weights: one projection to q, k, v; a bias-free causal conv and
/// SiLU; q and k L2-normalised per head, q scaled by `dk^−½`;
/// `g = −exp(A_log) · softplus(W_a x + dt_bias)`, `β = σ(W_β x)`; the
/// rule token by token; per-head RMSNorm times `w`, gated by `SiLU(W_g x)`;
/// the output projection. The norm's scale is randomised.
#[test]
fn gated_deltanet_layer_is_its_definition() {
    // Small, and the default layer at the protocol's width (4 heads: dk 32,
    // dv 64; short conv 4). Both on flex without autodiff (the fused
    // kernel's plain form; its autodiff form is held to the same by the
    // gradient tests of `fused::delta`).
    gated_deltanet_layer_at(8, 2, 2, 13, 3);
    gated_deltanet_layer_at(128, 4, 2, 32, 4);
}

fn gated_deltanet_layer_at(d: usize, h: usize, ev: usize, seq: usize, short_conv: usize) {
    use super::deltanet::{GatedDeltaNet, recurrent};
    use super::mamba::softplus;
    use super::ops::linear;
    use burn::tensor::activation::{sigmoid, silu};
    let (dk, dv) = (d / h, ev * d / h);
    let spec = crate::genome::GatedDeltaNet {
        n_heads: h,
        expand_v: ev,
        short_conv,
    };
    let mut layer = GatedDeltaNet::<B>::new(&spec, d, &mut Init::new(9, &device()));
    layer.norm = Param::from_tensor(randn([dv], 90));
    let batch = 2;
    let x = randn([batch, seq, d], 91);
    let width = 2 * d + ev * d;
    let conv = silu(super::short_conv::composite(
        linear(&layer.qkv, x.clone()),
        layer.conv.val(),
        Tensor::zeros([width], &device()),
    ));
    // [batch, seq, heads · e] → [batch, heads, seq, e].
    let heads = |from: usize, e: usize| {
        conv.clone()
            .slice([0..batch, 0..seq, from..from + h * e])
            .reshape([batch, seq, h, e])
            .swap_dims(1, 2)
    };
    let unit = |t: Tensor<B, 4>| t.clone() / (t.square().sum_dim(3) + 1e-6).sqrt();
    let q = unit(heads(0, dk)) / (dk as f64).sqrt();
    let k = unit(heads(d, dk));
    let v = heads(2 * d, dv);
    let per_head = |t: Tensor<B, 3>| t.swap_dims(1, 2).reshape([batch, h, seq, 1]);
    let rate = softplus(linear(&layer.a, x.clone()) + layer.dt_bias.val().reshape([1, 1, h]));
    let g = per_head(-(rate * layer.a_log.val().exp().reshape([1, 1, h])));
    let beta = per_head(sigmoid(linear(&layer.beta, x.clone())));
    let o = recurrent(q.clone(), k.clone(), v.clone(), g.clone(), beta.clone());
    // The chunked form (the GPU backends') on the layer's own operands.
    let chunked = super::deltanet::chunked(q, k, v, g, beta, super::deltanet::CHUNK);
    assert_close(
        chunked,
        o.clone(),
        1e-4,
        "the chunked rule on the layer's operands",
    );
    let o = o.clone() / (o.square().mean_dim(3) + 1e-5).sqrt()
        * layer.norm.val().reshape([1, 1, 1, dv]);
    let o = o.swap_dims(1, 2).reshape([batch, seq, h * dv]);
    let reference = linear(&layer.out, o * silu(linear(&layer.gate, x.clone())));
    assert_close(layer.forward(x), reference, 1e-4, "gated deltanet layer");
}
