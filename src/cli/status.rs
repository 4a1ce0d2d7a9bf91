//! `mad-search status`: the search at a glance (text), or as JSON
//! (schema `mad-search.status/3`).

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::out;
use super::state::{StateArgs, ask_daemon, close_read_only, open_for_reading, unexpected};
use crate::daemon::control::{Answer, Request};
use crate::daemon::report::{Row, StatusReport, status};
use crate::daemon::snapshot;
use crate::space::StageName;

/// Arguments of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub at: StateArgs,
    /// Leaderboard rows.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Refresh every N seconds until interrupted.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
    pub watch: Option<u64>,
}

/// The report, from the daemon or the database.
///
/// # Errors
/// No search, or a damaged database.
pub fn fetch(args: &StatusArgs) -> anyhow::Result<StatusReport> {
    let state = args.at.dir();
    match ask_daemon(&state, &Request::Status { top: args.top })? {
        Some(Answer::Status { report }) => return Ok(*report),
        Some(other) => return Err(unexpected(other)),
        None => {}
    }
    if let Some(report) = snapshot::read(&state, args.top) {
        return Ok(report);
    }
    let store = open_for_reading(&state)?;
    let top = args.top.max(snapshot::SNAPSHOT_TOP);
    let mut report = status(&store, None, top)?;
    // We hold the database's lock, so the snapshot is true; it spares the
    // next `status` the database. A read-only state dir just goes without.
    let _ = snapshot::write(&state, &report, top);
    if args.watch.is_some() {
        // The process goes on: close the database and its lock, or a
        // `start` meanwhile would find the search in use.
        drop(store);
    } else {
        close_read_only(store);
    }
    report.leaderboard.truncate(args.top);
    Ok(report)
}

/// Runs `status`.
///
/// # Errors
/// As [`fetch`].
pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    loop {
        let report = match (fetch(&args), args.watch) {
            (Ok(r), _) => r,
            // Watching, a daemon starting or stopping (socket not yet or no
            // longer there, database held) is a moment to wait out.
            (Err(e), Some(secs)) => {
                out(&format!(
                    "\x1b[2J\x1b[H{e:#}\n(trying again every {} s)\n",
                    secs.max(1)
                ))?;
                std::thread::sleep(Duration::from_secs(secs.max(1)));
                continue;
            }
            (Err(e), None) => return Err(e),
        };
        let text = if args.json {
            format!("{}\n", serde_json::to_string_pretty(&report)?)
        } else {
            render(&report)
        };
        match args.watch {
            Some(secs) => {
                // Clear the screen and home the cursor.
                out(&format!("\x1b[2J\x1b[H{text}"))?;
                std::thread::sleep(Duration::from_secs(secs.max(1)));
            }
            None => {
                out(&text)?;
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

fn hours(h: f64) -> String {
    if h < 1.0 {
        format!("{:.0} min", h * 60.0)
    } else {
        format!("{h:.1} h")
    }
}

fn score(r: &Row) -> String {
    match (r.predicted_loss, r.score, r.stage) {
        (Some(l), _, Some(StageName::Overtrain)) => format!("L {l:.3} over"),
        (Some(l), _, _) => format!("L̂ {l:.3} scale"),
        (None, Some(s), Some(st)) => format!("{s:.3} {}", st.name()),
        _ => "-".into(),
    }
}

/// The compact form where the report has it (a report from an older
/// daemon may not), else the reference layers string.
fn shown<'a>(compact: &'a str, layers: &'a str) -> &'a str {
    if compact.is_empty() { layers } else { compact }
}

fn table(s: &mut String, title: &str, rows: &[Row]) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(s, "\n{title}");
    let _ = writeln!(
        s,
        "  {:>4}  {:<12}  {:<12}  {:>9}  {:>7}  layers",
        "rank", "id", "score", "params", "state"
    );
    for r in rows {
        let name = r
            .baseline
            .as_ref()
            .map(|b| format!("  [{b}]"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  {:>4}  {:<12}  {:<12}  {:>9}  {:>7}  {}{name}",
            if r.rank == 0 {
                "-".into()
            } else {
                r.rank.to_string()
            },
            r.arch.short(),
            score(r),
            r.params,
            r.state,
            shown(&r.compact, &r.layers)
        );
    }
}

/// The text form.
pub fn render(r: &StatusReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "search `{}` in {} — preset {}, seed {}, space {}",
        r.name, r.state_dir, r.preset, r.seed, r.space
    );
    match &r.daemon {
        Some(d) => {
            let _ = writeln!(
                s,
                "daemon: up (pid {}, uptime {}, {} worker(s){}){}{}",
                d.pid,
                hours(d.uptime / 3600.0),
                d.workers,
                match d.executor.as_str() {
                    "local" => " as worker processes",
                    "threads" => " on the daemon's threads",
                    "slurm" => " as Slurm jobs",
                    _ => "",
                },
                if d.stopping { ", stopping" } else { "" },
                d.idle
                    .as_ref()
                    .map(|i| format!(", idle: {i}"))
                    .unwrap_or_default()
            );
            if let Some(v) = &d.slurm {
                let _ = writeln!(
                    s,
                    "  slurm: {} pending{}, {} running{}",
                    v.pending,
                    v.oldest_pending_seconds
                        .map(|a| format!(
                            " (oldest waiting {}{})",
                            hours(a / 3600.0),
                            v.waiting_for
                                .as_ref()
                                .map(|r| format!(" for {r}"))
                                .unwrap_or_default()
                        ))
                        .unwrap_or_default(),
                    v.running,
                    v.error
                        .as_ref()
                        .map(|e| format!("\n  slurm error: {e}"))
                        .unwrap_or_default()
                );
            }
            for j in &d.running {
                let _ = writeln!(
                    s,
                    "  worker {}: job {} {} (attempt {}) {} — {:.0} s{}",
                    j.worker,
                    j.job,
                    match &j.part {
                        Some(p) => format!("{} {p}", j.stage.name()),
                        None => j.stage.name().to_string(),
                    },
                    j.attempt,
                    shown(&j.compact, &j.layers),
                    j.seconds,
                    j.progress
                        .as_ref()
                        .map(|p| format!(" — {p}"))
                        .unwrap_or_default()
                );
            }
        }
        None => {
            let _ = writeln!(s, "daemon: down");
        }
    }
    let _ = writeln!(s, "candidates: {}", r.candidates);
    let _ = writeln!(
        s,
        "jobs:   {:<9} {:>7} {:>7} {:>7} {:>7}   evaluations {:>5} {:>5} {:>6}",
        "stage", "queued", "running", "done", "failed", "open", "done", "failed"
    );
    for stage in StageName::ALL {
        let c = r.jobs.get(stage).copied().unwrap_or_default();
        let e = r.evaluations.get(stage).copied().unwrap_or_default();
        let _ = writeln!(
            s,
            "        {:<9} {:>7} {:>7} {:>7} {:>7}               {:>5} {:>5} {:>6}",
            stage.name(),
            c.queued,
            c.running,
            c.done,
            c.failed,
            e.open,
            e.done,
            e.failed
        );
    }
    let b = &r.budget;
    let mut line = format!("time: {} of daemon time", hours(b.hours_used));
    if let Some(h) = b.hours {
        let _ = write!(line, " (budget {})", hours(h));
    }
    if let Some(t) = r.throughput_per_hour {
        let _ = write!(line, "; {t:.1} evaluations/h");
    }
    let _ = writeln!(s, "{line}");
    for (stage, (max, used)) in &b.evaluations {
        if let Some(max) = max {
            let _ = writeln!(s, "budget: {} {used} of {max} evaluations", stage.name());
        }
    }
    if let Some(f) = b.forecast_hours_left {
        let _ = writeln!(s, "forecast: budget spent in about {}", hours(f));
    }
    table(&mut s, "leaderboard", &r.leaderboard);
    for (stage, rows) in &r.pareto {
        table(
            &mut s,
            &format!(
                "pareto front at {} (score ↑, params ↓, state ↓)",
                stage.name()
            ),
            rows,
        );
    }
    table(&mut s, "baselines (the warm start)", &r.baselines);
    regimes(&mut s, &r.regimes);
    if !r.correlations.is_empty() {
        let _ = writeln!(
            s,
            "\nhow well each stage predicts the next (rank correlations, 90 % bootstrap intervals)"
        );
        let est = |v: Option<f64>, i: Option<crate::stats::Interval>| match (v, i) {
            (Some(v), Some(i)) => format!("{v:+.2} [{:+.2}, {:+.2}]", i.lo, i.hi),
            (Some(v), None) => format!("{v:+.2}"),
            (None, _) => "-".into(),
        };
        for c in &r.correlations {
            let which = if c.to == StageName::Scale {
                " (scale: exp(−predicted loss))"
            } else {
                ""
            };
            if c.candidates < crate::stats::MIN_AGREEMENT_PAIRS {
                let _ = writeln!(
                    s,
                    "  {} → {}: {} candidate(s) at both stages (shown from {}){which}",
                    c.from.name(),
                    c.to.name(),
                    c.candidates,
                    crate::stats::MIN_AGREEMENT_PAIRS
                );
            } else {
                let _ = writeln!(
                    s,
                    "  {} → {}: Spearman's ρ {}, Kendall's τ {} over {} candidates{which}",
                    c.from.name(),
                    c.to.name(),
                    est(c.rho, c.rho_interval),
                    est(c.tau, c.tau_interval),
                    c.candidates
                );
            }
        }
    }
    s
}

/// The scaled candidates in the paper's three regimes.
fn regimes(s: &mut String, rows: &[crate::daemon::report::RegimeRow]) {
    let Some(first) = rows.first() else {
        return;
    };
    let _ = writeln!(
        s,
        "\nscaling regimes (compute-optimal: L̂ at C={:.0e}; L* and state of the compute-optimal \
         model at C={:.0e}, KV cache at context {}; overtrained: loss at the largest token \
         multiple of {}'s compute-optimal size; * on the (L*, state) front)",
        first.target_compute,
        first.budget,
        first.state_context,
        rows.iter()
            .find_map(|r| r.overtrain_budget)
            .map_or("a budget".to_string(), |b| format!("C={b:.0e}"))
    );
    let _ = writeln!(
        s,
        "  {:<12}  {:>15}  {:>7}  {:>9}  {:>16}  {:>15}  layers",
        "id", "L̂ ± se", "L*", "state", "L* ∝ M^c", "overtrained"
    );
    for r in rows {
        let name = r.baseline.clone().unwrap_or_else(|| r.arch.short());
        let _ = writeln!(
            s,
            "  {:<12}  {:>15}  {:>7}  {:>8}{}  {:>16}  {:>15}  {}",
            name.chars().take(12).collect::<String>(),
            match r.predicted_se {
                Some(e) => format!("{:.4} ± {e:.4}", r.predicted_loss),
                None => format!("{:.4}", r.predicted_loss),
            },
            r.loss_opt.map_or("-".into(), |l| format!("{l:.4}")),
            r.state_opt.map_or("-".into(), |m| format!("{m:.0}")),
            if r.state_front { "*" } else { " " },
            match (r.state_exponent, r.state_exponent_se) {
                (Some(c), Some(e)) => format!("{c:+.3} ± {e:.3}"),
                (Some(c), None) => format!("{c:+.3}"),
                _ => "-".into(),
            },
            match (r.overtrained_loss, r.overtrain_multiple) {
                (Some(l), Some(m)) => format!("{l:.4} at {m}×"),
                _ => "-".into(),
            },
            shown(&r.compact, &r.layers)
        );
    }
}
