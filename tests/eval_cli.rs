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

/// Everything in an eval JSON but wall times.
fn without_times(mut v: serde_json::Value) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("seconds");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    v
}

/// A space file: the default plus a one-task preset that runs many steps.
fn one_task_space(dir: &std::path::Path) -> std::path::PathBuf {
    let default = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/search_spaces/default.toml"
    ))
    .unwrap();
    let path = dir.join("space.toml");
    std::fs::write(
        &path,
        format!(
            "{default}\n[presets.one.screen]\ntasks = [\"in-context-recall\", \"memorization\"]\n\
             train_examples = 512\ntest_examples = 64\nmax_seq_len = 32\nmax_epochs = 6\n\
             batch_size = 32\nlr = [1e-3]\n\n[presets.one.mad]\ngrid = \"baseline\"\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn killed_eval_resumes_to_the_uninterrupted_result() {
    let dir = tempfile::tempdir().unwrap();
    let space = one_task_space(dir.path());
    let space = space.to_str().unwrap();
    let args = [
        "eval",
        "--arch",
        "mH-Sg",
        "--preset",
        "one",
        "--space",
        space,
        "--json",
        "--threads",
        "1",
    ];
    let whole = run(&args);
    assert!(whole.status.success(), "{}", text(&whole.stderr));
    let whole: serde_json::Value = serde_json::from_slice(&whole.stdout).unwrap();

    let ckpt = dir.path().join("ckpt");
    let mut resumable = args.to_vec();
    resumable.extend([
        "--checkpoints",
        ckpt.to_str().unwrap(),
        "--checkpoint-every",
        "7",
    ]);
    // Kill -9 three times, each once new checkpoint files have appeared.
    let mut seen: u128 = 0;
    for _ in 0..3 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mad-search"))
            .args(&resumable)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let stamp: u128 = std::fs::read_dir(&ckpt)
                .map(|d| {
                    d.filter_map(|e| e.ok()?.metadata().ok()?.modified().ok())
                        .map(|t| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos())
                        .sum()
                })
                .unwrap_or(0);
            if stamp != 0 && stamp != seen {
                seen = stamp;
                break;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "eval finished before it could be killed"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint appeared"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let resumed = run(&resumable);
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    let resumed: serde_json::Value = serde_json::from_slice(&resumed.stdout).unwrap();
    assert_eq!(without_times(resumed), without_times(whole));
    // Finished runs are kept as results; no checkpoint is left behind.
    let names: Vec<String> = std::fs::read_dir(&ckpt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.iter().all(|n| n.ends_with(".done.json")), "{names:?}");
}

#[test]
fn evaluates_data_in_the_reference_layout() {
    use mad_search::space::SearchSpace;
    use mad_search::stages::stage_settings;
    let dir = tempfile::tempdir().unwrap();
    let space_path = one_task_space(dir.path());
    let space = SearchSpace::load(&space_path).unwrap();
    let data = dir.path().join("data");
    for mut s in stage_settings(&space.preset("one").unwrap().screen) {
        // More examples than the preset keeps, as the published data have.
        s.num_train *= 2;
        s.num_test *= 2;
        let splits = s.generate().unwrap();
        splits
            .train
            .save_npy(&s.data_dir(&data).join("train"))
            .unwrap();
        splits
            .test
            .save_npy(&s.data_dir(&data).join("test"))
            .unwrap();
    }
    let args = [
        "eval",
        "--arch",
        "mA-Sg",
        "--preset",
        "one",
        "--space",
        space_path.to_str().unwrap(),
        "--json",
        "--data",
        data.to_str().unwrap(),
    ];
    let out = run(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"]["per_setting"].as_array().unwrap().len(), 2);
    // A missing setting directory is named, with what to do.
    let recall = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("t-CR_"))
        .unwrap();
    std::fs::remove_dir_all(&recall).unwrap();
    let out = run(&args);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("no data for setting t-CR_") && err.contains(data.to_str().unwrap()),
        "{err}"
    );
}
