//! The search space: a grammar of primitives read from TOML
//! (`search_spaces/*.toml`, documented in `search_spaces/README.md`), and the
//! operators that draw genomes from it: sampling, mutation and crossover.
//!
//! Pipeline position: the search policy asks this module for new genomes;
//! everything it returns satisfies the grammar and the budgets
//! ([`SearchSpace::admits`]). Free of Burn.

mod admit;
mod baselines;
mod error;
mod evolve;
mod feasible;
mod parse;
mod placement;
mod sample;
mod toml_walk;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::genome::{Norm, ParamValue, Primitive};
use crate::tasks::TaskKind;

pub use admit::Rejection;
pub use baselines::{Baseline, PAPER_BASELINES};
pub use error::{Location, SpaceError};
pub use evolve::Operator;
pub use feasible::Feasibility;

/// The search space shipped with the binary (`search_spaces/default.toml`).
pub const DEFAULT_SPACE: &str = include_str!("../../search_spaces/default.toml");
/// The name shown for the embedded default in messages.
pub const DEFAULT_SPACE_NAME: &str = "<embedded>/search_spaces/default.toml";

/// Width, depth and norm choices.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelChoices {
    /// Allowed widths.
    pub d_model: Vec<usize>,
    /// Allowed depths, in layers (a pair block counts 2, a fused block 1).
    pub layers: Vec<usize>,
    /// Allowed norms.
    pub norm: Vec<Norm>,
}

/// How layers compose into a model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Structure {
    /// At most this many distinct sequence mixers (fused blocks included) in
    /// one model: 1 gives homogeneous models, 2 allows the paper's striping.
    pub max_sequence_mixer_kinds: usize,
    /// Whether every block of a model uses the same channel-mixer primitive,
    /// as in all of the paper's architectures.
    pub same_channel_mixer: bool,
    /// The attention ratio as a gene: when set, a model of `n` blocks has
    /// exactly `n / k` (rounded down; none for `k = 0`) blocks whose
    /// sequence mixer is global softmax attention, for some `k` of the list,
    /// at any positions (the sampler places them every k-th block from a
    /// drawn phase; mutations move them). `None`: no constraint.
    pub attention_every: Option<Vec<usize>>,
}

impl Structure {
    /// How many global-attention blocks a model of `blocks` blocks may have
    /// (`None`: any number), ascending.
    pub fn attention_counts(&self, blocks: usize) -> Option<Vec<usize>> {
        let ks = self.attention_every.as_ref()?;
        let mut counts: Vec<usize> = ks
            .iter()
            .map(|&k| blocks.checked_div(k).unwrap_or(0))
            .collect();
        counts.sort_unstable();
        counts.dedup();
        Some(counts)
    }
}

/// Hard limits checked before any compute is spent.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Budget {
    /// Most non-embedding parameters (layers, norms).
    pub max_params: u64,
    /// Fewest non-embedding parameters (0 for no lower bound).
    pub min_params: u64,
    /// Most fixed recurrent state, summed over layers.
    pub max_state: u64,
    /// Most state growth per context token (attention's KV cache, 2·d per layer).
    pub max_state_per_token: u64,
    /// The sequence length at which parameters that depend on it are counted.
    pub seq_len: usize,
}

/// One allowed primitive: how often it is drawn and the values each of its
/// hyper-parameters may take. Parameters absent here keep the primitive's default.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PrimitiveChoices {
    /// Relative sampling weight among primitives of the same role.
    pub weight: f64,
    /// Allowed values per parameter name.
    pub params: BTreeMap<&'static str, Vec<ParamValue>>,
}

/// Parameters of the search policy (used by the daemon).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SearchSettings {
    /// Reduction factor of successive halving: the top 1/η of a stage is promoted.
    pub eta: usize,
    /// Size of the aging population that parents are drawn from.
    pub population: usize,
    /// Tournament size for parent selection.
    pub tournament: usize,
    /// Probability that a new candidate is a mutant.
    pub mutation: f64,
    /// Probability that a new candidate is a crossover child; the rest are fresh samples.
    pub crossover: f64,
    /// Seed every search with the space's baselines, or the paper's (warm start).
    pub baselines: bool,
    /// A candidate among this many of the `scale` board's best (by
    /// predicted loss) gets the `overtrain` stage's runs (asynchronously,
    /// like η: one that enters the top k later is promoted too; the
    /// stage's budget caps the total). 0: none.
    pub overtrain_top: usize,
}

/// Which settings of a task a stage runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Grid {
    /// Each task at its baseline setting only.
    Baseline,
    /// The baseline and every one-factor variation (66 settings over six tasks).
    Full,
}

/// Which accuracy a stage selects epochs and settings by and scores with.
///
/// Macro is the reference's (mad-protocol §2.4): a class the model predicts
/// but the split never asks for counts as a class of recall 0, so a few
/// stray predictions move it by `1/(classes + 1)` each and two splits of the
/// same size can disagree by far more than their sampling error (measured
/// on noisy recall: validation 0.944, test 0.686 on the same weights, micro
/// 0.943 on both). Micro (hits over scored positions) does not jump; a
/// preset that ranks on small splits may choose it (`metric = "micro"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// Per-class recall averaged over the classes in the targets or the
    /// predictions: the protocol's.
    #[default]
    Macro,
    /// Hits over scored positions.
    Micro,
}

impl Metric {
    /// The name a preset writes.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Macro => "macro",
            Metric::Micro => "micro",
        }
    }

    /// The other metric (shown beside the one a stage scores by).
    pub fn other(self) -> Metric {
        match self {
            Metric::Macro => Metric::Micro,
            Metric::Micro => Metric::Macro,
        }
    }

    /// serde skip test: the protocol's metric is left out of records and run
    /// identities (those from before the field keep theirs).
    pub fn is_protocol(&self) -> bool {
        *self == Metric::Macro
    }
}

impl std::str::FromStr for Metric {
    type Err = String;

    fn from_str(s: &str) -> Result<Metric, String> {
        match s {
            "macro" => Ok(Metric::Macro),
            "micro" => Ok(Metric::Micro),
            other => Err(format!(
                "unknown metric `{other}`; expected \"macro\" (the protocol's) or \"micro\""
            )),
        }
    }
}

/// What one stage runs under a preset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageSettings {
    /// The tasks.
    pub tasks: Vec<TaskKind>,
    /// Baseline settings only, or the full difficulty grid.
    pub grid: Grid,
    /// Cap on training examples per setting (`None`: the protocol's counts).
    pub train_examples: Option<usize>,
    /// Test examples per setting.
    pub test_examples: usize,
    /// Cap on sequence lengths (`None`: the protocol's); tasks keep their
    /// own minimum (selective copying needs `2n + 2`).
    pub max_seq_len: Option<usize>,
    /// Maximum epochs.
    pub max_epochs: usize,
    /// Cap on optimiser steps (`None`: no cap beyond the epochs).
    pub max_steps: Option<usize>,
    /// Batch size.
    pub batch_size: usize,
    /// Learning rates swept.
    pub lr: Vec<f64>,
    /// Weight decays swept.
    pub weight_decay: Vec<f64>,
    /// AdamW betas.
    pub betas: [f64; 2],
    /// Stop once validation accuracy reaches this.
    pub early_stop: f64,
    /// Standard deviation of the token embedding's initial weights
    /// (protocol: 0.02; PyTorch's own default for `nn.Embedding` is 1).
    #[serde(
        default = "protocol_embedding_std",
        skip_serializing_if = "is_protocol_embedding_std"
    )]
    pub embedding_std: f64,
    /// Stop a run once its validation accuracy has not improved for this
    /// many epochs (`None`, the protocol: every epoch runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patience: Option<usize>,
    /// The accuracy that picks each run's best epoch, the best of a sweep
    /// and the task scores (protocol: macro; left out of records when it is).
    #[serde(default, skip_serializing_if = "Metric::is_protocol")]
    pub metric: Metric,
    /// Per-task departures from the stage-wide caps (a preset's
    /// `[presets.P.STAGE.per_task.TASK]` tables); a task without one takes
    /// the stage's values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub per_task: BTreeMap<TaskKind, TaskBudget>,
}

/// The protocol's embedding initialisation, N(0, 0.02²) (mad-protocol §2.2).
pub const PROTOCOL_EMBEDDING_STD: f64 = 0.02;

/// serde default of an embedding std: the protocol's.
pub(crate) fn protocol_embedding_std() -> f64 {
    PROTOCOL_EMBEDDING_STD
}

/// serde skip test: the protocol's std is left out of records and run
/// identities (those from before the field keep theirs).
pub(crate) fn is_protocol_embedding_std(x: &f64) -> bool {
    *x == PROTOCOL_EMBEDDING_STD
}

/// One task's departures from its stage's caps: a task that learns late
/// (recall needs an induction circuit) gets more steps than one solved in a
/// few epochs; each run stops early on its own once solved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskBudget {
    /// Most epochs (the cosine schedule spans them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_epochs: Option<usize>,
    /// Cap on optimiser steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<usize>,
    /// Cap on training examples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_examples: Option<usize>,
    /// Epochs without improvement before a run stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patience: Option<usize>,
}

impl StageSettings {
    /// Most epochs of `task`'s runs.
    pub fn max_epochs_of(&self, task: TaskKind) -> usize {
        self.per_task
            .get(&task)
            .and_then(|b| b.max_epochs)
            .unwrap_or(self.max_epochs)
    }

    /// Step cap of `task`'s runs.
    pub fn max_steps_of(&self, task: TaskKind) -> Option<usize> {
        self.per_task
            .get(&task)
            .and_then(|b| b.max_steps)
            .or(self.max_steps)
    }

    /// Patience of `task`'s runs.
    pub fn patience_of(&self, task: TaskKind) -> Option<usize> {
        self.per_task
            .get(&task)
            .and_then(|b| b.patience)
            .or(self.patience)
    }

    /// Cap on `task`'s training examples.
    pub fn train_examples_of(&self, task: TaskKind) -> Option<usize> {
        self.per_task
            .get(&task)
            .and_then(|b| b.train_examples)
            .or(self.train_examples)
    }
}

impl StageSettings {
    /// The protocol's settings (mad-protocol §2): the screen runs baselines at
    /// one optimiser setting, `mad` the full grid and lr × wd sweep.
    pub fn protocol(stage: StageName) -> StageSettings {
        let full = stage == StageName::Mad;
        StageSettings {
            tasks: TaskKind::ALL.to_vec(),
            grid: if full { Grid::Full } else { Grid::Baseline },
            train_examples: None,
            test_examples: 1280,
            max_seq_len: None,
            max_epochs: 200,
            max_steps: None,
            batch_size: 128,
            lr: if full {
                vec![1e-4, 5e-4, 1e-3]
            } else {
                vec![5e-4]
            },
            weight_decay: if full { vec![0.0, 0.1] } else { vec![0.0] },
            betas: [0.9, 0.98],
            early_stop: 0.999,
            embedding_std: PROTOCOL_EMBEDDING_STD,
            patience: None,
            metric: Metric::Macro,
            per_task: BTreeMap::new(),
        }
    }
}

/// The stages a preset configures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StageName {
    /// Cheap screen on the task baselines.
    Screen,
    /// The full MAD protocol.
    Mad,
    /// Small language-model scaling runs and the scaling-law fit.
    Scale,
    /// The compute-optimal size of one budget trained on multiples of its
    /// compute-optimal tokens (the overtrained regime).
    Overtrain,
}

impl StageName {
    /// Every stage, cheapest first (the promotion ladder).
    pub const ALL: &'static [StageName] = &[
        StageName::Screen,
        StageName::Mad,
        StageName::Scale,
        StageName::Overtrain,
    ];

    /// The file name of this stage.
    pub fn name(self) -> &'static str {
        match self {
            StageName::Screen => "screen",
            StageName::Mad => "mad",
            StageName::Scale => "scale",
            StageName::Overtrain => "overtrain",
        }
    }

    /// The stage a candidate is promoted to from this one.
    pub fn next(self) -> Option<StageName> {
        match self {
            StageName::Screen => Some(StageName::Mad),
            StageName::Mad => Some(StageName::Scale),
            StageName::Scale => Some(StageName::Overtrain),
            StageName::Overtrain => None,
        }
    }
}

/// What the `scale` stage runs under a preset (mad-protocol §4.2, design
/// §6): for every compute budget, `sizes_per_budget` members of the
/// candidate's family (`scale::family`) spaced by `size_spread` around
/// `N = √(C / (6·tokens_per_param))`, each trained on
/// `D = C / (3 · forward FLOPs per token)` tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScaleSettings {
    /// Training compute per run, FLOPs (at least three distinct).
    pub budgets: Vec<f64>,
    /// Model sizes per budget (at least three).
    pub sizes_per_budget: usize,
    /// Ratio of neighbouring sizes' parameter counts (> 1).
    pub size_spread: f64,
    /// Tokens per parameter at the centre size (Chinchilla's ≈ 20).
    pub tokens_per_param: f64,
    /// Context length.
    pub seq_len: usize,
    /// Windows per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate of the cosine.
    pub min_lr: f64,
    /// Warmup, as a share of each run's steps.
    pub warmup: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// The compute at which candidates are ranked by predicted loss.
    pub target_compute: f64,
    /// Widest member.
    pub max_width: usize,
    /// Most pattern repeats.
    pub max_repeats: usize,
    /// Validation windows per run.
    pub valid_windows: usize,
    /// The `overtrain` stage's token multiples: the compute-optimal size of
    /// [`ScaleSettings::overtrain_budget`] trained on each multiple (> 1) of
    /// that budget's tokens, beside its compute-optimal run (multiple 1).
    #[serde(default = "default_overtrain")]
    pub overtrain: Vec<f64>,
    /// The budget whose compute-optimal size is overtrained (one of
    /// `budgets`); `None`: the smallest, whose multiples up to
    /// `largest / smallest` need no more tokens than the `scale` stage's
    /// largest runs (so a corpus that holds the `scale` stage holds them).
    #[serde(default)]
    pub overtrain_budget: Option<f64>,
}

fn default_overtrain() -> Vec<f64> {
    vec![4.0, 8.0]
}

impl ScaleSettings {
    /// The budget the `overtrain` stage starts from.
    pub fn overtrain_base(&self) -> f64 {
        self.overtrain_budget
            .unwrap_or_else(|| self.budgets.iter().copied().fold(f64::INFINITY, f64::min))
    }
}

impl Default for ScaleSettings {
    /// The `cpu` scale: 5–10 minutes per architecture on 2 cores.
    fn default() -> ScaleSettings {
        ScaleSettings {
            budgets: vec![6e10, 2e11, 6e11],
            sizes_per_budget: 3,
            size_spread: 2.0,
            tokens_per_param: 20.0,
            seq_len: 128,
            batch_size: 8,
            lr: 3e-3,
            min_lr: 3e-4,
            warmup: 0.1,
            weight_decay: 0.1,
            target_compute: 1e13,
            max_width: 512,
            max_repeats: 8,
            valid_windows: 256,
            overtrain: default_overtrain(),
            overtrain_budget: Some(6e10),
        }
    }
}

/// A named set of stage settings (`tiny`, `cpu`, `paper`, ...).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Preset {
    /// The screen stage.
    pub screen: StageSettings,
    /// The MAD stage.
    pub mad: StageSettings,
    /// The scale stage.
    pub scale: ScaleSettings,
}

impl Preset {
    /// The synthetic-task settings of `stage` (`None` for `scale`, whose
    /// settings are [`Preset::scale`]).
    pub fn tasks(&self, stage: StageName) -> Option<&StageSettings> {
        match stage {
            StageName::Screen => Some(&self.screen),
            StageName::Mad => Some(&self.mad),
            StageName::Scale | StageName::Overtrain => None,
        }
    }
}

/// A parsed, validated search space.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SearchSpace {
    /// Short name.
    pub name: String,
    /// One-line description.
    pub description: String,
    /// Width, depth, norm.
    pub model: ModelChoices,
    /// Composition rules.
    pub structure: Structure,
    /// Hard limits.
    pub budget: Budget,
    /// The allowed primitives.
    pub primitives: BTreeMap<Primitive, PrimitiveChoices>,
    /// Search-policy parameters.
    pub search: SearchSettings,
    /// Named stage presets.
    pub presets: BTreeMap<String, Preset>,
    /// The space's own named architectures (`[[baseline]]` entries, each
    /// admitted by the space); empty: the paper's are the warm start.
    pub baselines: Vec<Baseline>,
}

impl SearchSpace {
    /// Reads and validates a search-space file.
    ///
    /// # Errors
    /// [`SpaceError`] naming the file, line and field of the first problem.
    pub fn load(path: &Path) -> Result<SearchSpace, SpaceError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpaceError::Io {
            file: path.to_path_buf(),
            source,
        })?;
        SearchSpace::parse(path, &text)
    }

    /// Parses and validates `text`, naming `file` in errors.
    ///
    /// # Errors
    /// [`SpaceError`] naming the file, line and field of the first problem.
    pub fn parse(file: &Path, text: &str) -> Result<SearchSpace, SpaceError> {
        parse::parse(file, text)
    }

    /// The architectures a search of this space seeds first when
    /// `search.baselines` is on: the space's own, else the paper's.
    pub fn warm_start(&self) -> Vec<Baseline> {
        if self.baselines.is_empty() {
            Baseline::embedded()
        } else {
            self.baselines.clone()
        }
    }

    /// The search space embedded in the binary.
    pub fn embedded_default() -> SearchSpace {
        SearchSpace::parse(Path::new(DEFAULT_SPACE_NAME), DEFAULT_SPACE)
            .expect("the embedded default space is validated by the test suite")
    }

    /// The primitives of `role`, with their choices, in a stable order.
    pub fn primitives_with_role(
        &self,
        role: crate::genome::Role,
    ) -> Vec<(Primitive, &PrimitiveChoices)> {
        self.primitives
            .iter()
            .filter(|(p, _)| p.role() == role)
            .map(|(p, c)| (*p, c))
            .collect()
    }

    /// The named preset.
    ///
    /// # Errors
    /// A message listing the presets this space defines.
    pub fn preset(&self, name: &str) -> Result<&Preset, String> {
        self.presets.get(name).ok_or_else(|| {
            let names: Vec<_> = self.presets.keys().map(String::as_str).collect();
            format!(
                "unknown preset `{name}`; the space `{}` defines: {}",
                self.name,
                names.join(", ")
            )
        })
    }
}
