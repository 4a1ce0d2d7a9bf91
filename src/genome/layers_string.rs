//! The reference implementation's two textual forms of a layer list:
//! the `--layers` form (`mh-hyena swiglu mh-attention swiglu`) and the short
//! run-id form (`mH-Sg-mA-Sg`). Both carry names only; parameters take their
//! defaults when parsed.

use super::{GenomeError, Layer, Primitive};

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
    fn reference_expressible_only_with_defaults() {
        let mut spec = ArchSpec::from_layers_str("hyena swiglu").unwrap();
        assert!(spec.is_reference_expressible());
        spec.layers[0]
            .set_param("filter_order", crate::genome::ParamValue::Int(8))
            .unwrap();
        assert!(!spec.is_reference_expressible());
    }
}
