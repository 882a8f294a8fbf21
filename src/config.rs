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
/// Bytes of request frames read off the sockets and not yet handled, all
/// shards together (Kafka's `queued.max.request.bytes`, unbounded there by
/// default); each shard gets an equal share. A reader waits for its share
/// before reading more of a frame's body, so a flood of produce requests
/// queues in the clients' sockets, not in the broker. Counted as the frame
/// buffers grow (see FRAME_FIRST_READ_BYTES), so a connection costs only
/// what it has sent. A frame that finds any room left gets the rest of its
/// length at once, so two half-read frames never wait on each other: a shard
/// may exceed its share by at most one frame (`max_request_bytes`).
/// 512 MiB: five of the largest frames; `ringtail bench produce` (2
/// producers, 5 requests of about 260 KiB in flight each) holds about 3 MiB.
pub const DEFAULT_QUEUED_MAX_REQUEST_BYTES: usize = 512 * 1024 * 1024;
/// Bytes of fetch responses being read or waiting to be written, all shards
/// together; each shard gets an equal share for the fetches of its
/// connections. A fetch takes what it may read from its shard's share before
/// reading (twice that while reading, as a read from the device copies whole
/// batches out of its raw read) and keeps what it read until the response is
/// written; with nothing left it waits (long poll) and, at its max wait, is
/// answered with what it has: never more memory than the share. 1 GiB: a
/// consumer asks for up to 50 MiB per fetch (librdkafka's and Java's
/// `fetch.max.bytes`), so ten full responses are read at once and twenty
/// wait to be written, and `ringtail bench consume` (2 consumers, 32 MiB per
/// response) never waits for it (it uses an eighth of a shard's share on a
/// 2-core host). A shard's share must hold the read of a batch of
/// `max_message_bytes` (at least one whole batch is returned).
pub const DEFAULT_MAX_IN_FLIGHT_FETCH_BYTES: usize = 1024 * 1024 * 1024;
/// Bytes of responses queued on one connection (being built or waiting to be
/// written) from which its reader stops reading requests until the client
/// reads, as Kafka mutes a channel with a response pending: a connection
/// holds at most this and one more response. A fetch counts its response
/// limit from the moment it is read. 64 MiB: one fetch of a client's default
/// `fetch.max.bytes` (50 MiB) and the small requests after it still
/// pipeline; a second large fetch waits for the first to be sent.
pub const DEFAULT_CONNECTION_MAX_QUEUED_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Idle frame buffers kept per shard for reuse, so a steady stream of
/// produce requests reads into warm memory instead of allocating (and
/// faulting in) a buffer per request; beyond it, buffers are freed.
pub const DEFAULT_FRAME_POOL_BYTES: usize = 32 * 1024 * 1024;
/// Largest buffer the frame pool keeps: frames above it are rare (a produce
/// holds at most a few batches of `max_message_bytes`).
pub const FRAME_POOL_MAX_BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// First buffer for a frame's body when the socket holds less than that:
/// a frame's buffer starts at what has arrived (at least this, rounded up to
/// a size class, four per doubling), and at least doubles each time it
/// fills, up to the frame's length: a connection announcing 100 MiB and
/// sending 10 bytes costs 16 KiB, 2,000 of them 32 MiB.
pub const FRAME_FIRST_READ_BYTES: usize = 16 * 1024;
/// Allocations of this size or more get their own mapping from the system
/// allocator (glibc's M_MMAP_THRESHOLD, fixed here), so memory freed when a
/// burst of fetch responses or large frames is over goes back to the
/// system at once. glibc's default starts at 128 KiB but rises to the size
/// of each large block freed (up to 32 MiB), after which such blocks come
/// from the heap and stay resident once freed. 1 MiB: smaller blocks (most
/// batches, produce frames) keep the heap's reuse; larger ones (reads from
/// the device for big fetches; large frames, which the frame pool keeps
/// anyway) pay a mapping and its page faults.
pub const MALLOC_MMAP_THRESHOLD_BYTES: usize = 1024 * 1024;
/// Interval for the flush policy `interval` and for writing checkpoints.
pub const DEFAULT_FLUSH_INTERVAL_MS: u64 = 1000;
/// How often shard 0 writes the data directory's offset checkpoints
/// (recovery points, high watermarks, log start offsets; Kafka's
/// log.flush.offset.checkpoint.interval.ms, also 60 s). A crash costs a
/// recovery scan from the recovery points last written; producer state is
/// snapshotted at each segment roll instead.
pub const DEFAULT_CHECKPOINT_INTERVAL_MS: u64 = 60_000;
/// How often each shard applies retention (time, size, segment.ms) to its
/// partitions (Kafka's log.retention.check.interval.ms, also 5 minutes).
pub const DEFAULT_RETENTION_CHECK_INTERVAL_MS: u64 = 300_000;
/// How often a DeleteRecords waiting for the followers' log starts looks
/// again (they arrive with their fetches, at most every
/// replica_fetch_wait_max_ms); short next to that, cheap (one comparison
/// per replica).
pub const DELETE_RECORDS_POLL_MS: u64 = 10;
// --- Log cleaner (cleanup.policy=compact) ---
/// Pause of each shard's cleaner between looks for a log to clean (Kafka's
/// log.cleaner.backoff.ms, also 15 s): a pass rewrites the whole cleanable
/// log, so checking more often only finds logs still below their ratio.
pub const DEFAULT_LOG_CLEANER_BACKOFF_MS: u64 = 15_000;
/// Bytes per second the cleaners of all shards may read and write together
/// (Kafka's log.cleaner.io.max.bytes.per.second, unbounded there). A pass
/// rewrites every cleanable segment of a log; unbounded, it competes with
/// produce for the device's write bandwidth and with group commit's
/// fdatasyncs. 100 MiB/s is a fraction of an NVMe drive's sequential
/// bandwidth (1-3 GB/s) and a fifth of a SATA SSD's, yet cleans a 10 GiB
/// compacted log in under two minutes.
pub const DEFAULT_LOG_CLEANER_IO_MAX_BYTES_PER_SECOND: u64 = 100 * 1024 * 1024;
/// Memory of one shard's cleaner offset map (Kafka's
/// log.cleaner.dedupe.buffer.size, 128 MiB for all cleaner threads): keys
/// plus an entry overhead each (log/cleaner/dedupe.rs), so about 400,000
/// distinct 20-byte keys per pass; a dirty section with more is cleaned a
/// prefix at a time.
pub const DEFAULT_LOG_CLEANER_DEDUPE_BUFFER_BYTES: usize = 32 * 1024 * 1024;
/// Bytes the cleaner reads from a segment, and gathers before writing, per
/// I/O (Kafka's log.cleaner.io.buffer.size is 512 KiB for reads and writes).
pub const DEFAULT_LOG_CLEANER_IO_BUFFER_BYTES: usize = 1024 * 1024;
/// segment.bytes of `__consumer_offsets` (Kafka's offsets.topic.segment.bytes,
/// also 100 MiB): smaller than other topics' so that its old commits reach
/// sealed segments, where the cleaner compacts them, while the log is small.
pub const DEFAULT_OFFSETS_TOPIC_SEGMENT_BYTES: u64 = 100 * 1024 * 1024;

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

/// A broker without a heartbeat for this long is fenced and its partitions
/// get new leaders (Kafka's `broker.session.timeout.ms`).
pub const DEFAULT_BROKER_SESSION_TIMEOUT_MS: u64 = 9_000;
/// How often a broker heartbeats to the active controller (Kafka: 2000 ms);
/// a fenced broker heartbeats every Raft tick until it is unfenced.
pub const DEFAULT_BROKER_HEARTBEAT_INTERVAL_MS: u64 = 1_000;
/// A broker whose controller listener refused the active controller's
/// connection after its last heartbeat is fenced once that heartbeat is this
/// old, well before its session expires: a refused connection means no
/// process listens there (killed, crashed), while a stopped, overloaded or
/// partitioned broker's port accepts or times out and keeps its full
/// session. Unset: this many heartbeat intervals (capped by the session
/// timeout), so that one heartbeat may be late under load without the
/// refusal alone fencing the broker.
pub const BROKER_REFUSED_TIMEOUT_HEARTBEATS: u64 = 2;
const _: () = assert!(
    BROKER_REFUSED_TIMEOUT_HEARTBEATS * DEFAULT_BROKER_HEARTBEAT_INTERVAL_MS
        < DEFAULT_BROKER_SESSION_TIMEOUT_MS
);
/// Longest a broker-to-controller request (admin changes, ISR changes,
/// registration) waits for a controller to commit it before failing with a
/// retriable error; covers one controller failover.
pub const DEFAULT_CONTROLLER_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Raft tick of the controller quorum. Elections start after
/// RAFT_ELECTION_TICKS..2*RAFT_ELECTION_TICKS ticks without a leader
/// (1-2 s), leaders heartbeat every RAFT_HEARTBEAT_TICKS.
pub const RAFT_TICK_MS: u64 = 100;
pub const RAFT_ELECTION_TICKS: usize = 10;
pub const RAFT_HEARTBEAT_TICKS: usize = 2;
/// Applied metadata entries between two snapshots of the image (then the
/// metadata log is compacted).
pub const METADATA_SNAPSHOT_EVERY_ENTRIES: u64 = 10_000;
/// Bytes of Raft entries in one append message; caps a catch-up burst.
pub const RAFT_MAX_MESSAGE_BYTES: u64 = 1024 * 1024;
/// Append messages in flight to one lagging voter.
pub const RAFT_MAX_INFLIGHT_MESSAGES: usize = 256;
/// Largest frame on the controller listener: a snapshot of the metadata
/// image travels in one (about 250 bytes per partition).
pub const CONTROLLER_MAX_FRAME_BYTES: usize = 256 * 1024 * 1024;
/// Messages queued for one controller peer before Raft messages are
/// dropped (Raft retransmits) and requests refused.
pub const CONTROLLER_PEER_QUEUE_MESSAGES: usize = 4096;
/// Wait before reconnecting to a controller peer that went away.
pub const CONTROLLER_RECONNECT_BACKOFF_MS: u64 = 200;
pub const CONTROLLER_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Inputs (peer messages, proposals) and controller requests queued on the
/// controller shard before the oldest are dropped or new ones refused.
pub const CONTROLLER_QUEUE_LIMIT: usize = 16_384;
/// How often the active controller checks broker sessions and offline
/// partitions.
pub const CONTROLLER_TICK_MS: u64 = 250;
/// Producer ids a broker takes from the controller at a time.
pub const PRODUCER_ID_BLOCK_SIZE: i64 = 1_000;
/// Longest a SIGTERMed broker waits for the controller to move its
/// leaderships away before it stops anyway.
pub const DEFAULT_CONTROLLED_SHUTDOWN_TIMEOUT_MS: u64 = 10_000;
/// Replicas of `__consumer_offsets`, capped by the number of voters
/// (Kafka's `offsets.topic.replication.factor`).
pub const DEFAULT_OFFSETS_TOPIC_REPLICATION_FACTOR: i32 = 3;
/// A follower that has not caught up with the leader's log end for this
/// long leaves the ISR (Kafka's `replica.lag.time.max.ms`).
pub const DEFAULT_REPLICA_LAG_TIME_MAX_MS: u64 = 30_000;
/// How often leaders check their followers' lag.
pub const REPLICA_LAG_CHECK_INTERVAL_MS: u64 = 1_000;
/// Bytes a follower asks per partition in one fetch (Kafka's `replica.fetch.max.bytes`).
pub const DEFAULT_REPLICA_FETCH_MAX_BYTES: usize = 1024 * 1024;
/// Bytes a follower asks per fetch in all (Kafka's `replica.fetch.response.max.bytes`);
/// also the most a fetch loop holds in flight.
pub const DEFAULT_REPLICA_FETCH_RESPONSE_MAX_BYTES: usize = 10 * 1024 * 1024;
/// Long-poll wait of a follower fetch (Kafka's `replica.fetch.wait.max.ms`).
pub const DEFAULT_REPLICA_FETCH_WAIT_MAX_MS: u64 = 500;
/// Wait after a failed follower fetch (Kafka's `replica.fetch.backoff.ms`).
pub const DEFAULT_REPLICA_FETCH_BACKOFF_MS: u64 = 1_000;

// Broker-side recompression (topic and broker `compression.type`).

/// compression.type when neither the topic nor the broker sets one: keep
/// the producer's codec, stored byte for byte (Kafka's default).
pub const DEFAULT_COMPRESSION_TYPE: &str = "producer";
/// The values compression.type takes (Kafka's BrokerCompressionType).
pub const COMPRESSION_TYPES: [&str; 6] =
    ["producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"];
/// Kafka's codec levels (KIP-390, `compression.<codec>.level`): the
/// defaults and the ranges Kafka accepts. gzip -1 is zlib's default (6);
/// lz4 9 is Kafka's default, which uses lz4's fast compressor (any other
/// level the high-compression one).
pub const DEFAULT_COMPRESSION_GZIP_LEVEL: i32 = -1;
pub const COMPRESSION_GZIP_LEVELS: std::ops::RangeInclusive<i32> = 1..=9;
pub const DEFAULT_COMPRESSION_LZ4_LEVEL: i32 = 9;
pub const COMPRESSION_LZ4_LEVELS: std::ops::RangeInclusive<i32> = 1..=17;
pub const DEFAULT_COMPRESSION_ZSTD_LEVEL: i32 = 3;
pub const COMPRESSION_ZSTD_LEVELS: std::ops::RangeInclusive<i32> = -131_072..=22;
/// Largest zstd window (log2 bytes) a recompressing encoder uses. zstd's
/// high levels ask for windows of up to 128 MiB with tables to match, for
/// a batch that is at most `max_message_bytes` compressed; 8 MiB keeps the
/// encoder's memory per shard in the tens of MiB at any level and every
/// reader within its default window limit.
pub const RECOMPRESS_ZSTD_WINDOW_LOG_MAX: u32 = 23;
/// Uncompressed bytes per block of a snappy stream written by
/// recompression (Kafka's framing, xerial's default block, 32 KiB).
pub const RECOMPRESS_SNAPPY_BLOCK_BYTES: usize = 32 * 1024;

/// Checks a compression.type value (topic or broker).
pub fn check_compression_type(v: &str) -> Result<(), String> {
    if COMPRESSION_TYPES.contains(&v.trim()) {
        return Ok(());
    }
    Err(format!("must be one of {}", COMPRESSION_TYPES.join(", ")))
}

/// Checks a `compression.<codec>.level` value (topic or broker) for
/// `codec` gzip, lz4 or zstd.
pub fn check_compression_level(codec: &str, v: &str) -> Result<(), String> {
    let (range, extra) = match codec {
        "gzip" => (
            COMPRESSION_GZIP_LEVELS,
            Some(DEFAULT_COMPRESSION_GZIP_LEVEL),
        ),
        "lz4" => (COMPRESSION_LZ4_LEVELS, None),
        "zstd" => (COMPRESSION_ZSTD_LEVELS, None),
        other => return Err(format!("{other} has no compression level")),
    };
    match v.trim().parse::<i32>() {
        Ok(n) if range.contains(&n) || Some(n) == extra => Ok(()),
        _ => Err(match extra {
            Some(e) => format!("must be {e} or {}..{}", range.start(), range.end()),
            None => format!("must be {}..{}", range.start(), range.end()),
        }),
    }
}

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
// Fetch shares hold a whole batch and its read on hosts of up to 64 cores.
const _: () =
    assert!(DEFAULT_MAX_IN_FLIGHT_FETCH_BYTES / 64 >= 2 * DEFAULT_MAX_MESSAGE_BYTES + (64 << 10));
// A connection pipelines at least one default-sized fetch (50 MiB).
const _: () = assert!(DEFAULT_CONNECTION_MAX_QUEUED_RESPONSE_BYTES > 50 * 1024 * 1024);
const _: () = assert!(FRAME_POOL_MAX_BUFFER_BYTES >= DEFAULT_MAX_MESSAGE_BYTES);
const _: () = assert!(DEFAULT_FRAME_POOL_BYTES >= FRAME_POOL_MAX_BUFFER_BYTES);
const _: () = assert!(DEFAULT_QUEUED_MAX_REQUEST_BYTES >= DEFAULT_MAX_REQUEST_BYTES);

// ---- HTTP listener: Prometheus metrics and health (src/http/) ----

/// Where the HTTP listener (Prometheus `/metrics`, `/healthz`, `/readyz`)
/// accepts; "0" disables it. 9644 is the port Redpanda's admin API uses for
/// the same endpoints, so scrape configs carry over.
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:9644";
/// Largest HTTP request head (request line and headers) read; a larger one
/// is answered 431 and the connection closed. Scrapers and probes send a
/// few hundred bytes.
pub const HTTP_MAX_REQUEST_HEAD_BYTES: usize = 8 * 1024;
/// Headers parsed in a request head; more is answered 431.
pub const HTTP_MAX_HEADERS: usize = 32;
/// HTTP connections served at once; further clients wait in the kernel's
/// accept backlog until one closes (every connection serves one request).
pub const HTTP_MAX_CONNECTIONS: usize = 16;
/// Time a client has to send its whole request head: a slow or silent
/// client is dropped after it, so it holds a connection slot no longer.
pub const HTTP_REQUEST_TIMEOUT_MS: u64 = 5_000;
/// Time a response has to be written before the connection is dropped.
pub const HTTP_WRITE_TIMEOUT_MS: u64 = 10_000;
/// CPU shares of the HTTP listener's task queue on its shard against the
/// default queue's 1000: a scrape being encoded yields to produce and fetch
/// work when both are runnable.
pub const HTTP_TASK_QUEUE_SHARES: usize = 100;
// ---- CPU per byte (BENCHMARKS.md, "CPU per byte") ----
/// How long a shard's flusher lets appends gather before a write round
/// (group commit: write + fdatasync per dirty partition; interval: write)
/// when the previous round carried less than `write_round_bytes`. Every
/// round costs each partition in it an io_uring write and, with group
/// commit, an fdatasync, both run by io_uring's worker threads, and each
/// completion wakes the shard: at a moderate produce rate those per-round
/// costs, not the bytes, are most of the broker's CPU. A delay trades
/// acknowledgement latency for CPU (BENCHMARKS.md, "CPU per byte": 5 ms
/// took a fifth off the CPU per GiB at 100 MiB/s and raised p99 from
/// 13 ms to 270 ms), so it is off by default: 0 starts every round at once.
pub const DEFAULT_WRITE_ROUND_DELAY_US: u64 = 0;
/// Longest gathering delay accepted.
pub const MAX_WRITE_ROUND_DELAY_US: u64 = 100_000;
/// A round carrying at least this many bytes lets the next one start at
/// once: under heavy load rounds are large by themselves and a delay would
/// only idle the device. 1 MiB: the write buffer, one large write per
/// partition.
pub const DEFAULT_WRITE_ROUND_BYTES: u64 = 1024 * 1024;

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
    /// All shards together; see DEFAULT_QUEUED_MAX_REQUEST_BYTES.
    pub queued_max_request_bytes: usize,
    /// All shards together; see DEFAULT_MAX_IN_FLIGHT_FETCH_BYTES.
    pub max_in_flight_fetch_bytes: usize,
    pub connection_max_queued_response_bytes: usize,
    /// Per shard.
    pub frame_pool_bytes: usize,
    /// See DEFAULT_WRITE_ROUND_DELAY_US.
    pub write_round_delay_us: u64,
    /// See DEFAULT_WRITE_ROUND_BYTES.
    pub write_round_bytes: u64,
    pub flush_policy: FlushPolicy,
    pub flush_interval_ms: u64,
    pub checkpoint_interval_ms: u64,
    pub retention_check_interval_ms: u64,
    pub preallocate: bool,
    /// Free space kept on the data directory's file system (see
    /// DEFAULT_MIN_FREE_BYTES); 0 and `min_free_percent = 0` disable the guard.
    pub min_free_bytes: u64,
    pub min_free_percent: u64,
    pub disk_check_interval_ms: u64,
    /// Cluster id for a new cluster; by default a random Kafka-style id
    /// (an existing data dir keeps the one in its meta.properties).
    pub cluster_id: Option<String>,
    /// Controller listener (Raft and broker-to-controller traffic); by
    /// default this node's own address in `controller_voters`.
    pub controller_listen: Option<String>,
    /// The controller quorum as Kafka writes it: `1@host:port,2@host:port,...`.
    /// Empty: a one-voter cluster of this node, with no controller listener.
    pub controller_voters: Option<String>,
    pub broker_session_timeout_ms: u64,
    pub broker_heartbeat_interval_ms: u64,
    /// See [`BROKER_REFUSED_TIMEOUT_HEARTBEATS`]; unset: two heartbeat intervals.
    pub broker_refused_timeout_ms: Option<u64>,
    pub controller_request_timeout_ms: u64,
    pub controlled_shutdown_timeout_ms: u64,
    /// Replicas of topics created with -1 (Kafka's `default.replication.factor`).
    pub default_replication_factor: i32,
    /// min.insync.replicas of topics that do not set it.
    pub min_insync_replicas: i32,
    pub offsets_topic_replication_factor: i32,
    pub replica_lag_time_max_ms: u64,
    pub replica_fetch_max_bytes: usize,
    pub replica_fetch_response_max_bytes: usize,
    pub replica_fetch_wait_max_ms: u64,
    pub replica_fetch_backoff_ms: u64,
    pub offsets_topic_partitions: i32,
    pub group_min_session_timeout_ms: i32,
    pub group_max_session_timeout_ms: i32,
    pub group_initial_rebalance_delay_ms: u64,
    // Broker-side recompression: the broker-level defaults of the topic
    // configs compression.type and compression.<codec>.level.
    pub compression_type: String,
    pub compression_gzip_level: i32,
    pub compression_lz4_level: i32,
    pub compression_zstd_level: i32,
    // Log cleaner; see the DEFAULT_LOG_CLEANER_* constants.
    pub log_cleaner_backoff_ms: u64,
    pub log_cleaner_io_max_bytes_per_second: u64,
    pub log_cleaner_dedupe_buffer_bytes: usize,
    pub log_cleaner_io_buffer_bytes: usize,
    pub offsets_topic_segment_bytes: u64,
    /// The consumer lag monitor; see [`LagConfig`].
    pub lag: LagConfig,
    /// HTTP listener (metrics, health): HOST:PORT, or "0" for none. See
    /// DEFAULT_HTTP_LISTEN.
    pub http_listen: String,
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
            queued_max_request_bytes: DEFAULT_QUEUED_MAX_REQUEST_BYTES,
            max_in_flight_fetch_bytes: DEFAULT_MAX_IN_FLIGHT_FETCH_BYTES,
            connection_max_queued_response_bytes: DEFAULT_CONNECTION_MAX_QUEUED_RESPONSE_BYTES,
            frame_pool_bytes: DEFAULT_FRAME_POOL_BYTES,
            write_round_delay_us: DEFAULT_WRITE_ROUND_DELAY_US,
            write_round_bytes: DEFAULT_WRITE_ROUND_BYTES,
            flush_policy: FlushPolicy::GroupCommit,
            flush_interval_ms: DEFAULT_FLUSH_INTERVAL_MS,
            checkpoint_interval_ms: DEFAULT_CHECKPOINT_INTERVAL_MS,
            retention_check_interval_ms: DEFAULT_RETENTION_CHECK_INTERVAL_MS,
            preallocate: true,
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
            min_free_percent: DEFAULT_MIN_FREE_PERCENT,
            disk_check_interval_ms: DEFAULT_DISK_CHECK_INTERVAL_MS,
            cluster_id: None,
            controller_listen: None,
            controller_voters: None,
            broker_session_timeout_ms: DEFAULT_BROKER_SESSION_TIMEOUT_MS,
            broker_heartbeat_interval_ms: DEFAULT_BROKER_HEARTBEAT_INTERVAL_MS,
            broker_refused_timeout_ms: None,
            controller_request_timeout_ms: DEFAULT_CONTROLLER_REQUEST_TIMEOUT_MS,
            controlled_shutdown_timeout_ms: DEFAULT_CONTROLLED_SHUTDOWN_TIMEOUT_MS,
            default_replication_factor: 1,
            min_insync_replicas: 1,
            offsets_topic_replication_factor: DEFAULT_OFFSETS_TOPIC_REPLICATION_FACTOR,
            replica_lag_time_max_ms: DEFAULT_REPLICA_LAG_TIME_MAX_MS,
            replica_fetch_max_bytes: DEFAULT_REPLICA_FETCH_MAX_BYTES,
            replica_fetch_response_max_bytes: DEFAULT_REPLICA_FETCH_RESPONSE_MAX_BYTES,
            replica_fetch_wait_max_ms: DEFAULT_REPLICA_FETCH_WAIT_MAX_MS,
            replica_fetch_backoff_ms: DEFAULT_REPLICA_FETCH_BACKOFF_MS,
            offsets_topic_partitions: DEFAULT_OFFSETS_TOPIC_PARTITIONS,
            group_min_session_timeout_ms: 6000,
            group_max_session_timeout_ms: 1_800_000,
            group_initial_rebalance_delay_ms: DEFAULT_GROUP_INITIAL_REBALANCE_DELAY_MS,
            compression_type: DEFAULT_COMPRESSION_TYPE.into(),
            compression_gzip_level: DEFAULT_COMPRESSION_GZIP_LEVEL,
            compression_lz4_level: DEFAULT_COMPRESSION_LZ4_LEVEL,
            compression_zstd_level: DEFAULT_COMPRESSION_ZSTD_LEVEL,
            log_cleaner_backoff_ms: DEFAULT_LOG_CLEANER_BACKOFF_MS,
            log_cleaner_io_max_bytes_per_second: DEFAULT_LOG_CLEANER_IO_MAX_BYTES_PER_SECOND,
            log_cleaner_dedupe_buffer_bytes: DEFAULT_LOG_CLEANER_DEDUPE_BUFFER_BYTES,
            log_cleaner_io_buffer_bytes: DEFAULT_LOG_CLEANER_IO_BUFFER_BYTES,
            offsets_topic_segment_bytes: DEFAULT_OFFSETS_TOPIC_SEGMENT_BYTES,
            lag: LagConfig::default(),
            http_listen: DEFAULT_HTTP_LISTEN.into(),
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
        if !(100..=3_600_000).contains(&self.retention_check_interval_ms) {
            return bad("retention_check_interval_ms must be in 100..=3600000".into());
        }
        if !(100..=3_600_000).contains(&self.checkpoint_interval_ms) {
            return bad("checkpoint_interval_ms must be in 100..=3600000".into());
        }
        if self.write_round_delay_us > MAX_WRITE_ROUND_DELAY_US {
            return bad(format!(
                "write_round_delay_us must be at most {MAX_WRITE_ROUND_DELAY_US}"
            ));
        }
        if self.max_in_flight_per_connection == 0 || self.index_interval_bytes == 0 {
            return bad("max_in_flight_per_connection and index_interval_bytes must be > 0".into());
        }
        self.validate_budgets()?;
        self.validate_cleaner()?;
        self.lag.validate()?;
        self.validate_http()?;
        self.validate_cluster()
    }

    fn validate_cleaner(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.into()));
        if !(100..=3_600_000).contains(&self.log_cleaner_backoff_ms) {
            return bad("log_cleaner_backoff_ms must be in 100..=3600000");
        }
        if self.log_cleaner_io_max_bytes_per_second < 4096 {
            return bad("log_cleaner_io_max_bytes_per_second must be at least 4096");
        }
        if self.log_cleaner_dedupe_buffer_bytes < 64 * 1024 {
            return bad("log_cleaner_dedupe_buffer_bytes must be at least 64 KiB");
        }
        if !(PAGE..=64 << 20).contains(&self.log_cleaner_io_buffer_bytes) {
            return bad("log_cleaner_io_buffer_bytes must be in 4 KiB..=64 MiB");
        }
        if self.offsets_topic_segment_bytes < 4 * PAGE as u64
            || self.offsets_topic_segment_bytes > i32::MAX as u64
        {
            return bad("offsets_topic_segment_bytes must be in 16 KiB..2 GiB");
        }
        Ok(())
    }

    fn validate_http(&self) -> Result<(), ConfigError> {
        if self.http_listen != "0" && self.http_listen.parse::<SocketAddr>().is_err() {
            return Err(ConfigError::Invalid(format!(
                "http_listen {:?} is neither HOST:PORT nor 0 (disabled)",
                self.http_listen
            )));
        }
        Ok(())
    }

    /// The HTTP listener's address; None when disabled ("0").
    pub fn http_listen_addr(&self) -> Option<SocketAddr> {
        self.http_listen.parse().ok()
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.node_id < 0 {
            return bad("node_id must be 0 or more".into());
        }
        let voters = self.voters()?;
        if !voters.is_empty() && !voters.iter().any(|(id, _)| *id == self.node_id) {
            return bad(format!(
                "node {} is not among controller_voters: every node is a controller voter and a broker",
                self.node_id
            ));
        }
        if let Some(l) = &self.controller_listen {
            if l.parse::<SocketAddr>().is_err() {
                return bad(format!("controller_listen {l:?} is not HOST:PORT"));
            }
        }
        if self.broker_heartbeat_interval_ms == 0
            || self.broker_heartbeat_interval_ms * 2 > self.broker_session_timeout_ms
        {
            return bad("broker_heartbeat_interval_ms must be > 0 and at most half of broker_session_timeout_ms".into());
        }
        if self.broker_refused_timeout_ms.is_some_and(|t| {
            t <= self.broker_heartbeat_interval_ms || t > self.broker_session_timeout_ms
        }) {
            return bad("broker_refused_timeout_ms must be above broker_heartbeat_interval_ms and at most broker_session_timeout_ms".into());
        }
        if self.default_replication_factor < 1 || self.min_insync_replicas < 1 {
            return bad(
                "default_replication_factor and min_insync_replicas must be at least 1".into(),
            );
        }
        if !(1..=16).contains(&self.offsets_topic_replication_factor) {
            return bad("offsets_topic_replication_factor must be in 1..=16".into());
        }
        if self.replica_fetch_max_bytes == 0
            || self.replica_fetch_response_max_bytes < self.replica_fetch_max_bytes
            || self.replica_fetch_response_max_bytes > self.max_request_bytes
        {
            return bad("replica fetch sizes: 0 < replica_fetch_max_bytes <= replica_fetch_response_max_bytes <= max_request_bytes".into());
        }
        Ok(())
    }

    fn validate_budgets(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let shards = self.shard_count();
        if self.fetch_bytes_per_shard(shards) < 2 * self.max_message_bytes + (64 << 10) {
            return bad(format!(
                "max_in_flight_fetch_bytes split over {shards} shards must hold a batch of \
                 max_message_bytes ({}) and the read of it (twice that and 64 KiB) per shard",
                self.max_message_bytes
            ));
        }
        if self.request_bytes_per_shard(shards) < FRAME_FIRST_READ_BYTES {
            return bad(format!(
                "queued_max_request_bytes split over {shards} shards is below \
                 {FRAME_FIRST_READ_BYTES} bytes per shard"
            ));
        }
        if self.connection_max_queued_response_bytes == 0 {
            return bad("connection_max_queued_response_bytes must be > 0".into());
        }
        self.validate_compression()
    }

    /// The broker's recompression settings, checked as Kafka checks them.
    fn validate_compression(&self) -> Result<(), ConfigError> {
        let checks = [
            (
                "compression_type",
                check_compression_type(&self.compression_type),
            ),
            (
                "compression_gzip_level",
                check_compression_level("gzip", &self.compression_gzip_level.to_string()),
            ),
            (
                "compression_lz4_level",
                check_compression_level("lz4", &self.compression_lz4_level.to_string()),
            ),
            (
                "compression_zstd_level",
                check_compression_level("zstd", &self.compression_zstd_level.to_string()),
            ),
        ];
        for (key, check) in checks {
            check.map_err(|why| ConfigError::Invalid(format!("{key}: {why}")))?;
        }
        Ok(())
    }

    /// The controller voters, `(node id, "host:port")`; empty when unset.
    pub fn voters(&self) -> Result<Vec<(i32, String)>, ConfigError> {
        let Some(list) = self
            .controller_voters
            .as_deref()
            .filter(|v| !v.trim().is_empty())
        else {
            return Ok(Vec::new());
        };
        let mut out: Vec<(i32, String)> = Vec::new();
        for item in list.split(',') {
            let parsed = item.trim().split_once('@').and_then(|(id, addr)| {
                let id = id.parse::<i32>().ok().filter(|i| *i >= 0)?;
                let port_ok = addr
                    .rsplit_once(':')
                    .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
                port_ok.then(|| (id, addr.to_string()))
            });
            match parsed {
                Some(v) if !out.iter().any(|(id, _)| *id == v.0) => out.push(v),
                _ => {
                    return Err(ConfigError::Invalid(format!(
                        "controller_voters entry {item:?} is not ID@HOST:PORT with a distinct id"
                    )))
                }
            }
        }
        Ok(out)
    }

    /// Each shard's share of `queued_max_request_bytes`.
    pub fn request_bytes_per_shard(&self, shards: usize) -> usize {
        self.queued_max_request_bytes / shards.max(1)
    }

    /// Each shard's share of `max_in_flight_fetch_bytes`.
    pub fn fetch_bytes_per_shard(&self, shards: usize) -> usize {
        self.max_in_flight_fetch_bytes / shards.max(1)
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

    /// How long a broker whose controller listener refuses connections may
    /// go without a heartbeat before it is fenced.
    pub fn broker_refused_timeout_ms(&self) -> u64 {
        self.broker_refused_timeout_ms.unwrap_or(
            (BROKER_REFUSED_TIMEOUT_HEARTBEATS * self.broker_heartbeat_interval_ms)
                .min(self.broker_session_timeout_ms),
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

#[cfg(test)]
mod compression_tests {
    use super::*;

    #[test]
    fn broker_compression_settings_are_checked() {
        assert!(Config::default().validate().is_ok());
        let with = |f: fn(&mut Config)| {
            let mut c = Config::default();
            f(&mut c);
            c.validate()
        };
        assert!(with(|c| c.compression_type = "zstd".into()).is_ok());
        assert!(with(|c| c.compression_type = "none".into()).is_err());
        assert!(with(|c| c.compression_gzip_level = 0).is_err());
        assert!(with(|c| c.compression_gzip_level = 9).is_ok());
        assert!(with(|c| c.compression_lz4_level = 18).is_err());
        assert!(with(|c| c.compression_zstd_level = -131_073).is_err());
        assert!(with(|c| c.compression_zstd_level = 22).is_ok());
    }
}

// ---- Consumer lag evaluation (src/lag/): the `[lag]` table ----

/// How often the broker's lag monitor samples its cluster's consumer groups
/// (committed offsets and log end offsets). The Java consumer auto-commits
/// every 5 s, so sampling faster mostly sees the same offsets again.
pub const DEFAULT_LAG_SAMPLE_INTERVAL_MS: u64 = 5_000;
/// Samples kept per partition: the window Burrow's rules judge (its
/// `intervals`, also 10). With the default interval a window spans 45-50 s.
pub const DEFAULT_LAG_WINDOW_SAMPLES: usize = 10;
/// Ceiling for `lag.window_samples`.
pub const MAX_LAG_WINDOW_SAMPLES: usize = 1_000;
/// Groups the lag monitor tracks; groups beyond it are not evaluated (and
/// logged) rather than growing the monitor's memory with the cluster.
pub const DEFAULT_LAG_MAX_GROUPS: usize = 10_000;
/// Partitions (of all tracked groups together) the lag monitor tracks. A
/// partition's window costs about 32 bytes a sample plus its key: 100,000
/// partitions of 10 samples hold about 40 MiB.
pub const DEFAULT_LAG_MAX_PARTITIONS: usize = 100_000;
/// Sampling interval of `ringtail groups lag` when `--interval-ms` is not
/// given: an operator waits `--samples` times this for the answer.
pub const DEFAULT_LAG_CLI_SAMPLE_INTERVAL_MS: u64 = 1_000;
/// Groups asked about in one FindCoordinator, DescribeGroups or
/// OffsetFetch of a sampling round: bounds each request and response (an
/// OffsetFetch answer for 100 groups of 100 partitions is about 300 KiB).
pub const LAG_SAMPLER_GROUPS_PER_REQUEST: usize = 100;
const _: () = assert!(
    DEFAULT_LAG_WINDOW_SAMPLES >= 2 && DEFAULT_LAG_WINDOW_SAMPLES <= MAX_LAG_WINDOW_SAMPLES
);

/// The consumer lag monitor (`[lag]` in the TOML file).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LagConfig {
    /// Run the broker's lag monitor (it serves /v3/kafka/local/consumer...).
    pub enabled: bool,
    pub sample_interval_ms: u64,
    pub window_samples: usize,
    pub max_groups: usize,
    pub max_partitions: usize,
}

impl Default for LagConfig {
    fn default() -> Self {
        LagConfig {
            enabled: true,
            sample_interval_ms: DEFAULT_LAG_SAMPLE_INTERVAL_MS,
            window_samples: DEFAULT_LAG_WINDOW_SAMPLES,
            max_groups: DEFAULT_LAG_MAX_GROUPS,
            max_partitions: DEFAULT_LAG_MAX_PARTITIONS,
        }
    }
}

impl LagConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if !(10..=3_600_000).contains(&self.sample_interval_ms) {
            return bad("lag.sample_interval_ms must be in 10..=3600000");
        }
        if !(2..=MAX_LAG_WINDOW_SAMPLES).contains(&self.window_samples) {
            return bad("lag.window_samples must be in 2..=1000");
        }
        if self.max_groups == 0 || self.max_partitions == 0 {
            return bad("lag.max_groups and lag.max_partitions must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_round_delay_is_bounded() {
        let mut c = Config::default();
        assert!(c.validate().is_ok());
        c.write_round_delay_us = MAX_WRITE_ROUND_DELAY_US;
        assert!(c.validate().is_ok());
        c.write_round_delay_us = MAX_WRITE_ROUND_DELAY_US + 1;
        assert!(matches!(c.validate(), Err(ConfigError::Invalid(_))));
    }
}
