//! TOML → [`SearchSpace`], with every check that can be made on the file
//! alone. Errors point at the offending key or value.

use std::collections::BTreeMap;
use std::path::Path;

use toml::de::DeTable;

use super::error::{Location, SpaceError};
use super::toml_walk::{Doc, R, Table, Val};
use super::{
    Budget, Grid, ModelChoices, Preset, PrimitiveChoices, ScaleSettings, SearchSettings,
    SearchSpace, StageName, StageSettings, Structure, TaskBudget,
};
use crate::genome::{Layer, Norm, ParamValue, Primitive, Role, Routing};
use crate::tasks::TaskKind;

/// Most values an integer range `{ min, max }` may expand to.
const MAX_RANGE_VALUES: u64 = 1024;
/// Most hyper-parameter combinations checked exhaustively per primitive.
const MAX_COMBINATIONS: usize = 4096;

pub(super) fn parse(file: &Path, text: &str) -> Result<SearchSpace, SpaceError> {
    let root = DeTable::parse(text).map_err(|e| SpaceError::Syntax {
        at: Location::of(file, text, e.span().map_or(0, |s| s.start)),
        message: e.message().trim().to_string(),
    })?;
    let doc = Doc { file, text };
    let top = Table::root(doc, &root);
    top.only(&[
        "space",
        "model",
        "structure",
        "budget",
        "primitives",
        "search",
        "presets",
        "baseline",
    ])?;

    let meta = top
        .val("space")
        .ok_or_else(|| top.error("missing table [space]; expected `name` and `description`"))?
        .table()?;
    meta.only(&["name", "description"])?;
    let name = meta.req("name", "a short name for the space", |v| {
        v.string().map(str::to_string)
    })?;
    if name.trim().is_empty() {
        return Err(doc.error(
            &meta.span_of("name"),
            "space.name",
            "expected a non-empty name",
        ));
    }
    let description = meta
        .get("description", |v| v.string().map(str::to_string))?
        .unwrap_or_default();

    let model = parse_model(&required_table(&top, "model", "d_model, layers and norm")?)?;
    let structure = match top.val("structure") {
        Some(v) => parse_structure(&v.table()?)?,
        None => Structure {
            max_sequence_mixer_kinds: 2,
            same_channel_mixer: false,
            attention_every: None,
        },
    };
    let budget_table = required_table(&top, "budget", "max_params and max_state")?;
    let budget = parse_budget(&budget_table)?;
    let prim_table = required_table(&top, "primitives", "one table per allowed primitive")?;
    let primitives = parse_primitives(&prim_table, &model)?;
    let search = match top.val("search") {
        Some(v) => parse_search(&v.table()?)?,
        None => SearchSettings {
            eta: 3,
            population: 64,
            tournament: 8,
            mutation: 0.5,
            crossover: 0.25,
            baselines: true,
            overtrain_top: 3,
        },
    };
    let presets = match top.val("presets") {
        Some(v) => parse_presets(&v.table()?)?,
        None => BTreeMap::new(),
    };

    let listed = match top.val("baseline") {
        Some(_) => super::Baseline::in_space(file, text)?,
        None => Vec::new(),
    };
    let mut space = SearchSpace {
        name,
        description,
        model,
        structure,
        budget,
        primitives,
        search,
        presets,
        baselines: Vec::new(),
    };
    check_composable(&space, &top, &prim_table)?;
    super::feasible::check(&space, doc, &budget_table)?;
    for (i, (b, at)) in listed.into_iter().enumerate() {
        if let Err(why) = space.admits(&b.genome) {
            return Err(SpaceError::Field {
                at,
                field: format!("baseline[{i}]"),
                message: format!(
                    "`{}` ({}) is outside the space: {why}; a space's baselines are points of it",
                    b.name,
                    b.genome.compact_string()
                ),
            });
        }
        space.baselines.push(b);
    }
    Ok(space)
}

fn required_table<'a, 'i>(top: &Table<'a, 'i>, key: &str, what: &str) -> R<Table<'a, 'i>> {
    top.val(key)
        .ok_or_else(|| top.error(format!("missing table [{key}]; expected {what}")))?
        .table()
}

fn parse_model(t: &Table<'_, '_>) -> R<ModelChoices> {
    t.only(&["d_model", "layers", "norm"])?;
    let d_model = t.req("d_model", "a list of widths, e.g. [128]", |v| {
        v.list(|x| x.positive())
    })?;
    let layers = t.req("layers", "a list of depths in layers, e.g. [4]", |v| {
        v.list(|x| x.positive())
    })?;
    let norm = t
        .get("norm", |v| {
            v.list(|x| {
                x.string()?
                    .parse::<Norm>()
                    .map_err(|e| x.error(e.to_string()))
            })
        })?
        .unwrap_or_else(|| vec![Norm::Rms]);
    Ok(ModelChoices {
        d_model: dedup(d_model),
        layers: dedup(layers),
        norm: dedup(norm),
    })
}

fn dedup<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v.dedup();
    v
}

fn parse_structure(t: &Table<'_, '_>) -> R<Structure> {
    t.only(&[
        "max_sequence_mixer_kinds",
        "same_channel_mixer",
        "attention_every",
    ])?;
    Ok(Structure {
        max_sequence_mixer_kinds: t
            .get("max_sequence_mixer_kinds", |v| v.positive())?
            .unwrap_or(2),
        same_channel_mixer: t
            .get("same_channel_mixer", |v| v.boolean())?
            .unwrap_or(false),
        attention_every: t
            .get("attention_every", |v| {
                v.list(|x| {
                    usize::try_from(x.uint()?)
                        .map_err(|_| x.error("expected a block count that fits this machine"))
                })
            })?
            .map(dedup),
    })
}

fn parse_budget(t: &Table<'_, '_>) -> R<Budget> {
    t.only(&[
        "max_params",
        "min_params",
        "max_state",
        "max_state_per_token",
        "seq_len",
    ])?;
    let positive_u64 = |v: &Val<'_, '_>| v.positive().map(|n| n as u64);
    let budget = Budget {
        max_params: t.req(
            "max_params",
            "the most non-embedding parameters",
            positive_u64,
        )?,
        min_params: t.get("min_params", |v| v.uint())?.unwrap_or(0),
        max_state: t.req("max_state", "the most fixed recurrent state", |v| v.uint())?,
        max_state_per_token: t
            .get("max_state_per_token", |v| v.uint())?
            .unwrap_or(u64::MAX),
        seq_len: t.get("seq_len", |v| v.positive())?.unwrap_or(128),
    };
    if budget.min_params > budget.max_params {
        return Err(t.doc.error(
            &t.span_of("min_params"),
            "budget.min_params",
            format!(
                "{} is more than budget.max_params ({}); the budget is contradictory",
                budget.min_params, budget.max_params
            ),
        ));
    }
    if budget.seq_len < 2 {
        return Err(t.doc.error(
            &t.span_of("seq_len"),
            "budget.seq_len",
            "expected a sequence length of at least 2",
        ));
    }
    Ok(budget)
}

fn parse_primitives(
    t: &Table<'_, '_>,
    model: &ModelChoices,
) -> R<BTreeMap<Primitive, PrimitiveChoices>> {
    let mut out = BTreeMap::new();
    for (key, value) in t.entries() {
        let path = t.child_path(key.get_ref());
        let primitive: Primitive =
            key.get_ref()
                .parse()
                .map_err(|e: crate::genome::GenomeError| {
                    t.doc.error(&key.span(), &path, e.to_string())
                })?;
        let pt = Val {
            doc: t.doc,
            path: path.clone(),
            v: value,
        }
        .table()?;
        let mut params = BTreeMap::new();
        let mut weight = 1.0;
        for (pkey, pval) in pt.entries() {
            let pname = pkey.get_ref().as_ref();
            let v = Val {
                doc: t.doc,
                path: pt.child_path(pname),
                v: pval,
            };
            if pname == "weight" {
                weight = v.number()?;
                if weight <= 0.0 {
                    return Err(v.error(format!(
                        "expected a positive sampling weight, found {weight}; remove the table to exclude `{primitive}`"
                    )));
                }
                continue;
            }
            let Some(&static_name) = primitive.params().iter().find(|n| **n == pname) else {
                return Err(t.doc.error(
                    &pkey.span(),
                    &v.path,
                    format!(
                        "`{primitive}` has no parameter `{pname}`; it takes: weight, {}",
                        primitive.params().join(", ")
                    ),
                ));
            };
            let values = param_values(&v, primitive, static_name, model)?;
            params.insert(static_name, dedup(values));
        }
        check_combinations(&pt, primitive, &params, model)?;
        out.insert(primitive, PrimitiveChoices { weight, params });
    }
    if out.is_empty() {
        return Err(t.error(
            "no primitives; expected at least one table such as [primitives.mh-attention]",
        ));
    }
    Ok(out)
}

/// Reads a parameter's choices: a value, a list, or (integers) `{ min, max }`;
/// each value is checked on its own ([`check_value`]).
fn param_values(
    v: &Val<'_, '_>,
    primitive: Primitive,
    name: &str,
    model: &ModelChoices,
) -> R<Vec<ParamValue>> {
    if name == "routing" {
        return v.list(|x| {
            let value = x
                .string()?
                .parse::<Routing>()
                .map(ParamValue::Routing)
                .map_err(|e| x.error(e))?;
            check_value(x, primitive, name, value, model)?;
            Ok(value)
        });
    }
    if let Ok(range) = v.table() {
        range.only(&["min", "max"])?;
        let min = range.req("min", "the smallest value", |x| x.positive())?;
        let max = range.req("max", "the largest value", |x| x.positive())?;
        if min > max {
            return Err(v.error(format!("min ({min}) is more than max ({max})")));
        }
        if (max - min) as u64 >= MAX_RANGE_VALUES {
            return Err(v.error(format!(
                "the range holds {} values; at most {MAX_RANGE_VALUES} are allowed, list the values instead",
                max - min + 1
            )));
        }
        let values: Vec<_> = (min..=max).map(ParamValue::Int).collect();
        for value in &values {
            check_value(v, primitive, name, *value, model)?;
        }
        return Ok(values);
    }
    v.list(|x| {
        let value = ParamValue::Int(x.positive()?);
        check_value(x, primitive, name, value, model)?;
        Ok(value)
    })
}

/// One value alone (other parameters at their defaults) must keep the
/// primitive's name and build at every width.
fn check_value(
    v: &Val<'_, '_>,
    primitive: Primitive,
    name: &str,
    value: ParamValue,
    model: &ModelChoices,
) -> R<()> {
    let mut layer = Layer::default_for(primitive);
    layer
        .set_param(name, value)
        .map_err(|e| v.error(e.to_string()))?;
    let built = layer.primitive();
    if built != primitive {
        return Err(v.error(format!(
            "the value {value} makes this layer a `{built}`; list it under [primitives.{built}] instead"
        )));
    }
    for &d in &model.d_model {
        if let Err(e) = layer.validate(d) {
            let at = if model.d_model.len() > 1 {
                format!(" (at d_model = {d})")
            } else {
                String::new()
            };
            return Err(v.error(format!("{e}{at}")));
        }
    }
    Ok(())
}

/// Every combination of the listed values must build at every width.
fn check_combinations(
    pt: &Table<'_, '_>,
    primitive: Primitive,
    params: &BTreeMap<&'static str, Vec<ParamValue>>,
    model: &ModelChoices,
) -> R<()> {
    let count: usize = params
        .values()
        .map(Vec::len)
        .try_fold(1usize, |acc, n| acc.checked_mul(n))
        .unwrap_or(usize::MAX);
    if count > MAX_COMBINATIONS {
        // Each value was checked alone; the sampler rejects bad combinations.
        return Ok(());
    }
    for layer in super::sample::all_layers(primitive, params) {
        for &d in &model.d_model {
            if let Err(e) = layer.validate(d) {
                let param = match &e {
                    crate::genome::GenomeError::InvalidParam { param, .. } => param.clone(),
                    _ => String::new(),
                };
                let combo: Vec<String> = params
                    .keys()
                    .filter_map(|n| layer.param(n, d).map(|v| format!("{n} = {v}")))
                    .collect();
                let span = pt.span_of(&param);
                return Err(pt.doc.error(
                    &span,
                    &pt.child_path(&param),
                    format!(
                        "the combination {} cannot be built at d_model = {d}: {e}; every combination of the listed values must be valid",
                        combo.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn parse_search(t: &Table<'_, '_>) -> R<SearchSettings> {
    t.only(&[
        "eta",
        "population",
        "tournament",
        "mutation",
        "crossover",
        "baselines",
        "overtrain_top",
    ])?;
    let s = SearchSettings {
        eta: t.get("eta", |v| v.positive())?.unwrap_or(3),
        population: t.get("population", |v| v.positive())?.unwrap_or(64),
        tournament: t.get("tournament", |v| v.positive())?.unwrap_or(8),
        mutation: t.get("mutation", |v| v.number())?.unwrap_or(0.5),
        crossover: t.get("crossover", |v| v.number())?.unwrap_or(0.25),
        baselines: t.get("baselines", |v| v.boolean())?.unwrap_or(true),
        overtrain_top: t
            .get("overtrain_top", |v| {
                usize::try_from(v.uint()?).map_err(|_| v.error("too large"))
            })?
            .unwrap_or(3),
    };
    let at = |key: &str, msg: String| t.doc.error(&t.span_of(key), &t.child_path(key), msg);
    if s.eta < 2 {
        return Err(at("eta", format!("expected at least 2, found {}", s.eta)));
    }
    if s.population < 2 {
        return Err(at(
            "population",
            format!("expected at least 2, found {}", s.population),
        ));
    }
    if s.tournament < 2 || s.tournament > s.population {
        return Err(at(
            "tournament",
            format!(
                "expected between 2 and search.population ({}), found {}",
                s.population, s.tournament
            ),
        ));
    }
    for (key, p) in [("mutation", s.mutation), ("crossover", s.crossover)] {
        if !(0.0..=1.0).contains(&p) {
            return Err(at(
                key,
                format!("expected a probability in [0, 1], found {p}"),
            ));
        }
    }
    if s.mutation + s.crossover > 1.0 {
        return Err(at(
            "crossover",
            format!(
                "mutation + crossover = {} exceeds 1; the rest is the share of fresh samples",
                s.mutation + s.crossover
            ),
        ));
    }
    Ok(s)
}

fn parse_presets(t: &Table<'_, '_>) -> R<BTreeMap<String, Preset>> {
    let mut out = BTreeMap::new();
    for (key, value) in t.entries() {
        let path = t.child_path(key.get_ref());
        let pt = Val {
            doc: t.doc,
            path,
            v: value,
        }
        .table()?;
        pt.only(&["screen", "mad", "scale"])?;
        let stage = |name: StageName| -> R<StageSettings> {
            match pt.val(name.name()) {
                Some(v) => parse_stage(&v.table()?, name),
                None => Ok(StageSettings::protocol(name)),
            }
        };
        out.insert(
            key.get_ref().to_string(),
            Preset {
                screen: stage(StageName::Screen)?,
                mad: stage(StageName::Mad)?,
                scale: match pt.val("scale") {
                    Some(v) => parse_scale(&v.table()?)?,
                    None => ScaleSettings::default(),
                },
            },
        );
    }
    Ok(out)
}

fn parse_stage(t: &Table<'_, '_>, stage: StageName) -> R<StageSettings> {
    t.only(&[
        "tasks",
        "grid",
        "train_examples",
        "test_examples",
        "max_seq_len",
        "max_epochs",
        "max_steps",
        "batch_size",
        "lr",
        "weight_decay",
        "betas",
        "early_stop",
        "embedding_std",
        "patience",
        "metric",
        "per_task",
    ])?;
    let base = StageSettings::protocol(stage);
    let probability_open = |v: &Val<'_, '_>, lo_open: bool| -> R<f64> {
        let x = v.number()?;
        let ok = if lo_open { x > 0.0 } else { x >= 0.0 };
        if !ok || x > 1.0 {
            return Err(v.error(format!(
                "expected a value in {}0, 1], found {x}",
                if lo_open { "(" } else { "[" }
            )));
        }
        Ok(x)
    };
    let s = StageSettings {
        tasks: t
            .get("tasks", |v| {
                v.list(|x| x.string()?.parse::<TaskKind>().map_err(|e| x.error(e)))
            })?
            .map(dedup)
            .unwrap_or(base.tasks),
        grid: t
            .get("grid", |v| match v.string()? {
                "baseline" => Ok(Grid::Baseline),
                "full" => Ok(Grid::Full),
                other => Err(v.error(format!(
                    "unknown grid `{other}`; expected \"baseline\" or \"full\""
                ))),
            })?
            .unwrap_or(base.grid),
        train_examples: t
            .get("train_examples", |v| v.positive())?
            .or(base.train_examples),
        test_examples: t
            .get("test_examples", |v| v.positive())?
            .unwrap_or(base.test_examples),
        max_seq_len: t.get("max_seq_len", |v| v.positive())?.or(base.max_seq_len),
        max_epochs: t
            .get("max_epochs", |v| v.positive())?
            .unwrap_or(base.max_epochs),
        max_steps: t.get("max_steps", |v| v.positive())?.or(base.max_steps),
        batch_size: t
            .get("batch_size", |v| v.positive())?
            .unwrap_or(base.batch_size),
        lr: t
            .get("lr", |v| {
                v.list(|x| {
                    let lr = x.number()?;
                    if lr <= 0.0 || lr > 1.0 {
                        return Err(
                            x.error(format!("expected a learning rate in (0, 1], found {lr}"))
                        );
                    }
                    Ok(lr)
                })
            })?
            .unwrap_or(base.lr),
        weight_decay: t
            .get("weight_decay", |v| v.list(|x| probability_open(x, false)))?
            .unwrap_or(base.weight_decay),
        betas: t
            .get("betas", |v| {
                let b = v.list(|x| {
                    let b = x.number()?;
                    if !(0.0..1.0).contains(&b) {
                        return Err(x.error(format!("expected a beta in [0, 1), found {b}")));
                    }
                    Ok(b)
                })?;
                match b[..] {
                    [b1, b2] => Ok([b1, b2]),
                    _ => Err(v.error(format!("expected two betas [b1, b2], found {}", b.len()))),
                }
            })?
            .unwrap_or(base.betas),
        early_stop: t
            .get("early_stop", |v| probability_open(v, true))?
            .unwrap_or(base.early_stop),
        embedding_std: t
            .get("embedding_std", |v| {
                let x = v.number()?;
                if !(x > 0.0 && x <= 10.0) {
                    return Err(v.error(format!(
                        "expected a standard deviation in (0, 10], found {x} (the protocol's is 0.02)"
                    )));
                }
                Ok(x)
            })?
            .unwrap_or(base.embedding_std),
        patience: t.get("patience", |v| v.positive())?.or(base.patience),
        metric: t
            .get("metric", |v| v.string()?.parse().map_err(|e| v.error(e)))?
            .unwrap_or(base.metric),
        per_task: t
            .get("per_task", |v| parse_per_task(&v.table()?))?
            .unwrap_or(base.per_task),
    };
    if let Some(task) = s.per_task.keys().find(|k| !s.tasks.contains(k)) {
        let msg = format!(
            "sets a budget for {}, a task the stage does not run (tasks: {}); remove it or add \
             the task to `tasks`",
            task.name(),
            s.tasks
                .iter()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Err(match t.val("per_task") {
            Some(v) => v.error(msg),
            None => t.error(msg),
        });
    }
    Ok(s)
}

/// `per_task = { TASK = { max_epochs, max_steps, train_examples, patience } }`, or
/// `[presets.P.STAGE.per_task.TASK]` tables.
fn parse_per_task(t: &Table<'_, '_>) -> R<BTreeMap<TaskKind, TaskBudget>> {
    let mut out = BTreeMap::new();
    for (key, value) in t.entries() {
        let v = Val {
            doc: t.doc,
            path: t.child_path(key.get_ref()),
            v: value,
        };
        let task: TaskKind = key.get_ref().parse().map_err(|e| v.error(e))?;
        let b = v.table()?;
        b.only(&["max_epochs", "max_steps", "train_examples", "patience"])?;
        let budget = TaskBudget {
            max_epochs: b.get("max_epochs", |v| v.positive())?,
            max_steps: b.get("max_steps", |v| v.positive())?,
            train_examples: b.get("train_examples", |v| v.positive())?,
            patience: b.get("patience", |v| v.positive())?,
        };
        if out.insert(task, budget).is_some() {
            return Err(v.error(format!(
                "{} has two budgets (a task's name and its short form name the same task)",
                task.name()
            )));
        }
    }
    Ok(out)
}

/// Cross-section checks: the primitives and depths can form a model.
fn check_composable(space: &SearchSpace, top: &Table<'_, '_>, prims: &Table<'_, '_>) -> R<()> {
    let has = |role| space.primitives.keys().any(|p| p.role() == role);
    let (seq, chan, fused) = (has(Role::Sequence), has(Role::Channel), has(Role::Fused));
    if !seq && !fused {
        return Err(prims.error(
            "the space can produce nothing: no sequence mixer or fused block (e.g. [primitives.mh-attention] or [primitives.mamba])",
        ));
    }
    if seq && !chan && !fused {
        return Err(prims.error(
            "the space can produce nothing: sequence mixers need a channel mixer after them (e.g. [primitives.swiglu])",
        ));
    }
    if let Some(ks) = &space.structure.attention_every {
        let table = top.val("structure").and_then(|v| v.table().ok());
        let span = table
            .as_ref()
            .map_or(0..0, |t| t.span_of("attention_every"));
        let error = |message: String| top.doc.error(&span, "structure.attention_every", message);
        let attention: Vec<String> = space
            .primitives
            .keys()
            .filter(|p| p.is_global_attention())
            .map(|p| format!("[primitives.{p}]"))
            .collect();
        let other = space
            .primitives
            .keys()
            .any(|p| !p.is_global_attention() && p.role() != Role::Channel);
        if ks.iter().any(|&k| k > 0) && attention.is_empty() {
            return Err(error(format!(
                "{ks:?} places global attention every k-th block, but the space lists no global attention; add [primitives.mh-attention] (or attention), or write [0]"
            )));
        }
        if ks.iter().any(|&k| k != 1) && !other {
            return Err(error(format!(
                "{ks:?} asks for blocks without global attention, but every sequence mixer of the space is global attention; add another mixer, or write [1]"
            )));
        }
        let fused = space.primitives.keys().any(|p| p.role() == Role::Fused);
        let most_layers = space.model.layers.iter().copied().max().unwrap_or(0);
        let most_blocks = if fused { most_layers } else { most_layers / 2 };
        if let Some(k) = ks.iter().find(|&&k| k > most_blocks.max(1)) {
            return Err(error(format!(
                "k = {k} is more than the most blocks a model of this space has ({most_blocks}), so it places no attention; write 0 for none"
            )));
        }
        if space.structure.max_sequence_mixer_kinds < 2 && ks.iter().any(|&k| k >= 2) {
            return Err(error(format!(
                "{ks:?} mixes attention with other mixers, but structure.max_sequence_mixer_kinds = {} allows one kind per model; raise it to 2 or keep only ratios 0 and 1",
                space.structure.max_sequence_mixer_kinds
            )));
        }
        if ks.iter().all(|&k| k == 0) && !attention.is_empty() {
            return Err(error(format!(
                "[0] forbids global attention, but the space lists {}; remove them, or allow a ratio k > 0",
                attention.join(", ")
            )));
        }
    }
    let model = top.val("model").and_then(|v| v.table().ok());
    for &depth in &space.model.layers {
        if !fused && depth % 2 == 1 {
            let span = model.as_ref().map_or(0..0, |m| m.span_of("layers"));
            return Err(top.doc.error(
                &span,
                "model.layers",
                format!(
                    "depth {depth} is odd, but without a fused block (mamba) every block is a sequence mixer and a channel mixer (2 layers); expected even depths"
                ),
            ));
        }
    }
    Ok(())
}

mod scale;
use scale::parse_scale;

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
