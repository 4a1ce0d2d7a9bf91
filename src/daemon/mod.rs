//! The daemon (design §4): one scheduler thread (this one) and N worker
//! threads joined by crossbeam channels, a control-socket thread, and the
//! store as the single source of truth.
//!
//! Every job runs under a lease written before the worker sees it. A job
//! whose lease lapses is stopped (it checkpoints) and goes back to the
//! queue; a lease left by a dead daemon is put back at the next start (the
//! database lock proves that daemon gone). Stopping (SIGINT, SIGTERM,
//! `mad-search stop`) takes no new jobs, asks running ones to checkpoint,
//! requeues them, flushes and exits.

pub mod control;
pub mod pidfile;
pub mod report;
mod schedule;
pub mod snapshot;
mod worker;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::exec::Executor;
pub(crate) use crate::exec::panic_text;
use crate::layers::device::DeviceSlots;
use crate::scale::corpus::Corpus;
use crate::search::Policy;
use crate::space::SearchSpace;
use crate::store::{EventKind, JobId, Store, now};
use control::{Answer, Request};
use report::{Live, RunningJob};
pub use schedule::TRIM_EVERY;
use schedule::{Schedule, drain, schedule, trim_events};
use worker::{Done, WorkItem};

/// How the daemon runs (not persisted: a restart may change them).
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// The state dir.
    pub state: PathBuf,
    /// Worker threads (jobs side by side).
    pub workers: usize,
    /// Tensor threads per worker.
    pub threads: usize,
    /// Where models train: worker `w` on slot `w mod slots`.
    pub device: DeviceSlots,
    /// A job's lease, seconds: a job running longer is stopped and retried.
    pub job_timeout: f64,
    /// Checkpoint interval, optimiser steps.
    pub checkpoint_every: usize,
    /// Events kept: older ones are dropped at start and every
    /// [`TRIM_EVERY`] settled jobs.
    pub keep_events: usize,
    /// Where jobs run.
    pub executor: Executor,
    /// How long a stopped worker process may take to checkpoint before it is
    /// killed.
    pub grace: Duration,
}

impl DaemonConfig {
    /// Whether the daemon stops a job past its lease itself (on Slurm, the
    /// job's time limit does, counted from when it starts running).
    fn enforces_leases(&self) -> bool {
        !matches!(self.executor, Executor::Slurm(_))
    }
}

/// State shared with the socket thread and the workers.
pub(crate) struct Shared {
    store: Store,
    /// Drain: take no more jobs (set by `stop`, SIGINT and SIGTERM).
    stop: Arc<AtomicBool>,
    /// The control thread is to return.
    closing: AtomicBool,
    started: Instant,
    pid: u32,
    workers: usize,
    executor: Executor,
    slurm: Option<Arc<crate::exec::slurm::Slurm>>,
    earlier_seconds: f64,
    running: Mutex<BTreeMap<JobId, RunningJob>>,
    idle: Mutex<Option<String>>,
}

impl Shared {
    fn live(&self) -> Live {
        let started = self.started;
        let mut running: Vec<RunningJob> = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for r in &mut running {
            r.seconds = now() - r.seconds;
        }
        Live {
            pid: self.pid,
            uptime: started.elapsed().as_secs_f64(),
            earlier_seconds: self.earlier_seconds,
            workers: self.workers,
            executor: self.executor.to_string(),
            slurm: self.slurm.as_ref().map(|s| s.view()),
            running,
            idle: self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            stopping: self.stop.load(Ordering::Relaxed),
        }
    }

    fn answer(&self, req: Request) -> Answer {
        let err = |e: &dyn std::fmt::Display| Answer::Error {
            message: e.to_string(),
        };
        match req {
            Request::Ping => Answer::Pong { pid: self.pid },
            Request::Stop => {
                self.stop.store(true, Ordering::SeqCst);
                log("stop requested over the socket");
                Answer::Stopping { pid: self.pid }
            }
            Request::Status { top } => {
                match report::status(&self.store, Some(self.live()), top.min(control::MAX_TOP)) {
                    Ok(r) => Answer::Status {
                        report: Box::new(r),
                    },
                    Err(e) => err(&e),
                }
            }
            Request::Show { id } => match report::show(&self.store, &id) {
                Ok(r) => Answer::Show {
                    report: Box::new(r),
                },
                Err(e) => err(&e),
            },
            Request::Points => match crate::dashboard::points(&self.store) {
                Ok(p) => Answer::Points {
                    points: Box::new(p),
                },
                Err(e) => err(&e),
            },
            Request::Select { selection } => match report::select(&self.store, selection) {
                Ok(candidates) => Answer::Selected { candidates },
                Err(e) => err(&e),
            },
        }
    }
}

/// A line in the daemon's log (its stderr: `daemon.log` when detached).
pub fn log(msg: impl AsRef<str>) {
    eprintln!("{} {}", timestamp(now()), msg.as_ref());
}

/// `YYYY-MM-DDTHH:MM:SSZ` of Unix seconds.
pub fn timestamp(t: f64) -> String {
    let secs = t.max(0.0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Runs the daemon on an open store until it is stopped or its budget is
/// spent. The caller holds nothing else of the state dir.
///
/// # Errors
/// A damaged database, or a socket that cannot be bound.
pub fn run(cfg: DaemonConfig, store: Store) -> anyhow::Result<()> {
    let record = store
        .search()?
        .context("the database holds no search record")?;
    let space = SearchSpace::parse(Path::new(&record.space_file), &record.space_text)
        .with_context(|| format!("the search's space ({})", record.space_file))?;
    let preset = space
        .preset(&record.preset)
        .map_err(anyhow::Error::msg)?
        .clone();
    let policy = Policy::new(space.clone(), record.seed, space.warm_start());
    let corpus = match &record.corpus {
        Some(path) => Corpus::load(Path::new(path))
            .with_context(|| "the search's scale corpus (start --corpus)".to_string())?,
        None => Corpus::embedded(),
    };
    if let Some(want) = &record.corpus_fingerprint
        && *want != corpus.fingerprint()
    {
        anyhow::bail!(
            "the search's scale corpus ({}) is not the one it started with (fingerprint {}, \
             recorded {want}): put the original back, or start a new search on this corpus",
            corpus.name(),
            corpus.fingerprint()
        );
    }
    let pid = std::process::id();
    // From here on, whatever way `run` returns, the pid file and the socket
    // go with it (`Presence`'s drop).
    let mut presence = pidfile::Presence::announce(&cfg.state, pid)?;
    let exe = worker_exe().context("locating the mad-search binary for workers")?;
    let slurm = match &cfg.executor {
        Executor::Slurm(opts) => Some(Arc::new(
            crate::exec::slurm::Slurm::new(
                &cfg.state,
                &format!("{}\0{}\0{}", record.name, record.created, record.seed),
                &exe,
                (**opts).clone(),
                cfg.job_timeout,
                (cfg.threads > 0).then_some(cfg.threads),
            )
            .context("copying the mad-search binary for Slurm jobs")?,
        )),
        _ => None,
    };
    let adopted = adopt_or_cancel(&cfg, &store, slurm.is_some())?;
    let adopted_ids: Vec<JobId> = adopted.iter().map(|j| j.id).collect();
    let recovered = store.recover_leases_except(&adopted_ids)?;
    if !recovered.is_empty() {
        log(format!(
            "requeued {} job(s) left running by a previous daemon: {recovered:?}",
            recovered.len()
        ));
    }
    if cfg.executor != Executor::Threads {
        let keep: Vec<PathBuf> = adopted
            .iter()
            .map(|j| crate::exec::slurm::attempt_dir(&cfg.state, j))
            .collect();
        match crate::exec::local::clear_stale(&cfg.state, &keep) {
            Ok(0) => {}
            Ok(n) => log(format!(
                "removed {n} attempt directory(ies) a previous daemon's workers left"
            )),
            Err(e) => log(format!(
                "could not clear {}: {e}",
                crate::exec::local::jobs_dir(&cfg.state).display()
            )),
        }
    }
    store.daemon_event(0.0, Some(EventKind::DaemonStarted { pid }))?;
    trim_events(&store, cfg.keep_events);
    store.flush()?;
    let earlier_seconds = store.stats()?.daemon_seconds;
    let shared = Arc::new(Shared {
        earlier_seconds,
        store,
        stop: Arc::new(AtomicBool::new(false)),
        closing: AtomicBool::new(false),
        started: Instant::now(),
        pid,
        workers: cfg.workers,
        executor: cfg.executor.clone(),
        slurm: slurm.clone(),
        running: Mutex::new(BTreeMap::new()),
        idle: Mutex::new(None),
    });
    let listener = control::bind(&cfg.state).context("binding the control socket")?;
    presence.bound(&control::socket_path(&cfg.state));
    let control = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || control::serve(listener, |req| shared.answer(req), &shared.closing))
            .context("starting the control thread")?
    };
    {
        let stop = Arc::clone(&shared.stop);
        // Only the first handler of a process counts; later starts in the
        // same process (tests) keep the first.
        match ctrlc::set_handler(move || {
            stop.store(true, Ordering::SeqCst);
        }) {
            Ok(()) | Err(ctrlc::Error::MultipleHandlers) => {}
            Err(e) => log(format!(
                "no handler for SIGINT and SIGTERM ({e}): they kill the daemon instead of \
                 draining it (nothing is lost: jobs resume from their checkpoints); use \
                 `mad-search stop`"
            )),
        }
    }
    let usr1 = forward_sigusr1();
    log(format!(
        "serving {} (pid {pid}, preset {}, seed {}, {} worker(s) × {} thread(s), device {}, \
         executor {})",
        cfg.state.display(),
        record.preset,
        record.seed,
        cfg.workers,
        if cfg.threads == 0 {
            "the cluster's".to_string()
        } else {
            cfg.threads.to_string()
        },
        cfg.device,
        cfg.executor
    ));
    if !adopted.is_empty() {
        log(format!(
            "re-attaching to {} Slurm job(s) a previous daemon submitted: jobs {adopted_ids:?}",
            adopted.len()
        ));
    }

    let (work_tx, work_rx) = crossbeam_channel::unbounded::<WorkItem>();
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<Done>();
    let mut handles = Vec::new();
    let wcfg = Arc::new(worker::WorkerConfig {
        state: cfg.state.clone(),
        preset,
        corpus_fingerprint: record
            .corpus_fingerprint
            .clone()
            .unwrap_or_else(|| corpus.fingerprint()),
        corpus: Arc::new(corpus),
        record: record.clone(),
        threads: cfg.threads,
        device: cfg.device.clone(),
        checkpoint_every: cfg.checkpoint_every,
        executor: cfg.executor.clone(),
        exe,
        slurm,
        job_timeout: cfg.job_timeout,
        grace: cfg.grace,
    });
    // Adopted jobs beyond the workers get slots of their own until they end.
    for w in 0..cfg.workers.max(adopted.len()) {
        let (rx, tx, wcfg, shared) = (
            work_rx.clone(),
            done_tx.clone(),
            Arc::clone(&wcfg),
            Arc::clone(&shared),
        );
        handles.push(
            std::thread::Builder::new()
                .name(format!("worker-{w}"))
                .spawn(move || worker::work(w, &rx, &tx, &wcfg, &shared))
                .context("starting a worker")?,
        );
    }
    drop(done_tx);

    let store = &shared.store;
    let mut sched = Schedule::new(cfg.workers, cfg.enforces_leases());
    let scheduled = sched.adopt(&shared, adopted, &work_tx).and_then(|()| {
        schedule(
            &cfg,
            &shared,
            &policy,
            &wcfg,
            &record.budget,
            &work_tx,
            &done_rx,
            &mut sched,
        )
    });
    if let Err(e) = &scheduled {
        log(format!(
            "the scheduler failed: {e:#}; stopping the running jobs (they checkpoint), then exiting"
        ));
        shared.stop.store(true, Ordering::SeqCst);
        drain(store, &wcfg, &done_rx, &mut sched);
    }
    drop(work_tx);
    for h in handles {
        if let Err(panic) = h.join() {
            log(format!(
                "a worker thread panicked outside a job ({}); its job, if any, is put back \
                 in the queue at the next start",
                panic_text(panic.as_ref())
            ));
        }
    }
    let stopped = store
        .daemon_event(
            sched.accounted.elapsed().as_secs_f64(),
            Some(EventKind::DaemonStopped { pid }),
        )
        .and_then(|()| store.flush());
    if let Err(e) = &stopped {
        log(format!(
            "recording the stop failed: {e}; the next start recovers (leases are put back)"
        ));
    }
    let last = report::status(store, None, snapshot::SNAPSHOT_TOP);
    // Close the database, so that sled's own last writes (it snapshots its
    // page table when dropped) precede the status snapshot; our pid file
    // (and the state dir `presence` holds open, by which `start` and `stop`
    // know us) keeps another daemon out until that is written.
    shared.closing.store(true, Ordering::SeqCst);
    control::wake(&cfg.state);
    if control.join().is_err() {
        log("the control thread panicked; the socket had stopped answering");
    }
    let closed = Arc::try_unwrap(shared).map(drop).is_ok();
    match last {
        Ok(r) if closed => {
            if let Err(e) = snapshot::write(&cfg.state, &r, snapshot::SNAPSHOT_TOP) {
                log(format!("could not write the status snapshot: {e}"));
            }
        }
        Ok(_) => log("the database is still in use: no status snapshot"),
        Err(e) => log(format!("could not build the status snapshot: {e}")),
    }
    if let Some((handle, thread)) = usr1 {
        handle.close();
        let _ = thread.join();
    }
    if let Some(kib) = crate::exec::spec::peak_kib() {
        log(format!(
            "the daemon process peaked at {:.0} MiB",
            kib as f64 / 1024.0
        ));
    }
    // The last lines go to the log before the pid file: whoever sees the
    // daemon gone (`stop`, a script polling `status`) finds them there.
    let ended = match scheduled {
        Ok(Some(why)) => {
            log(format!("search finished: {why}"));
            Ok(())
        }
        Ok(None) => {
            log("stopped");
            Ok(())
        }
        Err(e) => {
            log("stopped on the error above");
            Err(e.context("the daemon stopped on an error"))
        }
    };
    drop(presence);
    ended?;
    stopped.context("recording the daemon's stop")?;
    Ok(())
}

/// The leases a dead daemon left on jobs it had handed to Slurm: with the
/// Slurm executor, taken over (worker slots 0, 1, … in order) to re-attach
/// to those jobs; with another executor, the Slurm jobs are cancelled and
/// their leases go back to the queue with the rest.
///
/// # Errors
/// A damaged database, or Slurm jobs that cannot be cancelled.
fn adopt_or_cancel(
    cfg: &DaemonConfig,
    store: &Store,
    on_slurm: bool,
) -> anyhow::Result<Vec<crate::store::Job>> {
    use crate::exec::slurm;
    let recorded: Vec<(crate::store::Job, slurm::Submission)> = store
        .leased()?
        .into_iter()
        .filter_map(|j| slurm::recorded(&cfg.state, &j).map(|s| (j, s)))
        .collect();
    if recorded.is_empty() {
        return Ok(Vec::new());
    }
    if on_slurm {
        let mut adopted = Vec::new();
        for (j, _) in &recorded {
            if let Some(j) = store.adopt(j.id, j.attempt, adopted.len())? {
                adopted.push(j);
            }
        }
        return Ok(adopted);
    }
    let subs: Vec<slurm::Submission> = recorded.into_iter().map(|(_, s)| s).collect();
    let names: Vec<&str> = subs.iter().map(|s| s.name.as_str()).collect();
    slurm::cancel(&subs).map_err(|e| {
        anyhow::anyhow!(
            "a previous daemon ran this search's jobs on Slurm, and they may still run ({}); \
             they cannot be cancelled ({e}): start with --executor slurm to re-attach to them, \
             or cancel them with scancel",
            names.join(", ")
        )
    })?;
    log(format!(
        "cancelled {} Slurm job(s) a previous daemon submitted ({}); their jobs go back to \
         the queue (executor {})",
        subs.len(),
        names.join(", "),
        cfg.executor
    ));
    Ok(Vec::new())
}

/// SIGUSR1 (Slurm's warning that a time limit nears, sent to every
/// process of a job step) would end the daemon; instead it asks every
/// running job to checkpoint and go on: runs in this process directly, and
/// worker processes by passing the signal on. `None` (logged) if the
/// handler cannot be installed.
fn forward_sigusr1() -> Option<(signal_hook::iterator::Handle, std::thread::JoinHandle<()>)> {
    let mut signals = match signal_hook::iterator::Signals::new([signal_hook::consts::SIGUSR1]) {
        Ok(s) => s,
        Err(e) => {
            log(format!("no handler for SIGUSR1 ({e}): it ends the daemon"));
            return None;
        }
    };
    let handle = signals.handle();
    let thread = std::thread::Builder::new()
        .name("sigusr1".into())
        .spawn(move || {
            for _ in signals.forever() {
                crate::train::checkpoint::request();
                let n = crate::exec::local::signal_children(libc::SIGUSR1);
                log(format!(
                    "SIGUSR1: running jobs checkpoint and go on ({n} worker process(es) told)"
                ));
            }
        });
    match thread {
        Ok(t) => Some((handle, t)),
        Err(e) => {
            log(format!("no thread for SIGUSR1 ({e}): it is ignored"));
            None
        }
    }
}

/// The binary worker processes run: this very one. On Linux
/// `/proc/self/exe`, which still reaches the daemon's binary after it is
/// replaced on disk (an upgrade under a running search), so daemon and
/// workers never differ.
fn worker_exe() -> std::io::Result<PathBuf> {
    let proc_exe = Path::new("/proc/self/exe");
    if cfg!(target_os = "linux") && proc_exe.exists() {
        Ok(proc_exe.to_owned())
    } else {
        std::env::current_exe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(timestamp(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(951_782_400.0), "2000-02-29T00:00:00Z");
        assert_eq!(timestamp(1_796_035_932.0), "2026-11-30T10:52:12Z");
    }
}
