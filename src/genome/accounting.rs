//! Parameter, recurrent-state and FLOP accounting by formula (mad-protocol §3,
//! §3.5, §4.2). The Burn modules in `layers/` are tested against these counts.
//!
//! Conventions:
//! - **Parameters** count every trainable scalar. Hyena-family filters own
//!   `3·seq_len` trainable positional features, so counts depend on the context.
//! - **State** is what a layer must carry between tokens when run as a
//!   recurrence: Mamba and Mamba-2 `d_inner·d_state`; GLA `heads·dk·dv`;
//!   linear attention `heads·(dk·dv + dk)`; Hyena `channels·filter_order`;
//!   MH Hyena `heads·head_dim²·filter_order`; sliding attention its window
//!   of K and V (`2·kv_heads·head_dim·window`); global attention grows by
//!   `2·kv_heads·head_dim` per token of context (reported separately as
//!   `per_token`); Gated DeltaNet `heads·dk·dv`. Short-conv buffers beside
//!   a larger state are not counted,
//!   as in the paper's iso-state table; the gated short convolution, whose
//!   buffer is all it carries, counts it (`(kernel − 1)·d`).
//! - **FLOPs** are `2 ×` the multiply-accumulates of matmuls, convolutions and
//!   scans in one forward pass, per token, at a given sequence length; norms and
//!   elementwise ops are left out; the long convolution is counted in direct
//!   (Toeplitz) form and causal attention over the average context `(T+1)/2`.

use serde::{Deserialize, Serialize};

use super::{ArchSpec, Backbone, Layer, Norm};

/// What a count depends on besides the genome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    /// Vocabulary size (embedding rows, head outputs).
    pub vocab: usize,
    /// Sequence length the model is built for.
    pub seq_len: usize,
}

impl Context {
    /// The MAD in-context recall baseline: vocab 16, length 128.
    pub const MAD_BASELINE: Context = Context {
        vocab: 16,
        seq_len: 128,
    };
}

/// Parameter counts of a model, by part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamCount {
    /// Σ over layers, norms excluded (the figures of mad-protocol §3).
    pub mixers: u64,
    /// The pre-layer norms and the final norm.
    pub norms: u64,
    /// The compression autoencoder's decoder MLP (0 for a language model).
    pub decoder: u64,
    /// Token embedding, `vocab · d`.
    pub embedding: u64,
    /// Output head, `d · vocab + vocab`.
    pub head: u64,
}

impl ParamCount {
    /// Everything but the embedding and the head (the paper's convention).
    pub fn non_embedding(&self) -> u64 {
        self.mixers + self.norms + self.decoder
    }

    /// Every trainable scalar.
    pub fn total(&self) -> u64 {
        self.non_embedding() + self.embedding + self.head
    }
}

/// Recurrent state of a layer or a model, in scalars per sequence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StateSize {
    /// State that does not grow with the context.
    pub fixed: u64,
    /// Growth per token of context (attention's KV cache).
    pub per_token: u64,
}

impl StateSize {
    /// The state after `context` tokens.
    pub fn at(&self, context: u64) -> u64 {
        self.fixed + self.per_token * context
    }
}

impl std::ops::Add for StateSize {
    type Output = StateSize;

    fn add(self, o: StateSize) -> StateSize {
        StateSize {
            fixed: self.fixed + o.fixed,
            per_token: self.per_token + o.per_token,
        }
    }
}

/// Parameters of the implicit Hyena filter: positional features (3·T),
/// `Linear(3,f)`, the shared sine frequencies (f), two `Linear(f,f)`, and the
/// bias-free `Linear(f, channels)`.
fn hyena_filter_params(f: u64, channels: u64, seq_len: u64) -> u64 {
    3 * seq_len + (3 * f + f) + f + 2 * (f * f + f) + f * channels
}

/// Per-token MACs of generating the filter, amortised over the sequence.
fn hyena_filter_macs(f: u64, channels: u64) -> u64 {
    3 * f + 2 * f * f + f * channels
}

/// Width of the keys (and of the values): `kv_heads · head_dim`, `d` for
/// plain multi-head attention.
fn kv_width(a: &super::Attention, d: u64) -> u64 {
    let heads = a.n_heads.max(1) as u64;
    a.kv_heads.map_or(heads, |k| k as u64) * (d / heads)
}

fn norm_params(norm: Norm, d: u64) -> u64 {
    match norm {
        Norm::Rms => d,
        Norm::Layer => 2 * d,
    }
}

impl Layer {
    /// Trainable parameters of this layer at width `d`, built for `seq_len`.
    pub fn params(&self, d: usize, seq_len: usize) -> u64 {
        let (d, t) = (d as u64, seq_len as u64);
        match self {
            Layer::Attention(a) => {
                let kv = kv_width(a, d);
                2 * d * d + 2 * d * kv + 2 * d + 2 * kv
            }
            Layer::LinearAttention(a) => {
                let hd = d / a.n_heads as u64;
                4 * d * d + 4 * (hd * hd + hd)
            }
            Layer::GatedLinearAttention(a) => {
                let r = a.gate_rank as u64;
                5 * d * d + 2 * d * r + d + d / a.n_heads as u64
            }
            Layer::Hyena(h) => {
                let inner = h.expansion as u64 * d;
                let proj = 3 * inner / h.proj_groups as u64;
                let f = h.filter_order as u64;
                (d * proj + proj)
                    + 3 * inner * (h.short_conv as u64 + 1)
                    + hyena_filter_params(f, inner, t)
                    + inner
                    + (inner * d + d)
            }
            Layer::MhHyena(h) => {
                let heads = h.n_heads as u64;
                let proj = 3 * d / h.proj_groups as u64;
                let f = h.filter_order as u64;
                (d * proj + proj)
                    + 3 * d * (h.short_conv as u64 + 1)
                    + hyena_filter_params(f, heads, t)
                    + heads
                    + (d * d + d)
            }
            Layer::HyenaExperts(h) => {
                let (n, e) = (h.n_experts as u64, h.expert_dim as u64);
                let inner = n * e;
                let f = h.filter_order as u64;
                (d * 3 * inner + 3 * inner)
                    + 3 * inner * (h.short_conv as u64 + 1)
                    + hyena_filter_params(f, inner, t)
                    + inner
                    + (d * n + n)
                    + (e * d + d)
            }
            Layer::Mamba(m) => {
                let di = m.expand as u64 * d;
                let n = m.d_state as u64;
                let r = m.dt_rank.map_or(d.div_ceil(16), |r| r as u64);
                d * 2 * di
                    + di * (m.d_conv as u64 + 1)
                    + di * (r + 2 * n)
                    + (r * di + di)
                    + di * n
                    + di
                    + di * d
            }
            Layer::Mamba2(m) => {
                let di = m.expand as u64 * d;
                let n = m.d_state as u64;
                let heads = di / m.head_dim as u64;
                let conv = di + 2 * n;
                d * (2 * di + 2 * n + heads)
                    + conv * (m.d_conv as u64 + 1)
                    + 3 * heads
                    + di
                    + di * d
            }
            Layer::GatedShortConv(g) => 4 * d * d + g.short_conv as u64 * d,
            Layer::GatedDeltaNet(g) => {
                let (h, v) = (g.n_heads as u64, g.expand_v as u64 * d);
                let qkv = 2 * d + v;
                d * qkv + 2 * d * h + 2 * h + g.short_conv as u64 * qkv + d * v + v / h + v * d
            }
            Layer::SwiGlu(s) => {
                let inner = s
                    .inner
                    .map_or(super::swiglu_default_inner(d as usize), |i| i)
                    as u64;
                3 * d * inner
            }
            Layer::Mlp(m) => 2 * d * (m.expansion as u64 * d),
            Layer::MoeMlp(m) => {
                let n = m.n_experts as u64;
                let inner = n * m.expert_dim as u64;
                2 * d * inner + inner * d * n + (d * n + n)
            }
        }
    }

    /// Recurrent state of this layer at width `d`.
    pub fn state(&self, d: usize) -> StateSize {
        let d = d as u64;
        let fixed = |fixed| StateSize {
            fixed,
            per_token: 0,
        };
        match self {
            Layer::Attention(a) => {
                let kv = kv_width(a, d);
                match a.window {
                    Some(w) => fixed(2 * kv * w as u64),
                    None => StateSize {
                        fixed: 0,
                        per_token: 2 * kv,
                    },
                }
            }
            Layer::LinearAttention(a) => {
                let hd = d / a.n_heads as u64;
                fixed(a.n_heads as u64 * (hd * hd + hd))
            }
            Layer::GatedLinearAttention(a) => {
                let hd = d / a.n_heads as u64;
                fixed(a.n_heads as u64 * hd * hd)
            }
            Layer::Hyena(h) => fixed(h.expansion as u64 * d * h.filter_order as u64),
            Layer::MhHyena(h) => {
                let hd = d / h.n_heads as u64;
                fixed(h.n_heads as u64 * hd * hd * h.filter_order as u64)
            }
            Layer::HyenaExperts(h) => fixed((h.n_experts * h.expert_dim * h.filter_order) as u64),
            Layer::Mamba(m) => fixed(m.expand as u64 * d * m.d_state as u64),
            Layer::Mamba2(m) => fixed(m.expand as u64 * d * m.d_state as u64),
            Layer::GatedShortConv(g) => fixed((g.short_conv as u64).saturating_sub(1) * d),
            Layer::GatedDeltaNet(g) => fixed(d * g.expand_v as u64 * d / g.n_heads as u64),
            Layer::SwiGlu(_) | Layer::Mlp(_) | Layer::MoeMlp(_) => StateSize::default(),
        }
    }

    /// Forward FLOPs per token at width `d` and sequence length `seq_len`.
    pub fn flops_per_token(&self, d: usize, seq_len: usize) -> u64 {
        let (d, t) = (d as u64, seq_len as u64);
        // Average causal context over a sequence of length t, capped by a window.
        let avg_context = |window: Option<u64>| -> u64 {
            let w = window.unwrap_or(t).min(t).max(1);
            // Σ_{i=1..t} min(i, w) / t, rounded up.
            let sum = w * (w + 1) / 2 + (t - w) * w;
            sum.div_ceil(t.max(1))
        };
        let macs = match self {
            Layer::Attention(a) => {
                2 * d * d + 2 * d * kv_width(a, d) + 2 * avg_context(a.window.map(|w| w as u64)) * d
            }
            Layer::LinearAttention(a) => {
                let h = a.n_heads as u64;
                let hd = d / h;
                4 * d * d + 4 * h * hd * hd + 2 * h * hd * hd
            }
            Layer::GatedLinearAttention(a) => {
                let h = a.n_heads as u64;
                let hd = d / h;
                5 * d * d + 2 * d * a.gate_rank as u64 + 2 * h * hd * hd
            }
            Layer::Hyena(hy) => {
                let inner = hy.expansion as u64 * d;
                let proj = 3 * inner / hy.proj_groups as u64;
                d * proj
                    + 3 * inner * hy.short_conv as u64
                    + inner * avg_context(None)
                    + hyena_filter_macs(hy.filter_order as u64, inner)
                    + inner * d
            }
            Layer::MhHyena(hy) => {
                let h = hy.n_heads as u64;
                let hd = d / h;
                let proj = 3 * d / hy.proj_groups as u64;
                d * proj
                    + 3 * d * hy.short_conv as u64
                    + h * hd * hd * (avg_context(None) + 2)
                    + hyena_filter_macs(hy.filter_order as u64, h)
                    + d * d
            }
            Layer::HyenaExperts(hy) => {
                let (n, e) = (hy.n_experts as u64, hy.expert_dim as u64);
                let inner = n * e;
                d * 3 * inner
                    + 3 * inner * hy.short_conv as u64
                    + inner * avg_context(None)
                    + hyena_filter_macs(hy.filter_order as u64, inner)
                    + d * n
                    + e * d
            }
            Layer::Mamba(m) => {
                let di = m.expand as u64 * d;
                let n = m.d_state as u64;
                let r = m.dt_rank.map_or(d.div_ceil(16), |r| r as u64);
                d * 2 * di + di * m.d_conv as u64 + di * (r + 2 * n) + r * di + 3 * di * n + di * d
            }
            Layer::Mamba2(m) => {
                let di = m.expand as u64 * d;
                let n = m.d_state as u64;
                let heads = di / m.head_dim as u64;
                d * (2 * di + 2 * n + heads) + (di + 2 * n) * m.d_conv as u64 + 3 * di * n + di * d
            }
            Layer::GatedShortConv(g) => 4 * d * d + g.short_conv as u64 * d,
            Layer::GatedDeltaNet(g) => {
                let (h, v) = (g.n_heads as u64, g.expand_v as u64 * d);
                let qkv = 2 * d + v;
                // Projections and conv; per head the read Ŝᵀk, the decay,
                // the rank-one write and the output: 4·dk·dv.
                d * qkv + 2 * d * h + g.short_conv as u64 * qkv + 2 * d * v + 4 * d * v / h
            }
            Layer::SwiGlu(_) | Layer::Mlp(_) => self.params(d as usize, seq_len),
            Layer::MoeMlp(m) => {
                let n = m.n_experts as u64;
                let inner = n * m.expert_dim as u64;
                2 * d * inner + inner * d * n + d * n
            }
        };
        2 * macs
    }
}

impl ArchSpec {
    /// Parameter counts of the model built for `ctx`.
    pub fn params(&self, ctx: Context) -> ParamCount {
        let d = self.d_model as u64;
        let v = ctx.vocab as u64;
        let norm = norm_params(self.norm, d);
        let n_layers = self.layers.len() as u64;
        let mixers = self
            .layers
            .iter()
            .map(|l| l.params(self.d_model, ctx.seq_len))
            .sum();
        let (decoder, extra_norms) = match self.backbone {
            Backbone::LanguageModel => (0, 1),
            // Two `norm → Linear(d, d) → GELU` layers, then the head's norm.
            Backbone::AutoEncoder => (2 * (d * d + d) + 2 * norm, 1),
        };
        ParamCount {
            mixers,
            norms: (n_layers + extra_norms) * norm,
            decoder,
            embedding: v * d,
            head: d * v + v,
        }
    }

    /// Total recurrent state (fixed part and growth per context token).
    pub fn state(&self) -> StateSize {
        self.layers
            .iter()
            .map(|l| l.state(self.d_model))
            .fold(StateSize::default(), |a, b| a + b)
    }

    /// Per-layer state, in layer order.
    pub fn layer_states(&self) -> Vec<StateSize> {
        self.layers.iter().map(|l| l.state(self.d_model)).collect()
    }

    /// Forward FLOPs per token for `ctx`, output head included.
    pub fn flops_per_token(&self, ctx: Context) -> u64 {
        let d = self.d_model as u64;
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| l.flops_per_token(self.d_model, ctx.seq_len))
            .sum();
        layers + 2 * d * ctx.vocab as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::genome::{ParamValue, Primitive};

    const T: u64 = 128;

    fn layer_params(p: Primitive) -> u64 {
        Layer::default_for(p).params(128, T as usize)
    }

    /// The per-layer counts of mad-protocol §3 at d = 128.
    #[test]
    fn protocol_parameter_counts() {
        use Primitive::*;
        assert_eq!(layer_params(SwiGlu), 135_168);
        assert_eq!(layer_params(Mlp), 131_072);
        assert_eq!(layer_params(MhAttention), 66_048);
        assert_eq!(layer_params(Attention), 66_048);
        assert_eq!(layer_params(MhSlidingAttention), 66_048);
        // "about 165k": 164,999 in the reference, less its unused 8×16 `gates`.
        assert_eq!(layer_params(MoeMlp), 164_872);
        // "about 124k + 3T".
        assert_eq!(layer_params(Hyena), 123_964 + 3 * T);
        // "about 57k + 3T".
        assert_eq!(layer_params(HyenaExperts), 57_080 + 3 * T);
        assert_eq!(layer_params(MhHyena), 30_502 + 3 * T);
        // "about 107k".
        assert_eq!(layer_params(Mamba), 107_264);
        // "about 86k" (multi-head).
        assert_eq!(layer_params(MhGatedLinearAttention), 86_160);
        assert_eq!(layer_params(GatedLinearAttention), 86_272);
        assert_eq!(layer_params(LinearAttention), 131_584);
        assert_eq!(layer_params(MhLinearAttention), 65_824);
    }

    /// The iso-state table of mad-protocol §3.5: 4096 in total for each.
    #[test]
    fn protocol_iso_state() {
        for (layers, per_layer) in [
            ("mamba mamba mamba mamba", 1024),
            (
                "mh-gated-linear-attention swiglu mh-gated-linear-attention swiglu",
                2048,
            ),
            ("hyena swiglu hyena swiglu", 2048),
            ("mh-hyena swiglu mh-hyena swiglu", 2048),
            ("hyena-experts moe-mlp hyena-experts moe-mlp", 2048),
        ] {
            let spec = ArchSpec::from_layers_str(layers).unwrap();
            assert_eq!(
                spec.state(),
                StateSize {
                    fixed: 4096,
                    per_token: 0
                },
                "{layers}"
            );
            assert_eq!(spec.layer_states()[0].fixed, per_layer, "{layers}");
        }
        let transformer = ArchSpec::from_layers_str("mh-attention swiglu mh-attention swiglu")
            .unwrap()
            .state();
        assert_eq!(
            transformer,
            StateSize {
                fixed: 0,
                per_token: 512
            }
        );
        assert_eq!(transformer.at(128), 65_536);
        let sliding = ArchSpec::from_layers_str("mh-sliding-attention swiglu").unwrap();
        assert_eq!(sliding.state().fixed, 2 * 128 * 32);
    }

    #[test]
    fn model_counts_add_up() {
        let spec = ArchSpec::from_layers_str("mh-hyena swiglu mh-attention swiglu").unwrap();
        let p = spec.params(Context::MAD_BASELINE);
        assert_eq!(p.mixers, (30_502 + 3 * T) + 135_168 + 66_048 + 135_168);
        assert_eq!(p.norms, 5 * 128);
        assert_eq!(p.embedding, 16 * 128);
        assert_eq!(p.head, 128 * 16 + 16);
        assert_eq!(p.total(), p.non_embedding() + p.embedding + p.head);
        let mut ae = spec.clone();
        ae.backbone = Backbone::AutoEncoder;
        let q = ae.params(Context::MAD_BASELINE);
        assert_eq!(q.decoder, 2 * (128 * 128 + 128) + 2 * 128);
        let mut ln = spec;
        ln.norm = Norm::Layer;
        assert_eq!(ln.params(Context::MAD_BASELINE).norms, 5 * 256);
    }

    #[test]
    fn params_follow_hyper_parameters() {
        let mut m = Layer::default_for(Primitive::Mamba);
        m.set_param("d_state", ParamValue::Int(8)).unwrap();
        // A_log and the B, C projections grow by 256·4 and 256·8.
        assert_eq!(m.params(128, 128), 107_264 + 256 * 4 + 256 * 8);
        assert_eq!(m.state(128).fixed, 2048);
        let mut s = Layer::default_for(Primitive::SwiGlu);
        s.set_param("inner", ParamValue::Int(512)).unwrap();
        assert_eq!(s.params(128, 128), 3 * 128 * 512);
    }

    /// The later primitives, by hand at width 128.
    #[test]
    fn gqa_mamba2_and_gated_conv_counts() {
        // 16 query heads of 8 dims, 4 key/value heads: q 128, k and v 32 wide.
        let mut a = Layer::default_for(Primitive::MhAttention);
        a.set_param("kv_heads", ParamValue::Int(4)).unwrap();
        a.validate(128).unwrap();
        assert_eq!(
            a.params(128, 128),
            128 * (128 + 64) + (128 + 64) + 128 * 128 + 128
        );
        assert_eq!(a.state(128).per_token, 2 * 32);
        assert_eq!(
            a.flops_per_token(128, 1),
            2 * (128 * 192 + 128 * 128 + 2 * 128)
        );
        a.set_param("kv_heads", ParamValue::Int(16)).unwrap();
        let mha = Layer::default_for(Primitive::MhAttention);
        assert_eq!(a.params(128, 128), mha.params(128, 128));
        assert_eq!(a.state(128), mha.state(128));
        a.set_param("kv_heads", ParamValue::Int(3)).unwrap();
        let err = a.validate(128).unwrap_err().to_string();
        assert!(
            err.contains("kv_heads") && err.contains("n_heads (16)"),
            "{err}"
        );
        // d_inner 256 in 8 heads of 32, N = 16: in_proj emits z, x (256
        // each), B, C (16 each) and Δ (8); the conv runs over x, B, C.
        let m2 = Layer::default_for(Primitive::Mamba2);
        assert_eq!(
            m2.params(128, 128),
            128 * 552 + 288 * 5 + 3 * 8 + 256 + 256 * 128
        );
        assert_eq!(m2.state(128).fixed, 256 * 16);
        let mut bad = m2.clone();
        bad.set_param("head_dim", ParamValue::Int(48)).unwrap();
        assert!(
            bad.validate(128)
                .unwrap_err()
                .to_string()
                .contains("d_inner (256)")
        );
        // Gated DeltaNet: 4 heads, dk 32, dv 64: q, k 128 wide, v 256.
        let gdn = Layer::default_for(Primitive::GatedDeltaNet);
        assert_eq!(
            gdn.params(128, 128),
            128 * 512 + 2 * 128 * 4 + 2 * 4 + 4 * 512 + 128 * 256 + 64 + 256 * 128
        );
        assert_eq!(gdn.state(128).fixed, 4 * 32 * 64);
        let g = Layer::default_for(Primitive::GatedShortConv);
        assert_eq!(g.params(128, 128), 3 * 128 * 128 + 3 * 128 + 128 * 128);
        assert_eq!(g.state(128).fixed, 2 * 128);
    }

    #[test]
    fn flops_are_positive_and_grow_with_context_for_attention() {
        for &p in Primitive::ALL {
            let l = Layer::default_for(p);
            assert!(l.flops_per_token(128, 128) > 0, "{p}");
        }
        let a = Layer::default_for(Primitive::MhAttention);
        assert!(a.flops_per_token(128, 1024) > a.flops_per_token(128, 128));
        let s = Layer::default_for(Primitive::MhSlidingAttention);
        assert_eq!(s.flops_per_token(128, 1024), s.flops_per_token(128, 4096));
        // Dense matmuls: 2 FLOPs per parameter for the channel mixers.
        let sg = Layer::default_for(Primitive::SwiGlu);
        assert_eq!(sg.flops_per_token(128, 128), 2 * 135_168);
    }
}
