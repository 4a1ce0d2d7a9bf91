//! Errors of the search-space grammar. Every error about a file names the
//! file, the line and column, and the dotted field, and says what was expected.

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

/// A place in a search-space file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file, as given.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
}

impl Location {
    /// The location of byte offset `offset` in `text`.
    pub fn of(file: &std::path::Path, text: &str, offset: usize) -> Location {
        let offset = offset.min(text.len());
        let before = &text[..text.floor_char_boundary(offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Location {
            file: file.to_path_buf(),
            line,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// Why a search space was rejected, or why it could not produce a genome.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SpaceError {
    /// The file could not be read.
    #[error("{}: cannot read the search space", file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{at}: invalid TOML: {message}")]
    Syntax {
        /// Where.
        at: Location,
        /// The parser's message.
        message: String,
    },
    /// A field is missing, unknown, of the wrong type, out of range, or
    /// contradicts another field.
    #[error("{at}: {field}: {message}")]
    Field {
        /// Where.
        at: Location,
        /// Dotted path, e.g. `primitives.mh-attention.n_heads`.
        field: String,
        /// What is wrong and what was expected.
        message: String,
    },
    /// The sampler found no genome satisfying the grammar and the budgets.
    #[error("{message}")]
    Exhausted {
        /// What was tried.
        message: String,
    },
}

impl SpaceError {
    /// The location, for errors about a place in the file.
    pub fn location(&self) -> Option<&Location> {
        match self {
            SpaceError::Syntax { at, .. } | SpaceError::Field { at, .. } => Some(at),
            _ => None,
        }
    }
}
