//! An experiment's result: per-variant medians, the bootstrap interval of
//! each variant's ratio to the baseline, the rank test's p-value (Holm-
//! adjusted across variants), a one-line verdict per variant, and the text
//! report (the plot is in `plot`).

use serde::Serialize;

use super::spec::Experiment;
use super::RunRecord;
use crate::tune::stats;

/// Significance level of the verdict.
pub const ALPHA: f64 = 0.05;
/// Confidence of the bootstrap interval.
pub const CONFIDENCE: f64 = 0.95;

#[derive(Debug, Clone, Serialize)]
pub struct VariantSummary {
    pub name: String,
    pub baseline: bool,
    pub values: Vec<f64>,
    pub median: Option<f64>,
    /// Median of this variant over the baseline's.
    pub ratio: Option<f64>,
    pub ci: Option<(f64, f64)>,
    pub p_value: Option<f64>,
    /// After Holm's correction for the number of variants compared.
    pub p_adjusted: Option<f64>,
    pub exact_test: bool,
    /// The smallest p-value these numbers of runs can give.
    pub smallest_p: Option<f64>,
    pub verdict: Option<String>,
    /// Medians over the runs of the host counters.
    pub cpu_busy_percent: Option<f64>,
    pub context_switches_per_s: Option<f64>,
    pub disk_util_percent: Option<f64>,
    pub disk_flushes_per_s: Option<f64>,
    pub tcp_retransmits: Option<f64>,
}

fn counter_median(
    runs: &[&RunRecord],
    f: impl Fn(&super::counters::HostCounters) -> f64,
) -> Option<f64> {
    let v: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.counters.as_ref())
        .map(&f)
        .collect();
    stats::median(&v)
}

/// Every variant's summary, with p-values adjusted across the variants and
/// a verdict for each variant against the baseline.
pub fn analyse(exp: &Experiment, runs: &[RunRecord]) -> Vec<VariantSummary> {
    let per: Vec<Vec<&RunRecord>> = exp
        .variants
        .iter()
        .map(|v| {
            runs.iter()
                .filter(|r| r.variant == v.name && r.metric.is_some())
                .collect()
        })
        .collect();
    let values: Vec<Vec<f64>> = per
        .iter()
        .map(|rs| rs.iter().filter_map(|r| r.metric).collect())
        .collect();
    let mut out: Vec<VariantSummary> = (0..exp.variants.len())
        .map(|i| summarise(exp, i, &per[i], &values[i], &values[exp.baseline]))
        .collect();
    let tested: Vec<usize> = (0..out.len())
        .filter(|&i| out[i].p_value.is_some())
        .collect();
    let adjusted = stats::holm(
        &tested
            .iter()
            .map(|&i| out[i].p_value.unwrap_or(1.0))
            .collect::<Vec<_>>(),
    );
    for (&i, p) in tested.iter().zip(adjusted) {
        out[i].p_adjusted = Some(p);
    }
    let baseline = out[exp.baseline].clone();
    for s in out.iter_mut().filter(|s| !s.baseline) {
        s.verdict = Some(verdict(exp, &baseline, s));
    }
    out
}

/// Variant `i`'s statistics against the baseline's values (none for the
/// baseline itself) and the medians of its host counters.
fn summarise(
    exp: &Experiment,
    i: usize,
    runs: &[&RunRecord],
    values: &[f64],
    base: &[f64],
) -> VariantSummary {
    let is_base = i == exp.baseline;
    let test = (!is_base)
        .then(|| stats::mann_whitney_u(values, base))
        .flatten();
    let median = stats::median(values);
    let ratio = match (median, stats::median(base)) {
        (Some(m), Some(b)) if !is_base && b != 0.0 => Some(m / b),
        _ => None,
    };
    // One resampling stream per variant, reproducible from the seed.
    let seed = exp.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let resamples = stats::BOOTSTRAP_RESAMPLES;
    VariantSummary {
        name: exp.variants[i].name.clone(),
        baseline: is_base,
        values: values.to_vec(),
        median,
        ratio,
        ci: (!is_base)
            .then(|| stats::bootstrap_ratio_ci(base, values, CONFIDENCE, resamples, seed))
            .flatten(),
        p_value: test.map(|t| t.p_value),
        p_adjusted: None,
        exact_test: test.is_some_and(|t| t.exact),
        smallest_p: (!is_base && test.is_some_and(|t| t.exact))
            .then(|| stats::smallest_p_value(values.len(), base.len())),
        verdict: None,
        cpu_busy_percent: counter_median(runs, |c| {
            c.cpu_busy_percent.iter().sum::<f64>() / c.cpu_busy_percent.len().max(1) as f64
        }),
        context_switches_per_s: counter_median(runs, |c| c.context_switches_per_s),
        disk_util_percent: counter_median(runs, |c| {
            c.disks.iter().map(|d| d.util_percent).fold(0.0, f64::max)
        }),
        disk_flushes_per_s: counter_median(runs, |c| c.disks.iter().map(|d| d.flushes_per_s).sum()),
        tcp_retransmits: counter_median(runs, |c| c.tcp_retransmits as f64),
    }
}

/// One line: which variant is better, or that no difference was detected.
pub fn verdict(exp: &Experiment, base: &VariantSummary, s: &VariantSummary) -> String {
    let metric = exp.metric.name();
    let (Some(ratio), Some((lo, hi)), Some(p), Some(mv), Some(mb)) =
        (s.ratio, s.ci, s.p_adjusted, s.median, base.median)
    else {
        return format!(
            "{} vs {}: not enough successful runs to compare",
            s.name, base.name
        );
    };
    let stats = format!(
        "{metric} median {} vs {} (ratio {ratio:.3}, 95% CI {lo:.3} to {hi:.3}, p = {p:.3})",
        num(mv),
        num(mb)
    );
    let excludes_one = lo > 1.0 || hi < 1.0;
    if p < ALPHA && excludes_one {
        let better = (ratio > 1.0) == exp.metric.higher_is_better();
        let pct = (ratio - 1.0) * 100.0;
        let word = if better { "better" } else { "worse" };
        return format!(
            "{} is {word} than {} ({pct:+.1}%): {stats}",
            s.name, base.name
        );
    }
    let mut line = format!(
        "no difference detected between {} and {}: {stats}",
        s.name, base.name
    );
    if let Some(sp) = s.smallest_p.filter(|sp| *sp >= ALPHA) {
        line.push_str(&format!(
            "; {} and {} runs cannot reach p < {ALPHA} (smallest possible p = {sp:.3}): add repeats",
            s.values.len(),
            base.values.len()
        ));
    }
    line
}

/// A number with a precision that suits its size.
pub fn num(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(num).unwrap_or_else(|| "-".into())
}

/// The text report printed at the end and written to report.txt.
pub fn text(
    exp: &Experiment,
    runs: &[RunRecord],
    summary: &[VariantSummary],
    footer: &[String],
) -> String {
    let mut s = format!("experiment {} ({})\n", exp.name, exp.path.display());
    if !exp.description.is_empty() {
        s.push_str(&format!("{}\n", exp.description.trim()));
    }
    let better = if exp.metric.higher_is_better() {
        "higher is better"
    } else {
        "lower is better"
    };
    s.push_str(&format!(
        "metric {} ({better}); {} repeats per variant, {} order, seed {}; bench {} {}\n\n",
        exp.metric.name(),
        exp.repeats,
        format!("{:?}", exp.order).to_lowercase(),
        exp.seed,
        exp.workload.mode,
        exp.workload.args.join(" ")
    ));
    s.push_str("runs:\n");
    for r in runs {
        let value = r
            .metric
            .map(num)
            .unwrap_or_else(|| r.error.clone().unwrap_or_else(|| "-".into()));
        s.push_str(&format!(
            "  #{:<3} {:<16} repeat {:<3} {}\n",
            r.index + 1,
            r.variant,
            r.repeat + 1,
            value
        ));
    }
    summary_table(&mut s, summary);
    s.push('\n');
    for v in summary {
        if let Some(line) = &v.verdict {
            s.push_str(&format!("verdict: {line}\n"));
        }
    }
    for line in footer {
        s.push_str(&format!("{line}\n"));
    }
    s
}

/// One line per variant: runs, median, ratio and its interval, adjusted
/// p-value, and the medians of the host counters.
fn summary_table(s: &mut String, summary: &[VariantSummary]) {
    let label = |v: &VariantSummary| {
        if v.baseline {
            format!("{} (base)", v.name)
        } else {
            v.name.clone()
        }
    };
    let w = summary
        .iter()
        .map(|v| label(v).len())
        .max()
        .unwrap_or(0)
        .max(7);
    s.push_str(&format!(
        "\n{:<w$} {:>4} {:>12} {:>8} {:>19} {:>8} {:>7} {:>9} {:>7} {:>9}\n",
        "variant", "runs", "median", "ratio", "95% CI", "p", "cpu%", "ctxsw/s", "disk%", "flush/s"
    ));
    for v in summary {
        let ci =
            v.ci.map(|(l, h)| format!("{l:.3} to {h:.3}"))
                .unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            "{:<w$} {:>4} {:>12} {:>8} {:>19} {:>8} {:>7} {:>9} {:>7} {:>9}\n",
            label(v),
            v.values.len(),
            opt(v.median),
            v.ratio
                .map(|r| format!("{r:.3}"))
                .unwrap_or_else(|| "-".into()),
            ci,
            v.p_adjusted
                .map(|p| format!("{p:.3}"))
                .unwrap_or_else(|| "-".into()),
            opt(v.cpu_busy_percent),
            opt(v.context_switches_per_s),
            opt(v.disk_util_percent),
            opt(v.disk_flushes_per_s),
        ));
    }
}
