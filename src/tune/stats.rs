//! Statistics for A/B runs: medians, a bootstrap confidence interval of the
//! ratio of two medians, the Mann-Whitney U rank test (exact by
//! enumeration for small samples, normal approximation with tie and
//! continuity corrections for large ones) and Holm's correction when
//! several variants are compared with one baseline. Pure functions; the
//! randomness is a seeded generator, so a report is reproducible.

use rand::seq::IndexedRandom;
use rand::SeedableRng;

/// Bootstrap resamples.
pub const BOOTSTRAP_RESAMPLES: usize = 10_000;
/// Largest number of group assignments the exact rank test enumerates
/// (C(20, 10) = 184,756 fits).
pub const MAX_EXACT_ASSIGNMENTS: u64 = 200_000;

/// Median; `None` for no values.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Percentile bootstrap interval of median(variant) / median(baseline):
/// each group resampled with replacement, `resamples` times.
pub fn bootstrap_ratio_ci(
    baseline: &[f64],
    variant: &[f64],
    confidence: f64,
    resamples: usize,
    seed: u64,
) -> Option<(f64, f64)> {
    if baseline.is_empty() || variant.is_empty() || resamples == 0 {
        return None;
    }
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut ratios = Vec::with_capacity(resamples);
    let (mut a, mut b) = (vec![0.0; baseline.len()], vec![0.0; variant.len()]);
    for _ in 0..resamples {
        a.iter_mut()
            .for_each(|x| *x = *baseline.choose(&mut rng).expect("not empty"));
        b.iter_mut()
            .for_each(|x| *x = *variant.choose(&mut rng).expect("not empty"));
        let (ma, mb) = (median(&a)?, median(&b)?);
        if ma != 0.0 {
            ratios.push(mb / ma);
        }
    }
    if ratios.is_empty() {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    let tail = (1.0 - confidence) / 2.0;
    Some((quantile(&ratios, tail), quantile(&ratios, 1.0 - tail)))
}

/// The smallest sorted value with at least `q` of the values at or below it.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
    sorted[rank - 1]
}

/// Mann-Whitney U of `x` against `y` with its two-sided p-value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RankTest {
    /// U of the first sample: pairs (x, y) with x > y, ties counting half.
    pub u: f64,
    pub p_value: f64,
    /// True when `p_value` comes from enumerating every assignment.
    pub exact: bool,
}

/// Two-sided Mann-Whitney U test; ties get average ranks. Exact (every
/// assignment of the pooled values to the two groups) when there are at
/// most MAX_EXACT_ASSIGNMENTS, else the normal approximation with tie and
/// continuity corrections.
pub fn mann_whitney_u(x: &[f64], y: &[f64]) -> Option<RankTest> {
    let (n1, n2) = (x.len(), y.len());
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let pooled: Vec<f64> = x.iter().chain(y).copied().collect();
    let ranks = average_ranks(&pooled);
    let r1: f64 = ranks[..n1].iter().sum();
    let offset = (n1 * (n1 + 1)) as f64 / 2.0;
    let u = r1 - offset;
    let mu = (n1 * n2) as f64 / 2.0;
    if binomial(n1 + n2, n1) <= MAX_EXACT_ASSIGNMENTS {
        let observed = (u - mu).abs() - 1e-9;
        let (mut extreme, mut total) = (0u64, 0u64);
        for_each_subset_sum(&ranks, n1, &mut |sum| {
            total += 1;
            if (sum - offset - mu).abs() >= observed {
                extreme += 1;
            }
        });
        return Some(RankTest {
            u,
            p_value: extreme as f64 / total as f64,
            exact: true,
        });
    }
    let n = (n1 + n2) as f64;
    let ties: f64 = tie_groups(&pooled)
        .iter()
        .map(|&t| (t * t * t - t) as f64)
        .sum();
    let var = (n1 * n2) as f64 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    let p_value = if var <= 0.0 {
        1.0
    } else {
        let z = (((u - mu).abs() - 0.5).max(0.0)) / var.sqrt();
        libm::erfc(z / std::f64::consts::SQRT_2).min(1.0)
    };
    Some(RankTest {
        u,
        p_value,
        exact: false,
    })
}

/// The smallest two-sided p-value the exact test can give for groups of
/// these sizes (all of one group above all of the other).
pub fn smallest_p_value(n1: usize, n2: usize) -> f64 {
    let c = binomial(n1 + n2, n1);
    if c == 0 || c > MAX_EXACT_ASSIGNMENTS {
        return 0.0;
    }
    (2.0 / c as f64).min(1.0)
}

fn average_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = avg;
        }
        i = j + 1;
    }
    ranks
}

fn tie_groups(values: &[f64]) -> Vec<usize> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mut groups = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let j = v[i..].iter().take_while(|x| **x == v[i]).count();
        groups.push(j);
        i += j;
    }
    groups
}

fn binomial(n: usize, k: usize) -> u64 {
    let k = k.min(n - k.min(n));
    let mut c: u128 = 1;
    for i in 0..k {
        c = c * (n - i) as u128 / (i + 1) as u128;
        if c > u64::MAX as u128 {
            return u64::MAX;
        }
    }
    c as u64
}

/// Calls `f` with the sum of every `k`-element subset of `values`.
fn for_each_subset_sum(values: &[f64], k: usize, f: &mut dyn FnMut(f64)) {
    fn walk(values: &[f64], start: usize, left: usize, sum: f64, f: &mut dyn FnMut(f64)) {
        if left == 0 {
            f(sum);
            return;
        }
        for i in start..=values.len() - left {
            walk(values, i + 1, left - 1, sum + values[i], f);
        }
    }
    walk(values, 0, k, 0.0, f);
}

/// Holm's step-down adjustment of p-values for several comparisons.
pub fn holm(p_values: &[f64]) -> Vec<f64> {
    let m = p_values.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p_values[a].total_cmp(&p_values[b]));
    let mut adjusted = vec![0.0; m];
    let mut running: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        running = running.max(((m - rank) as f64 * p_values[i]).min(1.0));
        adjusted[i] = running;
    }
    adjusted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn mann_whitney_matches_published_answers() {
        // scipy.stats.mannwhitneyu's documented example (males vs females):
        // U1 = 17, exact p = 0.1111..., asymptotic p = 0.11134688653314041.
        let males = [19.0, 22.0, 16.0, 29.0, 24.0];
        let females = [20.0, 11.0, 17.0, 12.0];
        let t = mann_whitney_u(&males, &females).unwrap();
        assert!(
            t.exact && close(t.u, 17.0) && close(t.p_value, 14.0 / 126.0),
            "{t:?}"
        );
        // Complete separation: the smallest p, 2 / C(n1 + n2, n1).
        let t = mann_whitney_u(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]).unwrap();
        assert!(close(t.u, 0.0) && close(t.p_value, 0.1), "{t:?}");
        let t = mann_whitney_u(&[5.0, 6.0, 7.0, 8.0], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert!(close(t.u, 16.0) && close(t.p_value, 2.0 / 70.0), "{t:?}");
        assert!(close(smallest_p_value(3, 3), 0.1));
        assert!(close(smallest_p_value(4, 4), 2.0 / 70.0));
        // Identical samples: no evidence at all.
        let t = mann_whitney_u(&[1.0, 1.0, 1.0], &[1.0, 1.0, 1.0]).unwrap();
        assert!(close(t.p_value, 1.0), "{t:?}");
    }

    #[test]
    fn the_normal_approximation_matches_its_formula() {
        // 11 vs 11 values: C(22, 11) = 705,432 assignments, so approximated.
        // Complete separation: U = 121, mu = 60.5, sigma^2 = 11*11*23/12;
        // z = (60.5 - 0.5) / sigma = 3.9399..., p = erfc(z / sqrt 2) = 8.1515e-5.
        let x: Vec<f64> = (12..=22).map(f64::from).collect();
        let y: Vec<f64> = (1..=11).map(f64::from).collect();
        let t = mann_whitney_u(&x, &y).unwrap();
        assert!(!t.exact && close(t.u, 121.0));
        let z = 60.0 / (121.0f64 * 23.0 / 12.0).sqrt();
        assert!(close(t.p_value, libm::erfc(z / std::f64::consts::SQRT_2)));
        assert!((t.p_value - 8.151536e-5).abs() < 1e-10, "{}", t.p_value);
        // With ties the variance shrinks by sum(t^3 - t) / (n (n - 1)).
        let x = [1.0; 11];
        let mut y = [1.0; 11];
        y[0] = 2.0;
        let t = mann_whitney_u(&x, &y).unwrap();
        let var = 121.0 / 12.0 * (23.0 - (21.0f64.powi(3) - 21.0) / (22.0 * 21.0));
        let z = ((t.u - 60.5f64).abs() - 0.5) / var.sqrt();
        assert!(
            close(t.p_value, libm::erfc(z / std::f64::consts::SQRT_2)),
            "{t:?}"
        );
    }

    #[test]
    fn ties_use_the_exact_permutation_distribution() {
        // Pooled ranks 1.5, 1.5, 3, 4: U of {1, 1} is 0; the assignments
        // are the C(4, 2) = 6 pairs, of which {1,1} and {3,4} are as
        // extreme: p = 2/6.
        let t = mann_whitney_u(&[1.0, 1.0], &[3.0, 4.0]).unwrap();
        assert!(
            t.exact && close(t.u, 0.0) && close(t.p_value, 2.0 / 6.0),
            "{t:?}"
        );
    }

    /// The exact bootstrap distribution of the ratio of medians, by
    /// enumerating every resample of both groups.
    fn exact_bootstrap_quantiles(a: &[f64], b: &[f64], tail: f64) -> (f64, f64) {
        fn resamples(v: &[f64]) -> Vec<f64> {
            let n = v.len();
            (0..n.pow(n as u32))
                .map(|mut code| {
                    let s: Vec<f64> = (0..n)
                        .map(|_| {
                            let x = v[code % n];
                            code /= n;
                            x
                        })
                        .collect();
                    median(&s).unwrap()
                })
                .collect()
        }
        let (ma, mb) = (resamples(a), resamples(b));
        let mut ratios: Vec<f64> = ma
            .iter()
            .flat_map(|x| mb.iter().map(move |y| y / x))
            .collect();
        ratios.sort_by(f64::total_cmp);
        (quantile(&ratios, tail), quantile(&ratios, 1.0 - tail))
    }

    #[test]
    fn the_bootstrap_interval_matches_the_exact_bootstrap_distribution() {
        // Constant groups: the ratio is known exactly.
        let ci = bootstrap_ratio_ci(&[10.0; 3], &[20.0; 3], 0.95, 2000, 1).unwrap();
        assert_eq!(ci, (2.0, 2.0));
        // Baseline constant, variant {90, 100, 110}: the median of a
        // resample is 90 with probability 7/27 (above 2.5%), so the
        // interval is [0.9, 1.1].
        let ci = bootstrap_ratio_ci(
            &[100.0; 3],
            &[90.0, 100.0, 110.0],
            0.95,
            BOOTSTRAP_RESAMPLES,
            7,
        )
        .unwrap();
        assert_eq!(ci, (0.9, 1.1));
        // Two groups of four: the enumerated distribution (4^4 x 4^4
        // resamples) and the Monte Carlo interval agree.
        let (a, b) = ([100.0, 104.0, 97.0, 110.0], [120.0, 111.0, 131.0, 118.0]);
        let exact = exact_bootstrap_quantiles(&a, &b, 0.025);
        let ci = bootstrap_ratio_ci(&a, &b, 0.95, BOOTSTRAP_RESAMPLES, 3).unwrap();
        assert!(
            (ci.0 - exact.0).abs() < 0.012 && (ci.1 - exact.1).abs() < 0.012,
            "{ci:?} vs {exact:?}"
        );
        assert!(ci.0 > 1.0, "a clear improvement excludes 1: {ci:?}");
        // Seeded: the same inputs give the same interval.
        assert_eq!(
            ci,
            bootstrap_ratio_ci(&a, &b, 0.95, BOOTSTRAP_RESAMPLES, 3).unwrap()
        );
    }

    #[test]
    fn holm_adjusts_step_down() {
        let adj = holm(&[0.01, 0.04, 0.03]);
        assert!(
            close(adj[0], 0.03) && close(adj[1], 0.06) && close(adj[2], 0.06),
            "{adj:?}"
        );
        assert_eq!(holm(&[0.2]), vec![0.2]);
        assert_eq!(holm(&[0.6, 0.9]), vec![1.0, 1.0]);
    }
}
