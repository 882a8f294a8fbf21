//! `ringtail bench produce|consume|e2e`: a Kafka-protocol load generator for
//! any Kafka-compatible broker. One worker thread per producer or consumer,
//! pinned round-robin to cores, each with its own connection; produce keeps
//! several requests in flight per connection like real clients.
//!
//! Latency is measured from each message's intended send time: in open-loop
//! mode (`--rate`) messages are due on a fixed schedule whatever the broker
//! does, so a slow broker shows up as latency (no coordinated omission).

mod consumer;
mod host;
mod producer;
mod report;
mod wire;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub use report::Summary;

/// Produce requests in flight per connection (librdkafka's default is 5).
pub const MAX_IN_FLIGHT: usize = 5;
/// Seconds of per-second throughput kept for the timeline.
pub const MAX_TIMELINE_SECONDS: usize = 3600;
/// Distinct keys a run may cycle through (each producer holds the keys of
/// its partitions).
pub const MAX_DISTINCT_KEYS: u64 = 1 << 20;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub mode: Mode,
    #[command(flatten)]
    pub opts: BenchOptions,
}

#[derive(clap::Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Producers only: throughput and acknowledgement latency.
    Produce,
    /// Consumers only: read the topic from the earliest offset (catch-up).
    Consume,
    /// Producers and consumers together: latency from send to receipt.
    E2e,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchOptions {
    #[arg(long, default_value = "127.0.0.1:9092", global = true)]
    pub bootstrap: String,
    #[arg(long, default_value = "ringtail-bench", global = true)]
    pub topic: String,
    /// Partitions when the topic has to be created.
    #[arg(long, default_value_t = 8, global = true)]
    pub partitions: i32,
    #[arg(long, default_value_t = 1024, global = true)]
    pub message_bytes: usize,
    /// Distinct keys (0: null keys).
    #[arg(long, default_value_t = 0, global = true)]
    pub keys: u64,
    /// Largest record batch per partition in a request.
    #[arg(long, default_value_t = 64 * 1024, global = true)]
    pub batch_bytes: usize,
    /// Longest wait for a batch to fill in open-loop mode.
    #[arg(long, default_value_t = 5, global = true)]
    pub linger_ms: u64,
    /// -1 (all), 0 or 1.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true, global = true)]
    pub acks: i16,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none", global = true)]
    pub compression: String,
    /// A topic config given to CreateTopics, KEY=VALUE (repeatable), e.g.
    /// compression.type=zstd to measure broker-side recompression. The
    /// topic must not exist yet: an existing topic's configs are not
    /// changed.
    #[arg(long = "topic-config", value_name = "KEY=VALUE", global = true)]
    pub topic_configs: Vec<String>,
    #[arg(long, default_value_t = 2, global = true)]
    pub producers: usize,
    #[arg(long, default_value_t = 2, global = true)]
    pub consumers: usize,
    #[arg(long, default_value_t = 10, global = true)]
    pub duration_s: u64,
    #[arg(long, default_value_t = 2, global = true)]
    pub warmup_s: u64,
    /// Produce: stop once this many messages are sent over all producers,
    /// rounded up to whole batches (0: run for the duration).
    #[arg(long, default_value_t = 0, global = true)]
    pub messages: u64,
    /// Messages per second over all producers (0: as fast as possible).
    #[arg(long, default_value_t = 0, global = true)]
    pub rate: u64,
    /// Write the result as JSON here.
    #[arg(long, global = true)]
    pub json: Option<PathBuf>,
    /// Write a plot of latency percentiles and throughput here.
    #[arg(long, global = true)]
    pub svg: Option<PathBuf>,
    /// The broker's configuration file, recorded verbatim in the JSON.
    #[arg(long, global = true)]
    pub broker_config: Option<PathBuf>,
    /// Label for this run in the JSON (e.g. the broker's name).
    #[arg(long, default_value = "", global = true)]
    pub label: String,
}

/// Counters shared by the workers and the progress line (atomics only).
#[derive(Default)]
pub struct Live {
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
    pub stop: AtomicBool,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let summary = run_bench(args.mode, &args.opts)?;
    summary.print();
    if let Some(path) = &args.opts.json {
        std::fs::write(
            path,
            serde_json::to_vec_pretty(&summary.to_json(&args.opts)?)?,
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.opts.svg {
        std::fs::write(path, summary.svg())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Runs one benchmark and returns its summary (also used by scripts).
pub fn run_bench(mode: Mode, o: &BenchOptions) -> Result<Summary> {
    if !matches!(o.acks, -1..=1) {
        bail!("--acks must be -1, 0 or 1");
    }
    if o.keys > MAX_DISTINCT_KEYS {
        bail!("--keys is limited to {MAX_DISTINCT_KEYS} distinct keys");
    }
    wire::compression(&o.compression)?;
    let broker = wire::BrokerInfo::probe(&o.bootstrap)?;
    let topic_configs = o
        .topic_configs
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
            _ => bail!("--topic-config {kv:?} is not KEY=VALUE"),
        })
        .collect::<Result<Vec<_>>>()?;
    let partitions = wire::ensure_topic(&o.bootstrap, &o.topic, o.partitions, &topic_configs)?;
    let live = Arc::new(Live::default());
    let start = Instant::now();
    let progress = report::spawn_progress(live.clone(), start);
    let deadline = start + Duration::from_secs(o.duration_s + o.warmup_s);
    let warm_at = start + Duration::from_secs(o.warmup_s);
    let result = match mode {
        Mode::Produce => producer::run_all(o, &partitions, &live, warm_at, deadline, false),
        Mode::Consume => consumer::run_catch_up(o, &partitions, &live, deadline),
        Mode::E2e => {
            let consumers = consumer::start_tailing(o, &partitions, &live, warm_at, deadline)?;
            let produced = producer::run_all(o, &partitions, &live, warm_at, deadline, true)?;
            let consumed = consumers.join()?;
            Ok(report::merge_e2e(produced, consumed))
        }
    };
    live.stop.store(true, Ordering::SeqCst);
    let timeline = progress.join().unwrap_or_default();
    let mut outcome = result?;
    outcome.timeline = timeline;
    Ok(Summary::new(mode, outcome, broker, o))
}
