//! `mad-search calibrate`: the paper's baselines (or given architectures)
//! through a preset's screen (or `mad`, with the screen beside it) under
//! several seeds; per-task scores with their spread, wall times, the
//! ranking's stability across seeds, screen → mad agreement and the
//! published findings as a pass/fail table. Resumable: everything is kept
//! under `--dir`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};

use super::eval::{Progress, lanes, parse_arch, stage_epochs, stop_on_ctrl_c};
use super::out;
use crate::calibrate::clock::{self, Clock};
use crate::calibrate::findings::{Check, Finding, Verdict};
use crate::calibrate::{
    Kept, KeptState, SeedAgreement, Subject, SubjectResults, carry_wall_time, check_findings,
    eval_dir, fingerprint, has_runs, read_kept, seed_agreement, seeds, stage_agreement, write_kept,
};
use crate::layers::device::{DeviceSpec, on_device};
use crate::space::{Baseline, Metric, StageName, StageSettings};
use crate::stages::{StageControl, StageProgress, evaluate};
use crate::stats::{Agreement, Estimate};
use crate::tasks::TaskKind;
use crate::train::TrainError;

/// The stages `calibrate` runs.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CalibrateStage {
    /// The preset's screen.
    Screen,
    /// The preset's `mad` stage, with its screen beside it (for screen → mad agreement).
    Mad,
}

/// Arguments of `calibrate`.
#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// Stage preset from the search space.
    #[arg(long, default_value = "cpu")]
    pub preset: String,
    /// Which stage to calibrate.
    #[arg(long, value_enum, default_value_t = CalibrateStage::Screen)]
    pub stage: CalibrateStage,
    /// Evaluations per architecture, each with its own model seed and data
    /// (seed 0: the protocol's data, as `eval` uses).
    #[arg(long, default_value_t = 1)]
    pub seeds: usize,
    /// An architecture (a baseline name: the `--space`'s own baselines, then
    /// the paper's; a layer string, compact form accepted; a short run id;
    /// or a genome file); repeat for several. Default: all of the paper's baselines and
    /// every architecture the findings name.
    #[arg(long)]
    pub arch: Vec<String>,
    /// Print the whole report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Search space holding the presets (default: the embedded default.toml).
    #[arg(long)]
    pub space: Option<PathBuf>,
    /// Findings to check (default: the paper's, search_spaces/findings.toml).
    #[arg(long, value_name = "FILE")]
    pub findings: Option<PathBuf>,
    /// Where runs, checkpoints and results are kept; the same command again
    /// resumes (default: calibration/<preset>).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Runs side by side within an evaluation (default: one per core).
    #[arg(long)]
    pub parallel: Option<usize>,
    /// CPU threads per run (default: the cores divided among the parallel runs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Checkpoint interval in optimiser steps.
    #[arg(long, default_value_t = 50, value_name = "STEPS")]
    pub checkpoint_every: usize,
    /// Device: cpu, cuda, cuda:N or wgpu.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Base seed of weights and batch order (seed k uses base + k).
    #[arg(long, default_value_t = 12345)]
    pub seed: u64,
}

/// Runs `calibrate`.
///
/// # Errors
/// A bad architecture, space, preset, findings file or device, or a result
/// that cannot be kept.
pub fn run(args: CalibrateArgs) -> anyhow::Result<ExitCode> {
    if args.seeds == 0 || args.seeds > 64 {
        bail!(
            "--seeds {}: expected 1 to 64 evaluations per architecture",
            args.seeds
        );
    }
    if args.threads == Some(0) || args.parallel == Some(0) || args.checkpoint_every == 0 {
        bail!("--threads, --parallel and --checkpoint-every must be at least 1");
    }
    let (space, shown) = super::space::load_space(args.space.as_deref())?;
    let preset = space
        .preset(&args.preset)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("--preset (space {shown})"))?;
    let baselines = Baseline::embedded();
    let findings = match &args.findings {
        Some(path) => Finding::load(path, &baselines).context("--findings")?,
        None => Finding::embedded(),
    };
    // An --arch is named after the space's own baselines, then the paper's.
    let known: Vec<Baseline> = space.baselines.iter().chain(&baselines).cloned().collect();
    let mut subjects: Vec<Subject> = Vec::new();
    for a in &args.arch {
        let subject = match known.iter().find(|b| b.name == *a) {
            Some(b) => Subject {
                name: b.name.clone(),
                spec: b.genome.clone(),
            },
            None => Subject::named(parse_arch(a)?, &known),
        };
        if subjects
            .iter()
            .any(|s| s.spec.arch_id() == subject.spec.arch_id())
        {
            bail!("--arch {a}: given twice (the same architecture as an earlier --arch)");
        }
        subjects.push(subject);
    }
    if subjects.is_empty() {
        // The baselines, then what the findings name besides them.
        subjects = baselines
            .iter()
            .map(|b| Subject {
                name: b.name.clone(),
                spec: b.genome.clone(),
            })
            .collect();
        for r in findings.iter().flat_map(Finding::named) {
            if !subjects
                .iter()
                .any(|s| s.spec.arch_id() == r.spec.arch_id())
            {
                subjects.push(Subject::named(r.spec.clone(), &baselines));
            }
        }
    }
    let device: DeviceSpec = args.device.parse()?;
    device.check()?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("calibration").join(&args.preset));
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating the calibration directory {}", dir.display()))?;
    // One calibration per directory: two would remove each other's
    // checkpoint files as their runs finish.
    let lock_path = dir.join(".lock");
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("creating the lock file {}", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "{} is in use by another `mad-search calibrate` (it holds {}); wait for it to finish \
             or give this one another --dir",
            dir.display(),
            lock_path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", lock_path.display()));
        }
    }
    let stop = stop_on_ctrl_c()?;

    let stages: Vec<StageName> = match args.stage {
        CalibrateStage::Screen => vec![StageName::Screen],
        CalibrateStage::Mad => vec![StageName::Screen, StageName::Mad],
    };
    let mut results: Vec<Vec<SubjectResults>> = Vec::new();
    for &stage in &stages {
        let settings = preset
            .tasks(stage)
            .expect("screen and mad have task settings")
            .clone();
        match calibrate_stage(&args, &dir, stage, &settings, &subjects, device, stop)? {
            Some(r) => results.push(r),
            None => {
                eprintln!(
                    "interrupted; run the same command to resume (kept in {})",
                    dir.display()
                );
                return Ok(ExitCode::from(130));
            }
        }
    }
    let last = results.last().expect("one stage at least");
    let stage = *stages.last().expect("one stage at least");
    let report = Report {
        preset: args.preset.clone(),
        stage,
        metrics: stages
            .iter()
            .map(|&st| (st, preset.tasks(st).map(|s| s.metric).unwrap_or_default()))
            .collect(),
        seeds: args.seeds,
        dir: dir.clone(),
        summaries: last.iter().filter_map(SubjectResults::summary).collect(),
        seed_agreement: (args.seeds > 1).then(|| seed_agreement(last, args.seeds)),
        screen_to_mad: (results.len() == 2).then(|| stage_agreement(&results[0], &results[1])),
        findings: check_findings(&findings, &subjects, last),
        results,
    };
    if args.json {
        out(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
    } else {
        out(&report.text())?;
    }
    drop(lock);
    Ok(ExitCode::SUCCESS)
}

/// Every subject at one stage, seed-major (all subjects' seed 0 first, so an
/// early stop still leaves a comparable set). `None` when interrupted.
fn calibrate_stage(
    args: &CalibrateArgs,
    dir: &std::path::Path,
    stage: StageName,
    settings: &StageSettings,
    subjects: &[Subject],
    device: DeviceSpec,
    stop: &'static AtomicBool,
) -> anyhow::Result<Option<Vec<SubjectResults>>> {
    let total_runs = crate::stages::stage_settings(settings).len()
        * settings.lr.len()
        * settings.weight_decay.len();
    let (parallel, threads) = lanes(total_runs, args.parallel, args.threads);
    let mut results: Vec<SubjectResults> = subjects
        .iter()
        .map(|s| SubjectResults {
            name: s.name.clone(),
            layers: s.spec.compact_string(),
            seeds: vec![None; args.seeds],
        })
        .collect();
    let count = subjects.len() * args.seeds;
    for k in 0..args.seeds {
        for (i, subject) in subjects.iter().enumerate() {
            let (seed, data_seed) = seeds(args.seed, k);
            let here = eval_dir(dir, stage, subject, k);
            let print = fingerprint(
                &subject.spec,
                settings,
                seed,
                data_seed,
                &device.to_string(),
            );
            let n = k * subjects.len() + i + 1;
            let mut stale = None;
            match read_kept(&here, &print) {
                KeptState::Current(kept) => {
                    eprintln!(
                        "[{n}/{count}] {} {} seed {k}: kept, score {:.3} ({:.0} s)",
                        stage.name(),
                        subject.name,
                        kept.result.score,
                        kept.result.seconds
                    );
                    results[i].seeds[k] = Some(*kept);
                    continue;
                }
                KeptState::Absent => {}
                KeptState::Stale(old) => {
                    eprintln!(
                        "[{n}/{count}] {}: the kept result is of other settings (preset, seeds \
                         or version changed); evaluating again, reusing the runs that still match",
                        here.display()
                    );
                    stale = Some(old);
                }
                KeptState::Damaged(why) => {
                    eprintln!("[{n}/{count}] {why}: unreadable; evaluating again")
                }
            }
            std::fs::create_dir_all(&here)
                .with_context(|| format!("creating {}", here.display()))?;
            // The time of earlier invocations, from the clock they kept.
            let (earlier, why) = clock::earlier(&here, &print, has_runs(&here));
            if let Some(why) = why {
                eprintln!("[{n}/{count}] {why}: unreadable; counted as no clock");
            }
            let clock = Clock::start(&here, earlier.clone(), clock::TICK)
                .with_context(|| format!("keeping the wall time in {}", here.display()))?;
            eprintln!(
                "[{n}/{count}] {} {} seed {k}{}",
                stage.name(),
                subject.name,
                match (earlier.invocations, earlier.undercounts) {
                    (0, _) => String::new(),
                    (_, true) => format!(
                        " (resuming: {:.0} s counted, runs no clock counted: \
                         the wall time will undercount)",
                        earlier.seconds
                    ),
                    (i, false) => format!(
                        " (resuming: {:.0} s over {i} earlier invocation{})",
                        earlier.seconds,
                        if i == 1 { "" } else { "s" }
                    ),
                }
            );
            let progress = Progress::new(stage_epochs(settings), settings.early_stop);
            let report = |p: &StageProgress<'_>| progress.epoch(p);
            let ctl = StageControl {
                dir: Some(&here),
                checkpoint_every: args.checkpoint_every,
                stop: Some(stop),
                parallel,
                threads: Some(threads),
                data: None,
                data_seed,
            };
            let result = on_device!(device, B, dev => evaluate::<B>(
                &subject.spec, stage, settings, seed, &dev, ctl, &report,
            ));
            progress.finish();
            let spent = clock.stop();
            let result = match result {
                Ok(r) => r,
                Err(TrainError::Interrupted { .. }) => return Ok(None),
                Err(e) => {
                    return Err(anyhow::Error::from(e).context(format!(
                        "{} seed {k} ({})",
                        subject.name,
                        stage.name()
                    )));
                }
            };
            let mut kept = Kept {
                fingerprint: print,
                undercounts: spent.undercounts,
                invocations: spent.invocations,
                result,
            };
            // This invocation's stage time (what an uninterrupted one
            // reports) plus the earlier invocations'.
            kept.result.seconds += earlier.seconds;
            if let Some(old) = &stale {
                carry_wall_time(old, &mut kept);
            }
            // The clock agrees with the result (a carried wall time
            // included), should the result be lost and evaluated again.
            let total = clock::Spent {
                seconds: kept.result.seconds,
                invocations: kept.invocations,
                undercounts: kept.undercounts,
                ..spent
            };
            clock::keep(&here, &total)
                .with_context(|| format!("keeping the wall time in {}", here.display()))?;
            eprintln!(
                "[{n}/{count}] {} {} seed {k}: score {:.3} in {:.0} s{}",
                stage.name(),
                subject.name,
                kept.result.score,
                kept.result.seconds,
                match (kept.invocations, kept.undercounts) {
                    (_, true) => " (and earlier invocations' uncounted time)".to_string(),
                    (1, false) => String::new(),
                    (i, false) => format!(" over {i} invocations"),
                }
            );
            write_kept(&here, &kept)
                .with_context(|| format!("keeping the result in {}", here.display()))?;
            results[i].seeds[k] = Some(kept);
        }
    }
    Ok(Some(results))
}

/// What `calibrate` prints.
#[derive(serde::Serialize)]
struct Report {
    preset: String,
    stage: StageName,
    /// The accuracy each stage run scores by.
    metrics: BTreeMap<StageName, Metric>,
    seeds: usize,
    dir: PathBuf,
    summaries: Vec<crate::calibrate::Summary>,
    seed_agreement: Option<SeedAgreement>,
    screen_to_mad: Option<Agreement>,
    findings: Vec<Check>,
    /// Every evaluation, per stage run (screen, then mad with `--stage mad`).
    results: Vec<Vec<SubjectResults>>,
}

fn estimate(e: &Option<Estimate>) -> String {
    match e {
        Some(e) => match &e.interval {
            Some(i) => format!("{:+.2} (90 % CI {:+.2} … {:+.2})", e.value, i.lo, i.hi),
            None => format!("{:+.2} (no interval)", e.value),
        },
        None => "undefined (all tied)".into(),
    }
}

impl Report {
    /// "micro accuracy", or each stage's when they differ (the screen → mad
    /// correlations then compare different accuracies).
    fn scored_by(&self) -> String {
        let mut metrics: Vec<Metric> = self.metrics.values().copied().collect();
        metrics.dedup();
        match metrics[..] {
            [one] => format!("{} accuracy", one.name()),
            _ => self
                .metrics
                .iter()
                .map(|(stage, m)| format!("{} {} accuracy", stage.name(), m.name()))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "calibration: preset {}, stage {} (scored by {}), {} seed{} (kept in {})",
            self.preset,
            self.stage.name(),
            self.scored_by(),
            self.seeds,
            if self.seeds == 1 { "" } else { "s" },
            self.dir.display()
        );
        let tasks: Vec<TaskKind> = TaskKind::ALL
            .iter()
            .copied()
            .filter(|t| self.summaries.iter().any(|x| x.per_task.contains_key(t)))
            .collect();
        let cell = |x: &crate::calibrate::Spread| {
            if self.seeds > 1 {
                format!("{:.3}±{:.3}", x.mean, x.std)
            } else {
                format!("{:.3}", x.mean)
            }
        };
        let w = if self.seeds > 1 { 11 } else { 5 };
        let _ = write!(s, "{:<44}", "architecture");
        for t in &tasks {
            let _ = write!(s, " {:>w$}", t.short());
        }
        let _ = writeln!(s, " {:>w$} {:>8}", "score", "wall s");
        for x in &self.summaries {
            let _ = write!(s, "{:<44}", x.name);
            for t in &tasks {
                let c = x.per_task.get(t).map_or_else(|| "-".into(), cell);
                let _ = write!(s, " {c:>w$}");
            }
            let _ = writeln!(
                s,
                " {:>w$} {:>7.0}{}",
                cell(&x.score),
                x.seconds,
                if x.undercounts { "*" } else { " " }
            );
        }
        if self.summaries.iter().any(|x| x.undercounts) {
            let _ = writeln!(
                s,
                "* some runs were left by an invocation no clock counted: the wall time undercounts"
            );
        }
        if let Some(a) = &self.seed_agreement {
            for (i, j, tau, n) in &a.pairs {
                let _ = writeln!(
                    s,
                    "ranking, seed {i} vs seed {j}: Kendall's τ {} over {n} architectures",
                    tau.map_or_else(|| "undefined".into(), |t| format!("{t:+.2}"))
                );
            }
        }
        if let Some(a) = &self.screen_to_mad {
            if a.spearman.is_none() && a.kendall.is_none() {
                let _ = writeln!(
                    s,
                    "screen → mad: {} architectures at both stages (ρ and τ from {} on)",
                    a.n,
                    crate::stats::MIN_AGREEMENT_PAIRS
                );
            } else {
                let _ = writeln!(
                    s,
                    "screen → mad over {} architectures: Spearman's ρ {}, Kendall's τ {}",
                    a.n,
                    estimate(&a.spearman),
                    estimate(&a.kendall)
                );
            }
        }
        let _ = writeln!(s, "findings:");
        for c in &self.findings {
            let v = match c.verdict {
                Verdict::Holds => "holds",
                Verdict::Partial => "partial",
                Verdict::Fails => "FAILS",
                Verdict::NotChecked => "not checked",
            };
            let _ = writeln!(s, "  {v:<12} {}: {}", c.name, c.detail);
        }
        s
    }
}
