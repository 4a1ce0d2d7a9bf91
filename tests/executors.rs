//! The local process executor through the real binary: a worker process
//! that dies by a signal or hangs costs its attempt, never the daemon.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use mad_search::store::EventKind;

/// A foreground search of `state` on the test space: `screen` evaluations,
/// one worker of one thread, `layers` seeded first, `env` set; `extra` added.
/// Returns the daemon's log.
fn search(state: &Path, screen: u32, layers: &str, env: (&str, &str), extra: &[&str]) -> String {
    let budget = format!("screen={screen},mad=0,scale=0");
    let mut args = vec![
        "start",
        "--state",
        s(state),
        "--space",
        SPACE,
        "--preset",
        "tiny",
        "--workers",
        "1",
        "--threads",
        "1",
        "--budget",
        &budget,
        "--seed-arch",
        layers,
        "--foreground",
    ];
    args.extend_from_slice(extra);
    let out = bin().args(&args).env(env.0, env.1).output().unwrap();
    assert!(
        out.status.success(),
        "the daemon failed: {}",
        text(&out.stderr)
    );
    text(&out.stderr)
}

#[test]
fn a_worker_killed_three_times_fails_its_job_and_the_search_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("search");
    search(
        &state,
        3,
        "mh-hyena swiglu",
        ("MAD_SEARCH_TEST_KILL_LAYERS", "mh-hyena swiglu"),
        &[],
    );
    let v = status_json(&state);
    assert_eq!(v["jobs"]["screen"]["failed"], 1, "{v}");
    assert_eq!(v["jobs"]["screen"]["done"], 2, "{v}");
    let out = run(&["show", "--state", s(&state), &failed_id(&state)]);
    let shown = text(&out.stdout);
    assert!(
        shown.contains("killed by signal 9") && shown.contains("3 failures"),
        "{shown}"
    );
    // Each dead attempt's spec and log are kept for a look; nothing else.
    let kept: Vec<_> = std::fs::read_dir(state.join("jobs/failed"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(kept.len(), 3, "{kept:?}");
    let left: Vec<_> = std::fs::read_dir(state.join("jobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["failed"], "attempt directories left behind");
    no_double_evaluation(&state);
}

#[test]
fn a_worker_past_its_lease_is_killed_and_its_job_retried() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("search");
    // The first attempt hangs, deaf to SIGTERM: past its 6 s lease it gets
    // SIGTERM, then SIGKILL a second later; the second attempt finishes.
    let log = search(
        &state,
        2,
        "mh-hyena swiglu",
        ("MAD_SEARCH_TEST_HANG_LAYERS", "mh-hyena swiglu"),
        &["--job-timeout", "6", "--grace", "1"],
    );
    let v = status_json(&state);
    assert_eq!(v["jobs"]["screen"]["done"], 2, "{v}");
    assert_eq!(v["jobs"]["screen"]["failed"], 0, "{v}");
    let store = open(&state);
    let lapsed = store
        .events(usize::MAX)
        .unwrap()
        .into_iter()
        .filter(|e| matches!(&e.kind, EventKind::Requeued { why, .. } if why.contains("lapsed")))
        .count();
    assert_eq!(lapsed, 1, "one lapsed lease: {log}");
    drop(store);
    no_double_evaluation(&state);
}

#[test]
fn the_thread_executor_still_runs_a_search() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("search");
    search(
        &state,
        2,
        "mh-hyena swiglu",
        ("MAD_SEARCH_TEST_NONE", ""),
        &["--executor", "threads"],
    );
    let v = status_json(&state);
    assert_eq!(v["jobs"]["screen"]["done"], 2, "{v}");
    assert!(
        !state.join("jobs").exists(),
        "threads need no attempt files"
    );
}

#[test]
fn a_bad_executor_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("search");
    let out = run(&["start", "--state", s(&state), "--executor", "slurmm"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("--executor") && err.contains("`slurmm`"),
        "{err}"
    );
    assert!(!state.exists());
    for bad in [
        "--grace=-1",
        "--grace=1e20",
        "--job-timeout=1e20",
        "--job-timeout=nan",
    ] {
        let out = run(&["start", "--state", s(&state), bad]);
        let flag = bad.split('=').next().unwrap();
        assert!(
            text(&out.stderr).contains(flag),
            "{bad}: {}",
            text(&out.stderr)
        );
        assert!(!state.exists());
    }
}

#[test]
fn a_worker_with_a_bad_spec_says_so_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.json");
    std::fs::write(&spec, "{\"format\": 1}").unwrap();
    let out_file = dir.path().join("result.json");
    let out = run(&["worker", "--job", s(&spec), "--out", s(&out_file)]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("spec.json") && err.contains("missing field"),
        "{err}"
    );
    assert!(!out_file.exists());
}

/// A spec for a `cpu`-preset screen of `hyena swiglu` (minutes of work:
/// long enough to signal), under `dir`.
fn long_spec(dir: &Path, wall_seconds: Option<f64>) -> mad_search::exec::spec::JobSpec {
    use mad_search::genome::ArchSpec;
    use mad_search::space::{DEFAULT_SPACE, DEFAULT_SPACE_NAME, StageName};
    use mad_search::store::{Job, JobState};
    let genome = ArchSpec::from_layers_str("hyena swiglu").unwrap();
    mad_search::exec::spec::JobSpec {
        format: mad_search::exec::spec::FORMAT,
        job: Job {
            id: 1,
            arch: genome.arch_id(),
            stage: StageName::Screen,
            part: None,
            attempt: 1,
            failures: 0,
            state: JobState::Queued,
            created: 0.0,
        },
        genome,
        scale: None,
        space_file: DEFAULT_SPACE_NAME.into(),
        space_text: DEFAULT_SPACE.into(),
        preset: "cpu".into(),
        corpus: None,
        corpus_fingerprint: CORPUS.with(Clone::clone),
        seed: 1,
        runs_dir: dir.join("runs"),
        checkpoint_every: 1_000_000,
        threads: 1,
        device: "cpu".into(),
        wall_seconds,
    }
}

thread_local! {
    static CORPUS: String = mad_search::scale::corpus::Corpus::embedded().fingerprint();
}

fn checkpoints(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("runs"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".ckpt"))
        .count()
}

fn outcome(result: &Path) -> String {
    let r = mad_search::exec::spec::JobResult::read(result).unwrap();
    serde_json::to_value(&r.outcome).unwrap().to_string()
}

#[test]
fn a_worker_checkpoints_on_sigusr1_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.json");
    long_spec(dir.path(), None).write(&spec).unwrap();
    let result = dir.path().join("result.json");
    let mut child = bin()
        .args(["worker", "--job", s(&spec), "--out", s(&result)])
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    // No periodic checkpoint (every 10⁶ steps): SIGUSR1 asks for one, and
    // the worker goes on.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(checkpoints(dir.path()), 0);
    // SAFETY: our child, not yet reaped.
    unsafe {
        libc::kill(pid, libc::SIGUSR1);
    }
    wait_until("a checkpoint on SIGUSR1", 60, || {
        checkpoints(dir.path()) > 0
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "the worker goes on");
    // SAFETY: as above.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(3));
    assert_eq!(outcome(&result), "\"interrupted\"");
    assert!(dir.path().join("progress").exists() || checkpoints(dir.path()) > 0);
}

#[test]
fn a_worker_stops_itself_at_its_own_budget() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.json");
    long_spec(dir.path(), Some(2.0)).write(&spec).unwrap();
    let result = dir.path().join("result.json");
    let t = std::time::Instant::now();
    let out = bin()
        .args(["worker", "--job", s(&spec), "--out", s(&result)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(t.elapsed() < Duration::from_secs(60));
    assert_eq!(outcome(&result), "\"out_of_time\"");
    assert!(
        checkpoints(dir.path()) > 0,
        "it checkpointed before stopping"
    );
}

#[test]
fn a_worker_on_another_corpus_cannot_set_up() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.json");
    let mut job = long_spec(dir.path(), None);
    job.corpus_fingerprint = "0123456789abcdef".into();
    job.write(&spec).unwrap();
    let result = dir.path().join("result.json");
    let out = bin()
        .args(["worker", "--job", s(&spec), "--out", s(&result)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let err = text(&out.stderr);
    assert!(
        err.contains("not the corpus the search started with"),
        "{err}"
    );
    assert!(!result.exists());
}

#[test]
fn sigusr1_makes_the_daemon_checkpoint_not_die() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("search");
    start(&state, &["--budget", "screen=200"]);
    let p = pid(&state).unwrap();
    // SAFETY: the daemon's pid, read from its pid file.
    unsafe {
        libc::kill(p, libc::SIGUSR1);
    }
    let log = || std::fs::read_to_string(state.join("daemon.log")).unwrap_or_default();
    wait_until("the daemon to log SIGUSR1", 30, || {
        log().contains("SIGUSR1")
    });
    assert!(alive(p), "{}", log());
    stop(&state);
    wait_until("the daemon to stop", 60, || down(&state));
}

#[test]
fn a_corpus_changed_under_a_search_stops_it_with_the_reason_and_loses_no_job() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("search");
    let corpus = dir.path().join("corpus.txt");
    let original = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/corpora/sotu/sotu-1946-2021.txt"
    ))
    .unwrap();
    let edited = original.replace("the", "teh");
    std::fs::write(&corpus, &original).unwrap();
    create_idle_with(&state, &["--corpus", s(&corpus)]);
    // Changed while the daemon is down: it refuses to start.
    std::fs::write(&corpus, &edited).unwrap();
    let out = bin()
        .args(["start", "--state", s(&state), "--foreground"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("not the one it started with"), "{err}");
    // Changed under a running daemon: the next worker cannot set up; the
    // daemon puts its job back, drains and exits with the reason.
    std::fs::write(&corpus, &original).unwrap();
    start(&state, &["--budget", "screen=12"]);
    wait_until("a finished screen", 60, || finished_live(&state) >= 1);
    std::fs::write(&corpus, &edited).unwrap();
    wait_until("the daemon to stop by itself", 120, || down(&state));
    let log = std::fs::read_to_string(state.join("daemon.log")).unwrap();
    assert!(
        log.contains("cannot run") && log.contains("not the corpus the search started with"),
        "{log}"
    );
    let v = status_json(&state);
    assert_eq!(v["jobs"]["screen"]["failed"], 0, "no candidate blamed: {v}");
    // The original back: the search goes on to its budget.
    std::fs::write(&corpus, &original).unwrap();
    let out = bin()
        .args(["start", "--state", s(&state), "--foreground"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v = status_json(&state);
    assert_eq!(v["jobs"]["screen"]["done"], 12, "{v}");
    assert_eq!(v["jobs"]["screen"]["failed"], 0, "{v}");
    no_double_evaluation(&state);
}
