//! The executor's pieces without a daemon: the spec and result files, how a
//! child's end is read (a fake worker: a shell script), stale attempts.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use super::Executor;
use super::job::Outcome;
use super::local;
use super::spec::{FORMAT, JobResult, JobSpec, SpecError};
use crate::genome::ArchSpec;
use crate::space::StageName;
use crate::store::{Job, JobState};

thread_local! {
    static CORPUS: String = crate::scale::corpus::Corpus::embedded().fingerprint();
}

fn spec(dir: &Path) -> JobSpec {
    let genome = ArchSpec::from_layers_str("hyena swiglu").unwrap();
    JobSpec {
        format: FORMAT,
        job: Job {
            id: 7,
            arch: genome.arch_id(),
            stage: StageName::Screen,
            part: None,
            attempt: 2,
            failures: 1,
            state: JobState::Queued,
            created: 0.0,
        },
        genome,
        space_file: "default.toml".into(),
        space_text: crate::space::DEFAULT_SPACE.into(),
        preset: "tiny".into(),
        corpus: None,
        corpus_fingerprint: CORPUS.with(Clone::clone),
        seed: 1,
        runs_dir: dir.join("runs"),
        checkpoint_every: 50,
        threads: 1,
        device: "cpu".into(),
        wall_seconds: Some(60.0),
    }
}

/// A fake worker: a shell script that gets `worker --job SPEC --out RESULT`.
fn script(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("fake-worker");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn run(exe: &Path, state: &Path, stop: &AtomicBool, grace: Duration) -> local::ChildEnd {
    local::run(exe, state, &spec(state), stop, grace, &|_| {}, &|_| {})
}

/// [`run`], asked to stop 300 ms after the start.
fn run_then_stop(exe: &Path, state: &Path, grace: Duration) -> local::ChildEnd {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let h = s.spawn(|| run(exe, state, &stop, grace));
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        h.join().unwrap()
    })
}

#[test]
fn executors_parse_and_bad_names_are_named() {
    for e in [Executor::Local, Executor::Threads] {
        assert_eq!(e.to_string().parse::<Executor>(), Ok(e));
    }
    let err = "slurmm".parse::<Executor>().unwrap_err();
    assert!(err.contains("`slurmm`") && err.contains("local"), "{err}");
}

#[test]
fn specs_and_results_round_trip_and_other_formats_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path());
    let path = dir.path().join("spec.json");
    s.write(&path).unwrap();
    assert_eq!(JobSpec::read(&path).unwrap(), s);
    for outcome in [
        Outcome::Interrupted,
        Outcome::OutOfTime,
        Outcome::Failed {
            reason: "x".into(),
            retry: true,
        },
    ] {
        let r = JobResult {
            format: FORMAT,
            job: 7,
            attempt: 2,
            outcome,
            peak_kib: Some(1234),
        };
        let out = dir.path().join("result.json");
        r.write(&out).unwrap();
        assert_eq!(JobResult::read(&out).unwrap(), r);
    }
    let mut other = serde_json::to_value(&s).unwrap();
    other["format"] = serde_json::json!(FORMAT + 1);
    std::fs::write(&path, other.to_string()).unwrap();
    let err = JobSpec::read(&path).unwrap_err();
    assert!(matches!(err, SpecError::Format { .. }), "{err}");
    assert!(err.to_string().contains("spec.json"), "{err}");
    std::fs::write(&path, "{\"format\": 1,\n \"job\": ").unwrap();
    let err = JobSpec::read(&path).unwrap_err().to_string();
    assert!(err.contains("spec.json") && err.contains("line 2"), "{err}");
}

#[test]
fn a_worker_killed_by_a_signal_is_a_failed_attempt_with_the_signal_named() {
    let state = tempfile::tempdir().unwrap();
    let exe = script(state.path(), "echo 'allocating the world' >&2\nkill -9 $$");
    let end = run(&exe, state.path(), &AtomicBool::new(false), Duration::ZERO);
    let Outcome::Failed { reason, retry } = end.outcome else {
        panic!("{:?}", end.outcome);
    };
    assert!(retry);
    assert!(
        reason.contains("signal 9") && reason.contains("out of memory"),
        "{reason}"
    );
    assert!(reason.contains("allocating the world"), "{reason}");
    // The attempt's files are kept for a look.
    let kept = local::failed_dir(state.path()).join("7-a2");
    assert!(kept.join("spec.json").is_file() && kept.join("worker.log").is_file());
    assert!(!local::jobs_dir(state.path()).join("7-a2").exists());
}

#[test]
fn a_worker_without_a_result_is_a_failed_attempt_with_its_exit_code() {
    let state = tempfile::tempdir().unwrap();
    let exe = script(state.path(), "exit 5");
    let end = run(&exe, state.path(), &AtomicBool::new(false), Duration::ZERO);
    assert!(
        matches!(&end.outcome, Outcome::Failed { reason, .. } if reason.contains("code 5")),
        "{:?}",
        end.outcome
    );
}

#[test]
fn the_result_file_is_the_truth() {
    let state = tempfile::tempdir().unwrap();
    // Exits 3 (stopped), as a real worker does after writing `interrupted`.
    let exe = script(
        state.path(),
        "printf '{\"format\":1,\"job\":7,\"attempt\":2,\"outcome\":\"out_of_time\",\"peak_kib\":99}' > \"$5\"\nexit 3",
    );
    let end = run(&exe, state.path(), &AtomicBool::new(false), Duration::ZERO);
    assert_eq!(end.outcome, Outcome::OutOfTime);
    assert_eq!(end.peak_kib, Some(99));
    assert!(!local::jobs_dir(state.path()).join("7-a2").exists());
    // Another attempt's result is not this one's.
    let exe = script(
        state.path(),
        "printf '{\"format\":1,\"job\":7,\"attempt\":1,\"outcome\":\"interrupted\"}' > \"$5\"",
    );
    let end = run(&exe, state.path(), &AtomicBool::new(false), Duration::ZERO);
    assert!(
        matches!(end.outcome, Outcome::Failed { .. }),
        "{:?}",
        end.outcome
    );
}

#[test]
fn a_worker_deaf_to_sigterm_is_killed_after_the_grace() {
    let state = tempfile::tempdir().unwrap();
    // Ignores SIGTERM, and a child of its own (inheriting that, and its
    // stderr) sleeps: the whole group goes, and the watcher is not left
    // waiting on the pipe the grandchild holds.
    let exe = script(state.path(), "trap '' TERM\nsleep 30\necho never");
    let t = Instant::now();
    let end = run_then_stop(&exe, state.path(), Duration::from_millis(300));
    assert_eq!(end.outcome, Outcome::Interrupted);
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
}

#[test]
fn a_stopped_worker_that_checkpoints_ends_as_it_says() {
    let state = tempfile::tempdir().unwrap();
    // On SIGTERM: write `interrupted` and exit 3, as a real worker does.
    let exe = script(
        state.path(),
        "trap 'printf \"{\\\"format\\\":1,\\\"job\\\":7,\\\"attempt\\\":2,\\\"outcome\\\":\\\"interrupted\\\"}\" > \"$5\"; exit 3' TERM\nwhile :; do sleep 0.05; done",
    );
    let end = run_then_stop(&exe, state.path(), Duration::from_secs(30));
    assert_eq!(end.outcome, Outcome::Interrupted);
}

#[test]
fn stale_attempts_go_and_failed_ones_stay() {
    let state = tempfile::tempdir().unwrap();
    assert_eq!(local::clear_stale(state.path()).unwrap(), 0);
    let jobs = local::jobs_dir(state.path());
    std::fs::create_dir_all(jobs.join("3-a1")).unwrap();
    std::fs::create_dir_all(local::failed_dir(state.path()).join("2-a1")).unwrap();
    assert_eq!(local::clear_stale(state.path()).unwrap(), 1);
    assert!(!jobs.join("3-a1").exists());
    assert!(local::failed_dir(state.path()).join("2-a1").exists());
}

#[test]
fn a_worker_that_crashes_while_stopping_is_a_failure_not_an_interruption() {
    let state = tempfile::tempdir().unwrap();
    let exe = script(
        state.path(),
        "trap 'kill -9 $$' TERM\nwhile :; do sleep 0.05; done",
    );
    let end = run_then_stop(&exe, state.path(), Duration::from_secs(30));
    assert!(
        matches!(&end.outcome, Outcome::Failed { reason, .. } if reason.contains("signal 9")),
        "{:?}",
        end.outcome
    );
}

#[test]
fn a_worker_that_cannot_set_up_makes_the_job_unrunnable() {
    let state = tempfile::tempdir().unwrap();
    let exe = script(state.path(), "echo 'error: the corpus moved' >&2\nexit 4");
    let end = run(&exe, state.path(), &AtomicBool::new(false), Duration::ZERO);
    assert!(
        matches!(&end.outcome, Outcome::Unrunnable { reason } if reason.contains("the corpus moved")),
        "{:?}",
        end.outcome
    );
}

#[test]
fn failed_attempts_kept_are_bounded() {
    let state = tempfile::tempdir().unwrap();
    let failed = local::failed_dir(state.path());
    for i in 0..local::FAILED_KEPT + 5 {
        std::fs::create_dir_all(failed.join(format!("{i}-a1"))).unwrap();
    }
    local::clear_stale(state.path()).unwrap();
    assert_eq!(
        std::fs::read_dir(&failed).unwrap().count(),
        local::FAILED_KEPT
    );
}
