//! `mad-search space check|sample|baselines`: validate a search space, draw
//! genomes from it, and list the paper's named architectures with their
//! parameter and state counts.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

use super::out;
use crate::genome::{ArchSpec, Context, Role};
use crate::space::{Baseline, DEFAULT_SPACE_NAME, SearchSpace};

/// `space` subcommands.
#[derive(Debug, Subcommand)]
pub enum SpaceCommand {
    /// Validate a search-space file; exits non-zero with file:line: field: message on error.
    Check(CheckArgs),
    /// Draw distinct genomes from a search space.
    Sample(SampleArgs),
    /// List named architectures (default: the paper's) with id, parameters and state.
    Baselines(BaselinesArgs),
}

/// Arguments of `space check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The search-space file (default: the embedded search_spaces/default.toml).
    pub file: Option<PathBuf>,
    /// Print the parsed space and the check's findings as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Output formats of `space sample`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SampleFormat {
    /// An aligned table: id, parameters, state, layers with non-default parameters.
    Table,
    /// Tab-separated: id, parameters, state, per-token state, reference `--layers` string.
    Layers,
    /// One JSON object per line, genome included.
    Json,
}

/// Arguments of `space sample`.
#[derive(Debug, Args)]
pub struct SampleArgs {
    /// The search-space file (default: the embedded search_spaces/default.toml).
    pub file: Option<PathBuf>,
    /// Number of distinct genomes.
    #[arg(short = 'n', long, default_value_t = 10)]
    pub count: usize,
    /// Seed; the same seed gives the same genomes on every run and machine.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = SampleFormat::Table)]
    pub format: SampleFormat,
}

/// Arguments of `space baselines`.
#[derive(Debug, Args)]
pub struct BaselinesArgs {
    /// A baselines file, or a search-space file for its warm start (default:
    /// the embedded search_spaces/paper-baselines.toml).
    pub file: Option<PathBuf>,
    /// Vocabulary size for the counts that include embeddings.
    #[arg(long, default_value_t = 16)]
    pub vocab: usize,
    /// Sequence length for the counts that depend on it.
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `space` subcommand.
///
/// # Errors
/// An unreadable or invalid file, or a space that cannot produce the genomes asked for.
pub fn run(cmd: SpaceCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SpaceCommand::Check(a) => check(a),
        SpaceCommand::Sample(a) => sample(a),
        SpaceCommand::Baselines(a) => baselines(a),
    }
}

/// Loads `file`, or the embedded default.
pub(crate) fn load_space(file: Option<&Path>) -> anyhow::Result<(SearchSpace, String)> {
    match file {
        Some(path) => Ok((SearchSpace::load(path)?, path.display().to_string())),
        None => Ok((
            SearchSpace::embedded_default(),
            DEFAULT_SPACE_NAME.to_string(),
        )),
    }
}

fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let (space, shown) = load_space(args.file.as_deref())?;
    let f = space.feasibility();
    if args.json {
        #[derive(Serialize)]
        struct Report<'a> {
            file: &'a str,
            space: &'a SearchSpace,
            feasibility: &'a crate::space::Feasibility,
        }
        let json = serde_json::to_string_pretty(&Report {
            file: &shown,
            space: &space,
            feasibility: &f,
        })?;
        out(&format!("{json}\n"))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut s = String::new();
    writeln!(s, "{shown}: ok: space `{}`", space.name)?;
    if !space.description.is_empty() {
        writeln!(s, "  {}", space.description)?;
    }
    let m = &space.model;
    let norms: Vec<_> = m.norm.iter().map(|n| n.name()).collect();
    writeln!(
        s,
        "  widths {:?}, depths {:?} layers, norms [{}]",
        m.d_model,
        m.layers,
        norms.join(", ")
    )?;
    for (role, label) in [
        (Role::Sequence, "sequence mixers"),
        (Role::Fused, "fused blocks"),
        (Role::Channel, "channel mixers"),
    ] {
        let names: Vec<_> = space
            .primitives_with_role(role)
            .iter()
            .map(|(p, c)| format!("{p} ({})", c.weight))
            .collect();
        if !names.is_empty() {
            writeln!(s, "  {label}: {}", names.join(", "))?;
        }
    }
    let b = &space.budget;
    let per_token = if b.max_state_per_token == u64::MAX {
        "unbounded".to_string()
    } else {
        b.max_state_per_token.to_string()
    };
    writeln!(
        s,
        "  budget: {}..={} non-embedding params, state <= {} (+ <= {per_token} per token), at seq_len {}",
        b.min_params, b.max_params, b.max_state, b.seq_len
    )?;
    writeln!(
        s,
        "  smallest model: {} params, {} state; {:.1}% of unconstrained draws fit the budgets",
        f.min_params,
        f.min_state,
        100.0 * f.acceptance
    )?;
    if let Some(ks) = &space.structure.attention_every {
        writeln!(
            s,
            "  global attention: every k-th block for k in {ks:?} (0: none), positions free"
        )?;
    }
    let presets: Vec<_> = space.presets.keys().map(String::as_str).collect();
    writeln!(
        s,
        "  presets: {}",
        if presets.is_empty() {
            "(none)".to_string()
        } else {
            presets.join(", ")
        }
    )?;
    if space.search.baselines {
        let own = if space.baselines.is_empty() {
            "the paper's"
        } else {
            "the space's own"
        };
        writeln!(s, "  warm start ({own} baselines):")?;
        let ctx = Context {
            vocab: 16,
            seq_len: space.budget.seq_len,
        };
        baseline_table(&mut s, "    ", &space.warm_start(), ctx)?;
    }
    out(&s)?;
    for w in &f.warnings {
        eprintln!("warning: {shown}: {w}");
    }
    Ok(ExitCode::SUCCESS)
}

/// One sampled or named genome with its figures, as printed.
#[derive(Serialize)]
struct Row<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    id: String,
    layers: String,
    compact: String,
    short: String,
    params: u64,
    params_total: u64,
    state: u64,
    state_per_token: u64,
    flops_per_token: u64,
    genome: &'a ArchSpec,
}

fn row<'a>(name: Option<&'a str>, spec: &'a ArchSpec, ctx: Context) -> Row<'a> {
    let p = spec.params(ctx);
    let st = spec.state();
    Row {
        name,
        id: spec.arch_id().to_string(),
        layers: spec.layers_string(),
        compact: spec.compact_string(),
        short: spec.short_string(),
        params: p.non_embedding(),
        params_total: p.total(),
        state: st.fixed,
        state_per_token: st.per_token,
        flops_per_token: spec.flops_per_token(ctx),
        genome: spec,
    }
}

fn state_text(r: &Row<'_>) -> String {
    if r.state_per_token > 0 {
        format!("{}+{}/tok", r.state, r.state_per_token)
    } else {
        r.state.to_string()
    }
}

fn sample(args: SampleArgs) -> anyhow::Result<ExitCode> {
    let (space, shown) = load_space(args.file.as_deref())?;
    let mut rng = crate::seed::rng(args.seed, &["space-sample"]);
    let specs = space
        .sample_distinct(args.count, &mut rng)
        .with_context(|| format!("sampling {} genomes from {shown}", args.count))?;
    let ctx = Context {
        vocab: 16,
        seq_len: space.budget.seq_len,
    };
    let rows: Vec<_> = specs.iter().map(|s| row(None, s, ctx)).collect();
    let mut s = String::new();
    match args.format {
        SampleFormat::Json => {
            for r in &rows {
                writeln!(s, "{}", serde_json::to_string(r)?)?;
            }
        }
        SampleFormat::Layers => {
            for r in &rows {
                writeln!(
                    s,
                    "{}\t{}\t{}\t{}\t{}",
                    r.id, r.params, r.state, r.state_per_token, r.layers
                )?;
            }
        }
        SampleFormat::Table => {
            writeln!(s, "{:<12}  {:>9}  {:>12}  layers", "id", "params", "state")?;
            for r in &rows {
                writeln!(
                    s,
                    "{:<12}  {:>9}  {:>12}  {}",
                    &r.id[..12],
                    r.params,
                    state_text(r),
                    r.compact
                )?;
            }
        }
    }
    out(&s)?;
    Ok(ExitCode::SUCCESS)
}

fn baselines(args: BaselinesArgs) -> anyhow::Result<ExitCode> {
    let list = match &args.file {
        Some(path) if is_space_file(path) => SearchSpace::load(path)?.warm_start(),
        Some(path) => Baseline::load(path)?,
        None => Baseline::embedded(),
    };
    let ctx = Context {
        vocab: args.vocab,
        seq_len: args.seq_len,
    };
    let mut s = String::new();
    if args.json {
        for b in &list {
            writeln!(
                s,
                "{}",
                serde_json::to_string(&row(Some(&b.name), &b.genome, ctx))?
            )?;
        }
    } else {
        baseline_table(&mut s, "", &list, ctx)?;
    }
    out(&s)?;
    Ok(ExitCode::SUCCESS)
}

/// Whether `path` is a search-space file (it has a `[space]` table) rather
/// than a baselines file; unreadable files are left to the loader's error.
fn is_space_file(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .is_some_and(|t| t.contains_key("space"))
}

/// The named architectures as a table, each line after `indent`.
fn baseline_table(
    s: &mut String,
    indent: &str,
    list: &[Baseline],
    ctx: Context,
) -> std::fmt::Result {
    writeln!(
        s,
        "{indent}{:<34}  {:<12}  {:>9}  {:>9}  {:>12}  {:>10}  layers",
        "name", "id", "params", "total", "state", "MFLOP/tok"
    )?;
    for b in list {
        let r = row(Some(&b.name), &b.genome, ctx);
        writeln!(
            s,
            "{indent}{:<34}  {:<12}  {:>9}  {:>9}  {:>12}  {:>10.2}  {}",
            b.name,
            &r.id[..12],
            r.params,
            r.params_total,
            state_text(&r),
            r.flops_per_token as f64 / 1e6,
            r.compact
        )?;
    }
    Ok(())
}
