//! A thin walker over toml's spanned document tree that keeps the dotted
//! path and the byte span of every value, so each error can name the file,
//! line and field it is about.

use std::ops::Range;
use std::path::Path;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::error::{Location, SpaceError};

/// The file being read.
#[derive(Clone, Copy)]
pub(super) struct Doc<'a> {
    pub file: &'a Path,
    pub text: &'a str,
}

impl Doc<'_> {
    pub fn error(
        &self,
        span: &Range<usize>,
        field: &str,
        message: impl Into<String>,
    ) -> SpaceError {
        SpaceError::Field {
            at: Location::of(self.file, self.text, span.start),
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// A value with its path.
#[derive(Clone)]
pub(super) struct Val<'a, 'i> {
    pub doc: Doc<'a>,
    pub path: String,
    pub v: &'a Spanned<DeValue<'i>>,
}

pub(super) type R<T> = Result<T, SpaceError>;

impl<'a, 'i> Val<'a, 'i> {
    pub fn span(&self) -> Range<usize> {
        self.v.span()
    }

    pub fn error(&self, message: impl Into<String>) -> SpaceError {
        self.doc.error(&self.span(), &self.path, message)
    }

    fn type_error(&self, expected: &str) -> SpaceError {
        self.error(format!(
            "expected {expected}, found {}",
            describe(self.v.get_ref())
        ))
    }

    /// A non-negative integer.
    pub fn uint(&self) -> R<u64> {
        match self.v.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .and_then(|n| u64::try_from(n).ok())
                .ok_or_else(|| {
                    self.error(format!(
                        "expected a non-negative integer, found {}",
                        i.as_str()
                    ))
                }),
            _ => Err(self.type_error("a non-negative integer")),
        }
    }

    /// A positive integer that fits `usize`.
    pub fn positive(&self) -> R<usize> {
        let n = self.uint()?;
        if n == 0 {
            return Err(self.error("expected a positive integer, found 0"));
        }
        usize::try_from(n).map_err(|_| self.error(format!("{n} is too large")))
    }

    /// A finite number (integers accepted).
    pub fn number(&self) -> R<f64> {
        let x = match self.v.get_ref() {
            DeValue::Float(f) => f
                .as_str()
                .replace('_', "")
                .parse::<f64>()
                .map_err(|_| self.type_error("a number"))?,
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .map_err(|_| self.type_error("a number"))?
                as f64,
            _ => return Err(self.type_error("a number")),
        };
        if !x.is_finite() {
            return Err(self.error(format!("expected a finite number, found {x}")));
        }
        Ok(x)
    }

    pub fn boolean(&self) -> R<bool> {
        match self.v.get_ref() {
            DeValue::Boolean(b) => Ok(*b),
            _ => Err(self.type_error("true or false")),
        }
    }

    pub fn string(&self) -> R<&'a str> {
        match self.v.get_ref() {
            DeValue::String(s) => Ok(s.as_ref()),
            _ => Err(self.type_error("a string")),
        }
    }

    /// The elements of an array, each with its indexed path.
    pub fn array(&self) -> R<Vec<(String, &'a Spanned<DeValue<'i>>)>> {
        match self.v.get_ref() {
            DeValue::Array(a) => Ok(a
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("{}[{i}]", self.path), v))
                .collect()),
            _ => Err(self.type_error("an array")),
        }
    }

    /// A non-empty array, or a single value read as a one-element list.
    pub fn list<T>(&self, each: impl Fn(&Val<'a, 'i>) -> R<T>) -> R<Vec<T>> {
        if let DeValue::Array(_) = self.v.get_ref() {
            let items = self.array()?;
            if items.is_empty() {
                return Err(self.error("expected at least one value, found an empty list"));
            }
            items
                .into_iter()
                .map(|(path, v)| {
                    each(&Val {
                        doc: self.doc,
                        path,
                        v,
                    })
                })
                .collect()
        } else {
            Ok(vec![each(self)?])
        }
    }

    pub fn table(&self) -> R<Table<'a, 'i>> {
        match self.v.get_ref() {
            DeValue::Table(t) => Ok(Table {
                doc: self.doc,
                path: self.path.clone(),
                span: self.span(),
                t,
            }),
            _ => Err(self.type_error("a table")),
        }
    }
}

fn describe(v: &DeValue<'_>) -> String {
    match v {
        DeValue::String(s) => format!("the string \"{s}\""),
        DeValue::Integer(i) => format!("the integer {}", i.as_str()),
        DeValue::Float(f) => format!("the number {}", f.as_str()),
        DeValue::Boolean(b) => format!("{b}"),
        DeValue::Datetime(d) => format!("the datetime {d}"),
        DeValue::Array(_) => "an array".into(),
        DeValue::Table(_) => "a table".into(),
    }
}

/// A table with its path and span.
pub(super) struct Table<'a, 'i> {
    pub doc: Doc<'a>,
    pub path: String,
    pub span: Range<usize>,
    pub t: &'a DeTable<'i>,
}

impl<'a, 'i> Table<'a, 'i> {
    pub fn root(doc: Doc<'a>, t: &'a Spanned<DeTable<'i>>) -> Table<'a, 'i> {
        Table {
            doc,
            path: String::new(),
            span: 0..0,
            t: t.get_ref(),
        }
    }

    pub fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub fn error(&self, message: impl Into<String>) -> SpaceError {
        let field = if self.path.is_empty() {
            "(top level)"
        } else {
            &self.path
        };
        self.doc.error(&self.span, field, message)
    }

    /// Rejects keys outside `allowed`, naming the first unknown one.
    pub fn only(&self, allowed: &[&str]) -> R<()> {
        for (k, _) in self.t.iter() {
            if !allowed.contains(&k.get_ref().as_ref()) {
                return Err(self.doc.error(
                    &k.span(),
                    &self.child_path(k.get_ref()),
                    format!("unknown key; expected one of: {}", allowed.join(", ")),
                ));
            }
        }
        Ok(())
    }

    /// The entries, in file order of keys (the map is sorted by key).
    pub fn entries(
        &self,
    ) -> Vec<(
        &'a Spanned<toml::de::DeString<'i>>,
        &'a Spanned<DeValue<'i>>,
    )> {
        let mut v: Vec<_> = self.t.iter().collect();
        v.sort_by_key(|(k, _)| k.span().start);
        v
    }

    /// The value at `key`, if present.
    pub fn val(&self, key: &str) -> Option<Val<'a, 'i>> {
        self.t
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map(|(_, v)| Val {
                doc: self.doc,
                path: self.child_path(key),
                v,
            })
    }

    pub fn get<T>(&self, key: &str, f: impl FnOnce(&Val<'a, 'i>) -> R<T>) -> R<Option<T>> {
        self.val(key).map(|v| f(&v)).transpose()
    }

    pub fn req<T>(&self, key: &str, what: &str, f: impl FnOnce(&Val<'a, 'i>) -> R<T>) -> R<T> {
        self.get(key, f)?.ok_or_else(|| {
            self.doc.error(
                &self.span,
                &self.child_path(key),
                format!("missing; expected {what}"),
            )
        })
    }

    /// The span of `key`'s value, or the table's own span.
    pub fn span_of(&self, key: &str) -> Range<usize> {
        self.t
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map_or(self.span.clone(), |(_, v)| v.span())
    }
}
