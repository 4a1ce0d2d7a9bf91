//! `mad-search eval` run as a user runs it: the `tiny` preset end to end,
//! and clear errors for bad input.

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mad-search"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn tiny_screen_end_to_end() {
    let out = run(&[
        "eval", "--arch", "mH-Sg", "--stage", "screen", "--preset", "tiny", "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["arch"], "mh-hyena swiglu");
    let result = &v["result"];
    assert_eq!(result["per_setting"].as_array().unwrap().len(), 6);
    assert_eq!(result["per_task"].as_object().unwrap().len(), 6);
    let score = result["score"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&score), "{score}");
    // Progress lines, one per epoch of each of the six runs (2 epochs).
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr.lines().filter(|l| l.contains("] epoch ")).count(),
        12,
        "{stderr}"
    );
    // Compression ran on the autoencoder, selective copying within its cap.
    let settings = result["per_setting"].as_array().unwrap();
    assert!(
        settings
            .iter()
            .all(|s| s["setting"]["seq_len"].as_u64().unwrap() <= 64)
    );
}

#[test]
fn bad_input_is_named() {
    let out = run(&["eval", "--arch", "hyena swiglo", "--preset", "tiny"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("--arch `hyena swiglo`") && err.contains("unknown primitive `swiglo`"),
        "{err}"
    );
    let out = run(&["eval", "--arch", "hyena swiglu", "--preset", "huge"]);
    let err = text(&out.stderr);
    assert!(
        err.contains("unknown preset `huge`") && err.contains("cpu, paper, tiny"),
        "{err}"
    );
    let out = run(&[
        "eval",
        "--arch",
        "hyena swiglu",
        "--preset",
        "tiny",
        "--device",
        "tpu",
    ]);
    assert!(text(&out.stderr).contains("unknown device `tpu`"));
    let out = run(&[
        "eval",
        "--arch",
        "hyena swiglu",
        "--preset",
        "tiny",
        "--device",
        "cuda",
    ]);
    assert!(!out.status.success());
}
