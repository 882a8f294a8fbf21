//! Broker configuration: every limit the broker enforces is a named default
//! here, with the reasoning next to it. Read once at start-up, then copied to
//! every shard (shared-nothing).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

/// Largest request frame accepted (Kafka's `socket.request.max.bytes`).
/// Checked against the 4-byte length prefix before any allocation.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 100 * 1024 * 1024;
/// Largest record batch accepted in a produce (Kafka's `message.max.bytes`).
/// Larger than Kafka's 1 MiB + 12 so 1 MiB values work without tuning.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Largest size the records of one compressed batch may decompress to.
/// Produce validation reads every compressed batch's records through its
/// codec (as Kafka's LogValidator does) and stops once this many bytes came
/// out, refusing the batch (INVALID_RECORD): a decompression bomb costs at
/// most this much work, and memory stays at the codec's window (raw snappy
/// alone decompresses its one block whole, up to this size). Readers of
/// stored batches (ListOffsets by time, group loading) use the same cap.
/// 16 times the largest batch covers real compression ratios (text and
/// JSON compress 3-10x); Kafka has no such cap.
pub const DEFAULT_MAX_DECOMPRESSED_BATCH_BYTES: usize = 64 * 1024 * 1024;
/// Segment roll size (Kafka's `segment.bytes`).
pub const DEFAULT_SEGMENT_BYTES: u64 = 1024 * 1024 * 1024;
/// Bytes of log between two sparse index entries (Kafka's `index.interval.bytes`).
pub const DEFAULT_INDEX_INTERVAL_BYTES: u32 = 4096;
/// Write-behind buffer of the active segment of one partition. Batches are
/// copied into it and written out page-aligned by the flusher; a batch larger
/// than the buffer takes the slow path and is written on its own.
pub const DEFAULT_WRITE_BUFFER_BYTES: usize = 1024 * 1024;
/// Share of physical memory, in percent, that the shards' caches of recently
/// appended batches may hold together when `batch_cache_bytes` is not set.
/// Consumers reading anything still cached (tailing or catching up) are
/// served from memory without a device read; Kafka gets the same from the
/// page cache, which takes whatever memory is free.
pub const DEFAULT_BATCH_CACHE_MEMORY_PERCENT: u64 = 25;
/// Smallest batch cache per shard, whatever the memory size.
pub const MIN_BATCH_CACHE_BYTES: usize = 64 * 1024 * 1024;
/// Requests read ahead of the response being written on one connection
/// (librdkafka keeps up to 5 in flight; Java up to 5 by default).
pub const DEFAULT_MAX_IN_FLIGHT_PER_CONNECTION: usize = 32;
/// Interval for the flush policy `interval` and for writing checkpoints.
pub const DEFAULT_FLUSH_INTERVAL_MS: u64 = 1000;
/// How often recovery points and producer state are checkpointed.
pub const DEFAULT_CHECKPOINT_INTERVAL_MS: u64 = 60_000;
/// Producer ids remembered per partition for idempotent de-duplication.
pub const DEFAULT_MAX_PRODUCERS_PER_PARTITION: usize = 10_000;
/// Largest partition count accepted in one CreateTopics/CreatePartitions.
pub const MAX_PARTITIONS_PER_TOPIC: i32 = 10_000;
/// Partitions of `__consumer_offsets` (Kafka: 50). Fewer here: one node,
/// and each partition holds a segment file and, while written, a buffer.
pub const DEFAULT_OFFSETS_TOPIC_PARTITIONS: i32 = 16;
/// Wait before an empty group's first rebalance completes (Kafka: 3000 ms),
/// so consumers starting together land in one generation.
pub const DEFAULT_GROUP_INITIAL_REBALANCE_DELAY_MS: u64 = 300;
/// Fetch wait ceiling, whatever the client asks (Kafka clients send <= 500 ms by default).
pub const MAX_FETCH_WAIT_MS: u64 = 30_000;
/// Free space kept on the data directory's file system: below it produce is
/// refused (retriable KAFKA_STORAGE_ERROR) until space returns, and segments
/// are not preallocated into it. The headroom lets a stopped or refusing
/// broker still seal segments, write indexes, the topic table and
/// checkpoints, lets the operator run `ringtail repair`, and absorbs what
/// the other shards append between two free-space checks.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 1024 * 1024 * 1024;
/// Free space kept as a share of the file system, in percent; the larger of
/// this and `min_free_bytes` applies. 0 by default: the absolute floor is
/// what the broker needs; a share suits volumes shared with other programs.
pub const DEFAULT_MIN_FREE_PERCENT: u64 = 0;
/// How often each shard asks the file system for its free space (one
/// statvfs). Between checks a shard subtracts what it allocated itself, so
/// the rate bounds only how late other writers' usage is seen.
pub const DEFAULT_DISK_CHECK_INTERVAL_MS: u64 = 500;
/// Space reserved ahead of a segment's write position with fallocate, so
/// appends do not allocate blocks one write at a time. Never taken from the
/// free-space headroom: near it the step halves down to
/// MIN_PREALLOCATE_STEP_BYTES, then preallocation stops.
pub const PREALLOCATE_STEP_BYTES: u64 = 32 * 1024 * 1024;
/// Smallest preallocation step worth a fallocate call.
pub const MIN_PREALLOCATE_STEP_BYTES: u64 = 1024 * 1024;
/// Largest batch recovery and repair accept in a segment whatever
/// `max_message_bytes` says now: it may have been larger when the batch was
/// written.
pub const MIN_RECOVERED_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// Bytes `ringtail repair` reads from a segment at a time (its window holds
/// this plus one largest batch).
pub const REPAIR_READ_BYTES: usize = 4 * 1024 * 1024;
/// Kept and dropped ranges `ringtail repair` prints per partition; the rest
/// are counted, so a badly damaged log cannot flood the terminal.
pub const MAX_REPAIR_REPORT_LINES: usize = 200;

const PAGE: usize = 4096;
const _: () = assert!(DEFAULT_WRITE_BUFFER_BYTES >= 16 * PAGE);
const _: () = assert!(DEFAULT_WRITE_BUFFER_BYTES.is_multiple_of(PAGE));
const _: () = assert!(DEFAULT_MAX_MESSAGE_BYTES < DEFAULT_MAX_REQUEST_BYTES);
// A batch accepted uncompressed is accepted compressed too.
const _: () = assert!(DEFAULT_MAX_DECOMPRESSED_BATCH_BYTES >= DEFAULT_MAX_MESSAGE_BYTES);
const _: () = assert!(DEFAULT_MAX_DECOMPRESSED_BATCH_BYTES <= MAX_DECOMPRESSED_BATCH_BYTES_LIMIT);
/// Ceiling for `max_decompressed_batch_bytes`: record offsets and sizes
/// inside a batch are 32-bit.
pub const MAX_DECOMPRESSED_BATCH_BYTES_LIMIT: usize = i32::MAX as usize;
const _: () = assert!(DEFAULT_SEGMENT_BYTES <= u32::MAX as u64);
const _: () = assert!(MIN_PREALLOCATE_STEP_BYTES <= PREALLOCATE_STEP_BYTES);
const _: () = assert!(MIN_PREALLOCATE_STEP_BYTES.is_multiple_of(PAGE as u64));
const _: () = assert!(PREALLOCATE_STEP_BYTES.is_multiple_of(MIN_PREALLOCATE_STEP_BYTES));
const _: () = assert!(DEFAULT_MAX_MESSAGE_BYTES <= MIN_RECOVERED_BATCH_BYTES);
const _: () = assert!(DEFAULT_MIN_FREE_PERCENT < 100);

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// When appended data is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlushPolicy {
    /// Produce with acks=1/all is answered only after an fdatasync that covers
    /// it; one fdatasync per partition file covers every append that arrived
    /// while the previous one ran.
    GroupCommit,
    /// Appends are written out as they come and fdatasync runs every
    /// `flush_interval_ms`; acks do not wait for it (Kafka's default
    /// behaviour with log.flush.interval.ms).
    Interval,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: String,
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    pub cores: Option<usize>,
    pub node_id: i32,
    pub auto_create_topics: bool,
    pub default_partitions: i32,
    pub max_request_bytes: usize,
    pub max_message_bytes: usize,
    pub max_decompressed_batch_bytes: usize,
    pub segment_bytes: u64,
    pub index_interval_bytes: u32,
    pub write_buffer_bytes: usize,
    /// Per shard; `None`: DEFAULT_BATCH_CACHE_MEMORY_PERCENT of memory split
    /// across the shards.
    pub batch_cache_bytes: Option<usize>,
    pub max_in_flight_per_connection: usize,
    pub flush_policy: FlushPolicy,
    pub flush_interval_ms: u64,
    pub checkpoint_interval_ms: u64,
    pub preallocate: bool,
    /// Free space kept on the data directory's file system (see
    /// DEFAULT_MIN_FREE_BYTES); 0 and `min_free_percent = 0` disable the guard.
    pub min_free_bytes: u64,
    pub min_free_percent: u64,
    pub disk_check_interval_ms: u64,
    pub cluster_id: String,
    pub offsets_topic_partitions: i32,
    pub group_min_session_timeout_ms: i32,
    pub group_max_session_timeout_ms: i32,
    pub group_initial_rebalance_delay_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:9092".into(),
            advertise: None,
            data_dir: PathBuf::from("./data"),
            cores: None,
            node_id: 0,
            auto_create_topics: true,
            default_partitions: 1,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_decompressed_batch_bytes: DEFAULT_MAX_DECOMPRESSED_BATCH_BYTES,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            index_interval_bytes: DEFAULT_INDEX_INTERVAL_BYTES,
            write_buffer_bytes: DEFAULT_WRITE_BUFFER_BYTES,
            batch_cache_bytes: None,
            max_in_flight_per_connection: DEFAULT_MAX_IN_FLIGHT_PER_CONNECTION,
            flush_policy: FlushPolicy::GroupCommit,
            flush_interval_ms: DEFAULT_FLUSH_INTERVAL_MS,
            checkpoint_interval_ms: DEFAULT_CHECKPOINT_INTERVAL_MS,
            preallocate: true,
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
            min_free_percent: DEFAULT_MIN_FREE_PERCENT,
            disk_check_interval_ms: DEFAULT_DISK_CHECK_INTERVAL_MS,
            cluster_id: "ringtail-cluster-0001".into(),
            offsets_topic_partitions: DEFAULT_OFFSETS_TOPIC_PARTITIONS,
            group_min_session_timeout_ms: 6000,
            group_max_session_timeout_ms: 1_800_000,
            group_initial_rebalance_delay_ms: DEFAULT_GROUP_INITIAL_REBALANCE_DELAY_MS,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.listen.parse::<SocketAddr>().is_err() {
            return bad(format!("listen {:?} is not HOST:PORT", self.listen));
        }
        if let Some(a) = &self.advertise {
            if a.rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                return bad(format!("advertise {a:?} is not HOST:PORT"));
            }
        }
        if self.cores == Some(0) {
            return bad("cores must be at least 1".into());
        }
        if !self.write_buffer_bytes.is_multiple_of(PAGE) || self.write_buffer_bytes < 16 * PAGE {
            return bad(format!(
                "write_buffer_bytes must be a multiple of {PAGE}, at least 64 KiB"
            ));
        }
        if self.segment_bytes < 4 * PAGE as u64 || self.segment_bytes > u32::MAX as u64 {
            return bad("segment_bytes must be in 16 KiB..4 GiB".into());
        }
        if self.max_message_bytes >= self.max_request_bytes {
            return bad("max_message_bytes must be below max_request_bytes".into());
        }
        if self.max_decompressed_batch_bytes < self.max_message_bytes
            || self.max_decompressed_batch_bytes > MAX_DECOMPRESSED_BATCH_BYTES_LIMIT
        {
            return bad(format!(
                "max_decompressed_batch_bytes must be in max_message_bytes..={MAX_DECOMPRESSED_BATCH_BYTES_LIMIT}"
            ));
        }
        if self.default_partitions < 1 || self.default_partitions > MAX_PARTITIONS_PER_TOPIC {
            return bad("default_partitions out of range".into());
        }
        if !(1..=MAX_PARTITIONS_PER_TOPIC).contains(&self.offsets_topic_partitions) {
            return bad("offsets_topic_partitions out of range".into());
        }
        if self.min_free_percent >= 100 {
            return bad("min_free_percent must be below 100".into());
        }
        if !(10..=60_000).contains(&self.disk_check_interval_ms) {
            return bad("disk_check_interval_ms must be in 10..=60000".into());
        }
        if self.max_in_flight_per_connection == 0 || self.index_interval_bytes == 0 {
            return bad("max_in_flight_per_connection and index_interval_bytes must be > 0".into());
        }
        Ok(())
    }

    /// Bytes of batch cache for each of `shards` shards.
    pub fn batch_cache_bytes_per_shard(&self, shards: usize) -> usize {
        self.batch_cache_bytes.unwrap_or_else(|| {
            let memory = physical_memory_bytes().unwrap_or(0);
            let share = memory / 100 * DEFAULT_BATCH_CACHE_MEMORY_PERCENT / shards.max(1) as u64;
            (share as usize).max(MIN_BATCH_CACHE_BYTES)
        })
    }

    /// Host and port given to clients in Metadata and FindCoordinator.
    pub fn advertised(&self) -> (String, i32) {
        let addr = self.advertise.clone().unwrap_or_else(|| {
            let l: SocketAddr = self.listen.parse().expect("validated");
            if l.ip().is_unspecified() {
                format!("127.0.0.1:{}", l.port())
            } else {
                l.to_string()
            }
        });
        let (host, port) = addr.rsplit_once(':').expect("validated");
        (
            host.trim_matches(['[', ']']).to_string(),
            port.parse().unwrap_or(9092),
        )
    }

    pub fn shard_count(&self) -> usize {
        self.cores.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }
}

/// Physical memory of the host, if the system says.
pub fn physical_memory_bytes() -> Option<u64> {
    // SAFETY: sysconf only reads system constants.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages > 0 && page > 0).then(|| pages as u64 * page as u64)
}
