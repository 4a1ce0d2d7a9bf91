//! The `space` subcommands, run as a user runs them: the real binary on the
//! shipped spaces and on the corpus of malformed files in `tests/spaces/malformed/`.
//!
//! Each malformed file starts with two comment lines that pin its error:
//! `# expect: <text the message must contain>` and `# line: <line it must name>`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mad-search"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn malformed_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/spaces/malformed");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("the corpus exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_malformed_space_fails_with_file_line_and_field() {
    let files = malformed_files();
    assert!(files.len() >= 20, "the corpus holds {} files", files.len());
    for file in files {
        let body = std::fs::read_to_string(&file).unwrap();
        let mut lines = body.lines();
        let expect = lines
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: first line must be `# expect: ...`", file.display()));
        let line: usize = lines
            .next()
            .and_then(|l| l.strip_prefix("# line: "))
            .and_then(|l| l.parse().ok())
            .unwrap_or_else(|| panic!("{}: second line must be `# line: N`", file.display()));
        let rel = file
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap()
            .display()
            .to_string();
        let out = run(&["space", "check", &rel]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{rel} was accepted");
        assert!(
            out.stdout.is_empty(),
            "{rel}: nothing on stdout, got {}",
            text(&out.stdout)
        );
        let prefix = format!("error: {rel}:{line}:");
        assert!(
            stderr.starts_with(&prefix),
            "{rel}: expected `{prefix}`, got: {stderr}"
        );
        assert!(
            stderr.contains(expect),
            "{rel}: expected `{expect}` in: {stderr}"
        );
        assert_eq!(
            stderr.lines().count(),
            1,
            "{rel}: one line of error, got: {stderr}"
        );
    }
}

#[test]
fn shipped_spaces_check_clean() {
    let out = run(&["space", "check", "search_spaces/default.toml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("ok: space `default`"), "{stdout}");
    assert!(stdout.contains("presets: cpu, paper, tiny"), "{stdout}");
    // The embedded default is the same file.
    let embedded = run(&["space", "check"]);
    assert!(embedded.status.success());
    let json = run(&["space", "check", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["space"]["budget"]["max_state"], 4096);
    assert!(v["feasibility"]["acceptance"].as_f64().unwrap() > 0.0);
}

#[test]
fn sampling_is_deterministic_and_distinct() {
    let args = [
        "space",
        "sample",
        "search_spaces/default.toml",
        "-n",
        "100",
        "--seed",
        "1",
        "--format",
        "layers",
    ];
    let a = run(&args);
    let b = run(&args);
    assert!(a.status.success(), "{}", text(&a.stderr));
    assert_eq!(a.stdout, b.stdout, "same seed, same genomes");
    let stdout = text(&a.stdout);
    let rows: Vec<Vec<&str>> = stdout.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 100);
    let ids: HashSet<&str> = rows.iter().map(|r| r[0]).collect();
    assert_eq!(ids.len(), 100, "distinct genomes");
    for r in &rows {
        assert_eq!(
            r.len(),
            5,
            "id, params, state, per-token state, layers: {r:?}"
        );
        assert_eq!(r[0].len(), 32);
        let params: u64 = r[1].parse().unwrap();
        let state: u64 = r[2].parse().unwrap();
        assert!(params <= 600_000 && state <= 4096, "{r:?}");
    }
    let other = run(&[
        "space", "sample", "-n", "100", "--seed", "2", "--format", "layers",
    ]);
    assert_ne!(other.stdout, a.stdout, "another seed, other genomes");
}

#[test]
fn json_samples_carry_loadable_genomes() {
    let out = run(&[
        "space", "sample", "-n", "5", "--seed", "7", "--format", "json",
    ]);
    assert!(out.status.success());
    for line in text(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let spec: mad_search::genome::ArchSpec =
            serde_json::from_value(v["genome"].clone()).unwrap();
        assert_eq!(spec.arch_id().to_string(), v["id"].as_str().unwrap());
    }
}

#[test]
fn missing_file_and_oversized_request_are_clear() {
    let out = run(&["space", "check", "no/such/space.toml"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.starts_with("error: no/such/space.toml: cannot read the search space: "),
        "{err}"
    );
    // A space with exactly one genome cannot give two distinct ones.
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one.toml");
    std::fs::write(
        &one,
        "[space]\nname = \"one\"\n[model]\nd_model = [128]\nlayers = [2]\n\
         [budget]\nmax_params = 1_000_000\nmax_state = 0\n\
         [primitives.mh-attention]\n[primitives.swiglu]\n",
    )
    .unwrap();
    let out = run(&["space", "sample", one.to_str().unwrap(), "-n", "2"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("found only 1 distinct genomes"), "{err}");
}

#[test]
fn baselines_list_the_paper_architectures() {
    let out = run(&["space", "baselines", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 11);
    let striped = rows
        .iter()
        .find(|r| r["name"] == "Striped MH Hyena + SwiGLU")
        .unwrap();
    assert_eq!(striped["short"], "mH-Sg-mA-Sg");
    assert_eq!(striped["state"], 2048);
    assert_eq!(striped["state_per_token"], 256);
}

#[test]
fn the_2026_space_checks_clean_and_lists_its_own_baselines() {
    let out = run(&["space", "check", "search_spaces/hybrid-2026.toml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for want in [
        "ok: space `hybrid-2026`",
        "global attention: every k-th block for k in [0, 1, 2, 4]",
        "warm start (the space's own baselines):",
        "Qwen3-Next-like GDN 3:1",
        "Nemotron-H-like Mamba-2",
        "LFM2-like conv + GQA",
        "Transformer++ (8 layers)",
        "mh-attention[kv_heads=4]",
    ] {
        assert!(stdout.contains(want), "`{want}` missing: {stdout}");
    }
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    let out = run(&[
        "space",
        "baselines",
        "search_spaces/hybrid-2026.toml",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "Qwen3-Next-like GDN 3:1",
            "Nemotron-H-like Mamba-2",
            "LFM2-like conv + GQA",
            "Transformer++ (8 layers)"
        ]
    );
    // Iso-state: three Gated DeltaNet layers hold what six Mamba-2 layers do.
    assert_eq!(rows[0]["state"], 24576);
    assert_eq!(rows[1]["state"], 24576);
    // Grouped-query attention: 2 · 4 key/value heads · 8 per token, twice.
    assert_eq!(rows[2]["state_per_token"], 128);
    assert_eq!(rows[3]["state_per_token"], 1024);
    // The compact form is an `--arch` (and a `layers`) value.
    let lfm = rows[2]["compact"].as_str().unwrap();
    let out = run(&[
        "eval",
        "--arch",
        lfm,
        "--space",
        "search_spaces/hybrid-2026.toml",
        "--preset",
        "nonexistent",
    ]);
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("nonexistent") && !stderr.contains("--arch"),
        "{stderr}"
    );
}

#[test]
fn help_lists_the_subcommands() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("space"));
    let out = run(&["space", "sample", "--help"]);
    let help = text(&out.stdout);
    assert!(
        help.contains("--seed") && help.contains("--format"),
        "{help}"
    );
}
