//! Router weights for mixtures of experts: the reference's soft top-k
//! (scores below the k-th largest set to 0, not −∞, then a softmax over all
//! experts) and a true sparse top-k (softmax over the k largest; others 0).

use burn::prelude::*;
use burn::tensor::activation::softmax;

use super::ops::fit;
use crate::genome::Routing;

/// Expert weights from router scores.
///
/// # Shapes
/// - scores: `[batch, seq, experts]` → `[batch, seq, experts]`
pub fn route<B: Backend>(scores: Tensor<B, 3>, routing: Routing, k: usize) -> Tensor<B, 3> {
    let dropped = below_top_k(scores.clone().detach(), k);
    match routing {
        Routing::SoftTop2 => softmax(scores.mask_fill(dropped, 0.0), 2),
        Routing::TopK => softmax(scores.mask_fill(dropped, f32::NEG_INFINITY), 2),
    }
}

/// True where a score is below the k-th largest of its row: where at least
/// `k` other scores are strictly greater. (Ties with the k-th are kept, as in
/// the reference's threshold. Burn 0.21 has no `topk` under autodiff.)
///
/// # Shapes
/// - scores: `[batch, seq, experts]` → `[batch, seq, experts]`
fn below_top_k<B: Backend>(scores: Tensor<B, 3>, k: usize) -> Tensor<B, 3, Bool> {
    let [b, t, n] = scores.dims();
    let mine = fit(scores.clone().reshape([b, t, n, 1]), [b, t, n, n]);
    let others = fit(scores.reshape([b, t, 1, n]), [b, t, n, n]);
    let greater = others.greater(mine).float().sum_dim(3).reshape([b, t, n]);
    greater.greater_equal_elem(k as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Cpu;
    use burn::tensor::TensorData;

    fn scores() -> Tensor<Cpu, 3> {
        let v = vec![0.5f32, -1.0, 2.0, 1.0, 1.0, 0.0, 3.0, -2.0];
        Tensor::from_data(TensorData::new(v, [1, 2, 4]), &Default::default())
    }

    #[test]
    fn soft_top2_keeps_the_reference_quirk() {
        let w: Vec<f32> = route(scores(), Routing::SoftTop2, 2)
            .into_data()
            .to_vec()
            .unwrap();
        // Row 1: keep 2.0 and 1.0; 0.5 and −1.0 become 0 (weight e⁰/Z, not 0).
        let z = 2f32.exp() + 1f32.exp() + 2.0;
        let expect = [1.0 / z, 1.0 / z, 2f32.exp() / z, 1f32.exp() / z];
        for (a, b) in w[..4].iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{w:?}");
        }
    }

    #[test]
    fn sparse_top_k_zeroes_the_rest() {
        let w: Vec<f32> = route(scores(), Routing::TopK, 2)
            .into_data()
            .to_vec()
            .unwrap();
        assert_eq!(w[0], 0.0);
        assert_eq!(w[1], 0.0);
        assert!((w[2] + w[3] - 1.0).abs() < 1e-6);
        // Row 2: 3.0 and 1.0 kept.
        assert_eq!((w[5], w[7]), (0.0, 0.0));
        assert!((w[4] + w[6] - 1.0).abs() < 1e-6);
    }
}
