//! Data sets in the reference implementation's on-disk layout:
//! `<root>/<setting dir>/{train,test}/{inputs,targets}.npy`, each a 2-D
//! little-endian int64 array (`N × T`), so that users holding the reference's
//! published benchmark data can evaluate on exactly those sequences.
//!
//! Only what that layout needs of the `.npy` format is implemented: format
//! versions 1.0–3.0, C order, integer dtypes `<i8`, `<i4`, `<i2`, `|i1`
//! (read), `<i8` (written).

use std::fs;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::{Dataset, TaskSetting};

/// Why a `.npy` file or a data directory could not be used.
#[derive(Debug, Error)]
pub enum NpyError {
    /// Reading or writing failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a `.npy` array mad-search can read.
    #[error("{}: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, and what was expected.
        message: String,
    },
}

const MAGIC: &[u8] = b"\x93NUMPY";

fn format_error(path: &Path, message: impl Into<String>) -> NpyError {
    NpyError::Format {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Writes `data` (`rows × cols`, row-major) as a version-1.0 `<i8` array.
///
/// # Errors
/// [`NpyError::Io`] naming the file.
pub fn write_i64(path: &Path, data: &[i64], rows: usize, cols: usize) -> Result<(), NpyError> {
    assert_eq!(data.len(), rows * cols, "data does not match its shape");
    let mut header =
        format!("{{'descr': '<i8', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + data.len() * 8);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&[1, 0]);
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    fs::write(path, bytes).map_err(|source| NpyError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a 2-D integer array as `(data, rows, cols)`.
///
/// # Errors
/// [`NpyError`] naming the file and what was wrong with it.
pub fn read_i64(path: &Path) -> Result<(Vec<i64>, usize, usize), NpyError> {
    let bytes = fs::read(path).map_err(|source| NpyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(format_error(path, "not a .npy file (bad magic string)"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => {
            return Err(format_error(
                path,
                format!("unsupported .npy version {v}; expected 1, 2 or 3"),
            ));
        }
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| format_error(path, "truncated or non-text header"))?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}':"))? + key.len() + 3;
        Some(header[at..].trim_start())
    };
    let descr = field("descr")
        .and_then(|r| r.strip_prefix('\'')?.split('\'').next())
        .ok_or_else(|| format_error(path, "header has no 'descr'"))?;
    let width = match descr {
        "<i8" => 8,
        "<i4" => 4,
        "<i2" => 2,
        "|i1" => 1,
        other => {
            return Err(format_error(
                path,
                format!(
                    "dtype {other} is not supported; expected little-endian integers (<i8, <i4, <i2, |i1)"
                ),
            ));
        }
    };
    if field("fortran_order").is_some_and(|r| r.starts_with("True")) {
        return Err(format_error(
            path,
            "Fortran-ordered arrays are not supported; save in C order",
        ));
    }
    let shape: Vec<usize> = field("shape")
        .and_then(|r| r.strip_prefix('(')?.split(')').next())
        .map(|s| {
            s.split(',')
                .filter(|p| !p.trim().is_empty())
                .map(|p| p.trim().parse())
                .collect()
        })
        .transpose()
        .ok()
        .flatten()
        .ok_or_else(|| format_error(path, "header has no readable 'shape'"))?;
    let [rows, cols] = shape[..] else {
        return Err(format_error(
            path,
            format!("expected a 2-D array (N, T), found shape {shape:?}"),
        ));
    };
    let body = &bytes[start + header_len..];
    if body.len() != rows * cols * width {
        return Err(format_error(
            path,
            format!(
                "{} data bytes for shape ({rows}, {cols}) of {descr}; expected {}",
                body.len(),
                rows * cols * width
            ),
        ));
    }
    let data = body
        .chunks_exact(width)
        .map(|c| match width {
            8 => i64::from_le_bytes(c.try_into().expect("8 bytes")),
            4 => i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64,
            2 => i16::from_le_bytes(c.try_into().expect("2 bytes")) as i64,
            _ => c[0] as i8 as i64,
        })
        .collect();
    Ok((data, rows, cols))
}

impl Dataset {
    /// Writes `inputs.npy` and `targets.npy` into `dir` (created if needed).
    ///
    /// # Errors
    /// [`NpyError::Io`] naming the file.
    pub fn save_npy(&self, dir: &Path) -> Result<(), NpyError> {
        fs::create_dir_all(dir).map_err(|source| NpyError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        write_i64(&dir.join("inputs.npy"), &self.inputs, self.n, self.len)?;
        write_i64(&dir.join("targets.npy"), &self.targets, self.n, self.len)
    }

    /// Reads `inputs.npy` and `targets.npy` from `dir`.
    ///
    /// # Errors
    /// [`NpyError`] naming the file; also when the two shapes differ.
    pub fn load_npy(dir: &Path) -> Result<Dataset, NpyError> {
        let (inputs, n, len) = read_i64(&dir.join("inputs.npy"))?;
        let targets_path = dir.join("targets.npy");
        let (targets, tn, tlen) = read_i64(&targets_path)?;
        if (tn, tlen) != (n, len) {
            return Err(format_error(
                &targets_path,
                format!("shape ({tn}, {tlen}) differs from inputs.npy's ({n}, {len})"),
            ));
        }
        Ok(Dataset {
            inputs,
            targets,
            n,
            len,
        })
    }
}

impl TaskSetting {
    /// `<root>/<reference dir name>`: where this setting's data live.
    pub fn data_dir(&self, root: &Path) -> PathBuf {
        root.join(self.reference_dir_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::TaskKind;

    #[test]
    fn round_trip_in_the_reference_layout() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = TaskSetting::baseline(TaskKind::InContextRecall);
        s.num_train = 7;
        s.num_test = 5;
        s.num_valid = 0;
        let splits = s.generate().unwrap();
        let root = s.data_dir(dir.path());
        splits.train.save_npy(&root.join("train")).unwrap();
        splits.test.save_npy(&root.join("test")).unwrap();
        assert_eq!(
            Dataset::load_npy(&root.join("train")).unwrap(),
            splits.train
        );
        assert_eq!(Dataset::load_npy(&root.join("test")).unwrap(), splits.test);
        let bytes = fs::read(root.join("test/inputs.npy")).unwrap();
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        assert!(
            std::str::from_utf8(&bytes[10..10 + header_len])
                .unwrap()
                .contains("'shape': (5, 127)")
        );
    }

    #[test]
    fn bad_files_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        fs::write(&p, b"hello").unwrap();
        let err = read_i64(&p).unwrap_err().to_string();
        assert!(
            err.ends_with("x.npy: not a .npy file (bad magic string)"),
            "{err}"
        );
        write_i64(&p, &[1, 2, 3, 4, 5, 6], 2, 3).unwrap();
        let mut bytes = fs::read(&p).unwrap();
        bytes.truncate(bytes.len() - 8);
        fs::write(&p, &bytes).unwrap();
        let err = read_i64(&p).unwrap_err().to_string();
        assert!(
            err.contains("40 data bytes for shape (2, 3) of <i8; expected 48"),
            "{err}"
        );
        let f = dir.path().join("f.npy");
        write_i64(&f, &[1, 2], 1, 2).unwrap();
        let mut patched = fs::read(&f).unwrap();
        let at = patched.windows(3).position(|w| w == b"<i8").unwrap();
        patched[at + 1] = b'f';
        fs::write(&f, patched).unwrap();
        assert!(
            read_i64(&f)
                .unwrap_err()
                .to_string()
                .contains("dtype <f8 is not supported")
        );
        assert!(matches!(
            read_i64(&dir.path().join("missing.npy")),
            Err(NpyError::Io { .. })
        ));
    }
}
