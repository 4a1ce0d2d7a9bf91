use super::*;
use crate::genome::ArchSpec;
use crate::space::{Operator, StageName};
use crate::store::{Candidate, SearchBudget, SearchRecord, StageEnd, StageSummary, now};

fn record() -> SearchRecord {
    SearchRecord {
        name: "dash".into(),
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

fn cand(layers: &str, seq: u64, params: u64, state: u64, baseline: Option<&str>) -> Candidate {
    let genome = ArchSpec::from_layers_str(layers).unwrap();
    Candidate {
        id: genome.arch_id(),
        seq,
        genome,
        parents: vec![],
        operator: Operator::Sample,
        baseline: baseline.map(str::to_string),
        created: 100.0 + seq as f64,
        params,
        state,
        queued: vec![],
        jobs: vec![],
        stages: Default::default(),
        failed: Default::default(),
    }
}

/// A store of three candidates: two screened (one a baseline), one queued.
fn store() -> (tempfile::TempDir, Store, Vec<Candidate>) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::create_or_open(dir.path(), &record()).unwrap();
    let cands = vec![
        cand(
            "mh-attention swiglu",
            0,
            1000,
            0,
            Some("Transformer++ (MHA + SwiGLU)"),
        ),
        cand("hyena swiglu", 1, 800, 64, None),
        cand("mamba mamba", 2, 900, 512, None),
    ];
    for (i, c) in cands.iter().enumerate() {
        let j = s.add_candidate(c, StageName::Screen, &[]).unwrap().unwrap();
        if i == 2 {
            continue;
        }
        let leased = s.lease(j, 0, now() + 60.0).unwrap().unwrap();
        let summary = StageSummary {
            job: j,
            score: 0.5 + 0.1 * i as f64,
            per_task: Default::default(),
            seconds: 1.0,
            finished: 200.0 + i as f64,
            predicted_loss: None,
        };
        let full = serde_json::json!({});
        assert!(
            s.finish(
                j,
                leased.attempt,
                1.0,
                None,
                &StageEnd::Done {
                    summary: &summary,
                    full: &full,
                },
            )
            .unwrap()
        );
    }
    (dir, s, cands)
}

fn body(r: &Reply) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| {
        panic!(
            "{e}: {}",
            String::from_utf8_lossy(&r.body)
                .chars()
                .take(200)
                .collect::<String>()
        )
    })
}

#[test]
fn points_list_every_candidate_in_order_with_its_scores() {
    let (_dir, s, cands) = store();
    let reply = route(&s, "GET", "/api/points");
    assert_eq!(
        (reply.status, reply.content_type),
        (200, "application/json")
    );
    let p: Points = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(p.schema, POINTS_SCHEMA);
    assert_eq!(p.points.len(), 3);
    for (point, c) in p.points.iter().zip(&cands) {
        assert_eq!((point.arch, point.seq), (c.id, c.seq));
        assert_eq!((point.params, point.state), (c.params, c.state));
        assert_eq!(point.layers, c.genome.layers_string());
        assert_eq!(point.compact, c.genome.compact_string());
    }
    assert_eq!(p.points[0].scores[&StageName::Screen], 0.5);
    assert_eq!(p.points[0].finished[&StageName::Screen], 200.0);
    assert_eq!(p.points[1].scores[&StageName::Screen], 0.6);
    assert!(p.points[2].scores.is_empty(), "queued: no score yet");
    assert_eq!(
        p.points[0].baseline.as_deref(),
        Some("Transformer++ (MHA + SwiGLU)")
    );
    assert!(p.scaling.is_empty());
    // The wire form: stage names as keys, ids as 32 hex digits, absent
    // options left out.
    let v = body(&reply);
    assert_eq!(v["points"][1]["scores"]["screen"], 0.6);
    assert_eq!(
        v["points"][1]["arch"].as_str().map(str::len),
        Some(32),
        "{v}"
    );
    assert!(v["points"][1].get("baseline").is_none());
    assert_eq!(v["points"][0]["operator"], "sample");
}

#[test]
fn the_page_status_and_candidates_are_served() {
    let (_dir, s, cands) = store();
    let page = route(&s, "GET", "/");
    assert_eq!(page.status, 200);
    assert!(page.content_type.starts_with("text/html"));
    let html = String::from_utf8(page.body).unwrap();
    assert!(html.contains("<title>mad-search</title>") && html.contains("api/points"));
    for outside in ["src=\"http", "href=\"http", "<link", "import(", "url(http"] {
        assert!(
            !html.contains(outside),
            "everything is embedded: found {outside}"
        );
    }
    assert_eq!(route(&s, "HEAD", "/index.html").status, 200);
    let status = route(&s, "GET", "/api/status?ignored=1");
    assert_eq!(status.status, 200);
    let v = body(&status);
    assert_eq!(v["name"], "dash");
    assert_eq!(v["candidates"], 3);
    assert!(
        v["schema"]
            .as_str()
            .unwrap()
            .starts_with("mad-search.status/")
    );
    let id = cands[1].id.to_string();
    let show = route(&s, "GET", &format!("/api/candidate/{}", &id[..8]));
    assert_eq!(show.status, 200);
    assert_eq!(body(&show)["candidate"]["id"], id.as_str());
    // Exports are downloads named by the candidate.
    for (format, ext) in [
        ("json", "json"),
        ("toml", "toml"),
        ("layers", "layers.txt"),
        ("card", "md"),
    ] {
        let r = route(&s, "GET", &format!("/api/candidate/{id}/export/{format}"));
        assert_eq!(r.status, 200, "{format}");
        assert_eq!(
            r.attachment,
            Some(format!("{}.{ext}", cands[1].id.short())),
            "{format}"
        );
    }
    let layers = route(&s, "GET", &format!("/api/candidate/{id}/export/layers"));
    assert_eq!(
        String::from_utf8(layers.body).unwrap().trim(),
        "hyena swiglu"
    );
}

#[test]
fn bad_requests_get_4xx_and_the_server_state_is_untouched() {
    let (_dir, s, cands) = store();
    let unknown = route(&s, "GET", "/api/candidate/ffffffffffff");
    assert_eq!(unknown.status, 404, "{}", body(&unknown));
    assert!(
        body(&unknown)["error"]
            .as_str()
            .unwrap()
            .contains("ffffffffffff")
    );
    for bad in [
        "/api/candidate/xyz1",
        "/api/candidate/abc",
        "/api/candidate/..%2f..%2fetc%2fpasswd",
        "/api/candidate/../../etc/passwd/export/json",
        "/api/candidate/Transformer++",
    ] {
        let r = route(&s, "GET", bad);
        assert!(
            (400..500).contains(&r.status),
            "{bad}: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    for missing in [
        "/etc/passwd",
        "/../../etc/passwd",
        "/api",
        "/api/nothing",
        "/static/../../Cargo.toml",
    ] {
        assert_eq!(route(&s, "GET", missing).status, 404, "{missing}");
    }
    let id = cands[0].id.to_string();
    assert_eq!(
        route(&s, "GET", &format!("/api/candidate/{id}/export/exe")).status,
        404
    );
    assert_eq!(route(&s, "POST", "/api/status").status, 405);
    assert_eq!(
        route(&s, "DELETE", &format!("/api/candidate/{id}")).status,
        405
    );
    // Nothing changed, and the next request is answered as before.
    assert_eq!(route(&s, "GET", "/api/points").status, 200);
    assert_eq!(s.stats().unwrap().candidates, 3);
}

#[test]
fn an_unreachable_search_answers_503_with_the_reason() {
    struct Gone;
    impl Source for Gone {
        fn ask(&self, _: &Request) -> anyhow::Result<Answer> {
            anyhow::bail!("no search in /nowhere")
        }
    }
    for path in ["/api/status", "/api/points", "/api/candidate/abcd"] {
        let r = route(&Gone, "GET", path);
        assert_eq!(r.status, 503, "{path}");
        assert!(body(&r)["error"].as_str().unwrap().contains("/nowhere"));
    }
    assert_eq!(route(&Gone, "GET", "/").status, 200, "the page still loads");
}

/// The server end to end on a free port: real HTTP, the page, the API, a
/// bad request, a foreign `Host` refused, and a clean stop.
#[test]
fn the_server_answers_over_http_and_stops() {
    use std::io::{Read, Write};
    use std::sync::atomic::AtomicBool;
    let (_dir, s, _) = store();
    let first = s.candidates().unwrap()[0].id;
    let source: Arc<dyn Source> = Arc::new(s);
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let addr = server.server_addr().to_ip().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Stops the server however the test ends, so a failed assertion fails
    // the test instead of hanging it.
    struct Stop(Arc<AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let serving = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || serve(&server, source, &stop, false))
    };
    let guard = Stop(Arc::clone(&stop));
    let get = |path: &str, host: &str| {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        write!(
            c,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        answer
    };
    let local = "127.0.0.1:9";
    let page = get("/", local);
    assert!(page.starts_with("HTTP/1.1 200"), "{page:.100}");
    assert!(page.contains("Content-Type: text/html"));
    let points = get("/api/points", "localhost:8484");
    assert!(points.contains("200 OK") && points.contains(POINTS_SCHEMA));
    let bad = get("/api/candidate/..%2f..", local);
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad:.100}");
    let export = get(&format!("/api/candidate/{first}/export/card"), "[::1]:80");
    assert!(export.contains("Content-Disposition: attachment; filename="));
    let rebound = get("/api/points", "attacker.example:8484");
    assert!(rebound.starts_with("HTTP/1.1 403"), "{rebound:.100}");
    assert!(
        get("/api/status", local).contains("200 OK"),
        "still serving"
    );
    drop(guard);
    serving.join().unwrap().unwrap();
}

#[test]
fn only_loopback_names_pass_the_host_check() {
    for ok in [
        None,
        Some("localhost"),
        Some("LOCALHOST:8484"),
        Some("127.0.0.1:1"),
        Some("[::1]:8484"),
        Some("[::1]"),
    ] {
        assert!(loopback_host(ok), "{ok:?}");
    }
    for bad in [
        Some("attacker.example"),
        Some("localhost.attacker.example:80"),
        Some("127.0.0.2:80"),
        Some("[::2]:80"),
        Some(""),
        Some("0.0.0.0:8484"),
    ] {
        assert!(!loopback_host(bad), "{bad:?}");
    }
}

/// A candidate that finished `scale` (a real tiny scaling stage) is a
/// point with its predicted loss and a plot of its runs, optima and law.
#[test]
fn a_scaled_candidate_has_its_runs_optima_and_law() {
    use crate::layers::CpuAutodiff;
    use crate::scale::corpus::Corpus;
    use crate::stages::scale::{ScaleControl, evaluate};
    let (_dir, s, cands) = store();
    let space = crate::space::SearchSpace::embedded_default();
    let settings = &space.presets["tiny"].scale;
    let r = evaluate::<CpuAutodiff>(
        &cands[1].genome,
        settings,
        &Corpus::embedded(),
        1,
        &Default::default(),
        ScaleControl {
            parallel: 2,
            ..ScaleControl::default()
        },
        &|_| {},
    )
    .unwrap();
    let j = s
        .enqueue(cands[1].id, StageName::Scale, &[])
        .unwrap()
        .unwrap();
    let leased = s.lease(j, 0, now() + 60.0).unwrap().unwrap();
    let summary = StageSummary {
        job: j,
        score: r.score,
        per_task: Default::default(),
        seconds: r.seconds,
        finished: 300.0,
        predicted_loss: Some(r.predicted_loss),
    };
    let full = serde_json::to_value(&r).unwrap();
    assert!(
        s.finish(
            j,
            leased.attempt,
            r.seconds,
            None,
            &StageEnd::Done {
                summary: &summary,
                full: &full,
            },
        )
        .unwrap()
    );
    let p = points(&s).unwrap();
    assert_eq!(p.points[1].predicted_loss, Some(r.predicted_loss));
    assert_eq!(p.scaling.len(), 1);
    let sc = &p.scaling[0];
    assert_eq!(sc.arch, cands[1].id);
    assert_eq!(sc.runs.len(), r.runs.len());
    assert_eq!(sc.optima.len(), r.optima.len());
    for (run, want) in sc.runs.iter().zip(&r.runs) {
        assert_eq!(run.compute, want.planned.compute);
        assert_eq!(run.params, want.planned.member.params);
        assert_eq!(run.valid_loss, Some(want.result.valid_loss));
    }
    assert_eq!((sc.law.alpha, sc.law.c0), (r.law.alpha, r.law.c0));
    assert_eq!(sc.predicted_loss, r.predicted_loss);
    assert_eq!(sc.target_compute, settings.target_compute);
    // The law at C₀ is E + A, and what the page draws at the target is the
    // prediction (its formula restated in page.html).
    let at = |c: f64| sc.law.e + sc.law.a * (c / sc.law.c0).powf(-sc.law.alpha);
    assert!((at(sc.target_compute) - sc.predicted_loss).abs() < 1e-9 * sc.predicted_loss);
    // A stored result this build cannot read (another version's) leaves
    // its candidate out of `scaling`, not the answer.
    let j = s
        .enqueue(cands[0].id, StageName::Scale, &[])
        .unwrap()
        .unwrap();
    let leased = s.lease(j, 0, now() + 60.0).unwrap().unwrap();
    let odd = serde_json::json!({"written by": "another version"});
    assert!(
        s.finish(
            j,
            leased.attempt,
            1.0,
            None,
            &StageEnd::Done {
                summary: &StageSummary { job: j, ..summary },
                full: &odd,
            },
        )
        .unwrap()
    );
    let reply = route(&s, "GET", "/api/points");
    assert_eq!(reply.status, 200);
    let v = body(&reply);
    assert_eq!(v["scaling"].as_array().unwrap().len(), 1);
    assert_eq!(v["scaling"][0]["arch"], cands[1].id.to_string().as_str());
    assert_eq!(v["scaling"][0]["runs"].as_array().unwrap().len(), 9);
    assert!(v["points"][0]["scores"]["scale"].is_number());
}
