//! Errors of the genome: bad names, parameters and layer strings.

use thiserror::Error;

use super::{Primitive, Role};

/// Why a genome or a layer string was rejected. Each variant names the
/// offending item and what was expected.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum GenomeError {
    /// A layer name that is not a registry key.
    #[error("unknown primitive `{name}`; expected one of: {expected}")]
    UnknownPrimitive {
        /// The name given.
        name: String,
        /// The registry names.
        expected: String,
    },
    /// A token of a short run-id string (`mH-Sg`) that names no primitive.
    #[error("unknown short layer name `{name}`; expected one of: {expected}")]
    UnknownShortName {
        /// The token given.
        name: String,
        /// The short names.
        expected: String,
    },
    /// A parameter that this primitive does not take.
    #[error("`{primitive}` has no parameter `{param}`; it takes: {expected}")]
    ParamNotApplicable {
        /// The layer's primitive.
        primitive: Primitive,
        /// The parameter given.
        param: String,
        /// The parameters it takes.
        expected: String,
    },
    /// A parameter value of the wrong type.
    #[error("`{primitive}.{param}` = {value}: expected {expected}")]
    ParamType {
        /// The layer's primitive.
        primitive: Primitive,
        /// The parameter.
        param: String,
        /// The value given.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A parameter value the layer cannot be built with.
    #[error("`{primitive}.{param}` = {value}: expected {expected}")]
    InvalidParam {
        /// The layer's primitive.
        primitive: Primitive,
        /// The parameter.
        param: String,
        /// The value given.
        value: String,
        /// What was expected.
        expected: String,
    },
    /// A genome without layers.
    #[error("a genome needs at least one layer")]
    NoLayers,
    /// A width of zero.
    #[error("d_model must be a positive integer")]
    ZeroWidth,
    /// Layer `index` is invalid; `source` says why.
    #[error("layer {index} ({primitive}): {source}")]
    Layer {
        /// Zero-based position in the layer list.
        index: usize,
        /// Its primitive.
        primitive: Primitive,
        /// The reason.
        #[source]
        source: Box<GenomeError>,
    },
    /// The layer sequence does not form blocks (a sequence mixer followed by
    /// a channel mixer, or a fused block).
    #[error("layer {index} ({primitive}, a {role}) {problem}")]
    Structure {
        /// Zero-based position in the layer list.
        index: usize,
        /// Its primitive.
        primitive: Primitive,
        /// Its role.
        role: Role,
        /// What is wrong there.
        problem: &'static str,
    },
    /// An empty layers string.
    #[error("empty layers string; expected names such as `mh-hyena swiglu mh-attention swiglu`")]
    EmptyLayers,
    /// A token of a compact layer string (`d64: mh-attention[kv_heads=4]
    /// swiglu (norm=layer)`) that does not parse.
    #[error("`{token}`: expected {expected}")]
    Compact {
        /// The token given.
        token: String,
        /// What was expected there.
        expected: &'static str,
    },
    /// An unknown norm name.
    #[error("unknown norm `{0}`; expected `rms` or `layer`")]
    UnknownNorm(String),
}
