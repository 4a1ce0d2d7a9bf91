//! Drawing genomes from the grammar: weighted primitive choice, uniform
//! hyper-parameter choice, blocks filled to a drawn depth (global attention
//! where the drawn placement pattern puts it), rejection against the budgets.

use std::collections::BTreeMap;

use rand::{Rng, RngExt};

use super::{PrimitiveChoices, SearchSpace, SpaceError};
use crate::genome::{ArchSpec, Block, Layer, ParamValue, Primitive, Role};

/// Draws before [`SearchSpace::sample`] gives up.
pub(super) const MAX_DRAWS: usize = 10_000;

/// Uniform choice from a non-empty slice.
pub(super) fn pick<'a, T, R: Rng + ?Sized>(rng: &mut R, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// Weighted choice; `None` when `items` is empty.
pub(super) fn pick_weighted<T: Copy, R: Rng + ?Sized>(
    rng: &mut R,
    items: &[(T, f64)],
) -> Option<T> {
    let total: f64 = items.iter().map(|(_, w)| w).sum();
    if items.is_empty() || total <= 0.0 {
        return None;
    }
    let mut x = rng.random::<f64>() * total;
    for (item, w) in items {
        if x < *w {
            return Some(*item);
        }
        x -= w;
    }
    items.last().map(|(item, _)| *item)
}

/// Every layer the choices of `primitive` allow (the cartesian product).
pub(super) fn all_layers(
    primitive: Primitive,
    params: &BTreeMap<&'static str, Vec<ParamValue>>,
) -> Vec<Layer> {
    let mut layers = vec![Layer::default_for(primitive)];
    for (name, values) in params {
        layers = layers
            .into_iter()
            .flat_map(|l| {
                values.iter().map(move |v| {
                    let mut l = l.clone();
                    l.set_param(name, *v)
                        .expect("space parameters are checked against the primitive when parsed");
                    l
                })
            })
            .collect();
    }
    layers
}

impl PrimitiveChoices {
    /// A layer of `primitive` with each listed parameter drawn uniformly.
    pub(super) fn draw_layer<R: Rng + ?Sized>(&self, primitive: Primitive, rng: &mut R) -> Layer {
        let mut layer = Layer::default_for(primitive);
        for (name, values) in &self.params {
            layer
                .set_param(name, *pick(rng, values))
                .expect("space parameters are checked against the primitive when parsed");
        }
        layer
    }
}

impl SearchSpace {
    /// The weighted primitives of `role`, restricted to `only` when given.
    pub(super) fn weighted(&self, role: Role, only: Option<&[Primitive]>) -> Vec<(Primitive, f64)> {
        self.primitives
            .iter()
            .filter(|(p, _)| p.role() == role && only.is_none_or(|o| o.contains(p)))
            .map(|(p, c)| (*p, c.weight))
            .collect()
    }

    /// A fresh layer of `primitive` drawn from its choices.
    pub(super) fn draw_layer<R: Rng + ?Sized>(&self, primitive: Primitive, rng: &mut R) -> Layer {
        self.primitives[&primitive].draw_layer(primitive, rng)
    }

    /// Draws one block with at most `room` layers. `kinds` are the sequence
    /// mixers already in the model; `channel` the channel mixer all blocks
    /// must share, if the structure requires one.
    /// `attention` says whether its mixer must (`Some(true)`) or must not
    /// (`Some(false)`) be global attention.
    pub(super) fn draw_block<R: Rng + ?Sized>(
        &self,
        room: usize,
        kinds: &[Primitive],
        channel: Option<Primitive>,
        attention: Option<bool>,
        rng: &mut R,
    ) -> Option<Block> {
        let full = kinds.len() >= self.structure.max_sequence_mixer_kinds;
        let only = full.then_some(kinds);
        let mut first = self.weighted_class(Role::Fused, only, attention);
        let channels = match channel {
            Some(c) => vec![(c, 1.0)],
            None => self.weighted(Role::Channel, None),
        };
        if room >= 2 && !channels.is_empty() {
            first.extend(self.weighted_class(Role::Sequence, only, attention));
        }
        let p = pick_weighted(rng, &first)?;
        let mixer = self.draw_layer(p, rng);
        if p.role() == Role::Fused {
            return Some(Block::Fused(mixer));
        }
        let c = pick_weighted(rng, &channels)?;
        Some(Block::Pair(mixer, self.draw_layer(c, rng)))
    }

    /// One unconstrained draw: grammar respected, budgets not yet checked.
    /// `None` when the drawn depth cannot be filled under the striping rule.
    pub(super) fn draw<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<ArchSpec> {
        let d_model = *pick(rng, &self.model.d_model);
        let depth = *pick(rng, &self.model.layers);
        let norm = *pick(rng, &self.model.norm);
        let pattern = self.draw_pattern(rng);
        let mut blocks: Vec<Block> = Vec::new();
        let mut kinds: Vec<Primitive> = Vec::new();
        let mut channel = None;
        let mut used = 0;
        while used < depth {
            let attention = pattern.map(|p| p.at(blocks.len()));
            let block = self.draw_block(depth - used, &kinds, channel, attention, rng)?;
            let kind = block.sequence_mixer().primitive();
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
            if let Block::Pair(_, c) = &block
                && self.structure.same_channel_mixer
            {
                channel = Some(c.primitive());
            }
            used += block.len();
            blocks.push(block);
        }
        let mut spec = ArchSpec::new(d_model, Vec::new()).with_blocks(&blocks);
        spec.norm = norm;
        Some(spec)
    }

    /// Draws a genome that satisfies the grammar and the budgets.
    ///
    /// # Errors
    /// [`SpaceError::Exhausted`] if no draw out of 10,000 fits the budgets.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Result<ArchSpec, SpaceError> {
        for _ in 0..MAX_DRAWS {
            if let Some(spec) = self.draw(rng)
                && self.admits(&spec).is_ok()
            {
                return Ok(spec);
            }
        }
        Err(SpaceError::Exhausted {
            message: format!(
                "the space `{}` produced no genome within its budgets in {MAX_DRAWS} draws; loosen [budget] or the primitives' choices",
                self.name
            ),
        })
    }

    /// Draws `n` distinct genomes (by arch id), in draw order.
    ///
    /// # Errors
    /// [`SpaceError::Exhausted`] if fewer than `n` distinct genomes turn up
    /// in `100·n + 1000` admitted draws (the space may be smaller than `n`).
    pub fn sample_distinct<R: Rng + ?Sized>(
        &self,
        n: usize,
        rng: &mut R,
    ) -> Result<Vec<ArchSpec>, SpaceError> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(n);
        let attempts = 100 * n + 1000;
        for _ in 0..attempts {
            if out.len() == n {
                break;
            }
            let spec = self.sample(rng)?;
            if seen.insert(spec.arch_id()) {
                out.push(spec);
            }
        }
        if out.len() < n {
            return Err(SpaceError::Exhausted {
                message: format!(
                    "found only {} distinct genomes in {attempts} draws from `{}`; the space may hold fewer than {n}",
                    out.len(),
                    self.name
                ),
            });
        }
        Ok(out)
    }
}
