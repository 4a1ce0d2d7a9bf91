//! mad-search against PyTorch on the same models, the same machine and the
//! same thread count, in one run: every primitive (forward + backward of one
//! layer) and the paper's architectures (forward + backward + AdamW step of a
//! language model, vocab 16), at batch 128, length 128, width 128.
//!
//! ```sh
//! cargo bench --bench torch                 # all rows, threads = cores
//! cargo bench --bench torch -- --threads 1  # one thread on both sides
//! cargo bench --bench torch -- --only hyena --reps 5
//! cargo bench --bench torch -- --only "mamba,mh-hyena swiglu mh-hyena"
//! cargo bench --bench torch -- --quick      # tiny shapes, once: does it run
//! cargo bench --bench torch -- --screen     # screen evaluations per hour
//! cargo bench --bench torch -- --curves     # learning curves, side by side
//! cargo bench --bench torch -- --curves --space my.toml --preset mine
//! ```
//!
//! `--screen` times whole screen evaluations instead (issue #7's throughput
//! figure): the preset's (`--preset`, default `cpu`) six task settings,
//! their data generated once by mad-search into `target/screen-data/`,
//! trained by `stages::evaluate` and by `benches/torch/screen.py` (the same
//! loop in PyTorch on the same files), `--parallel` runs at a time (default
//! the cores) with one thread each, on both sides. Early stopping is off
//! unless `--early-stop` (both sides then train the same steps); prints
//! wall seconds and evaluations per hour per architecture.
//!
//! `--curves` is `--screen` with the preset exactly as it is (early stop and
//! patience on) on the architectures whose curves calibrate the `cpu` preset
//! (attention, Hyena, MH Hyena, Mamba, a striped hybrid; `--only` picks
//! others), and prints, per task, each side's validation accuracy by the
//! preset's `metric` after every epoch (the other metric at the end) and the
//! steps to reach 0.5, 0.9 and 0.99: the same model, data, initialisation and schedule on both sides, so
//! a change that slows learning here (an init, a kernel, a schedule) shows
//! as a gap between the two curves.
//!
//! The PyTorch side is `benches/torch/models.py`, run with the Python of
//! `target/torch-venv` (or `--python PATH`). The first run creates that
//! virtual environment with `python3 -m venv` and installs `torch` and
//! `numpy` from PyPI into it (about 3 GB on x86-64 Linux: PyPI's wheel brings
//! the CUDA libraries along). Not run in CI.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use common::{ARCHITECTURES, Shape, layer_step, model_step};
use mad_search::genome::{ArchSpec, Layer, ParamValue, Primitive};
use mad_search::space::Metric;
use mad_search::train::Scores;

struct Args {
    threads: usize,
    only: Option<String>,
    python: Option<PathBuf>,
    shape: Shape,
    layers: bool,
    models: bool,
    screen: bool,
    preset: String,
    space: Option<PathBuf>,
    parallel: usize,
    early_stop: bool,
    curves: bool,
    /// Seed of the weights and the batch order on both sides (`--seed`;
    /// the data stay the protocol's).
    seed: Option<u64>,
}

impl Args {
    /// Whether row `name` is asked for: `--only` is a comma-separated list
    /// of substrings.
    fn wants(&self, name: &str) -> bool {
        self.only
            .as_deref()
            .is_none_or(|o| o.split(',').any(|part| name.contains(part.trim())))
    }
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        only: None,
        python: None,
        shape: Shape::PROTOCOL,
        layers: true,
        models: true,
        screen: false,
        preset: "cpu".into(),
        space: None,
        parallel: std::thread::available_parallelism().map_or(1, |n| n.get()),
        early_stop: false,
        curves: false,
        seed: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        let number = |name: &str, v: String| {
            v.parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or(format!("{name}: expected a positive integer, got {v:?}"))
        };
        match arg.as_str() {
            "--threads" => a.threads = number("--threads", value("--threads")?)?,
            "--reps" => a.shape.reps = number("--reps", value("--reps")?)?,
            "--batch" => a.shape.batch = number("--batch", value("--batch")?)?,
            "--seq" => a.shape.seq = number("--seq", value("--seq")?)?,
            "--quick" => a.shape = Shape::QUICK,
            "--only" => a.only = Some(value("--only")?),
            "--python" => a.python = Some(PathBuf::from(value("--python")?)),
            "--models" => a.layers = false,
            "--layers" => a.models = false,
            "--screen" => a.screen = true,
            "--preset" => a.preset = value("--preset")?,
            "--space" => a.space = Some(PathBuf::from(value("--space")?)),
            "--parallel" => a.parallel = number("--parallel", value("--parallel")?)?,
            "--early-stop" => a.early_stop = true,
            "--seed" => {
                let v = value("--seed")?;
                a.seed = Some(
                    v.parse()
                        .map_err(|_| format!("--seed: expected an integer, got {v:?}"))?,
                );
            }
            "--curves" => {
                a.screen = true;
                a.early_stop = true;
                a.curves = true;
            }
            "--bench" => {}
            other => {
                return Err(format!(
                    "unknown argument {other:?}; expected --threads N, --reps N, --batch N, \
                     --seq N, --quick, --only NAME, --python PATH, --models (architectures only), \
                     --layers (primitives only), --screen [--space FILE --preset NAME --parallel N --early-stop], \
                     --curves [--space FILE --preset NAME --parallel N --seed S]"
                ));
            }
        }
    }
    Ok(a)
}

/// The venv's Python, creating the venv and installing torch if needed.
fn python(explicit: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/torch-venv");
    let py = venv.join("bin/python");
    let has_torch = |py: &Path| {
        Command::new(py)
            .args(["-c", "import torch"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if py.exists() && has_torch(&py) {
        return Ok(py);
    }
    eprintln!(
        "creating {} and installing torch from PyPI (once; about 3 GB)",
        venv.display()
    );
    let run = |cmd: &mut Command| -> Result<(), String> {
        let status = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
        status
            .success()
            .then_some(())
            .ok_or(format!("{cmd:?} failed ({status})"))
    };
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(&py).args(["-m", "pip", "install", "--quiet", "torch", "numpy"]))?;
    Ok(py)
}

/// PyTorch's step time in ms for `layers` (one layer when `layer_only`).
fn torch_ms(py: &Path, layers: &str, layer_only: bool, a: &Args) -> Result<(f64, String), String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/torch/models.py");
    let mut cmd = Command::new(py);
    cmd.arg(&script)
        .args(["--layers", layers])
        .args(["--threads", &a.threads.to_string()])
        .args(["--reps", &a.shape.reps.to_string()])
        .args(["--batch", &a.shape.batch.to_string()])
        .args(["--seq", &a.shape.seq.to_string()])
        .args(["--width", &a.shape.d.to_string()])
        .env("OMP_NUM_THREADS", a.threads.to_string());
    if layer_only {
        cmd.arg("--layer-only");
    }
    let out = cmd.output().map_err(|e| format!("{}: {e}", py.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {} --layers {layers:?} failed: {}",
            py.display(),
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim())
        .map_err(|e| format!("unexpected output from {}: {e}: {line}", script.display()))?;
    let ms = v["ms"].as_f64().ok_or(format!("no `ms` in {line}"))?;
    Ok((ms, v["torch"].as_str().unwrap_or("?").to_string()))
}

fn main() {
    mad_search::alloc::keep_freed_memory();
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads)
        .build_global()
    {
        eprintln!("error: cannot size the thread pool: {e}");
        std::process::exit(1);
    }
    let py = match python(a.python.clone()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: no PyTorch to compare with: {e}");
            std::process::exit(1);
        }
    };
    if a.screen {
        if let Err(e) = screen(&a, &py) {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        return;
    }
    let s = a.shape;
    println!(
        "mad-search (Burn 0.21 flex) vs PyTorch: batch {}, length {}, width {}, {} threads each, median of {} after a warm-up",
        s.batch, s.seq, s.d, a.threads, s.reps
    );
    let wanted = |name: &str| a.wants(name);
    let mut version = None;
    let mut row =
        |name: &str, rust_ms: f64, layer_only: bool| match torch_ms(&py, name, layer_only, &a) {
            Ok((ms, v)) => {
                version.get_or_insert(v);
                println!(
                    "{name:<44} {rust_ms:>11.1} {ms:>11.1} {:>8.2}",
                    rust_ms / ms
                );
            }
            Err(e) => println!("{name:<44} {rust_ms:>11.1}  PyTorch failed: {e}"),
        };
    if a.layers {
        println!(
            "\n{:<44} {:>11} {:>11} {:>8}",
            "primitive (one layer, fwd+bwd)", "ours ms", "torch ms", "ratio"
        );
        for &p in Primitive::ALL {
            if wanted(p.name()) {
                let t = layer_step(&Layer::default_for(p), &s);
                row(p.name(), t.as_secs_f64() * 1e3, true);
            }
        }
        // Grouped-query attention is a hyper-parameter, not a primitive:
        // 16 query heads sharing 4 key/value heads.
        if wanted("mh-attention-kv4") {
            let mut gqa = Layer::default_for(Primitive::MhAttention);
            gqa.set_param("kv_heads", ParamValue::Int(4))
                .expect("attention has kv_heads");
            let t = layer_step(&gqa, &s);
            row("mh-attention-kv4", t.as_secs_f64() * 1e3, true);
        }
    }
    if a.models {
        println!(
            "\n{:<44} {:>11} {:>11} {:>8}",
            "architecture (LM, fwd+bwd+AdamW)", "ours ms", "torch ms", "ratio"
        );
        for &layers in ARCHITECTURES {
            if wanted(layers) {
                let spec = ArchSpec::from_layers_str(layers).expect("known names");
                let t = model_step(&spec, &s);
                row(layers, t.as_secs_f64() * 1e3, false);
            }
        }
        // Transformer++ with grouped-query attention (4 key/value heads).
        let gqa = "mh-attention-kv4 swiglu mh-attention-kv4 swiglu";
        if wanted(gqa) {
            let mut spec = ArchSpec::from_layers_str("mh-attention swiglu mh-attention swiglu")
                .expect("known names");
            for l in spec.layers.iter_mut().step_by(2) {
                l.set_param("kv_heads", ParamValue::Int(4))
                    .expect("attention has kv_heads");
            }
            let t = model_step(&spec, &s);
            row(gqa, t.as_secs_f64() * 1e3, false);
        }
    }
    println!(
        "\nratio = ours / PyTorch (below 1: mad-search faster); PyTorch {}",
        version.as_deref().unwrap_or("?")
    );
}

/// The architectures `--curves` runs unless `--only` says otherwise:
/// attention, Hyena, MH Hyena, Mamba and a striped hybrid (issue #15).
const CURVE_ARCHITECTURES: &[&str] = &[
    "mh-attention swiglu mh-attention swiglu",
    "hyena swiglu hyena swiglu",
    "mh-hyena swiglu mh-hyena swiglu",
    "mamba mamba mamba mamba",
    "mh-hyena swiglu mh-attention swiglu",
];

/// One side's learning curve of one task setting: (steps, validation
/// accuracy) after each epoch.
type Curve = Vec<(usize, Scores)>;

/// The first step count at which `curve` reaches `level` by `metric`, or `-`.
fn steps_to(curve: &Curve, metric: Metric, level: f64) -> String {
    curve
        .iter()
        .find(|(_, acc)| acc.of(metric) >= level)
        .map_or("-".into(), |(steps, _)| steps.to_string())
}

/// Prints both sides' curves of every task setting of one architecture, by
/// the stage's `metric`, with the other metric's value at the end.
fn print_curves(ours: &BTreeMap<String, Curve>, torch: &[serde_json::Value], metric: Metric) {
    let other = metric.other();
    println!(
        "  {:<26} {:<5} {:>6} {:>6} {:>6} {:>6}  validation {} after each epoch | {} at the end",
        "task",
        "side",
        "steps",
        "→0.5",
        "→0.9",
        "→0.99",
        metric.name(),
        other.name()
    );
    for run in torch {
        let dir = run["dir"].as_str().unwrap_or("?");
        let task = run["task"].as_str().unwrap_or("?");
        let theirs: Curve = run["curve"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter_map(|p| {
                        let scores = Scores {
                            micro: p["micro"].as_f64()?,
                            macro_: p["macro"].as_f64()?,
                            scored: 0,
                        };
                        Some((p["steps"].as_u64()? as usize, scores))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let empty = Curve::new();
        let mine = ours.get(dir).unwrap_or(&empty);
        for (side, curve) in [("ours", mine), ("torch", &theirs)] {
            let points: Vec<String> = curve
                .iter()
                .map(|(_, a)| format!("{:.3}", a.of(metric)))
                .collect();
            println!(
                "  {:<26} {side:<5} {:>6} {:>6} {:>6} {:>6}  {} | {:.3}",
                if side == "ours" { task } else { "" },
                curve.last().map_or(0, |&(s, _)| s),
                steps_to(curve, metric, 0.5),
                steps_to(curve, metric, 0.9),
                steps_to(curve, metric, 0.99),
                points.join(" "),
                curve.last().map_or(f64::NAN, |(_, a)| a.of(other)),
            );
        }
    }
}

/// Screen evaluations of the paper's architectures, timed on both sides.
fn screen(a: &Args, py: &Path) -> Result<(), String> {
    use mad_search::layers::CpuAutodiff;
    use mad_search::space::{SearchSpace, StageName};
    use mad_search::stages::{StageControl, evaluate, stage_settings};
    use mad_search::train::RunConfig;

    let space = match &a.space {
        Some(path) => SearchSpace::load(path).map_err(|e| e.to_string())?,
        None => SearchSpace::embedded_default(),
    };
    let mut settings = space.preset(&a.preset)?.screen.clone();
    if !a.early_stop {
        // Accuracy never reaches 2 and nothing plateaus: every epoch runs,
        // on both sides.
        settings.early_stop = 2.0;
        settings.patience = None;
        for budget in settings.per_task.values_mut() {
            budget.patience = None;
        }
    }
    let (lr, wd) = match (settings.lr.as_slice(), settings.weight_decay.as_slice()) {
        ([lr], [wd]) => (*lr, *wd),
        _ => return Err("the screen sweeps several optimiser settings: not timed here".into()),
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/screen-data")
        .join(&a.preset);
    let tasks = stage_settings(&settings);
    let mut job_settings = Vec::new();
    for t in &tasks {
        let dir = t.data_dir(&root);
        if !dir.join("test/targets.npy").is_file() {
            let splits = t.generate().map_err(|e| e.to_string())?;
            for (split, d) in [("train", &splits.train), ("test", &splits.test)] {
                d.save_npy(&dir.join(split)).map_err(|e| e.to_string())?;
            }
        }
        job_settings.push(serde_json::json!({
            "dir": t.reference_dir_name(),
            "task": t.task.name(),
            "vocab": t.vocab,
            "model_len": t.model_len(),
            "num_train": t.num_train,
            "num_test": t.num_test,
            "epochs": settings.max_epochs_of(t.task),
            "max_steps": settings.max_steps_of(t.task),
            "patience": settings.patience_of(t.task),
        }));
    }
    let defaults = RunConfig::default();
    let seed = a.seed.unwrap_or(defaults.seed);
    println!(
        "screen of preset `{}`: {} task settings, {} epochs (unless a task says otherwise) of \
         batch {}, early stop {}, {} runs side by side with 1 thread each, on both sides",
        a.preset,
        tasks.len(),
        settings.max_epochs,
        settings.batch_size,
        if a.early_stop { "on" } else { "off" },
        a.parallel
    );
    println!(
        "{:<44} {:>8} {:>8} {:>6} {:>8} {:>8} {:>7} {:>7}",
        "architecture", "ours s", "torch s", "ratio", "ours/h", "torch/h", "ours mi", "torch mi"
    );
    let (mut ours_total, mut torch_total, mut n) = (0.0, 0.0, 0usize);
    let candidates = if a.curves && a.only.is_none() {
        CURVE_ARCHITECTURES
    } else {
        ARCHITECTURES
    };
    for &layers in candidates {
        if !a.wants(layers) {
            continue;
        }
        let spec = ArchSpec::from_layers_str(layers).expect("known names");
        let curves: Mutex<BTreeMap<String, Curve>> = Mutex::default();
        let ctl = StageControl {
            parallel: a.parallel,
            threads: Some(1),
            data: Some(&root),
            ..StageControl::default()
        };
        let t = std::time::Instant::now();
        let r = evaluate::<CpuAutodiff>(
            &spec,
            StageName::Screen,
            &settings,
            seed,
            &Default::default(),
            ctl,
            &|p| {
                let per_epoch = p.setting.num_train.div_ceil(settings.batch_size.max(1));
                let steps = settings
                    .max_steps_of(p.setting.task)
                    .map_or(p.epoch.epoch * per_epoch, |m| {
                        m.min(p.epoch.epoch * per_epoch)
                    });
                let mut c = curves.lock().unwrap_or_else(|e| e.into_inner());
                c.entry(p.setting.reference_dir_name())
                    .or_default()
                    .push((steps, p.epoch.valid));
            },
        )
        .map_err(|e| format!("{layers}: {e}"))?;
        let ours = t.elapsed().as_secs_f64();
        let ours_acc = r.per_setting.iter().map(|s| s.best.micro).sum::<f64>()
            / r.per_setting.len().max(1) as f64;
        let job = serde_json::json!({
            "settings": job_settings,
            "args": {
                "data": root, "layers": layers, "width": spec.d_model, "lr": lr,
                "min_lr": defaults.min_lr, "weight_decay": wd, "betas": settings.betas,
                "epsilon": defaults.epsilon, "embedding_std": settings.embedding_std,
                "batch": settings.batch_size,
                "early_stop": settings.early_stop, "seed": seed,
                "metric": settings.metric.name(),
                "parallel": a.parallel,
            },
        });
        let file = root.join("job.json");
        std::fs::write(&file, job.to_string()).map_err(|e| format!("{}: {e}", file.display()))?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/torch/screen.py");
        let out = Command::new(py)
            .arg(&script)
            .arg("--job")
            .arg(&file)
            .env("OMP_NUM_THREADS", "1")
            .output()
            .map_err(|e| format!("{}: {e}", py.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed on {layers}: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("unexpected output of {}: {e}", script.display()))?;
        let torch = v["wall"]
            .as_f64()
            .ok_or("no `wall` in screen.py's output")?;
        let runs = v["runs"].as_array().cloned().unwrap_or_default();
        let torch_acc =
            runs.iter().filter_map(|r| r["test"].as_f64()).sum::<f64>() / runs.len().max(1) as f64;
        println!(
            "{layers:<44} {ours:>8.1} {torch:>8.1} {:>6.2} {:>8.1} {:>8.1} {ours_acc:>7.3} {torch_acc:>7.3}",
            ours / torch,
            3600.0 / ours,
            3600.0 / torch
        );
        if a.curves {
            print_curves(
                &curves.into_inner().unwrap_or_else(|e| e.into_inner()),
                &runs,
                settings.metric,
            );
        }
        ours_total += ours;
        torch_total += torch;
        n += 1;
    }
    if n > 0 {
        println!(
            "{:<44} {ours_total:>8.1} {torch_total:>8.1} {:>6.2} {:>8.1} {:>8.1}",
            "all (one evaluation of each)",
            ours_total / torch_total,
            3600.0 * n as f64 / ours_total,
            3600.0 * n as f64 / torch_total
        );
        println!(
            "throughput = evaluations per hour at this concurrency; ours / PyTorch throughput = {:.2}",
            torch_total / ours_total
        );
    }
    Ok(())
}
