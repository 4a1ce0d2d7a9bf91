//! `mad-search calibrate` run as a user runs it, on a tiny preset: the
//! report (scores over seeds, seed agreement, findings), bad input, and a
//! calibration killed with SIGKILL that resumes to the uninterrupted result.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn run_in(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mad-search"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The default space plus `quick`: two tasks, seconds per architecture.
fn space(dir: &std::path::Path) -> String {
    space_from(dir, "default.toml")
}

/// `search_spaces/<base>` plus the preset `quick`.
fn space_from(dir: &std::path::Path, base: &str) -> String {
    let default = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("search_spaces")
            .join(base),
    )
    .unwrap();
    let path = dir.join("space.toml");
    std::fs::write(
        &path,
        format!(
            "{default}\n[presets.quick.screen]\ntasks = [\"in-context-recall\", \"memorization\"]\n\
             train_examples = 256\ntest_examples = 64\nmax_seq_len = 32\nmax_epochs = 3\n\
             batch_size = 32\nlr = [1e-3]\nembedding_std = 1.0\n\
             per_task = {{ memorization = {{ max_epochs = 5 }} }}\n\n\
             [presets.quick.mad]\ngrid = \"baseline\"\ntasks = [\"in-context-recall\"]\n\
             train_examples = 256\ntest_examples = 64\nmax_seq_len = 32\nmax_epochs = 2\n\
             batch_size = 32\nlr = [1e-3]\nweight_decay = [0.0]\n"
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

const ARCHS: [&str; 3] = [
    "MH Hyena + SwiGLU",
    "hyena swiglu hyena swiglu",
    "mh-attention swiglu",
];

fn args<'a>(space: &'a str, out: &'a str) -> Vec<&'a str> {
    let mut a = vec![
        "calibrate",
        "--preset",
        "quick",
        "--space",
        space,
        "--seeds",
        "2",
        "--dir",
        out,
        "--json",
        "--checkpoint-every",
        "3",
    ];
    for arch in ARCHS {
        a.extend(["--arch", arch]);
    }
    a
}

/// The report without wall times and invocation counts.
fn comparable(mut v: serde_json::Value) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("seconds");
                m.remove("resumed");
                m.remove("undercounts");
                m.remove("invocations");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    v
}

/// A space's own baselines are names `--arch` takes, and the report shows
/// their parameters (grouped-query attention) in the compact form.
#[test]
fn calibrate_names_the_spaces_own_baselines() {
    let tmp = tempfile::tempdir().unwrap();
    let space = space_from(tmp.path(), "hybrid-2026.toml");
    let out = tmp.path().join("out");
    let r = run_in(
        tmp.path(),
        &[
            "calibrate",
            "--preset",
            "quick",
            "--space",
            &space,
            "--dir",
            out.to_str().unwrap(),
            "--json",
            "--arch",
            "LFM2-like conv + GQA",
        ],
    );
    assert!(r.status.success(), "{}", text(&r.stderr));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let s = &v["summaries"][0];
    assert_eq!(s["name"], "LFM2-like conv + GQA", "{v}");
    assert!(
        s["layers"]
            .as_str()
            .unwrap()
            .starts_with("gated-short-conv swiglu mh-attention[kv_heads=4] swiglu"),
        "{s}"
    );
}

#[test]
fn calibrate_reports_seeds_findings_and_resumes_after_kill() {
    let tmp = tempfile::tempdir().unwrap();
    let space = space(tmp.path());
    let whole_dir = tmp.path().join("whole");
    let whole = run_in(tmp.path(), &args(&space, whole_dir.to_str().unwrap()));
    assert!(whole.status.success(), "{}", text(&whole.stderr));
    let v: serde_json::Value = serde_json::from_slice(&whole.stdout).unwrap();
    let summaries = v["summaries"].as_array().unwrap();
    assert_eq!(summaries.len(), 3);
    assert_eq!(summaries[0]["name"], "MH Hyena + SwiGLU");
    assert_eq!(
        summaries[1]["name"], "Hyena + SwiGLU",
        "a baseline's genome gets its name"
    );
    for s in summaries {
        assert_eq!(s["seeds"], 2);
        assert_eq!(s["per_task"].as_object().unwrap().len(), 2);
        let std = s["score"]["std"].as_f64().unwrap();
        assert!((0.0..0.5).contains(&std), "{s}");
    }
    // The two seeds draw different data and weights: some score differs.
    let results = &v["results"][0];
    let differs = results
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["seeds"][0]["result"]["score"] != r["seeds"][1]["result"]["score"]);
    assert!(differs, "{results}");
    // Memorization runs under its own cap of five epochs, recall under three.
    let settings = results[0]["seeds"][0]["result"]["per_setting"]
        .as_array()
        .unwrap();
    let epochs: Vec<u64> = settings
        .iter()
        .map(|s| s["runs"][0]["result"]["epochs"].as_u64().unwrap())
        .collect();
    assert!(epochs[0] <= 3 && epochs[1] <= 5, "{epochs:?}");
    let log = text(&whole.stderr);
    assert!(
        log.contains("memorization vocab 256 len 32 lr 1e-3 wd 0] epoch 1/5"),
        "{log}"
    );
    assert!(
        log.contains("in-context-recall vocab 16 len 32 lr 1e-3 wd 0] epoch 1/3"),
        "{log}"
    );
    assert_eq!(v["seed_agreement"]["pairs"].as_array().unwrap().len(), 1);
    // Five findings, each with a verdict; with these three architectures the
    // striping finding cannot be checked.
    let findings = v["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 5);
    let verdict = |name: &str| {
        let f = findings.iter().find(|f| f["name"] == name).unwrap();
        (
            f["verdict"].as_str().unwrap().to_string(),
            f["detail"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(verdict("striping helps").0, "not-checked");
    // Only two tasks ran: no architecture has fuzzy recall, and attention's
    // noisy recall was not calibrated (never a pass).
    assert_eq!(verdict("fuzzy recall is hardest").0, "not-checked");
    let (attention, detail) = verdict("attention solves recall");
    assert!(
        attention == "partial" || attention == "fails",
        "{attention}: {detail}"
    );
    assert!(
        detail.contains("not calibrated: mh-attention swiglu noisy-in-context-recall"),
        "{detail}"
    );

    // The same command again reads everything back.
    let again = run_in(tmp.path(), &args(&space, whole_dir.to_str().unwrap()));
    assert!(again.status.success());
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&again.stdout).unwrap(),
        v,
        "kept results are read back as they were"
    );
    assert_eq!(text(&again.stderr).matches(": kept, score").count(), 6);

    // Killed with SIGKILL twice, once checkpoints or results appear; the
    // resumed calibration gives the uninterrupted one's scores.
    let dir = tmp.path().join("killed");
    let resumable = args(&space, dir.to_str().unwrap());
    let mut seen = 0usize;
    for _ in 0..2 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mad-search"))
            .args(&resumable)
            .current_dir(tmp.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            // Checked before the files: a child that ends after this check
            // has written its files, and the loop stops on them.
            let running = child.try_wait().unwrap().is_none();
            let files = walk(&dir);
            if files > seen {
                seen = files;
                break;
            }
            assert!(running, "calibrate finished before it could be killed");
            assert!(Instant::now() < deadline, "nothing was kept");
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    // The killed evaluation's clock is what the resumed one adds to: a
    // planted hour shows up in its wall time.
    let unfinished = clocks(&dir)
        .into_iter()
        .filter(|c| !c.with_file_name("result.json").exists())
        .collect::<Vec<_>>();
    assert_eq!(unfinished.len(), 1, "one evaluation was killed part-way");
    let mut clock: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&unfinished[0]).unwrap()).unwrap();
    clock["seconds"] = (clock["seconds"].as_f64().unwrap() + 3600.0).into();
    std::fs::write(&unfinished[0], clock.to_string()).unwrap();
    let resumed = run_in(tmp.path(), &resumable);
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    let r: serde_json::Value = serde_json::from_slice(&resumed.stdout).unwrap();
    // Every evaluation's wall time is whole: the killed invocations' time
    // was kept by the clock, and the report says how many there were.
    let summaries = r["summaries"].as_array().unwrap();
    assert!(summaries.iter().all(|s| s["undercounts"] == false), "{r}");
    assert!(
        summaries
            .iter()
            .any(|s| s["invocations"].as_u64() >= Some(2) && s["seconds"].as_f64() >= Some(1800.0)),
        "the killed evaluation counts its invocations and their time: {r}"
    );
    let mut want = comparable(v);
    let mut got = comparable(r);
    want["dir"] = serde_json::Value::Null;
    got["dir"] = serde_json::Value::Null;
    assert_eq!(got, want);
}

/// Files under `dir`, recursively.
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|e| {
            let p = e.path();
            if p.is_dir() { files(&p) } else { vec![p] }
        })
        .collect()
}

/// The clocks under `dir`.
fn clocks(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut c = files(dir);
    c.retain(|p| p.file_name().is_some_and(|n| n == "clock.json"));
    c
}

/// Files under `dir` that show progress: not the lock, nor the wall clock
/// (written the moment an evaluation starts).
fn walk(dir: &std::path::Path) -> usize {
    files(dir)
        .iter()
        .filter_map(|p| p.file_name()?.to_str())
        .filter(|n| *n != ".lock" && !n.starts_with("clock.json"))
        .count()
}

#[test]
fn calibrate_rejects_bad_input_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("findings.toml");
    std::fs::write(
        &bad,
        "[[finding]]\nname = \"x\"\nkind = \"beats\"\npairs = [[\"Mamba\"]]\non = [\"score\"]\n",
    )
    .unwrap();
    let out = run_in(
        tmp.path(),
        &[
            "calibrate",
            "--preset",
            "tiny",
            "--findings",
            bad.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("findings.toml:1:")
            && err.contains("finding[0].pairs")
            && err.contains("[better, worse]"),
        "{err}"
    );
    let out = run_in(
        tmp.path(),
        &["calibrate", "--preset", "tiny", "--arch", "hyena swiglo"],
    );
    assert!(
        text(&out.stderr).contains("unknown primitive `swiglo`"),
        "{}",
        text(&out.stderr)
    );
    let out = run_in(
        tmp.path(),
        &["calibrate", "--preset", "tiny", "--seeds", "0"],
    );
    assert!(
        text(&out.stderr).contains("--seeds 0"),
        "{}",
        text(&out.stderr)
    );
    let out = run_in(
        tmp.path(),
        &[
            "calibrate",
            "--preset",
            "tiny",
            "--arch",
            "Mamba",
            "--arch",
            "mamba mamba mamba mamba",
        ],
    );
    assert!(
        text(&out.stderr).contains("given twice"),
        "{}",
        text(&out.stderr)
    );
    // Nothing was created for rejected input.
    assert!(!tmp.path().join("calibration").exists());
}
