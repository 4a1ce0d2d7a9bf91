//! `mad-search show ID`: one candidate in full.

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::Args;

use super::out;
use super::state::{Reach, StateArgs, close_read_only, reach, unexpected};
use crate::daemon::control::{Answer, Request};
use crate::daemon::report::{CandidateReport, show};

/// Arguments of `show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Candidate id (at least 4 hex digits) or a baseline's name.
    pub id: String,
    #[command(flatten)]
    pub at: StateArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `show`.
///
/// # Errors
/// No search, no such candidate, or a damaged database.
pub fn run(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let state = args.at.dir();
    let report = match reach(
        &state,
        &Request::Show {
            id: args.id.clone(),
        },
    )? {
        Reach::Daemon(Answer::Show { report }) => *report,
        Reach::Daemon(other) => return Err(unexpected(other)),
        Reach::Store(store) => {
            let report = show(&store, &args.id)?;
            close_read_only(store);
            report
        }
    };
    if args.json {
        out(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
    } else {
        out(&render(&report))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The text form.
pub fn render(r: &CandidateReport) -> String {
    let c = &r.candidate;
    let mut s = String::new();
    let _ = writeln!(s, "candidate {}", c.id);
    if let Some(b) = &c.baseline {
        let _ = writeln!(s, "baseline:  {b}");
    }
    let _ = writeln!(s, "layers:    {}", r.layers);
    let _ = writeln!(s, "genome:    {}", c.genome.compact_string());
    let _ = writeln!(s, "params:    {} (non-embedding)", c.params);
    let _ = writeln!(s, "state:     {}", c.state);
    let _ = writeln!(
        s,
        "made by:   {} (#{} in the search, {})",
        c.operator,
        c.seq,
        crate::daemon::timestamp(c.created)
    );
    for a in &r.lineage {
        let _ = writeln!(
            s,
            "  {}parent {} by {}: {}",
            "  ".repeat(a.depth - 1),
            a.arch.short(),
            a.operator,
            a.layers
        );
    }
    for (stage, summary) in &c.stages {
        let _ = writeln!(
            s,
            "{}: score {:.4} (rank {}{}), {:.1} s, job {}",
            stage.name(),
            summary.score,
            r.ranks.get(stage).copied().unwrap_or(0),
            r.scored_by(*stage)
                .map_or(String::new(), |m| format!("; by {m}")),
            summary.seconds,
            summary.job
        );
        for (task, v) in &summary.per_task {
            let _ = writeln!(s, "  {:<26} {v:.4}", task.name());
        }
        if let Some(l) = summary.predicted_loss {
            let what = if *stage == crate::space::StageName::Overtrain {
                "loss at the largest token multiple"
            } else {
                "predicted loss at the target compute"
            };
            let _ = writeln!(s, "  {what}: {l:.4} nats/token");
        }
        let text = match stage {
            crate::space::StageName::Scale => crate::export::scale_result(r).map(|x| x.text()),
            crate::space::StageName::Overtrain => {
                crate::export::overtrain_result(r).map(|x| x.text())
            }
            _ => None,
        };
        for line in text.iter().flat_map(|t| t.lines()) {
            let _ = writeln!(s, "  {line}");
        }
    }
    for (stage, why) in &c.failed {
        let _ = writeln!(s, "{}: failed: {why}", stage.name());
    }
    let _ = writeln!(s, "jobs:");
    for j in &r.jobs {
        let _ = writeln!(
            s,
            "  job {} {} attempt {} ({} failures): {}",
            j.id,
            j.stage.name(),
            j.attempt,
            j.failures,
            serde_json::to_string(&j.state).unwrap_or_default()
        );
    }
    s
}
