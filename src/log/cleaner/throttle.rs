//! The cleaner's I/O budget (Kafka's log.cleaner.io.max.bytes.per.second):
//! a token bucket over the bytes the cleaner reads and writes, one per
//! shard, each refilled at its share of the broker's rate. Pure, time
//! passed in; the cleaner sleeps for what `take` answers.

/// A token bucket of bytes.
#[derive(Debug, Clone)]
pub struct Throttle {
    bytes_per_ms: f64,
    /// Bytes that may go at once after an idle spell (one second's worth).
    burst: f64,
    tokens: f64,
    last_ms: i64,
}

impl Throttle {
    /// `bytes_per_second`: this shard's share of the rate.
    pub fn new(bytes_per_second: u64, now_ms: i64) -> Throttle {
        let rate = bytes_per_second.max(1) as f64;
        Throttle {
            bytes_per_ms: rate / 1000.0,
            burst: rate,
            tokens: rate,
            last_ms: now_ms,
        }
    }

    /// Spends `bytes` at `now_ms`; returns how long to wait before the
    /// next I/O so that the rate holds (0: go on).
    pub fn take(&mut self, bytes: u64, now_ms: i64) -> u64 {
        let elapsed = now_ms.saturating_sub(self.last_ms).max(0) as f64;
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens = (self.tokens + elapsed * self.bytes_per_ms).min(self.burst);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            0
        } else {
            (-self.tokens / self.bytes_per_ms).ceil() as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_holds_after_the_first_seconds_burst() {
        let mut t = Throttle::new(1000, 0);
        assert_eq!(t.take(1000, 0), 0, "one second's worth at once");
        assert_eq!(t.take(500, 0), 500, "then wait for the debt");
        assert_eq!(t.take(0, 500), 0);
        assert_eq!(t.take(100, 500), 100);
        // An idle minute refills only up to the burst.
        assert_eq!(t.take(0, 60_000), 0);
        assert_eq!(t.take(2000, 60_000), 1000);
    }

    proptest::proptest! {
        /// Whatever the sizes, bytes taken by time T (waiting as told) stay
        /// within the rate times T plus the burst.
        #[test]
        fn never_above_the_rate(sizes in proptest::collection::vec(1u64..5000, 1..200), rate in 100u64..100_000) {
            let mut t = Throttle::new(rate, 0);
            let mut now = 0i64;
            let mut total = 0u64;
            for s in sizes {
                total += s;
                now += t.take(s, now) as i64;
                let allowed = rate as f64 * now as f64 / 1000.0 + rate as f64;
                proptest::prop_assert!(total as f64 <= allowed + 1.0);
            }
        }
    }
}
