//! The scaling plot of a model card: validation loss against training
//! compute (log axis) for every run, the compute-optimal points, the fitted
//! `L*(C)` extended to the target compute, and the prediction there with
//! its ±1 standard error. Plain SVG, written by hand (no plotting crate is
//! worth a dependency for one chart).

use std::fmt::Write as _;

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
    let mut xs: Vec<f64> = r.runs.iter().map(|x| x.planned.compute).collect();
    xs.push(target);
    let mut ys: Vec<f64> = r
        .runs
        .iter()
        .map(|x| x.result.valid_loss)
        .filter(|v| v.is_finite())
        .collect();
    let se = r.predicted_se.unwrap_or(0.0);
    ys.push(r.predicted_loss - se);
    ys.push(r.predicted_loss + se);
    let (x0, x1) = bounds(xs.iter().map(|x| x.log10()));
    let (y0, y1) = bounds(ys.iter().copied());
    let (x0, x1) = (x0.floor(), x1.ceil());
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
    // Axes, decade ticks on x, five ticks on y.
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
        r#"<text x="{}" y="{}" text-anchor="middle">training compute (FLOPs)</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 10.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(16 {}) rotate(-90)" text-anchor="middle">validation loss (nats/token)</text>"#,
        (TOP + H - BOTTOM) / 2.0
    );
    // The fitted law from the smallest budget to the target.
    let lo = r
        .runs
        .iter()
        .map(|x| x.planned.compute)
        .fold(f64::INFINITY, f64::min);
    let mut d = String::new();
    for i in 0..=100 {
        let c = 10f64.powf(lo.log10() + (target.log10() - lo.log10()) * f64::from(i) / 100.0);
        let l = r.law.predict(c);
        if l.is_finite() && (y0..=y1).contains(&l) {
            let _ = write!(
                d,
                "{}{:.1} {:.1} ",
                if d.is_empty() { "M" } else { "L" },
                px(c),
                py(l)
            );
        }
    }
    let _ = writeln!(
        s,
        r#"<path d="{d}" fill="none" stroke="black" stroke-dasharray="5 3"/>"#
    );
    // Runs, coloured by budget.
    for run in &r.runs {
        let k = r
            .settings
            .budgets
            .iter()
            .position(|b| *b == run.planned.budget)
            .unwrap_or(0);
        if run.result.valid_loss.is_finite() {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{}"><title>N={} d={}×{} loss {:.4}</title></circle>"#,
                px(run.planned.compute),
                py(run.result.valid_loss),
                COLOURS[k % COLOURS.len()],
                run.planned.member.params,
                run.planned.member.width,
                run.planned.member.repeats,
                run.result.valid_loss
            );
        }
    }
    // Compute-optimal points.
    for o in &r.optima {
        let (x, y) = (px(o.fit.compute), py(o.fit.loss_opt));
        let _ = writeln!(
            s,
            r#"<rect x="{:.1}" y="{:.1}" width="8" height="8" fill="none" stroke="black"><title>C={:.1e} N*={:.0} L*={:.4}</title></rect>"#,
            x - 4.0,
            y - 4.0,
            o.fit.compute,
            o.fit.n_opt,
            o.fit.loss_opt
        );
    }
    // The prediction at the target, with its standard error.
    let (x, y) = (px(target), py(r.predicted_loss));
    if se > 0.0 {
        let _ = writeln!(
            s,
            r#"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="crimson"/>"#,
            py(r.predicted_loss + se),
            py(r.predicted_loss - se)
        );
    }
    let _ = writeln!(
        s,
        r#"<path d="M{:.1} {y:.1} l6 -6 l6 6 l-6 6 z" fill="crimson"><title>predicted {:.4} at C={target:.1e}</title></path>"#,
        x - 6.0,
        r.predicted_loss
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="crimson">L̂ = {:.3}</text>"#,
        x - 10.0,
        y - 8.0,
        r.predicted_loss
    );
    s.push_str("</svg>\n");
    s
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
