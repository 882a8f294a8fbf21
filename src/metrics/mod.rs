//! Shard-local counters and histograms of the data path: requests, errors
//! and latency per API key, connections, bytes and records per topic,
//! fsyncs and O_DIRECT I/O, the batch cache, ISR changes and the
//! executor's busy time.
//!
//! Each shard is one thread, so each shard's cells live in a thread-local
//! [`ShardMetrics`]: bumping one is a plain load and store on memory no
//! other thread touches (no atomics, no locks, no contention). Any layer may
//! bump them (this module depends on nothing else of the broker); only the
//! HTTP listener reads them, by running [`snapshot`] on each shard over the
//! shard mesh when it is scraped, and encoding the gathered snapshots
//! (`crate::http::metrics`).
//!
//! Counters only grow; a topic's counters are dropped when the topic is no
//! longer in the metadata image ([`forget_topics_except`]).

mod histogram;

pub use histogram::{Histogram, HistogramSnapshot, LATENCY_BUCKETS_SECONDS};

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// API keys tracked one by one (Kafka's keys are below this); requests
/// with a larger key are counted under the last slot.
pub const API_KEY_SLOTS: usize = 128;

/// A monotonic counter in a shard-local cell.
#[derive(Default, Debug)]
pub struct Counter(Cell<u64>);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.set(self.0.get().wrapping_add(n));
    }

    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// What a topic's partitions on this shard took in and gave out.
#[derive(Default, Debug)]
pub struct TopicCounters {
    /// Produced record batch bytes appended as leader.
    pub bytes_in: Counter,
    /// Record batch bytes returned to consumer fetches.
    pub bytes_out: Counter,
    pub produce_batches: Counter,
    pub produce_records: Counter,
}

/// The kinds of I/O submitted to io_uring that are tracked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoOp {
    /// An O_DIRECT write of segment pages.
    DirectWrite = 0,
    /// An O_DIRECT read of segment bytes for a fetch.
    DirectRead = 1,
    /// An fdatasync of a segment.
    Fsync = 2,
}

impl IoOp {
    pub const ALL: [IoOp; 3] = [IoOp::DirectWrite, IoOp::DirectRead, IoOp::Fsync];

    pub fn name(self) -> &'static str {
        match self {
            IoOp::DirectWrite => "direct_write",
            IoOp::DirectRead => "direct_read",
            IoOp::Fsync => "fsync",
        }
    }
}

/// One shard's cells.
pub struct ShardMetrics {
    requests: Vec<Counter>,
    request_seconds: Vec<Histogram>,
    /// (API key, error code) -> responses or partitions answered with it.
    request_errors: RefCell<BTreeMap<(i16, i16), u64>>,
    pub connections_accepted: Counter,
    pub connections_closed: Counter,
    io_bytes: [Counter; 3],
    io_seconds: [Histogram; 3],
    io_in_flight: [Cell<i64>; 3],
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub isr_shrinks: Counter,
    pub isr_expands: Counter,
    topics: RefCell<HashMap<String, Rc<TopicCounters>>>,
    busy: Cell<Duration>,
    last_busy_sample: Cell<Option<Instant>>,
}

impl Default for ShardMetrics {
    fn default() -> Self {
        ShardMetrics {
            requests: (0..API_KEY_SLOTS).map(|_| Counter::default()).collect(),
            request_seconds: (0..API_KEY_SLOTS).map(|_| Histogram::default()).collect(),
            request_errors: RefCell::new(BTreeMap::new()),
            connections_accepted: Counter::default(),
            connections_closed: Counter::default(),
            io_bytes: Default::default(),
            io_seconds: Default::default(),
            io_in_flight: Default::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            isr_shrinks: Counter::default(),
            isr_expands: Counter::default(),
            topics: RefCell::new(HashMap::new()),
            busy: Cell::new(Duration::ZERO),
            last_busy_sample: Cell::new(Some(Instant::now())),
        }
    }
}

thread_local! {
    static SHARD: ShardMetrics = ShardMetrics::default();
}

/// Runs `f` with this thread's (this shard's) cells.
#[inline]
pub fn with<R>(f: impl FnOnce(&ShardMetrics) -> R) -> R {
    SHARD.with(f)
}

fn slot(api_key: i16) -> usize {
    (api_key.max(0) as usize).min(API_KEY_SLOTS - 1)
}

/// A request of `api_key` was answered (or dropped, acks=0) after `took`.
#[inline]
pub fn request_done(api_key: i16, took: Duration) {
    with(|m| {
        let i = slot(api_key);
        m.requests[i].inc();
        m.request_seconds[i].observe(took);
    });
}

/// A response of `api_key` carried `error_code` (once per partition, group
/// or topic it was answered for, as Kafka's error counts).
pub fn request_error(api_key: i16, error_code: i16) {
    if error_code == 0 {
        return;
    }
    with(|m| {
        *m.request_errors
            .borrow_mut()
            .entry((api_key, error_code))
            .or_insert(0) += 1;
    });
}

/// The counters of `topic` on this shard, created on first use; partitions
/// keep the handle so the data path never looks a topic up.
pub fn topic(topic: &str) -> Rc<TopicCounters> {
    with(|m| {
        m.topics
            .borrow_mut()
            .entry(topic.to_string())
            .or_default()
            .clone()
    })
}

/// Drops the counters of topics that `keep` refuses (deleted topics).
pub fn forget_topics_except(keep: impl Fn(&str) -> bool) {
    with(|m| m.topics.borrow_mut().retain(|t, _| keep(t)));
}

/// Times one I/O submitted to io_uring and counts it in flight until
/// dropped.
#[must_use = "the I/O is timed until the guard is dropped"]
pub struct IoTimer {
    op: IoOp,
    started: Instant,
}

/// Starts timing an I/O of `op` moving `bytes` (0 for fsync).
#[inline]
pub fn io_begin(op: IoOp, bytes: usize) -> IoTimer {
    with(|m| {
        let i = op as usize;
        m.io_bytes[i].add(bytes as u64);
        m.io_in_flight[i].set(m.io_in_flight[i].get() + 1);
    });
    IoTimer {
        op,
        started: Instant::now(),
    }
}

impl Drop for IoTimer {
    fn drop(&mut self) {
        let took = self.started.elapsed();
        with(|m| {
            let i = self.op as usize;
            m.io_in_flight[i].set(m.io_in_flight[i].get() - 1);
            m.io_seconds[i].observe(took);
        });
    }
}

/// Adds the executor's task run time since the previous call
/// (`glommio`'s stats are taken, not read) and answers the total busy
/// seconds and the busy fraction of the wall time since the previous call.
pub fn sample_busy(ran: Duration, now: Instant) -> (f64, f64) {
    with(|m| {
        m.busy.set(m.busy.get() + ran);
        let ratio = match m.last_busy_sample.replace(Some(now)) {
            Some(prev) if now > prev => {
                (ran.as_secs_f64() / (now - prev).as_secs_f64()).clamp(0.0, 1.0)
            }
            _ => 0.0,
        };
        (m.busy.get().as_secs_f64(), ratio)
    })
}

/// Requests, errors and latency of one API key on one shard.
#[derive(Clone, Debug)]
pub struct ApiSnapshot {
    pub api_key: i16,
    pub requests: u64,
    pub seconds: HistogramSnapshot,
}

/// One I/O kind on one shard.
#[derive(Clone, Debug)]
pub struct IoSnapshot {
    pub op: IoOp,
    pub bytes: u64,
    pub in_flight: i64,
    pub seconds: HistogramSnapshot,
}

#[derive(Clone, Debug, Default)]
pub struct TopicSnapshot {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub produce_batches: u64,
    pub produce_records: u64,
}

/// A copy of one shard's cells, sent to the scraping shard.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// API keys with at least one request.
    pub apis: Vec<ApiSnapshot>,
    /// (API key, error code, count).
    pub errors: Vec<(i16, i16, u64)>,
    pub connections_accepted: u64,
    pub connections_closed: u64,
    pub io: Vec<IoSnapshot>,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub isr_shrinks: u64,
    pub isr_expands: u64,
    pub topics: Vec<(String, TopicSnapshot)>,
}

/// Copies this shard's cells.
pub fn snapshot() -> Snapshot {
    with(|m| Snapshot {
        apis: (0..API_KEY_SLOTS)
            .filter(|&i| m.requests[i].get() > 0)
            .map(|i| ApiSnapshot {
                api_key: i as i16,
                requests: m.requests[i].get(),
                seconds: m.request_seconds[i].snapshot(),
            })
            .collect(),
        errors: m
            .request_errors
            .borrow()
            .iter()
            .map(|(&(api, code), &n)| (api, code, n))
            .collect(),
        connections_accepted: m.connections_accepted.get(),
        connections_closed: m.connections_closed.get(),
        io: IoOp::ALL
            .iter()
            .map(|&op| IoSnapshot {
                op,
                bytes: m.io_bytes[op as usize].get(),
                in_flight: m.io_in_flight[op as usize].get(),
                seconds: m.io_seconds[op as usize].snapshot(),
            })
            .collect(),
        cache_hits: m.cache_hits.get(),
        cache_misses: m.cache_misses.get(),
        isr_shrinks: m.isr_shrinks.get(),
        isr_expands: m.isr_expands.get(),
        topics: m
            .topics
            .borrow()
            .iter()
            .map(|(t, c)| {
                let s = TopicSnapshot {
                    bytes_in: c.bytes_in.get(),
                    bytes_out: c.bytes_out.get(),
                    produce_batches: c.produce_batches.get(),
                    produce_records: c.produce_records.get(),
                };
                (t.clone(), s)
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_errors_and_io_are_counted_on_this_thread_only() {
        request_done(0, Duration::from_micros(300));
        request_done(0, Duration::from_millis(30));
        request_error(0, 6);
        request_error(0, 6);
        request_error(0, 0);
        {
            let _w = io_begin(IoOp::DirectWrite, 4096);
            assert_eq!(snapshot().io[0].in_flight, 1);
        }
        topic("t").bytes_in.add(10);
        topic("t").produce_records.add(3);
        let s = snapshot();
        assert_eq!(s.apis.len(), 1);
        assert_eq!((s.apis[0].api_key, s.apis[0].requests), (0, 2));
        assert_eq!(s.apis[0].seconds.count, 2);
        assert_eq!(s.errors, vec![(0, 6, 2)]);
        assert_eq!((s.io[0].bytes, s.io[0].in_flight), (4096, 0));
        assert_eq!(s.io[0].seconds.count, 1);
        assert_eq!(s.topics[0].1.bytes_in, 10);
        assert_eq!(s.topics[0].1.produce_records, 3);
        let other = std::thread::spawn(|| snapshot().apis.len()).join().unwrap();
        assert_eq!(other, 0, "another shard's thread has its own cells");
        forget_topics_except(|_| false);
        assert!(snapshot().topics.is_empty());
    }

    #[test]
    fn busy_ratio_is_run_time_over_wall_time_since_the_last_sample() {
        let t0 = Instant::now() + Duration::from_secs(1);
        sample_busy(Duration::ZERO, t0);
        let (total, ratio) = sample_busy(Duration::from_millis(250), t0 + Duration::from_secs(1));
        assert!((ratio - 0.25).abs() < 1e-9);
        assert!((total - 0.25).abs() < 1e-9);
    }
}
