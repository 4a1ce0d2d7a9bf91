//! Named architectures seeded into a search (design §5 "warm start"):
//! `search_spaces/paper-baselines.toml` lists the paper's, each as a layer
//! string or a full genome; a search-space file may list its own in
//! `[[baseline]]` entries, which then replace the paper's.

use std::path::Path;

use serde::Deserialize;

use super::error::{Location, SpaceError};
use crate::genome::ArchSpec;

/// The baselines shipped with the binary.
pub const PAPER_BASELINES: &str = include_str!("../../search_spaces/paper-baselines.toml");
const PAPER_BASELINES_NAME: &str = "<embedded>/search_spaces/paper-baselines.toml";

/// One named architecture.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Baseline {
    /// Display name, e.g. "Striped MH Hyena + SwiGLU".
    pub name: String,
    /// Where the architecture comes from.
    pub source: String,
    /// The genome.
    pub genome: ArchSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    baseline: Vec<toml::Spanned<Entry>>,
}

/// A search-space file's `[[baseline]]` entries (its other tables are the
/// space parser's).
#[derive(Deserialize)]
struct InSpace {
    #[serde(default)]
    baseline: Vec<toml::Spanned<Entry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    #[serde(default)]
    source: String,
    layers: Option<String>,
    genome: Option<ArchSpec>,
}

impl Baseline {
    /// Reads a baselines file.
    ///
    /// # Errors
    /// [`SpaceError`] naming the file, line and entry.
    pub fn load(path: &Path) -> Result<Vec<Baseline>, SpaceError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpaceError::Io {
            file: path.to_path_buf(),
            source,
        })?;
        Baseline::parse(path, &text)
    }

    /// The paper's baselines, embedded in the binary.
    pub fn embedded() -> Vec<Baseline> {
        Baseline::parse(Path::new(PAPER_BASELINES_NAME), PAPER_BASELINES)
            .expect("the embedded baselines are validated by the test suite")
    }

    /// Parses a baselines file's text.
    ///
    /// # Errors
    /// [`SpaceError`] naming the file, line and entry.
    pub fn parse(file: &Path, text: &str) -> Result<Vec<Baseline>, SpaceError> {
        let parsed: File = toml::from_str(text).map_err(|e| SpaceError::Syntax {
            at: Location::of(file, text, e.span().map_or(0, |s| s.start)),
            message: e.message().trim().to_string(),
        })?;
        Ok(entries(file, text, parsed.baseline)?
            .into_iter()
            .map(|(b, _)| b)
            .collect())
    }

    /// The `[[baseline]]` entries of a search-space file, each with where
    /// it starts (for errors found later, against the space).
    ///
    /// # Errors
    /// [`SpaceError`] naming the file, line and entry.
    pub(super) fn in_space(
        file: &Path,
        text: &str,
    ) -> Result<Vec<(Baseline, Location)>, SpaceError> {
        let parsed: InSpace = toml::from_str(text).map_err(|e| SpaceError::Syntax {
            at: Location::of(file, text, e.span().map_or(0, |s| s.start)),
            message: e.message().trim().to_string(),
        })?;
        entries(file, text, parsed.baseline)
    }
}

/// Validates entries: one genome each, valid, names and models distinct.
fn entries(
    file: &Path,
    text: &str,
    list: Vec<toml::Spanned<Entry>>,
) -> Result<Vec<(Baseline, Location)>, SpaceError> {
    let mut out: Vec<(Baseline, Location)> = Vec::new();
    for (i, entry) in list.into_iter().enumerate() {
        let at = Location::of(file, text, entry.span().start);
        let field = format!("baseline[{i}]");
        let err = |message: String| SpaceError::Field {
            at: at.clone(),
            field: field.clone(),
            message,
        };
        let e = entry.into_inner();
        let genome = match (e.layers, e.genome) {
            (Some(layers), None) => ArchSpec::from_compact_str(&layers)
                .map_err(|x| err(format!("`{}`: {x}", e.name)))?,
            (None, Some(genome)) => genome,
            _ => {
                return Err(err(format!(
                    "`{}`: expected exactly one of `layers` (a layer string, parameters in brackets allowed) or `genome` (a table)",
                    e.name
                )));
            }
        };
        genome
            .validate()
            .map_err(|x| err(format!("`{}`: {x}", e.name)))?;
        if out.iter().any(|(b, _)| b.name == e.name) {
            return Err(err(format!("the name `{}` is used twice", e.name)));
        }
        if let Some((b, _)) = out
            .iter()
            .find(|(b, _)| b.genome.arch_id() == genome.arch_id())
        {
            return Err(err(format!(
                "`{}` builds the same model as `{}`",
                e.name, b.name
            )));
        }
        out.push((
            Baseline {
                name: e.name,
                source: e.source,
                genome,
            },
            at,
        ));
    }
    Ok(out)
}
