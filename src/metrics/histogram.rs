//! A latency histogram in shard-local cells with fixed buckets (Prometheus
//! `le` bounds in seconds), observed on the data path and copied at scrape
//! time.

use std::cell::Cell;
use std::time::Duration;

/// Upper bounds of the latency buckets, seconds: 10 µs to 10 s, enough to
/// tell a page-cache hit from a device write and a group commit from a
/// stalled disk. The `+Inf` bucket follows.
pub const LATENCY_BUCKETS_SECONDS: [f64; 19] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const BUCKETS: usize = LATENCY_BUCKETS_SECONDS.len();

/// The same bounds in nanoseconds, compared against without floating point.
const BOUNDS_NS: [u64; BUCKETS] = {
    let mut out = [0u64; BUCKETS];
    let mut i = 0;
    while i < BUCKETS {
        out[i] = (LATENCY_BUCKETS_SECONDS[i] * 1e9) as u64;
        i += 1;
    }
    out
};

/// Observations per bucket (not cumulative; the last is `+Inf`) and their
/// sum.
#[derive(Default, Debug)]
pub struct Histogram {
    counts: [Cell<u64>; BUCKETS + 1],
    sum_ns: Cell<u64>,
}

impl Histogram {
    #[inline]
    pub fn observe(&self, took: Duration) {
        let ns = took.as_nanos().min(u64::MAX as u128) as u64;
        let i = BOUNDS_NS.partition_point(|&b| b < ns);
        self.counts[i].set(self.counts[i].get() + 1);
        self.sum_ns.set(self.sum_ns.get().wrapping_add(ns));
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self.counts.iter().map(Cell::get).collect();
        HistogramSnapshot {
            count: counts.iter().sum(),
            sum_seconds: self.sum_ns.get() as f64 / 1e9,
            counts,
        }
    }
}

/// A copy of a histogram, mergeable across shards.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Per bucket, not cumulative: `LATENCY_BUCKETS_SECONDS` then `+Inf`.
    pub counts: Vec<u64>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl HistogramSnapshot {
    /// `(upper bound, count in that bucket)` pairs, `+Inf` last.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        LATENCY_BUCKETS_SECONDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().copied())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_observation_lands_in_the_first_bucket_at_or_above_it() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(10)); // exactly 10 µs: le=0.00001
        h.observe(Duration::from_micros(11)); // le=0.000025
        h.observe(Duration::from_secs(60)); // +Inf
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.counts[0], 1);
        assert_eq!(s.counts[1], 1);
        assert_eq!(s.counts[BUCKETS], 1);
        assert!((s.sum_seconds - 60.000021).abs() < 1e-9);
        let b = s.buckets();
        assert_eq!(b.len(), BUCKETS + 1);
        assert_eq!(b[BUCKETS], (f64::INFINITY, 1));
    }
}
