//! Tests of one training run: schedule, learning, early stop and patience,
//! divergence, checkpoints and resume.
use super::*;
use crate::layers::CpuAutodiff;

fn tiny_recall() -> (TaskSetting, Splits) {
    let mut s = TaskSetting::baseline(TaskKind::InContextRecall);
    s.seq_len = 32;
    s.num_train = 1024;
    s.num_test = 256;
    s.num_valid = 256;
    let splits = s.generate().unwrap();
    (s, splits)
}

#[test]
fn cosine_schedule_runs_from_lr_to_the_floor() {
    let cfg = RunConfig {
        lr: 1e-3,
        max_epochs: 10,
        ..RunConfig::default()
    };
    assert_eq!(cosine_lr(&cfg, 0), 1e-3);
    assert!((cosine_lr(&cfg, 5) - (1e-3 + 1e-6) / 2.0).abs() < 1e-12);
    assert!((cosine_lr(&cfg, 10) - 1e-6).abs() < 1e-15);
}

#[test]
fn a_step_cap_shortens_the_epochs_progress_counts() {
    // 100 steps an epoch at 3,200 rows, 25 at 800, 7 (the last short) at
    // 200: 2,400 steps are 24, 96 and 343 epochs, the last over the cap of
    // 200, which holds.
    assert_eq!(epoch_cap(200, Some(2400), 3200, 32), 24);
    assert_eq!(epoch_cap(200, Some(2400), 800, 32), 96);
    assert_eq!(epoch_cap(200, Some(2400), 200, 32), 200);
    assert_eq!(epoch_cap(200, Some(1000), 200, 32), 143);
    assert_eq!(epoch_cap(8, None, 800, 32), 8);
    assert_eq!(
        epoch_cap(8, Some(5), 0, 32),
        8,
        "no rows: no step, every epoch"
    );
}

#[test]
fn compression_trains_the_autoencoder() {
    let spec = ArchSpec::from_layers_str("hyena swiglu").unwrap();
    assert_eq!(
        spec_for(&spec, TaskKind::Compression).backbone,
        Backbone::AutoEncoder
    );
    assert_eq!(
        spec_for(&spec, TaskKind::Memorization).backbone,
        Backbone::LanguageModel
    );
}

#[test]
fn a_short_run_learns_recall_and_reports_every_epoch() {
    let (setting, splits) = tiny_recall();
    let mut spec = ArchSpec::from_layers_str("mh-hyena swiglu mh-hyena swiglu").unwrap();
    spec.d_model = 64;
    let cfg = RunConfig {
        lr: 3e-3,
        batch_size: 64,
        max_epochs: 12,
        ..RunConfig::default()
    };
    let mut reports = Vec::new();
    let r = run::<CpuAutodiff>(
        &spec,
        &setting,
        &splits,
        &cfg,
        &Default::default(),
        RunControl::default(),
        &mut |e| reports.push(e.clone()),
    )
    .unwrap();
    assert_eq!(reports.len(), r.epochs);
    assert_eq!(r.steps, r.epochs * 16);
    assert!(r.train_loss.is_finite());
    // 8 values: chance is 1/8 (measured: 0.445 after 12 epochs).
    assert!(
        r.test.micro > 0.3,
        "test accuracy {:?} after {} epochs",
        r.test,
        r.epochs
    );
    assert!(r.test.scored > 0);
}

#[test]
fn step_cap_stops_the_run() {
    let (setting, splits) = tiny_recall();
    let mut spec = ArchSpec::from_layers_str("mh-attention swiglu").unwrap();
    spec.d_model = 32;
    let cfg = RunConfig {
        batch_size: 64,
        max_epochs: 5,
        max_steps: Some(20),
        ..RunConfig::default()
    };
    let mut shown = Vec::new();
    let r = run::<CpuAutodiff>(
        &spec,
        &setting,
        &splits,
        &cfg,
        &Default::default(),
        RunControl::default(),
        &mut |e| shown.push((e.epoch, e.max_epochs)),
    )
    .unwrap();
    assert_eq!(r.steps, 20);
    assert_eq!(r.epochs, 2);
    // 16 steps an epoch: the cap ends the run in its second epoch, and
    // progress says so (not "of 5").
    assert_eq!(shown, vec![(1, 2), (2, 2)]);
    assert_eq!(r.outcome, Outcome::Completed);
    // Same seed, same run.
    let again = run::<CpuAutodiff>(
        &spec,
        &setting,
        &splits,
        &cfg,
        &Default::default(),
        RunControl::default(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(
        (again.test, again.valid, again.train_loss),
        (r.test, r.valid, r.train_loss)
    );
}

#[test]
fn losses_read_in_batches_give_the_same_run_and_the_same_divergence_step() {
    let (setting, splits) = tiny_recall();
    let mut spec = ArchSpec::from_layers_str("mh-attention swiglu").unwrap();
    spec.d_model = 32;
    let dev = Default::default();
    let go = |cfg: &RunConfig, every: Option<usize>| {
        let ctl = RunControl {
            loss_read_every: every,
            ..RunControl::default()
        };
        run::<CpuAutodiff>(&spec, &setting, &splits, cfg, &dev, ctl, &mut |_| {}).unwrap()
    };
    // 16 steps per epoch at batch 64, 3 epochs; reads every 5 steps
    // straddle the epochs.
    let cfg = RunConfig {
        lr: 3e-3,
        batch_size: 64,
        max_epochs: 3,
        ..RunConfig::default()
    };
    same(&go(&cfg, Some(5)), &go(&cfg, None));
    // A learning rate that overflows: the same divergence step whether
    // the losses are read each step or 16 at a time.
    let wild = RunConfig {
        lr: 1e30,
        ..cfg.clone()
    };
    let each = go(&wild, None);
    let batched = go(&wild, Some(16));
    let Outcome::Diverged { step } = each.outcome else {
        panic!("lr 1e30 did not diverge: {:?}", each.outcome);
    };
    assert_eq!(batched.outcome, Outcome::Diverged { step });
    assert_eq!((batched.steps, batched.epochs), (each.steps, each.epochs));
    assert_eq!(batched.steps, step);
}

/// Everything but wall time.
fn same(a: &RunResult, b: &RunResult) {
    assert_eq!(
        (&a.outcome, a.epochs, a.steps, a.best_epoch),
        (&b.outcome, b.epochs, b.steps, b.best_epoch)
    );
    assert_eq!((a.valid, a.test), (b.valid, b.test));
    assert_eq!(a.train_loss.to_bits(), b.train_loss.to_bits());
}

#[test]
fn a_stopped_run_resumes_to_the_uninterrupted_result() {
    let (setting, splits) = tiny_recall();
    let mut spec = ArchSpec::from_layers_str("mh-hyena moe-mlp mh-attention swiglu").unwrap();
    spec.d_model = 32;
    let cfg = RunConfig {
        lr: 3e-3,
        weight_decay: 0.1,
        batch_size: 128,
        max_epochs: 4,
        ..RunConfig::default()
    };
    let dev = Default::default();
    let whole = run::<CpuAutodiff>(
        &spec,
        &setting,
        &splits,
        &cfg,
        &dev,
        RunControl::default(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(whole.steps, 32);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.ckpt");
    // Stop twice: mid-epoch (one step after epoch 1's report), then at
    // the end of epoch 3's batches, before its validation.
    let stop = AtomicBool::new(false);
    let ctl = RunControl {
        checkpoint: Some((&path, 3)),
        stop: Some(&stop),
        ..RunControl::default()
    };
    let mut seen = Vec::new();
    let err = run::<CpuAutodiff>(&spec, &setting, &splits, &cfg, &dev, ctl, &mut |e| {
        seen.push(e.epoch);
        stop.store(true, Ordering::Relaxed);
    })
    .unwrap_err();
    assert!(matches!(err, TrainError::Interrupted { steps: 9 }), "{err}");
    assert_eq!(seen, [1]);
    let c = Checkpoint::read(&path).unwrap().unwrap();
    assert_eq!(
        (c.progress.epoch, c.progress.batch, c.progress.steps),
        (1, 1, 9)
    );
    stop.store(false, Ordering::Relaxed);
    let stop_at_24 = AtomicBool::new(false);
    let ctl = RunControl {
        checkpoint: Some((&path, 3)),
        stop: Some(&stop_at_24),
        ..RunControl::default()
    };
    let err = run::<CpuAutodiff>(&spec, &setting, &splits, &cfg, &dev, ctl, &mut |e| {
        seen.push(e.epoch);
        if e.epoch == 2 {
            stop_at_24.store(true, Ordering::Relaxed);
        }
    })
    .unwrap_err();
    assert!(
        matches!(err, TrainError::Interrupted { steps: 17 }),
        "{err}"
    );
    let ctl = RunControl {
        checkpoint: Some((&path, 3)),
        stop: None,
        ..RunControl::default()
    };
    let resumed = run::<CpuAutodiff>(&spec, &setting, &splits, &cfg, &dev, ctl, &mut |e| {
        seen.push(e.epoch)
    })
    .unwrap();
    assert_eq!(seen, [1, 2, 3, 4]);
    same(&resumed, &whole);
    // A checkpoint of another run is not resumed.
    let other = RunConfig {
        lr: 1e-3,
        ..cfg.clone()
    };
    let fresh =
        run::<CpuAutodiff>(&spec, &setting, &splits, &other, &dev, ctl, &mut |_| {}).unwrap();
    let plain = run::<CpuAutodiff>(
        &spec,
        &setting,
        &splits,
        &other,
        &dev,
        RunControl::default(),
        &mut |_| {},
    )
    .unwrap();
    same(&fresh, &plain);
    // A damaged checkpoint is ignored: the run starts afresh.
    std::fs::write(&path, b"garbage").unwrap();
    let again = run::<CpuAutodiff>(&spec, &setting, &splits, &cfg, &dev, ctl, &mut |_| {}).unwrap();
    same(&again, &whole);
}

/// A run that stops improving stops after `patience` epochs and reports
/// its best epoch; the protocol's defaults stay out of the fingerprint
/// (runs from before these fields keep their identity).
#[test]
fn patience_stops_a_stalled_run_and_defaults_keep_the_fingerprint() {
    let (setting, splits) = tiny_recall();
    let spec = ArchSpec::from_layers_str("hyena swiglu").unwrap();
    let cfg = RunConfig {
        lr: 1e-12,
        batch_size: 256,
        max_epochs: 6,
        patience: Some(2),
        ..RunConfig::default()
    };
    let mut seen = Vec::new();
    let r = run::<CpuAutodiff>(
        &spec,
        &setting,
        &splits,
        &cfg,
        &Default::default(),
        RunControl::default(),
        &mut |e| seen.push(e.valid.macro_),
    )
    .unwrap();
    // No learning: epoch 1 stays best (later ties are not improvements).
    assert_eq!(r.outcome, Outcome::Plateaued, "{seen:?}");
    assert_eq!((r.epochs, r.best_epoch), (3, 1));
    let json = serde_json::to_string(&RunConfig::default()).unwrap();
    assert!(
        !json.contains("embedding_std") && !json.contains("patience") && !json.contains("metric"),
        "{json}"
    );
    let micro = RunConfig {
        metric: Metric::Micro,
        ..RunConfig::default()
    };
    assert_ne!(
        fingerprint(&spec, &setting, &micro),
        fingerprint(&spec, &setting, &RunConfig::default())
    );
    let with = RunConfig {
        embedding_std: 1.0,
        ..RunConfig::default()
    };
    assert_ne!(
        fingerprint(&spec, &setting, &with),
        fingerprint(&spec, &setting, &RunConfig::default())
    );
    let back: RunConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, RunConfig::default());
}

/// A diverged run's result (NaN training loss) reads back from JSON.
#[test]
fn a_nan_training_loss_round_trips_through_json() {
    let r = RunResult {
        outcome: Outcome::Diverged { step: 3 },
        epochs: 1,
        steps: 3,
        best_epoch: 0,
        valid: Scores::default(),
        test: Scores::default(),
        train_loss: f64::NAN,
        seconds: 1.0,
    };
    let json = serde_json::to_string(&r).unwrap();
    assert!(json.contains("\"train_loss\":null"), "{json}");
    let back: RunResult = serde_json::from_str(&json).unwrap();
    assert!(back.train_loss.is_nan());
    assert_eq!(back.outcome, r.outcome);
    let finite = RunResult {
        train_loss: 0.25,
        ..r
    };
    let back: RunResult = serde_json::from_str(&serde_json::to_string(&finite).unwrap()).unwrap();
    assert_eq!(back.train_loss, 0.25);
}

/// The embedding's initial spread follows the option (protocol 0.02).
#[test]
fn embedding_std_sets_the_initial_spread() {
    let spec = ArchSpec::from_layers_str("hyena swiglu").unwrap();
    let ctx = Context {
        vocab: 64,
        seq_len: 16,
    };
    let dev = Default::default();
    let std_of = |std: f64| {
        let m =
            Model::<CpuAutodiff>::with_init(&spec, ctx, 3, ModelInit { embedding_std: std }, &dev)
                .unwrap();
        let w: Vec<f32> = m.embedding.weight.val().into_data().to_vec().unwrap();
        let n = w.len() as f64;
        (w.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / n).sqrt()
    };
    assert!((std_of(0.02) / 0.02 - 1.0).abs() < 0.05);
    assert!((std_of(1.0) - 1.0).abs() < 0.05);
}

/// The test split is scored on the best epoch's weights, not the last
/// epoch's: with the test split as validation split, the test scores equal
/// the best epoch's validation scores exactly even though later epochs
/// scored worse (a snapshot that training mutated would score as the last).
/// The best epoch is the best by the run's metric.
#[test]
fn the_test_split_is_scored_on_the_best_epochs_weights() {
    let (setting, mut splits) = tiny_recall();
    splits.valid = splits.test.clone();
    let mut spec = ArchSpec::from_layers_str("hyena swiglu").unwrap();
    spec.d_model = 32;
    for metric in [Metric::Macro, Metric::Micro] {
        // A learning rate far too high: accuracy climbs, then falls. Which
        // rate shows it depends on the kernels' rounding, so the first of a
        // few that ends below its best is the one checked.
        let attempt = |lr: f64| {
            let cfg = RunConfig {
                lr,
                batch_size: 64,
                max_epochs: 12,
                patience: Some(2),
                metric,
                ..RunConfig::default()
            };
            let mut seen = Vec::new();
            let r = run::<CpuAutodiff>(
                &spec,
                &setting,
                &splits,
                &cfg,
                &Default::default(),
                RunControl::default(),
                &mut |e| seen.push(e.valid),
            )
            .unwrap();
            (r, seen)
        };
        let mut tried = Vec::new();
        let found = [0.3, 0.5, 0.2, 1.0].into_iter().find_map(|lr| {
            let (r, seen) = attempt(lr);
            let (best, last) = (seen[r.best_epoch - 1], seen[seen.len() - 1]);
            let falls = r.best_epoch < r.epochs && last.of(metric) < best.of(metric);
            tried.push((lr, seen.clone()));
            falls.then_some((r, seen))
        });
        let Some((r, seen)) = found else {
            panic!(
                "{metric:?}: no learning rate made the run end below its best, \
                 which this test needs to mean anything: {tried:?}"
            );
        };
        let best = seen[r.best_epoch - 1];
        assert!(
            seen.iter().all(|s| s.of(metric) <= best.of(metric)),
            "{metric:?}: epoch {} is not the best: {seen:?}",
            r.best_epoch
        );
        assert_eq!(r.valid, best);
        assert_eq!(r.test, best, "{metric:?}: epochs {seen:?}");
    }
}

/// The best epoch is the best by the run's metric: an epoch with more hits
/// but a stray predicted class improves on micro, not on macro; a tie is
/// not an improvement.
#[test]
fn the_best_epoch_is_chosen_by_the_runs_metric() {
    let scores = |micro: f64, macro_: f64| Scores {
        micro,
        macro_,
        scored: 100,
    };
    let best = scores(0.90, 0.90);
    let stray = scores(0.95, 0.80);
    assert!(!improves(&stray, Some(&best), Metric::Macro));
    assert!(improves(&stray, Some(&best), Metric::Micro));
    assert!(improves(&best, Some(&stray), Metric::Macro));
    assert!(!improves(&best, Some(&stray), Metric::Micro));
    assert!(!improves(&best, Some(&best), Metric::Micro));
    assert!(improves(&stray, None, Metric::Macro));
}
