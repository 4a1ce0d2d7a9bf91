//! The plots of a model card, plain SVG written by hand (no plotting crate
//! is worth a dependency for three charts): the scaling plot (validation
//! loss against training compute, log axis, for every run, the
//! compute-optimal points, the fitted `L*(C)` extended to the target
//! compute, and the prediction there with its ±1 standard error); the
//! overtrained curve (loss against tokens at one size); and the
//! state-optimal view (loss against recurrent state).

use std::fmt::Write as _;

use crate::stages::overtrain::OvertrainResult;
use crate::stages::scale::ScaleResult;

const W: f64 = 640.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 50.0;

/// Colours of the budgets' points (cycled).
const COLOURS: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
];

/// The SVG text of `r`'s scaling plot, titled `title`.
pub fn svg(r: &ScaleResult, title: &str) -> String {
    let target = r.settings.target_compute;
    let mut marks: Vec<Mark> = r
        .runs
        .iter()
        .map(|run| Mark {
            x: run.planned.compute,
            y: run.result.valid_loss,
            colour: Some(budget_colour(r, run.planned.budget)),
            title: format!(
                "N={} d={}×{} loss {:.4}",
                run.planned.member.params,
                run.planned.member.width,
                run.planned.member.repeats,
                run.result.valid_loss
            ),
        })
        .collect();
    marks.extend(r.optima.iter().map(|o| Mark {
        x: o.fit.compute,
        y: o.fit.loss_opt,
        colour: None,
        title: format!(
            "C={:.1e} N*={:.0} L*={:.4}",
            o.fit.compute, o.fit.n_opt, o.fit.loss_opt
        ),
    }));
    let se = r.predicted_se.unwrap_or(0.0);
    let lo = r
        .runs
        .iter()
        .map(|x| x.planned.compute)
        .fold(f64::INFINITY, f64::min);
    let curve: Vec<(f64, f64)> = log_span(lo, target, 100)
        .map(|c| (c, r.law.predict(c)))
        .collect();
    let predicted = r.predicted_loss;
    // The prediction at the target, with its standard error.
    let prediction = move |px: &dyn Fn(f64) -> f64, py: &dyn Fn(f64) -> f64| {
        let mut s = String::new();
        let (x, y) = (px(target), py(predicted));
        if se > 0.0 {
            let _ = writeln!(
                s,
                r#"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="crimson"/>"#,
                py(predicted + se),
                py(predicted - se)
            );
        }
        let _ = writeln!(
            s,
            r#"<path d="M{:.1} {y:.1} l6 -6 l6 6 l-6 6 z" fill="crimson"><title>predicted {predicted:.4} at C={target:.1e}</title></path>"#,
            x - 6.0,
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="crimson">L̂ = {predicted:.3}</text>"#,
            x - 10.0,
            y - 8.0,
        );
        s
    };
    chart(&Chart {
        title,
        x_label: "training compute (FLOPs)",
        marks: &marks,
        curve: &curve,
        note: None,
        also: &[(target, predicted - se), (target, predicted + se)],
        extra: Some(&prediction),
    })
}

/// The colour of a run of `budget`.
fn budget_colour(r: &ScaleResult, budget: f64) -> &'static str {
    let k = r
        .settings
        .budgets
        .iter()
        .position(|b| *b == budget)
        .unwrap_or(0);
    COLOURS[k % COLOURS.len()]
}

fn bounds(v: impl Iterator<Item = f64>) -> (f64, f64) {
    v.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    })
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A mark on a [`chart`].
pub struct Mark {
    /// Position (x on a log axis).
    pub x: f64,
    /// Loss.
    pub y: f64,
    /// Fill colour (`None`: an open square).
    pub colour: Option<&'static str>,
    /// Tooltip.
    pub title: String,
}

/// Draws extra elements given the chart's x and y maps.
type Extra<'a> = &'a dyn Fn(&dyn Fn(f64) -> f64, &dyn Fn(f64) -> f64) -> String;

/// A chart of loss against a log-scaled x.
struct Chart<'a> {
    title: &'a str,
    x_label: &'a str,
    /// Points.
    marks: &'a [Mark],
    /// (x, y) dashed through them (clipped to the marks' range).
    curve: &'a [(f64, f64)],
    /// Text in the top right corner.
    note: Option<&'a str>,
    /// More points the axes must hold.
    also: &'a [(f64, f64)],
    /// Drawn last.
    extra: Option<Extra<'a>>,
}

fn chart(c: &Chart<'_>) -> String {
    let Chart {
        title,
        x_label,
        marks,
        curve,
        note,
        also,
        extra,
    } = *c;
    let points = || {
        marks
            .iter()
            .map(|m| (m.x, m.y))
            .chain(also.iter().copied())
            .filter(|(x, y)| *x > 0.0 && y.is_finite())
    };
    let (x0, x1) = bounds(points().map(|p| p.0.log10()));
    let (y0, y1) = bounds(points().map(|p| p.1));
    let (x0, x1) = (x0.floor(), x1.ceil().max(x0.floor() + 1.0));
    let pad = (y1 - y0).max(1e-3) * 0.08;
    let (y0, y1) = (y0 - pad, y1 + pad);
    let px = |c: f64| LEFT + (c.log10() - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let py = |l: f64| TOP + (y1 - l) / (y1 - y0) * (H - TOP - BOTTOM);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="18" text-anchor="middle" font-size="14">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    let (bx, by) = (H - BOTTOM, W - RIGHT);
    let _ = writeln!(
        s,
        r#"<path d="M{LEFT} {TOP} V{bx} H{by}" fill="none" stroke="black"/>"#
    );
    for d in (x0 as i64)..=(x1 as i64) {
        let x = px(10f64.powi(d as i32));
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{bx}" x2="{x:.1}" y2="{TOP}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">1e{d}</text>"##,
            bx + 16.0
        );
    }
    for i in 0..=5 {
        let l = y0 + (y1 - y0) * f64::from(i) / 5.0;
        let y = py(l);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{by}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{l:.2}</text>"##,
            LEFT - 6.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 10.0,
        escape(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(16 {}) rotate(-90)" text-anchor="middle">validation loss (nats/token)</text>"#,
        (TOP + H - BOTTOM) / 2.0
    );
    let mut d = String::new();
    for &(x, y) in curve {
        if x > 0.0 && y.is_finite() && (y0..=y1).contains(&y) {
            let _ = write!(
                d,
                "{}{:.1} {:.1} ",
                if d.is_empty() { "M" } else { "L" },
                px(x),
                py(y)
            );
        }
    }
    if !d.is_empty() {
        let _ = writeln!(
            s,
            r#"<path d="{d}" fill="none" stroke="black" stroke-dasharray="5 3"/>"#
        );
    }
    for m in marks.iter().filter(|m| m.x > 0.0 && m.y.is_finite()) {
        let (x, y) = (px(m.x), py(m.y));
        match m.colour {
            Some(c) => {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="{c}"><title>{}</title></circle>"#,
                    escape(&m.title)
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    r#"<rect x="{:.1}" y="{:.1}" width="8" height="8" fill="none" stroke="black"><title>{}</title></rect>"#,
                    x - 4.0,
                    y - 4.0,
                    escape(&m.title)
                );
            }
        }
    }
    if let Some(f) = extra {
        s.push_str(&f(&px, &py));
    }
    if let Some(n) = note {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            W - RIGHT - 4.0,
            TOP + 14.0,
            escape(n)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// `n` points from `lo` to `hi`, evenly spaced in log.
fn log_span(lo: f64, hi: f64, n: u32) -> impl Iterator<Item = f64> {
    (0..=n).map(move |i| {
        10f64.powf(lo.log10() + (hi.log10() - lo.log10()) * f64::from(i) / f64::from(n))
    })
}

/// The overtrained curve: loss against training tokens at the fixed size,
/// each multiple a point, the fitted `L(D)` dashed.
pub fn overtrain_svg(r: &OvertrainResult, title: &str) -> String {
    let marks: Vec<Mark> = r
        .points
        .iter()
        .map(|p| Mark {
            x: p.run.planned.tokens as f64,
            y: p.run.result.valid_loss,
            colour: Some(if p.from_scale { COLOURS[0] } else { COLOURS[1] }),
            title: format!(
                "{}× ({:.0} tokens/param): loss {:.4}",
                p.multiple, p.tokens_per_param, p.run.result.valid_loss
            ),
        })
        .collect();
    let curve: Vec<(f64, f64)> = match (&r.curve, marks.first(), marks.last()) {
        (Some(c), Some(a), Some(b)) => log_span(a.x, b.x, 60).map(|d| (d, c.predict(d))).collect(),
        _ => Vec::new(),
    };
    let size = r.points.first().map_or(0, |p| p.run.planned.member.params);
    let note = format!(
        "loss at {}×: {:.3}",
        r.points.last().map_or(1.0, |p| p.multiple),
        r.loss
    );
    chart(&Chart {
        title: &format!("{title}: overtrained at N = {size}"),
        x_label: "training tokens",
        marks: &marks,
        curve: &curve,
        note: Some(&note),
        also: &[],
        extra: None,
    })
}

/// The state-optimal view: every scaling run's loss against its recurrent
/// state (coloured by budget), the compute-optimal points (squares), and
/// `L* ∝ M^c` dashed.
pub fn state_svg(r: &ScaleResult, title: &str) -> String {
    let mut marks: Vec<Mark> = r
        .runs
        .iter()
        .map(|run| Mark {
            x: run.planned.member.state as f64,
            y: run.result.valid_loss,
            colour: Some(budget_colour(r, run.planned.budget)),
            title: format!(
                "C={:.1e} N={} state {} loss {:.4}",
                run.planned.budget,
                run.planned.member.params,
                run.planned.member.state,
                run.result.valid_loss
            ),
        })
        .collect();
    marks.extend(r.optima.iter().map(|o| Mark {
        x: o.state,
        y: o.fit.loss_opt,
        colour: None,
        title: format!(
            "C={:.1e} compute-optimal: state {:.0} L* {:.4}",
            o.fit.compute, o.state, o.fit.loss_opt
        ),
    }));
    let curve: Vec<(f64, f64)> = match &r.state_law {
        Some(l) => {
            let (lo, hi) = bounds(r.optima.iter().map(|o| o.state));
            log_span(lo, hi, 40)
                .map(|m| (m, (l.log_coef + l.exponent * m.ln()).exp()))
                .collect()
        }
        None => Vec::new(),
    };
    let note = r.state_law.as_ref().map(|l| {
        format!(
            "L* ∝ M^{:.3}{}",
            l.exponent,
            l.exponent_se
                .map_or(String::new(), |e| format!(" ± {e:.3}"))
        )
    });
    chart(&Chart {
        title: &format!("{title}: loss against state"),
        x_label: &format!(
            "recurrent state (KV cache at context {})",
            r.settings.seq_len
        ),
        marks: &marks,
        curve: &curve,
        note: note.as_deref(),
        also: &[],
        extra: None,
    })
}
