//! The daemon through the real binary, under faults: failing and
//! diverging jobs, a scheduler error, bad and refused state dirs, a
//! stranger's pid, a reader left open.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use mad_search::store::JobState;

#[test]
fn failing_jobs_are_recorded_and_the_daemon_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("search");
    let out = bin()
        .args([
            "start",
            "--state",
            s(&state),
            "--space",
            SPACE,
            "--preset",
            "tiny",
            "--workers",
            "1",
            "--threads",
            "1",
            "--budget",
            "screen=3",
            "--seed-arch",
            "mh-hyena swiglu",
        ])
        .env("MAD_SEARCH_TEST_PANIC_LAYERS", "mh-hyena swiglu")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until("the search to finish", 120, || down(&state));
    let v = status_json(&state);
    assert_eq!(v["jobs"]["screen"]["failed"], 1, "{v}");
    assert_eq!(v["jobs"]["screen"]["done"], 2, "{v}");
    let out = run(&["show", "--state", s(&state), &failed_id(&state)]);
    let shown = text(&out.stdout);
    assert!(
        shown.contains("failed: panicked") && shown.contains("3 failures"),
        "{shown}"
    );

    // Divergence: the loss becomes NaN; recorded at once, without retries.
    let nan = dir.path().join("nan");
    let out = bin()
        .args([
            "start",
            "--state",
            s(&nan),
            "--space",
            SPACE,
            "--preset",
            "tiny",
            "--workers",
            "1",
            "--threads",
            "1",
            "--budget",
            "screen=2",
            "--seed-arch",
            "mh-attention mlp",
            "--foreground",
        ])
        .env("MAD_SEARCH_TEST_NAN_LAYERS", "mh-attention mlp")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v = status_json(&nan);
    assert_eq!(v["jobs"]["screen"]["failed"], 1, "{v}");
    assert_eq!(v["jobs"]["screen"]["done"], 1, "{v}");
    let out = run(&["show", "--state", s(&nan), &failed_id(&nan)]);
    let shown = text(&out.stdout);
    assert!(
        shown.contains("diverged (NaN or infinite loss)") && shown.contains("(1 failures)"),
        "{shown}"
    );
}

#[test]
fn a_scheduler_error_drains_flushes_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("search");
    // Two workers: the second job is in flight when the first one's end
    // makes the scheduler fail (as a database error would).
    let out = bin()
        .args([
            "start",
            "--state",
            s(&state),
            "--space",
            SPACE,
            "--preset",
            "tiny",
            "--workers",
            "2",
            "--threads",
            "1",
            "--budget",
            "screen=6",
            "--foreground",
        ])
        .env("MAD_SEARCH_TEST_SCHEDULER_ERROR_AFTER", "1")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "exit 0 after a scheduler error: {err}"
    );
    assert!(
        err.contains("the scheduler failed") && err.contains("stopped on the error"),
        "{err}"
    );
    assert!(!state.join("daemon.sock").exists(), "the socket was left");
    assert!(!state.join("daemon.pid").exists(), "the pid file was left");
    let store = open(&state);
    let jobs = store.jobs().unwrap();
    assert!(
        jobs.iter()
            .all(|j| !matches!(j.state, JobState::Leased { .. })),
        "a lease was left: {jobs:?}"
    );
    assert!(
        jobs.iter()
            .any(|j| matches!(j.state, JobState::Done { .. })),
        "the settled job's end was lost: {jobs:?}"
    );
    drop(store);
    // The search resumes and finishes.
    let out = run(&["start", "--state", s(&state), "--foreground"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(status_json(&state)["jobs"]["screen"]["done"], 6);
}

#[test]
fn bad_state_dirs_get_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let out = run(&["status", "--state", s(&missing)]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no search in")
            && text(&out.stderr).contains("mad-search start")
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = run(&["status", "--state", s(&empty)]);
    assert!(
        text(&out.stderr).contains("no database"),
        "{}",
        text(&out.stderr)
    );
    // Corrupt: garbage where the database should be.
    let corrupt = dir.path().join("corrupt");
    std::fs::create_dir_all(corrupt.join("db")).unwrap();
    std::fs::write(corrupt.join("db/conf"), "garbage").unwrap();
    std::fs::write(corrupt.join("db/db"), vec![0xAB; 4096]).unwrap();
    let out = run(&["status", "--state", s(&corrupt)]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(s(&corrupt)) && (err.contains("damaged") || err.contains("database")),
        "{err}"
    );
    // Newer schema.
    let newer = dir.path().join("newer");
    create_idle(&newer);
    {
        let db = sled::open(newer.join("db")).unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert("schema", &7u32.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let out = run(&["status", "--state", s(&newer)]);
    let err = text(&out.stderr);
    assert!(
        err.contains("schema 7") && err.contains("newer mad-search"),
        "{err}"
    );
    // A resumed search refuses conflicting settings.
    let out = run(&["start", "--state", s(&newer), "--preset", "cpu"]);
    assert!(!out.status.success());
    // Unknown ids in show.
    let out = run(&["show", "zzzz", "--state", s(&newer)]);
    assert!(!out.status.success());
}

#[test]
fn a_refused_start_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // A new search with a seed architecture its space does not admit
    // (eight layers; the default space allows four): no search is left.
    let fresh = dir.path().join("fresh");
    let eight = ["attention"; 8].join(" ");
    let out = run(&["start", "--state", s(&fresh), "--seed-arch", &eight]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("does not admit") && !err.contains("new search"),
        "{err}"
    );
    assert!(
        !fresh.exists(),
        "a refused start created {}",
        fresh.display()
    );
    // A state dir whose socket path would not fit a socket address.
    let deep = dir.path().join("d".repeat(120));
    let out = run(&["start", "--state", s(&deep)]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("107") && err.contains("shorter --state"),
        "{err}"
    );
    assert!(!deep.exists(), "a refused start created {}", deep.display());
    // A zero count.
    let out = run(&["start", "--state", s(&fresh), "--keep-events", "0"]);
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--keep-events"),
        "{err}"
    );
    assert!(!fresh.exists());
    // An existing search: a refused start keeps its budget.
    let kept = dir.path().join("kept");
    create_idle(&kept);
    let out = run(&[
        "start",
        "--state",
        s(&kept),
        "--budget",
        "screen=9",
        "--seed-arch",
        "/no/such/genome.json",
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("/no/such/genome.json")
            && err.contains("cannot be read")
            && !err.contains("unknown primitive"),
        "{err}"
    );
    let budget = open(&kept).search().unwrap().unwrap().budget;
    assert_eq!(
        budget
            .evaluations
            .get(&mad_search::space::StageName::Screen),
        Some(&0),
        "a refused start changed the budget"
    );
}

#[test]
fn stop_never_signals_a_stranger() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("search");
    create_idle(&state);
    // A daemon killed without cleaning up left its pid file, and another
    // process got that pid.
    let mut stranger = Command::new("sleep").arg("60").spawn().unwrap();
    std::fs::write(state.join("daemon.pid"), format!("{}\n", stranger.id())).unwrap();
    let out = run(&["stop", "--state", s(&state), "--wait", "2"]);
    let err = text(&out.stderr);
    assert!(err.contains("no daemon is running"), "{err}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        stranger.try_wait().unwrap().is_none(),
        "stop signalled a process that is not the daemon"
    );
    // Nor does `start` take it for a running daemon.
    let out = run(&["start", "--state", s(&state), "--foreground"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Pid 0 (kill(0, …) would signal our own process group) is no daemon.
    std::fs::write(state.join("daemon.pid"), "0\n").unwrap();
    let out = run(&["stop", "--state", s(&state), "--wait", "2"]);
    assert!(
        text(&out.stderr).contains("no daemon is running"),
        "{}",
        text(&out.stderr)
    );
    stranger.kill().unwrap();
    stranger.wait().unwrap();
}

#[test]
fn status_watch_with_the_daemon_down_holds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("search");
    create_idle(&state);
    let _ = std::fs::remove_file(state.join("status.snapshot.json"));
    let mut watch = bin()
        .args(["status", "--state", s(&state), "--watch", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its first report read the database (no snapshot was there).
    wait_until("the watch's first report", 30, || {
        state.join("status.snapshot.json").is_file()
    });
    std::thread::sleep(Duration::from_millis(500));
    // Another start (a writer) meanwhile.
    let out = run(&[
        "start",
        "--state",
        s(&state),
        "--budget",
        "screen=0",
        "--foreground",
    ]);
    let still = watch.try_wait().unwrap().is_none();
    watch.kill().unwrap();
    watch.wait().unwrap();
    assert!(still, "the watch ended early");
    assert!(
        out.status.success(),
        "start beside `status --watch`: {}",
        text(&out.stderr)
    );
}

#[test]
fn an_error_before_serving_leaves_no_daemon_behind() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("search");
    create_idle(&state);
    // The socket cannot be bound: a directory with something in it sits
    // where it goes. The daemon has written its pid file by then.
    let blocker = state.join("daemon.sock");
    std::fs::create_dir_all(blocker.join("inside")).unwrap();
    let out = run(&[
        "start",
        "--state",
        s(&state),
        "--budget",
        "screen=2",
        "--foreground",
    ]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("binding the control socket"), "{err}");
    assert!(!state.join("daemon.pid").exists(), "the pid file was left");
    assert!(blocker.join("inside").is_dir(), "what was there is kept");
    // Nothing is leased or lost, and `status` says no daemon runs.
    let v = status_json(&state);
    assert!(v["daemon"].is_null(), "{v}");
    assert_eq!(open(&state).leased().unwrap().len(), 0);
    // Cleared, the search resumes and spends its budget.
    std::fs::remove_dir_all(&blocker).unwrap();
    let out = run(&["start", "--state", s(&state), "--foreground"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(status_json(&state)["jobs"]["screen"]["done"], 2);
    no_double_evaluation(&state);
}
