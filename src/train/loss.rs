//! Cross-entropy and accuracy over the scored positions only: targets equal
//! to [`IGNORE`] (−100, the reference's ignore index) contribute nothing.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

pub use crate::tasks::IGNORE;

/// Mean cross-entropy over positions whose target is not [`IGNORE`]
/// (0 when none is scored).
///
/// # Shapes
/// - logits: `[n, vocab]`; targets: `[n]` → `[1]`
pub fn masked_cross_entropy<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    let [n, _] = logits.dims();
    let scored = targets.clone().greater_equal_elem(0).float(); // [n]
    let safe = targets.clamp_min(0).reshape([n, 1]);
    let picked = log_softmax(logits, 1).gather(1, safe).reshape([n]);
    let count = scored.clone().sum().clamp_min(1.0);
    -(picked * scored).sum() / count
}

/// `(correct, scored)`: argmax predictions equal to the target, over
/// positions whose target is not [`IGNORE`] (micro accuracy's parts).
///
/// # Shapes
/// - logits: `[n, vocab]`; targets: `[n]`
pub fn masked_accuracy<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> (u64, u64) {
    let [n, _] = logits.dims();
    let scored = targets.clone().greater_equal_elem(0);
    let pred = logits.argmax(1).reshape([n]);
    let hit = pred.equal(targets).int() * scored.clone().int();
    let correct = hit.sum().into_scalar().elem::<i64>();
    let total = scored.int().sum().into_scalar().elem::<i64>();
    (correct as u64, total as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Cpu;
    use burn::tensor::TensorData;

    #[test]
    fn ignored_positions_do_not_count() {
        let dev = Default::default();
        let logits = Tensor::<Cpu, 2>::from_data(
            TensorData::new(vec![2.0f32, 0.0, 0.0, 2.0, 5.0, 0.0], [3, 2]),
            &dev,
        );
        let targets =
            Tensor::<Cpu, 1, Int>::from_data(TensorData::new(vec![0i64, 0, IGNORE], [3]), &dev);
        let loss: f32 = masked_cross_entropy(logits.clone(), targets.clone()).into_scalar();
        let l0 = -(2f32.exp() / (2f32.exp() + 1.0)).ln();
        let l1 = -(1.0 / (2f32.exp() + 1.0)).ln();
        assert!((loss - (l0 + l1) / 2.0).abs() < 1e-5, "{loss}");
        assert_eq!(masked_accuracy(logits, targets), (1, 2));
    }
}
