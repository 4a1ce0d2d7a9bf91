//! Language-modelling corpora for the `scale` stage: a UTF-8 text file read
//! as bytes (vocabulary 256), or a flat little-endian `u16` token file (the
//! common `train.bin` layout, recognised by its `.bin` extension). The last
//! [`VALID_FRACTION`] of the tokens (at least [`MIN_VALID`]) is held out for
//! validation; training windows never reach into it.

use std::path::{Path, PathBuf};

use rand::{Rng, RngExt};

/// The default corpus, embedded: State of the Union addresses 1946–2021
/// (public domain; `corpora/sotu/README.md`).
pub const DEFAULT_CORPUS: &str = include_str!("../../corpora/sotu/sotu-1946-2021.txt");

/// Name of the embedded corpus in reports and errors.
pub const DEFAULT_CORPUS_NAME: &str = "<embedded: corpora/sotu/sotu-1946-2021.txt>";

/// Share of the tokens held out for validation.
pub const VALID_FRACTION: f64 = 0.05;

/// Fewest validation tokens.
pub const MIN_VALID: usize = 4096;

/// Why a corpus cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    /// The file cannot be read.
    #[error("cannot read the corpus {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No tokens.
    #[error("the corpus {path} is empty; give a text file or a `.bin` of u16 tokens")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A text corpus that is not UTF-8.
    #[error(
        "the corpus {path} is not UTF-8 text (invalid byte at offset {offset}); give UTF-8 text, \
         or a flat little-endian u16 token file named `*.bin`"
    )]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// Byte offset of the first invalid sequence.
        offset: usize,
    },
    /// A `.bin` of odd length.
    #[error(
        "the token file {path} has {len} bytes, not a whole number of little-endian u16 tokens"
    )]
    OddLength {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// Too few tokens for what was asked.
    #[error(
        "the corpus {name} has {have} training tokens, fewer than the {need} a run needs \
         ({what}); give a larger corpus (`--corpus`) or smaller compute budgets"
    )]
    TooSmall {
        /// The corpus.
        name: String,
        /// Training tokens it has.
        have: usize,
        /// Tokens needed.
        need: usize,
        /// What needs them.
        what: String,
    },
}

/// A tokenised corpus with its validation split.
#[derive(Clone, Debug)]
pub struct Corpus {
    name: String,
    tokens: Vec<u16>,
    vocab: usize,
    bytes: bool,
    valid_start: usize,
}

impl Corpus {
    /// The embedded default corpus.
    pub fn embedded() -> Corpus {
        Corpus::from_tokens(
            DEFAULT_CORPUS_NAME.into(),
            DEFAULT_CORPUS.bytes().map(u16::from).collect(),
            256,
            true,
        )
    }

    /// Loads `path`: `*.bin` as little-endian u16 tokens (vocabulary: the
    /// largest token + 1), anything else as UTF-8 text read as bytes.
    ///
    /// # Errors
    /// Unreadable, empty, not UTF-8, or a `.bin` of odd length.
    pub fn load(path: &Path) -> Result<Corpus, CorpusError> {
        let raw = std::fs::read(path).map_err(|source| CorpusError::Read {
            path: path.to_owned(),
            source,
        })?;
        let name = path.display().to_string();
        let empty = || CorpusError::Empty {
            path: path.to_owned(),
        };
        if raw.is_empty() {
            return Err(empty());
        }
        if path.extension().is_some_and(|e| e == "bin") {
            if raw.len() % 2 != 0 {
                return Err(CorpusError::OddLength {
                    path: path.to_owned(),
                    len: raw.len(),
                });
            }
            let tokens: Vec<u16> = raw
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            let vocab = tokens
                .iter()
                .copied()
                .max()
                .map_or(1, |m| usize::from(m) + 1);
            return Ok(Corpus::from_tokens(name, tokens, vocab, false));
        }
        if let Err(e) = std::str::from_utf8(&raw) {
            return Err(CorpusError::NotUtf8 {
                path: path.to_owned(),
                offset: e.valid_up_to(),
            });
        }
        Ok(Corpus::from_tokens(
            name,
            raw.into_iter().map(u16::from).collect(),
            256,
            true,
        ))
    }

    fn from_tokens(name: String, tokens: Vec<u16>, vocab: usize, bytes: bool) -> Corpus {
        let n = tokens.len();
        let valid = ((n as f64 * VALID_FRACTION) as usize)
            .max(MIN_VALID)
            .min(n / 2);
        Corpus {
            name,
            valid_start: n - valid,
            tokens,
            vocab,
            bytes,
        }
    }

    /// A hash of its tokens and vocabulary (hex): a worker process that
    /// loads the corpus again checks it is the one the search started with.
    pub fn fingerprint(&self) -> String {
        let mut h = blake3::Hasher::new();
        h.update(&(self.vocab as u64).to_le_bytes());
        for t in &self.tokens {
            h.update(&t.to_le_bytes());
        }
        h.finalize().to_hex()[..16].to_string()
    }

    /// Where it came from.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Vocabulary size (256 for text).
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// Whether tokens are bytes of text (losses then convert to bits per byte).
    pub fn is_bytes(&self) -> bool {
        self.bytes
    }

    /// Training tokens.
    pub fn train(&self) -> &[u16] {
        &self.tokens[..self.valid_start]
    }

    /// Held-out tokens.
    pub fn valid(&self) -> &[u16] {
        &self.tokens[self.valid_start..]
    }

    /// Checks that a run can read `tokens` training tokens without
    /// repeating any, and that validation holds at least one window of
    /// `seq_len + 1` tokens.
    ///
    /// # Errors
    /// [`CorpusError::TooSmall`], naming `what` asked.
    pub fn check(&self, tokens: usize, seq_len: usize, what: &str) -> Result<(), CorpusError> {
        let too_small = |have, need| CorpusError::TooSmall {
            name: self.name.clone(),
            have,
            need,
            what: what.to_string(),
        };
        if self.train().len() < tokens.max(seq_len + 1) {
            return Err(too_small(self.train().len(), tokens.max(seq_len + 1)));
        }
        if self.valid().len() < seq_len + 1 {
            return Err(too_small(self.valid().len(), seq_len + 1));
        }
        Ok(())
    }

    /// A training batch: `batch` windows of `seq_len + 1` tokens starting at
    /// uniform offsets of the training split, row-major `[batch, seq_len + 1]`.
    pub fn train_batch<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        batch: usize,
        seq_len: usize,
    ) -> Vec<u16> {
        let train = self.train();
        let span = seq_len + 1;
        let last = train.len().saturating_sub(span);
        let mut out = Vec::with_capacity(batch * span);
        for _ in 0..batch {
            let at = rng.random_range(0..=last);
            out.extend_from_slice(&train[at..at + span]);
        }
        out
    }

    /// The validation windows: consecutive, non-overlapping windows of
    /// `seq_len + 1` tokens (each shares its last token with the next one's
    /// first), at most `max_windows`, row-major.
    pub fn valid_windows(&self, seq_len: usize, max_windows: usize) -> Vec<u16> {
        let valid = self.valid();
        let mut out = Vec::new();
        let mut at = 0;
        while at + seq_len < valid.len() && out.len() < max_windows * (seq_len + 1) {
            out.extend_from_slice(&valid[at..=at + seq_len]);
            at += seq_len;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_embedded_corpus_is_text_with_a_held_out_tail() {
        let c = Corpus::embedded();
        assert_eq!(c.vocab(), 256);
        assert!(c.is_bytes());
        assert_eq!(c.train().len() + c.valid().len(), DEFAULT_CORPUS.len());
        assert!(c.valid().len() >= MIN_VALID);
        assert!(c.train().len() > 2_000_000, "a few MB of text");
        assert!(DEFAULT_CORPUS.starts_with("To the Congress"));
    }

    #[test]
    fn batches_never_reach_into_validation() {
        let text: String = (0..20_000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let c = Corpus::from_tokens("t".into(), text.bytes().map(u16::from).collect(), 256, true);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let b = c.train_batch(&mut rng, 64, 32);
        assert_eq!(b.len(), 64 * 33);
        // Every window is a contiguous run of the training split.
        for w in b.chunks(33) {
            let starts: Vec<usize> = (0..=c.train().len() - 33)
                .filter(|&i| c.train()[i..i + 33] == *w)
                .collect();
            assert!(!starts.is_empty());
        }
        let v = c.valid_windows(32, 1000);
        assert_eq!(v.len() % 33, 0);
        assert_eq!(v.len() / 33, (c.valid().len() - 1) / 32);
        assert_eq!(&v[..33], &c.valid()[..33]);
    }

    #[test]
    fn bad_files_get_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.txt");
        assert!(matches!(
            Corpus::load(&missing),
            Err(CorpusError::Read { .. })
        ));
        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, b"").unwrap();
        let e = Corpus::load(&empty).unwrap_err();
        assert!(e.to_string().contains("empty.txt") && e.to_string().contains("empty"));
        let latin1 = dir.path().join("latin1.txt");
        std::fs::write(&latin1, b"caf\xe9 au lait").unwrap();
        let e = Corpus::load(&latin1).unwrap_err();
        assert!(matches!(e, CorpusError::NotUtf8 { offset: 3, .. }), "{e}");
        let odd = dir.path().join("train.bin");
        std::fs::write(&odd, [1u8, 0, 2]).unwrap();
        assert!(matches!(
            Corpus::load(&odd),
            Err(CorpusError::OddLength { len: 3, .. })
        ));
        let small = Corpus::embedded();
        let e = small
            .check(10_000_000, 128, "budget 1e12 at 3M parameters")
            .unwrap_err();
        assert!(
            e.to_string().contains("1e12") && e.to_string().contains("--corpus"),
            "{e}"
        );
        small.check(100_000, 128, "x").unwrap();
    }

    #[test]
    fn token_files_are_little_endian_u16() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("train.bin");
        let tokens: Vec<u16> = (0..6_000u16).map(|i| i % 1000 + 1).collect();
        let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        std::fs::write(&p, bytes).unwrap();
        let c = Corpus::load(&p).unwrap();
        assert!(!c.is_bytes());
        assert_eq!(c.vocab(), 1001);
        assert_eq!(c.train().len() + c.valid().len(), 6_000);
        assert_eq!(c.train()[..3], [1, 2, 3]);
        // At least MIN_VALID tokens are held out, but never over half.
        assert_eq!(c.valid().len(), 3_000);
    }
}
