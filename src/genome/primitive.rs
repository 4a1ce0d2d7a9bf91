//! The names of the MAD primitives: the registry keys of the reference
//! implementation (`mh-attention`, `swiglu`, ...) and their short run-id forms
//! (`mA`, `Sg`, ...). Parsed once into [`Primitive`]; nothing else in the crate
//! matches on layer-name strings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::GenomeError;

/// What a layer does inside a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Mixes information along the sequence (attention, Hyena, ...).
    Sequence,
    /// Mixes channels at each position (SwiGLU, MLP, MoE).
    Channel,
    /// Both at once: a block of its own (Mamba).
    Fused,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Sequence => "sequence mixer",
            Role::Channel => "channel mixer",
            Role::Fused => "fused block",
        })
    }
}

macro_rules! primitives {
    ($($variant:ident => $name:literal, $short:literal, $role:ident;)+) => {
        /// One primitive: the paper's (mad-protocol §3, named as the reference
        /// registry names them) and the later ones of `search_spaces/README.md`
        /// (`mamba2`, `gated-short-conv`, `gated-deltanet`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum Primitive {
            $(#[doc = concat!("`", $name, "` (short `", $short, "`)")]
            #[serde(rename = $name)]
            $variant,)+
        }

        impl Primitive {
            /// Every primitive, in registry order.
            pub const ALL: &'static [Primitive] = &[$(Primitive::$variant),+];

            /// The reference registry key, e.g. `mh-attention`.
            pub fn name(self) -> &'static str {
                match self { $(Primitive::$variant => $name,)+ }
            }

            /// The reference's short run-id form, e.g. `mA`.
            pub fn short(self) -> &'static str {
                match self { $(Primitive::$variant => $short,)+ }
            }

            /// Whether this primitive mixes along the sequence, across channels, or both.
            pub fn role(self) -> Role {
                match self { $(Primitive::$variant => Role::$role,)+ }
            }

            /// Parses the short run-id form (`mH`, `Sg`, `MoE`).
            ///
            /// # Errors
            /// [`GenomeError::UnknownShortName`] for anything else.
            pub fn from_short(s: &str) -> Result<Primitive, GenomeError> {
                match s {
                    $($short => Ok(Primitive::$variant),)+
                    _ => Err(GenomeError::UnknownShortName {
                        name: s.to_string(),
                        expected: Primitive::ALL.iter().map(|p| p.short()).collect::<Vec<_>>().join(", "),
                    }),
                }
            }
        }

        impl FromStr for Primitive {
            type Err = GenomeError;

            fn from_str(s: &str) -> Result<Primitive, GenomeError> {
                match s {
                    $($name => Ok(Primitive::$variant),)+
                    _ => Err(GenomeError::UnknownPrimitive {
                        name: s.to_string(),
                        expected: Primitive::expected_names(),
                    }),
                }
            }
        }
    };
}

primitives! {
    Attention => "attention", "A", Sequence;
    MhAttention => "mh-attention", "mA", Sequence;
    SlidingAttention => "sliding-attention", "As", Sequence;
    MhSlidingAttention => "mh-sliding-attention", "mAs", Sequence;
    LinearAttention => "linear-attention", "Al", Sequence;
    MhLinearAttention => "mh-linear-attention", "mAl", Sequence;
    GatedLinearAttention => "gated-linear-attention", "Alg", Sequence;
    MhGatedLinearAttention => "mh-gated-linear-attention", "mAlg", Sequence;
    Hyena => "hyena", "H", Sequence;
    MhHyena => "mh-hyena", "mH", Sequence;
    HyenaExperts => "hyena-experts", "He", Sequence;
    Mamba => "mamba", "Mb", Fused;
    Mamba2 => "mamba2", "Mb2", Fused;
    GatedShortConv => "gated-short-conv", "Gsc", Sequence;
    GatedDeltaNet => "gated-deltanet", "GDn", Sequence;
    SwiGlu => "swiglu", "Sg", Channel;
    Mlp => "mlp", "M", Channel;
    MoeMlp => "moe-mlp", "MoE", Channel;
}

impl Primitive {
    /// All registry names, comma-separated, for error messages.
    pub fn expected_names() -> String {
        Primitive::ALL
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether this is global softmax attention (`attention`, `mh-attention`):
    /// the layers a space's `structure.attention_every` places. Sliding
    /// windows and linear attention are not (their state is bounded).
    pub fn is_global_attention(self) -> bool {
        matches!(self, Primitive::Attention | Primitive::MhAttention)
    }

    /// The hyper-parameters this primitive takes, by their genome field names.
    pub fn params(self) -> &'static [&'static str] {
        use Primitive::*;
        match self {
            Attention | MhAttention => &["n_heads", "rotary_dim", "kv_heads"],
            SlidingAttention | MhSlidingAttention => {
                &["n_heads", "rotary_dim", "kv_heads", "window"]
            }
            LinearAttention | MhLinearAttention => &["n_heads"],
            GatedLinearAttention | MhGatedLinearAttention => &["n_heads", "gate_rank"],
            Hyena => &["expansion", "proj_groups", "filter_order", "short_conv"],
            MhHyena => &["n_heads", "proj_groups", "filter_order", "short_conv"],
            HyenaExperts => &[
                "n_experts",
                "expert_dim",
                "top_k",
                "filter_order",
                "short_conv",
            ],
            Mamba => &["expand", "d_state", "d_conv", "dt_rank"],
            Mamba2 => &["expand", "d_state", "d_conv", "head_dim"],
            GatedShortConv => &["short_conv"],
            GatedDeltaNet => &["n_heads", "expand_v", "short_conv"],
            SwiGlu => &["inner"],
            Mlp => &["expansion"],
            MoeMlp => &["n_experts", "expert_dim", "routing", "top_k"],
        }
    }
}

impl fmt::Display for Primitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_short_names_round_trip() {
        for &p in Primitive::ALL {
            assert_eq!(p.name().parse::<Primitive>().unwrap(), p);
            assert_eq!(Primitive::from_short(p.short()).unwrap(), p);
        }
        assert_eq!(Primitive::ALL.len(), 18);
    }

    #[test]
    fn unknown_name_lists_what_is_expected() {
        let err = "hyena2".parse::<Primitive>().unwrap_err().to_string();
        assert!(err.contains("unknown primitive `hyena2`"), "{err}");
        assert!(err.contains("mh-hyena"), "{err}");
    }
}
