//! A worker process (`mad-search worker --job SPEC --out RESULT`): runs
//! exactly one job from its spec and writes how it ended, atomically, to
//! RESULT. The daemon stays the only writer of the database; the result
//! file is the truth about the job.
//!
//! Signals: SIGTERM and SIGINT stop the job (it checkpoints; the result
//! says `interrupted`); SIGUSR1 (Slurm's warning that the time limit nears)
//! checkpoints and goes on. Past the spec's own wall-clock budget the job
//! checkpoints and ends `out_of_time`. While it runs, a one-line progress
//! file beside RESULT (`progress`) says where it is.
//!
//! Exit codes: 0 a result was written (finished, or failed with its
//! reason); 3 stopped (signal or budget) after a checkpoint, result
//! written; 4 no result because the job cannot run here (the spec's space,
//! preset, corpus or device does not set up: the message is on stderr); 1
//! no result for another reason (the spec cannot be read, the result cannot
//! be written); 2 a command-line error. A worker killed by a signal (the OOM
//! killer's SIGKILL, an abort) writes nothing: its executor says which
//! signal.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::job::{Assignment, Outcome, execute};
use super::spec::{JobResult, JobSpec, PROGRESS_FILE, peak_kib, write_progress};
use crate::layers::device::DeviceSpec;
use crate::scale::corpus::Corpus;
use crate::space::SearchSpace;

/// Exit code: a result was written.
pub const EXIT_DONE: u8 = 0;
/// Exit code: no result (see stderr).
pub const EXIT_NO_RESULT: u8 = 1;
/// Exit code: stopped after a checkpoint; the result says why.
pub const EXIT_STOPPED: u8 = 3;
/// Exit code: the job cannot run here (see stderr); no result.
pub const EXIT_SETUP: u8 = 4;

/// Why a worker wrote no result.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The spec or the result file.
    #[error(transparent)]
    Spec(#[from] super::spec::SpecError),
    /// The spec's space, preset, corpus or device.
    #[error("{0}")]
    Setup(String),
}

impl WorkerError {
    /// The exit code it gives.
    pub fn exit_code(&self) -> u8 {
        match self {
            WorkerError::Spec(_) => EXIT_NO_RESULT,
            WorkerError::Setup(_) => EXIT_SETUP,
        }
    }
}

/// Runs the job in `spec_path` (its checkpoints under `runs`, when given,
/// instead of the spec's runs directory), writes its result to `out`, and
/// returns the exit code ([`EXIT_DONE`] or [`EXIT_STOPPED`]).
///
/// # Errors
/// A spec that cannot be used or a result that cannot be written
/// ([`WorkerError::exit_code`]).
pub fn run(spec_path: &Path, out: &Path, runs: Option<&Path>) -> Result<u8, WorkerError> {
    // The budget counts from the start of the process, and the handlers
    // come first: a SIGTERM from here on stops the job cleanly.
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    watch_signals(&stop)?;
    let mut spec = JobSpec::read(spec_path)?;
    if let Some(runs) = runs {
        spec.runs_dir = runs.to_owned();
    }
    let setup = |what: &str, e: &dyn std::fmt::Display| {
        WorkerError::Setup(format!("{} ({what}): {e}", spec_path.display()))
    };
    let space = SearchSpace::parse(Path::new(&spec.space_file), &spec.space_text)
        .map_err(|e| setup("space", &e))?;
    let preset = space
        .preset(&spec.preset)
        .map_err(|e| setup("preset", &e))?
        .clone();
    let corpus = match &spec.corpus {
        Some(p) => Corpus::load(Path::new(p)).map_err(|e| setup("corpus", &e))?,
        None => Corpus::embedded(),
    };
    if corpus.fingerprint() != spec.corpus_fingerprint {
        return Err(setup(
            "corpus",
            &format!(
                "{} is not the corpus the search started with (fingerprint {}, expected {}): \
                 put the original back, or start a new search on this one",
                corpus.name(),
                corpus.fingerprint(),
                spec.corpus_fingerprint
            ),
        ));
    }
    let device: DeviceSpec = spec
        .device
        .parse()
        .map_err(|e: crate::layers::device::DeviceError| setup("device", &e))?;
    device.check().map_err(|e| setup("device", &e))?;

    let out_of_time = Arc::new(AtomicBool::new(false));
    // A budget too large for the clock is no budget.
    if let Some(until) = spec
        .wall_seconds
        .and_then(|b| Duration::try_from_secs_f64(b).ok())
        .and_then(|b| started.checked_add(b))
    {
        let (stop, out_of_time) = (Arc::clone(&stop), Arc::clone(&out_of_time));
        std::thread::Builder::new()
            .name("budget".into())
            .spawn(move || {
                while Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(250));
                }
                out_of_time.store(true, Ordering::SeqCst);
                stop.store(true, Ordering::SeqCst);
            })
            .map_err(|e| setup("budget timer", &e))?;
    }

    let progress = out.with_file_name(PROGRESS_FILE);
    let last_shown = std::sync::Mutex::new(None::<Instant>);
    let show = |line: String| {
        let mut last = last_shown
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_none_or(|t| t.elapsed() >= Duration::from_millis(500)) {
            write_progress(&progress, &line);
            *last = Some(Instant::now());
        }
    };
    let log = |line: String| eprintln!("{line}");
    // 0: as many as the allocation gives (the CPUs this process may run
    // on: its affinity mask and cgroup quota).
    let threads = match spec.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .map_err(|e| setup("thread pool", &e))?;
    let assignment = Assignment {
        job: &spec.job,
        genome: &spec.genome,
        scale: spec.scale.as_deref(),
        preset: &preset,
        corpus: &corpus,
        seed: spec.seed,
        dir: &spec.runs_dir,
        checkpoint_every: spec.checkpoint_every,
        device,
        stop: &stop,
    };
    let mut outcome = pool.install(|| execute(&assignment, &show, &log));
    if outcome == Outcome::Interrupted && out_of_time.load(Ordering::SeqCst) {
        outcome = Outcome::OutOfTime;
    }
    let code = match outcome {
        Outcome::Interrupted | Outcome::OutOfTime => EXIT_STOPPED,
        Outcome::Finished(_)
        | Outcome::Failed { .. }
        | Outcome::Unrunnable { .. }
        | Outcome::Detached { .. } => EXIT_DONE,
    };
    JobResult {
        format: super::spec::FORMAT,
        job: spec.job.id,
        attempt: spec.job.attempt,
        outcome,
        peak_kib: peak_kib(),
    }
    .write(out)?;
    Ok(code)
}

/// SIGTERM and SIGINT raise `stop`; SIGUSR1 asks for a checkpoint.
fn watch_signals(stop: &Arc<AtomicBool>) -> Result<(), WorkerError> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGUSR1])
        .map_err(|e| WorkerError::Setup(format!("signal handlers: {e}")))?;
    let stop = Arc::clone(stop);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == SIGUSR1 {
                    eprintln!("SIGUSR1: checkpointing after the next step");
                    crate::train::checkpoint::request();
                } else {
                    let name = if sig == SIGTERM { "SIGTERM" } else { "SIGINT" };
                    eprintln!("{name}: checkpointing and stopping");
                    stop.store(true, Ordering::SeqCst);
                }
            }
        })
        .map_err(|e| WorkerError::Setup(format!("signal thread: {e}")))?;
    Ok(())
}
