//! One partition: its log, replication state (role, leader epoch, high
//! watermark, ISR), leader epoch cache, idempotent producer state, tail
//! cache and the waiters of produces and long-polling fetches.
//!
//! Runs only on its owner shard (one partition, one shard); other shards reach
//! it through the shard mesh. Appends are serialized by `append_lock` (FIFO),
//! so pipelined produce requests land in arrival order; disk I/O is serialized
//! by `io_lock`. Neither is held across threads: both are shard-local.
//! The write path (device writes, fdatasync, rolls, what a full or failing
//! device does to the partition) is in `write.rs`; the replication side
//! (roles, follower fetches, replicated appends, truncation) in
//! `replicated.rs`, over the pure state of `replica.rs` and `epochs.rs`.

mod cache;
mod cleaner;
mod replicated;
mod retention;
mod write;

pub mod epochs;
pub mod replica;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::channel::oneshot;
use glommio::sync::Semaphore;
use thiserror::Error;

use cache::BatchCache;
pub use cache::{CacheBudget, CACHE_ENTRY_OVERHEAD_BYTES};
pub use cleaner::{CleanStats, CleanerContext};
use epochs::LeaderEpochCache;
use replica::{AckState, ReplicaState};
pub use replicated::{Assignment, FollowerFetch, FollowerRead};

use crate::cluster::records::NodeId;
use crate::cluster::topic_config::TopicConfig;
use crate::log::checkpoint::PartitionCheckpoint;
use crate::log::segment::PendingWrite;
use crate::log::space::SpaceGuard;
use crate::log::{read_batches, read_batches_bounded, Log, LogConfig, LogError};
use crate::producer_state::{ProducerStates, SequenceCheck};
use crate::record::{self, BatchError, BatchHeader, BatchLimits, RecordSet};

#[derive(Debug, Error)]
pub enum PartitionError {
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("storage failed earlier; partition refuses writes")]
    Poisoned,
    #[error("the data directory's file system is full; writes resume when space returns")]
    NoSpace,
    #[error("out of order sequence number")]
    OutOfOrderSequence,
    #[error("producer epoch is fenced")]
    InvalidProducerEpoch,
    #[error("offset {0} out of range")]
    OffsetOutOfRange(i64),
    #[error("partition is being deleted")]
    Deleted,
    #[error("this broker does not lead the partition")]
    NotLeaderOrFollower,
    #[error("the ISR is smaller than min.insync.replicas")]
    NotEnoughReplicas,
    #[error("written, but the ISR shrank below min.insync.replicas")]
    NotEnoughReplicasAfterAppend,
    #[error("not replicated within the request's timeout")]
    Timeout,
    #[error("leader epoch {0} is older than the partition's")]
    FencedLeaderEpoch(i32),
    #[error("leader epoch {0} is newer than the partition's")]
    UnknownLeaderEpoch(i32),
    #[error("replicated batches start at {got}, the log ends at {want}")]
    OffsetMismatch { got: i64, want: i64 },
}

/// What a produce waits for before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// acks=0: never answered.
    None,
    /// acks=1: the leader's own write, durable under its flush policy.
    Leader,
    /// acks=all: the high watermark, with the ISR at min.insync.replicas.
    All,
}

/// An acks=all produce waiting for the high watermark to reach its end.
type HwWaiter = (i64, oneshot::Sender<Result<(), PartitionError>>);

/// Result of a successful produce to one partition.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    pub base_offset: i64,
    pub log_start_offset: i64,
}

/// Records read for a fetch plus the partition's offsets at that time.
#[derive(Debug, Clone)]
pub struct FetchedData {
    pub records: RecordSet,
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

pub struct Partition {
    pub topic: String,
    pub topic_id: uuid::Uuid,
    pub index: i32,
    pub dir: PathBuf,
    log: RefCell<Log>,
    append_lock: Semaphore,
    io_lock: Semaphore,
    synced: Cell<bool>,
    /// The log is fdatasynced below this offset: the recovery point.
    synced_end: Cell<i64>,
    replica: RefCell<ReplicaState>,
    epochs: RefCell<LeaderEpochCache>,
    min_insync_replicas: Cell<usize>,
    producers: RefCell<ProducerStates>,
    /// Waiting for the local log to be durable up to an offset (acks=1,
    /// a follower's next fetch).
    local_waiters: RefCell<VecDeque<(i64, oneshot::Sender<bool>)>>,
    /// Waiting for the high watermark (acks=all).
    hw_waiters: RefCell<VecDeque<HwWaiter>>,
    /// Consumers' long polls, woken when the high watermark moves.
    data_waiters: RefCell<Vec<oneshot::Sender<()>>>,
    /// Followers' long polls, woken when the log end moves.
    append_waiters: RefCell<Vec<oneshot::Sender<()>>>,
    poisoned: Cell<bool>,
    /// Pages whose write met a full file system, rewritten before any later
    /// pages (see `write.rs`). While set, produce is refused.
    stalled: RefCell<Option<PendingWrite>>,
    deleted: Cell<bool>,
    cache: Rc<RefCell<BatchCache>>,
    budget: Rc<CacheBudget>,
    /// The shard's free-space guard.
    space: Rc<SpaceGuard>,
    dirty: Cell<bool>,
    batch_limits: BatchLimits,
    /// The topic's configs (max.message.bytes, timestamps, retention, ...),
    /// replaced whenever the controller commits a change.
    config: RefCell<TopicConfig>,
    /// Flush policy group commit: data counts as durable (for acks and the
    /// high watermark) only after an fdatasync; otherwise after the write.
    group_commit: bool,
    /// The log cleaner's progress (`cleaner.rs`).
    cleaner: cleaner::CleanerState,
    /// The topic's bytes and records counters on this shard.
    metrics: Rc<crate::metrics::TopicCounters>,
}

/// A produced (validated) batch as the topic stores it: the producer's
/// bytes when their codec is the topic's compression.type (or that is
/// `producer`), otherwise rewritten in the topic's codec, within the
/// topic's max.message.bytes.
fn stored_batch(
    batch: &[u8],
    config: &TopicConfig,
    limits: &BatchLimits,
) -> Result<BytesMut, BatchError> {
    let codec = record::Codec::from_id(BatchHeader::parse(batch)?.compression_codec())?;
    match config.compression.target_for(codec) {
        None => Ok(BytesMut::from(batch)),
        Some(target) => record::recompress(batch, target, &config.compression_levels, limits),
    }
}

/// Limit of producer ids remembered per partition.
pub const MAX_PRODUCERS: usize = crate::config::DEFAULT_MAX_PRODUCERS_PER_PARTITION;

impl Partition {
    /// Opens or creates the partition in `<data-dir>/<topic>-<index>`,
    /// recovering its log and rebuilding producer state and the leader
    /// epoch cache from its batches. It serves nothing until it is given a
    /// role (`assign`).
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        data_dir: &std::path::Path,
        topic: &str,
        topic_id: uuid::Uuid,
        index: i32,
        config: LogConfig,
        budget: Rc<CacheBudget>,
        space: Rc<SpaceGuard>,
        group_commit: bool,
        node_id: NodeId,
        lag_time_max_ms: u64,
        checkpoint: PartitionCheckpoint,
    ) -> Result<Rc<Partition>, PartitionError> {
        let dir = data_dir.join(format!("{topic}-{index}"));
        std::fs::create_dir_all(&dir).map_err(|e| LogError::io("create dir", &dir, e))?;
        let bases = crate::log::segment_bases(&dir)?;
        let mut scan_from = crate::log::scan_start(&bases, checkpoint.recovery_point);
        let (mut producers, mut epochs) = (
            ProducerStates::new(MAX_PRODUCERS),
            LeaderEpochCache::default(),
        );
        if bases.first().is_some_and(|first| scan_from > *first) {
            match recovery_state_at(&dir, scan_from) {
                Ok((p, e)) => (producers, epochs) = (p, e),
                Err(why) => {
                    tracing::warn!(topic, partition = index, scan_from, reason = %why, "recovery scans the whole log");
                    scan_from = i64::MIN;
                }
            }
        }
        let batch_limits = BatchLimits {
            max_batch_bytes: config.max_batch_bytes,
            max_decompressed_bytes: config.max_decompressed_batch_bytes,
        };
        let log = Log::open(
            dir.clone(),
            config,
            scan_from,
            checkpoint.log_start_offset,
            |h| {
                producers.record(h);
                epochs.assign(h.partition_leader_epoch(), h.base_offset());
            },
        )
        .await?;
        replicated::write_epoch_checkpoint(&dir, &epochs)
            .map_err(|e| LogError::io("write", &dir, e))?;
        let leo = log.log_end_offset();
        // Sealed segments were synced; the active one as far as the last
        // run's recovery point said.
        let synced_end = log
            .active()
            .base_offset
            .max(checkpoint.recovery_point.min(leo));
        let high_watermark = checkpoint.high_watermark.max(0);
        Ok(Rc::new(Partition {
            topic: topic.to_string(),
            topic_id,
            index,
            dir,
            log: RefCell::new(log),
            append_lock: Semaphore::new(1),
            io_lock: Semaphore::new(1),
            synced: Cell::new(true),
            synced_end: Cell::new(synced_end),
            replica: RefCell::new(ReplicaState::new(
                node_id,
                leo,
                high_watermark,
                lag_time_max_ms,
            )),
            epochs: RefCell::new(epochs),
            min_insync_replicas: Cell::new(1),
            producers: RefCell::new(producers),
            local_waiters: RefCell::new(VecDeque::new()),
            hw_waiters: RefCell::new(VecDeque::new()),
            data_waiters: RefCell::new(Vec::new()),
            append_waiters: RefCell::new(Vec::new()),
            poisoned: Cell::new(false),
            stalled: RefCell::new(None),
            deleted: Cell::new(false),
            cache: Rc::new(RefCell::new(BatchCache::default())),
            budget,
            space,
            dirty: Cell::new(false),
            batch_limits,
            config: RefCell::new(TopicConfig::resolve(
                &Default::default(),
                &crate::config::Config::default(),
            )),
            group_commit,
            cleaner: cleaner::CleanerState::new(checkpoint.cleaner_offset),
            metrics: crate::metrics::topic(topic),
        }))
    }

    pub fn high_watermark(&self) -> i64 {
        self.replica.borrow().high_watermark()
    }
    /// Takes the topic's configs as they are now: produce checks from the
    /// next request, the log's segment settings from the next roll.
    pub fn set_config(&self, config: &TopicConfig) {
        if *self.config.borrow() == *config {
            return;
        }
        *self.config.borrow_mut() = config.clone();
        let mut log = self.log.borrow_mut();
        log.config.segment_bytes = config.segment_bytes;
        log.config.index_interval_bytes = config.index_interval_bytes;
        log.config.preallocate = config.preallocate;
        log.config.segment_index_bytes = config.segment_index_bytes;
    }

    pub fn topic_config(&self) -> TopicConfig {
        self.config.borrow().clone()
    }

    /// The offsets the data directory's checkpoints keep for this partition.
    pub fn checkpoint(&self) -> PartitionCheckpoint {
        PartitionCheckpoint {
            recovery_point: self.synced_end.get(),
            high_watermark: self.high_watermark(),
            log_start_offset: self.log_start_offset(),
            cleaner_offset: self.cleaner.first_dirty_offset.get(),
        }
    }
    pub fn log_end_offset(&self) -> i64 {
        self.log.borrow().log_end_offset()
    }
    pub fn log_start_offset(&self) -> i64 {
        self.log.borrow().log_start_offset
    }
    pub fn max_timestamp(&self) -> (i64, i64) {
        self.log.borrow().max_timestamp()
    }
    /// Bytes of batches in the log (DescribeLogDirs' partition size).
    pub fn size_bytes(&self) -> u64 {
        self.log.borrow().size_bytes()
    }
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.get()
    }
    /// A write is waiting for the file system to have room again.
    pub fn is_stalled(&self) -> bool {
        self.stalled.borrow().is_some()
    }
    pub fn is_leader(&self) -> bool {
        self.replica.borrow().is_leader()
    }
    pub fn leader_epoch(&self) -> i32 {
        self.replica.borrow().leader_epoch
    }
    pub fn partition_epoch(&self) -> i32 {
        self.replica.borrow().partition_epoch
    }

    /// Checks a request's view of the leader epoch against ours (-1: none).
    pub fn check_leader_epoch(&self, requested: i32) -> Result<(), PartitionError> {
        let ours = self.leader_epoch();
        match requested {
            r if r < 0 || r == ours => Ok(()),
            r if r < ours => Err(PartitionError::FencedLeaderEpoch(r)),
            r => Err(PartitionError::UnknownLeaderEpoch(r)),
        }
    }

    /// Validates, de-duplicates and appends the batches of one produce as
    /// leader, then waits for what `acks` asks, at most `timeout` (the
    /// batches stay appended either way). `mark_dirty` tells the shard's
    /// flusher this partition has new data. Refused (NoSpace) while the file
    /// system is below its free-space threshold or a write of this partition
    /// waits for room.
    pub async fn produce(
        self: &Rc<Self>,
        records: Bytes,
        acks: Acks,
        timeout: Duration,
        mark_dirty: impl FnOnce(Rc<Partition>),
    ) -> Result<Appended, PartitionError> {
        if self.poisoned.get() {
            return Err(PartitionError::Poisoned);
        }
        if !self.is_leader() {
            return Err(PartitionError::NotLeaderOrFollower);
        }
        if self.space.is_full() || self.is_stalled() {
            return Err(PartitionError::NoSpace);
        }
        let min_isr = self.min_insync_replicas.get();
        if acks == Acks::All && !self.replica.borrow().enough_replicas(min_isr) {
            return Err(PartitionError::NotEnoughReplicas);
        }
        // Every record is checked before anything is appended: a refused
        // produce stores nothing.
        let config = self.config.borrow().clone();
        let limits = BatchLimits {
            max_batch_bytes: config.max_message_bytes,
            ..self.batch_limits
        };
        let produced = record::validate_produce(&records, &limits)?;
        check_timestamps(&produced, &config, crate::shard::wall_clock_ms())?;
        cleaner::check_keys(&config, &records, limits.max_decompressed_bytes)?;
        let batch = stored_batch(&records[..produced.size], &config, &limits)?;
        let (first_base, end) = self.append_produced(batch, &produced).await?;
        if !self.dirty.replace(true) {
            mark_dirty(self.clone());
        }
        let waited = match acks {
            Acks::None => Ok(()),
            Acks::Leader => match self.wait_local(end) {
                Some(rx) => match with_timeout(rx, timeout).await {
                    Some(Ok(true)) => Ok(()),
                    Some(_) => Err(PartitionError::Poisoned),
                    None => Err(PartitionError::Timeout),
                },
                None => Ok(()),
            },
            Acks::All => {
                let rx = self.wait_high_watermark(end, min_isr);
                match with_timeout(rx, timeout).await {
                    Some(Ok(r)) => r,
                    Some(Err(_)) => Err(PartitionError::NotLeaderOrFollower),
                    None => Err(PartitionError::Timeout),
                }
            }
        };
        waited.map(|()| Appended {
            base_offset: first_base,
            log_start_offset: self.log_start_offset(),
        })
    }

    /// Appends a produce's batch (already validated) under the append lock;
    /// a duplicate of an idempotent producer's batch is not appended again.
    /// Returns the batch's base offset and the offset the produce must be
    /// durable or replicated to.
    async fn append_produced(
        self: &Rc<Self>,
        mut batch: BytesMut,
        produced: &record::ProducedBatch,
    ) -> Result<(i64, i64), PartitionError> {
        let _permit = self
            .append_lock
            .acquire_permit(1)
            .await
            .map_err(|_| PartitionError::Deleted)?;
        if self.deleted.get() {
            return Err(PartitionError::Deleted);
        }
        if !self.is_leader() {
            return Err(PartitionError::NotLeaderOrFollower);
        }
        record::normalize_header(&mut batch, produced);
        if self.config.borrow().log_append_time {
            record::set_log_append_time(&mut batch, crate::shard::wall_clock_ms());
        }
        let header = BatchHeader::parse(&batch)?;
        if header.producer_id() >= 0 {
            match self.producers.borrow().check(&header) {
                SequenceCheck::Append => {}
                // A duplicate: answer once the original is.
                SequenceCheck::Duplicate { base_offset } => {
                    return Ok((base_offset, self.log_end_offset()))
                }
                SequenceCheck::OutOfOrder => return Err(PartitionError::OutOfOrderSequence),
                SequenceCheck::InvalidEpoch => return Err(PartitionError::InvalidProducerEpoch),
            }
        }
        let epoch = self.leader_epoch();
        let records = header.last_offset_delta().max(0) as u64 + 1;
        let (base, last) = self.append_batch(batch, Some(epoch)).await?;
        self.count_produced(produced.size, records);
        Ok((base, last + 1))
    }

    /// Waits for the local log to be durable up to `end`; `None` if it is.
    fn wait_local(&self, end: i64) -> Option<oneshot::Receiver<bool>> {
        if self.replica.borrow().durable_end_offset() >= end {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.local_waiters.borrow_mut().push_back((end, tx));
        Some(rx)
    }

    /// Waits for the high watermark to reach `end`, then answers as acks=all
    /// does (NOT_ENOUGH_REPLICAS_AFTER_APPEND if the ISR shrank meanwhile).
    fn wait_high_watermark(
        &self,
        end: i64,
        min_isr: usize,
    ) -> oneshot::Receiver<Result<(), PartitionError>> {
        let (tx, rx) = oneshot::channel();
        match self.replica.borrow().ack_state(end, min_isr) {
            AckState::Wait => self.hw_waiters.borrow_mut().push_back((end, tx)),
            AckState::Done => {
                let _ = tx.send(Ok(()));
            }
            AckState::NotEnoughReplicasAfterAppend => {
                let _ = tx.send(Err(PartitionError::NotEnoughReplicasAfterAppend));
            }
        }
        rx
    }

    /// Copies one batch into the log, making room first (slow cases: roll,
    /// full write buffer). With `leader_epoch` the batch gets its offsets
    /// here (a leader's append); without, it keeps them (a follower's).
    async fn append_batch(
        self: &Rc<Self>,
        mut batch: BytesMut,
        leader_epoch: Option<i32>,
    ) -> Result<(i64, i64), PartitionError> {
        loop {
            let (roll, room) = {
                let log = self.log.borrow();
                (
                    log.needs_roll(batch.len()),
                    log.active().has_room(batch.len()),
                )
            };
            if roll {
                self.roll().await?;
            } else if !room {
                self.write_out(false).await?;
            } else {
                break;
            }
        }
        let mut log = self.log.borrow_mut();
        if let Some(epoch) = leader_epoch {
            record::assign_offsets(&mut batch, log.log_end_offset(), epoch);
        }
        let header = BatchHeader::parse(&batch)?;
        let (base, last) = (header.base_offset(), header.last_offset());
        self.producers.borrow_mut().record(&header);
        let new_epoch = self
            .epochs
            .borrow_mut()
            .assign(header.partition_leader_epoch(), base);
        log.append(&batch);
        drop(log);
        if new_epoch {
            self.save_epochs();
        }
        let len = batch.len();
        self.cache
            .borrow_mut()
            .batches
            .push_back((base, last, batch.freeze()));
        self.budget.admit(&self.cache, base, len);
        self.replica.borrow_mut().on_append(last + 1);
        for tx in self.append_waiters.borrow_mut().drain(..) {
            let _ = tx.send(());
        }
        Ok((base, last))
    }

    /// Reads batches from `offset` for a consumer of the leader, bounded by
    /// the high watermark; at least one batch, however large.
    pub async fn read(&self, offset: i64, max_bytes: usize) -> Result<FetchedData, PartitionError> {
        self.read_bounded(offset, max_bytes, usize::MAX).await
    }

    /// As `read`, at most `max_bytes`, except that the first batch is
    /// returned above that if it is at most `first_batch_max_bytes` (a
    /// fetch's memory grant): nothing larger than either is read into memory.
    pub async fn read_bounded(
        &self,
        offset: i64,
        max_bytes: usize,
        first_batch_max_bytes: usize,
    ) -> Result<FetchedData, PartitionError> {
        if !self.is_leader() {
            return Err(PartitionError::NotLeaderOrFollower);
        }
        let read = self
            .read_below(
                offset,
                max_bytes,
                first_batch_max_bytes,
                self.high_watermark(),
            )
            .await?;
        self.metrics.bytes_out.add(read.records.len() as u64);
        Ok(read)
    }

    /// Counts a produced batch appended as leader.
    fn count_produced(&self, bytes: usize, records: u64) {
        self.metrics.bytes_in.add(bytes as u64);
        self.metrics.produce_batches.inc();
        self.metrics.produce_records.add(records);
    }

    /// Replicas, in-sync replicas and, as leader, each follower's lag in
    /// offsets behind the log end.
    pub fn replication_view(&self) -> (usize, usize, Vec<(NodeId, i64)>) {
        let r = self.replica.borrow();
        let lags = if r.is_leader() {
            r.follower_lags()
        } else {
            Vec::new()
        };
        (r.replicas.len(), r.isr.len(), lags)
    }

    /// Reads whole batches from `offset`, stopping before `end`, bounded as
    /// `read_bounded`.
    pub async fn read_below(
        &self,
        offset: i64,
        max_bytes: usize,
        first_batch_max_bytes: usize,
        end: i64,
    ) -> Result<FetchedData, PartitionError> {
        let hw = self.high_watermark();
        let start = self.log_start_offset();
        let leo = self.log_end_offset();
        let data = |records| FetchedData {
            records,
            high_watermark: hw,
            log_start_offset: start,
        };
        if offset < start || offset > leo {
            return Err(PartitionError::OffsetOutOfRange(offset));
        }
        if offset >= end || max_bytes.max(first_batch_max_bytes) == 0 {
            return Ok(data(RecordSet::default()));
        }
        let cached = self
            .cache
            .borrow()
            .read(offset, end, max_bytes, first_batch_max_bytes);
        crate::metrics::with(|m| match cached {
            Some(_) => m.cache_hits.inc(),
            None => m.cache_misses.inc(),
        });
        if let Some(b) = cached {
            return Ok(data(b));
        }
        let mut cursor = offset;
        loop {
            let Some(plan) = self.log.borrow().locate(cursor) else {
                return Ok(data(RecordSet::default()));
            };
            let (bytes, limited) =
                read_batches_bounded(&plan, cursor, end, max_bytes, first_batch_max_bytes).await?;
            // Empty at a byte limit: the next batch is too large, not absent.
            match (bytes.is_empty() && !limited, plan.next_segment) {
                (true, Some(next)) if next < end => cursor = next.max(cursor),
                _ => return Ok(data(bytes)),
            }
        }
    }

    /// Resolves when the high watermark passes `offset`, or after `timeout`.
    pub async fn wait_for_data(&self, offset: i64, timeout: Duration) {
        if self.high_watermark() > offset || self.deleted.get() {
            return;
        }
        let (tx, rx) = oneshot::channel();
        self.data_waiters.borrow_mut().push(tx);
        let timer = glommio::timer::sleep(timeout);
        futures::pin_mut!(timer);
        let _ = futures::future::select(rx, timer).await;
    }

    /// First offset whose record timestamp is at or after `timestamp`.
    pub async fn offset_for_timestamp(
        &self,
        timestamp: i64,
    ) -> Result<Option<(i64, i64)>, PartitionError> {
        let hw = self.high_watermark();
        let Some((mut cursor, _)) = self.log.borrow().locate_time(timestamp) else {
            return Ok(None);
        };
        while cursor < hw {
            let Some(plan) = self.log.borrow().locate(cursor) else {
                return Ok(None);
            };
            let bytes = read_batches(&plan, cursor, hw, 1024 * 1024).await?;
            if bytes.is_empty() {
                match plan.next_segment {
                    Some(next) if next > cursor => {
                        cursor = next;
                        continue;
                    }
                    _ => return Ok(None),
                }
            }
            let mut rest = bytes.to_bytes();
            while rest.len() >= record::BATCH_HEADER_BYTES {
                let (size, max_ts, last) = {
                    let h = BatchHeader::parse(&rest)?;
                    (
                        h.total_size().min(rest.len()),
                        h.max_timestamp(),
                        h.last_offset(),
                    )
                };
                let batch = rest.split_to(size);
                if max_ts >= timestamp {
                    let limit = self.batch_limits.max_decompressed_bytes;
                    if let Some(p) = record::record_positions(&batch, limit)
                        .find(|p| p.timestamp >= timestamp && p.offset >= cursor)
                    {
                        return Ok(Some((p.offset, p.timestamp)));
                    }
                }
                cursor = last + 1;
            }
        }
        Ok(None)
    }

    /// Clean shutdown: everything written and synced, active segment trimmed,
    /// its indexes on disk.
    pub async fn close(self: &Rc<Self>) -> Result<(), PartitionError> {
        let _append = self
            .append_lock
            .acquire_permit(1)
            .await
            .map_err(|_| PartitionError::Deleted)?;
        self.write_out(true).await?;
        let _io = self
            .io_lock
            .acquire_permit(1)
            .await
            .map_err(|_| PartitionError::Deleted)?;
        let seal = self.log.borrow().active().seal_job();
        seal.run().await?;
        Ok(())
    }

    /// Topic deletion: refuse further work, wake waiters, drop the cache.
    pub fn mark_deleted(&self) {
        self.deleted.set(true);
        self.append_lock.close();
        self.io_lock.close();
        self.poison();
        for tx in self.data_waiters.borrow_mut().drain(..) {
            let _ = tx.send(());
        }
        for tx in self.append_waiters.borrow_mut().drain(..) {
            let _ = tx.send(());
        }
        self.cache.borrow_mut().clear();
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty.get()
    }

    /// Bytes appended to the active segment and not yet on the device.
    pub fn unwritten_bytes(&self) -> u64 {
        let log = self.log.borrow();
        let active = log.active();
        active.size.saturating_sub(active.written)
    }
}

/// Kafka's message.timestamp.before/after.max.ms for CreateTime topics:
/// every record's timestamp within the bounds of the broker's clock.
fn check_timestamps(
    produced: &record::ProducedBatch,
    config: &TopicConfig,
    now_ms: i64,
) -> Result<(), PartitionError> {
    if config.log_append_time || produced.max_timestamp == record::NO_TIMESTAMP {
        return Ok(());
    }
    let too_old = now_ms.saturating_sub(produced.min_timestamp) > config.timestamp_before_max_ms;
    let too_new = produced.max_timestamp.saturating_sub(now_ms) > config.timestamp_after_max_ms;
    if too_old || too_new {
        return Err(PartitionError::Batch(BatchError::InvalidTimestamp(
            "a record's timestamp is outside message.timestamp.before.max.ms / after.max.ms of the broker's clock",
        )));
    }
    Ok(())
}

/// What recovery from `scan_from` starts with: the producer state of the
/// snapshot taken when that segment was rolled, and the leader epochs that
/// start before it (the checkpoint was synced at that roll; later epochs
/// come back from the scanned batches).
fn recovery_state_at(
    dir: &std::path::Path,
    scan_from: i64,
) -> Result<(ProducerStates, LeaderEpochCache), String> {
    let path = dir.join(crate::producer_state::snapshot_file_name(scan_from));
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let producers =
        ProducerStates::decode_snapshot(&bytes, MAX_PRODUCERS).map_err(|e| e.to_string())?;
    let mut epochs = replicated::read_epoch_checkpoint(dir)?;
    epochs.truncate_from_end(scan_from);
    Ok((producers, epochs))
}

/// Waits for `rx` at most `timeout`; `None` when the time ran out.
async fn with_timeout<T>(
    rx: oneshot::Receiver<T>,
    timeout: Duration,
) -> Option<Result<T, oneshot::Canceled>> {
    let timer = glommio::timer::sleep(timeout);
    futures::pin_mut!(timer);
    match futures::future::select(rx, timer).await {
        futures::future::Either::Left((r, _)) => Some(r),
        futures::future::Either::Right(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::record::tests::make_batch;
    use kafka_protocol::records::Compression;

    fn run<F: std::future::Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
        crate::server::raise_memlock();
        glommio::LocalExecutorBuilder::default()
            .io_memory(crate::server::IO_MEMORY_BYTES)
            .spawn(move || async move { f().await })
            .expect("executor")
            .join()
            .expect("join");
    }

    fn config() -> LogConfig {
        LogConfig {
            segment_bytes: 1 << 20,
            index_interval_bytes: 4096,
            write_buffer_bytes: 64 * 1024,
            max_batch_bytes: 1 << 20,
            max_decompressed_batch_bytes: 16 << 20,
            preallocate: true,
            segment_index_bytes: 10 << 20,
        }
    }

    /// A partition of a one-broker cluster that leads it.
    async fn leader(
        dir: &std::path::Path,
        config: LogConfig,
        budget: Rc<CacheBudget>,
    ) -> Rc<Partition> {
        leader_at(dir, config, budget, PartitionCheckpoint::NONE).await
    }

    /// The same, opened with what the offset checkpoints said of it.
    async fn leader_at(
        dir: &std::path::Path,
        config: LogConfig,
        budget: Rc<CacheBudget>,
        checkpoint: PartitionCheckpoint,
    ) -> Rc<Partition> {
        let space = Rc::new(SpaceGuard::unlimited());
        let p = Partition::open(
            dir,
            "t",
            uuid::Uuid::nil(),
            0,
            config,
            budget,
            space,
            true,
            1,
            30_000,
            checkpoint,
        )
        .await
        .unwrap();
        let role = Assignment {
            role: replica::Role::Leader,
            leader_epoch: 0,
            partition_epoch: 0,
            replicas: vec![1],
            isr: vec![1],
            ineligible: Default::default(),
            config: TopicConfig::resolve(&Default::default(), &crate::config::Config::default()),
        };
        p.assign(&role, 0);
        p
    }

    #[test]
    fn a_bounded_read_returns_nothing_rather_than_skip_a_batch_too_large() {
        for cache_bytes in [0, 64 << 20] {
            run(move || async move {
                let dir = tempfile::tempdir().unwrap();
                crate::log::probe_device(dir.path()).await.unwrap();
                let config = LogConfig {
                    segment_bytes: 64 * 1024,
                    ..config()
                };
                let p = leader(dir.path(), config, CacheBudget::new(cache_bytes)).await;
                let small = make_batch(3, Compression::None, 0).len();
                let big = make_batch(50, Compression::None, 0).len();
                for n in std::iter::repeat_n(3, 20)
                    .chain([50])
                    .chain(std::iter::repeat_n(3, 400))
                {
                    let batch = make_batch(n, Compression::None, 0).freeze();
                    p.produce(batch, Acks::None, Duration::from_secs(5), |_| {})
                        .await
                        .unwrap();
                }
                p.write_out(true).await.unwrap();
                assert!(p.log.borrow().segments.len() > 2, "later segments exist");
                // The big batch holds offsets 60..=109.
                let none = p.read_bounded(70, 10, big - 1).await.unwrap();
                assert!(none.records.is_empty(), "cache {cache_bytes}");
                let one = p.read_bounded(70, 10, big).await.unwrap();
                let bytes = one.records.to_bytes();
                let base = BatchHeader::parse(&bytes).unwrap().base_offset();
                assert_eq!((bytes.len(), base), (big, 60));
                // After the first batch, max_bytes alone counts.
                let two = p.read_bounded(0, small + 1, big).await.unwrap();
                assert_eq!(two.records.len(), small);
            });
        }
    }

    /// An idempotent producer's batch of `n` records from sequence `seq`.
    fn idempotent_batch(pid: i64, seq: i32, n: usize) -> Bytes {
        let mut b = make_batch(n, Compression::None, 0);
        b[43..51].copy_from_slice(&pid.to_be_bytes());
        b[51..53].copy_from_slice(&0i16.to_be_bytes());
        b[53..57].copy_from_slice(&seq.to_be_bytes());
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b.freeze()
    }

    #[test]
    fn reopening_at_the_recovery_point_keeps_producer_state_epochs_and_hw() {
        run(|| async {
            let dir = tempfile::tempdir().unwrap();
            crate::log::probe_device(dir.path()).await.unwrap();
            let config = || LogConfig {
                segment_bytes: 16 * 1024,
                ..config()
            };
            let p = leader(dir.path(), config(), CacheBudget::new(0)).await;
            let produce = |p: Rc<Partition>, batch: Bytes| async move {
                p.produce(batch, Acks::None, Duration::from_secs(5), |_| {})
                    .await
                    .unwrap()
                    .base_offset
            };
            let mut last_base = 0;
            for i in 0..300 {
                last_base = produce(p.clone(), idempotent_batch(7, i * 5, 5)).await;
            }
            p.close().await.unwrap();
            let cp = p.checkpoint();
            assert_eq!((cp.recovery_point, cp.high_watermark), (1500, 1500));
            let epochs = p.epochs.borrow().clone();
            let segments = p.log.borrow().segments.len();
            assert!(segments > 3, "rolled");
            drop(p);
            // Damage a sealed segment: a scan from the start would fence the
            // log; the reopening below the recovery point never reads it.
            let first = dir
                .path()
                .join("t-0")
                .join(crate::log::segment::log_file_name(0));
            let mut bytes = std::fs::read(&first).unwrap();
            let n = bytes.len();
            bytes[n - 5] ^= 0xff;
            std::fs::write(&first, &bytes).unwrap();
            let p = leader_at(dir.path(), config(), CacheBudget::new(0), cp).await;
            assert_eq!(p.log_end_offset(), 1500);
            assert_eq!(p.high_watermark(), 1500);
            assert_eq!(*p.epochs.borrow(), epochs);
            // The producer's last batch, retried, is still a duplicate, and
            // its next sequence is still in order.
            let retried = produce(p.clone(), idempotent_batch(7, 299 * 5, 5)).await;
            assert_eq!((retried, p.log_end_offset()), (last_base, 1500));
            assert_eq!(produce(p.clone(), idempotent_batch(7, 1500, 5)).await, 1500);
            p.close().await.unwrap();
            drop(p);
            let full = Partition::open(
                dir.path(),
                "t",
                uuid::Uuid::nil(),
                0,
                config(),
                CacheBudget::new(0),
                Rc::new(SpaceGuard::unlimited()),
                true,
                1,
                30_000,
                PartitionCheckpoint::NONE,
            )
            .await;
            assert!(matches!(
                full,
                Err(PartitionError::Log(LogError::Corrupt { .. }))
            ));
        });
    }

    #[test]
    fn produce_then_read_from_disk_without_cache() {
        run(|| async {
            let dir = tempfile::tempdir().unwrap();
            crate::log::probe_device(dir.path()).await.unwrap();
            let p = leader(dir.path(), config(), CacheBudget::new(0)).await;
            let flushes = Rc::new(RefCell::new(Vec::new()));
            for i in 0..5 {
                let f = flushes.clone();
                let batch = make_batch(3, Compression::None, 0).freeze();
                let produce = p.produce(batch, Acks::All, Duration::from_secs(5), move |p| {
                    f.borrow_mut().push(p)
                });
                let flusher = async {
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                    let dirty: Vec<_> = flushes.borrow_mut().drain(..).collect();
                    for d in dirty {
                        d.write_out(true).await.unwrap();
                    }
                };
                let (appended, _) = futures::join!(produce, flusher);
                assert_eq!(appended.unwrap().base_offset, i * 3);
            }
            assert_eq!(p.high_watermark(), 15);
            let data = p.read(4, 1 << 20).await.unwrap();
            let records = data.records.to_bytes();
            let h = BatchHeader::parse(&records).unwrap();
            assert_eq!(h.base_offset(), 3);
            assert_eq!(p.offset_for_timestamp(1).await.unwrap(), Some((1, 1)));
        });
    }
}
