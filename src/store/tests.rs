use super::*;
use crate::genome::ArchSpec;
use crate::space::Operator;

fn record() -> SearchRecord {
    SearchRecord {
        name: "t".into(),
        created_by: "test".into(),
        created: 0.0,
        seed: 1,
        space_file: "x".into(),
        space_text: String::new(),
        preset: "tiny".into(),
        budget: SearchBudget::default(),
        corpus: None,
    }
}

fn cand(layers: &str, params: u64, state: u64) -> Candidate {
    let genome = ArchSpec::from_layers_str(layers).unwrap();
    Candidate {
        id: genome.arch_id(),
        seq: 0,
        genome,
        parents: vec![],
        operator: Operator::Sample,
        baseline: None,
        created: 0.0,
        params,
        state,
        queued: vec![],
        jobs: vec![],
        stages: Default::default(),
        failed: Default::default(),
    }
}

fn summary(job: JobId, score: f64) -> StageSummary {
    StageSummary {
        job,
        score,
        per_task: Default::default(),
        seconds: 1.0,
        finished: 0.0,
        predicted_loss: None,
    }
}

#[test]
fn jobs_move_through_their_states_with_counts_in_step() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::create_or_open(dir.path(), &record()).unwrap();
    let a = cand("hyena swiglu", 10, 10);
    let j = s.add_candidate(&a, StageName::Screen).unwrap().unwrap();
    assert_eq!(
        s.add_candidate(&a, StageName::Screen).unwrap(),
        None,
        "dedup by id"
    );
    assert_eq!(s.next_queued().unwrap().unwrap().id, j);
    let leased = s.lease(j, 0, now() + 60.0).unwrap().unwrap();
    assert_eq!(s.lease(j, 1, now() + 60.0).unwrap(), None, "leased once");
    assert_eq!(s.next_queued().unwrap(), None);
    let st = s.stats().unwrap();
    assert_eq!(st.jobs[&StageName::Screen].running, 1);
    assert_eq!(st.candidates, 1);
    // A stale attempt cannot finish it.
    assert!(
        !s.finish(j, leased.attempt + 1, &summary(j, 0.5), &"r")
            .unwrap()
    );
    assert!(
        s.finish(j, leased.attempt, &summary(j, 0.5), &"full")
            .unwrap()
    );
    assert!(
        !s.finish(j, leased.attempt, &summary(j, 0.9), &"again")
            .unwrap()
    );
    let c = s.candidate(a.id).unwrap().unwrap();
    assert_eq!(c.stages[&StageName::Screen].score, 0.5);
    assert_eq!(c.jobs, vec![j]);
    assert_eq!(s.result(j).unwrap().unwrap(), serde_json::json!("full"));
    let st = s.stats().unwrap();
    assert_eq!(
        st.jobs[&StageName::Screen],
        Counts {
            queued: 0,
            running: 0,
            done: 1,
            failed: 0
        }
    );
    // Promotion queues once.
    let m = s.enqueue(a.id, StageName::Mad).unwrap().unwrap();
    assert_eq!(s.enqueue(a.id, StageName::Mad).unwrap(), None);
    assert_eq!(s.next_queued().unwrap().unwrap().id, m);
}

#[test]
fn failures_retry_then_give_up_and_orphans_requeue() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::create_or_open(dir.path(), &record()).unwrap();
    let a = cand("hyena swiglu", 10, 10);
    let j = s.add_candidate(&a, StageName::Screen).unwrap().unwrap();
    let fail = Release::Failed {
        reason: "panicked: boom".into(),
        retry: true,
    };
    for attempt in 1..=2 {
        s.lease(j, 0, now() + 60.0).unwrap().unwrap();
        assert_eq!(
            s.release(j, attempt, &fail).unwrap(),
            Some(JobState::Queued)
        );
    }
    // Interruptions and orphans do not count as failures.
    s.lease(j, 0, now() + 60.0).unwrap().unwrap();
    s.release(j, 3, &Release::Interrupted).unwrap().unwrap();
    s.lease(j, 0, now() + 60.0).unwrap().unwrap();
    assert_eq!(s.recover_leases().unwrap(), vec![j]);
    assert!(s.leased().unwrap().is_empty());
    s.lease(j, 0, now() + 60.0).unwrap().unwrap();
    let state = s.release(j, 5, &fail).unwrap().unwrap();
    assert!(matches!(state, JobState::Failed { .. }), "{state:?}");
    let c = s.candidate(a.id).unwrap().unwrap();
    assert_eq!(c.failed[&StageName::Screen], "panicked: boom");
    let job = s.job(j).unwrap().unwrap();
    assert_eq!((job.attempt, job.failures), (5, 3));
    assert_eq!(s.stats().unwrap().jobs[&StageName::Screen].failed, 1);
    // A deterministic failure is not retried.
    let b = cand("mh-attention swiglu", 5, 5);
    let jb = s.add_candidate(&b, StageName::Screen).unwrap().unwrap();
    s.lease(jb, 0, now()).unwrap().unwrap();
    let no_retry = Release::Failed {
        reason: "diverged".into(),
        retry: false,
    };
    assert!(matches!(
        s.release(jb, 1, &no_retry).unwrap(),
        Some(JobState::Failed { .. })
    ));
    let kinds: Vec<String> = s
        .events(100)
        .unwrap()
        .iter()
        .map(|e| {
            serde_json::to_value(e).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(kinds.contains(&"requeued".to_string()) && kinds.contains(&"failed".to_string()));
}

#[test]
fn board_and_front_follow_results() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::create_or_open(dir.path(), &record()).unwrap();
    let specs = [
        ("hyena swiglu", 0.3, 100, 100),
        ("mh-hyena swiglu", 0.6, 50, 100),
        ("mh-attention swiglu", 0.9, 80, 500),
        ("mamba swiglu", 0.2, 200, 200),
    ];
    for (layers, score, params, state) in specs {
        let c = cand(layers, params, state);
        let j = s.add_candidate(&c, StageName::Screen).unwrap().unwrap();
        let l = s.lease(j, 0, now() + 9.0).unwrap().unwrap();
        assert!(s.finish(j, l.attempt, &summary(j, score), &()).unwrap());
    }
    let top: Vec<f64> = s
        .top(StageName::Screen, 3)
        .unwrap()
        .iter()
        .map(|c| c.stages[&StageName::Screen].score)
        .collect();
    assert_eq!(top, [0.9, 0.6, 0.3]);
    assert!(s.top(StageName::Mad, 3).unwrap().is_empty());
    let front: Vec<f64> = s
        .front(StageName::Screen)
        .unwrap()
        .iter()
        .map(|p| p.score)
        .collect();
    // hyena (0.3, 100, 100) is dominated by mh-hyena (0.6, 50, 100); mamba too.
    assert_eq!(front, [0.9, 0.6]);
    let ids: Vec<ArchId> = s.candidates().unwrap().iter().map(|c| c.id).collect();
    assert_eq!(ids.len(), 4);
    assert_eq!(s.recent(1).unwrap()[0].id, ids[3]);
    let prefix = &ids[2].to_string()[..7];
    assert_eq!(s.candidates_with_prefix(prefix, 5).unwrap()[0].id, ids[2]);
}

#[test]
fn reopening_keeps_everything_and_newer_schemas_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Store::open(dir.path()),
        Err(StoreError::Missing { .. })
    ));
    {
        let s = Store::create_or_open(dir.path(), &record()).unwrap();
        s.add_candidate(&cand("hyena swiglu", 1, 1), StageName::Screen)
            .unwrap();
        s.flush().unwrap();
    }
    {
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.stats().unwrap().candidates, 1);
        assert_eq!(s.search().unwrap().unwrap(), record());
        // While open, a second opener is refused.
        let err = Store::open(dir.path()).err().unwrap();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        s.trees[0].insert("schema", &99u32.to_be_bytes()).unwrap();
        s.flush().unwrap();
    }
    let err = Store::open(dir.path()).err().unwrap().to_string();
    assert!(
        err.contains("schema 99") && err.contains("newer mad-search"),
        "{err}"
    );
}

#[test]
fn ranks_from_the_histogram_match_a_full_count() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::create_or_open(dir.path(), &record()).unwrap();
    let mut scores = Vec::new();
    let names = [
        "hyena",
        "mh-hyena",
        "mh-attention",
        "mamba",
        "attention",
        "mh-linear-attention",
    ];
    let mut k = 0u64;
    for a in names {
        for b in ["swiglu", "mlp", "moe-mlp"] {
            k += 1;
            // Ties, bucket edges and the extremes included.
            let score = match k % 6 {
                0 => 0.0,
                1 => 1.0,
                2 => 0.5,
                3 => 1.0 / HIST_BUCKETS as f64,
                _ => (k as f64 * 0.0371) % 1.0,
            };
            let c = cand(&format!("{a} {b}"), 1, 1);
            let j = s.add_candidate(&c, StageName::Screen).unwrap().unwrap();
            let l = s.lease(j, 0, now() + 9.0).unwrap().unwrap();
            assert!(s.finish(j, l.attempt, &summary(j, score), &()).unwrap());
            scores.push((c.id, score));
        }
    }
    let board: Vec<ArchId> = s
        .top(StageName::Screen, 100)
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    for (id, score) in scores {
        let full = board.iter().position(|x| *x == id).unwrap();
        assert_eq!(
            s.rank_of(StageName::Screen, score, id).unwrap(),
            full,
            "score {score}"
        );
    }
}
