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
/// with it); keeps `failed/`. Returns how many went.
///
/// # Errors
/// The directory cannot be read.
pub fn clear_stale(state: &Path) -> std::io::Result<usize> {
    let dir = jobs_dir(state);
    let mut n = 0;
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_name() == "failed" {
            continue;
        }
        std::fs::remove_dir_all(entry.path())?;
        n += 1;
    }
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
    std::thread::scope(|scope| {
        // The child's stderr: into its log file, and on to the daemon's log.
        if let Some(stderr) = child.stderr.take() {
            let log_path = &log_path;
            scope.spawn(move || {
                use std::io::{BufRead as _, Write as _};
                let mut file = std::fs::OpenOptions::new().append(true).open(log_path).ok();
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(f) = file.as_mut() {
                        let _ = writeln!(f, "{line}");
                    }
                    if line.starts_with(&format!("job {job}:")) {
                        log(line);
                    } else {
                        log(format!("job {job}: worker {pid}: {line}"));
                    }
                }
            });
        }
        watch(
            child,
            pid,
            stop,
            grace,
            show,
            &dir,
            &result_path,
            spec,
            state,
        )
    })
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
    state: &Path,
) -> ChildEnd {
    let failed = |reason: String, pid: u32| ChildEnd {
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
            Err(e) => break Err(e),
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
                    signal(pid, libc::SIGTERM);
                    termed = Some(Instant::now());
                }
                Some(t) if !killed && t.elapsed() >= grace => {
                    let _ = child.kill();
                    killed = true;
                }
                Some(_) => {}
            }
        }
        std::thread::sleep(POLL);
    };
    let end = match (status, JobResult::read(result_path)) {
        (_, Ok(r)) if r.job == spec.job.id && r.attempt == spec.job.attempt => ChildEnd {
            outcome: r.outcome,
            peak_kib: r.peak_kib,
            pid,
        },
        (Err(e), _) => failed(format!("lost track of worker process {pid}: {e}"), pid),
        // Asked to stop, it ended without a result (killed after the grace,
        // or ended by the SIGTERM before it could catch it): interrupted; it
        // resumes from its last checkpoint.
        (Ok(_), _) if termed.is_some() => ChildEnd {
            outcome: Outcome::Interrupted,
            peak_kib: None,
            pid,
        },
        (Ok(status), read) => failed(died(status, dir, read.err()), pid),
    };
    keep_or_remove(state, dir, &end.outcome);
    end
}

/// Why a child that wrote no usable result ended: its signal or exit code,
/// and the end of its log.
fn died(status: ExitStatus, dir: &Path, read: Option<super::spec::SpecError>) -> String {
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
    let unreadable = match read {
        Some(super::spec::SpecError::Io { reason, .. })
            if reason.kind() == std::io::ErrorKind::NotFound =>
        {
            String::new()
        }
        Some(e) => format!("; its result: {e}"),
        None => String::new(),
    };
    let log = std::fs::read_to_string(dir.join(LOG_FILE)).unwrap_or_default();
    let tail: Vec<&str> = log
        .lines()
        .rev()
        .filter(|l| !l.trim().is_empty())
        .take(3)
        .collect();
    let tail = if tail.is_empty() {
        String::new()
    } else {
        let lines: Vec<&str> = tail.into_iter().rev().collect();
        format!("; the end of its log: {}", lines.join(" | "))
    };
    format!("{how}{unreadable}{tail}")
}

/// A finished or interrupted attempt's directory goes; a failed one's is
/// kept under `failed/` (spec and log: `mad-search worker --job
/// failed/<dir>/spec.json --out r.json` tries it again by hand).
fn keep_or_remove(state: &Path, dir: &Path, outcome: &Outcome) {
    if matches!(outcome, Outcome::Failed { .. }) {
        let to = failed_dir(state).join(dir.file_name().unwrap_or_default());
        let _ = std::fs::create_dir_all(failed_dir(state));
        let _ = std::fs::remove_dir_all(&to);
        if std::fs::rename(dir, &to).is_ok() {
            return;
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) on our own, not yet reaped child.
        unsafe {
            libc::kill(pid, sig);
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
                if u32::try_from(libc::getppid()).ok() != Some(parent) {
                    return Err(std::io::Error::other("the daemon is gone"));
                }
            }
            Ok(())
        });
    }
    cmd.spawn()
}
