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
        scale: None,
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
    // A script just written can be "busy" (ETXTBSY, os error 26) for a
    // moment: another test's thread that forked while its file was open
    // for writing holds the descriptor until that child execs. Try again.
    for _ in 0..20 {
        let end = local::run(exe, state, &spec(state), stop, grace, &|_| {}, &|_| {});
        if !format!("{:?}", end.outcome).contains("os error 26") {
            return end;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
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
    assert_eq!(local::clear_stale(state.path(), &[]).unwrap(), 0);
    let jobs = local::jobs_dir(state.path());
    std::fs::create_dir_all(jobs.join("3-a1")).unwrap();
    std::fs::create_dir_all(local::failed_dir(state.path()).join("2-a1")).unwrap();
    assert_eq!(local::clear_stale(state.path(), &[]).unwrap(), 1);
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
    local::clear_stale(state.path(), &[]).unwrap();
    assert_eq!(
        std::fs::read_dir(&failed).unwrap().count(),
        local::FAILED_KEPT
    );
}

mod slurm {
    use super::super::slurm::*;
    use super::*;

    #[test]
    fn squeue_lines_are_read_and_unreadable_ones_skipped() {
        let out = "12|mad-ab-j1-a1|RUNNING|None\n\
                   13|mad-ab-j2-a1|PENDING|Resources\n\
                   14_[1-3]|array|PENDING|Priority\n\
                   15|name|with|bars|CANCELLED by 0|None\n\
                   \n\
                   16|mad-ab-j3-a2|CANCELLED by 0|None\n";
        let q = parse_squeue(out);
        let ids: Vec<u64> = q.iter().map(|q| q.id).collect();
        assert_eq!(ids, [12, 13, 15, 16]);
        assert_eq!(q[0].state, SlurmState::Running);
        assert_eq!(q[1].state, SlurmState::Pending);
        assert_eq!(q[1].reason, "Resources");
        assert_eq!(q[2].name, "name|with|bars");
        assert_eq!(q[2].state, SlurmState::Cancelled);
        assert_eq!(q[3].state, SlurmState::Cancelled);
        assert!(q[0].state.active() && q[1].state.active() && !q[3].state.active());
    }

    #[test]
    fn slurm_states_are_named_as_slurm_names_them() {
        for (name, state) in [
            ("PENDING", SlurmState::Pending),
            ("CONFIGURING", SlurmState::Running),
            ("COMPLETING", SlurmState::Running),
            ("SUSPENDED", SlurmState::Running),
            ("COMPLETED", SlurmState::Completed),
            ("FAILED", SlurmState::Failed),
            ("TIMEOUT", SlurmState::Timeout),
            ("DEADLINE", SlurmState::Timeout),
            ("CANCELLED by 1000", SlurmState::Cancelled),
            ("PREEMPTED", SlurmState::Preempted),
            ("OUT_OF_MEMORY", SlurmState::OutOfMemory),
            ("NODE_FAIL", SlurmState::NodeFail),
            ("BOOT_FAIL", SlurmState::NodeFail),
            ("REVOKED", SlurmState::Other("REVOKED".into())),
        ] {
            assert_eq!(SlurmState::parse(name), state, "{name}");
        }
    }

    #[test]
    fn sbatch_and_scontrol_output_are_read() {
        assert_eq!(parse_sbatch("42\n"), Some(42));
        assert_eq!(parse_sbatch("42;cluster\n"), Some(42));
        assert_eq!(
            parse_sbatch("sbatch: warning: something\n43\n"),
            Some(43),
            "the id is the last line"
        );
        assert_eq!(parse_sbatch("Submitted batch job 7"), None);
        assert_eq!(parse_sbatch(""), None);
        let e = parse_scontrol(
            "JobId=4 JobName=t4 UserId=root(0) JobState=FAILED Reason=NonZeroExitCode \
             Dependency=(null) Requeue=0 Restarts=0 BatchFlag=1 ExitCode=4:0 RunTime=00:00:00",
        )
        .unwrap();
        assert_eq!(e.state, SlurmState::Failed);
        assert_eq!((e.code, e.signal), (Some(4), None));
        assert_eq!(e.reason, "NonZeroExitCode");
        let e = parse_scontrol("JobId=2 JobState=CANCELLED Reason=None ExitCode=0:15").unwrap();
        assert_eq!((e.code, e.signal), (Some(0), Some(15)));
        assert!(parse_scontrol("slurm_load_jobs error: Invalid job id specified").is_none());
    }

    fn queued(state: SlurmState) -> Queued {
        Queued {
            id: 9,
            name: "mad-ab-j7-a2".into(),
            state,
            reason: "None".into(),
        }
    }

    fn ended(state: SlurmState, code: i32, signal: Option<i32>) -> Ended {
        Ended {
            state,
            code: Some(code),
            signal,
            reason: "NonZeroExitCode".into(),
        }
    }

    fn result(outcome: Outcome) -> JobResult {
        JobResult {
            format: FORMAT,
            job: 7,
            attempt: 2,
            outcome,
            peak_kib: None,
        }
    }

    #[test]
    fn an_ended_slurm_job_counts_by_its_result_else_by_its_state() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("worker.log"), "line one\nthe last words\n").unwrap();
        let d = dir.path();
        let fin = Outcome::Failed {
            reason: "its genome cannot be built".into(),
            retry: false,
        };
        // A result is the truth.
        let r = result(fin.clone());
        assert_eq!(
            classify(&queued(SlurmState::Completed), None, Some(&r), false, d),
            fin
        );
        // A stop we asked for.
        let r = result(Outcome::Interrupted);
        assert_eq!(
            classify(&queued(SlurmState::Failed), None, Some(&r), true, d),
            Outcome::Interrupted
        );
        assert_eq!(
            classify(&queued(SlurmState::Cancelled), None, None, true, d),
            Outcome::Interrupted
        );
        // A stop nobody here asked for: a scancel costs an attempt, a
        // preemption does not.
        match classify(&queued(SlurmState::Cancelled), None, Some(&r), false, d) {
            Outcome::Failed { reason, retry } => {
                assert!(
                    retry && reason.contains("cancelled (not by mad-search"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            classify(&queued(SlurmState::Preempted), None, Some(&r), false, d),
            Outcome::Interrupted
        );
        assert_eq!(
            classify(&queued(SlurmState::Timeout), None, Some(&r), false, d),
            Outcome::OutOfTime,
            "stopped at the time limit is a lapsed lease"
        );
        // No result.
        assert_eq!(
            classify(&queued(SlurmState::Timeout), None, None, false, d),
            Outcome::OutOfTime
        );
        let e = ended(SlurmState::Failed, 4, None);
        match classify(&queued(SlurmState::Failed), Some(&e), None, false, d) {
            Outcome::Unrunnable { reason } => assert!(reason.contains("the last words")),
            other => panic!("{other:?}"),
        }
        let e = ended(SlurmState::Failed, 0, Some(9));
        match classify(&queued(SlurmState::Failed), Some(&e), None, false, d) {
            Outcome::Failed { reason, retry } => {
                assert!(retry, "{reason}");
                assert!(reason.contains("killed by signal 9"), "{reason}");
                assert!(reason.contains("the last words"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        for (state, says) in [
            (SlurmState::Cancelled, "cancelled (not by mad-search)"),
            (SlurmState::OutOfMemory, "out of memory"),
            (SlurmState::NodeFail, "node failed"),
            (SlurmState::Completed, "without a result"),
        ] {
            match classify(&queued(state.clone()), None, None, false, d) {
                Outcome::Failed { reason, retry } => {
                    assert!(retry && reason.contains(says), "{state:?}: {reason}");
                }
                other => panic!("{state:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_submission_record_belongs_to_its_attempt() {
        let state = tempfile::tempdir().unwrap();
        let job = spec(state.path()).job;
        assert_eq!(recorded(state.path(), &job), None);
        let dir = attempt_dir(state.path(), &job);
        std::fs::create_dir_all(&dir).unwrap();
        let sub = Submission {
            job: job.id,
            attempt: job.attempt,
            name: "mad-ab-j7-a2".into(),
            id: Some(12),
            submitted: 1.0,
            exe: None,
            stop_requested: false,
        };
        std::fs::write(dir.join(SUBMISSION_FILE), serde_json::to_vec(&sub).unwrap()).unwrap();
        assert_eq!(recorded(state.path(), &job), Some(sub.clone()));
        // The next attempt has a directory of its own.
        let mut next = job.clone();
        next.attempt += 1;
        assert_eq!(recorded(state.path(), &next), None);
        // A record of another job in this directory is not this one's.
        let other = Submission { job: 8, ..sub };
        std::fs::write(
            dir.join(SUBMISSION_FILE),
            serde_json::to_vec(&other).unwrap(),
        )
        .unwrap();
        assert_eq!(recorded(state.path(), &job), None);
        // Nor is a torn one.
        std::fs::write(dir.join(SUBMISSION_FILE), b"{\"job\": 7, \"att").unwrap();
        assert_eq!(recorded(state.path(), &job), None);
        // Stale attempts go, the re-attached one stays.
        let stale = local::jobs_dir(state.path()).join("3-a1");
        std::fs::create_dir_all(&stale).unwrap();
        assert_eq!(
            local::clear_stale(state.path(), std::slice::from_ref(&dir)).unwrap(),
            1
        );
        assert!(dir.exists() && !stale.exists());
    }

    #[test]
    fn jobs_run_a_copy_of_the_binary_and_names_are_unique_to_the_search() {
        let state = tempfile::tempdir().unwrap();
        let exe = state.path().join("exe");
        let mk = |bytes: &[u8]| {
            std::fs::write(&exe, bytes).unwrap();
            Slurm::new(
                state.path(),
                "search",
                &exe,
                SlurmOptions::default(),
                90.0,
                Some(2),
            )
            .unwrap()
        };
        let a = mk(b"binary one");
        let b = mk(b"binary one");
        assert_eq!(
            a.name(7, 2),
            b.name(7, 2),
            "the same search, the same names"
        );
        assert!(a.name(7, 2).starts_with(&a.prefix()));
        assert_ne!(a.name(7, 2), a.name(7, 3));
        assert_ne!(a.name(7, 2), a.name(17, 2));
        let bin = state.path().join("bin");
        let copies = || {
            let mut v: Vec<Vec<u8>> = std::fs::read_dir(&bin)
                .unwrap()
                .map(|e| std::fs::read(e.unwrap().path()).unwrap())
                .collect();
            v.sort();
            v
        };
        assert_eq!(copies(), [b"binary one".to_vec()]);
        for (i, bytes) in [&b"two"[..], b"three", b"four"].into_iter().enumerate() {
            // Distinct modification times order the copies.
            std::thread::sleep(Duration::from_millis(20 * (i as u64 + 1)));
            mk(bytes);
        }
        assert_eq!(
            copies(),
            [b"four".to_vec(), b"three".to_vec(), b"two".to_vec()],
            "the newest three are kept"
        );
        let c = Slurm::new(
            state.path(),
            "another",
            &exe,
            SlurmOptions::default(),
            90.0,
            None,
        )
        .unwrap();
        assert_ne!(
            a.prefix(),
            c.prefix(),
            "another search (even in the same directory), other names"
        );
        // A copy an attempt still names is kept beyond the newest three.
        let old = std::fs::read_dir(&bin)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| std::fs::read(p).unwrap() == b"two")
            .unwrap();
        let attempt = local::jobs_dir(state.path()).join("1-a1");
        std::fs::create_dir_all(&attempt).unwrap();
        let sub = Submission {
            job: 1,
            attempt: 1,
            name: "n".into(),
            id: Some(1),
            submitted: 0.0,
            exe: Some(old.clone()),
            stop_requested: false,
        };
        std::fs::write(
            attempt.join(SUBMISSION_FILE),
            serde_json::to_vec(&sub).unwrap(),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        mk(b"five");
        assert!(old.exists(), "a copy a job may run is kept");
        assert_eq!(copies().len(), 4);
    }

    #[test]
    fn extra_sbatch_arguments_may_not_take_over_what_the_executor_sets() {
        for ok in [
            "--qos=short",
            "--mem=32G",
            "--constraint=a100",
            "-q",
            "--exclusive",
        ] {
            assert_eq!(check_extra_arg(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("--job-name=x", "--job-name"),
            ("-Jx", "--job-name"),
            ("--time=10", "--job-timeout sets it"),
            ("-t", "--job-timeout"),
            ("--wait", "--wait"),
            ("-W", "--wait"),
            ("--test-only", "--test-only"),
            ("--array=1-4", "--array"),
            ("--output=/tmp/x", "--output"),
            ("--partition=gpu", "--slurm-partition"),
            ("-pgpu", "--slurm-partition"),
            ("--cpus-per-task=8", "--threads"),
            ("--clusters=b", "--clusters"),
            ("--qos short", "one word"),
            ("short", "one word"),
            ("", "one word"),
        ] {
            let e = check_extra_arg(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn pending_reasons_that_never_clear_are_named() {
        assert!(
            hopeless("PartitionTimeLimit")
                .unwrap()
                .contains("--job-timeout")
        );
        assert!(hopeless("InvalidAccount").is_some());
        for fine in ["Resources", "Priority", "None", "ReqNodeNotAvail", ""] {
            assert_eq!(hopeless(fine), None, "{fine}");
        }
    }
}
