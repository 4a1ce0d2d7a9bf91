//! Mamba-1 selective state-space layer (mad-protocol §3.2 `mamba`), a fused
//! block: `in_proj → (x, z)`, causal depthwise conv and SiLU on `x`,
//! data-dependent `Δ, B, C`, the selective scan
//! `h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t x_t`, `y_t = C_t · h_t + D x_t`,
//! gated by `SiLU(z)`, `out_proj`.
//!
//! The scan is a chunked parallel scan: a log-depth (Hillis–Steele) scan
//! inside chunks of [`CHUNK`] steps, and the chunk-final states carried across
//! chunks. Only products of decays ≤ 1 are formed, so it is stable for any Δ.
//! [`recurrent`] is the token-by-token form the tests compare against.
//! On the CPU backends the layer runs the fused kernel
//! [`super::fused::scan`] instead (same recurrence, step by step); on the
//! CubeCL backends (CUDA, wgpu) `mad-kernels`' scan
//! ([`super::cube::selective_scan`]); other backends the chunked scan.

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::silu;

use super::Init;
use super::fused::glu::silu_gate;
use super::ops::{contiguous, fit, linear, scale_last};
use super::short_conv::ShortConv;
use crate::genome;

/// Chunk length of the parallel scan.
pub const CHUNK: usize = 32;

/// Mamba-1.
#[derive(Module, Debug)]
pub struct Mamba<B: Backend> {
    /// `Linear(d, 2·d_inner)`, no bias.
    pub in_proj: Linear<B>,
    /// Depthwise causal conv with bias over `d_inner` channels.
    pub conv: ShortConv<B>,
    /// `Linear(d_inner, dt_rank + 2·d_state)`, no bias.
    pub x_proj: Linear<B>,
    /// `Linear(dt_rank, d_inner)` with the Δ bias.
    pub dt_proj: Linear<B>,
    /// `log(−A)`, `[d_inner, d_state]`, S4D-real init `log(1..=d_state)`.
    pub a_log: Param<Tensor<B, 2>>,
    /// Skip `D`, `[d_inner]`, init 1.
    pub skip: Param<Tensor<B, 1>>,
    /// `Linear(d_inner, d)`, no bias.
    pub out_proj: Linear<B>,
    /// Δ rank.
    pub dt_rank: usize,
    /// SSM state per channel.
    pub d_state: usize,
}

/// `log(1 + exp(x))` without overflow.
pub fn softplus<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clone().clamp_min(0.0) + x.abs().neg().exp().log1p()
}

impl<B: Backend> Mamba<B> {
    /// Builds the layer for width `d`.
    pub fn new(spec: &genome::Mamba, d: usize, init: &mut Init<'_, B>) -> Self {
        use rand::RngExt;
        let di = spec.expand * d;
        let n = spec.d_state;
        let r = spec.dt_rank.unwrap_or(genome::mamba_default_dt_rank(d));
        let mut dt_proj = init.linear(r, di, true);
        dt_proj.weight = init.uniform([r, di], (r as f64).powf(-0.5));
        // softplus(bias) log-uniform in [1e-3, 0.1], floored at 1e-4.
        let (lo, hi) = (1e-3f64.ln(), 0.1f64.ln());
        dt_proj.bias = Some(init.param([di], |rng, _| {
            let dt = (lo + (hi - lo) * rng.random::<f64>()).exp().max(1e-4);
            (dt + (-(-dt).exp_m1()).ln()) as f32
        }));
        Mamba {
            in_proj: init.linear(d, 2 * di, false),
            conv: ShortConv::new(di, spec.d_conv, init),
            x_proj: init.linear(di, r + 2 * n, false),
            dt_proj,
            a_log: init.param([di, n], |_, i| ((i % n + 1) as f32).ln()),
            skip: init.constant([di], 1.0),
            out_proj: init.linear(di, d, false),
            dt_rank: r,
            d_state: n,
        }
    }

    /// The scan's inputs `(x, Δ, A, B, C)` for input `x`, and the gate `z`.
    ///
    /// # Shapes
    /// - x: `[batch, seq, d]` → x, Δ, z: `[batch, seq, d_inner]`; A: `[d_inner, d_state]`; B, C: `[batch, seq, d_state]`
    pub fn scan_inputs(&self, x: Tensor<B, 3>) -> ScanInputs<B> {
        let [batch, seq, _] = x.dims();
        let xz = linear(&self.in_proj, x);
        let di = xz.dims()[2] / 2;
        let xs = contiguous(xz.clone().slice([0..batch, 0..seq, 0..di]));
        let z = contiguous(xz.slice([0..batch, 0..seq, di..2 * di]));
        let xs = silu(self.conv.forward(xs));
        let p = linear(&self.x_proj, xs.clone());
        let (r, n) = (self.dt_rank, self.d_state);
        let dt_in = contiguous(p.clone().slice([0..batch, 0..seq, 0..r]));
        let b = contiguous(p.clone().slice([0..batch, 0..seq, r..r + n]));
        let c = contiguous(p.slice([0..batch, 0..seq, r + n..r + 2 * n]));
        ScanInputs {
            dt: softplus(linear(&self.dt_proj, dt_in)),
            a: self.a_log.val().exp().neg(),
            x: xs,
            b,
            c,
            z,
        }
    }

    /// # Shapes
    /// - x: `[batch, seq, d]` → `[batch, seq, d]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let s = self.scan_inputs(x);
        let y = super::fused::scan::selective_scan(s.x.clone(), s.dt, s.a, s.b, s.c)
            + scale_last(s.x, self.skip.val());
        linear(&self.out_proj, silu_gate(s.z, y))
    }
}

/// What the selective scan consumes.
pub struct ScanInputs<B: Backend> {
    /// Input after conv and SiLU, `[batch, seq, d_inner]`.
    pub x: Tensor<B, 3>,
    /// Δ, `[batch, seq, d_inner]`.
    pub dt: Tensor<B, 3>,
    /// A (negative), `[d_inner, d_state]`.
    pub a: Tensor<B, 2>,
    /// B, `[batch, seq, d_state]`.
    pub b: Tensor<B, 3>,
    /// C, `[batch, seq, d_state]`.
    pub c: Tensor<B, 3>,
    /// Gate, `[batch, seq, d_inner]`.
    pub z: Tensor<B, 3>,
}

/// Per-step decay `exp(Δ A)` and input `Δ B x`, each `[batch, seq, d_inner, d_state]`.
fn discretize<B: Backend>(
    x: Tensor<B, 3>,
    dt: Tensor<B, 3>,
    a: Tensor<B, 2>,
    b: Tensor<B, 3>,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let [batch, seq, di] = x.dims();
    let n = a.dims()[1];
    let full = [batch, seq, di, n];
    let dt4 = fit(dt.unsqueeze_dim::<4>(3), full);
    let decay = (dt4.clone() * fit(a.unsqueeze::<4>(), full)).exp();
    let input = dt4 * fit(x.unsqueeze_dim::<4>(3), full) * fit(b.unsqueeze_dim::<4>(2), full);
    (decay, input)
}

/// Shifts dim 2 of `[batch, chunks, steps, di, n]` by `offset`, filling with `fill`.
fn shift<B: Backend>(x: Tensor<B, 5>, offset: usize, fill: f32) -> Tensor<B, 5> {
    let [b, n, c, di, s] = x.dims();
    let pad = Tensor::full([b, n, offset, di, s], fill, &x.device());
    Tensor::cat(
        vec![pad, x.slice([0..b, 0..n, 0..c - offset, 0..di, 0..s])],
        2,
    )
}

/// The chunked parallel selective scan, without the `D x` skip.
///
/// # Shapes
/// - x, dt: `[batch, seq, d_inner]`; a: `[d_inner, d_state]`; b, c: `[batch, seq, d_state]`
///   → `[batch, seq, d_inner]`
pub fn chunked_scan<B: Backend>(
    x: Tensor<B, 3>,
    dt: Tensor<B, 3>,
    a: Tensor<B, 2>,
    b: Tensor<B, 3>,
    c: Tensor<B, 3>,
    chunk: usize,
) -> Tensor<B, 3> {
    let [batch, seq, di] = x.dims();
    let n = a.dims()[1];
    let device = x.device();
    let (decay, input) = discretize(x, dt, a, b);
    let chunk = chunk.min(seq).max(1);
    let nc = seq.div_ceil(chunk);
    let padded = nc * chunk;
    let pad = |t: Tensor<B, 4>, fill: f32| {
        if padded == seq {
            t
        } else {
            let p = Tensor::full([batch, padded - seq, di, n], fill, &device);
            Tensor::cat(vec![t, p], 1)
        }
    };
    // Padding steps are identities (decay 1, input 0) at the end: they never
    // reach earlier outputs.
    let mut da = pad(decay, 1.0).reshape([batch, nc, chunk, di, n]);
    let mut db = pad(input, 0.0).reshape([batch, nc, chunk, di, n]);
    let mut offset = 1;
    while offset < chunk {
        let new_b = da.clone() * shift(db.clone(), offset, 0.0) + db;
        da = da.clone() * shift(da, offset, 1.0);
        db = new_b;
        offset *= 2;
    }
    // da[t] = Π decays since chunk start; db[t] = state from a zero start.
    let mut carry = Tensor::<B, 4>::zeros([batch, 1, di, n], &device);
    let mut entering = Vec::with_capacity(nc);
    for i in 0..nc {
        entering.push(carry.clone());
        let last = |t: &Tensor<B, 5>| {
            t.clone()
                .slice([0..batch, i..i + 1, chunk - 1..chunk, 0..di, 0..n])
                .reshape([batch, 1, di, n])
        };
        carry = last(&da) * carry + last(&db);
    }
    let entering: Tensor<B, 5> = Tensor::stack::<5>(entering, 1); // [batch, nc, 1, di, n]
    let h = da * fit(entering, [batch, nc, chunk, di, n]) + db; // [batch, nc, chunk, di, n]
    let h = h
        .reshape([batch, padded, di, n])
        .slice([0..batch, 0..seq, 0..di, 0..n]);
    (h * fit(c.unsqueeze_dim::<4>(2), [batch, seq, di, n]))
        .sum_dim(3)
        .reshape([batch, seq, di])
}

/// The token-by-token recurrence the chunked scan must equal.
///
/// # Shapes
/// - as [`chunked_scan`]
pub fn recurrent<B: Backend>(
    x: Tensor<B, 3>,
    dt: Tensor<B, 3>,
    a: Tensor<B, 2>,
    b: Tensor<B, 3>,
    c: Tensor<B, 3>,
) -> Tensor<B, 3> {
    let [batch, seq, di] = x.dims();
    let n = a.dims()[1];
    let (decay, input) = discretize(x, dt, a, b);
    let mut h = Tensor::<B, 4>::zeros([batch, 1, di, n], &decay.device());
    let mut out = Vec::with_capacity(seq);
    for t in 0..seq {
        let at = |x: &Tensor<B, 4>| x.clone().slice([0..batch, t..t + 1, 0..di, 0..n]);
        h = at(&decay) * h + at(&input);
        let ct = c
            .clone()
            .slice([0..batch, t..t + 1, 0..n])
            .unsqueeze_dim::<4>(2);
        out.push((h.clone() * ct).sum_dim(3).reshape([batch, 1, di]));
    }
    Tensor::cat(out, 1)
}
