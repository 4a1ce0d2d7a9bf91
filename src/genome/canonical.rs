//! Canonical form and content id of a genome.
//!
//! The canonical text spells out every hyper-parameter with derived defaults
//! resolved, so two specs that build the same model have the same text. The
//! arch id is the first 128 bits of its BLAKE3 hash: the same on every
//! machine, run and version. The text carries a format tag (`mad-arch/1`);
//! changing it is a store migration, and a golden test pins it.

use std::fmt;
use std::fmt::Write as _;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::ArchSpec;

const FORMAT_TAG: &str = "mad-arch/1";

/// Stable content id of an architecture: 128 bits, shown as 32 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ArchId(pub [u8; 16]);

impl ArchId {
    /// The first 12 hex digits, for tables and logs.
    pub fn short(&self) -> String {
        self.to_string()[..12].to_string()
    }

    /// Whether the hex form starts with `prefix` (case-insensitive).
    pub fn matches_prefix(&self, prefix: &str) -> bool {
        self.to_string().starts_with(&prefix.to_ascii_lowercase())
    }
}

impl fmt::Display for ArchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for ArchId {
    type Err = String;

    fn from_str(s: &str) -> Result<ArchId, String> {
        let bad = || format!("`{s}` is not an arch id; expected 32 hex digits");
        if s.len() != 32 || !s.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(ArchId(out))
    }
}

impl Serialize for ArchId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ArchId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ArchId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl ArchSpec {
    /// The normalised text of this genome:
    /// `mad-arch/1 d_model=128 norm=rms backbone=language-model | mh-hyena(n_heads=16,...) swiglu(inner=352)`.
    pub fn canonical(&self) -> String {
        let mut s = format!(
            "{FORMAT_TAG} d_model={} norm={} backbone={} |",
            self.d_model,
            self.norm.name(),
            self.backbone.name()
        );
        for layer in &self.layers {
            let p = layer.primitive();
            let _ = write!(s, " {}(", p.name());
            let params: Vec<String> = p
                .params()
                .iter()
                .filter(|name| !layer.neutral(name, self.d_model))
                .filter_map(|name| {
                    layer
                        .param(name, self.d_model)
                        .map(|v| format!("{name}={v}"))
                })
                .collect();
            s.push_str(&params.join(","));
            s.push(')');
        }
        s
    }

    /// The content id: BLAKE3 of [`ArchSpec::canonical`], truncated to 128 bits.
    pub fn arch_id(&self) -> ArchId {
        let hash = blake3::hash(self.canonical().as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&hash.as_bytes()[..16]);
        ArchId(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::genome::ParamValue;

    #[test]
    fn golden_canonical_text_and_id() {
        let spec = ArchSpec::from_layers_str("mh-hyena swiglu mh-attention swiglu").unwrap();
        assert_eq!(
            spec.canonical(),
            "mad-arch/1 d_model=128 norm=rms backbone=language-model | \
             mh-hyena(n_heads=16,proj_groups=4,filter_order=2,short_conv=3) swiglu(inner=352) \
             mh-attention(n_heads=16,rotary_dim=8) swiglu(inner=352)"
        );
        // Pinned: a change here re-keys every stored candidate (a migration).
        assert_eq!(spec.arch_id().to_string(), GOLDEN_ID);
    }

    const GOLDEN_ID: &str = "d0dff0d770cdf0b4a7c1b4be138007fe";

    #[test]
    fn equal_models_equal_ids() {
        let a = ArchSpec::from_layers_str("attention swiglu").unwrap();
        let mut b = a.clone();
        b.layers[0]
            .set_param("rotary_dim", ParamValue::Int(128))
            .unwrap();
        b.layers[1]
            .set_param("inner", ParamValue::Int(352))
            .unwrap();
        assert_ne!(a, b);
        assert_eq!(a.arch_id(), b.arch_id());
        assert_eq!(a.normalized(), b.normalized());
        let mut c = a.clone();
        c.layers[1]
            .set_param("inner", ParamValue::Int(512))
            .unwrap();
        assert_ne!(a.arch_id(), c.arch_id());
        // `attention` with 16 heads is `mh-attention`.
        let mut d = a.clone();
        d.layers[0]
            .set_param("n_heads", ParamValue::Int(16))
            .unwrap();
        assert_eq!(
            d.arch_id(),
            ArchSpec::from_layers_str("mh-attention swiglu")
                .unwrap()
                .arch_id()
        );
    }

    /// `kv_heads` came after ids were fixed: at its neutral value (one
    /// key/value head per query head) the text and id are those of before.
    #[test]
    fn grouped_query_attention_keeps_the_ids_of_multi_head_attention() {
        let mut g = ArchSpec::from_layers_str("mh-attention swiglu").unwrap();
        let mha = g.arch_id();
        g.layers[0]
            .set_param("kv_heads", ParamValue::Int(16))
            .unwrap();
        assert_eq!(g.arch_id(), mha);
        assert!(!g.canonical().contains("kv_heads"), "{}", g.canonical());
        g.layers[0]
            .set_param("kv_heads", ParamValue::Int(4))
            .unwrap();
        assert_ne!(g.arch_id(), mha);
        assert!(
            g.canonical()
                .contains("mh-attention(n_heads=16,rotary_dim=8,kv_heads=4)"),
            "{}",
            g.canonical()
        );
    }

    #[test]
    fn id_parses_back() {
        let id = ArchSpec::from_layers_str("mamba").unwrap().arch_id();
        assert_eq!(id.to_string().parse::<ArchId>().unwrap(), id);
        assert!(id.matches_prefix(&id.short().to_uppercase()));
        assert!("xyz".parse::<ArchId>().is_err());
    }
}
