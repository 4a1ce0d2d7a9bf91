//! `status` answer time on a large search: 100,000 candidates and
//! 1,000,000 job results, written straight into sled in the store's
//! documented layout (src/store/mod.rs). Measures the report through the
//! control socket (as with a daemon up) and with the daemon down: a fresh
//! open of the database in-process, and the binary with and without the
//! status snapshot a clean stop leaves. Then the dashboard's API (time and
//! payload of a page's two requests), and the event log's trim over as many
//! events as results.
//!
//! `cargo bench --bench status [-- --candidates N --results M]`

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use mad_search::daemon::control::{self, Answer, Request};
use mad_search::daemon::report;
use mad_search::genome::ArchSpec;
use mad_search::space::{Operator, SearchSpace, StageName};
use mad_search::store::{
    Candidate, Event, EventKind, FrontPoint, HIST_BUCKETS, Job, JobState, SCHEMA, SearchBudget,
    SearchRecord, StageSummary, Stats, Store, board_key, bucket, hist_key, sled_config,
};
use mad_search::tasks::TaskKind;
use rand::{RngExt, SeedableRng};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn fill(dir: &Path, candidates: usize, results: usize) {
    let db = sled_config(&dir.join("db")).open().unwrap();
    let t = |n: &str| db.open_tree(n).unwrap();
    let (meta, cands, by_seq, jobs, res, board) = (
        t("meta"),
        t("candidates"),
        t("by-seq"),
        t("jobs"),
        t("results"),
        t("board"),
    );
    for n in ["queue", "leases"] {
        t(n);
    }
    // As many events as results (the daemon logs a few per job).
    let events = t("events");
    let mut log = sled::Batch::default();
    for job in 0..results as u64 {
        let e = Event {
            time: 0.0,
            kind: EventKind::Leased {
                job,
                attempt: 1,
                worker: 0,
            },
        };
        log.insert(&job.to_be_bytes(), serde_json::to_vec(&e).unwrap());
    }
    events.apply_batch(log).unwrap();
    let space = SearchSpace::embedded_default();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let record = SearchRecord {
        name: "bench".into(),
        created_by: "bench".into(),
        created: 0.0,
        seed: 1,
        space_file: "<embedded>".into(),
        space_text: mad_search::space::DEFAULT_SPACE.into(),
        preset: "cpu".into(),
        budget: SearchBudget::default(),
        corpus: None,
        corpus_fingerprint: None,
    };
    meta.insert("schema", &SCHEMA.to_be_bytes()).unwrap();
    meta.insert("search", serde_json::to_vec(&record).unwrap())
        .unwrap();
    let per_task: BTreeMap<TaskKind, f64> = TaskKind::ALL.iter().map(|t| (*t, 0.5)).collect();
    let per = results.div_ceil(candidates);
    let mut job_id = 1u64;
    let mut fronts: BTreeMap<StageName, Vec<FrontPoint>> = BTreeMap::new();
    let mut stats = Stats::default();
    let mut hists: BTreeMap<StageName, Vec<u64>> = BTreeMap::new();
    let mut batch = (
        sled::Batch::default(),
        sled::Batch::default(),
        sled::Batch::default(),
        sled::Batch::default(),
        sled::Batch::default(),
        sled::Batch::default(),
    );
    let mut genome_pool: Vec<ArchSpec> = Vec::new();
    while genome_pool.len() < 64 {
        if let Ok(g) = space.sample(&mut rng) {
            genome_pool.push(g);
        }
    }
    for seq in 0..candidates {
        let mut genome = genome_pool[seq % genome_pool.len()].clone();
        // Distinct ids: vary the width (ids hash the whole genome).
        genome.d_model = 64 + seq;
        let id = genome.arch_id();
        let params = rng.random_range(100_000..600_000u64);
        let state = rng.random_range(1_000..5_000u64);
        let mut c = Candidate {
            id,
            seq: seq as u64,
            genome,
            parents: vec![],
            operator: Operator::Sample,
            baseline: None,
            created: 0.0,
            params,
            state,
            queued: vec![StageName::Screen],
            jobs: vec![],
            stages: BTreeMap::new(),
            failed: BTreeMap::new(),
        };
        for k in 0..per {
            let stage = if k == 1 && seq % 10 == 0 {
                StageName::Mad
            } else {
                StageName::Screen
            };
            let score: f64 = rng.random();
            let job = Job {
                id: job_id,
                arch: id,
                stage,
                part: None,
                attempt: 1,
                failures: 0,
                state: JobState::Done { finished: 0.0 },
                created: 0.0,
            };
            let summary = StageSummary {
                job: job_id,
                score,
                per_task: per_task.clone(),
                seconds: 60.0,
                finished: 0.0,
                predicted_loss: None,
            };
            batch
                .3
                .insert(&job_id.to_be_bytes(), serde_json::to_vec(&job).unwrap());
            batch
                .4
                .insert(&job_id.to_be_bytes(), serde_json::to_vec(&summary).unwrap());
            c.jobs.push(job_id);
            if k < 2 && !c.stages.contains_key(&stage) {
                c.stages.insert(stage, summary);
                stats.evaluations.entry(stage).or_default().done += 1;
                batch.5.insert(board_key(stage, score, id), &[]);
                hists.entry(stage).or_insert_with(|| vec![0; HIST_BUCKETS])[bucket(score)] += 1;
                let p = FrontPoint {
                    arch: id,
                    score,
                    params,
                    state,
                };
                let f = fronts.entry(stage).or_default();
                if !f.iter().any(|q| q.dominates(&p)) {
                    f.retain(|q| !p.dominates(q));
                    f.push(p);
                }
            }
            stats.jobs.entry(stage).or_default().done += 1;
            job_id += 1;
        }
        batch.1.insert(&id.0, serde_json::to_vec(&c).unwrap());
        batch.2.insert(&(seq as u64).to_be_bytes(), &id.0);
        if seq % 5_000 == 4_999 {
            let b = std::mem::take(&mut batch);
            cands.apply_batch(b.1).unwrap();
            by_seq.apply_batch(b.2).unwrap();
            jobs.apply_batch(b.3).unwrap();
            res.apply_batch(b.4).unwrap();
            board.apply_batch(b.5).unwrap();
        }
    }
    let b = std::mem::take(&mut batch);
    cands.apply_batch(b.1).unwrap();
    by_seq.apply_batch(b.2).unwrap();
    jobs.apply_batch(b.3).unwrap();
    res.apply_batch(b.4).unwrap();
    board.apply_batch(b.5).unwrap();
    stats.candidates = candidates as u64;
    stats.daemon_seconds = 3600.0;
    meta.insert("stats", serde_json::to_vec(&stats).unwrap())
        .unwrap();
    for (stage, h) in hists {
        meta.insert(hist_key(stage), serde_json::to_vec(&h).unwrap())
            .unwrap();
    }
    for (stage, f) in fronts {
        meta.insert(
            format!("front/{}", stage.name()),
            serde_json::to_vec(&f).unwrap(),
        )
        .unwrap();
    }
    meta.insert("next-job", serde_json::to_vec(&job_id).unwrap())
        .unwrap();
    db.flush().unwrap();
}

fn main() {
    let candidates = arg("--candidates", 100_000);
    let results = arg("--results", 1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    fill(dir.path(), candidates, results);
    let size: u64 = walk(dir.path());
    println!(
        "store: {candidates} candidates, {results} results, {:.0} MB on disk, written in {:.1} s",
        size as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let state = dir.path();
    if std::env::var_os("STATUS_BENCH_KEEP").is_some() {
        let kept = dir.keep();
        println!("kept the store in {}", kept.display());
        return;
    }

    // Daemon down: open the database and build the report (what `status` does).
    let mut direct = Vec::new();
    let mut open_only = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let store = Store::open(state).unwrap();
        open_only.push(t.elapsed().as_secs_f64() * 1e3);
        let r = report::status(&store, None, 10).unwrap();
        direct.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(r.candidates, candidates as u64);
        drop(store);
    }
    println!(
        "daemon down, in-process: open {:.1} ms, open + report {:.1} ms (median of 5)",
        median(open_only),
        median(direct)
    );
    let exe = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/mad-search");
    let status_process = || {
        let t = Instant::now();
        let out = std::process::Command::new(&exe)
            .args(["status", "--json", "--state"])
            .arg(state)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (t.elapsed().as_secs_f64() * 1e3, out.stdout)
    };
    if exe.is_file() {
        // No snapshot: what the first `status` after a `kill -9` pays.
        let snapshot = state.join(mad_search::store::STATUS_SNAPSHOT);
        let mut cold = Vec::new();
        let mut answer = Vec::new();
        for _ in 0..5 {
            let _ = std::fs::remove_file(&snapshot);
            let (ms, out) = status_process();
            cold.push(ms);
            answer = out;
        }
        // The snapshot left by a clean stop (or by the status before).
        let mut warm = Vec::new();
        for _ in 0..20 {
            let (ms, out) = status_process();
            assert_eq!(out, answer, "the snapshot's report differs");
            warm.push(ms);
        }
        println!(
            "daemon down, `mad-search status` process: {:.1} ms from the database (median of 5), \
             {:.1} ms from the status snapshot (median of 20)",
            median(cold),
            median(warm)
        );
    }

    // Daemon up: the control socket served by the daemon's code.
    let store = std::sync::Arc::new(Store::open(state).unwrap());
    let listener = control::bind(state).unwrap();
    {
        let store = std::sync::Arc::clone(&store);
        std::thread::spawn(move || {
            control::serve(
                listener,
                |req| match req {
                    Request::Status { top } => Answer::Status {
                        report: Box::new(report::status(&store, None, top).unwrap()),
                    },
                    _ => Answer::Error {
                        message: "bench".into(),
                    },
                },
                &std::sync::atomic::AtomicBool::new(false),
            )
        });
    }
    let mut socket = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let a =
            control::request(state, &Request::Status { top: 10 }, Duration::from_secs(10)).unwrap();
        socket.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(matches!(a, Answer::Status { .. }));
    }
    println!(
        "daemon up, through the socket: {:.2} ms (median of 20)",
        median(socket)
    );
    if exe.is_file() {
        let times = (0..5).map(|_| status_process().0).collect();
        println!(
            "daemon up, `mad-search status` process: {:.1} ms (median of 5)",
            median(times)
        );
    }
    dashboard(&store, candidates);
    trim(&store, results);
}

/// The dashboard's API over the store (what a page load asks for, from
/// the daemon's side): time to answer and payload size.
fn dashboard(store: &Store, candidates: usize) {
    for path in ["/api/status", "/api/points"] {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..5 {
            let t = Instant::now();
            let reply = mad_search::dashboard::route(store, "GET", path);
            times.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(
                reply.status,
                200,
                "{}",
                String::from_utf8_lossy(&reply.body)
            );
            bytes = reply.body.len();
        }
        println!(
            "dashboard {path} over {candidates} candidates: {:.1} ms (median of 5), {:.0} kB",
            median(times),
            bytes as f64 / 1e3
        );
    }
}

/// The event log's trim (the daemon's, at start and every 64 jobs) over
/// `n` events: the walk when nothing goes, then a cut to a tenth.
fn trim(store: &Store, n: usize) {
    let mut walks = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(store.trim_events(n).unwrap(), 0);
        walks.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let t = Instant::now();
    let gone = store.trim_events(n / 10).unwrap();
    let cut = t.elapsed().as_secs_f64() * 1e3;
    println!(
        "event log of {n}: a trim with nothing to drop walks it in {:.1} ms (median of 5); \
         dropping {gone} takes {cut:.0} ms",
        median(walks)
    );
}

fn walk(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let m = e.metadata().unwrap();
                    if m.is_dir() { walk(&e.path()) } else { m.len() }
                })
                .sum()
        })
        .unwrap_or(0)
}
