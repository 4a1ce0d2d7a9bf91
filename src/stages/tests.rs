use super::*;
use crate::space::SearchSpace;

#[test]
fn presets_expand_to_capped_settings() {
    let space = SearchSpace::embedded_default();
    let tiny = space.preset("tiny").unwrap();
    let screen = stage_settings(&tiny.screen);
    assert_eq!(screen.len(), 6);
    for s in &screen {
        assert!(s.num_train <= 256 && s.num_test == 64);
        assert!(s.seq_len <= 64, "{}", s.reference_dir_name());
        s.validate().unwrap();
    }
    let paper = space.preset("paper").unwrap();
    assert_eq!(stage_settings(&paper.mad).len(), 66);
    assert_eq!(stage_settings(&paper.screen).len(), 6);
}

/// Settings the caps make one are kept once, where they first appear,
/// and every capped setting of the grid is among them.
#[test]
fn capped_settings_that_coincide_run_once() {
    let space = SearchSpace::embedded_default();
    let cpu = &space.preset("cpu").unwrap().mad;
    let kept = stage_settings(cpu);
    let per_task = |t: TaskKind| kept.iter().filter(|s| s.task == t).count();
    // Every task but memorization keeps the protocol's examples: the
    // baseline, three vocabularies, 6,400 to 800 examples (the recall
    // tasks' lengths 256–1,024 and selective copying's 512 and 1,024 → 64:
    // the baseline); noisy recall adds three noise fractions, selective
    // copying's 32–96 copied tokens keep 2n + 2 (66–194), compression's
    // lengths 128 and 256 become its length 64. Memorization: six
    // vocabularies of 256 examples.
    let counts: Vec<usize> = TaskKind::ALL.iter().map(|&t| per_task(t)).collect();
    assert_eq!(counts, vec![8, 8, 11, 11, 9, 6]);
    assert_eq!(kept.len(), 53);
    let names: std::collections::BTreeSet<String> =
        kept.iter().map(TaskSetting::reference_dir_name).collect();
    assert_eq!(names.len(), kept.len(), "names are distinct");
    assert_eq!(setting_keys(cpu).len(), 53);
    for &t in TaskKind::ALL {
        let first = kept.iter().find(|s| s.task == t).unwrap();
        let base = TaskSetting::baseline(t);
        assert_eq!(
            (first.vocab, first.frac_noise),
            (base.vocab, base.frac_noise)
        );
    }
    let mut uncapped = cpu.clone();
    uncapped.max_seq_len = None;
    uncapped.train_examples = None;
    uncapped.per_task.clear();
    assert_eq!(stage_settings(&uncapped).len(), 66);
}

/// The best run of a sweep and the task scores follow the stage's
/// metric: where macro and micro disagree, each metric picks its own.
#[test]
fn the_stage_metric_picks_the_best_run_and_scores_the_task() {
    use crate::train::Outcome;
    let setting = TaskSetting::baseline(TaskKind::NoisyInContextRecall);
    let run = |lr: f64, micro: f64, macro_: f64| SweepRun {
        lr,
        weight_decay: 0.0,
        result: RunResult {
            outcome: Outcome::Completed,
            epochs: 1,
            steps: 1,
            best_epoch: 1,
            valid: Scores::default(),
            test: Scores {
                micro,
                macro_,
                scored: 100,
            },
            train_loss: 0.1,
            seconds: 1.0,
        },
    };
    // The first run predicts a few stray classes: high micro, low macro.
    let runs = vec![run(1e-3, 0.95, 0.70), run(5e-4, 0.88, 0.90)];
    let mut settings = StageSettings::protocol(StageName::Screen);
    // The protocol's metric stays out of records (old ones keep their
    // identity); another is written.
    assert!(!serde_json::to_string(&settings).unwrap().contains("metric"));
    settings.metric = Metric::Micro;
    assert!(
        serde_json::to_string(&settings)
            .unwrap()
            .contains(r#""metric":"micro""#)
    );
    settings.tasks = vec![TaskKind::NoisyInContextRecall];
    // A setting twice (a job per copy, queued before copies merged)
    // counts once in its task's mean.
    let other = TaskSetting {
        vocab: 48,
        ..setting.clone()
    };
    let split = assemble(
        StageName::Mad,
        &settings,
        vec![
            best_of(setting.clone(), vec![run(1e-3, 0.2, 0.2)], Metric::Macro),
            best_of(other.clone(), vec![run(1e-3, 0.8, 0.8)], Metric::Macro),
            best_of(setting.clone(), vec![run(1e-3, 0.2, 0.2)], Metric::Macro),
        ],
        0.0,
    );
    assert_eq!(split.per_setting.len(), 2);
    assert!((split.per_task[&TaskKind::NoisyInContextRecall] - 0.5).abs() < 1e-12);
    for (metric, best, score) in [(Metric::Macro, 0.90, 0.90), (Metric::Micro, 0.95, 0.95)] {
        settings.metric = metric;
        let r = best_of(setting.clone(), runs.clone(), metric);
        assert_eq!(r.best.of(metric), best, "{metric:?}");
        let stage = assemble(StageName::Screen, &settings, vec![r], 0.0);
        assert_eq!(stage.per_task[&TaskKind::NoisyInContextRecall], score);
        assert_eq!(stage.score, score);
    }
}

/// A stage run as one job per setting (the daemon's `mad`) gives the
/// stage's result bit for bit, and a job never runs a setting other
/// than the one it was queued for.
#[test]
fn settings_run_one_by_one_assemble_to_the_whole_stage() {
    use crate::layers::CpuAutodiff;
    let space = SearchSpace::embedded_default();
    let preset = space.preset("tiny").unwrap();
    let settings = &preset.mad;
    let spec = ArchSpec::from_layers_str("mh-attention swiglu").unwrap();
    let device = Default::default();
    let ctl = StageControl::default();
    let whole =
        evaluate::<CpuAutodiff>(&spec, StageName::Mad, settings, 3, &device, ctl, &|_| {}).unwrap();
    let corpus = crate::scale::corpus::Corpus::embedded();
    let keys = stage_parts(StageName::Mad, preset, &spec, &corpus, None).unwrap();
    assert_eq!(keys, setting_keys(settings));
    assert_eq!(keys.len(), whole.per_setting.len());
    let parts: Vec<SettingResult> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            evaluate_setting::<CpuAutodiff>(&spec, settings, i, key, 3, &device, ctl, &|_| {})
                .unwrap()
        })
        .collect();
    let split = assemble(StageName::Mad, settings, parts, 0.0);
    assert_eq!(split.score.to_bits(), whole.score.to_bits());
    assert_eq!(split.per_task, whole.per_task);
    for (a, b) in split.per_setting.iter().zip(&whole.per_setting) {
        assert_eq!(a.best, b.best);
    }
    // A job whose index moved runs the setting its key names.
    let moved =
        evaluate_setting::<CpuAutodiff>(&spec, settings, 0, &keys[1], 3, &device, ctl, &|_| {})
            .unwrap();
    assert_eq!(moved.setting, split.per_setting[1].setting);
    assert_eq!(moved.best, split.per_setting[1].best);
    let wrong = evaluate_setting::<CpuAutodiff>(
        &spec,
        settings,
        0,
        "t-CR_vs-99_no-such-setting",
        3,
        &device,
        ctl,
        &|_| {},
    );
    assert!(
        matches!(&wrong, Err(TrainError::Data(m)) if m.contains("preset changed")),
        "{wrong:?}"
    );
    assert!(
        stage_parts(StageName::Screen, preset, &spec, &corpus, None)
            .unwrap()
            .is_empty()
    );
    let scale = stage_parts(StageName::Scale, preset, &spec, &corpus, None).unwrap();
    assert_eq!(scale.len(), 9, "three budgets × three sizes: {scale:?}");
}
