//! One architecture as a family of sizes: the rule the `scale` stage uses to
//! turn a genome into models of a given parameter count.
//!
//! **The rule.** A member is the genome at width `d` with its layer list
//! repeated `r` times:
//!
//! - the layer pattern, and so the ratio of mixer types, is kept exactly
//!   (`[a, b, c, d]` at `r = 2` is `[a, b, c, d, a, b, c, d]`);
//! - every head dimension is kept, so head counts scale with `d`
//!   (attention, its key/value heads in proportion down to a divisor of
//!   the query heads, linear attention, GLA, MH Hyena, Gated DeltaNet;
//!   Mamba-2's `head_dim` stays, its heads follow `d_inner`): with the per-head state
//!   fixed, **every mixer's state grows linearly with width** (attention's KV
//!   cache `2d` per token, Mamba `d_inner·d_state`, Hyena `d·order`, MH Hyena
//!   `heads·head_dim²·order`, GLA `heads·dk·dv`), so state and width scale
//!   together for every mixer type;
//! - sizes proportional to width scale with it (an explicit SwiGLU inner
//!   width, rounded up to a multiple of 16; expert widths; an explicit
//!   Mamba `dt_rank`); the rest is kept (expansion factors, filter orders,
//!   short-conv lengths, windows, `d_state`, expert counts, `top_k`,
//!   projection groups, the GLA gate rank, rotary dims);
//! - widths are multiples of the genome's unit (the least common multiple of
//!   16 and its head dimensions), and depth follows width: the members are
//!   those whose width per pattern repeat, `d / r`, lies between a quarter
//!   and twice the genome's own width (a genome at width 128 spans widths
//!   32 to 256 at `r = 1` and `r ∈ {2..8}` at width 512), so models neither
//!   become a few very wide layers nor many narrow ones.
//!
//! Parameters (`N`, non-embedding, as in the scaling-law literature) and
//! forward FLOPs per token come from the genome's accounting
//! ([`ArchSpec::params`], [`ArchSpec::flops_per_token`]).

use serde::{Deserialize, Serialize};

use crate::genome::{ArchSpec, Context, GenomeError, Layer};

/// One size of a family.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// Width.
    pub width: usize,
    /// Pattern repeats.
    pub repeats: usize,
    /// The model.
    pub spec: ArchSpec,
    /// Non-embedding parameters.
    pub params: u64,
    /// All parameters, embedding and head included.
    pub total_params: u64,
    /// Forward FLOPs per token, head included.
    pub flops_per_token: u64,
    /// Recurrent state, fixed part (attention's per-token growth at the
    /// context length added).
    pub state: u64,
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn lcm(a: usize, b: usize) -> usize {
    a / gcd(a, b) * b
}

/// The head dimension of a headed layer at width `d`: the step in width
/// that keeps it whole (for Mamba-2, whose heads are `head_dim` channels of
/// `expand · d`, the step in `d` that keeps them whole).
fn head_dim(layer: &Layer, d: usize) -> Option<usize> {
    match layer {
        Layer::Attention(a) => Some(d / a.n_heads),
        Layer::Mamba2(m) => Some(m.head_dim / gcd(m.head_dim, m.expand)),
        Layer::GatedDeltaNet(g) => Some(d / g.n_heads),
        Layer::LinearAttention(a) => Some(d / a.n_heads),
        Layer::GatedLinearAttention(a) => Some(d / a.n_heads),
        Layer::MhHyena(h) => Some(d / h.n_heads),
        _ => None,
    }
}

/// The genome's width unit: widths of its family are multiples of it.
pub fn unit(spec: &ArchSpec) -> usize {
    spec.layers
        .iter()
        .filter_map(|l| head_dim(l, spec.d_model))
        .fold(16, lcm)
}

/// `v · num / den`, rounded to nearest, at least 1.
fn scale(v: usize, num: usize, den: usize) -> usize {
    ((v * num + den / 2) / den).max(1)
}

/// The genome at width `d` with its layers repeated `repeats` times.
///
/// # Errors
/// A width at which a layer cannot be built (not a multiple of [`unit`], or
/// a projection-group count that does not divide it).
pub fn scaled(spec: &ArchSpec, d: usize, repeats: usize) -> Result<ArchSpec, GenomeError> {
    let d0 = spec.d_model;
    let heads = |h: usize| h * d / d0;
    let one = |layer: &Layer| -> Layer {
        let mut l = layer.clone();
        match &mut l {
            Layer::Attention(a) => {
                a.n_heads = heads(a.n_heads);
                // Key/value heads in proportion, down to a divisor of the
                // query heads (which need not scale as evenly).
                let n = a.n_heads;
                a.kv_heads = a.kv_heads.map(|kv| {
                    let target = scale(kv, d, d0).clamp(1, n.max(1));
                    (1..=target).rev().find(|k| n % k == 0).unwrap_or(1)
                });
            }
            Layer::LinearAttention(a) => a.n_heads = heads(a.n_heads),
            Layer::GatedLinearAttention(a) => a.n_heads = heads(a.n_heads),
            Layer::MhHyena(h) => h.n_heads = heads(h.n_heads),
            Layer::GatedDeltaNet(g) => g.n_heads = heads(g.n_heads),
            Layer::Hyena(_) | Layer::Mlp(_) | Layer::Mamba2(_) | Layer::GatedShortConv(_) => {}
            Layer::HyenaExperts(h) => h.expert_dim = scale(h.expert_dim, d, d0),
            Layer::Mamba(m) => m.dt_rank = m.dt_rank.map(|r| scale(r, d, d0)),
            Layer::SwiGlu(s) => s.inner = s.inner.map(|i| scale(i, d, d0).div_ceil(16) * 16),
            Layer::MoeMlp(m) => m.expert_dim = scale(m.expert_dim, d, d0),
        }
        l
    };
    let layers: Vec<Layer> = (0..repeats.max(1))
        .flat_map(|_| spec.layers.iter().map(one))
        .collect();
    // Heads must divide exactly: the width must keep every head dimension.
    for l in &spec.layers {
        if let Some(hd) = head_dim(l, d0)
            && !d.is_multiple_of(hd)
        {
            return Err(GenomeError::InvalidParam {
                primitive: l.primitive(),
                param: "d_model".into(),
                value: d.to_string(),
                expected: format!("a multiple of the head dimension {hd}"),
            });
        }
    }
    let out = ArchSpec {
        d_model: d,
        layers,
        ..spec.clone()
    };
    out.validate_layers()?;
    Ok(out)
}

/// Every member of the family with width at most `max_width` and at most
/// `max_repeats` repeats, sorted by parameters (then width).
pub fn family(spec: &ArchSpec, ctx: Context, max_width: usize, max_repeats: usize) -> Vec<Member> {
    let u = unit(spec);
    let d0 = spec.d_model as f64;
    let mut out = Vec::new();
    for d in (u..=max_width).step_by(u) {
        for r in 1..=max_repeats {
            let per_repeat = d as f64 / r as f64;
            if per_repeat < d0 / 4.0 || per_repeat > d0 * 2.0 {
                continue;
            }
            let Ok(s) = scaled(spec, d, r) else { continue };
            let p = s.params(ctx);
            let st = s.state();
            out.push(Member {
                width: d,
                repeats: r,
                params: p.non_embedding(),
                total_params: p.total(),
                flops_per_token: s.flops_per_token(ctx),
                state: st.at(ctx.seq_len as u64),
                spec: s,
            });
        }
    }
    out.sort_by_key(|m| (m.params, m.width));
    out
}

/// The member nearest `target` non-embedding parameters in log space,
/// skipping those in `taken`.
pub fn nearest<'a>(
    members: &'a [Member],
    target: f64,
    taken: &[usize],
) -> Option<(usize, &'a Member)> {
    members
        .iter()
        .enumerate()
        .filter(|(i, _)| !taken.contains(i))
        .min_by(|(_, a), (_, b)| {
            let da = (a.params as f64 / target).ln().abs();
            let db = (b.params as f64 / target).ln().abs();
            da.total_cmp(&db)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::genome::{ParamValue, Primitive};

    const CTX: Context = Context {
        vocab: 256,
        seq_len: 128,
    };

    fn spec(layers: &str) -> ArchSpec {
        ArchSpec::from_layers_str(layers).unwrap()
    }

    #[test]
    fn the_pattern_and_head_dims_are_kept() {
        let s = spec("mh-hyena swiglu mh-attention swiglu");
        assert_eq!(unit(&s), 16);
        let big = scaled(&s, 256, 2).unwrap();
        let names: Vec<Primitive> = big.layers.iter().map(Layer::primitive).collect();
        let base: Vec<Primitive> = s.layers.iter().map(Layer::primitive).collect();
        assert_eq!(names, [base.clone(), base].concat());
        for (a, b) in big.layers.iter().zip(s.layers.iter().cycle()) {
            assert_eq!(head_dim(a, 256), head_dim(b, 128));
        }
        // The same genome at its own size is itself.
        assert_eq!(scaled(&s, 128, 1).unwrap(), s);
        // A width that breaks a head dimension is refused.
        let e = scaled(&spec("attention swiglu"), 100, 1).unwrap_err();
        assert!(e.to_string().contains("head dimension"), "{e}");
    }

    #[test]
    fn state_grows_linearly_with_width_for_every_mixer() {
        for layers in [
            "mh-attention swiglu",
            "hyena swiglu",
            "mh-hyena swiglu",
            "mamba",
            "gated-linear-attention swiglu",
            "linear-attention swiglu",
            "sliding-attention swiglu",
            "mamba2",
            "gated-short-conv swiglu",
            "gated-deltanet swiglu",
        ] {
            let s = spec(layers);
            let a = scaled(&s, 128, 1).unwrap().state();
            let b = scaled(&s, 256, 1).unwrap().state();
            assert_eq!(b.fixed, 2 * a.fixed, "{layers}");
            assert_eq!(b.per_token, 2 * a.per_token, "{layers}");
        }
    }

    #[test]
    fn members_respect_the_aspect_rule_and_the_accounting() {
        let s = spec("hyena swiglu mh-attention swiglu");
        let f = family(&s, CTX, 512, 8);
        assert!(f.len() > 10);
        for w in f.windows(2) {
            assert!(w[0].params <= w[1].params);
        }
        for m in &f {
            let ratio = m.width as f64 / m.repeats as f64 / 128.0;
            assert!((0.25..=2.0).contains(&ratio), "{} × {}", m.width, m.repeats);
            assert_eq!(m.spec.layers.len(), 4 * m.repeats);
            assert_eq!(m.params, m.spec.params(CTX).non_embedding());
        }
        // Nearest in log space, distinct when asked.
        let (i, m) = nearest(&f, 1e6, &[]).unwrap();
        let (j, n) = nearest(&f, 1e6, &[i]).unwrap();
        assert_ne!(i, j);
        assert!((m.params as f64 / 1e6).ln().abs() <= (n.params as f64 / 1e6).ln().abs());
        for other in &f {
            assert!(
                (m.params as f64 / 1e6).ln().abs()
                    <= (other.params as f64 / 1e6).ln().abs() + 1e-12
            );
        }
    }

    /// Key/value heads scale with the query heads, down to a divisor of
    /// them; Mamba-2 keeps its head dim, so its width step is the head dim
    /// over `expand`.
    #[test]
    fn grouped_attention_and_mamba2_scale() {
        let mut s = spec("mh-attention swiglu mamba2");
        s.layers[0]
            .set_param("kv_heads", ParamValue::Int(4))
            .unwrap();
        let kv = |spec: &ArchSpec| match &spec.layers[0] {
            Layer::Attention(a) => (a.n_heads, a.kv_heads),
            _ => unreachable!("attention first"),
        };
        assert_eq!(kv(&scaled(&s, 256, 1).unwrap()), (32, Some(8)));
        // 18 heads at 144: 4.5 key/value heads in proportion, 3 divides 18.
        let odd = scaled(&s, 144, 1).unwrap();
        assert_eq!(kv(&odd), (18, Some(3)));
        odd.validate_layers().unwrap();
        assert_eq!(unit(&s), 16);
        let mut wide_heads = s.clone();
        wide_heads.layers[2]
            .set_param("head_dim", ParamValue::Int(64))
            .unwrap();
        assert_eq!(unit(&wide_heads), 32);
        for m in family(&s, CTX, 512, 4) {
            m.spec.validate_layers().unwrap();
        }
    }

    #[test]
    fn width_proportional_sizes_scale() {
        let s = spec("hyena moe-mlp");
        let Layer::MoeMlp(m) = &s.layers[1] else {
            panic!("moe-mlp")
        };
        let big = scaled(&s, 256, 1).unwrap();
        let Layer::MoeMlp(b) = &big.layers[1] else {
            panic!("moe-mlp")
        };
        assert_eq!(b.expert_dim, 2 * m.expert_dim);
        assert_eq!(b.n_experts, m.n_experts);
    }
}
