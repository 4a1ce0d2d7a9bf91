//! Invariants of every task generator (mad-protocol §1).

use std::collections::HashMap;

use super::{IGNORE, TaskKind, TaskSetting};

fn small(task: TaskKind, n: usize) -> TaskSetting {
    let mut s = TaskSetting::baseline(task);
    s.num_train = n;
    s.num_test = n;
    s.num_valid = n;
    s
}

#[test]
fn reference_directory_names() {
    assert_eq!(
        TaskSetting::baseline(TaskKind::InContextRecall).reference_dir_name(),
        "t-CR_vs-16_sl-128_ntr-12800_nte-1280_km-1_vm-1_mq-1_fn-0#0_nvs-0_ntc-0_s-12345"
    );
    assert!(
        TaskSetting::baseline(TaskKind::NoisyInContextRecall)
            .reference_dir_name()
            .contains("_fn-0#2_nvs-16_")
    );
}

#[test]
fn generation_is_deterministic_and_splits_differ() {
    for &task in TaskKind::ALL {
        let s = small(task, 20);
        let a = s.generate().unwrap();
        assert_eq!(a, s.generate().unwrap(), "{task}");
        assert_ne!(a.test.inputs, a.valid.inputs, "{task}");
        let mut other = s.clone();
        other.seed += 1;
        assert_ne!(
            a.train.inputs,
            other.generate().unwrap().train.inputs,
            "{task}"
        );
        for d in [&a.train, &a.test, &a.valid] {
            assert_eq!(d.inputs.len(), d.n * s.model_len(), "{task}");
            assert!(
                d.inputs.iter().all(|&t| t >= 0 && (t as usize) < s.vocab),
                "{task}"
            );
            assert!(
                d.targets
                    .iter()
                    .all(|&t| t == IGNORE || (t >= 0 && (t as usize) < s.vocab)),
                "{task}"
            );
        }
    }
}

#[test]
fn recall_values_are_consistent_and_only_repeats_are_scored() {
    let s = small(TaskKind::InContextRecall, 200);
    let splits = s.generate().unwrap();
    let half = (s.vocab / 2) as i64;
    for i in 0..splits.test.n {
        let (x, y) = splits.test.row(i);
        let mut map: HashMap<i64, i64> = HashMap::new();
        let mut scored = 0;
        for p in (0..x.len()).step_by(2) {
            let key = x[p];
            assert!(key < half, "keys come first in each pair");
            let known = map.get(&key).copied();
            if p + 1 < x.len() {
                let value = x[p + 1];
                assert!(value >= half);
                if let Some(v) = known {
                    assert_eq!(v, value, "a key keeps its value within a sequence");
                }
                map.insert(key, value);
            }
            // Test targets: the key's value at the key position, iff seen before.
            match known {
                Some(v) => {
                    assert_eq!(y[p], v);
                    scored += 1;
                }
                None => assert_eq!(y[p], IGNORE),
            }
            if p + 1 < x.len() {
                assert_eq!(
                    y[p + 1],
                    IGNORE,
                    "value positions are not scored at test time"
                );
            }
        }
        assert!(scored >= 1, "the probe is always scored");
    }
    // Training targets are the next-token shift.
    for i in 0..splits.train.n {
        let (x, y) = splits.train.row(i);
        assert_eq!(&y[..y.len() - 1], &x[1..]);
    }
}

#[test]
fn noisy_recall_noise_fraction_is_as_asked() {
    let mut s = small(TaskKind::NoisyInContextRecall, 10_000);
    s.num_test = 0;
    s.num_valid = 0;
    let d = s.generate().unwrap().train;
    let ns = (s.vocab - s.noise_vocab) as i64;
    let slots = s.seq_len / 2 - 1; // the final probe slot is never noise
    let (mut noise, mut total) = (0usize, 0usize);
    for i in 0..d.n {
        let (x, _) = d.row(i);
        for slot in 0..slots {
            let (a, b) = (x[2 * slot], x[2 * slot + 1]);
            assert_eq!(a >= ns, b >= ns, "noise comes in whole slots");
            noise += usize::from(a >= ns);
            total += 1;
        }
    }
    // One slot per sequence is forced real: expected 0.2 · (slots − 1) / slots.
    let expected = 0.2 * (slots - 1) as f64 / slots as f64;
    let got = noise as f64 / total as f64;
    assert!(
        (got - expected).abs() < 0.005,
        "noise fraction {got:.4}, expected {expected:.4}"
    );
}

/// Lengths of the maximal runs of key tokens in a sequence (pads excluded).
fn key_runs(x: &[i64], key_hi: i64) -> Vec<usize> {
    let mut runs = Vec::new();
    let mut run = 0;
    for &t in x {
        if t < key_hi {
            run += 1;
        } else if run > 0 {
            runs.push(run);
            run = 0;
        }
    }
    if run > 0 {
        runs.push(run);
    }
    runs
}

#[test]
fn fuzzy_test_keys_have_the_largest_motif() {
    let s = small(TaskKind::FuzzyInContextRecall, 300);
    let splits = s.generate().unwrap();
    let key_hi = ((s.vocab - 1) / 2) as i64;
    let mut train_sizes = std::collections::BTreeSet::new();
    for i in 0..splits.test.n {
        let (x, y) = splits.test.row(i);
        assert!(key_runs(x, key_hi).iter().all(|&r| r == s.k_motif), "{x:?}");
        // The probe's value is scored at the end.
        assert_ne!(y[y.len() - 1], IGNORE);
    }
    for i in 0..splits.train.n {
        train_sizes.extend(key_runs(splits.train.row(i).0, key_hi));
    }
    assert_eq!(train_sizes.into_iter().collect::<Vec<_>>(), vec![1, 2, 3]);
}

#[test]
fn selective_copying_targets_the_content_in_order() {
    let s = small(TaskKind::SelectiveCopying, 200);
    let d = s.generate().unwrap().test;
    let (n, blank, copy) = (s.tokens_to_copy, (s.vocab - 2) as i64, (s.vocab - 1) as i64);
    for i in 0..d.n {
        let (x, y) = d.row(i);
        let t = x.len();
        assert_eq!(x[t - n - 1], copy);
        assert!(x[t - n..].iter().all(|&b| b == blank));
        let content: Vec<i64> = x[..t - n - 1]
            .iter()
            .copied()
            .filter(|&c| c != blank)
            .collect();
        assert_eq!(content.len(), n);
        assert_ne!(x[t - n - 2], blank, "no blank after the last content token");
        assert_eq!(&y[t - n..], &content[..]);
        assert!(y[..t - n].iter().all(|&v| v == IGNORE));
    }
}

#[test]
fn compression_targets_equal_inputs() {
    let s = small(TaskKind::Compression, 50);
    let d = s.generate().unwrap().train;
    assert_eq!(d.inputs, d.targets);
    for i in 0..d.n {
        assert_eq!(*d.row(i).0.last().unwrap(), (s.vocab - 1) as i64);
    }
}

#[test]
fn memorization_uses_one_map_everywhere() {
    let s = small(TaskKind::Memorization, 100);
    let splits = s.generate().unwrap();
    let insert = (s.vocab - 1) as i64;
    let mut map: HashMap<i64, i64> = HashMap::new();
    for d in [&splits.train, &splits.test] {
        for i in 0..d.n {
            let (x, y) = d.row(i);
            for p in (0..x.len()).step_by(2) {
                assert_eq!(x[p + 1], insert);
                assert_eq!(y[p], IGNORE);
                assert_eq!(
                    *map.entry(x[p]).or_insert(y[p + 1]),
                    y[p + 1],
                    "key {}",
                    x[p]
                );
            }
        }
    }
    // 127 keys at vocab 256, each with a distinct value.
    let values: std::collections::HashSet<_> = map.values().collect();
    assert_eq!(values.len(), map.len());
    assert!(map.len() > 120);
}

#[test]
fn bad_settings_are_refused() {
    let mut s = TaskSetting::baseline(TaskKind::SelectiveCopying);
    s.tokens_to_copy = 200;
    assert!(
        s.generate()
            .unwrap_err()
            .contains("seq_len > 2·tokens_to_copy + 1")
    );
    let mut r = TaskSetting::baseline(TaskKind::InContextRecall);
    r.seq_len = 101;
    assert!(r.generate().unwrap_err().contains("must be even"));
}
