//! What `export` writes for one candidate: its genome as JSON or TOML
//! (loadable by `eval --arch FILE` and `start --seed-arch FILE`), the
//! reference `--layers` string, or a markdown model card.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod plot;

use crate::daemon::report::CandidateReport;
use crate::space::StageName;
use crate::stages::overtrain::OvertrainResult;
use crate::stages::scale::ScaleResult;

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// The genome as JSON.
    Json,
    /// The genome as TOML.
    Toml,
    /// The reference implementation's `--layers` string.
    Layers,
    /// A markdown model card.
    Card,
}

impl Format {
    /// File extension.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Toml => "toml",
            Format::Layers => "layers.txt",
            Format::Card => "md",
        }
    }
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A target would escape the output directory.
    #[error("refusing to write {}: it is a link or lies outside {}", path.display(), out.display())]
    Outside {
        /// The file.
        path: PathBuf,
        /// The output directory.
        out: PathBuf,
    },
    /// Writing failed.
    // The OS error is in the message, not a `source` too: a chain of
    // causes would print it twice.
    #[error("writing {}: {reason}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: std::io::Error,
    },
}

/// The text of `r` in `format`.
pub fn render(r: &CandidateReport, format: Format) -> String {
    let g = &r.candidate.genome;
    match format {
        Format::Json => {
            let mut s = serde_json::to_string_pretty(g).expect("genomes serialise");
            s.push('\n');
            s
        }
        Format::Toml => format!(
            "# mad-search genome {} ({})\n{}",
            r.candidate.id,
            r.layers,
            toml::to_string(g).expect("genomes serialise")
        ),
        Format::Layers => {
            let mut s = format!("{}\n", r.layers);
            if !g.is_reference_expressible() {
                s.push_str(
                    "# note: this genome sets hyper-parameters or a width the reference's \
                     --layers defaults do not; use the JSON or TOML genome to rebuild it exactly\n",
                );
            }
            s
        }
        Format::Card => card(r),
    }
}

fn card(r: &CandidateReport) -> String {
    let c = &r.candidate;
    let mut s = String::new();
    let title = c.baseline.clone().unwrap_or_else(|| c.id.short());
    let _ = writeln!(s, "# {title}\n");
    let _ = writeln!(s, "- id: `{}`", c.id);
    let _ = writeln!(s, "- layers: `{}`", r.layers);
    let _ = writeln!(s, "- genome: `{}`", c.genome.compact_string());
    let _ = writeln!(s, "- non-embedding parameters: {}", c.params);
    let _ = writeln!(s, "- recurrent state: {}", c.state);
    let _ = writeln!(
        s,
        "- made by: {} (candidate #{} of the search; seed {}, preset `{}`)",
        c.operator, c.seq, r.seed, r.preset
    );
    if !r.lineage.is_empty() {
        let _ = writeln!(s, "\n## Lineage\n");
        for a in &r.lineage {
            let _ = writeln!(
                s,
                "{}- `{}` by {}: `{}`",
                "  ".repeat(a.depth - 1),
                a.arch.short(),
                a.operator,
                a.layers
            );
        }
    }
    for (stage, summary) in &c.stages {
        let _ = writeln!(
            s,
            "\n## Stage `{}`: score {:.4} (rank {}{})\n",
            stage.name(),
            summary.score,
            r.ranks.get(stage).copied().unwrap_or(0),
            r.scored_by(*stage)
                .map_or(String::new(), |m| format!("; by {m}"))
        );
        let _ = writeln!(s, "| task | score |\n|---|---:|");
        for (task, v) in &summary.per_task {
            let _ = writeln!(s, "| {} | {v:.4} |", task.name());
        }
        let _ = writeln!(
            s,
            "\nCompute time {:.1} s (finished by job {}).",
            summary.seconds, summary.job
        );
        if let Some(settings) = r.stage_results.get(stage).and_then(|v| v.get("settings")) {
            let _ = writeln!(
                s,
                "\nStage settings:\n\n```json\n{}\n```",
                serde_json::to_string_pretty(settings).unwrap_or_default()
            );
        }
    }
    if let Some(sr) = scale_result(r) {
        let _ = writeln!(
            s,
            "\n### Scaling runs and fit (corpus {})\n\n```text\n{}```\n\n![loss against compute]({})",
            sr.corpus,
            sr.text(),
            plot_file(r, "scaling")
        );
        let _ = writeln!(
            s,
            "\n### State-optimal view\n\nEach run's validation loss against its recurrent state \
             (fixed state plus attention's KV cache at context {}), the compute-optimal points, \
             and {}.\n\n![loss against state]({})",
            sr.settings.seq_len,
            sr.state_law.as_ref().map_or(
                "no fit (the optima's states do not differ)".to_string(),
                |l| format!(
                    "the fit L* ∝ M^{:.3}{}",
                    l.exponent,
                    l.exponent_se
                        .map_or(String::new(), |e| format!(" ± {e:.3}"))
                )
            ),
            plot_file(r, "state")
        );
    }
    if let Some(or) = overtrain_result(r) {
        let _ = writeln!(
            s,
            "\n### Overtrained runs and fit (corpus {})\n\n```text\n{}```\n\n![loss against tokens]({})",
            or.corpus,
            or.text(),
            plot_file(r, "overtrain")
        );
    }
    for (stage, why) in &c.failed {
        let _ = writeln!(s, "\n## Stage `{}`: failed\n\n{why}", stage.name());
    }
    s
}

/// The candidate's `scale` result, if it finished that stage.
pub fn scale_result(r: &CandidateReport) -> Option<ScaleResult> {
    serde_json::from_value(r.stage_results.get(&StageName::Scale)?.clone()).ok()
}

/// The candidate's `overtrain` result, if it finished that stage.
pub fn overtrain_result(r: &CandidateReport) -> Option<OvertrainResult> {
    serde_json::from_value(r.stage_results.get(&StageName::Overtrain)?.clone()).ok()
}

/// The file name of one of the candidate's plots (beside its card):
/// `<id>.<kind>.svg`.
pub fn plot_file(r: &CandidateReport, kind: &str) -> String {
    format!("{}.{kind}.svg", r.candidate.id.short())
}

/// The card's plots as (file name, SVG): the scaling plot and the
/// state-optimal view once the candidate finished `scale`, the overtrained
/// curve once it finished `overtrain`.
pub fn plots(r: &CandidateReport) -> Vec<(String, String)> {
    let title = r
        .candidate
        .baseline
        .clone()
        .unwrap_or_else(|| r.layers.clone());
    let mut out = Vec::new();
    if let Some(sr) = scale_result(r) {
        out.push((plot_file(r, "scaling"), plot::svg(&sr, &title)));
        out.push((plot_file(r, "state"), plot::state_svg(&sr, &title)));
    }
    if let Some(or) = overtrain_result(r) {
        out.push((plot_file(r, "overtrain"), plot::overtrain_svg(&or, &title)));
    }
    out
}

/// Writes `r` as `<out>/<file>` and returns the path. Refuses a target that
/// is a link (it could point outside `out`).
///
/// # Errors
/// [`ExportError`].
pub fn write(out: &Path, file: &str, text: &str) -> Result<PathBuf, ExportError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |reason| ExportError::Io { path, reason }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    let path = out.join(file);
    let outside = || ExportError::Outside {
        path: path.clone(),
        out: out.to_owned(),
    };
    if file.contains('/') || file.contains("..") {
        return Err(outside());
    }
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(outside());
    }
    crate::fsutil::write_atomic(&path, text.as_bytes()).map_err(io(&path))?;
    Ok(path)
}
