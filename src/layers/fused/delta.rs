//! The gated delta rule `Ŝ = exp(g_t) S_{t−1}`, `S_t = Ŝ + k_t (β_t (v_t −
//! Ŝᵀ k_t))ᵀ`, `o_t = S_tᵀ q_t` (Gated DeltaNet) as one CPU kernel with its
//! own backward.
//!
//! The chunked WY form (`deltanet::chunked`) is matrix products, a solve by
//! repeated squaring and a host loop over chunks: on flex a few dozen small
//! ops per chunk. Here the rule runs step by step, as written, one task per
//! (batch element, head) with its `[dk, dv]` state in cache: per step a
//! pass over the state for `Ŝᵀ k`, one for the rank-one write, one for the
//! output, each row (`dv` values) contiguous, with a polynomial `exp`
//! ([`super::exp`]) once per step. No ratio of decays is formed.
//!
//! The backward keeps no state from the forward: it recomputes the states
//! at every [`CHECKPOINT`]-th step, then walks back one segment at a time
//! (recomputing the segment's states from its checkpoint), carrying
//! `∂S_t`. No gradient is shared between tasks, so the result does not
//! depend on how the work is split.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::ops::FloatTensor;
use rayon::prelude::*;

use super::{Dispatch, axpy, cast, dispatch, dot, exp, give, host, host_of, incoming, primitive};
use crate::layers::deltanet::{self, CHUNK};
use crate::layers::linear_attention::{merge_heads, split_heads};
use crate::layers::ops::contiguous;
use crate::layers::{Cpu, CpuAutodiff};

/// Steps between the states the backward keeps.
const CHECKPOINT: usize = 16;

/// The gated delta rule, as [`deltanet::recurrent`].
///
/// # Shapes
/// - q, k: `[batch, heads, seq, dk]`; v: `[batch, heads, seq, dv]`;
///   g, beta: `[batch, heads, seq, 1]` → `[batch, heads, seq, dv]`
pub fn delta_rule<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    g: Tensor<B, 4>,
    beta: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [b, h, seq, dk] = q.dims();
    let dv = v.dims()[3];
    // Every fused kernel's operand is rank 3: one row block per (batch, head).
    let flat = |t: Tensor<B, 4>, e: usize| t.reshape([b * h, seq, e]);
    let out: Tensor<B, 3> = match dispatch::<B>() {
        Dispatch::Autodiff => cast(rule_autodiff([
            cast(flat(q, dk)),
            cast(flat(k, dk)),
            cast(flat(v, dv)),
            cast(flat(g, 1)),
            cast(flat(beta, 1)),
        ])),
        Dispatch::Plain => cast(rule_plain([
            cast(flat(q, dk)),
            cast(flat(k, dk)),
            cast(flat(v, dv)),
            cast(flat(g, 1)),
            cast(flat(beta, 1)),
        ])),
        Dispatch::Composite => return deltanet::chunked(q, k, v, g, beta, CHUNK),
    };
    out.reshape([b, h, seq, dv])
}

/// The gated delta rule on token-major operands, as the layer computes
/// them: [`delta_rule`] without the head split and merge around it. On flex
/// the operands are regrouped by head on the host (one copy of `dk`- or
/// `dv`-long runs each way) instead of by Burn's strided copies, which cost
/// the layer nearly as much as the rule itself (`perf` of `cargo bench
/// --bench torch -- --layers --only gated-deltanet`: flex's strided
/// iteration and `to_contiguous` 15 % of the step, the kernel's own loops
/// 22 %).
///
/// # Shapes
/// - q, k: `[batch, seq, heads·dk]`; v: `[batch, seq, heads·dv]`;
///   g, beta: `[batch, seq, heads]` → `[batch, seq, heads·dv]`
pub fn delta_rule_tokens<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    g: Tensor<B, 3>,
    beta: Tensor<B, 3>,
    heads: usize,
) -> Tensor<B, 3> {
    match dispatch::<B>() {
        Dispatch::Autodiff => cast(tokens_autodiff(
            [cast(q), cast(k), cast(v), cast(g), cast(beta)],
            heads,
        )),
        Dispatch::Plain => cast(tokens_plain(
            [cast(q), cast(k), cast(v), cast(g), cast(beta)],
            heads,
        )),
        Dispatch::Composite => {
            let [b, seq, _] = q.dims();
            // `[batch, seq, heads]` → `[batch, heads, seq, 1]`, copied first:
            // Burn 0.21's cubecl backends compute wrong strides when a
            // strided view with a unit dim is reshaped again (`chunked`
            // splits seq), see `tests_gpu_faults`.
            let per_head =
                |t: Tensor<B, 3>| contiguous(t.swap_dims(1, 2)).reshape([b, heads, seq, 1]);
            merge_heads(deltanet::chunked(
                split_heads(q, heads),
                split_heads(k, heads),
                split_heads(v, heads),
                per_head(g),
                per_head(beta),
                CHUNK,
            ))
        }
    }
}

/// Token-major `[batch, seq, heads·e]` against task-major `[batch·heads,
/// seq, e]` on the host.
#[derive(Clone, Copy, Debug)]
struct Tokens {
    batch: usize,
    seq: usize,
    heads: usize,
}

impl Tokens {
    /// `x` (`[batch, seq, heads·e]`) regrouped as `[batch·heads, seq, e]`.
    fn to_tasks(self, x: &[f32], e: usize) -> Vec<f32> {
        self.regroup(x, e, true)
    }

    /// `x` (`[batch·heads, seq, e]`) regrouped as `[batch, seq, heads·e]`.
    fn to_tokens(self, x: &[f32], e: usize) -> Vec<f32> {
        self.regroup(x, e, false)
    }

    fn regroup(self, x: &[f32], e: usize, to_tasks: bool) -> Vec<f32> {
        let Tokens { seq, heads, .. } = self;
        let block = (seq * heads * e).max(1);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(block)
            .zip(x.par_chunks(block))
            .for_each(|(out, x)| {
                for t in 0..seq {
                    for h in 0..heads {
                        let (token, task) = ((t * heads + h) * e, (h * seq + t) * e);
                        let (to, from) = if to_tasks {
                            (task, token)
                        } else {
                            (token, task)
                        };
                        out[to..to + e].copy_from_slice(&x[from..from + e]);
                    }
                }
            });
        out
    }
}

/// The host operands of [`delta_rule_tokens`], task-major, and the layout
/// the gradients go back to.
#[derive(Clone, Debug)]
struct TokenInputs {
    inputs: Inputs,
    layout: Tokens,
}

impl TokenInputs {
    fn new(t: [Vec<f32>; 5], [batch, seq, wk]: [usize; 3], wv: usize, heads: usize) -> Self {
        assert!(
            heads > 0 && wk.is_multiple_of(heads) && wv.is_multiple_of(heads),
            "the widths {wk} and {wv} split into {heads} heads"
        );
        let rows = batch * seq;
        let lens = t.each_ref().map(Vec::len);
        assert_eq!(
            lens,
            [rows * wk, rows * wk, rows * wv, rows * heads, rows * heads],
            "q, k: [batch, seq, heads·dk]; v: [batch, seq, heads·dv]; g, β: [batch, seq, heads]"
        );
        let layout = Tokens { batch, seq, heads };
        let (dk, dv) = (wk / heads, wv / heads);
        let [q, k, v, g, beta] = t;
        let inputs = Inputs::new(
            [
                layout.to_tasks(&q, dk),
                layout.to_tasks(&k, dk),
                layout.to_tasks(&v, dv),
                layout.to_tasks(&g, 1),
                layout.to_tasks(&beta, 1),
            ],
            [batch * heads, seq, dk, dv],
        );
        TokenInputs { inputs, layout }
    }

    /// The rule's output, token-major, and its shape.
    fn forward(&self) -> (Vec<f32>, [usize; 3]) {
        let [_, _, _, dv] = self.inputs.dims;
        let Tokens { batch, seq, heads } = self.layout;
        (
            self.layout.to_tokens(&forward(&self.inputs), dv),
            [batch, seq, heads * dv],
        )
    }
}

fn tokens_plain(t: [Tensor<Cpu, 3>; 5], heads: usize) -> Tensor<Cpu, 3> {
    let (dims, wv, device) = (t[0].dims(), t[2].dims()[2], t[0].device());
    let (out, shape) = TokenInputs::new(t.map(host), dims, wv, heads).forward();
    Tensor::from_data(TensorData::new(out, shape), &device)
}

#[derive(Debug)]
struct TokensBackward;

impl Backward<Cpu, 5> for TokensBackward {
    type State = TokenInputs;

    fn backward(
        self,
        ops: Ops<Self::State, 5>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let (dy, device) = incoming(&ops, grads);
        let TokenInputs { inputs, layout } = &ops.state;
        let [_, _, dk, dv] = inputs.dims;
        let Tokens { batch, seq, heads } = *layout;
        let dy = layout.to_tasks(&dy, dv);
        let [dq, dkey, dval, dg, dbeta] = backward(inputs, &dy);
        let (key, value, scalar) = (
            [batch, seq, heads * dk],
            [batch, seq, heads * dv],
            [batch, seq, heads],
        );
        give(
            &ops,
            grads,
            [
                layout.to_tokens(&dq, dk),
                layout.to_tokens(&dkey, dk),
                layout.to_tokens(&dval, dv),
                layout.to_tokens(&dg, 1),
                layout.to_tokens(&dbeta, 1),
            ],
            [key, key, value, scalar, scalar],
            &device,
        );
    }
}

fn tokens_autodiff(t: [Tensor<CpuAutodiff, 3>; 5], heads: usize) -> Tensor<CpuAutodiff, 3> {
    let (dims, wv, device) = (t[0].dims(), t[2].dims()[2], t[0].device());
    let p: [FloatTensor<CpuAutodiff>; 5] = t.map(|t| t.into_primitive().tensor());
    let s = TokenInputs::new(p.each_ref().map(host_of), dims, wv, heads);
    let (out, shape) = s.forward();
    let output = primitive(out, shape, &device);
    let [q, k, v, g, beta] = &p;
    super::record(TokensBackward, [q, k, v, g, beta], s, output)
}

/// The operands on the host, each `[tasks, seq, ·]` row-major.
#[derive(Clone, Debug)]
struct Inputs {
    /// Queries, `[tasks, seq, dk]`.
    q: Arc<Vec<f32>>,
    /// Keys, `[tasks, seq, dk]`.
    k: Arc<Vec<f32>>,
    /// Values, `[tasks, seq, dv]`.
    v: Arc<Vec<f32>>,
    /// Log-decays, `[tasks, seq]`.
    g: Arc<Vec<f32>>,
    /// Write strengths, `[tasks, seq]`.
    beta: Arc<Vec<f32>>,
    /// `[tasks, seq, dk, dv]`.
    dims: [usize; 4],
}

impl Inputs {
    fn new([q, k, v, g, beta]: [Vec<f32>; 5], dims: [usize; 4]) -> Inputs {
        Inputs {
            q: Arc::new(q),
            k: Arc::new(k),
            v: Arc::new(v),
            g: Arc::new(g),
            beta: Arc::new(beta),
            dims,
        }
    }

    /// Task `i`'s slices: q, k, v, g, β.
    fn task(&self, i: usize) -> [&[f32]; 5] {
        let [_, seq, dk, dv] = self.dims;
        let (key, value) = (seq * dk, seq * dv);
        [
            &self.q[i * key..(i + 1) * key],
            &self.k[i * key..(i + 1) * key],
            &self.v[i * value..(i + 1) * value],
            &self.g[i * seq..(i + 1) * seq],
            &self.beta[i * seq..(i + 1) * seq],
        ]
    }
}

/// One step: `S ← exp(g) S`, `u = Sᵀ k`, `w = β (v − u)`, `S ← S + k wᵀ`.
/// `s`: `[dk, dv]`; `kt`: `[dk]`; `vt`, `u`, `w` (scratch): `[dv]`.
fn advance(s: &mut [f32], kt: &[f32], vt: &[f32], g: f32, beta: f32, u: &mut [f32], w: &mut [f32]) {
    let dv = vt.len();
    let alpha = exp(g);
    u.fill(0.0);
    for (row, &ki) in s.chunks_exact_mut(dv).zip(kt) {
        row.iter_mut().for_each(|x| *x *= alpha);
        axpy(ki, row, u);
    }
    for ((w, &v), &u) in w.iter_mut().zip(vt).zip(u.iter()) {
        *w = beta * (v - u);
    }
    for (row, &ki) in s.chunks_exact_mut(dv).zip(kt) {
        axpy(ki, w, row);
    }
}

fn forward(s: &Inputs) -> Vec<f32> {
    let [tasks, seq, dk, dv] = s.dims;
    let mut out = vec![0f32; tasks * seq * dv];
    out.par_chunks_mut((seq * dv).max(1))
        .enumerate()
        .for_each(|(i, o)| {
            let [q, k, v, g, beta] = s.task(i);
            let mut state = vec![0f32; dk * dv];
            let (mut u, mut w) = (vec![0f32; dv], vec![0f32; dv]);
            for t in 0..seq {
                let (key, value) = (t * dk..(t + 1) * dk, t * dv..(t + 1) * dv);
                advance(
                    &mut state,
                    &k[key.clone()],
                    &v[value.clone()],
                    g[t],
                    beta[t],
                    &mut u,
                    &mut w,
                );
                // o_t = Σ_i q_t[i] S_t[i, :].
                let ot = &mut o[value];
                for (&qi, row) in q[key].iter().zip(state.chunks_exact(dv)) {
                    axpy(qi, row, ot);
                }
            }
        });
    out
}

/// One task's gradient slices: q, k (`[seq, dk]`), v (`[seq, dv]`), g, β (`[seq]`).
struct TaskGrads<'a> {
    dq: &'a mut [f32],
    dk: &'a mut [f32],
    dv: &'a mut [f32],
    dg: &'a mut [f32],
    dbeta: &'a mut [f32],
}

/// Task `i`'s backward from the output gradient `dy` (all tasks').
fn task_backward(s: &Inputs, i: usize, dy: &[f32], gr: TaskGrads<'_>) {
    let [_, seq, dk, dv] = s.dims;
    let size = dk * dv;
    let [q, k, v, g, beta] = s.task(i);
    let go = &dy[i * seq * dv..(i + 1) * seq * dv];
    let (key, value) = (
        |t: usize| t * dk..(t + 1) * dk,
        |t: usize| t * dv..(t + 1) * dv,
    );
    let (mut u, mut w) = (vec![0f32; dv], vec![0f32; dv]);
    // The state before steps 0, CHECKPOINT, 2·CHECKPOINT, ….
    let segments = seq.div_ceil(CHECKPOINT);
    let mut checkpoints = vec![0f32; segments * size];
    let mut state = vec![0f32; size];
    for t in 0..seq {
        if t % CHECKPOINT == 0 {
            let c = t / CHECKPOINT;
            checkpoints[c * size..(c + 1) * size].copy_from_slice(&state);
        }
        advance(
            &mut state,
            &k[key(t)],
            &v[value(t)],
            g[t],
            beta[t],
            &mut u,
            &mut w,
        );
    }
    // `gs` = ∂S_t: the carry from step t + 1, then this step's output.
    let mut gs = vec![0f32; size];
    let (mut dw, mut du) = (vec![0f32; dv], vec![0f32; dv]);
    let mut states = vec![0f32; (CHECKPOINT + 1) * size];
    for c in (0..segments).rev() {
        let (start, end) = (c * CHECKPOINT, ((c + 1) * CHECKPOINT).min(seq));
        states[..size].copy_from_slice(&checkpoints[c * size..(c + 1) * size]);
        for t in start..end {
            let j = t - start;
            let (before, after) = states.split_at_mut((j + 1) * size);
            let next = &mut after[..size];
            next.copy_from_slice(&before[j * size..]);
            advance(
                next,
                &k[key(t)],
                &v[value(t)],
                g[t],
                beta[t],
                &mut u,
                &mut w,
            );
        }
        for t in (start..end).rev() {
            let j = t - start;
            let (prev, now) = (
                &states[j * size..(j + 1) * size],
                &states[(j + 1) * size..(j + 2) * size],
            );
            let (qt, kt, vt, got) = (&q[key(t)], &k[key(t)], &v[value(t)], &go[value(t)]);
            let (alpha, bt) = (exp(g[t]), beta[t]);
            // u = α S_{t−1}ᵀ k and w = β (v − u), recomputed.
            u.fill(0.0);
            for (row, &ki) in prev.chunks_exact(dv).zip(kt) {
                axpy(alpha * ki, row, &mut u);
            }
            for ((w, &v), &u) in w.iter_mut().zip(vt).zip(u.iter()) {
                *w = bt * (v - u);
            }
            // Through o_t = S_tᵀ q_t, then S_t = Ŝ + k wᵀ.
            dw.fill(0.0);
            for r in 0..dk {
                let rows = r * dv..(r + 1) * dv;
                gr.dq[t * dk + r] = dot(got, &now[rows.clone()]);
                let gs_r = &mut gs[rows];
                axpy(qt[r], got, gs_r);
                gr.dk[t * dk + r] = dot(gs_r, &w);
                axpy(kt[r], gs_r, &mut dw);
            }
            // w = β (v − u).
            let mut d_beta = 0f32;
            for d in 0..dv {
                d_beta += dw[d] * (vt[d] - u[d]);
                gr.dv[t * dv + d] = bt * dw[d];
                du[d] = -bt * dw[d];
            }
            gr.dbeta[t] = d_beta;
            // u = Ŝᵀ k: ∂Ŝ = ∂S_t + k ∂uᵀ, ∂k += Ŝ ∂u; Ŝ = α S_{t−1}.
            let mut d_alpha = 0f32;
            let rows = prev.chunks_exact(dv).zip(gs.chunks_exact_mut(dv));
            for (r, ((prev_r, gs_r), &k_r)) in rows.zip(kt).enumerate() {
                gr.dk[t * dk + r] += alpha * dot(prev_r, &du);
                axpy(k_r, &du, gs_r);
                d_alpha += dot(gs_r, prev_r);
                gs_r.iter_mut().for_each(|x| *x *= alpha);
            }
            gr.dg[t] = alpha * d_alpha;
        }
    }
}

/// Gradients of q, k, v, g and β from the output gradient `dy`.
fn backward(s: &Inputs, dy: &[f32]) -> [Vec<f32>; 5] {
    let [tasks, seq, dk, dv] = s.dims;
    let (key, value, scalar) = ((seq * dk).max(1), (seq * dv).max(1), seq.max(1));
    let mut dq = vec![0f32; tasks * seq * dk];
    let mut dkey = vec![0f32; tasks * seq * dk];
    let mut dval = vec![0f32; tasks * seq * dv];
    let mut dg = vec![0f32; tasks * seq];
    let mut dbeta = vec![0f32; tasks * seq];
    dq.par_chunks_mut(key)
        .zip(dkey.par_chunks_mut(key))
        .zip(dval.par_chunks_mut(value))
        .zip(dg.par_chunks_mut(scalar))
        .zip(dbeta.par_chunks_mut(scalar))
        .enumerate()
        .for_each(|(i, ((((dq, dk), dv), dg), dbeta))| {
            task_backward(
                s,
                i,
                dy,
                TaskGrads {
                    dq,
                    dk,
                    dv,
                    dg,
                    dbeta,
                },
            );
        });
    [dq, dkey, dval, dg, dbeta]
}

fn dims_of(q: [usize; 3], v: [usize; 3]) -> [usize; 4] {
    [q[0], q[1], q[2], v[2]]
}

fn rule_plain(t: [Tensor<Cpu, 3>; 5]) -> Tensor<Cpu, 3> {
    let dims = dims_of(t[0].dims(), t[2].dims());
    let device = t[0].device();
    let s = Inputs::new(t.map(host), dims);
    let [tasks, seq, _, dv] = dims;
    Tensor::from_data(TensorData::new(forward(&s), [tasks, seq, dv]), &device)
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
        let (dy, device) = incoming(&ops, grads);
        let s = &ops.state;
        let [tasks, seq, dk, dv] = s.dims;
        let (key, value, scalar) = ([tasks, seq, dk], [tasks, seq, dv], [tasks, seq, 1]);
        give(
            &ops,
            grads,
            backward(s, &dy),
            [key, key, value, scalar, scalar],
            &device,
        );
    }
}

fn rule_autodiff(t: [Tensor<CpuAutodiff, 3>; 5]) -> Tensor<CpuAutodiff, 3> {
    let dims = dims_of(t[0].dims(), t[2].dims());
    let device = t[0].device();
    let p: [FloatTensor<CpuAutodiff>; 5] = t.map(|t| t.into_primitive().tensor());
    let s = Inputs::new(p.each_ref().map(host_of), dims);
    let [tasks, seq, _, dv] = dims;
    let output = primitive(forward(&s), [tasks, seq, dv], &device);
    let [q, k, v, g, beta] = &p;
    super::record(FusedBackward, [q, k, v, g, beta], s, output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Init;
    use crate::layers::deltanet::{l2_normalize, recurrent};

    use crate::layers::fused::assert_close as close;

    /// q, k (L2-normalised, as the layer gives them), v, log-decays from
    /// gentle to strong (down to ≈ −20 a step) and β in (0, 1).
    fn operands(dims: [usize; 5], seed: u64) -> [TensorData; 5] {
        let [b, h, seq, dk, dv] = dims;
        let device = Default::default();
        let mut init = Init::<Cpu>::new(seed, &device);
        let data = |t: Tensor<Cpu, 4>| t.into_data();
        let key = [b, h, seq, dk];
        let scalar = [b, h, seq, 1];
        [
            data(init.normal(key, 1.0).val()),
            data(l2_normalize(init.normal(key, 1.0).val())),
            data(init.normal([b, h, seq, dv], 1.0).val()),
            data(init.normal(scalar, 1.0).val().powi_scalar(2).neg() * 2.0),
            data(burn::tensor::activation::sigmoid(
                init.normal(scalar, 2.0).val(),
            )),
        ]
    }

    /// Output and the gradients of all five operands equal the recurrence
    /// composed from Burn ops (differentiated by burn-autodiff), across
    /// checkpoint boundaries; the inference path gives the same output.
    #[test]
    fn fused_equals_the_recurrence_in_values_and_gradients() {
        let device = Default::default();
        for dims in [[2, 2, 9, 4, 3], [1, 1, 37, 8, 8], [1, 3, 1, 2, 5]] {
            let [b, h, seq, _, dv] = dims;
            let run = |fused: bool| {
                let [q, k, v, g, beta] = operands(dims, 17)
                    .map(|d| Tensor::<CpuAutodiff, 4>::from_data(d, &device).require_grad());
                let y = if fused {
                    delta_rule(q.clone(), k.clone(), v.clone(), g.clone(), beta.clone())
                } else {
                    recurrent(q.clone(), k.clone(), v.clone(), g.clone(), beta.clone())
                };
                let w: Vec<f32> = (0..b * h * seq * dv)
                    .map(|i| ((i * 31 % 11) as f32 - 5.0) / 5.0)
                    .collect();
                let w = Tensor::<CpuAutodiff, 4>::from_data(
                    TensorData::new(w, [b, h, seq, dv]),
                    &device,
                );
                let grads = (y.clone() * w).sum().backward();
                let grad = |t: &Tensor<CpuAutodiff, 4>| {
                    t.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap()
                };
                let gr = [grad(&q), grad(&k), grad(&v), grad(&g), grad(&beta)];
                (y.into_data().to_vec::<f32>().unwrap(), gr)
            };
            let (fused, reference) = (run(true), run(false));
            let case = format!("dims {dims:?}");
            close(&fused.0, &reference.0, 1e-5, &format!("output, {case}"));
            for (name, (f, r)) in ["dq", "dk", "dv", "dg", "dbeta"]
                .iter()
                .zip(fused.1.iter().zip(&reference.1))
            {
                close(f, r, 1e-4, &format!("{name}, {case}"));
            }
            let [q, k, v, g, beta] =
                operands(dims, 17).map(|d| Tensor::<Cpu, 4>::from_data(d, &device));
            let plain: Vec<f32> =
                delta_rule(q.clone(), k.clone(), v.clone(), g.clone(), beta.clone())
                    .into_data()
                    .to_vec()
                    .unwrap();
            let reference: Vec<f32> = recurrent(q, k, v, g, beta).into_data().to_vec().unwrap();
            close(&plain, &reference, 1e-5, &format!("inference, {case}"));
        }
    }

    /// The token-major entry equals the recurrence between a head split and
    /// merge, in values and in the gradients of all five token-major
    /// operands, with heads of unequal key and value widths; the inference
    /// path gives the same output.
    #[test]
    fn token_major_entry_equals_the_split_recurrence() {
        let device = Default::default();
        for dims in [[2, 3, 9, 4, 6], [1, 1, 20, 8, 8], [3, 2, 1, 2, 3]] {
            let [b, h, seq, _, dv] = dims;
            // Head-major operands as the tests above draw them, token-major.
            let tokens = || {
                let [q, k, v, g, beta] =
                    operands(dims, 23).map(|d| Tensor::<Cpu, 4>::from_data(d, &device));
                let scalar = |t: Tensor<Cpu, 4>| t.reshape([b, h, seq]).swap_dims(1, 2);
                [
                    merge_heads(q),
                    merge_heads(k),
                    merge_heads(v),
                    scalar(g),
                    scalar(beta),
                ]
                .map(|t| t.into_data())
            };
            let run = |fused: bool| {
                let [q, k, v, g, beta] = tokens()
                    .map(|d| Tensor::<CpuAutodiff, 3>::from_data(d, &device).require_grad());
                let y = if fused {
                    delta_rule_tokens(q.clone(), k.clone(), v.clone(), g.clone(), beta.clone(), h)
                } else {
                    let per_head =
                        |t: Tensor<CpuAutodiff, 3>| t.swap_dims(1, 2).reshape([b, h, seq, 1]);
                    merge_heads(recurrent(
                        split_heads(q.clone(), h),
                        split_heads(k.clone(), h),
                        split_heads(v.clone(), h),
                        per_head(g.clone()),
                        per_head(beta.clone()),
                    ))
                };
                let w: Vec<f32> = (0..b * seq * h * dv)
                    .map(|i| ((i * 37 % 13) as f32 - 6.0) / 6.0)
                    .collect();
                let w = Tensor::<CpuAutodiff, 3>::from_data(
                    TensorData::new(w, [b, seq, h * dv]),
                    &device,
                );
                let grads = (y.clone() * w).sum().backward();
                let grad = |t: &Tensor<CpuAutodiff, 3>| {
                    t.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap()
                };
                let gr = [grad(&q), grad(&k), grad(&v), grad(&g), grad(&beta)];
                (y.into_data().to_vec::<f32>().unwrap(), gr)
            };
            let (fused, reference) = (run(true), run(false));
            let case = format!("dims {dims:?}");
            close(&fused.0, &reference.0, 1e-5, &format!("output, {case}"));
            for (name, (f, r)) in ["dq", "dk", "dv", "dg", "dbeta"]
                .iter()
                .zip(fused.1.iter().zip(&reference.1))
            {
                close(f, r, 1e-4, &format!("{name}, {case}"));
            }
            let [q, k, v, g, beta] = tokens().map(|d| Tensor::<Cpu, 3>::from_data(d, &device));
            let plain: Vec<f32> = delta_rule_tokens(q, k, v, g, beta, h)
                .into_data()
                .to_vec()
                .unwrap();
            close(&plain, &reference.0, 1e-5, &format!("inference, {case}"));
        }
    }
}
