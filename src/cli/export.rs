//! `mad-search export`: the best candidates (or the Pareto front) as
//! genome files, `--layers` strings or model cards.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::state::{Reach, StateArgs, close_read_only, reach, unexpected};
use crate::daemon::control::{Answer, Request};
use crate::daemon::report::{Regime, Selection, select};
use crate::export::{Format, plots, render, write};

/// Arguments of `export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub at: StateArgs,
    /// The best N of the leaderboard.
    #[arg(long, default_value_t = 5, conflicts_with = "pareto")]
    pub top: usize,
    /// The Pareto front of the most advanced stage instead.
    #[arg(long)]
    pub pareto: bool,
    /// With --pareto: the front of one scaling regime instead (compute:
    /// the scale stage's; overtrained: the overtrain stage's; state:
    /// compute-optimal loss against state).
    #[arg(long, value_enum, requires = "pareto")]
    pub view: Option<Regime>,
    /// What to write.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// Output directory (default: <state>/exports). Nothing is written outside it.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs `export`.
///
/// # Errors
/// No search, a damaged database, or a file that cannot be written.
pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let state = args.at.dir();
    let selection = if let Some(view) = args.view {
        Selection::Regime(view)
    } else if args.pareto {
        Selection::Pareto
    } else {
        Selection::Top(args.top)
    };
    let reports = match reach(&state, &Request::Select { selection })? {
        Reach::Daemon(Answer::Selected { candidates }) => candidates,
        Reach::Daemon(other) => return Err(unexpected(other)),
        Reach::Store(store) => {
            let selected = select(&store, selection)?;
            close_read_only(store);
            selected
        }
    };
    if reports.is_empty() {
        match args.view {
            Some(view) => eprintln!(
                "nothing to export: the {} front is empty (no candidate has finished {} yet)",
                format!("{view:?}").to_lowercase(),
                if view == Regime::Overtrained {
                    "overtrain"
                } else {
                    "scale"
                }
            ),
            None => eprintln!("nothing to export yet: no candidate has finished a stage"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let out = args.out.unwrap_or_else(|| state.join("exports"));
    for (i, r) in reports.iter().enumerate() {
        let file = format!(
            "{:02}-{}.{}",
            i + 1,
            r.candidate.id.short(),
            args.format.extension()
        );
        let path = write(&out, &file, &render(r, args.format))?;
        println!("{}", path.display());
        if args.format == Format::Card {
            for (file, svg) in plots(r) {
                let plot = write(&out, &file, &svg)?;
                println!("{}", plot.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
