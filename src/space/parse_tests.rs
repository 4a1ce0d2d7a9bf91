//! Tests of the search-space parser: the shipped spaces, presets, and the
//! errors bad files get.
use super::*;
use crate::genome::ArchSpec;
use crate::space::Metric;

fn space(text: &str) -> Result<SearchSpace, SpaceError> {
    SearchSpace::parse(Path::new("t.toml"), text)
}

const MINIMAL: &str = "[space]\nname = \"t\"\n[model]\nd_model = [128]\nlayers = [4]\n\
    [budget]\nmax_params = 1_000_000\nmax_state = 8192\n\
    [primitives.mh-hyena]\n[primitives.swiglu]\n";

#[test]
fn scale_settings_parse_and_bad_ones_are_named() {
    let s = SearchSpace::embedded_default();
    let tiny = &s.presets["tiny"].scale;
    assert_eq!(tiny.budgets, vec![2e9, 4e9, 8e9]);
    assert_eq!((tiny.seq_len, tiny.batch_size), (32, 8));
    assert_eq!(s.presets["cpu"].scale.target_compute, 1e13);
    assert_eq!(s.presets["paper"].scale, ScaleSettings::default());
    assert_eq!(tiny.overtrain, vec![2.0, 4.0]);
    assert_eq!(tiny.overtrain_base(), 2e9);
    let cpu = &s.presets["cpu"].scale;
    assert_eq!(
        (cpu.overtrain.clone(), cpu.overtrain_base()),
        (vec![4.0, 8.0], 6e10)
    );
    // Without overtrain_budget, the smallest budget's size is overtrained.
    let text = format!(
        "{}\n[presets.extra.scale]\nbudgets = [1e9, 3e9, 2e9]\n",
        crate::space::DEFAULT_SPACE
    );
    let extra = SearchSpace::parse(std::path::Path::new("x.toml"), &text).unwrap();
    assert_eq!(extra.presets["extra"].scale.overtrain_base(), 1e9);
    assert_eq!(s.search.overtrain_top, 3);
    let base = crate::space::DEFAULT_SPACE;
    for (bad, says) in [
        ("budgets = [1e9, 1e9, 2e9]", "three distinct"),
        ("sizes_per_budget = 2", "at least 3 sizes"),
        ("size_spread = 1.0", "above 1"),
        ("lr = 1e-4\nmin_lr = 1e-3", "exceeds lr"),
        ("warmup = 1.5", "[0, 1)"),
        ("epochs = 3", "epochs"),
        ("overtrain = [1.0, 4]", "above 1"),
        ("overtrain = [8, 4]", "increasing multiples"),
        (
            "overtrain_budget = 1e10",
            "expected one of budgets (6e10, 2e11, 6e11)",
        ),
        ("overtrain = \"lots\"", "overtrain"),
    ] {
        let text = format!("{base}\n[presets.extra.scale]\n{bad}\n");
        let e = SearchSpace::parse(std::path::Path::new("x.toml"), &text).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(says) && msg.contains("x.toml"), "{bad}: {msg}");
    }
}

#[test]
fn default_space_parses_with_its_presets() {
    let s = SearchSpace::embedded_default();
    assert_eq!(s.name, "default");
    assert_eq!(s.primitives.len(), 13);
    assert_eq!(s.model.d_model, vec![128]);
    assert_eq!(s.budget.max_state, 4096);
    let tiny = s.preset("tiny").unwrap();
    assert_eq!(tiny.screen.train_examples, Some(256));
    assert_eq!(tiny.screen.lr, vec![1e-3]);
    // Unset fields keep the protocol's values.
    assert_eq!(tiny.screen.betas, [0.9, 0.98]);
    assert_eq!(tiny.mad.grid, Grid::Baseline);
    let paper = s.preset("paper").unwrap();
    assert_eq!(paper.mad, StageSettings::protocol(StageName::Mad));
    assert_eq!(paper.mad.lr.len() * paper.mad.weight_decay.len(), 6);
    let err = s.preset("huge").unwrap_err();
    assert!(err.contains("defines: cpu, paper, tiny"), "{err}");
}

#[test]
fn defaults_fill_optional_sections() {
    let s = space(MINIMAL).unwrap();
    assert_eq!(s.model.norm, vec![Norm::Rms]);
    assert_eq!(s.structure.max_sequence_mixer_kinds, 2);
    assert_eq!(s.search.eta, 3);
    assert_eq!(s.budget.seq_len, 128);
    assert!(s.presets.is_empty());
}

#[test]
fn ranges_and_scalars_expand_to_choices() {
    let text = MINIMAL.replace(
        "[primitives.mh-hyena]",
        "[primitives.mh-hyena]\nfilter_order = { min = 2, max = 4 }\nn_heads = 16",
    );
    let s = space(&text).unwrap();
    let c = &s.primitives[&Primitive::MhHyena];
    assert_eq!(
        c.params["filter_order"],
        vec![ParamValue::Int(2), ParamValue::Int(3), ParamValue::Int(4)]
    );
    assert_eq!(c.params["n_heads"], vec![ParamValue::Int(16)]);
}

#[test]
fn presets_take_per_task_budgets_init_and_patience() {
    let s = SearchSpace::embedded_default();
    let cpu = &s.presets["cpu"].screen;
    assert_eq!(cpu.embedding_std, 1.0);
    assert_eq!(cpu.patience, Some(3));
    assert_eq!(cpu.max_epochs_of(TaskKind::InContextRecall), 10);
    assert_eq!(cpu.max_epochs_of(TaskKind::SelectiveCopying), 8);
    assert_eq!(cpu.max_epochs_of(TaskKind::Memorization), 64);
    assert_eq!(cpu.patience_of(TaskKind::Memorization), Some(16));
    assert_eq!(cpu.train_examples_of(TaskKind::Compression), Some(3200));
    // The protocol keeps its own initialisation and runs every epoch.
    let paper = &s.presets["paper"].screen;
    assert_eq!(paper.embedding_std, crate::space::PROTOCOL_EMBEDDING_STD);
    assert_eq!((paper.patience, paper.per_task.len()), (None, 0));
    // cpu ranks by micro accuracy (its splits are small); the protocol by macro.
    assert_eq!(
        (cpu.metric, s.presets["cpu"].mad.metric, paper.metric),
        (Metric::Micro, Metric::Micro, Metric::Macro)
    );
    let with = |extra: &str| space(&format!("{MINIMAL}[presets.p.screen]\n{extra}"));
    let ok = with("per_task = { CR = { max_steps = 7, train_examples = 9 } }\n").unwrap();
    assert_eq!(ok.presets["p"].screen.metric, Metric::Macro);
    let micro = with("metric = \"micro\"\n").unwrap();
    assert_eq!(micro.presets["p"].screen.metric, Metric::Micro);
    let b = ok.presets["p"].screen.per_task[&TaskKind::InContextRecall];
    assert_eq!(
        (b.max_steps, b.train_examples, b.max_epochs),
        (Some(7), Some(9), None)
    );
    for (extra, want) in [
        (
            "per_task = { XR = { max_epochs = 2 } }",
            "p.screen.per_task.XR: unknown task `XR`",
        ),
        (
            "per_task = { CR = { epochs = 2 } }",
            "per_task.CR.epochs: unknown key",
        ),
        (
            "per_task = { CR = { max_epochs = 0 } }",
            "expected a positive integer, found 0",
        ),
        (
            "per_task = { CR = { max_epochs = 2 }, in-context-recall = { max_epochs = 3 } }",
            "two budgets",
        ),
        (
            "tasks = [\"M\"]\nper_task = { CR = { max_epochs = 2 } }",
            "a task the stage does not run (tasks: memorization)",
        ),
        (
            "embedding_std = 0.0",
            "expected a standard deviation in (0, 10]",
        ),
        ("patience = 0", "expected a positive integer, found 0"),
        (
            "metric = \"f1\"",
            "p.screen.metric: unknown metric `f1`; expected \"macro\" (the protocol's) or \"micro\"",
        ),
        ("metric = 1", "metric: expected a string"),
    ] {
        let err = with(&format!("{extra}\n")).unwrap_err().to_string();
        assert!(err.contains(want), "{extra}: {err}");
        assert!(err.starts_with("t.toml:"), "{err}");
    }
}

#[test]
fn errors_point_at_the_value() {
    let text = MINIMAL.replace("layers = [4]", "layers = [4, 0]");
    let err = space(&text).unwrap_err();
    let at = err.location().unwrap();
    assert_eq!((at.line, at.column), (5, 14));
    assert_eq!(
        err.to_string(),
        "t.toml:5:14: model.layers[1]: expected a positive integer, found 0"
    );
}

#[test]
fn unreachable_primitives_are_warned_about() {
    let text = MINIMAL.replace(
        "[primitives.swiglu]",
        "[primitives.gated-linear-attention]\n[primitives.swiglu]",
    );
    let s = space(&text).unwrap();
    let f = s.feasibility();
    assert_eq!(f.warnings.len(), 1, "{:?}", f.warnings);
    assert!(f.warnings[0].starts_with("primitives.gated-linear-attention: can never appear"));
}

#[test]
fn mamba_only_spaces_take_odd_depths() {
    let text = "[space]\nname = \"m\"\n[model]\nd_model = [64, 128]\nlayers = [3]\n\
        [budget]\nmax_params = 1_000_000\nmax_state = 8192\n[primitives.mamba]\n";
    let s = space(text).unwrap();
    let mut rng = crate::seed::rng(1, &[]);
    let g: ArchSpec = s.sample(&mut rng).unwrap();
    assert_eq!(g.layers_string(), "mamba mamba mamba");
    assert_eq!(s.feasibility().min_params, 3 * (28_032 + 64) + 64);
}

/// The later primitives' parameters in a space file: choices that build
/// are sampled (and admitted), one that cannot build at some combination
/// is an error naming the parameter.
#[test]
fn later_primitives_parse_sample_and_bad_values_are_named() {
    let text = MINIMAL.replace(
        "[primitives.mh-hyena]",
        "[primitives.mh-attention]\nn_heads = [8, 16]\nkv_heads = [2, 4]\n\
         [primitives.mamba2]\nhead_dim = [16, 32]\nd_state = [4]\n\
         [primitives.gated-short-conv]\nshort_conv = [3, 4]\n\
         [primitives.gated-deltanet]\nn_heads = [4, 8]\nexpand_v = [1]\n",
    );
    let s = space(&text).unwrap();
    let mut rng = crate::seed::rng(3, &["later-primitives"]);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..300 {
        let spec = s.sample(&mut rng).unwrap();
        s.admits(&spec).unwrap();
        for l in &spec.layers {
            seen.insert(l.primitive());
            if let crate::genome::Layer::Attention(a) = l {
                assert!(matches!(a.kv_heads, Some(2 | 4)), "{a:?}");
            }
        }
    }
    for p in [
        "mh-attention",
        "mamba2",
        "gated-short-conv",
        "gated-deltanet",
    ] {
        assert!(seen.contains(&p.parse().unwrap()), "{p} never sampled");
    }
    let bad = text.replace("kv_heads = [2, 4]", "kv_heads = [3]");
    let err = space(&bad).unwrap_err().to_string();
    assert!(
        err.contains("kv_heads") && err.contains("divisor of n_heads"),
        "{err}"
    );
    let bad = text.replace("n_heads = [4, 8]", "n_heads = [3]");
    let err = space(&bad).unwrap_err().to_string();
    assert!(
        err.contains("gated-deltanet") && err.contains("n_heads"),
        "{err}"
    );
    let bad = text.replace("head_dim = [16, 32]", "head_dim = [48]");
    let err = space(&bad).unwrap_err().to_string();
    assert!(err.contains("head_dim") && err.contains("d_inner"), "{err}");
}
