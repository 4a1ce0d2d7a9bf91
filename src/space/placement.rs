//! The attention ratio as a gene (`structure.attention_every`): which blocks
//! are global softmax attention. The sampler places them every k-th block
//! from a drawn phase; three mutations edit the placement: `restripe`
//! (another allowed ratio), `move-attention` (one attention block trades
//! places with another block) and `swap-kind` (every block of one
//! non-attention mixer becomes another kind, positions kept).

use rand::{Rng, RngExt};

use super::SearchSpace;
use super::sample::{pick, pick_weighted};
use crate::genome::{ArchSpec, Block, Layer, Primitive, Role};

/// Whether a block's sequence mixer is global attention.
pub(super) fn is_attention(block: &Block) -> bool {
    block.sequence_mixer().primitive().is_global_attention()
}

/// Which blocks of a model must be global attention while it is drawn.
#[derive(Clone, Copy, Debug)]
pub(super) struct Pattern {
    every: usize,
    phase: usize,
}

impl Pattern {
    /// Whether block `i` is attention (`Some(false)` for every block at `k = 0`).
    pub(super) fn at(self, i: usize) -> bool {
        self.every > 0 && i % self.every == self.phase
    }
}

impl SearchSpace {
    /// A ratio `k` of the structure's list and a phase in `0..k`; `None`
    /// when the space leaves placement free.
    pub(super) fn draw_pattern<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<Pattern> {
        let ks = self.structure.attention_every.as_ref()?;
        let every = *pick(rng, ks);
        let phase = if every > 0 {
            rng.random_range(0..every)
        } else {
            0
        };
        Some(Pattern { every, phase })
    }

    /// The weighted primitives of `role` (restricted to `only`) whose
    /// global-attention class is `attention` (any class for `None`).
    pub(super) fn weighted_class(
        &self,
        role: Role,
        only: Option<&[Primitive]>,
        attention: Option<bool>,
    ) -> Vec<(Primitive, f64)> {
        self.weighted(role, only)
            .into_iter()
            .filter(|(p, _)| attention.is_none_or(|a| p.is_global_attention() == a))
            .collect()
    }

    /// Another ratio: block positions of a periodic pattern for a different
    /// allowed number of attention blocks, each block switched to or from
    /// attention with a mixer the model already has (drawn if it has none).
    pub(super) fn restripe<R: Rng + ?Sized>(
        &self,
        parent: &ArchSpec,
        blocks: &[Block],
        rng: &mut R,
    ) -> Option<ArchSpec> {
        let ks = self.structure.attention_every.as_ref()?;
        let n = blocks.len();
        let now = blocks.iter().filter(|b| is_attention(b)).count();
        let others: Vec<usize> = ks
            .iter()
            .copied()
            .filter(|&k| n.checked_div(k).unwrap_or(0) != now)
            .collect();
        if others.is_empty() {
            return None;
        }
        let every = *pick(rng, &others);
        // Block i is attention when i % k = phase: ⌊n/k⌋ + 1 blocks for a
        // phase below n % k, exactly ⌊n/k⌋ from there on.
        let phase = if every == 0 {
            0
        } else {
            rng.random_range(n % every..every)
        };
        let pattern = Pattern { every, phase };
        let attention = self.model_or_drawn(blocks, true, rng)?;
        let other = self.model_or_drawn(blocks, false, rng)?;
        let channel = self.channel_for(blocks, rng);
        let out: Option<Vec<Block>> = blocks
            .iter()
            .enumerate()
            .map(|(i, b)| match (pattern.at(i), is_attention(b)) {
                (true, false) => Some(Block::Pair(
                    attention.clone(),
                    keep_channel(b, channel.as_ref())?,
                )),
                (false, true) => as_block(other.clone(), keep_channel(b, channel.as_ref())),
                _ => Some(b.clone()),
            })
            .collect();
        Some(parent.with_blocks(&out?))
    }

    /// One attention block and one other block trade places.
    pub(super) fn move_attention<R: Rng + ?Sized>(
        &self,
        parent: &ArchSpec,
        blocks: &[Block],
        rng: &mut R,
    ) -> Option<ArchSpec> {
        let (at, rest): (Vec<usize>, Vec<usize>) =
            (0..blocks.len()).partition(|&i| is_attention(&blocks[i]));
        if at.is_empty() || rest.is_empty() {
            return None;
        }
        let (i, j) = (*pick(rng, &at), *pick(rng, &rest));
        let mut b = blocks.to_vec();
        b.swap(i, j);
        Some(parent.with_blocks(&b))
    }

    /// Every block of one sequence-mixer kind becomes another kind of the
    /// same attention class (one freshly drawn layer for all of them),
    /// positions kept; a fused kind and a pair's mixer convert into each
    /// other (the pair takes the model's channel mixer).
    pub(super) fn swap_kind<R: Rng + ?Sized>(
        &self,
        parent: &ArchSpec,
        blocks: &[Block],
        rng: &mut R,
    ) -> Option<ArchSpec> {
        let kinds = self.kinds_of(blocks);
        let old = *pick(rng, &kinds);
        let class = Some(old.is_global_attention());
        let mut options = self.weighted_class(Role::Sequence, None, class);
        options.extend(self.weighted_class(Role::Fused, None, class));
        options.retain(|(p, _)| !kinds.contains(p));
        let new = pick_weighted(rng, &options)?;
        let layer = self.draw_layer(new, rng);
        let channel = self.channel_for(blocks, rng);
        let out: Option<Vec<Block>> = blocks
            .iter()
            .map(|b| {
                if b.sequence_mixer().primitive() == old {
                    as_block(layer.clone(), keep_channel(b, channel.as_ref()))
                } else {
                    Some(b.clone())
                }
            })
            .collect();
        Some(parent.with_blocks(&out?))
    }

    /// A sequence mixer of the class `attention` from the model (its most
    /// frequent one), else drawn from the space.
    fn model_or_drawn<R: Rng + ?Sized>(
        &self,
        blocks: &[Block],
        attention: bool,
        rng: &mut R,
    ) -> Option<Layer> {
        let mut seen: Vec<(&Layer, usize)> = Vec::new();
        for b in blocks.iter().filter(|b| is_attention(b) == attention) {
            let l = b.sequence_mixer();
            match seen.iter_mut().find(|(s, _)| *s == l) {
                Some((_, n)) => *n += 1,
                None => seen.push((l, 1)),
            }
        }
        if let Some((l, _)) = seen.iter().max_by_key(|(_, n)| *n) {
            return Some((*l).clone());
        }
        let mut options = self.weighted_class(Role::Sequence, None, Some(attention));
        if !attention {
            options.extend(self.weighted(Role::Fused, None));
        }
        let p = pick_weighted(rng, &options)?;
        Some(self.draw_layer(p, rng))
    }

    /// The channel mixer a new pair takes: the model's (the first pair's),
    /// else one drawn from the space.
    fn channel_for<R: Rng + ?Sized>(&self, blocks: &[Block], rng: &mut R) -> Option<Layer> {
        if let Some(c) = blocks.iter().find_map(|b| match b {
            Block::Pair(_, c) => Some(c.clone()),
            Block::Fused(_) => None,
        }) {
            return Some(c);
        }
        let p = pick_weighted(rng, &self.weighted(Role::Channel, None))?;
        Some(self.draw_layer(p, rng))
    }
}

/// The block's own channel mixer if it has one, else `fallback`.
fn keep_channel(block: &Block, fallback: Option<&Layer>) -> Option<Layer> {
    match block {
        Block::Pair(_, c) => Some(c.clone()),
        Block::Fused(_) => fallback.cloned(),
    }
}

/// `mixer` as a block: fused on its own, a sequence mixer with `channel`
/// (`None` when it needs one and there is none).
fn as_block(mixer: Layer, channel: Option<Layer>) -> Option<Block> {
    if mixer.role() == Role::Fused {
        Some(Block::Fused(mixer))
    } else {
        Some(Block::Pair(mixer, channel?))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;
    use crate::space::{Operator, SpaceError};

    const HYBRID: &str = include_str!("../../search_spaces/hybrid-2026.toml");

    fn hybrid() -> SearchSpace {
        SearchSpace::parse(Path::new("hybrid-2026.toml"), HYBRID).unwrap()
    }

    fn attention_at(spec: &ArchSpec) -> Vec<usize> {
        let blocks = spec.blocks().unwrap();
        (0..blocks.len())
            .filter(|&i| is_attention(&blocks[i]))
            .collect()
    }

    #[test]
    fn the_shipped_space_has_its_own_baselines_as_points_of_it() {
        let s = hybrid();
        let names: Vec<&str> = s.baselines.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "Qwen3-Next-like GDN 3:1",
                "Nemotron-H-like Mamba-2",
                "LFM2-like conv + GQA",
                "Transformer++ (8 layers)"
            ]
        );
        assert_eq!(s.warm_start(), s.baselines);
        for b in &s.baselines {
            assert_eq!(s.admits(&b.genome), Ok(()), "{}", b.name);
        }
        // One in four, one in seven (k = 4 on seven blocks), two in four, all.
        let at: Vec<Vec<usize>> = s
            .baselines
            .iter()
            .map(|b| attention_at(&b.genome))
            .collect();
        assert_eq!(at, [vec![3], vec![3], vec![1, 3], vec![0, 1, 2, 3]]);
        let lfm = &s.baselines[2].genome;
        assert_eq!(
            lfm.layers[2].param("kv_heads", 128),
            Some(crate::genome::ParamValue::Int(4))
        );
        // The default space still seeds the paper's.
        let default = SearchSpace::embedded_default();
        assert!(default.baselines.is_empty());
        assert_eq!(default.warm_start().len(), 11);
    }

    #[test]
    fn samples_follow_the_attention_ratio_and_reach_every_ratio() {
        let s = hybrid();
        let mut rng = crate::seed::rng(3, &["placement"]);
        let mut seen = BTreeSet::new();
        for _ in 0..300 {
            let spec = s.sample(&mut rng).unwrap();
            let n = spec.blocks().unwrap().len();
            let have = attention_at(&spec).len();
            assert!(
                s.structure.attention_counts(n).unwrap().contains(&have),
                "{}",
                spec.compact_string()
            );
            // The ratio k it realises (k = 0 for none).
            seen.insert(match have {
                0 => 0,
                h => n / h,
            });
            // The compact form reads back as the same genome.
            let back = ArchSpec::from_compact_str(&spec.compact_string()).unwrap();
            assert_eq!(back.arch_id(), spec.arch_id(), "{}", spec.compact_string());
        }
        for k in [0, 1, 2, 4] {
            assert!(seen.contains(&k), "ratio {k} never sampled: {seen:?}");
        }
    }

    #[test]
    fn placement_operators_keep_or_change_the_ratio_as_named() {
        let s = hybrid();
        let mut rng = crate::seed::rng(4, &["operators"]);
        let qwen = &s.baselines[0].genome;
        let blocks = qwen.blocks().unwrap();
        let mut moved = BTreeSet::new();
        let mut counts = BTreeSet::new();
        for _ in 0..100 {
            let m = s.move_attention(qwen, &blocks, &mut rng).unwrap();
            let at = attention_at(&m);
            assert_eq!(at.len(), 1);
            moved.insert(at[0]);
            assert_eq!(s.admits(&m), Ok(()));
            let r = s.restripe(qwen, &blocks, &mut rng).unwrap();
            let n = attention_at(&r).len();
            assert_ne!(n, 1, "restripe keeps the count");
            counts.insert(n);
            // Switched blocks take the model's own mixers.
            for b in r.blocks().unwrap() {
                let p = b.sequence_mixer().primitive();
                assert!(
                    matches!(p, Primitive::GatedDeltaNet | Primitive::MhAttention),
                    "{}",
                    r.compact_string()
                );
            }
            // (None when it drew attention: the space has no other kind.)
            if let Some(k) = s.swap_kind(qwen, &blocks, &mut rng) {
                assert_eq!(attention_at(&k), [3], "{}", k.compact_string());
            }
        }
        assert_eq!(moved, BTreeSet::from([0, 1, 2]));
        // 4 blocks: k = 0, 1, 2 give 0, 4, 2 attention blocks (k = 4 is now).
        assert_eq!(counts, BTreeSet::from([0, 2, 4]));
        // Swapping the mixer kind of the Mamba-2 model may turn its fused
        // blocks into pairs (with its channel mixer); positions kept.
        let nemo = &s.baselines[1].genome;
        let nb = nemo.blocks().unwrap();
        let mut pairs = false;
        for _ in 0..50 {
            let Some(k) = s.swap_kind(nemo, &nb, &mut rng) else {
                continue;
            };
            let kb = k.blocks().unwrap();
            assert_eq!(kb.len(), 7);
            if kb[0].sequence_mixer().primitive() != Primitive::Mamba2 {
                pairs |= matches!(kb[0], Block::Pair(..));
                assert_eq!(attention_at(&k), [3]);
            }
        }
        assert!(pairs);
    }

    #[test]
    fn free_placement_drops_exactly_the_ratio_operators() {
        let free: Vec<Operator> = Operator::MUTATIONS
            .iter()
            .copied()
            .filter(|op| !matches!(op, Operator::Restripe | Operator::MoveAttention))
            .collect();
        assert_eq!(Operator::FREE_PLACEMENT_MUTATIONS, free.as_slice());
        assert_eq!(
            SearchSpace::embedded_default().mutations(),
            Operator::FREE_PLACEMENT_MUTATIONS
        );
        assert_eq!(hybrid().mutations(), Operator::MUTATIONS);
    }

    #[test]
    fn mutations_stay_in_the_space_and_use_the_placement_operators() {
        let s = hybrid();
        let mut rng = crate::seed::rng(5, &["mutate"]);
        let mut ops = BTreeSet::new();
        for b in &s.baselines {
            for _ in 0..60 {
                let (child, op) = s.mutate(&b.genome, &mut rng).unwrap();
                assert_eq!(s.admits(&child), Ok(()), "{op}: {}", child.compact_string());
                ops.insert(op);
            }
        }
        for op in [
            Operator::Restripe,
            Operator::MoveAttention,
            Operator::SwapKind,
        ] {
            assert!(ops.contains(&op), "{op} never produced an admitted child");
        }
    }

    #[test]
    fn the_ratio_is_checked_and_bad_settings_are_named() {
        let s = hybrid();
        let three = ArchSpec::from_compact_str(
            "gated-deltanet swiglu mh-attention swiglu mh-attention swiglu mh-attention swiglu",
        )
        .unwrap();
        let why = s.admits(&three).unwrap_err().0;
        assert!(
            why.contains("3 of 4 blocks are global attention")
                && why.contains("allows [0, 1, 2, 4]"),
            "{why}"
        );
        let err = |text: String| -> String {
            match SearchSpace::parse(Path::new("x.toml"), &text) {
                Err(e @ SpaceError::Field { .. }) => e.to_string(),
                other => panic!("expected a field error, got {other:?}"),
            }
        };
        let base = "[space]\nname = \"t\"\n[model]\nd_model = [128]\nlayers = [4]\n\
            [budget]\nmax_params = 1_000_000\nmax_state = 8192\n\
            [primitives.hyena]\n[primitives.swiglu]\n";
        let e = err(format!("{base}[structure]\nattention_every = [4]\n"));
        assert!(
            e.contains("structure.attention_every") && e.contains("no global attention"),
            "{e}"
        );
        let e = err(format!(
            "{base}[primitives.mh-attention]\n[structure]\nattention_every = [0]\n"
        ));
        assert!(
            e.contains("[0] forbids global attention") && e.contains("mh-attention"),
            "{e}"
        );
        let e = err(format!(
            "{base}[primitives.mh-attention]\n[structure]\nattention_every = [0, 3]\n"
        ));
        assert!(
            e.contains("k = 3 is more than the most blocks") && e.contains("(2)"),
            "{e}"
        );
        let e = err(format!(
            "{base}[primitives.mh-attention]\n[structure]\nmax_sequence_mixer_kinds = 1\nattention_every = [0, 2]\n"
        ));
        assert!(e.contains("allows one kind per model"), "{e}");
        let e = err(format!(
            "{base}[primitives.mh-attention]\n[structure]\nattention_every = [-1]\n"
        ));
        assert!(e.contains("attention_every"), "{e}");
        // A baseline outside the space: named with its line.
        let text = HYBRID.replace(
            "layers = \"mamba2 mamba2 mamba2 mh-attention swiglu mamba2 mamba2 mamba2\"",
            "layers = \"mamba2 mh-attention swiglu mh-attention swiglu mamba2 mamba2 mamba2\"",
        );
        let e = err(text);
        assert!(
            e.contains("baseline[1]")
                && e.contains("Nemotron-H-like")
                && e.contains("outside the space")
                && e.contains("x.toml:"),
            "{e}"
        );
    }
}
