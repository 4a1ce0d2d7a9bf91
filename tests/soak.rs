//! The kill -9 soak: a tiny search with two workers, killed with SIGKILL at
//! a random moment 2–12 s after each start and started again, then left to
//! drain to its budget. After every kill and at the end, the invariants of
//! the store are checked (see [`soak_kill_dash_nine`]).
//!
//! `MAD_SEARCH_SOAK_KILLS` sets the number of kills (12 by default, a few
//! minutes: what CI runs), `MAD_SEARCH_SOAK_SEED` the kill times and the
//! search's seed; `scripts/soak` runs a long one and keeps its figures.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use mad_search::space::StageName;
use mad_search::store::{EventKind, JobState};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number")),
        Err(_) => default,
    }
}

/// Per stage: evaluations done (with a result) and given up.
fn evaluations(state: &Path) -> BTreeMap<StageName, (u64, u64)> {
    open(state)
        .stats()
        .unwrap()
        .evaluations
        .iter()
        .map(|(s, e)| (*s, (e.done, e.failed)))
        .collect()
}

/// A job's state, as the event log tells it and as the jobs tree holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Queued,
    Leased,
    /// Done or failed.
    Ended,
}

fn phase(s: &JobState) -> Phase {
    match s {
        JobState::Queued => Phase::Queued,
        JobState::Leased { .. } => Phase::Leased,
        JobState::Done { .. } | JobState::Failed { .. } => Phase::Ended,
    }
}

/// Replays the event log and checks it against the store: every job's
/// last state, the job counts per stage and state, the candidates, the
/// finished evaluations per stage (and the boards' lengths). Also that no
/// candidate finished a stage (or a run of one) twice. Returns the number
/// of events.
fn replay_matches_the_store(state: &Path) -> usize {
    let store = open(state);
    let events = store.events(usize::MAX).unwrap();
    let jobs: BTreeMap<u64, _> = store
        .jobs()
        .unwrap()
        .into_iter()
        .map(|j| (j.id, j))
        .collect();
    let mut replayed: BTreeMap<u64, Phase> = BTreeMap::new();
    let mut created = 0u64;
    let mut finished_stages: BTreeMap<StageName, u64> = BTreeMap::new();
    let mut ends: BTreeSet<(String, StageName, String)> = BTreeSet::new();
    for (i, e) in events.iter().enumerate() {
        let (job, to) = match &e.kind {
            EventKind::Created { .. } => {
                created += 1;
                continue;
            }
            EventKind::Queued { job, .. } | EventKind::Requeued { job, .. } => {
                (*job, Phase::Queued)
            }
            EventKind::Leased { job, .. } => (*job, Phase::Leased),
            EventKind::Finished { job, .. } | EventKind::RunFinished { job, .. } => {
                let j = &jobs[job];
                let part = j.part.as_ref().map(|p| p.key.clone()).unwrap_or_default();
                assert!(
                    ends.insert((j.arch.to_string(), j.stage, part.clone())),
                    "event {i}: {} finished {:?} {part} twice",
                    j.arch,
                    j.stage
                );
                if matches!(e.kind, EventKind::Finished { .. }) {
                    *finished_stages.entry(j.stage).or_default() += 1;
                }
                (*job, Phase::Ended)
            }
            EventKind::Failed { job, .. } => (*job, Phase::Ended),
            EventKind::DaemonStarted { .. } | EventKind::DaemonStopped { .. } => continue,
        };
        let cancelled =
            matches!(&e.kind, EventKind::Failed { reason, .. } if reason.starts_with("not run:"));
        let before = replayed.insert(job, to);
        let legal = matches!(
            (before, to),
            (None, Phase::Queued)
                | (Some(Phase::Queued), Phase::Leased)
                | (Some(Phase::Leased), Phase::Queued | Phase::Ended)
        ) || (cancelled && before == Some(Phase::Queued));
        assert!(legal, "event {i}: job {job} went {before:?} → {to:?}");
    }
    assert_eq!(
        replayed.len(),
        jobs.len(),
        "jobs without events, or events of no job"
    );
    let mut counts: BTreeMap<StageName, [u64; 4]> = BTreeMap::new();
    for (id, j) in &jobs {
        assert_eq!(
            replayed.get(id).copied(),
            Some(phase(&j.state)),
            "job {id}: the log and the store disagree"
        );
        let slot = match j.state {
            JobState::Queued => 0,
            JobState::Leased { .. } => 1,
            JobState::Done { .. } => 2,
            JobState::Failed { .. } => 3,
        };
        counts.entry(j.stage).or_default()[slot] += 1;
    }
    let stats = store.stats().unwrap();
    assert_eq!(created, stats.candidates, "candidates created");
    assert_eq!(created as usize, store.candidates().unwrap().len());
    for &stage in StageName::ALL {
        let c = stats.jobs.get(&stage).copied().unwrap_or_default();
        assert_eq!(
            [c.queued, c.running, c.done, c.failed],
            counts.get(&stage).copied().unwrap_or_default(),
            "{stage:?}: job counts"
        );
        let done = stats.evaluations.get(&stage).map_or(0, |e| e.done);
        assert_eq!(
            finished_stages.get(&stage).copied().unwrap_or(0),
            done,
            "{stage:?}: finished evaluations"
        );
        assert_eq!(store.board_len(stage).unwrap() as u64, done);
        assert_eq!(store.top(stage, usize::MAX).unwrap().len() as u64, done);
    }
    events.len()
}

/// A kill lands this long after a start at the earliest …
const MIN_WAIT: Duration = Duration::from_secs(2);
/// … and at the latest.
const MAX_WAIT: Duration = Duration::from_secs(12);

/// The soak. After each kill: finished results are all there and
/// unchanged, finished evaluations never decrease, at most one lease per
/// worker, no job trained twice without a kill or a requeue between. At the
/// end: the search drained to its budget by itself (nothing queued or
/// leased, no evaluation open, the screen budget spent), no candidate
/// finished a stage twice, and the event log replays to the store's counts.

#[test]
fn soak_kill_dash_nine() {
    let kills: usize = env_or("MAD_SEARCH_SOAK_KILLS", 12);
    let seed: u64 = env_or("MAD_SEARCH_SOAK_SEED", 1);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("search");
    let began = Instant::now();
    // The test space with longer training (a few seconds per evaluation,
    // checkpointed every step), so that kills land mid-job, and five
    // widths (one holds about 260 architectures: a long soak would exhaust
    // it; five hold enough for about 250 kills).
    let space_text = std::fs::read_to_string(SPACE)
        .unwrap()
        .replace("d_model = [32]", "d_model = [16, 32, 48, 64, 80]")
        .replace("max_epochs = 1\n", "max_epochs = 12\n")
        .replace("max_epochs = 2\n", "max_epochs = 6\n")
        .replace("budgets = [1e9, 2e9, 4e9]", "budgets = [4e9, 8e9, 1.6e10]");
    assert!(
        space_text.contains("max_epochs = 12")
            && space_text.contains("1.6e10")
            && space_text.contains("80]")
    );
    let space = dir.path().join("space.toml");
    std::fs::write(&space, space_text).unwrap();
    // Enough work that the kills all land before the search is done: the
    // budget is raised at a restart (as a user would) when what is left runs
    // low for the kills to come. "Low" is measured, not assumed: two workers
    // on two cores here finish about one screen evaluation every two
    // seconds, a faster machine several, so what is left must cover twice
    // the longest wait at the rate seen so far.
    let mut screen = 4 * kills as u64 + 6;
    let mut up = Duration::ZERO;
    let budget_of = |screen: u64| format!("screen={screen},mad={},scale=1", kills / 4 + 2);
    let seed_text = seed.to_string();
    let mut lcg = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut delivered = 0;
    let mut results = BTreeMap::new();
    let mut evals = BTreeMap::new();
    let mut by_itself = false;
    for round in 0..kills {
        let mut args = vec!["--workers", "2"];
        // Screen evaluations finished, failed or under way.
        let committed = match round {
            0 => 0,
            _ => open(&state)
                .stats()
                .unwrap()
                .evaluations
                .get(&StageName::Screen)
                .map_or(0, |e| e.committed()),
        };
        let to_come = (kills - round) as u64;
        let per_wait = match up.as_secs_f64() {
            0.0 => 0,
            t => (2.0 * committed as f64 / t * MAX_WAIT.as_secs_f64()).ceil() as u64,
        };
        if round == 0 || screen < committed + 2 * to_come + 4 + per_wait {
            screen = screen.max(committed + 4 * to_come + 6 + per_wait);
        }
        let budget = budget_of(screen);
        args.extend(["--budget", &budget]);
        if round == 0 {
            args.extend(["--seed", &seed_text]);
        }
        start_with(&state, s(&space), &args);
        let p = pid(&state).expect("a pid file");
        lcg = lcg
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let wait = MIN_WAIT
            + Duration::from_millis((lcg >> 33) % (MAX_WAIT - MIN_WAIT).as_millis() as u64);
        let started = Instant::now();
        let deadline = started + wait;
        while Instant::now() < deadline && alive(p) {
            std::thread::sleep(Duration::from_millis(20));
        }
        up += started.elapsed();
        if !alive(p) {
            // The search finished before this kill.
            by_itself = true;
            break;
        }
        // SAFETY: the daemon's pid, read from its pid file and alive.
        unsafe {
            libc::kill(p, libc::SIGKILL);
        }
        delivered += 1;
        wait_until("the killed daemon to go", 30, || !alive(p));
        no_orphan_workers(&state);
        assert!(
            !state.join("status.snapshot.json").exists(),
            "kill {delivered}: a killed daemon left a status snapshot"
        );
        let now = finished(&state);
        for (job, r) in &results {
            assert_eq!(
                now.get(job),
                Some(r),
                "kill {delivered}: finished job {job} lost or changed"
            );
        }
        let e = evaluations(&state);
        for (stage, (done, failed)) in &evals {
            let (d, f) = e.get(stage).copied().unwrap_or_default();
            assert!(
                d >= *done && f >= *failed,
                "kill {delivered}: {stage:?} evaluations went from {done}+{failed} to {d}+{f}"
            );
        }
        let leased = open(&state).leased().unwrap();
        assert!(
            leased.len() <= 2,
            "kill {delivered}: {} leases with two workers",
            leased.len()
        );
        no_double_evaluation(&state);
        results = now;
        evals = e;
    }
    assert_eq!(
        delivered, kills,
        "the search finished after {delivered} of {kills} kills, its budget ahead"
    );
    // Drain: no more kills; the daemon ends by itself at its budget.
    let drain = Instant::now();
    if !by_itself {
        start_with(&state, s(&space), &["--workers", "2"]);
    }
    wait_until(
        "the search to drain to its budget",
        120 + 10 * kills as u64,
        || down(&state),
    );
    let drain_seconds = drain.elapsed().as_secs_f64();
    assert!(!state.join("daemon.pid").exists() && !state.join("daemon.sock").exists());
    let log = std::fs::read_to_string(state.join("daemon.log")).unwrap();
    let why = log
        .lines()
        .rev()
        .find_map(|l| {
            l.split_once("search finished: ")
                .map(|(_, w)| w.to_string())
        })
        .unwrap_or_else(|| panic!("the daemon did not finish the search:\n{log}"));
    let store = open(&state);
    let jobs = store.jobs().unwrap();
    let open_jobs: Vec<_> = jobs
        .iter()
        .filter(|j| matches!(phase(&j.state), Phase::Queued | Phase::Leased))
        .collect();
    assert!(open_jobs.is_empty(), "left queued or leased: {open_jobs:?}");
    let stats = store.stats().unwrap();
    for (stage, e) in &stats.evaluations {
        assert_eq!(e.open, 0, "{stage:?}: evaluations left open");
    }
    let spent = stats.evaluations[&StageName::Screen].spent();
    assert_eq!(spent, screen, "the screen budget is not spent ({why})");
    let leases = store
        .events(usize::MAX)
        .unwrap()
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Leased { .. }))
        .count();
    drop(store);
    let now = finished(&state);
    for (job, r) in &results {
        assert_eq!(now.get(job), Some(r), "finished job {job} lost or changed");
    }
    no_double_evaluation(&state);
    let events = replay_matches_the_store(&state);
    let done_jobs = jobs
        .iter()
        .filter(|j| matches!(j.state, JobState::Done { .. }))
        .count();
    eprintln!(
        "soak: {delivered} kills survived (seed {seed}), {:.0} s in all ({drain_seconds:.0} s \
         draining); search finished: {why}",
        began.elapsed().as_secs_f64()
    );
    for (stage, e) in &stats.evaluations {
        eprintln!(
            "soak: {stage:?}: {} evaluations finished, {} given up",
            e.done, e.failed
        );
    }
    eprintln!(
        "soak: {} jobs ({done_jobs} done), {leases} leases (training starts), {events} events \
         replayed; invariants held after every kill and at the end",
        jobs.len()
    );
}
