//! `mad-search eval`: one architecture through one stage, without a daemon.
//! Prints a per-task table (or the whole result as JSON with `--json`);
//! progress goes to stderr: a bar in a terminal, one line per epoch otherwise.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};

use super::out;
use crate::genome::ArchSpec;
use crate::layers::device::{DeviceSpec, on_device};
use crate::scale::corpus::Corpus;
use crate::scale::plan::plan;
use crate::space::{Metric, ScaleSettings, StageName};
use crate::stages::scale::{ScaleControl, ScaleProgress, evaluate as scale_evaluate};
use crate::stages::{StageControl, StageProgress, StageResult, evaluate};
use crate::train::TrainError;

/// The stages `eval` can run.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StageArg {
    /// Each task's baseline setting, one optimiser setting.
    Screen,
    /// The MAD protocol: the difficulty grid and the lr × wd sweep.
    Mad,
    /// Language-model scaling runs on the corpus and the scaling-law fit.
    Scale,
    /// The scale stage, then its compute-optimal size of one budget
    /// trained on multiples of that budget's tokens (the overtrained
    /// regime); with --checkpoints DIR, the two stages keep their runs in
    /// DIR/scale and DIR/overtrain.
    Overtrain,
}

/// Arguments of `eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The architecture: a reference layer string ("mh-hyena swiglu
    /// mh-attention swiglu"), the compact form `show` and `space sample` print
    /// ("mh-attention[kv_heads=4] swiglu", "d64: hyena swiglu"), a short run
    /// id ("mH-Sg-mA-Sg"), or a genome file (.json or .toml, as `export` writes).
    #[arg(long)]
    pub arch: String,
    /// Which stage to run.
    #[arg(long, value_enum, default_value_t = StageArg::Screen)]
    pub stage: StageArg,
    /// Stage preset from the search space (`tiny`, `cpu`, `paper` in the default).
    #[arg(long, default_value = "cpu")]
    pub preset: String,
    /// Search space holding the presets (default: the embedded default.toml).
    #[arg(long)]
    pub space: Option<PathBuf>,
    /// Print the full result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// CPU threads per run (default: the cores divided among the parallel runs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Runs side by side, each in its own thread pool (default: one per core,
    /// at most the stage's runs; on 2 cores two single-threaded runs finish
    /// 1.8× sooner than one after the other on two threads).
    #[arg(long)]
    pub parallel: Option<usize>,
    /// Keep checkpoints and finished runs in this directory; running the same
    /// command again (after a crash or Ctrl-C) resumes instead of restarting.
    #[arg(long, value_name = "DIR")]
    pub checkpoints: Option<PathBuf>,
    /// Checkpoint interval in optimiser steps (with --checkpoints).
    #[arg(long, default_value_t = 50, value_name = "STEPS")]
    pub checkpoint_every: usize,
    /// Train and test on data in the reference layout under this directory
    /// (`<setting dir>/{train,test}/{inputs,targets}.npy`) instead of generating it.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Corpus of `--stage scale`: UTF-8 text (bytes as tokens) or `*.bin`
    /// little-endian u16 tokens (default: the embedded corpus).
    #[arg(long, value_name = "PATH")]
    pub corpus: Option<PathBuf>,
    /// Device: cpu, cuda, cuda:N or wgpu.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Seed of weights and batch order.
    #[arg(long, default_value_t = 12345)]
    pub seed: u64,
}

/// A stop flag raised by Ctrl-C: runs checkpoint and the command exits;
/// a second Ctrl-C quits at once (exit 130).
///
/// # Errors
/// The handler cannot be installed.
pub(crate) fn stop_on_ctrl_c() -> anyhow::Result<&'static AtomicBool> {
    let stop: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
    ctrlc::set_handler(move || {
        if stop.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("stopping: runs checkpoint and exit (Ctrl-C again to quit at once)");
    })
    .context("installing the Ctrl-C handler")?;
    Ok(stop)
}

/// Runs side by side and threads per run for `runs` runs: as given, else
/// one run per core (at most `runs`) and the cores divided among them.
pub(crate) fn lanes(
    runs: usize,
    parallel: Option<usize>,
    threads: Option<usize>,
) -> (usize, usize) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let parallel = parallel.unwrap_or(cores.min(runs).max(1));
    (parallel, threads.unwrap_or((cores / parallel).max(1)))
}

/// Reads `--arch`: a genome file if one exists at that path, else a layer string.
pub(crate) fn parse_arch(arg: &str) -> anyhow::Result<ArchSpec> {
    let path = Path::new(arg);
    let spec = if path.is_file() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the genome file {}", path.display()))?;
        let json = || serde_json::from_str::<ArchSpec>(&text).map_err(anyhow::Error::from);
        let toml = || toml::from_str::<ArchSpec>(&text).map_err(anyhow::Error::from);
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => json(),
            Some("toml") => toml(),
            _ => json().or_else(|_| toml()),
        }
        .with_context(|| {
            format!(
                "{}: not a genome (JSON or TOML with d_model and layers)",
                path.display()
            )
        })?
    } else if arg.contains('/') || arg.ends_with(".json") || arg.ends_with(".toml") {
        // No primitive name looks like this: a genome file that is not there.
        let why = match std::fs::metadata(path) {
            Ok(_) => "is not a regular file".to_string(),
            Err(e) => e.to_string(),
        };
        anyhow::bail!(
            "--arch `{arg}`: the genome file cannot be read ({why}); give a genome file \
             as `export` writes, a layer string or a short run id"
        );
    } else if !arg.contains(char::is_whitespace)
        && arg.contains('-')
        && ArchSpec::from_short_str(arg).is_ok()
    {
        ArchSpec::from_short_str(arg)?
    } else {
        ArchSpec::from_compact_str(arg).with_context(|| {
            format!("--arch `{arg}` is not a file, a layer string or a short run id")
        })?
    };
    spec.validate_layers()
        .with_context(|| format!("--arch `{arg}`"))?;
    Ok(spec)
}

/// Runs `eval`.
///
/// # Errors
/// A bad architecture, space, preset or device; never a failed run (that is a result).
pub fn run(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let spec = parse_arch(&args.arch)?;
    let (space, shown) = super::space::load_space(args.space.as_deref())?;
    let preset = space
        .preset(&args.preset)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("--preset (space {shown})"))?;
    let stage = match args.stage {
        StageArg::Screen => StageName::Screen,
        StageArg::Mad => StageName::Mad,
        StageArg::Scale => StageName::Scale,
        StageArg::Overtrain => StageName::Overtrain,
    };
    let device: DeviceSpec = args.device.parse()?;
    device.check()?;
    if args.threads == Some(0) || args.parallel == Some(0) || args.checkpoint_every == 0 {
        bail!("--threads, --parallel and --checkpoint-every must be at least 1");
    }
    if let Some(dir) = &args.data
        && !dir.is_dir()
    {
        bail!("--data {}: no such directory", dir.display());
    }
    if args.corpus.is_some() && !matches!(stage, StageName::Scale | StageName::Overtrain) {
        bail!("--corpus is for --stage scale and --stage overtrain");
    }
    let stop = stop_on_ctrl_c()?;
    let Some(settings) = preset.tasks(stage) else {
        return run_scale(&args, &spec, &preset.scale, device, stop, stage);
    };
    let settings = settings.clone();
    let total_runs = crate::stages::stage_settings(&settings).len()
        * settings.lr.len()
        * settings.weight_decay.len();
    let (parallel, threads) = lanes(total_runs, args.parallel, args.threads);
    let progress = Progress::new(stage_epochs(&settings), settings.early_stop);
    let report = |p: &StageProgress<'_>| progress.epoch(p);
    let ctl = StageControl {
        dir: args.checkpoints.as_deref(),
        checkpoint_every: args.checkpoint_every,
        stop: Some(stop),
        parallel,
        threads: Some(threads),
        data: args.data.as_deref(),
        data_seed: None,
    };
    let result = on_device!(device, B, dev => evaluate::<B>(
        &spec, stage, &settings, args.seed, &dev, ctl, &report,
    ));
    progress.finish();
    let Some(result) = finished(result, &args)? else {
        return Ok(ExitCode::from(130));
    };
    if args.json {
        let value = serde_json::json!({
            "arch": spec.layers_string(),
            "arch_id": spec.arch_id().to_string(),
            "genome": &spec,
            "preset": &args.preset,
            "metric": settings.metric.name(),
            "result": &result,
        });
        out(&format!("{}\n", serde_json::to_string_pretty(&value)?))?;
    } else {
        out(&table(&spec, &args.preset, &result, settings.metric))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The result, `None` after an interruption (said on stderr), or the error.
fn finished<T>(result: Result<T, TrainError>, args: &EvalArgs) -> anyhow::Result<Option<T>> {
    match result {
        Ok(r) => Ok(Some(r)),
        Err(TrainError::Interrupted { .. }) => {
            match &args.checkpoints {
                Some(dir) => eprintln!(
                    "interrupted; run the same command to resume from {}",
                    dir.display()
                ),
                None => eprintln!("interrupted (nothing kept: pass --checkpoints DIR to resume)"),
            }
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// `eval --stage scale` and `--stage overtrain` (which runs `scale` first).
fn run_scale(
    args: &EvalArgs,
    spec: &ArchSpec,
    settings: &ScaleSettings,
    device: DeviceSpec,
    stop: &'static AtomicBool,
    stage: StageName,
) -> anyhow::Result<ExitCode> {
    let corpus = match &args.corpus {
        Some(path) => Corpus::load(path).context("--corpus")?,
        None => Corpus::embedded(),
    };
    let overtrain = stage == StageName::Overtrain;
    let sub = |name: &str| -> anyhow::Result<Option<PathBuf>> {
        let Some(dir) = &args.checkpoints else {
            return Ok(None);
        };
        if !overtrain {
            return Ok(Some(dir.clone()));
        }
        let d = dir.join(name);
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        Ok(Some(d))
    };
    let scale_dir = sub("scale")?;
    let planned = plan(spec, settings, corpus.vocab())?;
    let Some(result) = scale_runs(
        args,
        spec,
        settings,
        &corpus,
        device,
        stop,
        scale_dir.as_deref(),
        &planned,
    )?
    else {
        return Ok(ExitCode::from(130));
    };
    let (text, value) = if overtrain {
        let (to_train, _) =
            crate::stages::overtrain::planned_runs(spec, settings, &corpus, &result)?;
        let dir = sub("overtrain")?;
        let (parallel, threads) = lanes(to_train.len(), args.parallel, args.threads);
        let ctl = ScaleControl {
            dir: dir.as_deref(),
            checkpoint_every: args.checkpoint_every,
            stop: Some(stop),
            parallel,
            threads: Some(threads),
        };
        let total: usize = to_train.iter().map(|r| r.planned.steps).sum();
        let bar = bar(total);
        let report = |p: &ScaleProgress<'_>| show_progress(bar.as_ref(), p);
        let over = on_device!(device, B, dev => crate::stages::overtrain::evaluate::<B>(
            spec, settings, &corpus, &result, args.seed, &dev, ctl, &report,
        ));
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        let Some(over) = finished(over, args)? else {
            return Ok(ExitCode::from(130));
        };
        (
            format!(
                "{} — stages scale and overtrain (preset {}, corpus {}), {:.1} s\n{}\n{}",
                spec.compact_string(),
                args.preset,
                result.corpus,
                result.seconds + over.seconds,
                result.text(),
                over.text()
            ),
            serde_json::json!({ "scale": &result, "overtrain": &over }),
        )
    } else {
        (
            format!(
                "{} — stage scale (preset {}, corpus {}), {:.1} s\n{}",
                spec.compact_string(),
                args.preset,
                result.corpus,
                result.seconds,
                result.text()
            ),
            serde_json::to_value(&result)?,
        )
    };
    if args.json {
        let value = serde_json::json!({
            "arch": spec.layers_string(),
            "arch_id": spec.arch_id().to_string(),
            "genome": spec,
            "preset": &args.preset,
            "result": value,
        });
        out(&format!("{}\n", serde_json::to_string_pretty(&value)?))?;
    } else {
        out(&text)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A progress bar of `total` steps on a terminal.
fn bar(total: usize) -> Option<indicatif::ProgressBar> {
    std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(total as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} steps (eta {eta}) {msg}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar
    })
}

/// One step of a scaling run: on the bar, else one line per tenth of a run.
fn show_progress(bar: Option<&indicatif::ProgressBar>, p: &ScaleProgress<'_>) {
    let line = p.line();
    match bar {
        Some(bar) => {
            bar.inc(1);
            bar.set_message(line);
        }
        None if p.step.is_multiple_of(p.planned.steps.div_ceil(10).max(1))
            || p.step == p.planned.steps =>
        {
            eprintln!("{line}")
        }
        None => {}
    }
}

/// The `scale` stage's runs and fit; `None` after an interruption.
#[allow(clippy::too_many_arguments)]
fn scale_runs(
    args: &EvalArgs,
    spec: &ArchSpec,
    settings: &ScaleSettings,
    corpus: &Corpus,
    device: DeviceSpec,
    stop: &'static AtomicBool,
    dir: Option<&Path>,
    planned: &[crate::scale::plan::PlannedRun],
) -> anyhow::Result<Option<crate::stages::scale::ScaleResult>> {
    let (parallel, threads) = lanes(planned.len(), args.parallel, args.threads);
    let ctl = ScaleControl {
        dir,
        checkpoint_every: args.checkpoint_every,
        stop: Some(stop),
        parallel,
        threads: Some(threads),
    };
    let total_steps: usize = planned.iter().map(|p| p.steps).sum();
    let bar = bar(total_steps);
    let report = |p: &ScaleProgress<'_>| show_progress(bar.as_ref(), p);
    let result = on_device!(device, B, dev => scale_evaluate::<B>(
        spec, settings, corpus, args.seed, &dev, ctl, &report,
    ));
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    finished(result, args)
}

/// The per-task table: each task's score by the preset's `metric` and,
/// beside it, the other accuracy of the same runs.
fn table(spec: &ArchSpec, preset: &str, r: &StageResult, metric: Metric) -> String {
    use std::fmt::Write as _;
    let other = metric.other();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} — stage {} (preset {preset}, scored by {} accuracy), {:.1} s",
        spec.compact_string(),
        r.stage.name(),
        metric.name(),
        r.seconds
    );
    let _ = writeln!(
        s,
        "{:<26} {:>8} {:>8} {:>8} {:>9}",
        "task",
        "settings",
        "score",
        other.name(),
        "seconds"
    );
    for (task, score) in &r.per_task {
        let settings: Vec<_> = r
            .per_setting
            .iter()
            .filter(|x| x.setting.task == *task)
            .collect();
        let beside = settings.iter().map(|x| x.best.of(other)).sum::<f64>() / settings.len() as f64;
        let secs: f64 = settings
            .iter()
            .flat_map(|x| x.runs.iter())
            .map(|run| run.result.seconds)
            .sum();
        let _ = writeln!(
            s,
            "{:<26} {:>8} {:>8.3} {:>8.3} {:>9.1}",
            task.name(),
            settings.len(),
            score,
            beside,
            secs
        );
    }
    let _ = writeln!(
        s,
        "{:<26} {:>8} {:>8.3}",
        "MAD score (mean of tasks)",
        r.per_setting.len(),
        r.score
    );
    s
}

/// Progress on stderr: a bar over all epochs of all runs in a terminal,
/// one plain line per epoch otherwise (logs, pipes, CI).
pub(crate) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    early_stop: f64,
}

/// Most epochs of all of a stage's runs (each setting's own cap, a step
/// cap included, times the sweep).
pub(crate) fn stage_epochs(settings: &crate::space::StageSettings) -> usize {
    let sweep = settings.lr.len() * settings.weight_decay.len();
    crate::stages::stage_settings(settings)
        .iter()
        .map(|s| {
            crate::train::run::epoch_cap(
                settings.max_epochs_of(s.task),
                settings.max_steps_of(s.task),
                s.num_train,
                settings.batch_size,
            ) * sweep
        })
        .sum()
}

impl Progress {
    pub(crate) fn new(epochs: usize, early_stop: f64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(epochs as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30}] {pos}/{len} epochs (eta {eta}) {msg}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar
        });
        Progress { bar, early_stop }
    }

    pub(crate) fn epoch(&self, p: &StageProgress<'_>) {
        let s = p.setting;
        let line = format!(
            "[run {}/{} {} vocab {} len {} lr {:e} wd {}] epoch {}/{} loss {:.4} valid {:.3}",
            p.run.0,
            p.run.1,
            s.task,
            s.vocab,
            s.seq_len,
            p.lr,
            p.weight_decay,
            p.epoch.epoch,
            p.epoch.max_epochs,
            p.epoch.loss,
            p.valid()
        );
        match &self.bar {
            Some(bar) => {
                bar.inc(1);
                // An early stop skips the run's remaining epochs.
                if p.valid() >= self.early_stop {
                    bar.inc(p.epoch.max_epochs.saturating_sub(p.epoch.epoch) as u64);
                }
                bar.set_message(line);
            }
            None => eprintln!("{line}"),
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
