//! The reference implementation's two textual forms of a layer list:
//! the `--layers` form (`mh-hyena swiglu mh-attention swiglu`) and the short
//! run-id form (`mH-Sg-mA-Sg`). Both carry names only; parameters take their
//! defaults when parsed. The compact form ([`ArchSpec::compact_string`](super::ArchSpec::compact_string))
//! adds what differs from the defaults, and parses back to the same genome.

use super::{ArchSpec, GenomeError, Layer, Norm, ParamValue, Primitive, Routing};

/// Parses registry names separated by whitespace or commas.
pub(super) fn parse_layers(s: &str) -> Result<Vec<Layer>, GenomeError> {
    let layers = s
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<Primitive>().map(Layer::default_for))
        .collect::<Result<Vec<_>, _>>()?;
    if layers.is_empty() {
        return Err(GenomeError::EmptyLayers);
    }
    Ok(layers)
}

/// Parses the compact form: `[d<width>:] name[param=value,…] … [(norm=<norm>)]`,
/// tokens separated by whitespace (or commas outside brackets). Without a
/// width prefix, norm suffix or brackets it is the `--layers` form.
pub(super) fn parse_compact(s: &str) -> Result<ArchSpec, GenomeError> {
    let bad = |token: &str, expected: &'static str| GenomeError::Compact {
        token: token.to_string(),
        expected,
    };
    let mut tokens = split_tokens(s)?;
    let mut d_model = 128;
    if let Some(first) = tokens.first()
        && let Some(width) = first.strip_prefix('d').and_then(|w| w.strip_suffix(':'))
    {
        d_model = width
            .parse::<usize>()
            .ok()
            .filter(|w| (1..=MAX_WIDTH).contains(w))
            .ok_or_else(|| {
                bad(
                    first,
                    "a width prefix `d<width>:`, the width from 1 to 65536",
                )
            })?;
        tokens.remove(0);
    }
    let mut norm = Norm::Rms;
    if let Some(last) = tokens.last()
        && last.starts_with('(')
    {
        let name = last
            .strip_prefix("(norm=")
            .and_then(|n| n.strip_suffix(')'))
            .ok_or_else(|| bad(last, "a norm suffix `(norm=rms)` or `(norm=layer)`"))?;
        norm = name.parse()?;
        tokens.pop();
    }
    if tokens.is_empty() {
        return Err(GenomeError::EmptyLayers);
    }
    let layers = tokens
        .iter()
        .enumerate()
        .map(|(index, t)| {
            compact_layer(t, d_model).map_err(|e| match e {
                // Positions matter once parameters do: `layer 2 (…): …`.
                e @ (GenomeError::ParamNotApplicable { primitive, .. }
                | GenomeError::ParamType { primitive, .. }
                | GenomeError::InvalidParam { primitive, .. }) => GenomeError::Layer {
                    index,
                    primitive,
                    source: Box::new(e),
                },
                e => e,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut spec = ArchSpec::new(d_model, layers);
    spec.norm = norm;
    Ok(spec)
}

/// The widest `d<width>:` prefix read (far beyond any searched model; it
/// keeps the accounting's products of the width in range).
const MAX_WIDTH: usize = 65_536;

/// Splits at whitespace, and at commas outside `[…]`.
fn split_tokens(s: &str) -> Result<Vec<String>, GenomeError> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut depth = 0usize;
    for c in s.chars() {
        match c {
            '[' => depth += 1,
            ']' => {
                depth = depth.checked_sub(1).ok_or_else(|| GenomeError::Compact {
                    token: format!("{current}]"),
                    expected: "`]` only after a `[`",
                })?;
            }
            _ => {}
        }
        if (c.is_whitespace() || c == ',') && depth == 0 {
            if !current.is_empty() {
                tokens.push(std::mem::take(&mut current));
            }
        } else {
            current.push(c);
        }
    }
    if depth > 0 {
        return Err(GenomeError::Compact {
            token: current,
            expected: "a `]` closing the parameter list",
        });
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    Ok(tokens)
}

/// `name` or `name[param=value,…]`: the layer with those parameters set.
fn compact_layer(token: &str, d_model: usize) -> Result<Layer, GenomeError> {
    let (name, params) = match token.split_once('[') {
        Some((name, rest)) => {
            let inner = rest.strip_suffix(']').ok_or_else(|| GenomeError::Compact {
                token: token.to_string(),
                expected: "parameters as `name[param=value,…]` with nothing after the `]`",
            })?;
            (name, Some(inner))
        }
        None => (token, None),
    };
    let primitive = name.parse::<Primitive>()?;
    let mut layer = Layer::default_for(primitive);
    let mut seen: Vec<&str> = Vec::new();
    for pair in params.into_iter().flat_map(|p| p.split(',')) {
        let (key, value) = pair.split_once('=').ok_or_else(|| GenomeError::Compact {
            token: token.to_string(),
            expected: "each parameter as `param=value`",
        })?;
        let (key, value) = (key.trim(), value.trim());
        if seen.contains(&key) {
            return Err(GenomeError::Compact {
                token: token.to_string(),
                expected: "each parameter at most once",
            });
        }
        seen.push(key);
        if !primitive.params().contains(&key) {
            return Err(GenomeError::ParamNotApplicable {
                primitive,
                param: key.to_string(),
                expected: primitive.params().join(", "),
            });
        }
        let value = match value.trim_matches('"') {
            v if v.bytes().all(|b| b.is_ascii_digit()) && !v.is_empty() => {
                ParamValue::Int(v.parse().map_err(|_| GenomeError::Compact {
                    token: token.to_string(),
                    expected: "an integer small enough for this machine",
                })?)
            }
            v => ParamValue::Routing(v.parse::<Routing>().map_err(|_| GenomeError::Compact {
                token: token.to_string(),
                expected: "values that are positive integers or a routing (`soft-top2`, `topk`)",
            })?),
        };
        layer.set_param(key, value)?;
        // The name follows some parameters (`attention` with 16 heads is
        // `mh-attention`): the token must build what it names.
        if layer.primitive() != primitive {
            return Err(GenomeError::InvalidParam {
                primitive,
                param: key.to_string(),
                value: value.to_string(),
                expected: format!(
                    "a value that keeps it a `{primitive}` (this makes it a `{}`)",
                    layer.primitive()
                ),
            });
        }
    }
    // Validated like any genome's layer: heads divide the width, etc.
    layer.validate(d_model)?;
    Ok(layer)
}

/// Parses short names separated by `-`.
pub(super) fn parse_short(s: &str) -> Result<Vec<Layer>, GenomeError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(GenomeError::EmptyLayers);
    }
    s.split('-')
        .map(|t| Primitive::from_short(t).map(Layer::default_for))
        .collect()
}

/// Registry names separated by single spaces.
pub(super) fn format_layers(layers: &[Layer]) -> String {
    layers
        .iter()
        .map(|l| l.primitive().name())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Short names separated by `-`.
pub(super) fn format_short(layers: &[Layer]) -> String {
    layers
        .iter()
        .map(|l| l.primitive().short())
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use crate::genome::ArchSpec;

    #[test]
    fn both_forms_round_trip() {
        let spec = ArchSpec::from_layers_str("mh-hyena swiglu mh-attention swiglu").unwrap();
        assert_eq!(spec.short_string(), "mH-Sg-mA-Sg");
        assert_eq!(spec.layers_string(), "mh-hyena swiglu mh-attention swiglu");
        assert_eq!(ArchSpec::from_short_str("mH-Sg-mA-Sg").unwrap(), spec);
        let moe = ArchSpec::from_short_str("He-MoE-Mb-mAlg-M").unwrap();
        assert_eq!(
            moe.layers_string(),
            "hyena-experts moe-mlp mamba mh-gated-linear-attention mlp"
        );
        assert_eq!(
            ArchSpec::from_layers_str("hyena,swiglu")
                .unwrap()
                .short_string(),
            "H-Sg"
        );
    }

    #[test]
    fn bad_strings_are_named() {
        let err = ArchSpec::from_layers_str("mh-hyena swiglo")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("unknown primitive `swiglo`"), "{err}");
        let err = ArchSpec::from_short_str("mH-Sx").unwrap_err().to_string();
        assert!(err.starts_with("unknown short layer name `Sx`"), "{err}");
        assert!(ArchSpec::from_layers_str("  ").is_err());
    }

    #[test]
    fn the_compact_form_parses_back_to_the_same_genome() {
        use crate::genome::{Norm, ParamValue};
        let mut spec =
            ArchSpec::from_layers_str("mh-attention swiglu moe-mlp mamba2 hyena swiglu").unwrap();
        spec.d_model = 64;
        spec.norm = Norm::Layer;
        spec.layers[0]
            .set_param("n_heads", ParamValue::Int(8))
            .unwrap();
        spec.layers[0]
            .set_param("kv_heads", ParamValue::Int(2))
            .unwrap();
        spec.layers[2]
            .set_param("routing", ParamValue::Routing(crate::genome::Routing::TopK))
            .unwrap();
        spec.layers[4]
            .set_param("filter_order", ParamValue::Int(4))
            .unwrap();
        let text = spec.compact_string();
        assert!(
            text.starts_with("d64: mh-attention[n_heads=8,kv_heads=2]"),
            "{text}"
        );
        assert!(text.ends_with("(norm=layer)"), "{text}");
        let back = ArchSpec::from_compact_str(&text).unwrap();
        assert_eq!(back.arch_id(), spec.arch_id(), "{text}");
        // Spaces inside the brackets are read past (a pasted, quoted value).
        assert_eq!(
            ArchSpec::from_compact_str("mh-attention[n_heads=8, kv_heads=2] swiglu")
                .unwrap()
                .arch_id(),
            ArchSpec::from_compact_str("mh-attention[n_heads=8,kv_heads=2] swiglu")
                .unwrap()
                .arch_id()
        );
        // Without extras it is the `--layers` form, commas included.
        assert_eq!(
            ArchSpec::from_compact_str("hyena,swiglu").unwrap(),
            ArchSpec::from_layers_str("hyena swiglu").unwrap()
        );
    }

    #[test]
    fn bad_compact_tokens_are_named() {
        let err = |s: &str| ArchSpec::from_compact_str(s).unwrap_err().to_string();
        assert!(err("mh-attention[kv_heads=4 swiglu").contains("a `]` closing"));
        assert!(err("mh-attention]").contains("only after a `[`"));
        assert!(err("mh-attention[kv_heads] swiglu").contains("`param=value`"));
        assert!(err("mh-attention[kv_heads=x] swiglu").contains("positive integers or a routing"));
        assert!(err("mh-attention[kv_heads=4]x swiglu").contains("nothing after the `]`"));
        assert!(err("mh-attention[window=4] swiglu").contains("has no parameter `window`"));
        assert!(err("mh-attention[kv_heads=3] swiglu").contains("kv_heads"));
        assert!(err("attention[n_heads=16] swiglu").contains("makes it a `mh-attention`"));
        assert!(err("d0: hyena swiglu").contains("width prefix"));
        assert!(err("d3000000000000000000: hyena swiglu").contains("width prefix"));
        assert!(err("mh-attention[kv_heads=4,kv_heads=2] swiglu").contains("at most once"));
        // Which layer: parameters make positions matter.
        assert!(
            err("hyena swiglu mh-attention[kv_heads=3] swiglu")
                .starts_with("layer 2 (mh-attention)")
        );
        assert!(err("hyena swiglu (norm=batch)").contains("unknown norm `batch`"));
        assert!(err("hyena swiglu (layer)").contains("norm suffix"));
        assert!(err("d64:").contains("empty layers string"));
    }

    #[test]
    fn reference_expressible_only_with_defaults() {
        let mut spec = ArchSpec::from_layers_str("hyena swiglu").unwrap();
        assert!(spec.is_reference_expressible());
        spec.layers[0]
            .set_param("filter_order", crate::genome::ParamValue::Int(8))
            .unwrap();
        assert!(!spec.is_reference_expressible());
    }
}
