//! Helpers of the daemon's tests, which run the real binary on
//! `tests/spaces/small.toml` (width 32, one-epoch `tiny` preset: about a
//! second per evaluation). Each test binary uses some of them.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use mad_search::store::{JobState, Store};

pub const SPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/spaces/small.toml");

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mad-search"))
}

pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("the binary runs")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn start(state: &Path, extra: &[&str]) -> Output {
    start_with(state, SPACE, extra)
}

/// Starts (or resumes) the search of `state` in the background on `space`,
/// preset `tiny`, one worker (unless `extra` names `--workers`) of one
/// thread, checkpointing every step; `extra` is added.
pub fn start_with(state: &Path, space: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "start",
        "--state",
        s(state),
        "--space",
        space,
        "--preset",
        "tiny",
        "--threads",
        "1",
        "--checkpoint-every",
        "1",
    ];
    if !extra.contains(&"--workers") {
        args.extend_from_slice(&["--workers", "1"]);
    }
    args.extend_from_slice(extra);
    let out = run(&args);
    assert!(out.status.success(), "start failed: {}", text(&out.stderr));
    out
}

pub fn status_json(state: &Path) -> serde_json::Value {
    let out = run(&["status", "--state", s(state), "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn done(v: &serde_json::Value) -> u64 {
    v["jobs"]
        .as_object()
        .map_or(0, |m| m.values().map(|c| c["done"].as_u64().unwrap()).sum())
}

pub fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn pid(state: &Path) -> Option<i32> {
    std::fs::read_to_string(state.join("daemon.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub fn alive(pid: i32) -> bool {
    // A zombie counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
    })
}

pub fn stop(state: &Path) {
    let out = run(&["stop", "--state", s(state)]);
    assert!(out.status.success(), "stop failed: {}", text(&out.stderr));
}

/// Takes sled's lock on the database (an exclusive `flock` of `db/db`)
/// without opening it, as another process holding it would; released when
/// the file is dropped.
pub fn hold_lock(state: &Path) -> std::fs::File {
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
pub fn open(state: &Path) -> Store {
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
pub fn finished(state: &Path) -> BTreeMap<u64, (String, u64)> {
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
/// lease), and no job is leased again once it ended (finished or failed). (Counting finished
/// jobs would prove nothing: the store makes them unique by construction.)
pub fn no_double_evaluation(state: &Path) {
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
            EventKind::Finished { job, .. }
            | EventKind::RunFinished { job, .. }
            | EventKind::Failed { job, .. } => {
                finished.insert(*job);
            }
            _ => {}
        }
    }
}

pub fn finished_live(state: &Path) -> usize {
    done(&status_json(state)) as usize
}

pub fn failed_id(state: &Path) -> String {
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

/// The finished `scale` results in the database: (arch, the runs' validation
/// losses as bits).
pub fn scale_results(state: &Path) -> Vec<(String, Vec<u64>)> {
    let store = open(state);
    let mut out = Vec::new();
    for c in store.candidates().unwrap() {
        if let Some(summary) = c.stages.get(&mad_search::space::StageName::Scale) {
            let full = store
                .stage_result(c.id, mad_search::space::StageName::Scale)
                .unwrap()
                .unwrap();
            let last_scale_job = c
                .jobs
                .iter()
                .rev()
                .find(|j| {
                    store.job(**j).unwrap().unwrap().stage == mad_search::space::StageName::Scale
                })
                .unwrap();
            assert_eq!(summary.job, *last_scale_job, "the last run ends it");
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

/// Every candidate's `overtrain` result: id, then each point's multiple
/// and validation-loss bits.
pub fn overtrain_results(state: &Path) -> Vec<(String, Vec<(f64, u64)>)> {
    let store = open(state);
    let mut out = Vec::new();
    for c in store.candidates().unwrap() {
        if c.stages
            .contains_key(&mad_search::space::StageName::Overtrain)
        {
            let full = store
                .stage_result(c.id, mad_search::space::StageName::Overtrain)
                .unwrap()
                .unwrap();
            let points = full["points"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["multiple"].as_f64().unwrap(),
                        p["run"]["result"]["valid_loss"].as_f64().unwrap().to_bits(),
                    )
                })
                .collect();
            out.push((c.id.to_string(), points));
        }
    }
    out
}

/// Creates the search of `state` on the test space and `tiny` preset with
/// nothing to evaluate (`--budget screen=0`), in the foreground.
pub fn create_idle(state: &Path) {
    create_idle_with(state, &[]);
}

/// [`create_idle`] with `extra` flags.
pub fn create_idle_with(state: &Path, extra: &[&str]) {
    let mut args = vec![
        "start",
        "--state",
        s(state),
        "--space",
        SPACE,
        "--preset",
        "tiny",
        "--budget",
        "screen=0",
        "--foreground",
        "--workers",
        "1",
        "--threads",
        "1",
    ];
    args.extend_from_slice(extra);
    let out = run(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Whether the daemon of `state` is gone (or never was).
pub fn down(state: &Path) -> bool {
    pid(state).is_none_or(|p| !alive(p))
}

/// Pids of live worker processes (`mad-search worker`) of the search in
/// `state` (their spec lies under `<state>/jobs/`).
pub fn workers_of(state: &Path) -> Vec<i32> {
    let jobs = state.join("jobs");
    let jobs = jobs.to_string_lossy();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains("\0worker\0") && cmdline.contains(jobs.as_ref()) && alive(pid)
        })
        .collect()
}

/// After a kill -9 of the daemon of `state`: its worker processes die with
/// it (no orphan trains on beside the next daemon).
pub fn no_orphan_workers(state: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = workers_of(state);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "worker processes outlived their daemon: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
