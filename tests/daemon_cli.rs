//! The daemon through the real binary: start → status → stop → resume,
//! kill -9 at random moments, failing jobs, bad state dirs, determinism.
//! Searches run on `tests/spaces/small.toml` (width 32, one-epoch `tiny`
//! preset: about a second per evaluation).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use mad_search::store::{JobState, Store};

const SPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/spaces/small.toml");

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mad-search"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("the binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn start(state: &Path, extra: &[&str]) -> Output {
    start_with(state, SPACE, extra)
}

fn start_with(state: &Path, space: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "start",
        "--state",
        s(state),
        "--space",
        space,
        "--preset",
        "tiny",
        "--workers",
        "1",
        "--threads",
        "1",
        "--checkpoint-every",
        "1",
    ];
    args.extend_from_slice(extra);
    let out = run(&args);
    assert!(out.status.success(), "start failed: {}", text(&out.stderr));
    out
}

fn status_json(state: &Path) -> serde_json::Value {
    let out = run(&["status", "--state", s(state), "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn done(v: &serde_json::Value) -> u64 {
    v["jobs"]
        .as_object()
        .map_or(0, |m| m.values().map(|c| c["done"].as_u64().unwrap()).sum())
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pid(state: &Path) -> Option<i32> {
    std::fs::read_to_string(state.join("daemon.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn alive(pid: i32) -> bool {
    // A zombie counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
    })
}

fn stop(state: &Path) {
    let out = run(&["stop", "--state", s(state)]);
    assert!(out.status.success(), "stop failed: {}", text(&out.stderr));
}

/// Takes sled's lock on the database (an exclusive `flock` of `db/db`)
/// without opening it, as another process holding it would; released when
/// the file is dropped.
fn hold_lock(state: &Path) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(state.join("db/db"))
        .unwrap();
    // SAFETY: a valid open descriptor.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0, "could not lock the database");
    f
}

/// Opens the database once the last process holding it is gone (a killed
/// daemon's threads release it a moment after its pid turns zombie).
fn open(state: &Path) -> Store {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Store::open(state) {
            Ok(s) => return s,
            Err(mad_search::store::StoreError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// (job → (stage, score bits)) of every finished job, read from the database.
fn finished(state: &Path) -> BTreeMap<u64, (String, u64)> {
    let store = open(state);
    let mut out = BTreeMap::new();
    for j in store.jobs().unwrap() {
        if matches!(j.state, JobState::Done { .. }) {
            // A whole stage: its score; one run of a split stage: its
            // stored result (the stage may still be running).
            let bits = match &j.part {
                None => {
                    let c = store.candidate(j.arch).unwrap().unwrap();
                    let kept = store.stage_result(j.arch, j.stage).unwrap();
                    assert!(kept.is_some(), "job {} lost its result", j.id);
                    c.stages[&j.stage].score.to_bits()
                }
                Some(_) => {
                    let kept = store.result(j.id).unwrap();
                    let text = kept
                        .unwrap_or_else(|| panic!("job {} lost its result", j.id))
                        .to_string();
                    // FNV-1a of the stored result.
                    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
                        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
                    })
                }
            };
            out.insert(j.id, (j.stage.name().to_string(), bits));
        }
    }
    out
}

/// No job trains twice without a reason: read from the event log, every
/// lease (training start) of a job after its first follows a daemon start
/// (the one before was killed or stopped) or that job's requeue (a lapsed
/// lease), and no job is leased again once it finished. (Counting finished
/// jobs would prove nothing: the store makes them unique by construction.)
fn no_double_evaluation(state: &Path) {
    use mad_search::store::EventKind;
    let store = open(state);
    // Oldest first.
    let events = store.events(usize::MAX).unwrap();
    let mut last_lease: BTreeMap<u64, usize> = BTreeMap::new();
    let mut excused: std::collections::BTreeSet<u64> = Default::default();
    let mut finished: std::collections::BTreeSet<u64> = Default::default();
    for (i, e) in events.iter().enumerate() {
        match &e.kind {
            EventKind::DaemonStarted { .. } => {
                // Whatever ran before ran in a daemon that is gone.
                excused.extend(last_lease.keys().copied());
            }
            EventKind::Requeued { job, .. } => {
                excused.insert(*job);
            }
            EventKind::Leased { job, .. } => {
                assert!(
                    !finished.contains(job),
                    "job {job} trained again after it finished (event {i})"
                );
                if let Some(prev) = last_lease.insert(*job, i) {
                    assert!(
                        excused.remove(job),
                        "job {job} trained twice in one daemon's life without a requeue \
                         (leases at events {prev} and {i})"
                    );
                }
            }
            EventKind::Finished { job, .. } | EventKind::RunFinished { job, .. } => {
                finished.insert(*job);
            }
            _ => {}
        }
    }
}

#[test]
fn start_status_stop_resume_export() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("search");
    let out = start(&state, &["--budget", "screen=400"]);
    assert!(
        text(&out.stdout).contains("daemon started"),
        "{}",
        text(&out.stdout)
    );
    // Private: the state dir 0700, the socket 0600.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700, "state dir mode");
    assert_eq!(mode(&state.join("daemon.sock")), 0o600, "socket mode");
    // Second start refused, naming the pid.
    let again = run(&["start", "--state", s(&state)]);
    assert!(!again.status.success());
    let p = pid(&state).unwrap();
    assert!(
        text(&again.stderr).contains("already running")
            && text(&again.stderr).contains(&p.to_string()),
        "{}",
        text(&again.stderr)
    );
    wait_until("three finished evaluations", 120, || {
        done(&status_json(&state)) >= 3
    });
    let v = status_json(&state);
    assert_eq!(v["schema"], "mad-search.status/2");
    assert_eq!(v["daemon"]["pid"].as_i64().unwrap(), i64::from(p));
    assert!(!v["leaderboard"].as_array().unwrap().is_empty());
    let human = text(&run(&["status", "--state", s(&state)]).stdout);
    assert!(
        human.contains("daemon: up") && human.contains("leaderboard"),
        "{human}"
    );
    // A huge `--top` is clamped (it once overflowed an allocation and
    // killed the control thread), and the socket serves on.
    let huge = run(&[
        "status",
        "--state",
        s(&state),
        "--json",
        "--top",
        "18446744073709551615",
    ]);
    assert!(huge.status.success(), "{}", text(&huge.stderr));
    let huge: serde_json::Value = serde_json::from_slice(&huge.stdout).unwrap();
    assert_eq!(huge["daemon"]["pid"].as_i64().unwrap(), i64::from(p));
    assert_eq!(
        status_json(&state)["daemon"]["pid"].as_i64().unwrap(),
        i64::from(p)
    );
    stop(&state);
    assert!(!alive(p), "daemon still alive after stop");
    assert!(!state.join("daemon.sock").exists() && !state.join("daemon.pid").exists());
    // The daemon left its report: `status` answers from it without the
    // database (held here by a reader), and it is what the database says.
    let snap = state.join("status.snapshot.json");
    assert!(snap.is_file(), "no status snapshot after a clean stop");
    let held = hold_lock(&state);
    let cached = status_json(&state);
    drop(held);
    std::fs::remove_file(&snap).unwrap();
    assert_eq!(
        cached,
        status_json(&state),
        "snapshot differs from the database"
    );
    assert!(snap.is_file(), "status did not leave a snapshot");
    let held = hold_lock(&state);
    assert_eq!(
        cached,
        status_json(&state),
        "status's own snapshot is not used"
    );
    drop(held);
    let before = finished(&state);
    assert!(before.len() >= 3);
    let v = status_json(&state);
    assert!(v["daemon"].is_null());
    assert_eq!(
        v["jobs"]["screen"]["running"], 0,
        "a job stayed leased: {v}"
    );
    // Stop with no daemon says so.
    let out = run(&["stop", "--state", s(&state)]);
    assert!(!out.status.success() && text(&out.stderr).contains("no daemon is running"));
    // Resume: finished work kept, never re-run; the search continues.
    start(&state, &[]);
    assert!(
        !snap.exists(),
        "a running daemon's database has no snapshot"
    );
    let n = before.len() as u64;
    wait_until("more evaluations after resuming", 120, || {
        done(&status_json(&state)) >= n + 2
    });
    stop(&state);
    let after = finished(&state);
    for (job, r) in &before {
        assert_eq!(
            after.get(job),
            Some(r),
            "finished job {job} changed or vanished"
        );
    }
    no_double_evaluation(&state);
    // Show and export, with the daemon down.
    let id = status_json(&state)["leaderboard"][0]["arch"]
        .as_str()
        .unwrap()
        .to_string();
    let out = run(&["show", &id[..8], "--state", s(&state)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&id) && text(&out.stdout).contains("screen: score"));
    let ex = dir.path().join("ex");
    for format in ["json", "toml", "layers", "card"] {
        let out = run(&[
            "export",
            "--state",
            s(&state),
            "--top",
            "2",
            "--format",
            format,
            "--out",
            s(&ex),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout).lines().count(), 2);
    }
    let json = std::fs::read_dir(&ex)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".json"))
        .unwrap();
    // An exported genome is loadable by `start --seed-arch` (and `eval --arch`).
    let seeded = dir.path().join("seeded");
    let out = start(&seeded, &["--budget", "screen=1", "--seed-arch", s(&json)]);
    assert!(
        text(&out.stderr).contains("queued"),
        "{}",
        text(&out.stderr)
    );
    wait_until("the seeded search to finish", 60, || {
        pid(&seeded).is_none_or(|p| !alive(p))
    });
    let store = open(&seeded);
    let first = store.candidates().unwrap()[0].id.to_string();
    let file = json.file_name().unwrap().to_string_lossy().into_owned();
    // Files are named `NN-<first 12 hex digits of the id>.json`.
    assert!(first.starts_with(&file[3..15]), "{first} vs {file}");
}

#[test]
fn kill_dash_nine_loses_no_finished_work() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("search");
    let mut seen: BTreeMap<u64, (String, u64)> = BTreeMap::new();
    let mut lcg: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..20 {
        start(&state, &["--budget", "screen=1000"]);
        let p = pid(&state).unwrap();
        lcg = lcg.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let ms = 100 + (lcg >> 33) % 1400;
        std::thread::sleep(Duration::from_millis(ms));
        // SAFETY: the daemon's pid, read from its pid file.
        unsafe {
            libc::kill(p, libc::SIGKILL);
        }
        wait_until("the killed daemon to go", 20, || !alive(p));
        assert!(
            !state.join("status.snapshot.json").exists(),
            "round {round}: a killed daemon left a snapshot"
        );
        let now = finished(&state);
        for (job, r) in &seen {
            assert_eq!(
                now.get(job),
                Some(r),
                "round {round}: finished job {job} lost or changed"
            );
        }
        let store = open(&state);
        let leased = store.leased().unwrap();
        assert!(
            leased.len() <= 1,
            "round {round}: {} leases with one worker",
            leased.len()
        );
        drop(store);
        no_double_evaluation(&state);
        seen = now;
    }
    assert!(
        seen.len() >= 5,
        "only {} evaluations in 20 rounds",
        seen.len()
    );
    // After a clean restart and stop, nothing stays leased.
    start(&state, &[]);
    wait_until("one more evaluation", 60, || {
        finished_live(&state) > seen.len()
    });
    stop(&state);
    let store = open(&state);
    assert!(store.leased().unwrap().is_empty());
    let events = store.events(100_000).unwrap();
    assert!(
        events.iter().any(|e| serde_json::to_string(e)
            .unwrap()
            .contains("its daemon died")),
        "no orphaned lease was ever recovered"
    );
}

fn finished_live(state: &Path) -> usize {
    done(&status_json(state)) as usize
}

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
    wait_until("the search to finish", 120, || {
        pid(&state).is_none_or(|p| !alive(p))
    });
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

fn failed_id(state: &Path) -> String {
    let store = open(state);
    store
        .candidates()
        .unwrap()
        .into_iter()
        .find(|c| !c.failed.is_empty())
        .expect("a failed candidate")
        .id
        .to_string()
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
    let out = run(&[
        "start",
        "--state",
        s(&newer),
        "--space",
        SPACE,
        "--preset",
        "tiny",
        "--budget",
        "screen=0",
        "--foreground",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
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
    // An existing search: a refused start keeps its budget.
    let kept = dir.path().join("kept");
    let out = run(&[
        "start",
        "--state",
        s(&kept),
        "--space",
        SPACE,
        "--preset",
        "tiny",
        "--budget",
        "screen=0",
        "--foreground",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
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
    let out = run(&[
        "start",
        "--state",
        s(&state),
        "--space",
        SPACE,
        "--preset",
        "tiny",
        "--budget",
        "screen=0",
        "--foreground",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
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
    let create = || {
        run(&[
            "start",
            "--state",
            s(&state),
            "--space",
            SPACE,
            "--preset",
            "tiny",
            "--budget",
            "screen=0",
            "--foreground",
        ])
    };
    let out = create();
    assert!(out.status.success(), "{}", text(&out.stderr));
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
    let out = create();
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
fn one_worker_and_one_seed_give_the_same_search() {
    let dir = tempfile::tempdir().unwrap();
    let ids = |name: &str| -> Vec<String> {
        let state = dir.path().join(name);
        let out = run(&[
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
            "--seed",
            "7",
            "--budget",
            "screen=8,mad=2",
            "--foreground",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let store = open(&state);
        store
            .candidates()
            .unwrap()
            .iter()
            .map(|c| {
                format!(
                    "{} {:?} {:?}",
                    c.id,
                    c.operator,
                    c.stages.keys().collect::<Vec<_>>()
                )
            })
            .collect()
    };
    let a = ids("a");
    assert_eq!(a.len(), 8);
    assert_eq!(a, ids("b"));
}

/// The finished `scale` results in the database: (arch, the runs' validation
/// losses as bits).
fn scale_results(state: &Path) -> Vec<(String, Vec<u64>)> {
    let store = open(state);
    let mut out = Vec::new();
    for c in store.candidates().unwrap() {
        if let Some(summary) = c.stages.get(&mad_search::space::StageName::Scale) {
            let full = store
                .stage_result(c.id, mad_search::space::StageName::Scale)
                .unwrap()
                .unwrap();
            assert_eq!(summary.job, *c.jobs.last().unwrap(), "the last run ends it");
            let losses = full["runs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["result"]["valid_loss"].as_f64().unwrap().to_bits())
                .collect();
            out.push((c.id.to_string(), losses));
        }
    }
    out
}

#[test]
fn the_scale_stage_runs_in_the_daemon_and_resumes_after_kill_dash_nine() {
    let dir = tempfile::tempdir().unwrap();
    // Scaling runs long enough to be caught in the middle.
    let space_text = std::fs::read_to_string(SPACE)
        .unwrap()
        .replace("budgets = [1e9, 2e9, 4e9]", "budgets = [2e9, 4e9, 8e9]");
    assert!(space_text.contains("8e9"));
    let space = dir.path().join("space.toml");
    std::fs::write(&space, space_text).unwrap();
    let budget = ["--budget", "screen=4,mad=2,scale=1", "--seed", "7"];
    // Uninterrupted, for reference.
    let calm = dir.path().join("calm");
    start_with(&calm, s(&space), &budget);
    wait_until("the uninterrupted search to finish", 240, || {
        pid(&calm).is_none_or(|p| !alive(p))
    });
    let want = scale_results(&calm);
    assert_eq!(want.len(), 1, "one candidate promoted to scale");
    assert_eq!(want[0].1.len(), 9, "three budgets × three sizes");
    // The same search, killed while a scaling run has a checkpoint and
    // another has finished (each run is a job of its own).
    let state = dir.path().join("killed");
    start_with(&state, s(&space), &budget);
    let p = pid(&state).unwrap();
    let runs = state.join("runs");
    let checkpoints = || -> Vec<String> {
        std::fs::read_dir(&runs)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with("-scale"))
            .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".ckpt"))
            .collect()
    };
    let log_text = || std::fs::read_to_string(state.join("daemon.log")).unwrap_or_default();
    wait_until(
        "a scaling run with a checkpoint after a finished one",
        240,
        || log_text().contains("scale run C") && !checkpoints().is_empty(),
    );
    // SAFETY: the daemon's pid, read from its pid file.
    unsafe {
        libc::kill(p, libc::SIGKILL);
    }
    wait_until("the killed daemon to go", 20, || !alive(p));
    assert!(!checkpoints().is_empty());
    let scale_jobs = |state: &Path| -> Vec<mad_search::store::Job> {
        open(state)
            .jobs()
            .unwrap()
            .into_iter()
            .filter(|j| j.stage == mad_search::space::StageName::Scale)
            .collect()
    };
    let at_kill = scale_jobs(&state);
    assert_eq!(at_kill.len(), 9, "one job per scaling run: {at_kill:?}");
    let done_at_kill: Vec<u64> = at_kill
        .iter()
        .filter(|j| matches!(j.state, JobState::Done { .. }))
        .map(|j| j.id)
        .collect();
    assert!(!done_at_kill.is_empty());
    let results_at_kill = finished(&state);
    start_with(&state, s(&space), &[]);
    wait_until("the resumed search to finish", 240, || {
        pid(&state).is_none_or(|p| !alive(p))
    });
    // Runs finished before the kill were not trained again: same stored
    // results, one lease each; the interrupted one resumed from its
    // checkpoint.
    let after = finished(&state);
    for (job, r) in &results_at_kill {
        assert_eq!(after.get(job), Some(r), "job {job} changed");
    }
    let log = std::fs::read_to_string(state.join("daemon.log")).unwrap();
    for j in &done_at_kill {
        let leases = log.matches(&format!("job {j} (attempt")).count();
        assert_eq!(leases, 1, "job {j} leased {leases} times:\n{log}");
    }
    assert!(log.contains("resumed from its checkpoint at step"), "{log}");
    assert!(
        scale_jobs(&state)
            .iter()
            .all(|j| matches!(j.state, JobState::Done { .. }))
    );
    // Same fit inputs as the uninterrupted search, bit for bit.
    assert_eq!(scale_results(&state), want);
    assert!(log.contains("scale predicted loss"), "{log}");
    // Status ranks the scaled candidate first, by its predicted loss, and
    // reports the stage correlations; the card exports with its plot.
    let v = status_json(&state);
    let top = &v["leaderboard"][0];
    assert_eq!(top["stage"], "scale", "{v}");
    assert!(top["predicted_loss"].as_f64().unwrap() > 0.0);
    let corr = v["correlations"].as_array().unwrap();
    assert!(
        corr.iter()
            .any(|c| c["from"] == "mad" && c["to"] == "scale" && c["candidates"] == 1),
        "{v}"
    );
    // Below five candidates: the count only, no ρ or τ.
    assert!(
        corr.iter().all(|c| c["candidates"].as_u64().unwrap() >= 5
            || (c["rho"].is_null() && c["tau"].is_null() && c["tau_interval"].is_null())),
        "{v}"
    );
    let out_dir = dir.path().join("cards");
    let out = run(&[
        "export",
        "--state",
        s(&state),
        "--top",
        "1",
        "--format",
        "card",
        "--out",
        s(&out_dir),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed = text(&out.stdout);
    let svg = listed
        .lines()
        .find(|l| l.ends_with(".scaling.svg"))
        .expect("a plot");
    let svg_text = std::fs::read_to_string(svg).unwrap();
    assert!(svg_text.starts_with("<svg") && svg_text.contains("circle"));
    let card = listed.lines().find(|l| l.ends_with(".md")).unwrap();
    let card_text = std::fs::read_to_string(card).unwrap();
    assert!(
        card_text.contains("Scaling runs and fit") && card_text.contains(".scaling.svg"),
        "{card_text}"
    );
}
