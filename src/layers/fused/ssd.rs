//! Mamba-2's scan, `H_t = exp(Δ_t A_h) H_{t−1} + Δ_t x_t B_tᵀ`, `y_t = H_t
//! C_t` per head `h`, as one CPU kernel with its own backward.
//!
//! Run as Mamba-1's selective scan (each head's `Δ` and `A` given to its
//! channels) it costs a decay `exp(Δ A)` per channel and state index at
//! every step, `d_inner · d_state` exponentials, and it materialises the
//! broadcast `Δ` and `A`: the `mamba2` layer took 2.8× PyTorch's time at
//! the protocol's shape that way (`cargo bench --bench torch -- --layers
//! --only mamba2`). The decay is one scalar per head here: `heads`
//! exponentials per step, and the update of the state (`[d_state,
//! d_inner]`, channels contiguous) is a multiply-add per entry that the
//! compiler vectorises, as in [`super::scan`].
//!
//! The backward recomputes one batch element's states (the forward keeps
//! none) and walks back in time carrying `exp(Δ_{t+1} A) ⊙ ∂H_{t+1}`. One
//! task per batch element; `A`'s gradient is summed per task and added in
//! batch order.

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
    primitive, record,
};
use crate::layers::ops::fit;
use crate::layers::{Cpu, CpuAutodiff};

/// Mamba-2's scan without the `D x` skip.
///
/// # Shapes
/// - x: `[batch, seq, heads · head_dim]`; dt: `[batch, seq, heads]`;
///   a: `[heads]`; b, c: `[batch, seq, d_state]` → `[batch, seq, heads · head_dim]`
pub fn head_scan<B: Backend>(
    x: Tensor<B, 3>,
    dt: Tensor<B, 3>,
    a: Tensor<B, 1>,
    b: Tensor<B, 3>,
    c: Tensor<B, 3>,
) -> Tensor<B, 3> {
    let heads = a.dims()[0];
    let a3 = || a.clone().reshape([1, 1, heads]);
    match dispatch::<B>() {
        Dispatch::Autodiff => cast(ssd_autodiff([
            cast(x),
            cast(dt),
            cast(a3()),
            cast(b),
            cast(c),
        ])),
        Dispatch::Plain => cast(ssd_plain([cast(x), cast(dt), cast(a3()), cast(b), cast(c)])),
        Dispatch::Composite => as_selective_scan(x, dt, a, b, c),
    }
}

/// The same scan as Mamba-1's selective scan ([`super::scan::selective_scan`]:
/// CubeCL's kernel, or the chunked scan) with each head's Δ and A given to
/// its channels: what backends without this kernel run.
///
/// # Shapes
/// - as [`head_scan`]
pub fn as_selective_scan<B: Backend>(
    x: Tensor<B, 3>,
    dt: Tensor<B, 3>,
    a: Tensor<B, 1>,
    b: Tensor<B, 3>,
    c: Tensor<B, 3>,
) -> Tensor<B, 3> {
    let [batch, seq, di] = x.dims();
    let heads = a.dims()[0];
    let (p, n) = (di / heads, b.dims()[2]);
    let dt =
        fit(dt.reshape([batch, seq, heads, 1]), [batch, seq, heads, p]).reshape([batch, seq, di]);
    let a = fit(a.reshape([heads, 1, 1]), [heads, p, n]).reshape([di, n]);
    super::scan::selective_scan(x, dt, a, b, c)
}

/// The scan's operands on the host.
#[derive(Clone, Debug)]
struct Inputs {
    /// `[batch, seq, d_inner]`.
    x: Arc<Vec<f32>>,
    /// Δ, `[batch, seq, heads]`.
    dt: Arc<Vec<f32>>,
    /// `A`, `[heads]`.
    a: Arc<Vec<f32>>,
    /// `[batch, seq, d_state]`.
    b: Arc<Vec<f32>>,
    /// `[batch, seq, d_state]`.
    c: Arc<Vec<f32>>,
    /// `[batch, seq, d_inner]`.
    dims: [usize; 3],
    /// Heads.
    heads: usize,
    /// `d_state`.
    n: usize,
}

impl Inputs {
    fn new([x, dt, a, b, c]: [Vec<f32>; 5], dims: [usize; 3], heads: usize) -> Inputs {
        let n = b.len() / (dims[0] * dims[1]).max(1);
        Inputs {
            x: Arc::new(x),
            dt: Arc::new(dt),
            a: Arc::new(a),
            b: Arc::new(b),
            c: Arc::new(c),
            dims,
            heads,
            n,
        }
    }

    /// Channels per head.
    fn head_dim(&self) -> usize {
        self.dims[2] / self.heads
    }

    /// Batch element `i`'s slices: x (`[seq, d_inner]`), Δ (`[seq, heads]`),
    /// B, C (`[seq, d_state]`).
    fn element(&self, i: usize) -> [&[f32]; 4] {
        let [_, seq, di] = self.dims;
        let (wide, per_head, narrow) = (seq * di, seq * self.heads, seq * self.n);
        [
            &self.x[i * wide..(i + 1) * wide],
            &self.dt[i * per_head..(i + 1) * per_head],
            &self.b[i * narrow..(i + 1) * narrow],
            &self.c[i * narrow..(i + 1) * narrow],
        ]
    }

    /// Step `t`'s per-channel decay `exp(Δ_h A_h)` and input `Δ_h x`, each
    /// `[d_inner]`, from Δ's row `dtt` (`[heads]`) and x's row `xt`.
    fn step(&self, dtt: &[f32], xt: &[f32], decay: &mut [f32], u: &mut [f32]) {
        let p = self.head_dim();
        for (h, (&dt, &a)) in dtt.iter().zip(self.a.iter()).enumerate() {
            let e = exp(dt * a);
            let range = h * p..(h + 1) * p;
            decay[range.clone()].fill(e);
            for (u, x) in u[range.clone()].iter_mut().zip(&xt[range]) {
                *u = dt * x;
            }
        }
    }
}

/// `H ← decay ⊙ H + u B_tᵀ` for one batch element; `h`: `[d_state,
/// d_inner]`; `decay`, `u`: `[d_inner]`; `bt`: `[d_state]`.
fn advance(h: &mut [f32], decay: &[f32], u: &[f32], bt: &[f32]) {
    let di = u.len();
    for (j, &bj) in bt.iter().enumerate() {
        let hj = &mut h[j * di..(j + 1) * di];
        for d in 0..di {
            hj[d] = decay[d] * hj[d] + u[d] * bj;
        }
    }
}

fn forward(s: &Inputs) -> Vec<f32> {
    let [batch, seq, di] = s.dims;
    let (n, heads) = (s.n, s.heads);
    let mut out = vec![0f32; batch * seq * di];
    out.par_chunks_mut(seq * di).enumerate().for_each(|(i, y)| {
        let [x, dt, b, c] = s.element(i);
        let mut h = vec![0f32; n * di];
        let (mut decay, mut u) = (vec![0f32; di], vec![0f32; di]);
        for t in 0..seq {
            let wide = t * di..(t + 1) * di;
            s.step(
                &dt[t * heads..(t + 1) * heads],
                &x[wide.clone()],
                &mut decay,
                &mut u,
            );
            advance(&mut h, &decay, &u, &b[t * n..(t + 1) * n]);
            let yt = &mut y[wide];
            for (j, &cj) in c[t * n..(t + 1) * n].iter().enumerate() {
                axpy(cj, &h[j * di..(j + 1) * di], yt);
            }
        }
    });
    out
}

/// One batch element's gradient slices: x (`[seq, d_inner]`), Δ (`[seq,
/// heads]`), B, C (`[seq, d_state]`), written whole.
struct ElementGrads<'a> {
    dx: &'a mut [f32],
    ddt: &'a mut [f32],
    db: &'a mut [f32],
    dc: &'a mut [f32],
}

/// Batch element `i`'s backward: its gradients into `g`, A's (`[heads]`)
/// added to `da_sum`.
fn element_backward(s: &Inputs, i: usize, dy: &[f32], g: ElementGrads<'_>, da_sum: &mut [f32]) {
    let [_, seq, di] = s.dims;
    let (n, heads, p) = (s.n, s.heads, s.head_dim());
    let state = n * di;
    let [x, dt, b, c] = s.element(i);
    let gy = &dy[i * seq * di..(i + 1) * seq * di];
    // The state before every step (`hs[t]`) and after the last, recomputed.
    let mut hs = vec![0f32; (seq + 1) * state];
    let (mut decay, mut u) = (vec![0f32; di], vec![0f32; di]);
    for t in 0..seq {
        let (before, after) = hs.split_at_mut((t + 1) * state);
        let h = &mut after[..state];
        h.copy_from_slice(&before[t * state..]);
        s.step(
            &dt[t * heads..(t + 1) * heads],
            &x[t * di..(t + 1) * di],
            &mut decay,
            &mut u,
        );
        advance(h, &decay, &u, &b[t * n..(t + 1) * n]);
    }
    // `carry` = exp(Δ_{t+1} A) ⊙ ∂H_{t+1}; per channel, ∂u (through the
    // input) and ∂decay, summed over the state index.
    let mut carry = vec![0f32; state];
    let (mut gu, mut gdecay, mut gh) = (vec![0f32; di], vec![0f32; di], vec![0f32; di]);
    for t in (0..seq).rev() {
        let wide = t * di..(t + 1) * di;
        let (xt, gyt) = (&x[wide.clone()], &gy[wide.clone()]);
        let dtt = &dt[t * heads..(t + 1) * heads];
        s.step(dtt, xt, &mut decay, &mut u);
        gu.fill(0.0);
        gdecay.fill(0.0);
        for j in 0..n {
            let at_step = |t: usize| t * state + j * di..t * state + (j + 1) * di;
            let (h_prev, h_now) = (&hs[at_step(t)], &hs[at_step(t + 1)]);
            let carry_j = &mut carry[j * di..(j + 1) * di];
            let (bj, cj) = (b[t * n + j], c[t * n + j]);
            g.dc[t * n + j] = dot(gyt, h_now);
            for d in 0..di {
                let g_h = gyt[d] * cj + carry_j[d];
                gh[d] = g_h;
                gu[d] += g_h * bj;
                gdecay[d] += g_h * h_prev[d];
                carry_j[d] = decay[d] * g_h;
            }
            g.db[t * n + j] = dot(&gh, &u);
        }
        // u = Δ_h x, decay = exp(Δ_h A_h): back to x, Δ and A per head.
        for h in 0..heads {
            let range = h * p..(h + 1) * p;
            let (dth, ah) = (dtt[h], s.a[h]);
            let e = decay[h * p];
            let mut g_dt = 0f32;
            let mut g_z = 0f32;
            for d in range {
                g.dx[t * di + d] = gu[d] * dth;
                g_dt += gu[d] * xt[d];
                g_z += gdecay[d] * e;
            }
            g.ddt[t * heads + h] = g_dt + g_z * ah;
            da_sum[h] += g_z * dth;
        }
    }
}

/// Gradients of x, Δ, A (`[heads]`), B and C from the output gradient `dy`.
fn backward(s: &Inputs, dy: &[f32]) -> [Vec<f32>; 5] {
    let [batch, seq, di] = s.dims;
    let (n, heads) = (s.n, s.heads);
    let (wide, per_head, narrow) = (seq * di, seq * heads, seq * n);
    let mut dx = vec![0f32; batch * wide];
    let mut ddt = vec![0f32; batch * per_head];
    let mut db = vec![0f32; batch * narrow];
    let mut dc = vec![0f32; batch * narrow];
    let partials = dx
        .par_chunks_mut(wide)
        .zip(ddt.par_chunks_mut(per_head))
        .zip(db.par_chunks_mut(narrow))
        .zip(dc.par_chunks_mut(narrow))
        .enumerate()
        .map(|(i, (((dx, ddt), db), dc))| {
            let mut da_sum = vec![0f32; heads];
            let g = ElementGrads { dx, ddt, db, dc };
            element_backward(s, i, dy, g, &mut da_sum);
            da_sum
        })
        .collect::<Vec<_>>();
    [dx, ddt, ordered_sum(partials, heads), db, dc]
}

fn ssd_plain(t: [Tensor<Cpu, 3>; 5]) -> Tensor<Cpu, 3> {
    let (dims, heads) = (t[0].dims(), t[2].dims()[2]);
    let device = t[0].device();
    let s = Inputs::new(t.map(host), dims, heads);
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
        let [batch, seq, _] = s.dims;
        let narrow = [batch, seq, s.n];
        let shapes = [
            s.dims,
            [batch, seq, s.heads],
            [1, 1, s.heads],
            narrow,
            narrow,
        ];
        give(&ops, grads, backward(s, &g), shapes, &device);
    }
}

fn ssd_autodiff(t: [Tensor<CpuAutodiff, 3>; 5]) -> Tensor<CpuAutodiff, 3> {
    let (dims, heads) = (t[0].dims(), t[2].dims()[2]);
    let device = t[0].device();
    let p: [FloatTensor<CpuAutodiff>; 5] = t.map(|t| t.into_primitive().tensor());
    let s = Inputs::new(p.each_ref().map(host_of), dims, heads);
    let output = primitive(forward(&s), dims, &device);
    let [x, dt, a, b, c] = &p;
    record(FusedBackward, [x, dt, a, b, c], s, output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Init;
    use crate::layers::mamba2::recurrent;

    use crate::layers::fused::assert_close as close;

    /// x, Δ (positive, up to ~6), A (negative, |A| from 0.1 to ~4), B, C for
    /// `[batch, seq, heads, head_dim, d_state]`.
    fn operands(dims: [usize; 5], seed: u64) -> [TensorData; 5] {
        let [batch, seq, heads, p, n] = dims;
        let device = Default::default();
        let mut init = Init::<Cpu>::new(seed, &device);
        let data = |t: Tensor<Cpu, 3>| t.into_data();
        [
            data(init.normal([batch, seq, heads * p], 1.0).val()),
            data(init.normal([batch, seq, heads], 2.0).val().abs()),
            data(init.normal([1, 1, heads], 1.5).val().abs().neg() - 0.1),
            data(init.normal([batch, seq, n], 1.0).val()),
            data(init.normal([batch, seq, n], 1.0).val()),
        ]
    }

    /// Output and the gradients of all five operands equal the per-head
    /// recurrence composed from Burn ops (differentiated by
    /// burn-autodiff); the inference path gives the same output.
    #[test]
    fn fused_equals_the_recurrence_in_values_and_gradients() {
        let device = Default::default();
        for dims in [
            [2, 9, 2, 3, 4],
            [1, 17, 1, 5, 1],
            [3, 1, 4, 2, 2],
            [2, 40, 3, 4, 16],
        ] {
            let [batch, seq, heads, p, _] = dims;
            let di = heads * p;
            let run = |fused: bool| {
                let [x, dt, a, b, c] = operands(dims, 9)
                    .map(|d| Tensor::<CpuAutodiff, 3>::from_data(d, &device).require_grad());
                let a1 = a.clone().reshape([heads]);
                let y = if fused {
                    head_scan(x.clone(), dt.clone(), a1, b.clone(), c.clone())
                } else {
                    recurrent(x.clone(), dt.clone(), a1, b.clone(), c.clone())
                };
                let w: Vec<f32> = (0..batch * seq * di)
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
                (y.into_data().to_vec::<f32>().unwrap(), g)
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
            let a = a.reshape([heads]);
            let plain: Vec<f32> = head_scan(x.clone(), dt.clone(), a.clone(), b.clone(), c.clone())
                .into_data()
                .to_vec()
                .unwrap();
            let reference: Vec<f32> = recurrent(x, dt, a, b, c).into_data().to_vec().unwrap();
            close(&plain, &reference, 1e-5, &format!("inference, {case}"));
        }
    }

    /// `A`'s gradient is summed in batch order: the same bits whatever the
    /// thread count and the work's split.
    #[test]
    fn the_backward_is_bitwise_deterministic() {
        let (batch, seq, heads, p, n) = (16, 10, 3, 2, 4);
        let di = heads * p;
        let values =
            |len: usize, f: f32| (0..len).map(|i| (i as f32 * f).sin()).collect::<Vec<f32>>();
        let a: Vec<f32> = values(heads, 0.3).iter().map(|v| -v.abs() - 0.1).collect();
        let dt: Vec<f32> = values(batch * seq * heads, 0.7)
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
            heads,
        );
        let dy = values(batch * seq * di, 0.23);
        crate::layers::fused::assert_same_bits_on_any_pool(|| backward(&s, &dy));
    }
}
