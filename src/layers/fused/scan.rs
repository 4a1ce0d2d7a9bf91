//! Mamba's selective scan `h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t x_t B_t`,
//! `y_t = h_t C_t` as one CPU kernel with its own backward.
//!
//! Composed from Burn ops (`mamba::chunked_scan`) the scan materialises
//! `[batch, seq, d_inner, d_state]` decays and inputs, then runs a log-depth
//! scan of shifted copies inside chunks: about thirty ops on five-dimensional
//! tensors, each a pass over memory, whose fixed cost dominates at the
//! screen's shapes (batch 32, length 64, `d_inner` 256, `d_state` 4: the
//! `mamba` layer took 1.43× PyTorch's time there, four of them 1.79×).
//! Here the recurrence runs step by step, as written, with the state of one
//! batch element (`[d_state, d_inner]`, a few KiB) in cache: per step and
//! state index one pass over the channels, contiguous in the `[batch, seq,
//! d_inner]` layout, with a polynomial `exp` ([`super::exp`]) the compiler
//! vectorises. It is also the exact order of the definition (no products of
//! decays), so it is the more accurate of the two.
//!
//! The backward recomputes one batch element's states (the forward keeps
//! none: memory stays that of the inputs) and walks back in time carrying
//! `exp(Δ_{t+1} A) ⊙ ∂h_{t+1}`. One task per batch element; `A`'s gradient
//! is summed per task and added in batch order.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::ops::FloatTensor;
use rayon::prelude::*;

use super::{
    Dispatch, axpy, cast, dispatch, dot, exp, give, host, host_of, incoming, ordered_sum,
    primitive, record, transpose,
};
use crate::layers::mamba::{self, CHUNK};
use crate::layers::{Cpu, CpuAutodiff};

/// The selective scan without the `D x` skip, as [`mamba::chunked_scan`].
///
/// # Shapes
/// - x, dt: `[batch, seq, d_inner]`; a: `[d_inner, d_state]`; b, c: `[batch, seq, d_state]`
///   → `[batch, seq, d_inner]`
pub fn selective_scan<B: Backend>(
    x: Tensor<B, 3>,
    dt: Tensor<B, 3>,
    a: Tensor<B, 2>,
    b: Tensor<B, 3>,
    c: Tensor<B, 3>,
) -> Tensor<B, 3> {
    // `A` as `[1, d_inner, d_state]`: every fused kernel's operand is rank 3.
    let a3 = || a.clone().unsqueeze::<3>();
    match dispatch::<B>() {
        Dispatch::Autodiff => cast(scan_autodiff([
            cast(x),
            cast(dt),
            cast(a3()),
            cast(b),
            cast(c),
        ])),
        Dispatch::Plain => cast(scan_plain([
            cast(x),
            cast(dt),
            cast(a3()),
            cast(b),
            cast(c),
        ])),
        Dispatch::Composite => match crate::layers::cube::selective_scan(x, dt, a, b, c) {
            Ok(y) => y,
            Err((x, dt, a, b, c)) => mamba::chunked_scan(x, dt, a, b, c, CHUNK),
        },
    }
}

/// The scan's operands on the host.
#[derive(Clone, Debug)]
struct Inputs {
    /// `[batch, seq, d_inner]`.
    x: Arc<Vec<f32>>,
    /// Δ, `[batch, seq, d_inner]`.
    dt: Arc<Vec<f32>>,
    /// `A` transposed: `[d_state, d_inner]`.
    at: Arc<Vec<f32>>,
    /// `[batch, seq, d_state]`.
    b: Arc<Vec<f32>>,
    /// `[batch, seq, d_state]`.
    c: Arc<Vec<f32>>,
    /// `[batch, seq, d_inner]`.
    dims: [usize; 3],
    /// `d_state`.
    n: usize,
}

impl Inputs {
    /// From the operands in the order of [`selective_scan`], `A` as
    /// `[d_inner, d_state]`.
    fn new([x, dt, a, b, c]: [Vec<f32>; 5], dims: [usize; 3], n: usize) -> Inputs {
        Inputs {
            x: Arc::new(x),
            dt: Arc::new(dt),
            at: Arc::new(transpose(&a, dims[2], n)),
            b: Arc::new(b),
            c: Arc::new(c),
            dims,
            n,
        }
    }

    /// Batch element `i`'s slices: x, Δ (`[seq, d_inner]`), B, C (`[seq, d_state]`).
    fn element(&self, i: usize) -> [&[f32]; 4] {
        let [_, seq, di] = self.dims;
        let (wide, narrow) = (seq * di, seq * self.n);
        [
            &self.x[i * wide..(i + 1) * wide],
            &self.dt[i * wide..(i + 1) * wide],
            &self.b[i * narrow..(i + 1) * narrow],
            &self.c[i * narrow..(i + 1) * narrow],
        ]
    }
}

/// One step of the recurrence for one batch element: `h ← exp(Δ A) ⊙ h +
/// Δ x B`, the decays `exp(Δ A)` written to `decay`. `h`, `decay`:
/// `[d_state, d_inner]`; `xt`, `dtt`, `u` (scratch): `[d_inner]`; `bt`:
/// `[d_state]`.
fn advance(
    at: &[f32],
    h: &mut [f32],
    decay: &mut [f32],
    [xt, dtt, bt]: [&[f32]; 3],
    u: &mut [f32],
) {
    let di = xt.len();
    for ((u, x), dt) in u.iter_mut().zip(xt).zip(dtt) {
        *u = dt * x;
    }
    for (j, &bj) in bt.iter().enumerate() {
        let range = j * di..(j + 1) * di;
        let (hj, aj, dj) = (&mut h[range.clone()], &at[range.clone()], &mut decay[range]);
        for d in 0..di {
            let da = exp(dtt[d] * aj[d]);
            dj[d] = da;
            hj[d] = da * hj[d] + u[d] * bj;
        }
    }
}

fn forward(s: &Inputs) -> Vec<f32> {
    let [batch, seq, di] = s.dims;
    let n = s.n;
    let mut out = vec![0f32; batch * seq * di];
    out.par_chunks_mut(seq * di).enumerate().for_each(|(i, y)| {
        let [x, dt, b, c] = s.element(i);
        let mut h = vec![0f32; n * di];
        let (mut decay, mut u) = (vec![0f32; n * di], vec![0f32; di]);
        for t in 0..seq {
            let (wide, narrow) = (t * di..(t + 1) * di, t * n..(t + 1) * n);
            let operands = [&x[wide.clone()], &dt[wide.clone()], &b[narrow.clone()]];
            advance(&s.at, &mut h, &mut decay, operands, &mut u);
            // y_t = Σ_j C_t[j] h_t[j], over the channels.
            let yt = &mut y[wide];
            for (j, &cj) in c[narrow].iter().enumerate() {
                axpy(cj, &h[j * di..(j + 1) * di], yt);
            }
        }
    });
    out
}

/// One batch element's gradient slices: x, Δ (`[seq, d_inner]`), B, C
/// (`[seq, d_state]`), written whole.
struct ElementGrads<'a> {
    dx: &'a mut [f32],
    ddt: &'a mut [f32],
    db: &'a mut [f32],
    dc: &'a mut [f32],
}

/// Batch element `i`'s backward: its gradients into `g`, A's (`[d_state,
/// d_inner]`) added to `da_sum`.
fn element_backward(s: &Inputs, i: usize, dy: &[f32], g: ElementGrads<'_>, da_sum: &mut [f32]) {
    let [_, seq, di] = s.dims;
    let n = s.n;
    let state = n * di;
    let [x, dt, b, c] = s.element(i);
    let gy = &dy[i * seq * di..(i + 1) * seq * di];
    // The state before every step (`hs[t]`) and after the last, and every
    // step's decays, recomputed.
    let mut hs = vec![0f32; (seq + 1) * state];
    let mut decays = vec![0f32; seq * state];
    let mut u = vec![0f32; di];
    for t in 0..seq {
        let (before, after) = hs.split_at_mut((t + 1) * state);
        let h = &mut after[..state];
        h.copy_from_slice(&before[t * state..]);
        let (wide, narrow) = (t * di..(t + 1) * di, t * n..(t + 1) * n);
        let decay = &mut decays[t * state..(t + 1) * state];
        advance(
            &s.at,
            h,
            decay,
            [&x[wide.clone()], &dt[wide], &b[narrow]],
            &mut u,
        );
    }
    // `carry` = exp(Δ_{t+1} A) ⊙ ∂h_{t+1}; `gh` = ∂h_t for one state index.
    let mut carry = vec![0f32; state];
    let mut gh = vec![0f32; di];
    for t in (0..seq).rev() {
        let wide = t * di..(t + 1) * di;
        let (xt, dtt, gyt) = (&x[wide.clone()], &dt[wide.clone()], &gy[wide.clone()]);
        let (dxt, ddtt) = (&mut g.dx[wide.clone()], &mut g.ddt[wide]);
        for ((u, x), dt) in u.iter_mut().zip(xt).zip(dtt) {
            *u = dt * x;
        }
        for j in 0..n {
            let range = j * di..(j + 1) * di;
            let at_step = |t: usize| t * state + j * di..t * state + (j + 1) * di;
            let (h_prev, h_now) = (&hs[at_step(t)], &hs[at_step(t + 1)]);
            let dec = &decays[at_step(t)];
            let aj = &s.at[range.clone()];
            let (carry_j, da_j) = (&mut carry[range.clone()], &mut da_sum[range]);
            let (bj, cj) = (b[t * n + j], c[t * n + j]);
            g.dc[t * n + j] = dot(gyt, h_now);
            for d in 0..di {
                let g_h = gyt[d] * cj + carry_j[d];
                gh[d] = g_h;
                // Through the input Δ x B.
                let g_u = g_h * bj;
                dxt[d] += g_u * dtt[d];
                // Through the decay exp(Δ A): ∂(Δ A).
                let g_z = g_h * h_prev[d] * dec[d];
                ddtt[d] += g_u * xt[d] + g_z * aj[d];
                da_j[d] += g_z * dtt[d];
                carry_j[d] = dec[d] * g_h;
            }
            g.db[t * n + j] = dot(&gh, &u);
        }
    }
}

/// Gradients of x, Δ, A (`[d_inner, d_state]`), B and C from the output
/// gradient `dy`.
fn backward(s: &Inputs, dy: &[f32]) -> [Vec<f32>; 5] {
    let [batch, seq, di] = s.dims;
    let n = s.n;
    let (wide, narrow) = (seq * di, seq * n);
    let mut dx = vec![0f32; batch * wide];
    let mut ddt = vec![0f32; batch * wide];
    let mut db = vec![0f32; batch * narrow];
    let mut dc = vec![0f32; batch * narrow];
    let partials = dx
        .par_chunks_mut(wide)
        .zip(ddt.par_chunks_mut(wide))
        .zip(db.par_chunks_mut(narrow))
        .zip(dc.par_chunks_mut(narrow))
        .enumerate()
        .map(|(i, (((dx, ddt), db), dc))| {
            let mut da_sum = vec![0f32; n * di];
            let g = ElementGrads { dx, ddt, db, dc };
            element_backward(s, i, dy, g, &mut da_sum);
            da_sum
        })
        .collect::<Vec<_>>();
    let da_sum = ordered_sum(partials, n * di);
    [dx, ddt, transpose(&da_sum, n, di), db, dc]
}

fn scan_plain(t: [Tensor<Cpu, 3>; 5]) -> Tensor<Cpu, 3> {
    let (dims, a_dims) = (t[0].dims(), t[2].dims());
    let device = t[0].device();
    let s = Inputs::new(t.map(host), dims, a_dims[2]);
    Tensor::from_data(TensorData::new(forward(&s), dims), &device)
}

#[derive(Debug)]
struct FusedBackward;

impl Backward<Cpu, 5> for FusedBackward {
    type State = Inputs;

    fn backward(
        self,
        ops: Ops<Self::State, 5>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let (g, device) = incoming(&ops, grads);
        let s = &ops.state;
        let [batch, seq, di] = s.dims;
        let narrow = [batch, seq, s.n];
        let shapes = [s.dims, s.dims, [1, di, s.n], narrow, narrow];
        give(&ops, grads, backward(s, &g), shapes, &device);
    }
}

fn scan_autodiff(t: [Tensor<CpuAutodiff, 3>; 5]) -> Tensor<CpuAutodiff, 3> {
    let (dims, a_dims) = (t[0].dims(), t[2].dims());
    let device = t[0].device();
    let p: [FloatTensor<CpuAutodiff>; 5] = t.map(|t| t.into_primitive().tensor());
    let s = Inputs::new(p.each_ref().map(host_of), dims, a_dims[2]);
    let output = primitive(forward(&s), dims, &device);
    let [x, dt, a, b, c] = &p;
    record(FusedBackward, [x, dt, a, b, c], s, output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Init;

    use crate::layers::fused::assert_close as close;

    fn values<const D: usize>(t: Tensor<CpuAutodiff, D>) -> Vec<f32> {
        t.into_data().to_vec().unwrap()
    }

    /// The five operands' values: x, Δ (positive, up to ~4), A (negative,
    /// |A| from 0.1 to ~3), B, C.
    fn operands(dims: [usize; 4], seed: u64) -> [TensorData; 5] {
        let [batch, seq, di, n] = dims;
        let device = Default::default();
        let mut init = Init::<Cpu>::new(seed, &device);
        let data = |t: Tensor<Cpu, 3>| t.into_data();
        [
            data(init.normal([batch, seq, di], 1.0).val()),
            data(init.normal([batch, seq, di], 1.5).val().abs()),
            data(init.normal([1, di, n], 1.0).val().abs().neg() - 0.1),
            data(init.normal([batch, seq, n], 1.0).val()),
            data(init.normal([batch, seq, n], 1.0).val()),
        ]
    }

    /// Output and the gradients of all five operands equal the token-by-token
    /// recurrence composed from Burn ops (differentiated by burn-autodiff),
    /// with decays from mild to strong; the inference path gives the same
    /// output.
    #[test]
    fn fused_equals_the_recurrence_in_values_and_gradients() {
        let device = Default::default();
        for dims in [[2, 9, 5, 4], [1, 17, 3, 1], [3, 1, 8, 2], [2, 40, 11, 16]] {
            let [batch, seq, di, _] = dims;
            let run = |fused: bool| {
                let [x, dt, a, b, c] = operands(dims, 9)
                    .map(|d| Tensor::<CpuAutodiff, 3>::from_data(d, &device).require_grad());
                let a2 = a.clone().squeeze_dim::<2>(0);
                let y = if fused {
                    selective_scan(x.clone(), dt.clone(), a2, b.clone(), c.clone())
                } else {
                    mamba::recurrent(x.clone(), dt.clone(), a2, b.clone(), c.clone())
                };
                let len = batch * seq * di;
                let w: Vec<f32> = (0..len)
                    .map(|i| ((i * 31 % 11) as f32 - 5.0) / 5.0)
                    .collect();
                let w = Tensor::<CpuAutodiff, 3>::from_data(
                    TensorData::new(w, [batch, seq, di]),
                    &device,
                );
                let grads = (y.clone() * w).sum().backward();
                let grad = |t: &Tensor<CpuAutodiff, 3>| {
                    t.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap()
                };
                let g = [grad(&x), grad(&dt), grad(&a), grad(&b), grad(&c)];
                (values(y), g)
            };
            let (fused, reference) = (run(true), run(false));
            let case = format!("dims {dims:?}");
            close(&fused.0, &reference.0, 1e-5, &format!("output, {case}"));
            for (name, (f, r)) in ["dx", "ddt", "da", "db", "dc"]
                .iter()
                .zip(fused.1.iter().zip(&reference.1))
            {
                close(f, r, 1e-4, &format!("{name}, {case}"));
            }
            let [x, dt, a, b, c] =
                operands(dims, 9).map(|d| Tensor::<Cpu, 3>::from_data(d, &device));
            let a = a.squeeze_dim::<2>(0);
            let plain: Vec<f32> =
                selective_scan(x.clone(), dt.clone(), a.clone(), b.clone(), c.clone())
                    .into_data()
                    .to_vec()
                    .unwrap();
            let reference: Vec<f32> = mamba::recurrent(x, dt, a, b, c)
                .into_data()
                .to_vec()
                .unwrap();
            close(&plain, &reference, 1e-5, &format!("inference, {case}"));
        }
    }

    /// `A`'s gradient is summed in batch order: the same bits on every run
    /// whatever the thread count and the work's split.
    #[test]
    fn the_backward_is_bitwise_deterministic() {
        let (batch, seq, di, n) = (16, 10, 6, 4);
        let values =
            |len: usize, f: f32| (0..len).map(|i| (i as f32 * f).sin()).collect::<Vec<f32>>();
        let a: Vec<f32> = values(di * n, 0.3).iter().map(|v| -v.abs() - 0.1).collect();
        let dt: Vec<f32> = values(batch * seq * di, 0.7)
            .iter()
            .map(|v| v.abs())
            .collect();
        let s = Inputs::new(
            [
                values(batch * seq * di, 0.37),
                dt,
                a,
                values(batch * seq * n, 0.11),
                values(batch * seq * n, 0.19),
            ],
            [batch, seq, di],
            n,
        );
        let dy = values(batch * seq * di, 0.23);
        crate::layers::fused::assert_same_bits_on_any_pool(|| backward(&s, &dy));
    }
}
