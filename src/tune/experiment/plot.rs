//! The SVG plot of an experiment: every run's value by variant (the median
//! as a bar), and the values in the order the runs happened, where drift
//! over time shows; the verdicts underneath.

use super::report::{num, VariantSummary};
use super::spec::Experiment;
use super::RunRecord;

const COLORS: &[&str] = &[
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f",
];
const WIDTH: f64 = 960.0;
/// Top and bottom of both panels' plotting area.
const TOP: f64 = 50.0;
const BOTTOM: f64 = 330.0;
/// Left and right edge of each panel.
const BY_VARIANT: (f64, f64) = (70.0, 460.0);
const IN_ORDER: (f64, f64) = (540.0, 930.0);
const LINE_HEIGHT: usize = 16;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The metric's range, padded, mapped onto the panels' height.
struct Scale {
    lo: f64,
    hi: f64,
}

impl Scale {
    fn of(runs: &[RunRecord]) -> Scale {
        let values: Vec<f64> = runs.iter().filter_map(|r| r.metric).collect();
        if values.is_empty() {
            return Scale { lo: 0.0, hi: 1.0 };
        }
        let lo = values.iter().copied().fold(f64::MAX, f64::min);
        let hi = values.iter().copied().fold(f64::MIN, f64::max);
        let pad = ((hi - lo) * 0.08).max(hi.abs() * 0.01).max(1e-9);
        Scale {
            lo: (lo - pad).max(0.0),
            hi: hi + pad,
        }
    }

    fn y(&self, v: f64) -> f64 {
        BOTTOM - (BOTTOM - TOP) * (v - self.lo) / (self.hi - self.lo)
    }
}

fn color(exp: &Experiment, variant: &str) -> &'static str {
    let i = exp
        .variants
        .iter()
        .position(|v| v.name == variant)
        .unwrap_or(0);
    COLORS[i % COLORS.len()]
}

pub fn svg(exp: &Experiment, runs: &[RunRecord], summary: &[VariantSummary]) -> String {
    let scale = Scale::of(runs);
    let verdicts: Vec<&String> = summary.iter().filter_map(|s| s.verdict.as_ref()).collect();
    let height = 380 + LINE_HEIGHT * verdicts.len();
    let better = if exp.metric.higher_is_better() {
        "higher is better"
    } else {
        "lower is better"
    };
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12"><rect width="{WIDTH}" height="{height}" fill="white"/>"#
    );
    s.push_str(&format!(
        r#"<text x="20" y="22" font-size="14">{} — {} ({better})</text>"#,
        esc(&exp.name),
        exp.metric.name(),
    ));
    for (x0, x1) in [BY_VARIANT, IN_ORDER] {
        axes(&mut s, &scale, x0, x1);
    }
    s.push_str(&format!(
        r#"<text x="{}" y="42">every run by variant (bar: median)</text><text x="{}" y="42">runs in the order they ran</text>"#,
        BY_VARIANT.0, IN_ORDER.0
    ));
    by_variant(&mut s, &scale, exp, runs, summary);
    in_order(&mut s, &scale, exp, runs);
    for (k, line) in verdicts.iter().enumerate() {
        let y = 370 + LINE_HEIGHT * k;
        s.push_str(&format!(r#"<text x="20" y="{y}">{}</text>"#, esc(line)));
    }
    s.push_str("</svg>\n");
    s
}

/// Axis lines and five labelled grid lines.
fn axes(s: &mut String, scale: &Scale, x0: f64, x1: f64) {
    s.push_str(&format!(
        r#"<line x1="{x0}" y1="{BOTTOM}" x2="{x1}" y2="{BOTTOM}" stroke="black"/><line x1="{x0}" y1="{TOP}" x2="{x0}" y2="{BOTTOM}" stroke="black"/>"#
    ));
    for i in 0..=4 {
        let v = scale.lo + (scale.hi - scale.lo) * i as f64 / 4.0;
        let y = scale.y(v);
        s.push_str(&format!(
            r##"<text x="{:.0}" y="{:.1}" text-anchor="end">{}</text><line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#ddd"/>"##,
            x0 - 4.0,
            y + 4.0,
            num(v),
        ));
    }
}

/// One column per variant: a dot per run, a bar at the median.
fn by_variant(
    s: &mut String,
    scale: &Scale,
    exp: &Experiment,
    runs: &[RunRecord],
    summary: &[VariantSummary],
) {
    let col = (BY_VARIANT.1 - BY_VARIANT.0) / exp.variants.len() as f64;
    for (i, v) in exp.variants.iter().enumerate() {
        let color = color(exp, &v.name);
        let cx = BY_VARIANT.0 + col * (i as f64 + 0.5);
        let label = if i == exp.baseline {
            format!("{} (base)", v.name)
        } else {
            v.name.clone()
        };
        s.push_str(&format!(
            r#"<text x="{cx:.1}" y="{:.0}" text-anchor="middle">{}</text>"#,
            BOTTOM + 16.0,
            esc(&label)
        ));
        let mine: Vec<f64> = runs
            .iter()
            .filter(|r| r.variant == v.name)
            .filter_map(|r| r.metric)
            .collect();
        let spread = col * 0.5 / mine.len().max(1) as f64;
        for (k, value) in mine.iter().enumerate() {
            let x = cx + (k as f64 - (mine.len() as f64 - 1.0) / 2.0) * spread;
            s.push_str(&format!(
                r#"<circle class="run" cx="{x:.1}" cy="{:.1}" r="5" fill="{color}" fill-opacity="0.8"/>"#,
                scale.y(*value)
            ));
        }
        if let Some(m) = summary.get(i).and_then(|s| s.median) {
            let (x0, x1, y) = (cx - col * 0.35, cx + col * 0.35, scale.y(m));
            s.push_str(&format!(
                r#"<line x1="{x0:.1}" y1="{y:.1}" x2="{x1:.1}" y2="{y:.1}" stroke="{color}" stroke-width="3"/>"#
            ));
        }
    }
}

/// The runs left to right as they happened, joined by a line.
fn in_order(s: &mut String, scale: &Scale, exp: &Experiment, runs: &[RunRecord]) {
    let last = (runs.len().max(2) - 1) as f64;
    let x = |k: usize| IN_ORDER.0 + 20.0 + (IN_ORDER.1 - IN_ORDER.0 - 40.0) * k as f64 / last;
    let points: Vec<String> = runs
        .iter()
        .enumerate()
        .filter_map(|(k, r)| Some(format!("{:.1},{:.1}", x(k), scale.y(r.metric?))))
        .collect();
    s.push_str(&format!(
        r##"<polyline fill="none" stroke="#bbb" points="{}"/>"##,
        points.join(" ")
    ));
    for (k, r) in runs.iter().enumerate() {
        let Some(value) = r.metric else { continue };
        s.push_str(&format!(
            r#"<circle cx="{:.1}" cy="{:.1}" r="5" fill="{}"/>"#,
            x(k),
            scale.y(value),
            color(exp, &r.variant)
        ));
    }
    s.push_str(&format!(
        r#"<text x="{}" y="{:.0}">run 1 .. {}</text>"#,
        IN_ORDER.0,
        BOTTOM + 16.0,
        runs.len()
    ));
}
