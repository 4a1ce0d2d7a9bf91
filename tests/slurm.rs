//! The Slurm executor through the real binary and a real Slurm: a tiny
//! search to its budget with a job cancelled under it (retried), a daemon
//! killed with -9 mid-search (re-attached: nothing submitted twice, nothing
//! finished lost), a refused submission (shown in `status`; `stop` still
//! stops).
//!
//! These need a Slurm the test can submit to (`sinfo` answers): CI starts
//! a one-node one with `scripts/slurm-up` and sets
//! `MAD_SEARCH_REQUIRE_SLURM=1`, which turns a missing Slurm into a
//! failure. Elsewhere, without Slurm, they say so and pass; the tests of
//! what happens without Slurm commands run everywhere.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use common::*;
use mad_search::store::JobState;

/// The Slurm tests share one small cluster: one at a time.
static CLUSTER: Mutex<()> = Mutex::new(());

/// Whether a Slurm answers here; with `MAD_SEARCH_REQUIRE_SLURM` set, it
/// must.
fn slurm() -> bool {
    let up = Command::new("sinfo")
        .args(["--noheader", "--format=%T"])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
    if !up {
        assert!(
            std::env::var_os("MAD_SEARCH_REQUIRE_SLURM").is_none(),
            "MAD_SEARCH_REQUIRE_SLURM is set but no Slurm answers (`sinfo`): start one with \
             scripts/slurm-up DIR and export SLURM_CONF=DIR/slurm.conf"
        );
        eprintln!("no Slurm here (sinfo does not answer): skipped; see scripts/slurm-up");
    }
    up
}

fn log_of(state: &Path) -> String {
    std::fs::read_to_string(state.join("daemon.log")).unwrap_or_default()
}

/// `(Slurm id, name)` of every submission the daemon logged.
fn submissions(state: &Path) -> Vec<(u64, String)> {
    log_of(state)
        .lines()
        .filter_map(|l| {
            let rest = l.split_once("submitted as Slurm job ")?.1;
            let (id, name) = rest.split_once(" (")?;
            Some((id.parse().ok()?, name.trim_end_matches(')').to_string()))
        })
        .collect()
}

/// The Slurm id of job `job`'s attempt `attempt`, once submitted.
fn slurm_id(state: &Path, job: u64, attempt: u32) -> u64 {
    let suffix = format!("-j{job}-a{attempt}");
    let mut id = None;
    wait_until(
        &format!("job {job} attempt {attempt} on Slurm"),
        120,
        || {
            id = submissions(state)
                .into_iter()
                .find(|(_, n)| n.ends_with(&suffix))
                .map(|(i, _)| i);
            id.is_some()
        },
    );
    id.unwrap()
}

/// Slurm's state of job `id` (`squeue`), empty once it is gone.
fn slurm_state(id: u64) -> String {
    let out = Command::new("squeue")
        .args(["--noheader", "--states=all", "--format=%T", "--jobs"])
        .arg(id.to_string())
        .output()
        .unwrap();
    text(&out.stdout).trim().to_string()
}

/// The names of every Slurm job (any state) of the search, as Slurm lists them.
fn slurm_names(state: &Path) -> Vec<String> {
    let Some((_, first)) = submissions(state).into_iter().next() else {
        return Vec::new();
    };
    let prefix = &first[..first.find("-j").unwrap()];
    let out = Command::new("squeue")
        .args(["--noheader", "--states=all", "--format=%j"])
        .output()
        .unwrap();
    let mut names: Vec<String> = text(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|n| n.starts_with(prefix))
        .map(String::from)
        .collect();
    names.sort();
    names
}

/// A Slurm test's surroundings: the cluster to itself, a fresh state
/// directory; when the test ends (whatever way), its daemon is killed and
/// its Slurm jobs cancelled, so that nothing trains on for the next test.
struct Fixture {
    state: std::path::PathBuf,
    _dir: tempfile::TempDir,
    _cluster: std::sync::MutexGuard<'static, ()>,
}

impl Fixture {
    /// `None` (the test is skipped) where no Slurm answers.
    fn new() -> Option<Fixture> {
        if !slurm() {
            return None;
        }
        let cluster = CLUSTER
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let dir = tempfile::tempdir().unwrap();
        Some(Fixture {
            state: dir.path().join("search"),
            _dir: dir,
            _cluster: cluster,
        })
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(p) = pid(&self.state) {
            // SAFETY: kill(2) on the test's own daemon.
            unsafe {
                libc::kill(p, libc::SIGKILL);
            }
        }
        for (id, _) in submissions(&self.state) {
            let _ = Command::new("scancel").arg(id.to_string()).status();
        }
    }
}

/// Starts (or resumes) the search of `state` on Slurm in the background:
/// `space` (the test space when `None`: about a second per evaluation; the
/// embedded default: some fifteen), two workers (unless `extra` says) of one thread, `squeue`
/// every half second; `env` set on the daemon (Slurm passes it on to jobs).
fn start_on_slurm(state: &Path, space: Option<&str>, extra: &[&str], env: &[(&str, &str)]) {
    let mut args = vec![
        "start",
        "--state",
        s(state),
        "--executor",
        "slurm",
        "--slurm-poll",
        "0.5",
        "--threads",
        "1",
        "--preset",
        "tiny",
    ];
    if !extra.contains(&"--workers") {
        args.extend_from_slice(&["--workers", "2"]);
    }
    if let Some(space) = space {
        args.extend_from_slice(&["--space", space, "--checkpoint-every", "1"]);
    }
    args.extend_from_slice(extra);
    let out = bin()
        .args(&args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(out.status.success(), "start failed: {}", text(&out.stderr));
}

/// Every job of the search done and none failed; `(job, attempt)` of each.
fn all_done(state: &Path) -> Vec<(u64, u32)> {
    let store = open(state);
    store
        .jobs()
        .unwrap()
        .into_iter()
        .map(|j| {
            assert!(
                matches!(j.state, JobState::Done { .. }),
                "job {} is {:?}\n{}",
                j.id,
                j.state,
                log_of(state)
            );
            (j.id, j.attempt)
        })
        .collect()
}

#[test]
fn without_slurm_commands_start_says_what_to_do_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("search");
    let out = bin()
        .args([
            "start",
            "--state",
            s(&state),
            "--executor",
            "slurm",
            "--foreground",
        ])
        .env("PATH", dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("`sbatch` is not on PATH") && err.contains("--executor local"),
        "{err}"
    );
    assert!(!state.exists(), "a refused start writes nothing");
    let out = run(&[
        "start",
        "--state",
        s(&state),
        "--slurm-partition",
        "gpu",
        "--foreground",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("need --executor slurm"),
        "{}",
        text(&out.stderr)
    );
    assert!(!state.exists());
}

#[test]
fn a_tiny_search_runs_through_slurm_and_a_cancelled_job_is_retried() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let state = fixture.state.clone();
    // Job 1 hangs on its first attempt (deaf to SIGTERM): it is running
    // when cancelled, and Slurm has to kill it.
    let layers = "mh-attention swiglu";
    start_on_slurm(
        &state,
        Some(SPACE),
        &["--budget", "screen=3,mad=0,scale=0", "--seed-arch", layers],
        &[("MAD_SEARCH_TEST_HANG_LAYERS", layers)],
    );
    let id = slurm_id(&state, 1, 1);
    wait_until("job 1 running on Slurm", 120, || {
        slurm_state(id) == "RUNNING"
    });
    wait_until("status to show a job running on Slurm", 30, || {
        let v = status_json(&state);
        assert_eq!(v["daemon"]["executor"], "slurm");
        v["daemon"]["slurm"]["running"].as_u64().unwrap() >= 1
    });
    let text_status = text(&run(&["status", "--state", s(&state)]).stdout);
    assert!(
        text_status.contains("as Slurm jobs") && text_status.contains("slurm: "),
        "{text_status}"
    );
    let out = Command::new("scancel")
        .arg(id.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until("the search to finish", 300, || down(&state));
    let log = log_of(&state);
    assert!(
        log.contains(&format!(
            "job 1: failed: Slurm job {id} was cancelled (not by mad-search)"
        )),
        "{log}"
    );
    assert!(log.contains("search finished"), "{log}");
    let jobs = all_done(&state);
    assert_eq!(jobs.len(), 3, "{log}");
    assert!(
        jobs.contains(&(1, 2)),
        "job 1 done on its second attempt: {jobs:?}"
    );
    let names = slurm_names(&state);
    let mut unique = names.clone();
    unique.dedup();
    assert_eq!(names, unique, "a name submitted twice");
    assert_eq!(names.len(), 4, "three jobs and one retry: {names:?}");
    assert!(
        !state.join("jobs").read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("1-a2")),
        "a finished attempt's directory goes"
    );
}

#[test]
fn a_daemon_killed_mid_search_reattaches_and_submits_nothing_twice() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let state = fixture.state.clone();
    // The embedded space: jobs of some fifteen seconds, long enough to be
    // caught running.
    let budget = ["--budget", "screen=3,mad=0,scale=0"];
    start_on_slurm(&state, None, &budget, &[]);
    let (a, b) = (slurm_id(&state, 1, 1), slurm_id(&state, 2, 1));
    wait_until("job 1 running on Slurm", 120, || {
        slurm_state(a) == "RUNNING"
    });
    let daemon = pid(&state).unwrap();
    // SAFETY: kill(2) on the test's own daemon.
    assert_eq!(unsafe { libc::kill(daemon, libc::SIGKILL) }, 0);
    wait_until("the daemon gone", 20, || !alive(daemon));
    // Its Slurm jobs go on without it.
    let after = slurm_state(a);
    assert!(
        ["RUNNING", "COMPLETING", "COMPLETED"].contains(&after.as_str()),
        "job 1 went with its daemon: {after}"
    );
    start_on_slurm(&state, None, &[], &[]);
    wait_until("the search to finish", 300, || down(&state));
    let log = log_of(&state);
    assert!(
        log.contains("re-attaching to 2 Slurm job(s) a previous daemon submitted: jobs [1, 2]"),
        "{log}"
    );
    assert!(
        log.contains(&format!("job 1: re-attached to Slurm job {a}"))
            && log.contains(&format!("job 2: re-attached to Slurm job {b}")),
        "{log}"
    );
    assert!(log.contains("search finished"), "{log}");
    let jobs = all_done(&state);
    assert_eq!(jobs, [(1, 1), (2, 1), (3, 1)], "no attempt lost: {log}");
    let names = slurm_names(&state);
    assert_eq!(names.len(), 3, "each job submitted once: {names:?}\n{log}");
    assert_eq!(submissions(&state).len(), 3, "{log}");
    no_double_evaluation(&state);
}

#[test]
fn a_refused_submission_shows_in_status_and_stop_still_stops() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let state = fixture.state.clone();
    start_on_slurm(
        &state,
        Some(SPACE),
        &[
            "--budget",
            "screen=1,mad=0,scale=0",
            "--slurm-partition",
            "no-such-partition",
        ],
        &[],
    );
    let mut error = String::new();
    wait_until("the refusal in status", 60, || {
        let v = status_json(&state);
        error = v["daemon"]["slurm"]["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        !error.is_empty()
    });
    assert!(
        error.contains("sbatch") && error.contains("partition") && error.contains("retrying"),
        "{error}"
    );
    let text_status = text(&run(&["status", "--state", s(&state)]).stdout);
    assert!(
        text_status.contains("slurm error: submitting jobs"),
        "{text_status}"
    );
    stop(&state);
    wait_until("the daemon gone", 60, || down(&state));
    let store = open(&state);
    let jobs = store.jobs().unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].state, JobState::Queued, "nothing lost");
    assert_eq!(jobs[0].failures, 0, "a refusal is not the job's failure");
    assert!(submissions(&state).is_empty());
}

#[test]
fn a_daemon_killed_between_sbatch_and_its_record_finds_the_job_by_name() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let state = fixture.state.clone();
    let budget = ["--budget", "screen=2,mad=0,scale=0", "--workers", "1"];
    // The daemon kills itself right after sbatch answers, before the id
    // is written down (in the foreground: it dies before a background
    // start would see it serve). The embedded space: a job of some fifteen
    // seconds still runs when the next daemon looks for it.
    let out = bin()
        .args([
            "start",
            "--state",
            s(&state),
            "--preset",
            "tiny",
            "--threads",
            "1",
            "--executor",
            "slurm",
            "--slurm-poll",
            "0.5",
            "--foreground",
        ])
        .args(budget)
        .env("MAD_SEARCH_TEST_ABORT_AFTER_SUBMIT", "1")
        .output()
        .unwrap();
    {
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "{}",
            text(&out.stderr)
        );
    }
    std::fs::write(state.join("daemon.log"), &out.stderr).unwrap();
    let first = submissions(&state);
    assert_eq!(first.len(), 1, "{}", log_of(&state));
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("jobs/1-a1/slurm.json")).unwrap())
            .unwrap();
    assert!(record["id"].is_null(), "the id was not written: {record}");
    start_on_slurm(&state, None, &["--workers", "1"], &[]);
    wait_until("the search to finish", 300, || down(&state));
    let log = log_of(&state);
    assert!(
        log.contains(&format!(
            "job 1: found its Slurm job {} by name ({})",
            first[0].0, first[0].1
        )),
        "{log}"
    );
    let jobs = all_done(&state);
    assert_eq!(jobs, [(1, 1), (2, 1)], "{log}");
    let names = slurm_names(&state);
    assert_eq!(names.len(), 2, "each job submitted once: {names:?}\n{log}");
}

#[test]
fn a_job_that_can_never_start_stops_the_search_with_the_reason() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    let state = fixture.state.clone();
    // A dependency on a job that succeeded, `afternotok`, is never met.
    let script = state.parent().unwrap().join("true.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    let out = Command::new("sbatch")
        .args([
            "--parsable",
            "--job-name=mad-test-true",
            "--output=/dev/null",
        ])
        .arg(&script)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let done_id = text(&out.stdout).trim().to_string();
    wait_until("the dependency to complete", 60, || {
        slurm_state(done_id.parse().unwrap()) == "COMPLETED"
    });
    let dependency = format!("--slurm-arg=--dependency=afternotok:{done_id}");
    let out = bin()
        .args([
            "start",
            "--state",
            s(&state),
            "--space",
            SPACE,
            "--preset",
            "tiny",
            "--budget",
            "screen=1,mad=0,scale=0",
            "--workers",
            "1",
            "--threads",
            "1",
            "--executor",
            "slurm",
            "--slurm-poll",
            "0.5",
            &dependency,
            "--foreground",
        ])
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("can never start (pending: DependencyNeverSatisfied)"),
        "{err}"
    );
    let store = open(&state);
    let jobs = store.jobs().unwrap();
    assert_eq!(jobs[0].state, JobState::Queued, "the job goes back");
    assert_eq!(jobs[0].failures, 0, "not the job's failure");
    drop(store);
    std::fs::write(state.join("daemon.log"), &err).unwrap();
    let (id, _) = submissions(&state)[0].clone();
    wait_until("the job cancelled", 30, || {
        let st = slurm_state(id);
        st.is_empty() || st == "CANCELLED"
    });
}
