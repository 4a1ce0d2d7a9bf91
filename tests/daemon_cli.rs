//! The daemon through the real binary: start → status → stop → resume →
//! export, kill -9 at random moments, determinism, the scale stage.
//! Faults are in `daemon_faults.rs`, the long kill -9 soak in `soak.rs`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use mad_search::store::JobState;

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
    assert_eq!(v["schema"], "mad-search.status/3");
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
    // tiny scores by the protocol's macro accuracy, and says so.
    assert!(
        text(&out.stdout).contains("; by macro accuracy)"),
        "{}",
        text(&out.stdout)
    );
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
    wait_until("the seeded search to finish", 60, || down(&seeded));
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
        no_orphan_workers(&state);
        no_orphan_workers(&state);
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
    wait_until("the uninterrupted search to finish", 300, || down(&calm));
    let want = scale_results(&calm);
    assert_eq!(want.len(), 1, "one candidate promoted to scale");
    assert_eq!(want[0].1.len(), 9, "three budgets × three sizes");
    // The scale board's best (overtrain_top = 1) went on to the overtrained
    // runs: 1×, 2× and 3× the tokens of 4e9's compute-optimal size.
    let want_over = overtrain_results(&calm);
    assert_eq!(want_over.len(), 1, "{want_over:?}");
    assert_eq!(want_over[0].0, want[0].0);
    let multiples: Vec<f64> = want_over[0].1.iter().map(|p| p.0).collect();
    assert_eq!(multiples, vec![1.0, 2.0, 3.0]);
    // The same search, killed while a scaling run has a checkpoint and
    // another has finished (each run is a job of its own).
    let state = dir.path().join("killed");
    start_with(&state, s(&space), &budget);
    let p = pid(&state).unwrap();
    let runs = state.join("runs");
    // The checkpoints in the runs directories of one stage.
    let checkpoints_of = |stage: &str| -> Vec<String> {
        std::fs::read_dir(&runs)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(stage))
            .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".ckpt"))
            .collect()
    };
    let checkpoints = || checkpoints_of("-scale");
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
    no_orphan_workers(&state);
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
    // Killed again among the overtrained runs: one finished, another with
    // a checkpoint.
    let p = pid(&state).unwrap();
    let over_checkpoints = || checkpoints_of("-overtrain");
    wait_until(
        "an overtrained run with a checkpoint after a finished one",
        300,
        || log_text().contains("overtrain run x") && !over_checkpoints().is_empty(),
    );
    // SAFETY: the daemon's pid, read from its pid file.
    unsafe {
        libc::kill(p, libc::SIGKILL);
    }
    wait_until("the killed daemon to go", 20, || !alive(p));
    no_orphan_workers(&state);
    let over_at_kill = finished(&state);
    start_with(&state, s(&space), &[]);
    wait_until("the resumed search to finish", 300, || down(&state));
    for (job, r) in &over_at_kill {
        assert_eq!(finished(&state).get(job), Some(r), "job {job} changed");
    }
    assert_eq!(
        overtrain_results(&state),
        want_over,
        "the same overtrained losses, bit for bit"
    );
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
    assert_eq!(v["schema"], "mad-search.status/3");
    let top = &v["leaderboard"][0];
    assert_eq!(top["stage"], "overtrain", "{v}");
    assert!(top["predicted_loss"].as_f64().unwrap() > 0.0);
    // The three regimes of the scaled candidate.
    let reg = &v["regimes"][0];
    assert_eq!(reg["arch"].as_str(), Some(want[0].0.as_str()), "{v}");
    assert!(reg["predicted_loss"].as_f64().unwrap() > 0.0, "{v}");
    assert!(reg["state_opt"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(reg["state_front"], true, "{v}");
    assert_eq!(reg["overtrain_multiple"].as_f64(), Some(3.0), "{v}");
    assert!(reg["overtrained_loss"].as_f64().unwrap() > 0.0, "{v}");
    let out = run(&["status", "--state", s(&state)]);
    let shown = text(&out.stdout);
    assert!(
        shown.contains("scaling regimes") && shown.contains("at 3×"),
        "{shown}"
    );
    // export --pareto --view: each regime's front holds the one candidate.
    for view in ["compute", "overtrained", "state"] {
        let out = run(&[
            "export",
            "--state",
            s(&state),
            "--pareto",
            "--view",
            view,
            "--format",
            "layers",
            "--out",
            s(&dir.path().join(view)),
        ]);
        assert!(out.status.success(), "{view}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).lines().count(), 1, "{view}");
    }
    let out = run(&["export", "--state", s(&state), "--view", "state"]);
    assert!(!out.status.success(), "--view without --pareto");
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
    for kind in [".state.svg", ".overtrain.svg"] {
        let svg = listed.lines().find(|l| l.ends_with(kind)).expect(kind);
        let svg_text = std::fs::read_to_string(svg).unwrap();
        assert!(
            svg_text.starts_with("<svg") && svg_text.contains("circle"),
            "{kind}"
        );
    }
    let card = listed.lines().find(|l| l.ends_with(".md")).unwrap();
    let card_text = std::fs::read_to_string(card).unwrap();
    assert!(
        card_text.contains("Scaling runs and fit") && card_text.contains(".scaling.svg"),
        "{card_text}"
    );
    assert!(
        card_text.contains("State-optimal view")
            && card_text.contains("Overtrained runs and fit")
            && card_text.contains(".overtrain.svg"),
        "{card_text}"
    );
    assert!(card_text.contains("; by macro accuracy)"), "{card_text}");
}

#[test]
fn a_diverging_scaling_run_is_recorded_and_the_fit_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let space_text = std::fs::read_to_string(SPACE)
        .unwrap()
        .replace("budgets = [1e9, 2e9, 4e9]", "budgets = [2e9, 4e9, 8e9]");
    let space = dir.path().join("space.toml");
    std::fs::write(&space, space_text).unwrap();
    let state = dir.path().join("search");
    // The first run of the plan (the smallest model at 2e9 FLOPs) diverges.
    let args = [
        "start",
        "--state",
        s(&state),
        "--space",
        s(&space),
        "--preset",
        "tiny",
        "--workers",
        "1",
        "--threads",
        "1",
        "--seed",
        "7",
        "--budget",
        "screen=4,mad=2,scale=1,overtrain=0",
        "--foreground",
    ];
    let out = bin()
        .args(args)
        .env("MAD_SEARCH_TEST_NAN_SCALE_RUN", "0")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let store = open(&state);
    let scaled: Vec<_> = store
        .candidates()
        .unwrap()
        .into_iter()
        .filter(|c| c.queued.contains(&mad_search::space::StageName::Scale))
        .collect();
    assert_eq!(scaled.len(), 1);
    let c = &scaled[0];
    assert!(c.failed.is_empty(), "the stage failed: {:?}", c.failed);
    let summary = &c.stages[&mad_search::space::StageName::Scale];
    assert!(summary.predicted_loss.is_some_and(f64::is_finite));
    // The stored result reads back: the diverged run as a recorded outcome
    // (no loss), the fit from the two budgets left.
    let full = store
        .stage_result(c.id, mad_search::space::StageName::Scale)
        .unwrap()
        .unwrap();
    let runs = full["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 9);
    let diverged: Vec<_> = runs
        .iter()
        .filter(|r| !r["result"]["diverged_at"].is_null())
        .collect();
    assert_eq!(diverged.len(), 1, "{full}");
    assert!(diverged[0]["result"]["valid_loss"].is_null(), "{full}");
    assert_eq!(diverged[0]["planned"]["budget"].as_f64(), Some(2e9));
    assert_eq!(full["optima"].as_array().unwrap().len(), 2, "{full}");
    let scale_jobs: Vec<_> = store
        .jobs()
        .unwrap()
        .into_iter()
        .filter(|j| j.stage == mad_search::space::StageName::Scale)
        .collect();
    assert!(
        scale_jobs
            .iter()
            .all(|j| matches!(j.state, JobState::Done { .. })),
        "{scale_jobs:?}"
    );
    drop(store);
    // A resume trains nothing again (the stored result is readable), and
    // the candidate exports with its runs.
    let out = run(&["start", "--state", s(&state), "--foreground"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    no_double_evaluation(&state);
    let log = text(&out.stderr);
    assert!(!log.contains("scale run"), "trained again: {log}");
    let ex = dir.path().join("ex");
    let out = run(&[
        "export",
        "--state",
        s(&state),
        "--top",
        "1",
        "--format",
        "card",
        "--out",
        s(&ex),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed = text(&out.stdout);
    let card = listed.lines().find(|l| l.ends_with(".md")).unwrap();
    let card_text = std::fs::read_to_string(card).unwrap();
    assert!(card_text.contains("Scaling runs and fit"), "{card_text}");
    assert!(card_text.contains("diverged"), "{card_text}");
}

#[test]
fn the_event_log_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("search");
    start(&state, &["--budget", "screen=3", "--foreground"]);
    let all = open(&state).events(usize::MAX).unwrap();
    assert!(all.len() > 12, "{all:?}");
    // A resume keeping five: trimmed at its start, then its stop logged.
    let out = run(&[
        "start",
        "--state",
        s(&state),
        "--keep-events",
        "5",
        "--foreground",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("oldest event(s) (--keep-events 5)"),
        "{}",
        text(&out.stderr)
    );
    let kept = open(&state).events(usize::MAX).unwrap();
    assert_eq!(kept.len(), 6, "{kept:?}");
    assert!(matches!(
        kept.last().unwrap().kind,
        mad_search::store::EventKind::DaemonStopped { .. }
    ));
    // What was kept is the newest of what was there.
    assert_eq!(kept[..4], all[all.len() - 4..]);
}

/// `dashboard` over a running daemon: the page and the API through the
/// control socket (the daemon's `points`), a bad id answered 400 with the
/// server serving on, Ctrl-C ends it cleanly; a non-loopback address
/// without `--public` and a missing search are refused with the reason.
#[test]
fn the_dashboard_serves_a_running_search_and_refuses_bad_input() {
    use std::io::{BufRead, Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("search");
    let refused = run(&["dashboard", "--state", s(&state), "--bind", "0.0.0.0:0"]);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("not a loopback address")
            && text(&refused.stderr).contains("--public"),
        "{}",
        text(&refused.stderr)
    );
    let missing = run(&["dashboard", "--state", s(&state), "--bind", "127.0.0.1:0"]);
    assert!(!missing.status.success());
    assert!(
        text(&missing.stderr).contains("no search in"),
        "{}",
        text(&missing.stderr)
    );
    start(&state, &["--budget", "screen=400"]);
    wait_until("one finished evaluation", 120, || {
        done(&status_json(&state)) >= 1
    });
    // Killed however the test ends (a failed assertion must not leave it
    // serving), and the daemon stopped.
    struct Cleanup<'a>(std::process::Child, &'a Path);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            stop(self.1);
        }
    }
    let mut server = Cleanup(
        bin()
            .args(["dashboard", "--state", s(&state), "--bind", "127.0.0.1:0"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
        &state,
    );
    let mut line = String::new();
    std::io::BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_string();
    let get = |path: &str| {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        write!(c, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        (head.to_string(), body.to_string())
    };
    let (head, page) = get("/");
    assert!(
        head.contains(" 200 ") && page.contains("<title>mad-search</title>"),
        "{head}"
    );
    let (head, body) = get("/api/points");
    assert!(head.contains(" 200 "), "{head}\n{body}");
    let points: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(points["schema"], "mad-search.points/1");
    assert!(
        points["points"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["scores"]["screen"].is_number()),
        "a screened candidate: {body}"
    );
    let (head, _) = get("/api/candidate/not-hex");
    assert!(head.contains(" 400 "), "{head}");
    let (head, status) = get("/api/status");
    assert!(head.contains(" 200 "), "{head}");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["daemon"]["pid"].as_i64(), pid(&state).map(i64::from));
    // Ctrl-C (SIGINT) ends it with success.
    unsafe { libc::kill(server.0.id() as i32, libc::SIGINT) };
    let code = server.0.wait().unwrap();
    assert!(code.success(), "{code:?}");
}

/// The shipped 2026 space: a search seeds its own baselines (not the
/// paper's), screens them on the `tiny` preset, and `status` names them.
#[test]
fn a_search_of_the_hybrid_2026_space_screens_its_own_baselines() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("search");
    let space = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/search_spaces/hybrid-2026.toml"
    );
    start_with(&state, space, &["--budget", "screen=4", "--workers", "2"]);
    let scored = |v: &serde_json::Value| {
        v["baselines"].as_array().map_or(0, |rows| {
            rows.iter()
                .filter(|r| r["score"].as_f64().is_some())
                .count()
        })
    };
    wait_until("the four baselines screened", 900, || {
        scored(&status_json(&state)) == 4
    });
    let v = status_json(&state);
    let mut names: Vec<&str> = v["baselines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["baseline"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "LFM2-like conv + GQA",
            "Nemotron-H-like Mamba-2",
            "Qwen3-Next-like GDN 3:1",
            "Transformer++ (8 layers)"
        ],
        "{v}"
    );
    for r in v["baselines"].as_array().unwrap() {
        assert!(r["score"].as_f64().is_some(), "{r}");
    }
    // The LFM2-like baseline's attention has 4 key/value heads: the reference
    // string cannot say so, the compact form does, and the human table shows it.
    let lfm2 = v["baselines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["baseline"] == "LFM2-like conv + GQA")
        .unwrap();
    let gqa = "gated-short-conv swiglu mh-attention[kv_heads=4] swiglu";
    assert!(lfm2["compact"].as_str().unwrap().starts_with(gqa), "{lfm2}");
    assert!(!lfm2["layers"].as_str().unwrap().contains('['), "{lfm2}");
    let human = text(&run(&["status", "--state", s(&state)]).stdout);
    assert!(
        human.contains("hybrid-2026")
            && human.contains("Qwen3-Next-like GDN 3:1")
            && human.contains(gqa),
        "{human}"
    );
    stop(&state);
}
