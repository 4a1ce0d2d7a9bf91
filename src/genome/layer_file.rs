//! The file form of a [`Layer`]: `kind` plus the parameters that differ
//! from the kind's defaults, as genome and space files and the store write
//! it. Unknown keys and parameters foreign to the kind are errors.

use serde::{Deserialize, Serialize};

use super::{GenomeError, Layer, ParamValue, Primitive, Routing};

/// The file form of a layer: `kind` plus any parameters that differ from the
/// kind's defaults. Unknown keys and parameters foreign to the kind are errors.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerRepr {
    kind: Primitive,
    #[serde(skip_serializing_if = "Option::is_none")]
    n_heads: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rotary_dim: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    window: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kv_heads: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gate_rank: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expansion: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    proj_groups: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    filter_order: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    short_conv: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n_experts: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expert_dim: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expand: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    d_state: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    d_conv: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dt_rank: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    head_dim: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expand_v: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inner: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    routing: Option<Routing>,
}

impl LayerRepr {
    /// Every integer parameter.
    fn fields(&mut self) -> [(&'static str, &mut Option<usize>); 19] {
        [
            ("n_heads", &mut self.n_heads),
            ("kv_heads", &mut self.kv_heads),
            ("rotary_dim", &mut self.rotary_dim),
            ("window", &mut self.window),
            ("gate_rank", &mut self.gate_rank),
            ("expansion", &mut self.expansion),
            ("proj_groups", &mut self.proj_groups),
            ("filter_order", &mut self.filter_order),
            ("short_conv", &mut self.short_conv),
            ("n_experts", &mut self.n_experts),
            ("expert_dim", &mut self.expert_dim),
            ("top_k", &mut self.top_k),
            ("expand", &mut self.expand),
            ("d_state", &mut self.d_state),
            ("d_conv", &mut self.d_conv),
            ("dt_rank", &mut self.dt_rank),
            ("head_dim", &mut self.head_dim),
            ("expand_v", &mut self.expand_v),
            ("inner", &mut self.inner),
        ]
    }
}

impl From<&Layer> for LayerRepr {
    fn from(layer: &Layer) -> LayerRepr {
        let kind = layer.primitive();
        let default = Layer::default_for(kind);
        let mut repr = LayerRepr {
            kind,
            n_heads: None,
            rotary_dim: None,
            window: None,
            kv_heads: None,
            gate_rank: None,
            expansion: None,
            proj_groups: None,
            filter_order: None,
            short_conv: None,
            n_experts: None,
            expert_dim: None,
            top_k: None,
            expand: None,
            d_state: None,
            d_conv: None,
            dt_rank: None,
            head_dim: None,
            expand_v: None,
            inner: None,
            routing: None,
        };
        // Width-independent comparison: write a parameter when it is set
        // explicitly or differs from the kind's default.
        const PROBE_WIDTH: usize = 0;
        for (name, slot) in repr.fields() {
            let explicit = match (layer, name) {
                (Layer::Attention(a), "rotary_dim") => a.rotary_dim,
                (Layer::Attention(a), "kv_heads") => a.kv_heads,
                (Layer::Mamba(m), "dt_rank") => m.dt_rank,
                (Layer::SwiGlu(s), "inner") => s.inner,
                _ => None,
            };
            if explicit.is_some() {
                *slot = explicit;
                continue;
            }
            if matches!(name, "rotary_dim" | "kv_heads" | "dt_rank" | "inner") {
                continue;
            }
            if let Some(ParamValue::Int(v)) = layer.param(name, PROBE_WIDTH)
                && default.param(name, PROBE_WIDTH) != Some(ParamValue::Int(v))
            {
                *slot = Some(v);
            }
        }
        if let Layer::MoeMlp(m) = layer
            && m.routing != Routing::SoftTop2
        {
            repr.routing = Some(m.routing);
        }
        repr
    }
}

impl TryFrom<LayerRepr> for Layer {
    type Error = GenomeError;

    fn try_from(mut repr: LayerRepr) -> Result<Layer, GenomeError> {
        let mut layer = Layer::default_for(repr.kind);
        // `n_heads` and `window` first: they may rename the layer, and the
        // other parameters belong to the family, not the name.
        let kind = repr.kind;
        if let Some(w) = repr.window.take() {
            if !kind.params().contains(&"window") {
                return Err(GenomeError::ParamNotApplicable {
                    primitive: kind,
                    param: "window".into(),
                    expected: kind.params().join(", "),
                });
            }
            layer.set_param("window", ParamValue::Int(w))?;
        }
        for (name, slot) in repr.fields() {
            if let Some(v) = slot.take() {
                if !kind.params().contains(&name) {
                    return Err(GenomeError::ParamNotApplicable {
                        primitive: kind,
                        param: name.into(),
                        expected: kind.params().join(", "),
                    });
                }
                layer.set_param(name, ParamValue::Int(v))?;
            }
        }
        if let Some(r) = repr.routing {
            layer.set_param("routing", ParamValue::Routing(r))?;
        }
        Ok(layer)
    }
}

impl Serialize for Layer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        LayerRepr::from(self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Layer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Layer, D::Error> {
        let repr = LayerRepr::deserialize(d)?;
        Layer::try_from(repr).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_form_writes_only_what_differs() {
        let l = Layer::default_for(Primitive::MhHyena);
        assert_eq!(serde_json::to_string(&l).unwrap(), r#"{"kind":"mh-hyena"}"#);
        let l: Layer = serde_json::from_str(r#"{"kind":"attention","n_heads":8}"#).unwrap();
        assert_eq!(l.primitive(), Primitive::MhAttention);
        assert_eq!(
            serde_json::to_string(&l).unwrap(),
            r#"{"kind":"mh-attention","n_heads":8}"#
        );
        let err = serde_json::from_str::<Layer>(r#"{"kind":"hyena","n_heads":8}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`hyena` has no parameter `n_heads`"), "{err}");
    }

    /// The later primitives' and grouped-query attention's parameters
    /// write only what differs and read back to the same layer.
    #[test]
    fn later_parameters_round_trip() {
        let cases = [
            (
                r#"{"kind":"mh-attention","n_heads":8,"kv_heads":2}"#,
                "mh-attention",
            ),
            (r#"{"kind":"mamba2","d_state":8,"head_dim":16}"#, "mamba2"),
            (
                r#"{"kind":"gated-short-conv","short_conv":5}"#,
                "gated-short-conv",
            ),
            (
                r#"{"kind":"gated-deltanet","n_heads":8,"expand_v":1}"#,
                "gated-deltanet",
            ),
        ];
        for (text, kind) in cases {
            let l: Layer = serde_json::from_str(text).unwrap();
            assert_eq!(l.primitive().name(), kind);
            assert_eq!(serde_json::to_string(&l).unwrap(), text);
        }
        for kind in ["mamba2", "gated-short-conv", "gated-deltanet"] {
            let l: Layer = serde_json::from_str(&format!(r#"{{"kind":"{kind}"}}"#)).unwrap();
            assert_eq!(l, Layer::default_for(l.primitive()));
        }
        let err = serde_json::from_str::<Layer>(r#"{"kind":"mamba2","dt_rank":3}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`mamba2` has no parameter `dt_rank`"), "{err}");
        let err = serde_json::from_str::<Layer>(r#"{"kind":"mamba","expand_v":2}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`mamba` has no parameter `expand_v`"), "{err}");
    }
}
