//! `mad-search start`: create or resume a search and run its daemon, in the
//! background (default) or attached (`--foreground`).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;

use super::state::{StateArgs, daemon_pid};
use crate::daemon::DaemonConfig;
use crate::daemon::control::{Answer, Request, request};
use crate::layers::device::DeviceSlots;
use crate::scale::corpus::Corpus;
use crate::search::candidate;
use crate::space::{DEFAULT_SPACE, DEFAULT_SPACE_NAME, Operator, SearchSpace, StageName};
use crate::store::{Candidate, SearchBudget, SearchRecord, Store, StoreError, now};

/// Arguments of `start`.
#[derive(Debug, Args)]
pub struct StartArgs {
    #[command(flatten)]
    pub at: StateArgs,
    /// Search-space file (new searches; default: the embedded default.toml).
    #[arg(long)]
    pub space: Option<PathBuf>,
    /// Stage preset of the space (new searches; default: cpu).
    #[arg(long)]
    pub preset: Option<String>,
    /// Seed of every random choice (new searches; default: 1).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Corpus of the `scale` stage (new searches): UTF-8 text (bytes as
    /// tokens) or `*.bin` little-endian u16 tokens; default: the embedded
    /// State of the Union addresses (corpora/sotu/).
    #[arg(long, value_name = "PATH")]
    pub corpus: Option<PathBuf>,
    /// Limits, comma-separated: `hours=H`, `screen=N`, `mad=N`, `scale=N`,
    /// `overtrain=N`
    /// (evaluations per stage). Replaces the stored budget when given.
    #[arg(long)]
    pub budget: Option<String>,
    /// Stay attached (for systemd, Slurm, containers) instead of detaching.
    #[arg(long)]
    pub foreground: bool,
    /// Jobs side by side (default: one per core; on Slurm, jobs submitted at
    /// once, default 4).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Tensor threads per job (default: the cores divided among the workers;
    /// on Slurm, `--cpus-per-task`, default: what the cluster gives a job).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Devices: cpu, cuda, cuda:N or wgpu, or a comma-separated list of worker
    /// slots, each with an optional count (`cuda:0x8`: eight jobs side by side
    /// on GPU 0; `cuda:0x4,cuda:1x4`); worker `w` runs on slot `w mod slots`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// A job running longer than this (seconds) is stopped and retried (on
    /// Slurm: its time limit, `--time`, with --grace added).
    #[arg(long, default_value_t = 86_400.0)]
    pub job_timeout: f64,
    /// Checkpoint interval in optimiser steps.
    #[arg(long, default_value_t = 50)]
    pub checkpoint_every: usize,
    /// Events kept in the search's event log (candidates created, jobs
    /// queued, leased, requeued, finished or failed): older ones are
    /// dropped at start and as the search goes.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub keep_events: usize,
    /// Where jobs run: `local` (a worker process per job: a job that runs
    /// out of memory, aborts or hangs costs only its attempt), `threads`
    /// (the daemon's own threads) or `slurm` (each job a Slurm batch job;
    /// the state dir must be on a file system the nodes share).
    #[arg(long, default_value = "local", value_name = "EXECUTOR")]
    pub executor: String,
    /// Slurm: the partition jobs go to (`sbatch --partition`).
    #[arg(long, value_name = "NAME")]
    pub slurm_partition: Option<String>,
    /// Slurm: the account jobs are charged to (`sbatch --account`).
    #[arg(long, value_name = "NAME")]
    pub slurm_account: Option<String>,
    /// Slurm: generic resources per job (`sbatch --gres`, e.g. `gpu:1`).
    #[arg(long, value_name = "GRES")]
    pub slurm_gres: Option<String>,
    /// Slurm: one more `sbatch` argument, as one word (`--slurm-arg=--qos=short`);
    /// repeatable.
    #[arg(long = "slurm-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub slurm_arg: Vec<String>,
    /// Slurm: seconds between two `squeue` calls (default 5).
    #[arg(long, value_name = "SECS")]
    pub slurm_poll: Option<f64>,
    /// Seconds a stopped worker process (`stop`, a lapsed lease) gets to
    /// checkpoint before it is killed.
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    pub grace: f64,
    /// Add an architecture to screen first (a layers string, a short run id
    /// or a genome file as `export` writes); repeatable. A layers string is
    /// read at width 128, or at the space's first width if 128 is not allowed.
    #[arg(long = "seed-arch", value_name = "ARCH")]
    pub seed_arch: Vec<String>,
}

/// The absolute path of a `--corpus` and its fingerprint, after checking
/// that it loads (a bad corpus is refused before anything starts).
fn corpus_path(path: &Path) -> anyhow::Result<(String, String)> {
    let corpus = Corpus::load(path).context("--corpus")?;
    let abs =
        std::fs::canonicalize(path).with_context(|| format!("--corpus {}", path.display()))?;
    Ok((abs.display().to_string(), corpus.fingerprint()))
}

/// Parses `hours=H,screen=N,mad=N,scale=N,overtrain=N`.
fn parse_budget(text: &str) -> anyhow::Result<SearchBudget> {
    let mut b = SearchBudget::default();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once('=')
            .with_context(|| format!("--budget `{part}`: expected KEY=VALUE"))?;
        let bad = || {
            format!(
                "--budget `{part}`: expected a positive number (keys: hours, screen, mad, scale, overtrain)"
            )
        };
        match key.trim() {
            "hours" => {
                let h: f64 = value
                    .trim()
                    .parse()
                    .ok()
                    .filter(|h: &f64| *h > 0.0)
                    .with_context(bad)?;
                b.hours = Some(h);
            }
            name @ ("screen" | "mad" | "scale" | "overtrain") => {
                let n: u64 = value.trim().parse().with_context(bad)?;
                let stage = StageName::ALL
                    .iter()
                    .copied()
                    .find(|s| s.name() == name)
                    .expect("a stage name");
                b.evaluations.insert(stage, n);
            }
            other => {
                bail!(
                    "--budget: unknown key `{other}`; expected hours, screen, mad, scale or overtrain"
                )
            }
        }
    }
    Ok(b)
}

/// Runs `start`.
///
/// # Errors
/// Bad input, a state dir in use, or a daemon that fails to come up.
pub fn run(args: StartArgs) -> anyhow::Result<ExitCode> {
    let state = args.at.dir();
    if let Some(pid) = daemon_pid(&state) {
        bail!(
            "a daemon (pid {pid}) is already running on {}; stop it with `mad-search stop --state {}`",
            state.display(),
            state.display()
        );
    }
    crate::daemon::control::check_socket_path(&state).map_err(anyhow::Error::msg)?;
    let executor = executor(&args)?;
    let on_slurm = matches!(executor, crate::exec::Executor::Slurm(_));
    let device: DeviceSlots = args.device.parse()?;
    if on_slurm {
        // Checked by each job on its node (this machine may have no GPU).
        if device.distinct().len() != 1 {
            bail!(
                "--device {}: on Slurm every job runs on one device of its own allocation; \
                 give one (e.g. --device cuda:0 with --slurm-gres gpu:1)",
                args.device
            );
        }
    } else {
        device.check()?;
    }
    if args.workers == Some(0)
        || args.threads == Some(0)
        || args.checkpoint_every == 0
        || args.keep_events == 0
    {
        bail!("--workers, --threads, --checkpoint-every and --keep-events must be at least 1");
    }
    // At most about 31 years: durations beyond the clock's range would panic.
    const MAX_SECONDS: f64 = 1e9;
    if !(args.job_timeout > 0.0 && args.job_timeout <= MAX_SECONDS) {
        bail!("--job-timeout must be a positive number of seconds, at most {MAX_SECONDS:e}");
    }
    if !(args.grace >= 0.0 && args.grace <= MAX_SECONDS) {
        bail!("--grace must be a number of seconds from 0 to {MAX_SECONDS:e}");
    }
    let budget = args.budget.as_deref().map(parse_budget).transpose()?;
    // Everything is checked before anything is written: a refused flag
    // leaves no search behind and changes none.
    let opening = open_or_plan(&args, &state)?;
    let space = match &opening {
        Opening::Existing(store) => {
            let record = store.search()?.context("no search record")?;
            SearchSpace::parse(Path::new(&record.space_file), &record.space_text)?
        }
        Opening::New(record) => {
            SearchSpace::parse(Path::new(&record.space_file), &record.space_text)?
        }
    };
    let seeds = args
        .seed_arch
        .iter()
        .map(|arch| seed_candidate(&space, arch))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let store = commit(opening, &state, budget)?;
    for c in &seeds {
        // The screen runs as one job (`stages::stage_parts`).
        match store.add_candidate(c, StageName::Screen, &[])? {
            Some(job) => eprintln!("queued {} for screening (job {job})", c.id.short()),
            None => eprintln!("{} is already in the population", c.id.short()),
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (workers, threads) = if on_slurm {
        // 0 threads: what the cluster gives each job.
        (args.workers.unwrap_or(4), args.threads.unwrap_or(0))
    } else {
        let workers = args.workers.unwrap_or(device.default_workers(cores));
        (workers, args.threads.unwrap_or((cores / workers).max(1)))
    };
    if args.foreground {
        let cfg = DaemonConfig {
            state: state.clone(),
            workers,
            threads,
            device,
            job_timeout: args.job_timeout,
            checkpoint_every: args.checkpoint_every,
            keep_events: args.keep_events,
            executor,
            grace: Duration::from_secs_f64(args.grace),
        };
        crate::daemon::run(cfg, store)?;
        return Ok(ExitCode::SUCCESS);
    }
    store.flush()?;
    drop(store);
    detach(&args, &state, workers, threads)
}

/// The executor the flags ask for, with its Slurm options; on Slurm, the
/// Slurm commands are checked to be there.
fn executor(args: &StartArgs) -> anyhow::Result<crate::exec::Executor> {
    use crate::exec::Executor;
    let executor: Executor = args
        .executor
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--executor: {e}"))?;
    let slurm_flags = args.slurm_partition.is_some()
        || args.slurm_account.is_some()
        || args.slurm_gres.is_some()
        || args.slurm_poll.is_some()
        || !args.slurm_arg.is_empty();
    match executor {
        Executor::Slurm(_) => {
            let poll = args.slurm_poll.unwrap_or(5.0);
            if !(0.1..=3600.0).contains(&poll) {
                bail!("--slurm-poll must be a number of seconds from 0.1 to 3600");
            }
            for a in &args.slurm_arg {
                crate::exec::slurm::check_extra_arg(a).map_err(anyhow::Error::msg)?;
            }
            for (flag, value) in [
                ("--slurm-partition", &args.slurm_partition),
                ("--slurm-account", &args.slurm_account),
                ("--slurm-gres", &args.slurm_gres),
            ] {
                if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                    bail!("{flag}: expected a value, got an empty one");
                }
            }
            crate::exec::slurm::check_commands().map_err(|e| {
                anyhow::anyhow!(
                    "--executor slurm: {e}; or run the search here with --executor local"
                )
            })?;
            Ok(Executor::Slurm(Box::new(
                crate::exec::slurm::SlurmOptions {
                    partition: args.slurm_partition.clone(),
                    account: args.slurm_account.clone(),
                    gres: args.slurm_gres.clone(),
                    extra: args.slurm_arg.clone(),
                    poll: Duration::from_secs_f64(poll),
                },
            )))
        }
        _ if slurm_flags => bail!(
            "--slurm-partition, --slurm-account, --slurm-gres, --slurm-arg and --slurm-poll need \
             --executor slurm"
        ),
        other => Ok(other),
    }
}

/// A search about to start: one that exists (opened and checked against
/// the flags, nothing written yet) or one to create (nothing on disk yet).
enum Opening {
    /// The search in the state dir.
    Existing(Store),
    /// The record of a search to create.
    New(SearchRecord),
}

/// A state dir held by someone else, said so.
fn in_use(state: &Path, e: StoreError) -> anyhow::Error {
    match e {
        StoreError::Locked { .. } => anyhow::anyhow!(
            "{} is in use by another process (a daemon starting or stopping?): {e}",
            state.display()
        ),
        e => e.into(),
    }
}

/// Opens the search in `state` and checks the flags against it, or plans
/// a new one from the flags. Writes nothing.
fn open_or_plan(args: &StartArgs, state: &Path) -> anyhow::Result<Opening> {
    match super::state::open_store(state) {
        Ok(store) => {
            let record = store.search()?.context("no search record")?;
            let differs = |what: &str, stored: &str| {
                anyhow::anyhow!(
                    "{} holds the search `{}` with {what} {stored}; drop the flag to resume it, \
                     or pass another --state (or --name) for a new search",
                    state.display(),
                    record.name
                )
            };
            if let Some(p) = &args.preset
                && *p != record.preset
            {
                return Err(differs("preset", &record.preset));
            }
            if let Some(s) = args.seed
                && s != record.seed
            {
                return Err(differs("seed", &record.seed.to_string()));
            }
            if let Some(path) = &args.space {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                if text != record.space_text {
                    return Err(differs("the space from", &record.space_file));
                }
            }
            if let Some(path) = &args.corpus {
                let (given, _) = corpus_path(path)?;
                if record.corpus.as_deref() != Some(given.as_str()) {
                    return Err(differs(
                        "the corpus",
                        record.corpus.as_deref().unwrap_or("the embedded default"),
                    ));
                }
            }
            Ok(Opening::Existing(store))
        }
        Err(StoreError::Missing { .. }) => {
            let (space_file, space_text) = match &args.space {
                Some(path) => (
                    path.display().to_string(),
                    std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?,
                ),
                None => (DEFAULT_SPACE_NAME.to_string(), DEFAULT_SPACE.to_string()),
            };
            let space = SearchSpace::parse(Path::new(&space_file), &space_text)?;
            let preset = args.preset.clone().unwrap_or_else(|| "cpu".into());
            space
                .preset(&preset)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("--preset (space {space_file})"))?;
            let corpus = args.corpus.as_deref().map(corpus_path).transpose()?;
            let record = SearchRecord {
                name: args.at.name(),
                created_by: format!("mad-search {}", env!("CARGO_PKG_VERSION")),
                created: now(),
                seed: args.seed.unwrap_or(1),
                space_file,
                space_text,
                preset,
                budget: SearchBudget::default(),
                corpus: corpus.as_ref().map(|(path, _)| path.clone()),
                corpus_fingerprint: Some(match corpus {
                    Some((_, fingerprint)) => fingerprint,
                    None => Corpus::embedded().fingerprint(),
                }),
            };
            Ok(Opening::New(record))
        }
        Err(e) => Err(in_use(state, e)),
    }
}

/// Writes what `start` was asked: the budget of an existing search, or the
/// new search itself.
fn commit(opening: Opening, state: &Path, budget: Option<SearchBudget>) -> anyhow::Result<Store> {
    match opening {
        Opening::Existing(store) => {
            let record = store.search()?.context("no search record")?;
            if let Some(b) = &budget {
                store.set_budget(b)?;
            }
            eprintln!(
                "resuming the search `{}` in {} ({} candidates)",
                record.name,
                state.display(),
                store.stats()?.candidates
            );
            Ok(store)
        }
        Opening::New(mut record) => {
            record.budget = budget.unwrap_or_default();
            let store = Store::create_or_open(state, &record).map_err(|e| in_use(state, e))?;
            eprintln!(
                "new search `{}` in {} (space {}, preset {}, seed {})",
                record.name,
                state.display(),
                record.space_file,
                record.preset,
                record.seed
            );
            Ok(store)
        }
    }
}

/// The candidate of one `--seed-arch`, checked against the space.
fn seed_candidate(space: &SearchSpace, arch: &str) -> anyhow::Result<Candidate> {
    let mut genome = super::eval::parse_arch(arch)?;
    // A layer string without a width prefix (`d64:`) is read at the
    // space's first width when the reference's 128 is not allowed.
    let width_given = arch
        .split_whitespace()
        .next()
        .is_some_and(|t| t.starts_with('d') && t.ends_with(':'));
    if !Path::new(arch).is_file() && !width_given && !space.model.d_model.contains(&genome.d_model)
    {
        genome.d_model = space.model.d_model[0];
    }
    if let Err(why) = space.admits(&genome) {
        bail!(
            "--seed-arch `{arch}`: the space does not admit it: {}",
            why.0
        );
    }
    Ok(candidate(space, genome, vec![], Operator::Seed, None))
}

/// Starts the daemon in its own session with output to `daemon.log`, and
/// returns once it answers on its socket.
fn detach(
    args: &StartArgs,
    state: &Path,
    workers: usize,
    threads: usize,
) -> anyhow::Result<ExitCode> {
    use std::os::unix::process::CommandExt as _;
    let exe = std::env::current_exe().context("locating the mad-search binary")?;
    let log_path = state.join("daemon.log");
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("start")
        .arg("--foreground")
        .arg("--state")
        .arg(state)
        .args(["--workers", &workers.to_string()]);
    if threads > 0 {
        cmd.args(["--threads", &threads.to_string()]);
    }
    cmd.args(["--device", &args.device])
        .args(["--job-timeout", &args.job_timeout.to_string()])
        .args(["--checkpoint-every", &args.checkpoint_every.to_string()])
        .args(["--keep-events", &args.keep_events.to_string()])
        .args(["--executor", &args.executor])
        .args(["--grace", &args.grace.to_string()]);
    if let Some(p) = args.slurm_poll {
        cmd.args(["--slurm-poll", &p.to_string()]);
    }
    for (flag, value) in [
        ("--slurm-partition", &args.slurm_partition),
        ("--slurm-account", &args.slurm_account),
        ("--slurm-gres", &args.slurm_gres),
    ] {
        if let Some(v) = value {
            cmd.arg(format!("{flag}={v}"));
        }
    }
    for a in &args.slurm_arg {
        cmd.arg(format!("--slurm-arg={a}"));
    }
    cmd.stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf);
    // SAFETY: setsid is async-signal-safe; the child gets its own session so
    // the terminal's hangup and Ctrl-C do not reach it.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the daemon process")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Answer::Pong { pid }) = request(state, &Request::Ping, Duration::from_secs(2)) {
            println!(
                "mad-search daemon started (pid {pid}) on {}\n  watch:  mad-search status --state {}\n  stop:   mad-search stop --state {}\n  log:    {}",
                state.display(),
                state.display(),
                state.display(),
                log_path.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "the daemon exited ({status}) before serving; the end of {}:\n{}",
                log_path.display(),
                tail.join("\n")
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the daemon (pid {}) did not answer within 60 s; see {}",
                child.id(),
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn budgets_parse_and_bad_ones_are_named() {
        let b = parse_budget("hours=1.5, screen=20,mad=3").unwrap();
        assert_eq!(b.hours, Some(1.5));
        assert_eq!(
            b.evaluations,
            BTreeMap::from([(StageName::Screen, 20), (StageName::Mad, 3)])
        );
        assert!(
            parse_budget("days=3")
                .unwrap_err()
                .to_string()
                .contains("unknown key `days`")
        );
        assert!(
            parse_budget("hours=-1")
                .unwrap_err()
                .to_string()
                .contains("positive")
        );
        assert!(
            parse_budget("screen")
                .unwrap_err()
                .to_string()
                .contains("KEY=VALUE")
        );
    }
}
