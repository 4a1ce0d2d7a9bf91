use super::*;
use crate::genome::{ArchId, ArchSpec};
use crate::space::{Operator, StageName};

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
        corpus_fingerprint: None,
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

/// Finishes a whole-stage job with `score` and full result `full`.
fn finish_whole(s: &Store, j: JobId, attempt: u32, score: f64, full: serde_json::Value) -> bool {
    s.finish(
        j,
        attempt,
        1.0,
        None,
        &StageEnd::Done {
            summary: &summary(j, score),
            full: &full,
        },
    )
    .unwrap()
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
    let j = s
        .add_candidate(&a, StageName::Screen, &[])
        .unwrap()
        .unwrap();
    assert_eq!(
        s.add_candidate(&a, StageName::Screen, &[]).unwrap(),
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
    assert!(!finish_whole(&s, j, leased.attempt + 1, 0.5, "r".into()));
    assert!(finish_whole(&s, j, leased.attempt, 0.5, "full".into()));
    assert!(!finish_whole(&s, j, leased.attempt, 0.9, "again".into()));
    let c = s.candidate(a.id).unwrap().unwrap();
    assert_eq!(c.stages[&StageName::Screen].score, 0.5);
    assert_eq!(c.jobs, vec![j]);
    assert_eq!(
        s.stage_result(a.id, StageName::Screen).unwrap().unwrap(),
        serde_json::json!("full")
    );
    assert_eq!(
        s.result(j).unwrap(),
        None,
        "a whole stage has no run result"
    );
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
    assert_eq!(
        st.evaluations[&StageName::Screen],
        Evaluations {
            open: 0,
            done: 1,
            failed: 0
        }
    );
    // Promotion queues once.
    let m = s.enqueue(a.id, StageName::Mad, &[]).unwrap().unwrap();
    assert_eq!(s.enqueue(a.id, StageName::Mad, &[]).unwrap(), None);
    assert_eq!(s.next_queued().unwrap().unwrap().id, m);
}

#[test]
fn failures_retry_then_give_up_and_orphans_requeue() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::create_or_open(dir.path(), &record()).unwrap();
    let a = cand("hyena swiglu", 10, 10);
    let j = s
        .add_candidate(&a, StageName::Screen, &[])
        .unwrap()
        .unwrap();
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
    assert_eq!(s.stats().unwrap().evaluations[&StageName::Screen].failed, 1);
    // A deterministic failure is not retried.
    let b = cand("mh-attention swiglu", 5, 5);
    let jb = s
        .add_candidate(&b, StageName::Screen, &[])
        .unwrap()
        .unwrap();
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
fn an_adopted_lease_stays_leased_to_this_daemon_and_the_rest_requeue() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::create_or_open(dir.path(), &record()).unwrap();
    let a = s
        .add_candidate(&cand("hyena swiglu", 10, 10), StageName::Screen, &[])
        .unwrap()
        .unwrap();
    let b = s
        .add_candidate(&cand("mh-attention swiglu", 5, 5), StageName::Screen, &[])
        .unwrap()
        .unwrap();
    let leased_a = s.lease(a, 3, now() + 60.0).unwrap().unwrap();
    s.lease(b, 4, now() + 60.0).unwrap().unwrap();
    // Not under another attempt, not a job that is not leased.
    assert_eq!(s.adopt(a, 2, 0).unwrap(), None);
    assert_eq!(s.adopt(99, 1, 0).unwrap(), None);
    let adopted = s.adopt(a, 1, 0).unwrap().unwrap();
    let (
        JobState::Leased {
            started: s0,
            deadline: d0,
            ..
        },
        JobState::Leased {
            worker,
            pid,
            started,
            deadline,
        },
    ) = (&leased_a.state, &adopted.state)
    else {
        panic!("{:?}", adopted.state);
    };
    assert_eq!((*worker, *pid), (0, std::process::id()));
    assert_eq!(
        (started, deadline),
        (s0, d0),
        "the lease keeps its start and deadline"
    );
    assert_eq!(adopted.attempt, 1);
    assert_eq!(s.recover_leases_except(&[a]).unwrap(), vec![b]);
    let leased: Vec<u64> = s.leased().unwrap().iter().map(|j| j.id).collect();
    assert_eq!(leased, [a]);
    let st = s.stats().unwrap().jobs[&StageName::Screen];
    assert_eq!((st.running, st.queued), (1, 1), "counts stay in step");
    // Its end is recorded under the same attempt.
    assert_eq!(
        s.release(a, 1, &Release::Interrupted).unwrap(),
        Some(JobState::Queued)
    );
}

/// The board's length by a scan, to check the counted one.
fn board_scan(s: &Store, stage: StageName) -> usize {
    s.tree(Tree::Board)
        .scan_prefix([super::keys::stage_byte(stage)])
        .count()
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
        let j = s
            .add_candidate(&c, StageName::Screen, &[])
            .unwrap()
            .unwrap();
        let l = s.lease(j, 0, now() + 9.0).unwrap().unwrap();
        assert!(finish_whole(
            &s,
            j,
            l.attempt,
            score,
            serde_json::Value::Null
        ));
    }
    let top: Vec<f64> = s
        .top(StageName::Screen, 3)
        .unwrap()
        .iter()
        .map(|c| c.stages[&StageName::Screen].score)
        .collect();
    assert_eq!(top, [0.9, 0.6, 0.3]);
    assert!(s.top(StageName::Mad, 3).unwrap().is_empty());
    // The counted length is the board's.
    for &stage in StageName::ALL {
        assert_eq!(
            s.board_len(stage).unwrap(),
            board_scan(&s, stage),
            "{stage:?}"
        );
    }
    assert_eq!(s.board_len(StageName::Screen).unwrap(), 4);
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
        s.add_candidate(&cand("hyena swiglu", 1, 1), StageName::Screen, &[])
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
        s.tree(Tree::Meta)
            .insert("schema", &99u32.to_be_bytes())
            .unwrap();
        s.flush().unwrap();
    }
    let err = Store::open(dir.path()).err().unwrap().to_string();
    assert!(
        err.contains("schema 99") && err.contains("newer mad-search"),
        "{err}"
    );
    // Schema 0 was never written by mad-search: refused with both numbers
    // (it once underflowed the migration index).
    {
        let s = Store::open_db(dir.path(), true).unwrap();
        s.tree(Tree::Meta)
            .insert("schema", &0u32.to_be_bytes())
            .unwrap();
        s.flush().unwrap();
    }
    for open in [Store::open, Store::open_for_reading] {
        let err = open(dir.path()).err().unwrap();
        let text = err.to_string();
        assert!(
            matches!(err, StoreError::Corrupt { .. })
                && text.contains("schema number is 0")
                && text.contains(&format!("1 to {SCHEMA}")),
            "{text}"
        );
    }
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
            let j = s
                .add_candidate(&c, StageName::Screen, &[])
                .unwrap()
                .unwrap();
            let l = s.lease(j, 0, now() + 9.0).unwrap().unwrap();
            assert!(finish_whole(
                &s,
                j,
                l.attempt,
                score,
                serde_json::Value::Null
            ));
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

/// A candidate through a stage split in `n` runs: the jobs, leased.
fn split(s: &Store, layers: &str, n: usize) -> (ArchId, Vec<JobId>) {
    let a = cand(layers, 10, 10);
    let screen = s
        .add_candidate(&a, StageName::Screen, &[])
        .unwrap()
        .unwrap();
    s.lease(screen, 0, now() + 60.0).unwrap().unwrap();
    assert!(finish_whole(s, screen, 1, 0.5, serde_json::Value::Null));
    let keys: Vec<String> = (0..n).map(|i| format!("C1e9_d{i}_r1")).collect();
    let first = s.enqueue(a.id, StageName::Scale, &keys).unwrap().unwrap();
    let jobs: Vec<JobId> = (first..first + n as u64).collect();
    for (i, &j) in jobs.iter().enumerate() {
        let job = s.job(j).unwrap().unwrap();
        assert_eq!(
            job.part,
            Some(Part {
                index: i as u32,
                of: n as u32,
                key: keys[i].clone()
            })
        );
        s.lease(j, i, now() + 60.0).unwrap().unwrap();
    }
    (a.id, jobs)
}

#[test]
fn a_split_stage_completes_with_its_last_run() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::create_or_open(dir.path(), &record()).unwrap();
    let (a, jobs) = split(&s, "hyena swiglu", 3);
    let st = s.stats().unwrap();
    assert_eq!(st.jobs[&StageName::Scale].running, 3);
    assert_eq!(st.evaluations[&StageName::Scale].open, 1, "one evaluation");
    let run = |i: u64| serde_json::json!({ "run": i });
    assert!(
        s.finish(jobs[0], 1, 2.0, Some(&run(0)), &StageEnd::Pending)
            .unwrap()
    );
    // A stage end claimed while a run is still going is not taken.
    let early = summary(jobs[1], 0.7);
    let full = serde_json::json!("all");
    let done = StageEnd::Done {
        summary: &early,
        full: &full,
    };
    assert!(s.finish(jobs[1], 1, 2.0, Some(&run(1)), &done).unwrap());
    let c = s.candidate(a).unwrap().unwrap();
    assert!(!c.stages.contains_key(&StageName::Scale));
    assert_eq!(s.stage_result(a, StageName::Scale).unwrap(), None);
    // The last run ends the stage.
    let last = summary(jobs[2], 0.8);
    let done = StageEnd::Done {
        summary: &last,
        full: &full,
    };
    assert!(s.finish(jobs[2], 1, 2.0, Some(&run(2)), &done).unwrap());
    let c = s.candidate(a).unwrap().unwrap();
    assert_eq!(c.stages[&StageName::Scale].score, 0.8);
    assert_eq!(s.stage_result(a, StageName::Scale).unwrap(), Some(full));
    for (i, &j) in jobs.iter().enumerate() {
        assert_eq!(s.result(j).unwrap(), Some(run(i as u64)));
    }
    assert_eq!(
        s.stage_jobs(&c, StageName::Scale)
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect::<Vec<_>>(),
        jobs
    );
    let st = s.stats().unwrap();
    assert_eq!(st.jobs[&StageName::Scale].done, 3);
    assert_eq!(
        st.evaluations[&StageName::Scale],
        Evaluations {
            open: 0,
            done: 1,
            failed: 0
        }
    );
    assert_eq!(s.top(StageName::Scale, 5).unwrap()[0].id, a);
    assert!((st.evaluation_seconds - 7.0).abs() < 1e-9, "1 + 3 × 2 s");
}

#[test]
fn a_run_failing_for_good_fails_the_stage_and_cancels_its_queued_runs() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::create_or_open(dir.path(), &record()).unwrap();
    let (a, jobs) = split(&s, "hyena swiglu", 4);
    // Two runs go back to the queue (a stop), one is still running.
    s.release(jobs[2], 1, &Release::Interrupted).unwrap();
    s.release(jobs[3], 1, &Release::Interrupted).unwrap();
    let fail = Release::Failed {
        reason: "diverged".into(),
        retry: false,
    };
    assert!(matches!(
        s.release(jobs[0], 1, &fail).unwrap(),
        Some(JobState::Failed { .. })
    ));
    let c = s.candidate(a).unwrap().unwrap();
    assert_eq!(c.failed[&StageName::Scale], "run C1e9_d0_r1: diverged");
    for &j in &jobs[2..] {
        let job = s.job(j).unwrap().unwrap();
        assert!(
            matches!(&job.state, JobState::Failed { reason, .. } if reason.contains("not run")),
            "{job:?}"
        );
        // Its end is in the event log, as every job's is.
        assert!(
            s.events(usize::MAX).unwrap().iter().any(
                |e| matches!(&e.kind, EventKind::Failed { job, reason } if *job == j && reason.contains("not run"))
            ),
            "no event for cancelled job {j}"
        );
    }
    assert_eq!(s.next_queued().unwrap(), None);
    // The run still going finishes; the stage stays failed.
    let full = serde_json::json!("late");
    let late = summary(jobs[1], 0.9);
    let end = StageEnd::Done {
        summary: &late,
        full: &full,
    };
    assert!(s.finish(jobs[1], 1, 1.0, None, &end).unwrap());
    let c = s.candidate(a).unwrap().unwrap();
    assert!(!c.stages.contains_key(&StageName::Scale));
    let st = s.stats().unwrap();
    assert_eq!(
        st.evaluations[&StageName::Scale],
        Evaluations {
            open: 0,
            done: 0,
            failed: 1
        }
    );
    assert_eq!(
        st.jobs[&StageName::Scale],
        Counts {
            queued: 0,
            running: 0,
            done: 1,
            failed: 3
        }
    );
    // A stage whose runs give no result fails with its last run.
    let (b, jobs) = split(&s, "mh-hyena swiglu", 2);
    s.finish(jobs[0], 1, 1.0, None, &StageEnd::Pending).unwrap();
    let no_fit = StageEnd::Failed {
        reason: "budget 1e9: no minimum".into(),
    };
    assert!(s.finish(jobs[1], 1, 1.0, None, &no_fit).unwrap());
    let c = s.candidate(b).unwrap().unwrap();
    assert_eq!(c.failed[&StageName::Scale], "budget 1e9: no minimum");
    assert_eq!(s.stats().unwrap().evaluations[&StageName::Scale].failed, 2);
}

#[test]
fn schema_one_databases_are_migrated_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, ja);
    {
        let s = Store::create_or_open(dir.path(), &record()).unwrap();
        let ca = cand("hyena swiglu", 1, 1);
        let cb = cand("mamba swiglu", 1, 1);
        ja = s
            .add_candidate(&ca, StageName::Screen, &[])
            .unwrap()
            .unwrap();
        s.add_candidate(&cb, StageName::Screen, &[]).unwrap();
        s.lease(ja, 0, now() + 9.0).unwrap().unwrap();
        assert!(finish_whole(
            &s,
            ja,
            1,
            0.4,
            serde_json::json!("screen of a")
        ));
        (a, b) = (ca.id, cb.id);
        // Back to what schema 1 wrote: the full result under its job, no
        // stage-results, no evaluation counts.
        let full = s
            .tree(Tree::StageResults)
            .remove(stage_key(a, StageName::Screen))
            .unwrap()
            .unwrap();
        s.tree(Tree::Results).insert(be(ja), full).unwrap();
        let mut st = s.stats().unwrap();
        st.evaluations.clear();
        s.tree(Tree::Meta).insert("stats", encode(&st)).unwrap();
        s.tree(Tree::Meta)
            .insert("schema", &1u32.to_be_bytes())
            .unwrap();
        s.flush().unwrap();
    }
    // A reader never migrates: it refuses, naming both schemas and the
    // way to upgrade, and leaves schema 1 as it was.
    {
        let err = Store::open_for_reading(dir.path()).err().unwrap();
        assert!(matches!(err, StoreError::Older { found: 1, .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("schema 1")
                && text.contains(&SCHEMA.to_string())
                && text.contains("start"),
            "{text}"
        );
    }
    {
        let s = Store::open_db(dir.path(), false).unwrap();
        assert_eq!(s.schema().unwrap(), 1);
    }
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(
        s.stage_result(a, StageName::Screen).unwrap(),
        Some(serde_json::json!("screen of a"))
    );
    assert_eq!(s.result(ja).unwrap(), None);
    assert_eq!(s.stage_result(b, StageName::Screen).unwrap(), None);
    assert_eq!(
        s.stats().unwrap().evaluations[&StageName::Screen],
        Evaluations {
            open: 1,
            done: 1,
            failed: 0
        }
    );
    assert_eq!(s.board_len(StageName::Screen).unwrap(), 1);
    assert_eq!(board_scan(&s, StageName::Screen), 1);
    let raw = s.tree(Tree::Meta).get("schema").unwrap().unwrap();
    assert_eq!(raw.as_ref(), &SCHEMA.to_be_bytes());
}

#[test]
fn trimming_keeps_the_newest_events() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::create_or_open(dir.path(), &record()).unwrap();
    for pid in 0..50 {
        s.daemon_event(0.0, Some(EventKind::DaemonStarted { pid }))
            .unwrap();
    }
    let pids = |s: &Store| -> Vec<u32> {
        s.events(usize::MAX)
            .unwrap()
            .iter()
            .filter_map(|e| match e.kind {
                EventKind::DaemonStarted { pid } => Some(pid),
                _ => None,
            })
            .collect()
    };
    assert_eq!(pids(&s).len(), 50);
    assert_eq!(s.trim_events(100).unwrap(), 0, "nothing beyond 100");
    // In batches of 7 keys (six batches and an empty one).
    assert_eq!(s.trim_events_by(10, 7).unwrap(), 40);
    assert_eq!(pids(&s), (40..50).collect::<Vec<_>>(), "oldest first");
    assert_eq!(s.trim_events(10).unwrap(), 0);
    // New events go after the kept ones.
    s.daemon_event(0.0, Some(EventKind::DaemonStopped { pid: 7 }))
        .unwrap();
    assert_eq!(s.trim_events(10).unwrap(), 1);
    let kept = s.events(usize::MAX).unwrap();
    assert_eq!(kept.len(), 10);
    assert_eq!(
        kept.last().unwrap().kind,
        EventKind::DaemonStopped { pid: 7 }
    );
    assert_eq!(s.trim_events(1).unwrap(), 9);
    assert_eq!(s.events(usize::MAX).unwrap().len(), 1);
}
