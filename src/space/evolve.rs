//! Mutation and crossover. Each operator edits blocks or layers; the result
//! is kept only if it differs from its parents and the space admits it, so
//! every child satisfies the grammar and the budgets.

use std::fmt;

use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

use super::sample::{pick, pick_weighted};
use super::{SearchSpace, SpaceError};
use crate::genome::{ArchSpec, Block, Layer, Primitive, Role};

/// Attempts before an operator call gives up.
const MAX_ATTEMPTS: usize = 500;

/// How a candidate was produced; stored with its lineage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operator {
    /// A named architecture given by the user or the paper.
    Seed,
    /// Drawn fresh from the grammar.
    Sample,
    /// One layer replaced by another primitive of the same role.
    ReplaceMixer,
    /// One hyper-parameter changed to another allowed value.
    ChangeParam,
    /// A fresh block inserted.
    InsertBlock,
    /// A block removed.
    DeleteBlock,
    /// A block copied next to itself.
    DuplicateBlock,
    /// Two blocks exchanged.
    SwapBlocks,
    /// Every other block's sequence mixer replaced by one other mixer (striping).
    Stripe,
    /// Blocks recombined from two parents.
    Crossover,
    /// Another attention ratio of `structure.attention_every`: blocks
    /// switched to or from global attention in a periodic pattern.
    Restripe,
    /// A global-attention block traded places with another block.
    MoveAttention,
    /// Every block of one sequence-mixer kind changed to another kind.
    SwapKind,
}

impl Operator {
    /// The mutation operators: those of every space, then the two that
    /// edit the attention ratio.
    pub const MUTATIONS: &'static [Operator] = &[
        Operator::ReplaceMixer,
        Operator::ChangeParam,
        Operator::InsertBlock,
        Operator::DeleteBlock,
        Operator::DuplicateBlock,
        Operator::SwapBlocks,
        Operator::Stripe,
        Operator::SwapKind,
        Operator::Restripe,
        Operator::MoveAttention,
    ];

    /// The mutation operators of a space that places attention freely
    /// (no `structure.attention_every`): there is no ratio to restripe, and
    /// moving attention is one case of swapping blocks.
    pub const FREE_PLACEMENT_MUTATIONS: &'static [Operator] = Operator::MUTATIONS.split_at(8).0;

    /// The name used in files and tables.
    pub fn name(self) -> &'static str {
        match self {
            Operator::Seed => "seed",
            Operator::Sample => "sample",
            Operator::ReplaceMixer => "replace-mixer",
            Operator::ChangeParam => "change-param",
            Operator::InsertBlock => "insert-block",
            Operator::DeleteBlock => "delete-block",
            Operator::DuplicateBlock => "duplicate-block",
            Operator::SwapBlocks => "swap-blocks",
            Operator::Stripe => "stripe",
            Operator::Crossover => "crossover",
            Operator::Restripe => "restripe",
            Operator::MoveAttention => "move-attention",
            Operator::SwapKind => "swap-kind",
        }
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl SearchSpace {
    /// The mutation operators [`SearchSpace::mutate`] draws from, uniformly.
    pub fn mutations(&self) -> &'static [Operator] {
        if self.structure.attention_every.is_some() {
            Operator::MUTATIONS
        } else {
            Operator::FREE_PLACEMENT_MUTATIONS
        }
    }

    /// A mutant of `parent`: a random operator, retried until the child is new
    /// and admitted.
    ///
    /// # Errors
    /// [`SpaceError::Exhausted`] if no operator yields an admitted child in
    /// 500 attempts (the parent may be the space's only genome).
    pub fn mutate<R: Rng + ?Sized>(
        &self,
        parent: &ArchSpec,
        rng: &mut R,
    ) -> Result<(ArchSpec, Operator), SpaceError> {
        let parent_id = parent.arch_id();
        let blocks = parent.blocks().map_err(|e| SpaceError::Exhausted {
            message: format!("cannot mutate `{parent}`: {e}"),
        })?;
        for _ in 0..MAX_ATTEMPTS {
            let op = *pick(rng, self.mutations());
            let Some(child) = self.apply(op, parent, &blocks, rng) else {
                continue;
            };
            if child.arch_id() != parent_id && self.admits(&child).is_ok() {
                return Ok((child, op));
            }
        }
        Err(SpaceError::Exhausted {
            message: format!("no admitted mutant of `{parent}` in {MAX_ATTEMPTS} attempts"),
        })
    }

    /// Applies one mutation operator; `None` when it does not apply.
    pub fn apply<R: Rng + ?Sized>(
        &self,
        op: Operator,
        parent: &ArchSpec,
        blocks: &[Block],
        rng: &mut R,
    ) -> Option<ArchSpec> {
        let n = blocks.len();
        match op {
            Operator::ReplaceMixer => self.replace_mixer(parent, rng),
            Operator::ChangeParam => self.change_param(parent, rng),
            Operator::InsertBlock => {
                let kinds = self.kinds_of(blocks);
                let block = self.draw_block(2, &kinds, self.shared_channel(blocks), None, rng)?;
                let mut b = blocks.to_vec();
                b.insert(rng.random_range(0..=n), block);
                Some(parent.with_blocks(&b))
            }
            Operator::DeleteBlock if n >= 2 => {
                let mut b = blocks.to_vec();
                b.remove(rng.random_range(0..n));
                Some(parent.with_blocks(&b))
            }
            Operator::DuplicateBlock => {
                let i = rng.random_range(0..n);
                let mut b = blocks.to_vec();
                b.insert(i, blocks[i].clone());
                Some(parent.with_blocks(&b))
            }
            Operator::SwapBlocks if n >= 2 => {
                let i = rng.random_range(0..n);
                let j = rng.random_range(0..n);
                if blocks[i] == blocks[j] {
                    return None;
                }
                let mut b = blocks.to_vec();
                b.swap(i, j);
                Some(parent.with_blocks(&b))
            }
            Operator::Stripe => self.stripe(parent, blocks, rng),
            Operator::Restripe => self.restripe(parent, blocks, rng),
            Operator::MoveAttention => self.move_attention(parent, blocks, rng),
            Operator::SwapKind => self.swap_kind(parent, blocks, rng),
            _ => None,
        }
    }

    /// Sequence-mixer kinds present in `blocks`.
    pub(super) fn kinds_of(&self, blocks: &[Block]) -> Vec<Primitive> {
        let mut k: Vec<_> = blocks
            .iter()
            .map(|b| b.sequence_mixer().primitive())
            .collect();
        k.sort();
        k.dedup();
        k
    }

    /// The channel mixer new blocks must use, if the structure requires one.
    fn shared_channel(&self, blocks: &[Block]) -> Option<Primitive> {
        if !self.structure.same_channel_mixer {
            return None;
        }
        blocks.iter().find_map(|b| match b {
            Block::Pair(_, c) => Some(c.primitive()),
            Block::Fused(_) => None,
        })
    }

    fn replace_mixer<R: Rng + ?Sized>(&self, parent: &ArchSpec, rng: &mut R) -> Option<ArchSpec> {
        let i = rng.random_range(0..parent.layers.len());
        let old = parent.layers[i].primitive();
        // Where the space places attention, a mixer keeps its class.
        let class = self
            .structure
            .attention_every
            .as_ref()
            .map(|_| old.is_global_attention());
        let options: Vec<_> = self
            .weighted_class(old.role(), None, class)
            .into_iter()
            .filter(|(p, _)| *p != old)
            .collect();
        let new = pick_weighted(rng, &options)?;
        let layer = self.draw_layer(new, rng);
        let mut child = parent.clone();
        if old.role() == Role::Channel && self.structure.same_channel_mixer {
            // Keep one channel mixer for the whole model.
            for l in child
                .layers
                .iter_mut()
                .filter(|l| l.role() == Role::Channel)
            {
                *l = layer.clone();
            }
        } else {
            child.layers[i] = layer;
        }
        Some(child)
    }

    fn change_param<R: Rng + ?Sized>(&self, parent: &ArchSpec, rng: &mut R) -> Option<ArchSpec> {
        // (layer index, parameter) pairs with a choice to make.
        let tunable: Vec<(usize, &'static str)> = parent
            .layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| {
                self.primitives
                    .get(&l.primitive())
                    .into_iter()
                    .flat_map(|c| c.params.iter())
                    .filter(|(_, values)| values.len() > 1)
                    .map(move |(name, _)| (i, *name))
            })
            .collect();
        if tunable.is_empty() {
            return None;
        }
        let (i, name) = *pick(rng, &tunable);
        let layer: &Layer = &parent.layers[i];
        let current = layer.param(name, parent.d_model);
        let values: Vec<_> = self.primitives[&layer.primitive()].params[name]
            .iter()
            .copied()
            .filter(|v| Some(*v) != current)
            .collect();
        if values.is_empty() {
            return None;
        }
        let mut child = parent.clone();
        child.layers[i].set_param(name, *pick(rng, &values)).ok()?;
        Some(child)
    }

    fn stripe<R: Rng + ?Sized>(
        &self,
        parent: &ArchSpec,
        blocks: &[Block],
        rng: &mut R,
    ) -> Option<ArchSpec> {
        let pairs: Vec<usize> = (0..blocks.len())
            .filter(|i| matches!(blocks[*i], Block::Pair(..)))
            .collect();
        if pairs.len() < 2 {
            return None;
        }
        let base = blocks[pairs[0]].sequence_mixer().primitive();
        let options: Vec<_> = self
            .weighted(Role::Sequence, None)
            .into_iter()
            .filter(|(p, _)| *p != base)
            .collect();
        let other = pick_weighted(rng, &options)?;
        let layer = self.draw_layer(other, rng);
        let mut b = blocks.to_vec();
        for &i in pairs.iter().skip(1).step_by(2) {
            if let Block::Pair(_, c) = &b[i] {
                b[i] = Block::Pair(layer.clone(), c.clone());
            }
        }
        Some(parent.with_blocks(&b))
    }

    /// Every child crossover can make of `a` and `b`, before admission:
    /// one-point children `a[..i] ++ b[j..]` at block boundaries, block-wise
    /// uniform children over the blocks both have (every mask up to 10
    /// common blocks, 1,024 random masks beyond), and, when the structure
    /// requires one channel mixer, each of those with its channel mixers all
    /// taken from `a` or all from `b`. Children take `a`'s width and norm.
    pub fn crossover_children<R: Rng + ?Sized>(
        &self,
        a: &ArchSpec,
        b: &ArchSpec,
        rng: &mut R,
    ) -> Vec<ArchSpec> {
        let (Ok(ba), Ok(bb)) = (a.blocks(), b.blocks()) else {
            return Vec::new();
        };
        let mut children: Vec<Vec<Block>> = Vec::new();
        for i in 0..=ba.len() {
            for j in 0..=bb.len() {
                children.push(ba[..i].iter().chain(&bb[j..]).cloned().collect());
            }
        }
        let common = ba.len().min(bb.len());
        let masks: Vec<u64> = if common <= 10 {
            (0..1u64 << common).collect()
        } else {
            (0..1024).map(|_| rng.random::<u64>()).collect()
        };
        for mask in masks {
            let mixed: Vec<Block> = (0..common)
                .map(|k| {
                    if mask >> k & 1 == 1 {
                        bb[k].clone()
                    } else {
                        ba[k].clone()
                    }
                })
                .collect();
            for tail in [&ba[common..], &bb[common..]] {
                children.push(mixed.iter().chain(tail).cloned().collect());
            }
        }
        let mut out: Vec<ArchSpec> = Vec::with_capacity(children.len() * 3);
        let channels = [&ba, &bb].map(|blocks| {
            blocks.iter().find_map(|b| match b {
                Block::Pair(_, c) => Some(c.clone()),
                Block::Fused(_) => None,
            })
        });
        for blocks in children.into_iter().filter(|c| !c.is_empty()) {
            if self.structure.same_channel_mixer {
                for channel in channels.iter().flatten() {
                    let unified: Vec<Block> = blocks
                        .iter()
                        .map(|b| match b {
                            Block::Pair(s, _) => Block::Pair(s.clone(), channel.clone()),
                            fused => fused.clone(),
                        })
                        .collect();
                    out.push(a.with_blocks(&unified));
                }
            }
            out.push(a.with_blocks(&blocks));
        }
        out
    }

    /// A child of `a` and `b`, drawn uniformly from the admitted
    /// [`crossover_children`](SearchSpace::crossover_children) that differ from
    /// both parents.
    ///
    /// # Errors
    /// [`SpaceError::Exhausted`] if there is no such child.
    pub fn crossover<R: Rng + ?Sized>(
        &self,
        a: &ArchSpec,
        b: &ArchSpec,
        rng: &mut R,
    ) -> Result<ArchSpec, SpaceError> {
        let (ia, ib) = (a.arch_id(), b.arch_id());
        let mut seen = std::collections::HashSet::new();
        let admitted: Vec<ArchSpec> = self
            .crossover_children(a, b, rng)
            .into_iter()
            .filter(|c| {
                let id = c.arch_id();
                id != ia && id != ib && seen.insert(id) && self.admits(c).is_ok()
            })
            .collect();
        if admitted.is_empty() {
            return Err(SpaceError::Exhausted {
                message: format!(
                    "`{}` and `{}` have no crossover child inside the space",
                    a.compact_string(),
                    b.compact_string()
                ),
            });
        }
        Ok(admitted[rng.random_range(0..admitted.len())].clone())
    }
}
