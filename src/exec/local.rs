//! The local process executor: each job in a child process
//! (`mad-search worker`), watched by the daemon's worker thread that
//! started it. A child that dies (the OOM killer, an abort) takes only its
//! job's attempt with it; one that will not stop is killed.
//!
//! A child dies with the daemon (`PR_SET_PDEATHSIG`): after a kill -9 of
//! the daemon no orphan trains on, and the next daemon retries the job from
//! its checkpoint, as with worker threads.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use super::job::Outcome;
use super::spec::{JobResult, JobSpec, LOG_FILE, PROGRESS_FILE, RESULT_FILE, SPEC_FILE};

/// How often the watcher looks at its child.
const POLL: Duration = Duration::from_millis(100);

/// Where the executor keeps its attempts' directories.
pub fn jobs_dir(state: &Path) -> PathBuf {
    state.join("jobs")
}

/// Where failed attempts' directories are kept (spec, log), for a look.
pub fn failed_dir(state: &Path) -> PathBuf {
    jobs_dir(state).join("failed")
}

/// Removes what attempts of an earlier daemon left (their children died
/// with it); keeps `failed/` and the directories named in `keep` (attempts re-attached on Slurm).
/// Returns how many went.
///
/// # Errors
/// The directory cannot be read.
pub fn clear_stale(state: &Path, keep: &[PathBuf]) -> std::io::Result<usize> {
    let dir = jobs_dir(state);
    let mut n = 0;
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_name() == "failed"
            || keep
                .iter()
                .any(|k| k.file_name() == Some(&entry.file_name()))
        {
            continue;
        }
        std::fs::remove_dir_all(entry.path())?;
        n += 1;
    }
    prune_failed(state, FAILED_KEPT);
    Ok(n)
}

/// How a child's job ended, with what the executor saw.
#[derive(Debug)]
pub struct ChildEnd {
    /// The job's outcome.
    pub outcome: Outcome,
    /// The child's peak memory, KiB, where it said.
    pub peak_kib: Option<u64>,
    /// Its pid.
    pub pid: u32,
}

/// Runs one job in a child process of `exe`, in `<state>/jobs/<job>-a<attempt>/`,
/// until it ends. `stop` asks it to checkpoint and stop (SIGTERM); if it
/// has not ended `grace` later, it is killed (SIGKILL) and the job counts as
/// interrupted (it resumes from its last periodic checkpoint). `show` gets
/// the child's progress lines, `log` what it says on stderr (also kept in
/// the attempt's `worker.log`).
pub fn run(
    exe: &Path,
    state: &Path,
    spec: &JobSpec,
    stop: &AtomicBool,
    grace: Duration,
    show: &dyn Fn(String),
    log: &(dyn Fn(String) + Sync),
) -> ChildEnd {
    let dir = jobs_dir(state).join(format!("{}-a{}", spec.job.id, spec.job.attempt));
    let failed = |reason: String, pid: u32| ChildEnd {
        outcome: Outcome::Failed {
            reason,
            retry: true,
        },
        peak_kib: None,
        pid,
    };
    // A directory left by an earlier try of this very attempt (a daemon
    // killed before the lease moved on) starts clean.
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return failed(format!("cannot create {}: {e}", dir.display()), 0);
    }
    let (spec_path, result_path) = (dir.join(SPEC_FILE), dir.join(RESULT_FILE));
    if let Err(e) = spec.write(&spec_path) {
        return failed(format!("cannot write the job spec: {e}"), 0);
    }
    let log_path = dir.join(LOG_FILE);
    let mut child = match spawn(exe, &spec_path, &result_path, &log_path) {
        Ok(c) => c,
        Err(e) => {
            return failed(
                format!("cannot start a worker process ({}): {e}", exe.display()),
                0,
            );
        }
    };
    let pid = child.id();
    let job = spec.job.id;
    children().insert(pid);
    let end = std::thread::scope(|scope| {
        // The child's stderr: into its log file, and on to the daemon's log.
        // Read to the end whatever it holds (a reader that stopped early
        // would fail the child's next write).
        if let Some(stderr) = child.stderr.take() {
            let log_path = &log_path;
            scope.spawn(move || {
                use std::io::{BufRead as _, Write as _};
                let mut file = std::fs::OpenOptions::new().append(true).open(log_path).ok();
                let mut reader = std::io::BufReader::new(stderr);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match reader.read_until(b'\n', &mut buf) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    }
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end();
                    if let Some(f) = file.as_mut() {
                        let _ = writeln!(f, "{line}");
                    }
                    if line.starts_with(&format!("job {job}:")) {
                        log(line.to_owned());
                    } else {
                        log(format!("job {job}: worker {pid}: {line}"));
                    }
                }
            });
        }
        let end = watch(
            child,
            pid,
            stop,
            grace,
            show,
            dir.as_path(),
            &result_path,
            spec,
        );
        // Whatever the child left in its process group (a helper it forked)
        // goes with it, and with them the last holders of its stderr.
        signal(-i64::from(pid), libc::SIGKILL);
        end
    });
    children().remove(&pid);
    keep_or_remove(state, &dir, &end.outcome);
    end
}

/// The worker processes running now, by pid.
fn children() -> std::sync::MutexGuard<'static, std::collections::BTreeSet<u32>> {
    static CHILDREN: std::sync::Mutex<std::collections::BTreeSet<u32>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    CHILDREN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sends `sig` to every worker process running now (the daemon passes
/// SIGUSR1 on: checkpoint and go on). Returns how many.
pub fn signal_children(sig: libc::c_int) -> usize {
    let pids: Vec<u32> = children().iter().copied().collect();
    for &pid in &pids {
        signal(i64::from(pid), sig);
    }
    pids.len()
}

/// Waits for the child, passing on its progress and stopping it when asked;
/// then reads how its job ended.
#[allow(clippy::too_many_arguments)]
fn watch(
    mut child: Child,
    pid: u32,
    stop: &AtomicBool,
    grace: Duration,
    show: &dyn Fn(String),
    dir: &Path,
    result_path: &Path,
    spec: &JobSpec,
) -> ChildEnd {
    use std::os::unix::process::ExitStatusExt as _;
    let failed = |reason: String| ChildEnd {
        outcome: Outcome::Failed {
            reason,
            retry: true,
        },
        peak_kib: None,
        pid,
    };
    let progress_path = dir.join(PROGRESS_FILE);
    let mut seen_progress: Option<SystemTime> = None;
    let mut termed: Option<Instant> = None;
    let mut killed = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) => {}
            Err(e) => {
                // Never leave a child training on beside the job's retry.
                let _ = child.kill();
                let _ = child.wait();
                break Err(e);
            }
        }
        if let Ok(modified) = std::fs::metadata(&progress_path).and_then(|m| m.modified())
            && seen_progress != Some(modified)
            && let Ok(line) = std::fs::read_to_string(&progress_path)
        {
            seen_progress = Some(modified);
            show(line);
        }
        if stop.load(Ordering::SeqCst) {
            match termed {
                None => {
                    // The whole group: a helper the worker forked stops too.
                    signal(-i64::from(pid), libc::SIGTERM);
                    termed = Some(Instant::now());
                }
                Some(t) if !killed && t.elapsed() >= grace => {
                    signal(-i64::from(pid), libc::SIGKILL);
                    killed = true;
                }
                Some(_) => {}
            }
        }
        std::thread::sleep(POLL);
    };
    let status = match status {
        Ok(s) => s,
        Err(e) => return failed(format!("lost track of worker process {pid}: {e}")),
    };
    let read = JobResult::read(result_path);
    match read {
        Ok(r) if r.job == spec.job.id && r.attempt == spec.job.attempt => {
            return ChildEnd {
                outcome: r.outcome,
                peak_kib: r.peak_kib,
                pid,
            };
        }
        _ => {}
    }
    // No result of its own. Asked to stop, it ended by our SIGTERM (before
    // it could catch it) or our SIGKILL after the grace: interrupted, to
    // resume from its last checkpoint. Any other end is its own: a crash,
    // the OOM killer, an exit.
    let ours = termed.is_some()
        && (status.signal() == Some(libc::SIGTERM)
            || (killed && status.signal() == Some(libc::SIGKILL)));
    if ours {
        return ChildEnd {
            outcome: Outcome::Interrupted,
            peak_kib: None,
            pid,
        };
    }
    let why = died(status, dir, read, spec);
    if status.code() == Some(i32::from(super::worker::EXIT_SETUP)) {
        return ChildEnd {
            outcome: Outcome::Unrunnable { reason: why },
            peak_kib: None,
            pid,
        };
    }
    failed(why)
}

/// Why a child that wrote no usable result ended: its signal or exit code,
/// what was wrong with its result file, and the end of its log.
fn died(
    status: ExitStatus,
    dir: &Path,
    read: Result<JobResult, super::spec::SpecError>,
    spec: &JobSpec,
) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    let how = match (status.signal(), status.code()) {
        (Some(sig), _) => {
            let name = match sig {
                libc::SIGKILL => " (SIGKILL: out of memory?)",
                libc::SIGABRT => " (SIGABRT: an abort, e.g. a failed allocation)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGBUS => " (SIGBUS)",
                _ => "",
            };
            format!("worker process killed by signal {sig}{name}")
        }
        (None, Some(code)) => format!("worker process exited with code {code} and no result"),
        (None, None) => format!("worker process ended ({status}) with no result"),
    };
    let result = match read {
        Err(super::spec::SpecError::Io { reason, .. })
            if reason.kind() == std::io::ErrorKind::NotFound =>
        {
            String::new()
        }
        Err(e) => format!("; its result: {e}"),
        Ok(r) => format!(
            "; its result file is of job {} attempt {}, not job {} attempt {}",
            r.job, r.attempt, spec.job.id, spec.job.attempt
        ),
    };
    format!("{how}{result}{}", log_tail(dir))
}

/// `; the end of its log: …` (the last three lines of an attempt's
/// `worker.log`), or nothing.
pub(super) fn log_tail(dir: &Path) -> String {
    let log = std::fs::read(dir.join(LOG_FILE)).unwrap_or_default();
    let log = String::from_utf8_lossy(&log);
    let tail: Vec<&str> = log
        .lines()
        .rev()
        .filter(|l| !l.trim().is_empty())
        .take(3)
        .collect();
    if tail.is_empty() {
        String::new()
    } else {
        let lines: Vec<&str> = tail.into_iter().rev().collect();
        format!("; the end of its log: {}", lines.join(" | "))
    }
}

/// Failed attempts' directories kept under `failed/` (the oldest go).
pub const FAILED_KEPT: usize = 100;

/// A finished or interrupted attempt's directory goes; a failed one's is
/// kept under `failed/` (spec and log: `mad-search worker --job
/// failed/<dir>/spec.json --out r.json --runs DIR` tries it again by hand),
/// the newest [`FAILED_KEPT`] of them.
pub(super) fn keep_or_remove(state: &Path, dir: &Path, outcome: &Outcome) {
    if matches!(outcome, Outcome::Failed { .. } | Outcome::Unrunnable { .. }) {
        let failed = failed_dir(state);
        let to = failed.join(dir.file_name().unwrap_or_default());
        let _ = std::fs::create_dir_all(&failed);
        let _ = std::fs::remove_dir_all(&to);
        if std::fs::rename(dir, &to).is_ok() {
            prune_failed(state, FAILED_KEPT);
            return;
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Removes the oldest failed attempts' directories beyond `keep`.
fn prune_failed(state: &Path, keep: usize) {
    let mut dirs: Vec<(SystemTime, PathBuf)> = std::fs::read_dir(failed_dir(state))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if dirs.len() > keep {
        dirs.sort();
        for (_, d) in &dirs[..dirs.len() - keep] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// kill(2): `target` a pid, or minus a process group's id.
fn signal(target: i64, sig: libc::c_int) {
    if let Ok(target) = libc::pid_t::try_from(target)
        && target != 0
        && target != -1
    {
        // SAFETY: kill(2) on our own child or its process group (it is not
        // reaped before the last signal to it; a group outliving its leader
        // keeps its id until the last member goes).
        unsafe {
            libc::kill(target, sig);
        }
    }
}

/// Starts `exe worker --job spec --out result`, stderr to `log`, in its
/// own process group (a terminal's Ctrl-C reaches the daemon, which stops
/// its children), killed if the daemon dies.
fn spawn(exe: &Path, spec: &Path, result: &Path, log: &Path) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt as _;
    // Appending: the child's stdout and the thread that copies its stderr
    // share the file.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let parent = std::process::id();
    let mut cmd = Command::new(exe);
    cmd.arg("worker")
        .arg("--job")
        .arg(spec)
        .arg("--out")
        .arg(result)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls (setpgid, prctl, getppid)
    // between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            #[cfg(target_os = "linux")]
            {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                // The daemon may have died before the prctl.
                // (No allocation between fork and exec: a raw error.)
                if u32::try_from(libc::getppid()).ok() != Some(parent) {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
            }
            Ok(())
        });
    }
    cmd.spawn()
}
