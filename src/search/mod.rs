//! The search policy (design §5): what a free worker does next.
//!
//! In order: a queued job (the scheduler takes those first); a promotion of
//! a candidate in the top 1/η of its stage (asynchronous successive halving:
//! one promotion as soon as one qualifies; to `overtrain`, the `scale`
//! board's best `overtrain_top` by predicted loss); the next baseline (warm
//! start: the space's own, else the paper's); a child of tournament-chosen parents from the aging population
//! (the most recent `population` screened candidates), by mutation or
//! crossover, ranked on (score up, parameters down, state down) by
//! non-dominated rank then crowding distance; else a fresh sample. Every
//! proposal is deduplicated by arch id, and budgets are checked first.
//!
//! Randomness comes from (search seed, proposal number), so one worker and
//! one seed give the same population in the same order.

pub mod pareto;

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use crate::genome::{ArchId, ArchSpec, Context};
use crate::space::{Baseline, Operator, SearchSpace, StageName};
use crate::store::{Candidate, SearchBudget, Stats, Store, StoreError};

/// What the policy wants done next.
#[derive(Clone, Debug, PartialEq)]
pub enum Proposal {
    /// Evaluate a candidate at a further stage.
    Promote {
        /// Which.
        arch: ArchId,
        /// The stage it moves to.
        stage: StageName,
    },
    /// Add a new candidate and screen it.
    New(Box<Candidate>),
    /// Nothing to do: every stage's budget is spent (or the space yields nothing new).
    Idle(String),
}

/// The policy over one search space.
pub struct Policy {
    space: SearchSpace,
    seed: u64,
    baselines: Vec<Baseline>,
}

/// A candidate record for `genome` (not yet stored).
pub fn candidate(
    space: &SearchSpace,
    genome: ArchSpec,
    parents: Vec<ArchId>,
    operator: Operator,
    baseline: Option<String>,
) -> Candidate {
    let ctx = Context {
        vocab: 0,
        seq_len: space.budget.seq_len,
    };
    Candidate {
        id: genome.arch_id(),
        seq: 0,
        params: genome.params(ctx).non_embedding(),
        state: genome.state().at(space.budget.seq_len as u64),
        genome,
        parents,
        operator,
        baseline,
        created: 0.0,
        queued: vec![],
        jobs: vec![],
        stages: Default::default(),
        failed: Default::default(),
    }
}

/// Evaluations of `stage` spent or committed (queued, running, done, failed).
fn committed(stats: &Stats, stage: StageName) -> u64 {
    stats
        .evaluations
        .get(&stage)
        .map_or(0, crate::store::Evaluations::committed)
}

impl Policy {
    /// A policy over `space` with the search's seed; `baselines` are seeded
    /// first when the space asks for a warm start.
    pub fn new(space: SearchSpace, seed: u64, baselines: Vec<Baseline>) -> Policy {
        let baselines = if space.search.baselines {
            baselines
        } else {
            Vec::new()
        };
        Policy {
            space,
            seed,
            baselines,
        }
    }

    /// The space searched.
    pub fn space(&self) -> &SearchSpace {
        &self.space
    }

    fn room(&self, budget: &SearchBudget, stats: &Stats, stage: StageName) -> bool {
        budget
            .evaluations
            .get(&stage)
            .is_none_or(|&max| committed(stats, stage) < max)
    }

    /// The next thing to do.
    ///
    /// # Errors
    /// A damaged database.
    pub fn propose(&self, store: &Store, budget: &SearchBudget) -> Result<Proposal, StoreError> {
        let stats = store.stats()?;
        // Promotion: the most advanced stage first.
        for pair in StageName::ALL.windows(2).rev() {
            let (from, to) = (pair[0], pair[1]);
            if !self.room(budget, &stats, to) {
                continue;
            }
            if let Some(arch) = self.promotable(store, from, to)? {
                return Ok(Proposal::Promote { arch, stage: to });
            }
        }
        if !self.room(budget, &stats, StageName::Screen) {
            return Ok(Proposal::Idle(
                "the screen budget is spent and nothing qualifies for promotion".into(),
            ));
        }
        // Warm start.
        let seeded = store.baselines()?;
        for b in &self.baselines {
            let id = b.genome.arch_id();
            if !seeded.iter().any(|(_, s)| *s == id) && store.candidate(id)?.is_none() {
                return Ok(Proposal::New(Box::new(candidate(
                    &self.space,
                    b.genome.clone(),
                    vec![],
                    Operator::Seed,
                    Some(b.name.clone()),
                ))));
            }
        }
        let n = stats.candidates;
        let mut rng = crate::seed::rng(self.seed, &["propose", &n.to_string()]);
        let population = self.population(store)?;
        for _ in 0..64 {
            let c = self.child(&population, &mut rng);
            if let Some(c) = c
                && store.candidate(c.id)?.is_none()
            {
                return Ok(Proposal::New(Box::new(c)));
            }
        }
        Ok(Proposal::Idle(
            "no new admitted architecture in 64 tries (the space may be exhausted)".into(),
        ))
    }

    /// A candidate of `from` in its stage's top 1/η (for `overtrain`: the
    /// `scale` board's best `overtrain_top`) not yet queued for `to`.
    fn promotable(
        &self,
        store: &Store,
        from: StageName,
        to: StageName,
    ) -> Result<Option<ArchId>, StoreError> {
        let finished = store.board_len(from)?;
        let quota = match to {
            StageName::Overtrain => finished.min(self.space.search.overtrain_top),
            _ => finished / self.space.search.eta,
        };
        for c in store.top(from, quota)? {
            if !c.queued.contains(&to) {
                return Ok(Some(c.id));
            }
        }
        Ok(None)
    }

    /// The aging population: the most recent `population` screened candidates.
    fn population(&self, store: &Store) -> Result<Vec<Candidate>, StoreError> {
        let want = self.space.search.population;
        let mut out = Vec::with_capacity(want);
        // Look back far enough to skip unscreened recent ones.
        for c in store.recent(want * 4)? {
            if c.stages.contains_key(&StageName::Screen) {
                out.push(c);
                if out.len() == want {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// One proposal from the population (or fresh), `None` if the operator
    /// found nothing admitted.
    fn child(&self, population: &[Candidate], rng: &mut ChaCha8Rng) -> Option<Candidate> {
        let s = &self.space.search;
        let draw: f64 = rng.random();
        if population.len() >= 2 && draw < s.mutation {
            let p = self.tournament(population, rng);
            let (g, op) = self.space.mutate(&p.genome, rng).ok()?;
            return Some(candidate(&self.space, g, vec![p.id], op, None));
        }
        if population.len() >= 2 && draw < s.mutation + s.crossover {
            let a = self.tournament(population, rng);
            let b = self.tournament(population, rng);
            if a.id != b.id {
                let g = self.space.crossover(&a.genome, &b.genome, rng).ok()?;
                return Some(candidate(
                    &self.space,
                    g,
                    vec![a.id, b.id],
                    Operator::Crossover,
                    None,
                ));
            }
        }
        let g = self.space.sample(rng).ok()?;
        Some(candidate(&self.space, g, vec![], Operator::Sample, None))
    }

    /// The best of `tournament` random members by (rank, crowding).
    fn tournament<'p>(&self, population: &'p [Candidate], rng: &mut ChaCha8Rng) -> &'p Candidate {
        let points: Vec<[f64; 3]> = population.iter().map(objectives).collect();
        let order = pareto::rank_and_crowd(&points);
        let k = self.space.search.tournament.min(population.len());
        let mut best: Option<usize> = None;
        for _ in 0..k {
            let i = rng.random_range(0..population.len());
            if best.is_none_or(|b| pareto::better(&order[i], &order[b])) {
                best = Some(i);
            }
        }
        &population[best.expect("a non-empty population")]
    }
}

/// Objectives to minimise: (−score, params, state).
pub fn objectives(c: &Candidate) -> [f64; 3] {
    let score = c.stages.get(&StageName::Screen).map_or(0.0, |s| s.score);
    [-score, c.params as f64, c.state as f64]
}
