//! One layer of a genome: a typed variant per primitive family with its
//! hyper-parameters (mad-protocol §3). Defaults reproduce the reference
//! configurations at width 128.
//!
//! Several registry names share one family: `attention`, `mh-attention`,
//! `sliding-attention` and `mh-sliding-attention` are all [`Attention`]; the
//! name a layer carries is derived from its parameters ([`Layer::primitive`]),
//! so two specs that build the same model always carry the same name.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{GenomeError, Primitive, Role};

/// Causal softmax attention with rotary embeddings; sliding when `window` is set.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Attention {
    /// Number of heads; `head_dim = d_model / n_heads`.
    pub n_heads: usize,
    /// Rotary dims per head (even, ≤ head_dim); `None` rotates the whole head.
    pub rotary_dim: Option<usize>,
    /// Local window: each token sees itself and the `window` tokens before it
    /// (flash-attn's left window); `None` is global.
    pub window: Option<usize>,
    /// Key/value heads (grouped-query attention): each serves
    /// `n_heads / kv_heads` query heads, and the KV cache shrinks by that
    /// factor; `None` is `n_heads` (every query head its own).
    pub kv_heads: Option<usize>,
}

/// Causal linear attention, feature map φ(x) = L1(x) ⊙ L2(x), normalised by q·cumsum(k).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LinearAttention {
    /// Number of heads.
    pub n_heads: usize,
}

/// Gated linear attention (GLA) with a low-rank data-dependent decay gate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GatedLinearAttention {
    /// Number of heads.
    pub n_heads: usize,
    /// Rank of the gate projection `Linear(d, r) → Linear(r, d)`.
    pub gate_rank: usize,
}

/// Hyena of order 2 with an implicit long filter.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Hyena {
    /// Inner width as a multiple of `d_model` (the reference uses 4).
    pub expansion: usize,
    /// Tied projection groups: the input projection emits `3·inner/proj_groups` channels, tiled.
    pub proj_groups: usize,
    /// Width of the implicit filter MLP; also the recurrent state per channel.
    pub filter_order: usize,
    /// Kernel size of the depthwise causal short convolution.
    pub short_conv: usize,
}

/// Multi-head (state-expanded) Hyena: per head a long-convolved outer product `k vᵀ`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MhHyena {
    /// Number of heads; `head_dim = d_model / n_heads`; one implicit filter per head.
    pub n_heads: usize,
    /// Tied projection groups, as in [`Hyena`].
    pub proj_groups: usize,
    /// Width of the implicit filter MLP; also the recurrent state per state entry.
    pub filter_order: usize,
    /// Kernel size of the depthwise causal short convolution.
    pub short_conv: usize,
}

/// Hyena whose inner channels are split among routed experts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HyenaExperts {
    /// Number of experts.
    pub n_experts: usize,
    /// Channels per expert; the inner width is `n_experts · expert_dim`.
    pub expert_dim: usize,
    /// Experts kept by the router per token.
    pub top_k: usize,
    /// Width of the implicit filter MLP; also the recurrent state per channel.
    pub filter_order: usize,
    /// Kernel size of the depthwise causal short convolution.
    pub short_conv: usize,
}

/// Mamba-1 selective state-space layer (a fused block).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mamba {
    /// `d_inner = expand · d_model`.
    pub expand: usize,
    /// SSM state per inner channel.
    pub d_state: usize,
    /// Depthwise causal conv kernel size.
    pub d_conv: usize,
    /// Rank of the Δ projection; `None` is `ceil(d_model / 16)`.
    pub dt_rank: Option<usize>,
}

/// Mamba-2 (Dao & Gu 2024, a fused block): multi-head SSD, a scalar decay
/// per head (`A` times the identity), `B` and `C` shared by the heads.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mamba2 {
    /// `d_inner = expand · d_model`.
    pub expand: usize,
    /// SSM state per channel (`N`).
    pub d_state: usize,
    /// Depthwise causal conv kernel size over `x`, `B` and `C`.
    pub d_conv: usize,
    /// Channels per head (`P`); `d_inner / head_dim` heads.
    pub head_dim: usize,
}

/// Gated short convolution (LFM2's conv block): `in_proj → (b, c, x)`,
/// `y = c ⊙ conv(b ⊙ x)`, `out_proj`; bias-free, no state beyond the
/// convolution's buffer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GatedShortConv {
    /// Kernel size of the depthwise causal convolution.
    pub short_conv: usize,
}

/// Gated DeltaNet (Yang et al. 2025, Qwen3-Next's linear layer): the gated
/// delta rule per head, `S_t = α_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GatedDeltaNet {
    /// Number of heads; key dim `d_model / n_heads`.
    pub n_heads: usize,
    /// Value dim as a multiple of the key dim.
    pub expand_v: usize,
    /// Kernel size of the causal depthwise conv over q, k, v.
    pub short_conv: usize,
}

/// SwiGLU channel mixer `W3 (SiLU(W1 x) ⊙ W2 x)`, bias-free.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SwiGlu {
    /// Inner width; `None` is `round_up(8·d/3, 16)` (352 at d = 128).
    pub inner: Option<usize>,
}

/// Two-layer MLP with tanh-GELU, bias-free.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mlp {
    /// Inner width as a multiple of `d_model`.
    pub expansion: usize,
}

/// How a mixture-of-experts router turns scores into weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Routing {
    /// The reference's quirk: scores below the 2nd largest are set to 0 (not −∞),
    /// then a softmax over all experts, so unselected experts keep weight e⁰/Z.
    #[serde(rename = "soft-top2")]
    SoftTop2,
    /// True sparse top-k: softmax over the k largest scores, all others exactly 0.
    #[serde(rename = "topk")]
    TopK,
}

impl Routing {
    /// Every routing, in declaration order.
    pub const ALL: &'static [Routing] = &[Routing::SoftTop2, Routing::TopK];

    /// The name used in genome and space files.
    pub fn name(self) -> &'static str {
        match self {
            Routing::SoftTop2 => "soft-top2",
            Routing::TopK => "topk",
        }
    }
}

impl FromStr for Routing {
    type Err = String;

    fn from_str(s: &str) -> Result<Routing, String> {
        Routing::ALL
            .iter()
            .copied()
            .find(|r| r.name() == s)
            .ok_or_else(|| format!("unknown routing `{s}`; expected `soft-top2` or `topk`"))
    }
}

impl fmt::Display for Routing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Dense-computed mixture of experts (mad-protocol §3.1 `moe-mlp`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MoeMlp {
    /// Number of experts.
    pub n_experts: usize,
    /// Inner width per expert; the shared inner width is `n_experts · expert_dim`.
    pub expert_dim: usize,
    /// How router scores become expert weights.
    pub routing: Routing,
    /// Experts kept per token (`soft-top2` requires 2).
    pub top_k: usize,
}

/// One layer of an [`ArchSpec`](super::ArchSpec). Maps `[batch, seq, d_model]` to the same shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Layer {
    /// `attention`, `mh-attention`, `sliding-attention`, `mh-sliding-attention`.
    Attention(Attention),
    /// `linear-attention`, `mh-linear-attention`.
    LinearAttention(LinearAttention),
    /// `gated-linear-attention`, `mh-gated-linear-attention`.
    GatedLinearAttention(GatedLinearAttention),
    /// `hyena`.
    Hyena(Hyena),
    /// `mh-hyena`.
    MhHyena(MhHyena),
    /// `hyena-experts`.
    HyenaExperts(HyenaExperts),
    /// `mamba`.
    Mamba(Mamba),
    /// `mamba2`.
    Mamba2(Mamba2),
    /// `gated-short-conv`.
    GatedShortConv(GatedShortConv),
    /// `gated-deltanet`.
    GatedDeltaNet(GatedDeltaNet),
    /// `swiglu`.
    SwiGlu(SwiGlu),
    /// `mlp`.
    Mlp(Mlp),
    /// `moe-mlp`.
    MoeMlp(MoeMlp),
}

/// A hyper-parameter value, as read from or written to genome and space files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(untagged)]
pub enum ParamValue {
    /// A positive integer (heads, widths, sizes).
    Int(usize),
    /// A MoE routing.
    Routing(Routing),
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Int(v) => write!(f, "{v}"),
            ParamValue::Routing(r) => write!(f, "\"{r}\""),
        }
    }
}

/// `round_up(int(8·d/3), 16)`: the reference SwiGLU inner width (352 at d = 128).
pub fn swiglu_default_inner(d_model: usize) -> usize {
    (8 * d_model / 3).div_ceil(16) * 16
}

/// `ceil(d_model / 16)`: the reference Mamba Δ rank (8 at d = 128).
pub fn mamba_default_dt_rank(d_model: usize) -> usize {
    d_model.div_ceil(16)
}

impl Layer {
    /// The layer the reference builds for this registry name, at its default settings.
    pub fn default_for(p: Primitive) -> Layer {
        use Primitive as P;
        match p {
            P::Attention | P::MhAttention | P::SlidingAttention | P::MhSlidingAttention => {
                let multi = matches!(p, P::MhAttention | P::MhSlidingAttention);
                let sliding = matches!(p, P::SlidingAttention | P::MhSlidingAttention);
                Layer::Attention(Attention {
                    n_heads: if multi { 16 } else { 1 },
                    rotary_dim: None,
                    window: sliding.then_some(32),
                    kv_heads: None,
                })
            }
            P::LinearAttention | P::MhLinearAttention => Layer::LinearAttention(LinearAttention {
                n_heads: if p == P::MhLinearAttention { 16 } else { 1 },
            }),
            P::GatedLinearAttention | P::MhGatedLinearAttention => {
                Layer::GatedLinearAttention(GatedLinearAttention {
                    n_heads: if p == P::MhGatedLinearAttention { 8 } else { 1 },
                    gate_rank: 16,
                })
            }
            P::Hyena => Layer::Hyena(Hyena {
                expansion: 4,
                proj_groups: 4,
                filter_order: 4,
                short_conv: 3,
            }),
            P::MhHyena => Layer::MhHyena(MhHyena {
                n_heads: 16,
                proj_groups: 4,
                filter_order: 2,
                short_conv: 3,
            }),
            P::HyenaExperts => Layer::HyenaExperts(HyenaExperts {
                n_experts: 8,
                expert_dim: 16,
                top_k: 2,
                filter_order: 16,
                short_conv: 3,
            }),
            P::Mamba => Layer::Mamba(Mamba {
                expand: 2,
                d_state: 4,
                d_conv: 4,
                dt_rank: None,
            }),
            P::Mamba2 => Layer::Mamba2(Mamba2 {
                expand: 2,
                d_state: 16,
                d_conv: 4,
                head_dim: 32,
            }),
            P::GatedShortConv => Layer::GatedShortConv(GatedShortConv { short_conv: 3 }),
            P::GatedDeltaNet => Layer::GatedDeltaNet(GatedDeltaNet {
                n_heads: 4,
                expand_v: 2,
                short_conv: 4,
            }),
            P::SwiGlu => Layer::SwiGlu(SwiGlu { inner: None }),
            P::Mlp => Layer::Mlp(Mlp { expansion: 4 }),
            P::MoeMlp => Layer::MoeMlp(MoeMlp {
                n_experts: 8,
                expert_dim: 16,
                routing: Routing::SoftTop2,
                top_k: 2,
            }),
        }
    }

    /// The registry name this layer builds as, derived from its parameters
    /// (an `attention` with 16 heads is an `mh-attention`).
    pub fn primitive(&self) -> Primitive {
        use Primitive as P;
        match self {
            Layer::Attention(a) => match (a.n_heads > 1, a.window.is_some()) {
                (false, false) => P::Attention,
                (true, false) => P::MhAttention,
                (false, true) => P::SlidingAttention,
                (true, true) => P::MhSlidingAttention,
            },
            Layer::LinearAttention(a) if a.n_heads > 1 => P::MhLinearAttention,
            Layer::LinearAttention(_) => P::LinearAttention,
            Layer::GatedLinearAttention(a) if a.n_heads > 1 => P::MhGatedLinearAttention,
            Layer::GatedLinearAttention(_) => P::GatedLinearAttention,
            Layer::Hyena(_) => P::Hyena,
            Layer::MhHyena(_) => P::MhHyena,
            Layer::HyenaExperts(_) => P::HyenaExperts,
            Layer::Mamba(_) => P::Mamba,
            Layer::Mamba2(_) => P::Mamba2,
            Layer::GatedShortConv(_) => P::GatedShortConv,
            Layer::GatedDeltaNet(_) => P::GatedDeltaNet,
            Layer::SwiGlu(_) => P::SwiGlu,
            Layer::Mlp(_) => P::Mlp,
            Layer::MoeMlp(_) => P::MoeMlp,
        }
    }

    /// Sequence mixer, channel mixer, or fused block.
    pub fn role(&self) -> Role {
        self.primitive().role()
    }

    /// The value of hyper-parameter `name` at width `d_model`, with derived
    /// defaults resolved; `None` when this layer has no such parameter.
    pub fn param(&self, name: &str, d_model: usize) -> Option<ParamValue> {
        use ParamValue::{Int, Routing as R};
        let v = match (self, name) {
            (Layer::Attention(a), "n_heads") => Int(a.n_heads),
            (Layer::Attention(a), "rotary_dim") => {
                Int(a.rotary_dim.unwrap_or(d_model / a.n_heads.max(1)))
            }
            (Layer::Attention(a), "window") => Int(a.window?),
            (Layer::Attention(a), "kv_heads") => Int(a.kv_heads.unwrap_or(a.n_heads)),
            (Layer::LinearAttention(a), "n_heads") => Int(a.n_heads),
            (Layer::GatedLinearAttention(a), "n_heads") => Int(a.n_heads),
            (Layer::GatedLinearAttention(a), "gate_rank") => Int(a.gate_rank),
            (Layer::Hyena(h), "expansion") => Int(h.expansion),
            (Layer::Hyena(h), "proj_groups") => Int(h.proj_groups),
            (Layer::Hyena(h), "filter_order") => Int(h.filter_order),
            (Layer::Hyena(h), "short_conv") => Int(h.short_conv),
            (Layer::MhHyena(h), "n_heads") => Int(h.n_heads),
            (Layer::MhHyena(h), "proj_groups") => Int(h.proj_groups),
            (Layer::MhHyena(h), "filter_order") => Int(h.filter_order),
            (Layer::MhHyena(h), "short_conv") => Int(h.short_conv),
            (Layer::HyenaExperts(h), "n_experts") => Int(h.n_experts),
            (Layer::HyenaExperts(h), "expert_dim") => Int(h.expert_dim),
            (Layer::HyenaExperts(h), "top_k") => Int(h.top_k),
            (Layer::HyenaExperts(h), "filter_order") => Int(h.filter_order),
            (Layer::HyenaExperts(h), "short_conv") => Int(h.short_conv),
            (Layer::Mamba(m), "expand") => Int(m.expand),
            (Layer::Mamba(m), "d_state") => Int(m.d_state),
            (Layer::Mamba(m), "d_conv") => Int(m.d_conv),
            (Layer::Mamba(m), "dt_rank") => {
                Int(m.dt_rank.unwrap_or(mamba_default_dt_rank(d_model)))
            }
            (Layer::Mamba2(m), "expand") => Int(m.expand),
            (Layer::Mamba2(m), "d_state") => Int(m.d_state),
            (Layer::Mamba2(m), "d_conv") => Int(m.d_conv),
            (Layer::Mamba2(m), "head_dim") => Int(m.head_dim),
            (Layer::GatedShortConv(g), "short_conv") => Int(g.short_conv),
            (Layer::GatedDeltaNet(g), "n_heads") => Int(g.n_heads),
            (Layer::GatedDeltaNet(g), "expand_v") => Int(g.expand_v),
            (Layer::GatedDeltaNet(g), "short_conv") => Int(g.short_conv),
            (Layer::SwiGlu(s), "inner") => Int(s.inner.unwrap_or(swiglu_default_inner(d_model))),
            (Layer::Mlp(m), "expansion") => Int(m.expansion),
            (Layer::MoeMlp(m), "n_experts") => Int(m.n_experts),
            (Layer::MoeMlp(m), "expert_dim") => Int(m.expert_dim),
            (Layer::MoeMlp(m), "routing") => R(m.routing),
            (Layer::MoeMlp(m), "top_k") => Int(m.top_k),
            _ => return None,
        };
        Some(v)
    }

    /// Whether parameter `name` is at the neutral value of a parameter
    /// added after genome ids were fixed (`kv_heads = n_heads`: plain
    /// multi-head attention). The canonical text leaves such a value out,
    /// so the ids of genomes stored before the parameter existed stay.
    pub fn neutral(&self, name: &str, d_model: usize) -> bool {
        match (self, name) {
            (Layer::Attention(a), "kv_heads") => {
                self.param(name, d_model) == Some(ParamValue::Int(a.n_heads))
            }
            _ => false,
        }
    }

    /// For a parameter whose unset value is derived from the others and the
    /// width (`rotary_dim` the head dim, `kv_heads` the heads, Mamba's
    /// `dt_rank` and SwiGLU's `inner` their width's defaults): whether it
    /// has that derived value. `None` for every other parameter, whose
    /// unset value is the kind's default. A derived value depends on the
    /// layer, not on the kind's default: an `mh-attention` of 8 heads
    /// rotates 16 dims at width 128 where the kind's 16 heads rotate 8, and
    /// neither was set; 16 key/value heads are plain attention at 16 heads
    /// and grouped-query attention at 32.
    pub fn implicit(&self, name: &str, d_model: usize) -> Option<bool> {
        let derived = match (self, name) {
            (Layer::Attention(a), "rotary_dim") => d_model / a.n_heads.max(1),
            (Layer::Attention(a), "kv_heads") => a.n_heads,
            (Layer::Mamba(_), "dt_rank") => mamba_default_dt_rank(d_model),
            (Layer::SwiGlu(_), "inner") => swiglu_default_inner(d_model),
            _ => return None,
        };
        Some(self.param(name, d_model) == Some(ParamValue::Int(derived)))
    }

    /// Whether parameter `name` is at its unset value: the derived one
    /// ([`Layer::implicit`]) or else the kind's default.
    pub fn at_default(&self, name: &str, d_model: usize) -> bool {
        self.implicit(name, d_model).unwrap_or_else(|| {
            self.param(name, d_model) == Layer::default_for(self.primitive()).param(name, d_model)
        })
    }

    /// Sets hyper-parameter `name`. Changing `n_heads` or `window` may change
    /// the registry name ([`Layer::primitive`]); that is intended.
    ///
    /// # Errors
    /// [`GenomeError::ParamNotApplicable`] if this family has no such parameter,
    /// [`GenomeError::ParamType`] if the value has the wrong type.
    pub fn set_param(&mut self, name: &str, value: ParamValue) -> Result<(), GenomeError> {
        let primitive = self.primitive();
        let not_applicable = || GenomeError::ParamNotApplicable {
            primitive,
            param: name.to_string(),
            expected: primitive.params().join(", "),
        };
        let wrong_type = |expected: &'static str| GenomeError::ParamType {
            primitive,
            param: name.to_string(),
            value: value.to_string(),
            expected,
        };
        if let ParamValue::Routing(r) = value {
            return match (self, name) {
                (Layer::MoeMlp(m), "routing") => {
                    m.routing = r;
                    Ok(())
                }
                (_, "routing") => Err(not_applicable()),
                _ => Err(wrong_type("a positive integer")),
            };
        }
        let ParamValue::Int(v) = value else {
            unreachable!("ParamValue has two variants; Routing returned above")
        };
        let slot: &mut usize = match (&mut *self, name) {
            (Layer::Attention(a), "n_heads") => &mut a.n_heads,
            (Layer::Attention(a), "rotary_dim") => {
                a.rotary_dim = Some(v);
                return Ok(());
            }
            (Layer::Attention(a), "window") => {
                a.window = Some(v);
                return Ok(());
            }
            (Layer::Attention(a), "kv_heads") => {
                a.kv_heads = Some(v);
                return Ok(());
            }
            (Layer::LinearAttention(a), "n_heads") => &mut a.n_heads,
            (Layer::GatedLinearAttention(a), "n_heads") => &mut a.n_heads,
            (Layer::GatedLinearAttention(a), "gate_rank") => &mut a.gate_rank,
            (Layer::Hyena(h), "expansion") => &mut h.expansion,
            (Layer::Hyena(h), "proj_groups") => &mut h.proj_groups,
            (Layer::Hyena(h), "filter_order") => &mut h.filter_order,
            (Layer::Hyena(h), "short_conv") => &mut h.short_conv,
            (Layer::MhHyena(h), "n_heads") => &mut h.n_heads,
            (Layer::MhHyena(h), "proj_groups") => &mut h.proj_groups,
            (Layer::MhHyena(h), "filter_order") => &mut h.filter_order,
            (Layer::MhHyena(h), "short_conv") => &mut h.short_conv,
            (Layer::HyenaExperts(h), "n_experts") => &mut h.n_experts,
            (Layer::HyenaExperts(h), "expert_dim") => &mut h.expert_dim,
            (Layer::HyenaExperts(h), "top_k") => &mut h.top_k,
            (Layer::HyenaExperts(h), "filter_order") => &mut h.filter_order,
            (Layer::HyenaExperts(h), "short_conv") => &mut h.short_conv,
            (Layer::Mamba(m), "expand") => &mut m.expand,
            (Layer::Mamba(m), "d_state") => &mut m.d_state,
            (Layer::Mamba(m), "d_conv") => &mut m.d_conv,
            (Layer::Mamba(m), "dt_rank") => {
                m.dt_rank = Some(v);
                return Ok(());
            }
            (Layer::Mamba2(m), "expand") => &mut m.expand,
            (Layer::Mamba2(m), "d_state") => &mut m.d_state,
            (Layer::Mamba2(m), "d_conv") => &mut m.d_conv,
            (Layer::Mamba2(m), "head_dim") => &mut m.head_dim,
            (Layer::GatedShortConv(g), "short_conv") => &mut g.short_conv,
            (Layer::GatedDeltaNet(g), "n_heads") => &mut g.n_heads,
            (Layer::GatedDeltaNet(g), "expand_v") => &mut g.expand_v,
            (Layer::GatedDeltaNet(g), "short_conv") => &mut g.short_conv,
            (Layer::SwiGlu(s), "inner") => {
                s.inner = Some(v);
                return Ok(());
            }
            (Layer::Mlp(m), "expansion") => &mut m.expansion,
            (Layer::MoeMlp(_), "routing") => return Err(wrong_type("`soft-top2` or `topk`")),
            (Layer::MoeMlp(m), "n_experts") => &mut m.n_experts,
            (Layer::MoeMlp(m), "expert_dim") => &mut m.expert_dim,
            (Layer::MoeMlp(m), "top_k") => &mut m.top_k,
            _ => return Err(not_applicable()),
        };
        *slot = v;
        Ok(())
    }

    /// The same layer with derived defaults made implicit (`rotary_dim` equal
    /// to the head dim becomes `None`, and so on), so equal models compare equal.
    pub fn normalized(&self, d_model: usize) -> Layer {
        let mut out = self.clone();
        match &mut out {
            Layer::Attention(a) => {
                if a.rotary_dim == Some(d_model / a.n_heads.max(1)) {
                    a.rotary_dim = None;
                }
                if a.kv_heads == Some(a.n_heads) {
                    a.kv_heads = None;
                }
            }
            Layer::Mamba(m) if m.dt_rank == Some(mamba_default_dt_rank(d_model)) => {
                m.dt_rank = None;
            }
            Layer::SwiGlu(s) if s.inner == Some(swiglu_default_inner(d_model)) => {
                s.inner = None;
            }
            _ => {}
        }
        out
    }

    /// Checks that this layer can be built at width `d_model`.
    ///
    /// # Errors
    /// [`GenomeError::InvalidParam`] naming the parameter and what was expected.
    pub fn validate(&self, d_model: usize) -> Result<(), GenomeError> {
        let primitive = self.primitive();
        let bad = |param: &str, value: usize, expected: String| {
            Err(GenomeError::InvalidParam {
                primitive,
                param: param.to_string(),
                value: value.to_string(),
                expected,
            })
        };
        // Every integer parameter is at least 1.
        for name in primitive.params() {
            if let Some(ParamValue::Int(0)) = self.param(name, d_model) {
                return bad(name, 0, "a positive integer".into());
            }
        }
        let divides = |param: &str, v: usize, what: usize, what_name: &str| {
            if !what.is_multiple_of(v) {
                bad(param, v, format!("a divisor of {what_name} ({what})"))
            } else {
                Ok(())
            }
        };
        match self {
            Layer::Attention(a) => {
                divides("n_heads", a.n_heads, d_model, "d_model")?;
                let head_dim = d_model / a.n_heads;
                if let Some(r) = a.rotary_dim
                    && (r > head_dim || r % 2 != 0)
                {
                    return bad(
                        "rotary_dim",
                        r,
                        format!("an even number of dims at most the head dim ({head_dim})"),
                    );
                }
                if let Some(kv) = a.kv_heads {
                    divides("kv_heads", kv, a.n_heads, "n_heads")?;
                }
            }
            Layer::LinearAttention(a) => divides("n_heads", a.n_heads, d_model, "d_model")?,
            Layer::GatedLinearAttention(a) => divides("n_heads", a.n_heads, d_model, "d_model")?,
            Layer::Hyena(h) => divides(
                "proj_groups",
                h.proj_groups,
                h.expansion * d_model,
                "the inner width",
            )?,
            Layer::MhHyena(h) => {
                divides("n_heads", h.n_heads, d_model, "d_model")?;
                divides("proj_groups", h.proj_groups, d_model, "the inner width")?;
            }
            Layer::HyenaExperts(h) => {
                if h.top_k > h.n_experts {
                    return bad(
                        "top_k",
                        h.top_k,
                        format!("at most n_experts ({})", h.n_experts),
                    );
                }
            }
            Layer::Mamba2(m) => {
                divides("head_dim", m.head_dim, m.expand * d_model, "d_inner")?;
            }
            Layer::GatedDeltaNet(g) => divides("n_heads", g.n_heads, d_model, "d_model")?,
            Layer::Mamba(_) | Layer::GatedShortConv(_) | Layer::SwiGlu(_) | Layer::Mlp(_) => {}
            Layer::MoeMlp(m) => {
                if m.top_k > m.n_experts {
                    return bad(
                        "top_k",
                        m.top_k,
                        format!("at most n_experts ({})", m.n_experts),
                    );
                }
                if m.routing == Routing::SoftTop2 && m.top_k != 2 {
                    return bad(
                        "top_k",
                        m.top_k,
                        "2 with routing `soft-top2` (use routing = \"topk\" for another k)".into(),
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_follows_parameters() {
        let mut l = Layer::default_for(Primitive::Attention);
        assert_eq!(l.primitive(), Primitive::Attention);
        l.set_param("n_heads", ParamValue::Int(16)).unwrap();
        assert_eq!(l.primitive(), Primitive::MhAttention);
        l.set_param("window", ParamValue::Int(32)).unwrap();
        assert_eq!(l.primitive(), Primitive::MhSlidingAttention);
        for &p in Primitive::ALL {
            assert_eq!(Layer::default_for(p).primitive(), p, "{p}");
        }
    }

    #[test]
    fn every_listed_param_is_readable_and_writable() {
        for &p in Primitive::ALL {
            let mut l = Layer::default_for(p);
            for name in p.params() {
                let v = l.param(name, 128).unwrap_or_else(|| panic!("{p}.{name}"));
                l.set_param(name, v).unwrap();
                assert_eq!(l.param(name, 128), Some(v));
            }
            assert!(l.param("no_such_param", 128).is_none());
            assert!(matches!(
                l.set_param("no_such_param", ParamValue::Int(1)),
                Err(GenomeError::ParamNotApplicable { .. })
            ));
        }
    }

    #[test]
    fn defaults_are_valid_at_width_128() {
        for &p in Primitive::ALL {
            Layer::default_for(p).validate(128).unwrap();
        }
    }

    #[test]
    fn invalid_params_are_named() {
        let mut l = Layer::default_for(Primitive::MhAttention);
        l.set_param("n_heads", ParamValue::Int(12)).unwrap();
        let err = l.validate(128).unwrap_err().to_string();
        assert!(
            err.contains("n_heads") && err.contains("divisor of d_model"),
            "{err}"
        );
        let mut m = Layer::default_for(Primitive::MoeMlp);
        m.set_param("top_k", ParamValue::Int(3)).unwrap();
        assert!(
            m.validate(128)
                .unwrap_err()
                .to_string()
                .contains("soft-top2")
        );
    }
}
