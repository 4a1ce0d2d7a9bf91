//! The Slurm executor: each job a Slurm batch job (`sbatch --parsable
//! --no-requeue`) that runs `mad-search worker` on a compute node, watched
//! with `squeue` (one call per poll for every job of the search) and, once
//! a job has ended without a result, `scontrol show job` for its exit code.
//! No `sacct`: it needs accounting, which many clusters and CI lack.
//!
//! The state directory must be on a file system the compute nodes share:
//! the job's spec, its result (the truth about the job), its progress, its
//! log and the candidate's checkpoints all live there. Every Slurm command
//! is an argument vector; no string reaches a shell (the batch script is
//! `exec "$@"`).
//!
//! Each attempt's directory keeps a submission record (`slurm.json`: the
//! job's Slurm name and id), written before `sbatch` runs and again with
//! the id after, so that a daemon killed at any point is re-attached by the
//! next one to what it submitted (found by id, or by its unique name when
//! the id had not been written) instead of submitting it twice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::job::Outcome;
use super::local::{ChildEnd, jobs_dir, keep_or_remove, log_tail};
use super::spec::{JobResult, JobSpec, LOG_FILE, PROGRESS_FILE, RESULT_FILE, SPEC_FILE};
use crate::store::{JobId, now};

mod cli;
mod end;
mod record;

pub use cli::{
    Ended, Queued, SlurmState, check_commands, check_extra_arg, hopeless, parse_sbatch,
    parse_scontrol, parse_squeue,
};
use cli::{slurm_command, squeue};
pub use end::classify;
use record::install_binary;
pub use record::{SUBMISSION_FILE, Submission, attempt_dir, recorded};

/// The batch script: `exec "$@"` (the worker's argument vector follows the
/// script on `sbatch`'s command line).
const SCRIPT_FILE: &str = "run.sh";
/// A job gone from `squeue` without a result this long is lost.
const LOST_AFTER: Duration = Duration::from_secs(30);
/// How long a refused submission waits before the next try.
const RESUBMIT_AFTER: Duration = Duration::from_secs(30);
/// How often a watcher looks at its stop flag.
const TICK: Duration = Duration::from_millis(100);
/// How often a watcher looks at its job's files (result, progress) on the
/// shared file system.
const FILE_POLL: Duration = Duration::from_secs(1);
/// How long past the grace a stop waits for a job Slurm cannot be made to
/// end (a controller that does not answer) before it leaves the job to the
/// next daemon.
const STOP_BOUND: Duration = Duration::from_secs(120);

/// How jobs are submitted (`start --slurm-*`).
#[derive(Clone, Debug, PartialEq)]
pub struct SlurmOptions {
    /// `--partition`.
    pub partition: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// `--gres` (e.g. `gpu:1`).
    pub gres: Option<String>,
    /// More `sbatch` arguments, each one argument (e.g. `--qos=short`).
    pub extra: Vec<String>,
    /// How often `squeue` is asked.
    pub poll: Duration,
}

impl Default for SlurmOptions {
    fn default() -> SlurmOptions {
        SlurmOptions {
            partition: None,
            account: None,
            gres: None,
            extra: Vec::new(),
            poll: Duration::from_secs(5),
        }
    }
}

/// What `status` shows of the Slurm side.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SlurmView {
    /// Jobs waiting in Slurm's queue (or not yet submitted).
    pub pending: usize,
    /// Jobs running there.
    pub running: usize,
    /// How long the oldest pending job has waited, seconds.
    pub oldest_pending_seconds: Option<f64>,
    /// Why the oldest pending job waits (Slurm's reason: `Resources`,
    /// `Priority`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// The last failure of a Slurm command, while it lasts.
    pub error: Option<String>,
}

/// What the executor knows of one job it watches.
#[derive(Clone, Debug)]
struct Tracked {
    id: Option<u64>,
    submitted: f64,
    seen: Option<Queued>,
}

/// The executor's shared view: the jobs it watches and the last `squeue`.
#[derive(Default)]
struct Board {
    tracked: BTreeMap<String, Tracked>,
    /// When the last `squeue` started.
    polled: Option<Instant>,
    /// A watcher is running `squeue` (the others use the last answer).
    polling: bool,
    seen: Vec<Queued>,
    /// Whether the last `squeue` answered.
    answered: bool,
    squeue_error: Option<String>,
    sbatch_error: Option<String>,
}

/// The Slurm executor of one daemon.
pub struct Slurm {
    opts: SlurmOptions,
    /// Unique to the search: in every job name.
    tag: String,
    /// The binary jobs run: a copy under `<state>/bin/`.
    exe: PathBuf,
    /// `--time`, seconds.
    time_limit: u64,
    /// `--cpus-per-task`, when asked for.
    cpus: Option<usize>,
    /// The daemon's working directory (`--chdir`): relative paths in a
    /// spec mean the same on the node.
    cwd: PathBuf,
    board: Mutex<Board>,
}

impl Slurm {
    /// The executor for the search in `state` (`search` tells it from any
    /// other search, even one created again in the same directory): copies
    /// `exe` (the daemon's binary) to `<state>/bin/`, where jobs run it (a
    /// rebuilt or upgraded binary does not change a search's jobs under it).
    /// Jobs get `time_limit` seconds and `cpus` CPUs each (Slurm's default
    /// when `None`).
    ///
    /// # Errors
    /// The binary cannot be copied.
    pub fn new(
        state: &Path,
        search: &str,
        exe: &Path,
        opts: SlurmOptions,
        time_limit: f64,
        cpus: Option<usize>,
    ) -> std::io::Result<Slurm> {
        let cwd = std::env::current_dir()?;
        let tag = blake3::hash(search.as_bytes()).to_hex()[..8].to_string();
        let exe = install_binary(&std::path::absolute(state)?, exe)?;
        Ok(Slurm {
            opts,
            tag,
            exe,
            time_limit: time_limit.ceil().clamp(60.0, 1e9) as u64,
            cpus,
            cwd,
            board: Mutex::new(Board::default()),
        })
    }

    fn board(&self) -> std::sync::MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The Slurm job name of `job`'s attempt `attempt`.
    pub fn name(&self, job: JobId, attempt: u32) -> String {
        job_name(&self.tag, job, attempt)
    }

    /// The prefix of this search's job names.
    pub fn prefix(&self) -> String {
        format!("mad-{}-", self.tag)
    }

    /// What `status` shows (never waits on a Slurm command).
    pub fn view(&self) -> SlurmView {
        let b = self.board();
        let t = now();
        let mut v = SlurmView {
            error: b.sbatch_error.clone().or_else(|| b.squeue_error.clone()),
            ..SlurmView::default()
        };
        let mut oldest: Option<(f64, Option<String>)> = None;
        for tr in b.tracked.values() {
            match tr.seen.as_ref().map(|q| &q.state) {
                Some(SlurmState::Running) => v.running += 1,
                Some(SlurmState::Pending) | None => {
                    v.pending += 1;
                    let age = (t - tr.submitted).max(0.0);
                    if oldest.as_ref().is_none_or(|(a, _)| age > *a) {
                        let reason = tr
                            .seen
                            .as_ref()
                            .map(|q| q.reason.clone())
                            .filter(|r| !r.is_empty() && r != "None");
                        oldest = Some((age, reason));
                    }
                }
                Some(_) => {}
            }
        }
        if let Some((age, reason)) = oldest {
            v.oldest_pending_seconds = Some(age);
            v.waiting_for = reason;
        }
        v
    }

    /// Runs `squeue` for every watched job if the last call is older than
    /// the poll interval and no other watcher is running it (the board is
    /// not locked meanwhile: `status` never waits on Slurm).
    fn refresh(&self) {
        let names = {
            let mut b = self.board();
            if b.polling || b.polled.is_some_and(|t| t.elapsed() < self.opts.poll) {
                return;
            }
            b.polling = true;
            b.polled = Some(Instant::now());
            b.tracked.keys().cloned().collect::<Vec<_>>().join(",")
        };
        let res = squeue(&[format!("--name={names}")]);
        let mut b = self.board();
        b.polling = false;
        match res {
            Ok(seen) => {
                b.answered = true;
                b.squeue_error = None;
                for (n, tr) in b.tracked.iter_mut() {
                    if let Some(q) = find(&seen, n, tr.id) {
                        tr.seen = Some(q.clone());
                    }
                }
                b.seen = seen;
            }
            Err(e) => {
                b.answered = false;
                b.squeue_error = Some(format!("watching jobs: {e}"));
            }
        }
    }

    /// What the last `squeue` said of `name` (by `id` when known), after a
    /// [`Slurm::refresh`]. `Err` while `squeue` fails; `Ok(None)` when it
    /// does not know the job.
    fn observe(&self, name: &str, id: Option<u64>) -> Result<Option<Queued>, String> {
        self.refresh();
        let b = self.board();
        if !b.answered {
            return Err(b.squeue_error.clone().unwrap_or_default());
        }
        Ok(find(&b.seen, name, id).cloned())
    }

    fn track(&self, name: &str, id: Option<u64>, submitted: f64) {
        let mut b = self.board();
        let tr = b.tracked.entry(name.to_string()).or_insert(Tracked {
            id,
            submitted,
            seen: None,
        });
        tr.id = id;
        tr.submitted = submitted;
        // A job not yet in squeue's answer is asked about soon.
        b.polled = None;
    }

    fn untrack(&self, name: &str) {
        self.board().tracked.remove(name);
    }

    /// Submits the attempt in `dir`; its Slurm job id.
    fn submit(&self, name: &str, dir: &Path) -> Result<u64, String> {
        let mut args: Vec<std::ffi::OsString> = vec![
            "--parsable".into(),
            "--no-requeue".into(),
            format!("--job-name={name}").into(),
            format!(
                "--time={}:{:02}",
                self.time_limit / 60,
                self.time_limit % 60
            )
            .into(),
            // Slurm's warning before the limit: the worker checkpoints.
            "--signal=B:USR1@90".into(),
            "--open-mode=append".into(),
        ];
        let mut output = std::ffi::OsString::from("--output=");
        output.push(dir.join(LOG_FILE));
        args.push(output);
        let mut chdir = std::ffi::OsString::from("--chdir=");
        chdir.push(&self.cwd);
        args.push(chdir);
        if let Some(c) = self.cpus {
            args.push(format!("--cpus-per-task={c}").into());
        }
        if let Some(p) = &self.opts.partition {
            args.push(format!("--partition={p}").into());
        }
        if let Some(a) = &self.opts.account {
            args.push(format!("--account={a}").into());
        }
        if let Some(g) = &self.opts.gres {
            args.push(format!("--gres={g}").into());
        }
        args.extend(self.opts.extra.iter().map(Into::into));
        args.push(dir.join(SCRIPT_FILE).into());
        args.push(self.exe.clone().into());
        args.push("worker".into());
        args.push("--job".into());
        args.push(dir.join(SPEC_FILE).into());
        args.push("--out".into());
        args.push(dir.join(RESULT_FILE).into());
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let out = slurm_command("sbatch", &refs)?;
        parse_sbatch(&out).ok_or_else(|| format!("`sbatch` said `{}`, not a job id", out.trim()))
    }

    /// Runs one job as a Slurm job in `<state>/jobs/<job>-a<attempt>/`
    /// until it ends, or re-attaches to the one an earlier daemon submitted
    /// for this attempt. `stop` asks it to checkpoint and stop (SIGTERM to
    /// the worker; a pending job is cancelled); if it has not ended `grace`
    /// later, it is cancelled. `log` gets what the executor does.
    pub fn run(
        &self,
        state: &Path,
        spec: &JobSpec,
        stop: &AtomicBool,
        grace: Duration,
        show: &dyn Fn(String),
        log: &dyn Fn(String),
    ) -> ChildEnd {
        let job = spec.job.id;
        let dir = attempt_dir(state, &spec.job);
        let (mut sub, attached) = match recorded(state, &spec.job) {
            Some(s) => {
                log(format!(
                    "job {job}: re-attached to Slurm job {} ({})",
                    s.id.map_or("not yet known".into(), |i| i.to_string()),
                    s.name
                ));
                (s, true)
            }
            // Only an adopted attempt has a directory when its slot starts
            // (others were cleared at start): a record there that cannot be
            // read is left alone, the job with its lease, for the next start.
            None if dir.join(SUBMISSION_FILE).exists() => {
                return ChildEnd {
                    outcome: Outcome::Detached {
                        reason: format!(
                            "its Slurm record {} cannot be read; the job is left as it is \
                             (its lease kept) for the next start to re-attach to",
                            dir.join(SUBMISSION_FILE).display()
                        ),
                    },
                    peak_kib: None,
                    pid: 0,
                };
            }
            None => match self.prepare(&dir, spec) {
                Ok(s) => (s, false),
                Err(e) => {
                    return ChildEnd {
                        outcome: Outcome::Failed {
                            reason: format!("cannot prepare {}: {e}", dir.display()),
                            retry: true,
                        },
                        peak_kib: None,
                        pid: 0,
                    };
                }
            },
        };
        // The recorded name: the one Slurm knows the job by.
        let name = sub.name.clone();
        self.track(&name, sub.id, sub.submitted);
        let outcome = self.drive(&dir, spec, &mut sub, attached, stop, grace, show, log);
        self.untrack(&name);
        // The attempt's directory (its result file) stays until the daemon
        // has recorded the end durably: see [`Slurm::settled`].
        let peak_kib = JobResult::read(&dir.join(RESULT_FILE))
            .ok()
            .and_then(|r| r.peak_kib);
        ChildEnd {
            outcome,
            peak_kib,
            pid: 0,
        }
    }

    /// After the end of `job`'s attempt `attempt` is recorded and flushed:
    /// its directory goes (a failed one's is kept under `failed/`). Until
    /// then a daemon killed with -9 re-attaches to the attempt and reads its
    /// result file again. A detached job keeps it (the next daemon
    /// re-attaches).
    pub fn settled(&self, state: &Path, job: JobId, attempt: u32, outcome: &Outcome) {
        if matches!(outcome, Outcome::Detached { .. }) {
            return;
        }
        let dir = jobs_dir(state).join(format!("{job}-a{attempt}"));
        keep_or_remove(state, &dir, outcome);
    }

    /// A fresh attempt directory: spec, batch script, and the submission
    /// record without an id (written before `sbatch` runs).
    fn prepare(&self, dir: &Path, spec: &JobSpec) -> std::io::Result<Submission> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        spec.write(&dir.join(SPEC_FILE))
            .map_err(std::io::Error::other)?;
        let script = dir.join(SCRIPT_FILE);
        std::fs::write(
            &script,
            "#!/bin/sh\n# mad-search: runs the worker command that follows the script.\nexec \"$@\"\n",
        )?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
        }
        let sub = Submission {
            job: spec.job.id,
            attempt: spec.job.attempt,
            name: self.name(spec.job.id, spec.job.attempt),
            id: None,
            submitted: now(),
            exe: Some(self.exe.clone()),
            stop_requested: false,
        };
        sub.write(dir)?;
        Ok(sub)
    }

    /// Submits the attempt unless it is (found by name where an earlier
    /// try may have submitted it); `None` when stopped first. A refused
    /// submission is shown in `status` and tried again every
    /// [`RESUBMIT_AFTER`].
    fn submit_once(
        &self,
        dir: &Path,
        job: JobId,
        sub: &mut Submission,
        mut maybe_submitted: bool,
        stop: &AtomicBool,
        log: &dyn Fn(String),
    ) -> Option<u64> {
        let mut refused_at: Option<Instant> = None;
        loop {
            if stop.load(Ordering::SeqCst) {
                if maybe_submitted {
                    // An sbatch that timed out may have submitted it.
                    let _ = slurm_command("scancel", &[format!("--name={}", sub.name).as_ref()]);
                }
                return None;
            }
            if refused_at.is_some_and(|t| t.elapsed() < RESUBMIT_AFTER) {
                std::thread::sleep(TICK);
                continue;
            }
            if maybe_submitted {
                // Asked directly (not from the shared, possibly older,
                // answer): submitting it twice is what this prevents.
                match squeue(&[format!("--name={}", sub.name)]) {
                    Ok(seen) => {
                        if let Some(q) = find(&seen, &sub.name, None) {
                            log(format!(
                                "job {job}: found its Slurm job {} by name ({})",
                                q.id, sub.name
                            ));
                            return Some(q.id);
                        }
                    }
                    Err(e) => {
                        self.board().squeue_error = Some(format!("watching jobs: {e}"));
                        refused_at = Some(Instant::now());
                        continue;
                    }
                }
            }
            match self.submit(&sub.name, dir) {
                Ok(id) => {
                    self.board().sbatch_error = None;
                    log(format!(
                        "job {job}: submitted as Slurm job {id} ({})",
                        sub.name
                    ));
                    return Some(id);
                }
                Err(e) => {
                    let e = format!(
                        "submitting jobs: {e} (check --slurm-partition, --slurm-account, \
                         --slurm-gres, --slurm-arg; --job-timeout sets --time); retrying every \
                         {} s",
                        RESUBMIT_AFTER.as_secs()
                    );
                    if refused_at.is_none() {
                        log(format!("job {job}: {e}"));
                    }
                    self.board().sbatch_error = Some(e);
                    refused_at = Some(Instant::now());
                    // A timed-out sbatch may have gone through.
                    maybe_submitted = true;
                }
            }
        }
    }

    /// Submits (if not yet) and watches the job until it ends.
    #[allow(clippy::too_many_arguments)]
    fn drive(
        &self,
        dir: &Path,
        spec: &JobSpec,
        sub: &mut Submission,
        attached: bool,
        stop: &AtomicBool,
        grace: Duration,
        show: &dyn Fn(String),
        log: &dyn Fn(String),
    ) -> Outcome {
        let job = spec.job.id;
        let result_path = dir.join(RESULT_FILE);
        let progress_path = dir.join(PROGRESS_FILE);
        let ours = |r: &JobResult| r.job == job && r.attempt == spec.job.attempt;
        let read_result = || JobResult::read(&result_path).ok().filter(ours);
        let id = match sub.id {
            Some(id) => id,
            None => {
                // A record without an id: submitted by a daemon killed before
                // it wrote the id down, or not at all.
                if attached && let Some(r) = read_result() {
                    return r.outcome;
                }
                let Some(id) = self.submit_once(dir, job, sub, attached, stop, log) else {
                    return Outcome::Interrupted;
                };
                crate::exec::hooks::after_submit();
                sub.id = Some(id);
                sub.submitted = now();
                if let Err(e) = sub.write(dir) {
                    log(format!(
                        "job {job}: Slurm job {id} submitted, but its record could not be \
                         written ({e}); a restarted daemon finds it by name"
                    ));
                }
                self.track(&sub.name, Some(id), sub.submitted);
                id
            }
        };
        let id_arg = id.to_string();
        let mut seen_progress: Option<SystemTime> = None;
        let mut files_read: Option<Instant> = None;
        let mut stop_since: Option<Instant> = None;
        // When a stop's scancel went through, and the kill after the grace.
        let mut termed: Option<Instant> = None;
        let mut killed = false;
        let mut tried: Option<Instant> = None;
        let mut absent: Option<Instant> = None;
        let mut last: Option<Queued> = None;
        loop {
            let stopped_by_us = termed.is_some() || sub.stop_requested;
            if files_read.is_none_or(|t| t.elapsed() >= FILE_POLL) {
                files_read = Some(Instant::now());
                if let Ok(modified) = std::fs::metadata(&progress_path).and_then(|m| m.modified())
                    && seen_progress != Some(modified)
                    && let Ok(line) = std::fs::read_to_string(&progress_path)
                {
                    seen_progress = Some(modified);
                    show(line);
                }
                // A result ends the job, except a stop that was not asked
                // for (a scancel, a preemption, a time limit): its kind is
                // told by how Slurm saw the job end.
                if let Some(r) = read_result()
                    && (r.outcome != Outcome::Interrupted || stopped_by_us)
                {
                    return r.outcome;
                }
            }
            match self.observe(&sub.name, Some(id)) {
                Ok(Some(q)) if q.state.active() => {
                    absent = None;
                    if q.state == SlurmState::Pending
                        && let Some(why) = hopeless(&q.reason)
                    {
                        let _ = slurm_command("scancel", &[id_arg.as_ref()]);
                        return Outcome::Unrunnable {
                            reason: format!(
                                "Slurm job {id} can never start (pending: {}): {why}",
                                q.reason
                            ),
                        };
                    }
                    last = Some(q);
                }
                Ok(Some(q)) => {
                    // Ended. The result may lag behind on a network file
                    // system: one more look.
                    std::thread::sleep(Duration::from_millis(500));
                    let result = read_result();
                    let ended = slurm_command(
                        "scontrol",
                        &[
                            "show".as_ref(),
                            "job".as_ref(),
                            "-o".as_ref(),
                            id_arg.as_ref(),
                        ],
                    )
                    .ok()
                    .and_then(|o| parse_scontrol(&o));
                    let outcome = classify(&q, ended.as_ref(), result.as_ref(), stopped_by_us, dir);
                    if !matches!(outcome, Outcome::Finished(_)) {
                        log(format!(
                            "job {job}: Slurm job {id} ended {:?} ({})",
                            ended.as_ref().map_or(&q.state, |e| &e.state),
                            q.reason
                        ));
                    }
                    return outcome;
                }
                Ok(None) => {
                    let since = *absent.get_or_insert_with(Instant::now);
                    if since.elapsed() >= LOST_AFTER {
                        if let Some(r) = read_result() {
                            return r.outcome;
                        }
                        if stopped_by_us {
                            return Outcome::Interrupted;
                        }
                        return Outcome::Failed {
                            reason: format!(
                                "Slurm job {id} is gone from squeue without a result (lost){}",
                                log_tail(dir)
                            ),
                            retry: true,
                        };
                    }
                }
                // Slurm does not answer: nothing is concluded.
                Err(_) => absent = None,
            }
            if stop.load(Ordering::SeqCst) {
                let since = *stop_since.get_or_insert_with(Instant::now);
                // Each scancel is tried again, once per poll, until Slurm
                // takes it.
                let due = tried.is_none_or(|t: Instant| t.elapsed() >= self.opts.poll);
                if termed.is_none() && due {
                    tried = Some(Instant::now());
                    // Recorded first: a daemon killed right after the
                    // scancel still knows the stop for its own.
                    if !sub.stop_requested {
                        sub.stop_requested = true;
                        let _ = sub.write(dir);
                    }
                    // A running worker checkpoints on SIGTERM; a pending job
                    // just goes.
                    let running = last
                        .as_ref()
                        .is_some_and(|q| q.state == SlurmState::Running);
                    let res = if running {
                        slurm_command(
                            "scancel",
                            &[
                                "--batch".as_ref(),
                                "--signal=TERM".as_ref(),
                                id_arg.as_ref(),
                            ],
                        )
                    } else {
                        slurm_command("scancel", &[id_arg.as_ref()])
                    };
                    match res {
                        Ok(_) => termed = Some(Instant::now()),
                        Err(e) => log(format!("job {job}: could not stop Slurm job {id}: {e}")),
                    }
                } else if !killed && termed.is_some_and(|t| t.elapsed() >= grace) && due {
                    tried = Some(Instant::now());
                    match slurm_command("scancel", &[id_arg.as_ref()]) {
                        Ok(_) => killed = true,
                        Err(e) => log(format!("job {job}: could not cancel Slurm job {id}: {e}")),
                    }
                }
                if since.elapsed() >= grace + STOP_BOUND {
                    return Outcome::Detached {
                        reason: format!(
                            "Slurm job {id} could not be made to stop within {} s; it is left \
                             running, and the next start re-attaches to it",
                            (grace + STOP_BOUND).as_secs()
                        ),
                    };
                }
            }
            std::thread::sleep(TICK);
        }
    }
}

/// `squeue`'s line of a job: by id when known, else the newest of its name.
fn find<'a>(seen: &'a [Queued], name: &str, id: Option<u64>) -> Option<&'a Queued> {
    match id {
        Some(id) => seen.iter().find(|q| q.id == id),
        None => seen.iter().filter(|q| q.name == name).max_by_key(|q| q.id),
    }
}

/// The Slurm job name of a search's job attempt.
fn job_name(tag: &str, job: JobId, attempt: u32) -> String {
    format!("mad-{tag}-j{job}-a{attempt}")
}

/// Cancels the Slurm jobs of `subs` (an earlier daemon's, found by a daemon
/// that does not run on Slurm): by id, or by name where the id was not
/// written down.
///
/// # Errors
/// `scancel` failed.
pub fn cancel(subs: &[Submission]) -> Result<(), String> {
    for s in subs {
        match s.id {
            Some(id) => slurm_command("scancel", &[id.to_string().as_ref()])?,
            None => slurm_command("scancel", &[format!("--name={}", s.name).as_ref()])?,
        };
    }
    Ok(())
}
