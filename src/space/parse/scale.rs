//! The `[presets.NAME.scale]` table: the `scale` and `overtrain` stages'
//! settings, each field checked where it stands.

use super::*;

pub(super) fn parse_scale(t: &Table<'_, '_>) -> R<ScaleSettings> {
    t.only(&[
        "budgets",
        "sizes_per_budget",
        "size_spread",
        "tokens_per_param",
        "seq_len",
        "batch_size",
        "lr",
        "min_lr",
        "warmup",
        "weight_decay",
        "target_compute",
        "max_width",
        "max_repeats",
        "valid_windows",
        "overtrain",
        "overtrain_budget",
    ])?;
    let base = ScaleSettings::default();
    let positive = |v: &Val<'_, '_>| -> R<f64> {
        let x = v.number()?;
        if x <= 0.0 {
            return Err(v.error(format!("expected a positive number, found {x}")));
        }
        Ok(x)
    };
    let share = |v: &Val<'_, '_>| -> R<f64> {
        let x = v.number()?;
        if !(0.0..1.0).contains(&x) {
            return Err(v.error(format!("expected a value in [0, 1), found {x}")));
        }
        Ok(x)
    };
    let s = ScaleSettings {
        budgets: t
            .get("budgets", |v| {
                let b = v.list(positive)?;
                let mut distinct = b.clone();
                distinct.sort_by(f64::total_cmp);
                distinct.dedup();
                if distinct.len() < 3 {
                    return Err(v.error(format!(
                        "expected at least three distinct compute budgets (FLOPs), found {}",
                        distinct.len()
                    )));
                }
                Ok(b)
            })?
            .unwrap_or(base.budgets),
        sizes_per_budget: t
            .get("sizes_per_budget", |v| {
                let n = v.positive()?;
                if n < 3 {
                    return Err(v.error(format!(
                        "expected at least 3 sizes per budget (a parabola needs three), found {n}"
                    )));
                }
                Ok(n)
            })?
            .unwrap_or(base.sizes_per_budget),
        size_spread: t
            .get("size_spread", |v| {
                let x = v.number()?;
                if x <= 1.0 {
                    return Err(v.error(format!("expected a ratio above 1, found {x}")));
                }
                Ok(x)
            })?
            .unwrap_or(base.size_spread),
        tokens_per_param: t
            .get("tokens_per_param", positive)?
            .unwrap_or(base.tokens_per_param),
        seq_len: t.get("seq_len", |v| v.positive())?.unwrap_or(base.seq_len),
        batch_size: t
            .get("batch_size", |v| v.positive())?
            .unwrap_or(base.batch_size),
        lr: t.get("lr", positive)?.unwrap_or(base.lr),
        min_lr: t
            .get("min_lr", |v| {
                let x = v.number()?;
                if x < 0.0 {
                    return Err(v.error(format!("expected a non-negative number, found {x}")));
                }
                Ok(x)
            })?
            .unwrap_or(base.min_lr),
        warmup: t.get("warmup", share)?.unwrap_or(base.warmup),
        weight_decay: t.get("weight_decay", share)?.unwrap_or(base.weight_decay),
        target_compute: t
            .get("target_compute", positive)?
            .unwrap_or(base.target_compute),
        max_width: t
            .get("max_width", |v| v.positive())?
            .unwrap_or(base.max_width),
        max_repeats: t
            .get("max_repeats", |v| v.positive())?
            .unwrap_or(base.max_repeats),
        valid_windows: t
            .get("valid_windows", |v| v.positive())?
            .unwrap_or(base.valid_windows),
        overtrain: t
            .get("overtrain", |v| {
                let m = v.list(|x| {
                    let m = x.number()?;
                    if !(m > 1.0 && m.is_finite()) {
                        return Err(x.error(format!(
                            "expected a multiple of the compute-optimal tokens above 1, found {m}"
                        )));
                    }
                    Ok(m)
                })?;
                if m.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(v.error("expected increasing multiples, e.g. [4, 16]"));
                }
                Ok(m)
            })?
            .unwrap_or(base.overtrain),
        overtrain_budget: t.get("overtrain_budget", positive)?,
    };
    if let Some(b) = s.overtrain_budget
        && !s.budgets.contains(&b)
    {
        return Err(t.doc.error(
            &t.span_of("overtrain_budget"),
            &t.child_path("overtrain_budget"),
            format!(
                "expected one of budgets ({}), found {b:e}: the overtrained size is a budget's compute-optimal one",
                s.budgets
                    .iter()
                    .map(|b| format!("{b:e}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    if s.min_lr > s.lr {
        return Err(t.error(format!(
            "min_lr ({}) exceeds lr ({}); the cosine decays from lr to min_lr",
            s.min_lr, s.lr
        )));
    }
    Ok(s)
}
