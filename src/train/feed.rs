//! What feeds a training run its batches and takes its losses back, by
//! backend: on flex everything on the host, step by step; on GPU backends
//! the split uploaded once, batches gathered on the device, and losses read
//! several steps at a time (each read waits for the device).

use burn::prelude::*;
use burn::tensor::TensorData;

use super::checkpoint::Progress;
use crate::tasks::Dataset;

/// A split as the device sees it: on a GPU backend uploaded once, each batch
/// then selected on the device; on flex assembled on the host per batch
/// (cheaper there than a gather).
pub(crate) struct Rows<'a, B: Backend> {
    data: &'a Dataset,
    /// `(inputs, targets)`, both `[n, len]`, on GPU backends.
    on_device: Option<(Tensor<B, 2, Int>, Tensor<B, 2, Int>)>,
    device: &'a B::Device,
}

impl<'a, B: Backend> Rows<'a, B> {
    pub(crate) fn new(data: &'a Dataset, device: &'a B::Device) -> Rows<'a, B> {
        let on_device = (!crate::layers::fused::on_flex::<B>()).then(|| {
            let shape = [data.n, data.len];
            let up = |v: &[i64]| {
                Tensor::<B, 2, Int>::from_data(TensorData::new(v.to_vec(), shape), device)
            };
            (up(&data.inputs), up(&data.targets))
        });
        Rows {
            data,
            on_device,
            device,
        }
    }

    /// Rows `idx` as `(inputs [n, len], targets [n·len])`.
    pub(crate) fn batch(&self, idx: &[usize]) -> (Tensor<B, 2, Int>, Tensor<B, 1, Int>) {
        match &self.on_device {
            Some((x, y)) => {
                let rows: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
                let rows =
                    Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [idx.len()]), self.device);
                let n = idx.len() * self.data.len;
                (
                    x.clone().select(0, rows.clone()),
                    y.clone().select(0, rows).reshape([n]),
                )
            }
            None => batch::<B>(self.data, idx, self.device),
        }
    }
}

/// Rows `idx` of `d` as `(inputs [n, len], targets [n·len])`.
pub(crate) fn batch<B: Backend>(
    d: &Dataset,
    idx: &[usize],
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 1, Int>) {
    let (mut x, mut y) = (
        Vec::with_capacity(idx.len() * d.len),
        Vec::with_capacity(idx.len() * d.len),
    );
    for &i in idx {
        let (xi, yi) = d.row(i);
        x.extend_from_slice(xi);
        y.extend_from_slice(yi);
    }
    (
        Tensor::from_data(TensorData::new(x, [idx.len(), d.len]), device),
        Tensor::from_data(TensorData::new(y, [idx.len() * d.len]), device),
    )
}

/// The pending `(step, loss)` pairs read from the device at once (none
/// when there are none), in step order; `pending` is left empty.
pub(crate) fn take_losses<B: Backend>(
    pending: &mut Vec<(usize, Tensor<B, 1>)>,
) -> Vec<(usize, f64)> {
    if pending.is_empty() {
        return Vec::new();
    }
    let (steps, losses): (Vec<usize>, Vec<Tensor<B, 1>>) =
        std::mem::take(pending).into_iter().unzip();
    let values: Vec<f32> = Tensor::cat(losses, 0)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("losses are floats");
    steps
        .into_iter()
        .zip(values.into_iter().map(f64::from))
        .collect()
}

/// Reads the pending losses (one device read) into `at.loss_sum`, in step
/// order. At the first NaN or infinite loss, returns its step, sets
/// `at.steps` to it (the steps after it do not count: the run ends there)
/// and drops the rest.
pub(crate) fn read_losses<B: Backend>(
    pending: &mut Vec<(usize, Tensor<B, 1>)>,
    at: &mut Progress,
) -> Option<usize> {
    for (step, v) in take_losses(pending) {
        if !v.is_finite() {
            at.steps = step;
            return Some(step);
        }
        at.loss_sum += v;
    }
    None
}
