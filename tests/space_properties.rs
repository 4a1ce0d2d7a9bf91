//! Property tests over thousands of seeds, on the default space and on
//! `search_spaces/hybrid-2026.toml` (deeper, the attention ratio as a
//! gene): everything the sampler, the mutation operators and crossover
//! return satisfies the grammar and the budgets, and genomes survive every
//! serialisation with their id.

use std::sync::OnceLock;

use mad_search::genome::ArchSpec;
use mad_search::space::{Operator, SearchSpace};
use proptest::prelude::*;

/// The default space, and the 2026 space.
fn spaces() -> &'static [SearchSpace; 2] {
    static SPACES: OnceLock<[SearchSpace; 2]> = OnceLock::new();
    SPACES.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/search_spaces/hybrid-2026.toml"
        );
        [
            SearchSpace::embedded_default(),
            SearchSpace::load(std::path::Path::new(path)).unwrap(),
        ]
    })
}

fn space() -> &'static SearchSpace {
    &spaces()[0]
}

fn assert_admitted_in(space: &SearchSpace, spec: &ArchSpec, what: &str) {
    if let Err(why) = space.admits(spec) {
        panic!(
            "{what} `{}` is outside `{}`: {why}",
            spec.compact_string(),
            space.name
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn samples_mutants_and_children_are_admitted(seed in any::<u64>(), which in 0..2usize) {
        let space = &spaces()[which];
        let mut rng = mad_search::seed::rng(seed, &["prop"]);
        let a = space.sample(&mut rng).unwrap();
        assert_admitted_in(space, &a, "sample");
        let (m, op) = space.mutate(&a, &mut rng).unwrap();
        assert_admitted_in(space, &m, op.name());
        prop_assert_ne!(m.arch_id(), a.arch_id());
        prop_assert!(space.mutations().contains(&op));
        let b = space.sample(&mut rng).unwrap();
        match space.crossover(&a, &b, &mut rng) {
            Ok(c) => {
                assert_admitted_in(space, &c, "crossover child");
                prop_assert!(c.arch_id() != a.arch_id() && c.arch_id() != b.arch_id());
            }
            // Refusal is right only when no candidate child is new and admitted.
            Err(_) => {
                for c in space.crossover_children(&a, &b, &mut rng) {
                    let new = c.arch_id() != a.arch_id() && c.arch_id() != b.arch_id();
                    prop_assert!(!new || space.admits(&c).is_err(), "missed child {}", c.compact_string());
                }
            }
        }
    }

    #[test]
    fn genomes_round_trip_with_their_id(seed in any::<u64>(), which in 0..2usize) {
        let mut rng = mad_search::seed::rng(seed, &["roundtrip"]);
        let spec = spaces()[which].sample(&mut rng).unwrap();
        let id = spec.arch_id();
        // The compact form (what `show` prints) reads back to the same model.
        let compact = ArchSpec::from_compact_str(&spec.compact_string()).unwrap();
        prop_assert_eq!(compact.arch_id(), id, "{}", spec.compact_string());
        let json: ArchSpec = serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
        prop_assert_eq!(&json, &spec);
        let toml_text = toml::to_string(&spec).unwrap();
        let from_toml: ArchSpec = toml::from_str(&toml_text).unwrap();
        prop_assert_eq!(&from_toml, &spec);
        prop_assert_eq!(spec.normalized().arch_id(), id);
        // The reference string loses only non-default parameters.
        let back = ArchSpec::from_layers_str(&spec.layers_string()).unwrap();
        prop_assert_eq!(back.layers_string(), spec.layers_string());
        prop_assert_eq!(back.arch_id() == id, spec.is_reference_expressible());
        prop_assert_eq!(ArchSpec::from_short_str(&spec.short_string()).unwrap(), back);
    }

    #[test]
    fn every_operator_keeps_the_grammar(
        seed in any::<u64>(),
        op in 0..Operator::MUTATIONS.len(),
        which in 0..2usize,
    ) {
        let space = &spaces()[which];
        let mut rng = mad_search::seed::rng(seed, &["operator"]);
        let parent = space.sample(&mut rng).unwrap();
        let blocks = parent.blocks().unwrap();
        let op = Operator::MUTATIONS[op];
        if let Some(child) = space.apply(op, &parent, &blocks, &mut rng) {
            // Operators may leave the budgets (mutate() filters those out) but
            // never the block grammar.
            prop_assert!(child.validate().is_ok(), "{op}: {}", child.compact_string());
        }
    }
}

#[test]
fn sampling_is_deterministic_per_seed() {
    let draw = |seed| {
        let mut rng = mad_search::seed::rng(seed, &["det"]);
        (0..20)
            .map(|_| space().sample(&mut rng).unwrap().arch_id())
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(3), draw(3));
    assert_ne!(draw(3), draw(4));
}

#[test]
fn crossover_mostly_succeeds_on_the_default_space() {
    let mut rng = mad_search::seed::rng(5, &["cross-rate"]);
    let ok = (0..500)
        .filter(|_| {
            let a = space().sample(&mut rng).unwrap();
            let b = space().sample(&mut rng).unwrap();
            space().crossover(&a, &b, &mut rng).is_ok()
        })
        .count();
    assert!(
        ok >= 300,
        "only {ok} of 500 parent pairs had a crossover child"
    );
}

#[test]
fn every_mutation_operator_is_reachable() {
    // The default space has one depth (4 layers), so inserting or deleting a
    // block alone never stays admitted, and it places attention freely (no
    // restripe or move-attention among its operators); every other operator
    // must occur. The 2026 space has depths 4–12 and the attention ratio:
    // all of them must.
    let expected = [
        vec![
            Operator::ReplaceMixer,
            Operator::ChangeParam,
            Operator::SwapBlocks,
            Operator::Stripe,
            Operator::SwapKind,
        ],
        Operator::MUTATIONS.to_vec(),
    ];
    for (space, expected) in spaces().iter().zip(expected) {
        let mut seen = std::collections::BTreeSet::new();
        let mut rng = mad_search::seed::rng(11, &["reach"]);
        for _ in 0..2000 {
            let a = space.sample(&mut rng).unwrap();
            let (_, op) = space.mutate(&a, &mut rng).unwrap();
            seen.insert(op);
        }
        for op in expected {
            assert!(
                seen.contains(&op),
                "{}: {op} never produced an admitted child: {seen:?}",
                space.name
            );
        }
    }
}
