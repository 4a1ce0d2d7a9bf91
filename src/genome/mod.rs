//! The genome: one architecture as plain data ([`ArchSpec`]), its canonical
//! form and content id, its parameter / state / FLOP accounting, and the
//! reference implementation's layer strings.
//!
//! This module is free of Burn: the search and the store work on genomes
//! without building models. `layers/` (Burn) builds a model from an
//! [`ArchSpec`] and its tests check the counts computed here.

mod accounting;
mod canonical;
mod error;
mod layer;
mod layer_file;
mod layers_string;
mod primitive;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use accounting::{Context, ParamCount, StateSize};
pub use canonical::ArchId;
pub use error::GenomeError;
pub use layer::{
    Attention, GatedDeltaNet, GatedLinearAttention, GatedShortConv, Hyena, HyenaExperts, Layer,
    LinearAttention, Mamba, Mamba2, MhHyena, Mlp, MoeMlp, ParamValue, Routing, SwiGlu,
    mamba_default_dt_rank, swiglu_default_inner,
};
pub use primitive::{Primitive, Role};

/// The normalisation used before every layer and at the end of the backbone.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum Norm {
    /// RMSNorm, eps 1e-5, learnable scale (mad-protocol §8).
    #[default]
    #[serde(rename = "rms")]
    Rms,
    /// LayerNorm with learnable scale and bias.
    #[serde(rename = "layer")]
    Layer,
}

impl Norm {
    /// Every norm.
    pub const ALL: &'static [Norm] = &[Norm::Rms, Norm::Layer];

    /// The file name of this norm.
    pub fn name(self) -> &'static str {
        match self {
            Norm::Rms => "rms",
            Norm::Layer => "layer",
        }
    }
}

impl FromStr for Norm {
    type Err = GenomeError;

    fn from_str(s: &str) -> Result<Norm, GenomeError> {
        Norm::ALL
            .iter()
            .copied()
            .find(|n| n.name() == s)
            .ok_or_else(|| GenomeError::UnknownNorm(s.to_string()))
    }
}

impl fmt::Display for Norm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What surrounds the layers (mad-protocol §2.2).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum Backbone {
    /// Embedding, pre-norm residual layers, final norm, untied linear head.
    #[default]
    #[serde(rename = "language-model")]
    LanguageModel,
    /// The compression task's encoder / per-position MLP decoder (mad-protocol §1.5).
    #[serde(rename = "autoencoder")]
    AutoEncoder,
}

impl Backbone {
    /// The file name of this backbone.
    pub fn name(self) -> &'static str {
        match self {
            Backbone::LanguageModel => "language-model",
            Backbone::AutoEncoder => "autoencoder",
        }
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// One architecture: width, ordered layers, norm and backbone.
///
/// Every layer maps `[batch, seq, d_model]` to `[batch, seq, d_model]` and is
/// wrapped as `x ← x + layer(norm(x))`. Serialises to JSON and TOML:
///
/// ```toml
/// d_model = 128
/// [[layers]]
/// kind = "mh-hyena"
/// [[layers]]
/// kind = "swiglu"
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchSpec {
    /// Width of every layer.
    pub d_model: usize,
    /// The layers, in order.
    pub layers: Vec<Layer>,
    /// The norm before each layer and at the end.
    #[serde(default, skip_serializing_if = "is_default")]
    pub norm: Norm,
    /// The surrounding model.
    #[serde(default, skip_serializing_if = "is_default")]
    pub backbone: Backbone,
}

/// A block: a sequence mixer with its channel mixer, or one fused layer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Block {
    /// `[sequence mixer, channel mixer]`.
    Pair(Layer, Layer),
    /// A layer that mixes both (Mamba).
    Fused(Layer),
}

impl Block {
    /// The block's layers, in order.
    pub fn layers(&self) -> Vec<&Layer> {
        match self {
            Block::Pair(s, c) => vec![s, c],
            Block::Fused(f) => vec![f],
        }
    }

    /// The layer that mixes along the sequence (the mixer for a pair, the layer for fused).
    pub fn sequence_mixer(&self) -> &Layer {
        match self {
            Block::Pair(s, _) | Block::Fused(s) => s,
        }
    }

    /// Number of layers (2 or 1).
    pub fn len(&self) -> usize {
        match self {
            Block::Pair(..) => 2,
            Block::Fused(_) => 1,
        }
    }

    /// Always false: a block has at least one layer.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl ArchSpec {
    /// A language model of width `d_model` with RMSNorm.
    pub fn new(d_model: usize, layers: Vec<Layer>) -> ArchSpec {
        ArchSpec {
            d_model,
            layers,
            norm: Norm::Rms,
            backbone: Backbone::LanguageModel,
        }
    }

    /// Builds from a reference `--layers` list (`mh-hyena swiglu mh-attention swiglu`,
    /// commas also accepted) with default parameters, width 128, RMSNorm.
    ///
    /// # Errors
    /// An unknown name, or an empty list.
    pub fn from_layers_str(s: &str) -> Result<ArchSpec, GenomeError> {
        layers_string::parse_layers(s).map(|layers| ArchSpec::new(128, layers))
    }

    /// Builds from the short run-id form (`mH-Sg-mA-Sg`).
    ///
    /// # Errors
    /// An unknown token, or an empty string.
    pub fn from_short_str(s: &str) -> Result<ArchSpec, GenomeError> {
        layers_string::parse_short(s).map(|layers| ArchSpec::new(128, layers))
    }

    /// Builds from the compact form [`ArchSpec::compact_string`] writes
    /// (`d64: mh-attention[n_heads=8,kv_heads=2] swiglu (norm=layer)`): the
    /// `--layers` form plus a width prefix, parameters in brackets and a norm
    /// suffix, each optional. Parameters not given take their defaults; the
    /// backbone is the language model's (the compact form does not carry it).
    ///
    /// # Errors
    /// An unknown name or parameter, a malformed token (named), a value the
    /// layer cannot be built with, or an empty string.
    pub fn from_compact_str(s: &str) -> Result<ArchSpec, GenomeError> {
        layers_string::parse_compact(s)
    }

    /// The reference `--layers` form: registry names separated by spaces.
    pub fn layers_string(&self) -> String {
        layers_string::format_layers(&self.layers)
    }

    /// The reference's short run-id form: `mH-Sg-mA-Sg`.
    pub fn short_string(&self) -> String {
        layers_string::format_short(&self.layers)
    }

    /// Registry names with any non-default parameters in brackets:
    /// `mh-hyena[filter_order=4] swiglu`. Unlike [`ArchSpec::layers_string`]
    /// it tells apart genomes that differ only in hyper-parameters.
    pub fn compact_string(&self) -> String {
        let mut parts: Vec<String> = self
            .layers
            .iter()
            .map(|l| {
                let p = l.primitive();
                let changed: Vec<String> = p
                    .params()
                    .iter()
                    .filter(|name| !l.at_default(name, self.d_model))
                    .filter_map(|name| {
                        let v = l.param(name, self.d_model)?;
                        Some(format!("{name}={v}"))
                    })
                    .collect();
                if changed.is_empty() {
                    p.name().to_string()
                } else {
                    format!("{}[{}]", p.name(), changed.join(","))
                }
            })
            .collect();
        if self.d_model != 128 {
            parts.insert(0, format!("d{}:", self.d_model));
        }
        if self.norm != Norm::Rms {
            parts.push(format!("(norm={})", self.norm));
        }
        parts.join(" ")
    }

    /// Whether the reference `--layers` string, read with defaults at width
    /// 128 and RMSNorm, builds exactly this model.
    pub fn is_reference_expressible(&self) -> bool {
        ArchSpec::from_layers_str(&self.layers_string())
            .map(|r| r.arch_id() == self.arch_id())
            .unwrap_or(false)
    }

    /// The same genome with derived defaults made implicit.
    pub fn normalized(&self) -> ArchSpec {
        ArchSpec {
            layers: self
                .layers
                .iter()
                .map(|l| l.normalized(self.d_model))
                .collect(),
            ..self.clone()
        }
    }

    /// Checks every layer against the width, and the block structure.
    ///
    /// # Errors
    /// The first problem found, naming the layer index and parameter.
    pub fn validate(&self) -> Result<(), GenomeError> {
        self.validate_layers()?;
        self.blocks().map(|_| ())
    }

    /// Checks every layer against the width, without the block grammar: what
    /// the model builder needs (it builds any sequence of valid layers).
    ///
    /// # Errors
    /// The first problem found, naming the layer index and parameter.
    pub fn validate_layers(&self) -> Result<(), GenomeError> {
        if self.d_model == 0 {
            return Err(GenomeError::ZeroWidth);
        }
        if self.layers.is_empty() {
            return Err(GenomeError::NoLayers);
        }
        for (index, layer) in self.layers.iter().enumerate() {
            layer
                .validate(self.d_model)
                .map_err(|e| GenomeError::Layer {
                    index,
                    primitive: layer.primitive(),
                    source: Box::new(e),
                })?;
        }
        Ok(())
    }

    /// Splits the layers into blocks.
    ///
    /// # Errors
    /// [`GenomeError::Structure`] where a channel mixer has no sequence mixer
    /// before it, or a sequence mixer no channel mixer after it.
    pub fn blocks(&self) -> Result<Vec<Block>, GenomeError> {
        let mut blocks = Vec::with_capacity(self.layers.len());
        let mut i = 0;
        while i < self.layers.len() {
            let layer = &self.layers[i];
            let structure = |index: usize, problem| {
                let l: &Layer = &self.layers[index];
                GenomeError::Structure {
                    index,
                    primitive: l.primitive(),
                    role: l.role(),
                    problem,
                }
            };
            match layer.role() {
                Role::Fused => {
                    blocks.push(Block::Fused(layer.clone()));
                    i += 1;
                }
                Role::Channel => {
                    return Err(structure(i, "must follow a sequence mixer"));
                }
                Role::Sequence => match self.layers.get(i + 1) {
                    Some(next) if next.role() == Role::Channel => {
                        blocks.push(Block::Pair(layer.clone(), next.clone()));
                        i += 2;
                    }
                    _ => return Err(structure(i, "must be followed by a channel mixer")),
                },
            }
        }
        Ok(blocks)
    }

    /// Rebuilds a genome from blocks, keeping width, norm and backbone.
    pub fn with_blocks(&self, blocks: &[Block]) -> ArchSpec {
        ArchSpec {
            layers: blocks
                .iter()
                .flat_map(|b| b.layers().into_iter().cloned())
                .collect(),
            ..self.clone()
        }
    }
}

impl fmt::Display for ArchSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.layers_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paper(s: &str) -> ArchSpec {
        ArchSpec::from_layers_str(s).unwrap()
    }

    #[test]
    fn json_and_toml_round_trip() {
        let mut spec = paper("mh-hyena moe-mlp mh-attention swiglu mamba");
        spec.layers[0]
            .set_param("filter_order", ParamValue::Int(8))
            .unwrap();
        spec.layers[1]
            .set_param("routing", ParamValue::Routing(Routing::TopK))
            .unwrap();
        spec.norm = Norm::Layer;
        let json = serde_json::to_string_pretty(&spec).unwrap();
        assert_eq!(serde_json::from_str::<ArchSpec>(&json).unwrap(), spec);
        let toml_text = toml::to_string(&spec).unwrap();
        assert_eq!(toml::from_str::<ArchSpec>(&toml_text).unwrap(), spec);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_str::<ArchSpec>(r#"{"d_model":128,"layers":[],"width":3}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `width`"), "{err}");
    }

    #[test]
    fn blocks_follow_the_grammar() {
        let spec = paper("mamba mh-hyena swiglu mamba");
        let blocks = spec.blocks().unwrap();
        assert_eq!(blocks.len(), 3);
        assert_eq!(spec.with_blocks(&blocks), spec);
        let err = paper("swiglu hyena").validate().unwrap_err().to_string();
        assert_eq!(
            err,
            "layer 0 (swiglu, a channel mixer) must follow a sequence mixer"
        );
        let err = paper("hyena hyena swiglu")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be followed by a channel mixer"), "{err}");
    }

    #[test]
    fn compact_string_shows_what_differs() {
        let mut gqa = paper("mh-attention swiglu");
        gqa.layers[0]
            .set_param("n_heads", ParamValue::Int(8))
            .unwrap();
        assert_eq!(gqa.compact_string(), "mh-attention[n_heads=8] swiglu");
        gqa.layers[0]
            .set_param("kv_heads", ParamValue::Int(2))
            .unwrap();
        assert_eq!(
            gqa.compact_string(),
            "mh-attention[n_heads=8,kv_heads=2] swiglu"
        );
        // 16 key/value heads: plain attention at 16 heads, grouped at 32.
        let mut wide = paper("mh-attention swiglu");
        wide.d_model = 256;
        wide.layers[0]
            .set_param("n_heads", ParamValue::Int(32))
            .unwrap();
        wide.layers[0]
            .set_param("kv_heads", ParamValue::Int(16))
            .unwrap();
        assert_eq!(
            wide.compact_string(),
            "d256: mh-attention[n_heads=32,kv_heads=16] swiglu"
        );
        let mut spec = paper("mh-hyena swiglu");
        assert_eq!(spec.compact_string(), "mh-hyena swiglu");
        spec.layers[0]
            .set_param("filter_order", ParamValue::Int(4))
            .unwrap();
        spec.norm = Norm::Layer;
        assert_eq!(
            spec.compact_string(),
            "mh-hyena[filter_order=4] swiglu (norm=layer)"
        );
    }

    #[test]
    fn validation_names_the_layer() {
        let mut spec = paper("mh-attention swiglu");
        spec.layers[0]
            .set_param("n_heads", ParamValue::Int(5))
            .unwrap();
        let err = spec.validate().unwrap_err().to_string();
        assert!(
            err.starts_with("layer 0 (mh-attention): `mh-attention.n_heads` = 5"),
            "{err}"
        );
    }
}
