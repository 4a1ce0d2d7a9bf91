//! The paper's published findings as data (`search_spaces/findings.toml`):
//! claims about how architectures rank on the MAD tasks, checked against a
//! calibration's scores. A screen whose scores break them does not measure
//! what MAD measures. Users add their own findings in the same format.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::genome::{ArchId, ArchSpec, Primitive};
use crate::space::{Baseline, Location};
use crate::tasks::TaskKind;

/// The findings shipped with the binary.
pub const PAPER_FINDINGS: &str = include_str!("../../search_spaces/findings.toml");
const PAPER_FINDINGS_NAME: &str = "<embedded>/search_spaces/findings.toml";

/// Why a findings file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum FindingsError {
    /// The file could not be read.
    #[error("{}: cannot read the findings file", file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, or a key of the wrong type.
    #[error("{at}: {message}")]
    Syntax {
        /// Where.
        at: Location,
        /// The parser's message.
        message: String,
    },
    /// A finding that cannot be checked as written.
    #[error("{at}: {field}: {message}")]
    Field {
        /// Where (the finding's table).
        at: Location,
        /// `finding[i]` and the key.
        field: String,
        /// What is wrong and what was expected.
        message: String,
    },
}

/// What a finding compares: one task's score or the MAD score (mean of tasks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// One task's score.
    Task(TaskKind),
    /// The mean of the task scores.
    Score,
}

impl Metric {
    fn parse(s: &str) -> Result<Metric, String> {
        if s == "score" {
            return Ok(Metric::Score);
        }
        s.parse::<TaskKind>()
            .map(Metric::Task)
            .map_err(|e| format!("{e}, or `score` (the MAD score)"))
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Metric::Task(t) => f.write_str(t.name()),
            Metric::Score => f.write_str("MAD score"),
        }
    }
}

/// An architecture named in a finding: a baseline's name or a layer string.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchRef {
    /// As written in the file.
    pub text: String,
    /// The genome it names.
    pub spec: ArchSpec,
}

/// Which architectures a finding is about.
#[derive(Clone, Debug, PartialEq)]
pub enum Select {
    /// Every architecture calibrated.
    All,
    /// Those with at least one layer of these primitives.
    WithPrimitive(Vec<Primitive>),
    /// These architectures.
    Archs(Vec<ArchRef>),
}

/// What a finding claims.
#[derive(Clone, Debug, PartialEq)]
pub enum Claim {
    /// Every selected architecture scores at least `value` on every metric.
    AtLeast {
        /// The architectures.
        select: Select,
        /// The metrics.
        on: Vec<Metric>,
        /// The floor.
        value: f64,
    },
    /// In each pair the first architecture scores above the second on every metric.
    Beats {
        /// `(better, worse)`.
        pairs: Vec<(ArchRef, ArchRef)>,
        /// The metrics.
        on: Vec<Metric>,
    },
    /// For every selected architecture, `task` scores lowest of its tasks.
    HardestTask {
        /// The architectures.
        select: Select,
        /// The task.
        task: TaskKind,
    },
    /// `task`'s scores vary least across the architectures (smallest
    /// standard deviation of the six tasks').
    LeastSpread {
        /// The task.
        task: TaskKind,
    },
}

/// One finding.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    /// Short name, shown in the table.
    pub name: String,
    /// The claim in words, with its source.
    pub source: String,
    /// What is checked.
    pub claim: Claim,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    finding: Vec<toml::Spanned<Entry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    #[serde(default)]
    source: String,
    kind: String,
    with_primitive: Option<Vec<String>>,
    archs: Option<Vec<String>>,
    on: Option<Vec<String>>,
    value: Option<f64>,
    pairs: Option<Vec<Vec<String>>>,
    task: Option<String>,
}

impl Finding {
    /// Reads a findings file; names resolve against `baselines`.
    ///
    /// # Errors
    /// [`FindingsError`] naming the file, line and finding.
    pub fn load(path: &Path, baselines: &[Baseline]) -> Result<Vec<Finding>, FindingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| FindingsError::Io {
            file: path.to_path_buf(),
            source,
        })?;
        Finding::parse(path, &text, baselines)
    }

    /// The paper's findings, embedded in the binary, against the embedded baselines.
    pub fn embedded() -> Vec<Finding> {
        Finding::parse(
            Path::new(PAPER_FINDINGS_NAME),
            PAPER_FINDINGS,
            &Baseline::embedded(),
        )
        .expect("the embedded findings are validated by the test suite")
    }

    /// Parses a findings file's text.
    ///
    /// # Errors
    /// [`FindingsError`] naming the file, line and finding.
    pub fn parse(
        file: &Path,
        text: &str,
        baselines: &[Baseline],
    ) -> Result<Vec<Finding>, FindingsError> {
        let parsed: File = toml::from_str(text).map_err(|e| FindingsError::Syntax {
            at: Location::of(file, text, e.span().map_or(0, |s| s.start)),
            message: e.message().trim().to_string(),
        })?;
        let mut out: Vec<Finding> = Vec::new();
        for (i, entry) in parsed.finding.into_iter().enumerate() {
            let at = Location::of(file, text, entry.span().start);
            let err = |key: &str, message: String| FindingsError::Field {
                at: at.clone(),
                field: format!("finding[{i}].{key}"),
                message,
            };
            let e = entry.into_inner();
            let arch = |key: &str, s: &str| -> Result<ArchRef, FindingsError> {
                resolve(s, baselines)
                    .map(|spec| ArchRef {
                        text: s.to_string(),
                        spec,
                    })
                    .map_err(|m| err(key, m))
            };
            let metrics =
                |key: &str, v: &Option<Vec<String>>| -> Result<Vec<Metric>, FindingsError> {
                    let v = v.as_ref().filter(|v| !v.is_empty()).ok_or_else(|| {
                        err(key, "missing; expected a list of tasks or `score`".into())
                    })?;
                    v.iter()
                        .map(|s| Metric::parse(s).map_err(|m| err(key, m)))
                        .collect()
                };
            let task = |v: &Option<String>| -> Result<TaskKind, FindingsError> {
                v.as_deref()
                    .ok_or_else(|| err("task", "missing; expected a task name".into()))?
                    .parse::<TaskKind>()
                    .map_err(|m| err("task", m))
            };
            let select = || -> Result<Select, FindingsError> {
                match (&e.with_primitive, &e.archs) {
                    (Some(_), Some(_)) => Err(err(
                        "archs",
                        "give `with_primitive` or `archs`, not both".into(),
                    )),
                    (Some(p), None) if p.is_empty() => Err(err(
                        "with_primitive",
                        "an empty list selects nothing; list primitives or leave the key out (every architecture)".into(),
                    )),
                    (None, Some(a)) if a.is_empty() => Err(err(
                        "archs",
                        "an empty list selects nothing; list architectures or leave the key out (every architecture)".into(),
                    )),
                    (Some(p), None) => p
                        .iter()
                        .map(|s| s.parse::<Primitive>().map_err(|m| err("with_primitive", m.to_string())))
                        .collect::<Result<_, _>>()
                        .map(Select::WithPrimitive),
                    (None, Some(a)) => a
                        .iter()
                        .map(|s| arch("archs", s))
                        .collect::<Result<_, _>>()
                        .map(Select::Archs),
                    (None, None) => Ok(Select::All),
                }
            };
            // Keys a kind does not read are mistakes, not silently ignored.
            let unused = |keys: &[(&str, bool)]| -> Result<(), FindingsError> {
                match keys.iter().find(|(_, set)| *set) {
                    Some((k, _)) => Err(err(
                        k,
                        format!("not used by a finding of kind `{}`", e.kind),
                    )),
                    None => Ok(()),
                }
            };
            let claim = match e.kind.as_str() {
                "at-least" => {
                    unused(&[("pairs", e.pairs.is_some()), ("task", e.task.is_some())])?;
                    let value = e.value.ok_or_else(|| {
                        err("value", "missing; expected the floor, e.g. 0.9".into())
                    })?;
                    if !(0.0..=1.0).contains(&value) {
                        return Err(err(
                            "value",
                            format!("expected an accuracy in [0, 1], found {value}"),
                        ));
                    }
                    Claim::AtLeast {
                        select: select()?,
                        on: metrics("on", &e.on)?,
                        value,
                    }
                }
                "beats" => {
                    unused(&[
                        ("with_primitive", e.with_primitive.is_some()),
                        ("archs", e.archs.is_some()),
                        ("value", e.value.is_some()),
                        ("task", e.task.is_some()),
                    ])?;
                    let pairs = e
                        .pairs
                        .as_ref()
                        .filter(|p| !p.is_empty())
                        .ok_or_else(|| {
                            err("pairs", "missing; expected [[better, worse], ...]".into())
                        })?
                        .iter()
                        .map(|p| match &p[..] {
                            [a, b] => {
                                let (a, b) = (arch("pairs", a)?, arch("pairs", b)?);
                                if a.spec.arch_id() == b.spec.arch_id() {
                                    return Err(err(
                                        "pairs",
                                        format!(
                                            "`{}` and `{}` are the same architecture",
                                            a.text, b.text
                                        ),
                                    ));
                                }
                                Ok((a, b))
                            }
                            _ => Err(err(
                                "pairs",
                                format!("expected [better, worse], found {} names", p.len()),
                            )),
                        })
                        .collect::<Result<_, _>>()?;
                    Claim::Beats {
                        pairs,
                        on: metrics("on", &e.on)?,
                    }
                }
                "hardest-task" => {
                    unused(&[
                        ("pairs", e.pairs.is_some()),
                        ("value", e.value.is_some()),
                        ("on", e.on.is_some()),
                    ])?;
                    Claim::HardestTask {
                        select: select()?,
                        task: task(&e.task)?,
                    }
                }
                "least-spread" => {
                    unused(&[
                        ("with_primitive", e.with_primitive.is_some()),
                        ("archs", e.archs.is_some()),
                        ("pairs", e.pairs.is_some()),
                        ("value", e.value.is_some()),
                        ("on", e.on.is_some()),
                    ])?;
                    Claim::LeastSpread {
                        task: task(&e.task)?,
                    }
                }
                other => {
                    return Err(err(
                        "kind",
                        format!(
                            "unknown kind `{other}`; expected at-least, beats, hardest-task or least-spread"
                        ),
                    ));
                }
            };
            if out.iter().any(|f| f.name == e.name) {
                return Err(err("name", format!("the name `{}` is used twice", e.name)));
            }
            out.push(Finding {
                name: e.name,
                source: e.source,
                claim,
            });
        }
        Ok(out)
    }

    /// The architectures this finding names (to be calibrated for it to be
    /// checked at all).
    pub fn named(&self) -> Vec<&ArchRef> {
        match &self.claim {
            Claim::AtLeast {
                select: Select::Archs(a),
                ..
            }
            | Claim::HardestTask {
                select: Select::Archs(a),
                ..
            } => a.iter().collect(),
            Claim::Beats { pairs, .. } => pairs.iter().flat_map(|(a, b)| [a, b]).collect(),
            _ => Vec::new(),
        }
    }
}

/// A baseline's name or a layer string, as a genome.
fn resolve(s: &str, baselines: &[Baseline]) -> Result<ArchSpec, String> {
    if let Some(b) = baselines.iter().find(|b| b.name == s) {
        return Ok(b.genome.clone());
    }
    ArchSpec::from_layers_str(s)
        .and_then(|spec| spec.validate_layers().map(|()| spec))
        .map_err(|e| {
            format!(
                "`{s}` is neither a baseline's name ({}) nor a layer string: {e}",
                baselines
                    .iter()
                    .map(|b| format!("\"{}\"", b.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// One architecture's calibrated scores (means over seeds).
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    /// Shown name.
    pub name: String,
    /// Its identity.
    pub id: ArchId,
    /// The primitives of its layers.
    pub primitives: Vec<Primitive>,
    /// Per task.
    pub per_task: BTreeMap<TaskKind, f64>,
    /// The MAD score.
    pub score: f64,
}

impl Scored {
    fn get(&self, m: Metric) -> Option<f64> {
        match m {
            Metric::Score => Some(self.score),
            Metric::Task(t) => self.per_task.get(&t).copied(),
        }
    }
}

/// A finding's verdict on a calibration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The claim holds on everything it names.
    Holds,
    /// It holds wherever it could be checked, but some of what it names was
    /// not calibrated (an architecture, a task).
    Partial,
    /// It fails on at least one architecture (pair).
    Fails,
    /// Nothing it names was calibrated.
    NotChecked,
}

/// A verdict with the figures behind it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// The finding's name.
    pub name: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Why, with the figures (failures first).
    pub detail: String,
}

fn pick<'s>(select: &Select, scored: &'s [Scored]) -> Vec<&'s Scored> {
    scored
        .iter()
        .filter(|s| match select {
            Select::All => true,
            Select::WithPrimitive(p) => s.primitives.iter().any(|x| p.contains(x)),
            Select::Archs(a) => a.iter().any(|r| r.spec.arch_id() == s.id),
        })
        .collect()
}

fn population_std(x: &[f64]) -> f64 {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    (x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt()
}

/// Tallies of one check: what held, what failed, what could not be checked.
#[derive(Default)]
struct Tally {
    held: Vec<String>,
    failed: Vec<String>,
    missing: Vec<String>,
}

impl Tally {
    fn verdict(self, held_summary: impl FnOnce(&[String]) -> String) -> (Verdict, String) {
        let missing = if self.missing.is_empty() {
            String::new()
        } else {
            format!(" (not calibrated: {})", self.missing.join(", "))
        };
        if !self.failed.is_empty() {
            (
                Verdict::Fails,
                format!("{}{missing}", self.failed.join("; ")),
            )
        } else if self.held.is_empty() {
            (Verdict::NotChecked, format!("nothing to check{missing}"))
        } else if !self.missing.is_empty() {
            (
                Verdict::Partial,
                format!("{}{missing}", held_summary(&self.held)),
            )
        } else {
            (Verdict::Holds, held_summary(&self.held))
        }
    }
}

/// The architectures `select` names that were not calibrated.
fn uncalibrated(select: &Select, scored: &[Scored]) -> Vec<String> {
    match select {
        Select::Archs(a) => a
            .iter()
            .filter(|r| !scored.iter().any(|s| s.id == r.spec.arch_id()))
            .map(|r| r.text.clone())
            .collect(),
        _ => Vec::new(),
    }
}

impl Finding {
    /// Checks the finding on `scored`.
    pub fn check(&self, scored: &[Scored]) -> Check {
        let (verdict, detail) = match &self.claim {
            Claim::AtLeast { select, on, value } => {
                let mut t = Tally {
                    missing: uncalibrated(select, scored),
                    ..Tally::default()
                };
                for a in pick(select, scored) {
                    for &m in on {
                        match a.get(m) {
                            Some(x) if x >= *value => t.held.push(format!("{} {m} {x:.3}", a.name)),
                            Some(x) => t.failed.push(format!("{} {m} {x:.3} < {value}", a.name)),
                            None => t.missing.push(format!("{} {m}", a.name)),
                        }
                    }
                }
                t.verdict(|h| format!("{} of {} scores ≥ {value}", h.len(), h.len()))
            }
            Claim::Beats { pairs, on } => {
                let find = |r: &ArchRef| scored.iter().find(|s| s.id == r.spec.arch_id());
                let mut t = Tally::default();
                for (a, b) in pairs {
                    let (Some(x), Some(y)) = (find(a), find(b)) else {
                        t.missing.push(format!("{} vs {}", a.text, b.text));
                        continue;
                    };
                    for &m in on {
                        match (x.get(m), y.get(m)) {
                            (Some(p), Some(q)) if p > q => {
                                t.held.push(format!("{} {m} {p:.3} > {q:.3}", a.text))
                            }
                            (Some(p), Some(q)) => t
                                .failed
                                .push(format!("{} {m} {p:.3} ≤ {} {q:.3}", a.text, b.text)),
                            _ => t.missing.push(format!("{m} of {} vs {}", a.text, b.text)),
                        }
                    }
                }
                t.verdict(|h| h.join("; "))
            }
            Claim::HardestTask { select, task } => {
                let mut t = Tally {
                    missing: uncalibrated(select, scored),
                    ..Tally::default()
                };
                for a in pick(select, scored) {
                    let absent: Vec<&str> = TaskKind::ALL
                        .iter()
                        .filter(|k| !a.per_task.contains_key(k))
                        .map(|k| k.short())
                        .collect();
                    if !absent.is_empty() {
                        t.missing.push(format!("{} {}", a.name, absent.join(" ")));
                        continue;
                    }
                    let x = a.per_task[task];
                    match a
                        .per_task
                        .iter()
                        .filter(|(k, _)| *k != task)
                        .min_by(|p, q| p.1.total_cmp(q.1))
                    {
                        Some((k, y)) if *y < x => t
                            .failed
                            .push(format!("{}: {k} {y:.3} < {task} {x:.3}", a.name)),
                        _ => t.held.push(a.name.clone()),
                    }
                }
                t.verdict(|h| format!("lowest task of all {} architectures", h.len()))
            }
            Claim::LeastSpread { task } => {
                let complete = scored.len() >= 2
                    && scored
                        .iter()
                        .all(|s| TaskKind::ALL.iter().all(|k| s.per_task.contains_key(k)));
                if complete {
                    let spread: Vec<(TaskKind, f64)> = TaskKind::ALL
                        .iter()
                        .map(|&k| {
                            let v: Vec<f64> = scored.iter().map(|s| s.per_task[&k]).collect();
                            (k, population_std(&v))
                        })
                        .collect();
                    let text = spread
                        .iter()
                        .map(|(k, s)| format!("{} {s:.3}", k.short()))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let own = spread
                        .iter()
                        .find(|(k, _)| k == task)
                        .map_or(f64::INFINITY, |p| p.1);
                    let verdict = if spread.iter().all(|&(_, o)| own <= o) {
                        Verdict::Holds
                    } else {
                        Verdict::Fails
                    };
                    (
                        verdict,
                        format!("std across {} architectures: {text}", scored.len()),
                    )
                } else {
                    (
                        Verdict::NotChecked,
                        "needs all six tasks of at least two architectures".into(),
                    )
                }
            }
        };
        Check {
            name: self.name.clone(),
            verdict,
            detail,
        }
    }
}
