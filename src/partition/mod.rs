//! One partition: its log, high watermark, leader epoch, idempotent producer
//! state, tail cache and the waiters of long-polling fetches.
//!
//! Runs only on its owner shard (one partition, one shard); other shards reach
//! it through the shard mesh. Appends are serialized by `append_lock` (FIFO),
//! so pipelined produce requests land in arrival order; disk I/O is serialized
//! by `io_lock`. Neither is held across threads: both are shard-local.
//! The write path (device writes, fdatasync, rolls, what a full or failing
//! device does to the partition) is in `write.rs`.

mod write;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::channel::oneshot;
use glommio::sync::Semaphore;
use thiserror::Error;

use crate::log::segment::PendingWrite;
use crate::log::space::SpaceGuard;
use crate::log::{read_batches, read_batches_bounded, Log, LogConfig, LogError};
use crate::producer_state::{ProducerStates, SequenceCheck};
use crate::record::{self, BatchError, BatchHeader, BatchLimits, RecordSet, RecordSetBuilder};

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
}

/// Bytes counted per cached batch besides the batch itself: its handle and
/// allocation header and its two queue entries, so that a cache of tiny
/// batches stays within its limit too.
pub const CACHE_ENTRY_OVERHEAD_BYTES: usize = 128;

/// A cached batch in the shard's eviction order: its partition's cache,
/// base offset and size.
type CachedEntry = (Weak<RefCell<BatchCache>>, i64, usize);

/// Bytes of recent batches cached by all partitions of one shard, evicted
/// oldest first across the shard's partitions, so a partition written long
/// ago does not keep its batches while a busy one loses its newest.
pub struct CacheBudget {
    used: Cell<usize>,
    limit: usize,
    /// Every cached batch in insertion order: its partition's cache, base
    /// offset and size. A batch cleared or dropped with its partition stays
    /// counted until its entry comes up here.
    order: RefCell<VecDeque<CachedEntry>>,
}

impl CacheBudget {
    pub fn new(limit: usize) -> Rc<CacheBudget> {
        Rc::new(CacheBudget {
            used: Cell::new(0),
            limit,
            order: RefCell::new(VecDeque::new()),
        })
    }

    /// Accounts for a batch just cached, then evicts the shard's oldest
    /// batches while over the limit.
    fn admit(&self, cache: &Rc<RefCell<BatchCache>>, base: i64, batch_len: usize) {
        let len = batch_len + CACHE_ENTRY_OVERHEAD_BYTES;
        self.used.set(self.used.get() + len);
        let mut order = self.order.borrow_mut();
        order.push_back((Rc::downgrade(cache), base, len));
        while self.used.get() > self.limit {
            let Some((victim, base, len)) = order.pop_front() else {
                break;
            };
            if let Some(victim) = victim.upgrade() {
                let mut victim = victim.borrow_mut();
                if victim.batches.front().is_some_and(|(b, _, _)| *b == base) {
                    victim.batches.pop_front();
                }
            }
            self.used.set(self.used.get() - len);
        }
    }
}

#[derive(Default)]
struct BatchCache {
    batches: VecDeque<(i64, i64, Bytes)>,
}

impl BatchCache {
    fn clear(&mut self) {
        self.batches.clear();
    }

    /// Whole batches from the one holding `offset`, below `end`, at most
    /// `max` bytes, by reference; the first batch even above `max` if it is
    /// at most `first_max`.
    fn read(&self, offset: i64, end: i64, max: usize, first_max: usize) -> Option<RecordSet> {
        let (front_base, _, _) = self.batches.front()?;
        if *front_base > offset {
            return None;
        }
        let start = self.batches.partition_point(|(_, last, _)| *last < offset);
        let mut out = RecordSetBuilder::default();
        for (base, _, b) in self.batches.iter().skip(start) {
            let limit = if out.is_empty() {
                max.max(first_max)
            } else {
                max
            };
            if *base >= end || out.len() + b.len() > limit {
                break;
            }
            out.push(b.clone());
        }
        Some(out.finish())
    }
}

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
    pub index: i32,
    pub leader_epoch: i32,
    pub dir: PathBuf,
    log: RefCell<Log>,
    append_lock: Semaphore,
    io_lock: Semaphore,
    high_watermark: Cell<i64>,
    synced: Cell<bool>,
    producers: RefCell<ProducerStates>,
    durable_waiters: RefCell<VecDeque<(i64, oneshot::Sender<bool>)>>,
    data_waiters: RefCell<Vec<oneshot::Sender<()>>>,
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
    /// Flush policy group commit: the high watermark (and acks) move only
    /// after an fdatasync; otherwise after the write.
    group_commit: bool,
}

/// Limit of producer ids remembered per partition.
pub const MAX_PRODUCERS: usize = crate::config::DEFAULT_MAX_PRODUCERS_PER_PARTITION;

impl Partition {
    /// Opens or creates the partition in `<data-dir>/<topic>-<index>`,
    /// recovering its log and rebuilding producer state.
    pub async fn open(
        data_dir: &std::path::Path,
        topic: &str,
        index: i32,
        config: LogConfig,
        budget: Rc<CacheBudget>,
        space: Rc<SpaceGuard>,
        group_commit: bool,
    ) -> Result<Rc<Partition>, PartitionError> {
        let dir = data_dir.join(format!("{topic}-{index}"));
        let fresh = !dir.exists();
        let mut producers = ProducerStates::new(MAX_PRODUCERS);
        let batch_limits = BatchLimits {
            max_batch_bytes: config.max_batch_bytes,
            max_decompressed_bytes: config.max_decompressed_batch_bytes,
        };
        let log = Log::open(dir.clone(), config, |h| producers.record(h)).await?;
        if fresh {
            write_leader_epoch_checkpoint(&dir).map_err(|e| LogError::io("write", &dir, e))?;
        }
        let leo = log.log_end_offset();
        Ok(Rc::new(Partition {
            topic: topic.to_string(),
            index,
            leader_epoch: 0,
            dir,
            log: RefCell::new(log),
            append_lock: Semaphore::new(1),
            io_lock: Semaphore::new(1),
            high_watermark: Cell::new(leo),
            synced: Cell::new(true),
            producers: RefCell::new(producers),
            durable_waiters: RefCell::new(VecDeque::new()),
            data_waiters: RefCell::new(Vec::new()),
            poisoned: Cell::new(false),
            stalled: RefCell::new(None),
            deleted: Cell::new(false),
            cache: Rc::new(RefCell::new(BatchCache::default())),
            budget,
            space,
            dirty: Cell::new(false),
            batch_limits,
            group_commit,
        }))
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.get()
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
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.get()
    }
    /// A write is waiting for the file system to have room again.
    pub fn is_stalled(&self) -> bool {
        self.stalled.borrow().is_some()
    }

    /// Validates, de-duplicates and appends the batch of one produce, then
    /// (unless `acks == 0`) waits until the flusher made them durable.
    /// `mark_dirty` tells the shard's flusher this partition has new data.
    /// Refused (NoSpace) while the file system is below its free-space
    /// threshold or a write of this partition waits for room.
    pub async fn produce(
        self: &Rc<Self>,
        records: Bytes,
        wait: bool,
        mark_dirty: impl FnOnce(Rc<Partition>),
    ) -> Result<Appended, PartitionError> {
        if self.poisoned.get() {
            return Err(PartitionError::Poisoned);
        }
        if self.space.is_full() || self.is_stalled() {
            return Err(PartitionError::NoSpace);
        }
        // Every record is checked before anything is appended: a refused
        // produce stores nothing.
        let produced = record::validate_produce(&records, &self.batch_limits)?;
        let _permit = self
            .append_lock
            .acquire_permit(1)
            .await
            .map_err(|_| PartitionError::Deleted)?;
        if self.deleted.get() {
            return Err(PartitionError::Deleted);
        }
        let mut batch = BytesMut::from(&records[..produced.size]);
        record::normalize_header(&mut batch, &produced);
        let header = BatchHeader::parse(&batch)?;
        let duplicate = if header.producer_id() >= 0 {
            match self.producers.borrow().check(&header) {
                SequenceCheck::Append => None,
                SequenceCheck::Duplicate { base_offset } => Some(base_offset),
                SequenceCheck::OutOfOrder => return Err(PartitionError::OutOfOrderSequence),
                SequenceCheck::InvalidEpoch => return Err(PartitionError::InvalidProducerEpoch),
            }
        } else {
            None
        };
        let (base_offset, last_offset) = match duplicate {
            Some(base_offset) => (base_offset, None),
            None => {
                let (base, last) = self.append_one(batch).await?;
                (base, Some(last))
            }
        };
        drop(_permit);
        if let Some(last) = last_offset {
            let waiter = wait.then(|| self.register_durable(last + 1));
            if !self.dirty.replace(true) {
                mark_dirty(self.clone());
            }
            if let Some(rx) = waiter {
                let ok = rx.await.unwrap_or(false);
                if !ok {
                    return Err(PartitionError::Poisoned);
                }
            }
        } else if wait {
            // A duplicate: answer once the original is durable.
            let hw_target = self.log_end_offset();
            if self.high_watermark.get() < hw_target {
                let rx = self.register_durable(hw_target);
                if !self.dirty.replace(true) {
                    mark_dirty(self.clone());
                }
                if !rx.await.unwrap_or(false) {
                    return Err(PartitionError::Poisoned);
                }
            }
        }
        Ok(Appended {
            base_offset,
            log_start_offset: self.log_start_offset(),
        })
    }

    fn register_durable(&self, end_offset: i64) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        if self.high_watermark.get() >= end_offset {
            let _ = tx.send(true);
        } else {
            self.durable_waiters
                .borrow_mut()
                .push_back((end_offset, tx));
        }
        rx
    }

    /// Assigns offsets to one batch and copies it into the log, making room
    /// first (slow cases: roll, full write buffer).
    async fn append_one(
        self: &Rc<Self>,
        mut batch: BytesMut,
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
        let base = log.log_end_offset();
        record::assign_offsets(&mut batch, base, self.leader_epoch);
        let header = BatchHeader::parse(&batch)?;
        let last = header.last_offset();
        self.producers.borrow_mut().record(&header);
        log.append(&batch);
        drop(log);
        let len = batch.len();
        self.cache
            .borrow_mut()
            .batches
            .push_back((base, last, batch.freeze()));
        self.budget.admit(&self.cache, base, len);
        Ok((base, last))
    }

    /// Reads batches from `offset` for a fetch, bounded by the high watermark;
    /// at least one batch, however large.
    pub async fn read(&self, offset: i64, max_bytes: usize) -> Result<FetchedData, PartitionError> {
        self.read_bounded(offset, max_bytes, usize::MAX).await
    }

    /// Reads whole batches from `offset` below the high watermark, at most
    /// `max_bytes`, except that the first batch is returned above that if it
    /// is at most `first_batch_max_bytes` (a fetch's memory grant): nothing
    /// larger than either is read into memory.
    pub async fn read_bounded(
        &self,
        offset: i64,
        max_bytes: usize,
        first_batch_max_bytes: usize,
    ) -> Result<FetchedData, PartitionError> {
        let hw = self.high_watermark.get();
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
        if offset >= hw || max_bytes.max(first_batch_max_bytes) == 0 {
            return Ok(data(RecordSet::default()));
        }
        let cached = self
            .cache
            .borrow()
            .read(offset, hw, max_bytes, first_batch_max_bytes);
        if let Some(b) = cached {
            return Ok(data(b));
        }
        let mut cursor = offset;
        loop {
            let Some(plan) = self.log.borrow().locate(cursor) else {
                return Ok(data(RecordSet::default()));
            };
            let (bytes, limited) =
                read_batches_bounded(&plan, cursor, hw, max_bytes, first_batch_max_bytes).await?;
            // Empty at a byte limit: the next batch is too large, not absent.
            match (bytes.is_empty() && !limited, plan.next_segment) {
                (true, Some(next)) if next < hw => cursor = next.max(cursor),
                _ => return Ok(data(bytes)),
            }
        }
    }

    /// Resolves when the high watermark passes `offset`, or after `timeout`.
    pub async fn wait_for_data(&self, offset: i64, timeout: Duration) {
        if self.high_watermark.get() > offset || self.deleted.get() {
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
        let hw = self.high_watermark.get();
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
        self.cache.borrow_mut().clear();
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty.get()
    }
}

/// Kafka's `leader-epoch-checkpoint`: version 0, one entry, epoch 0 from offset 0.
fn write_leader_epoch_checkpoint(dir: &std::path::Path) -> std::io::Result<()> {
    crate::cluster::write_atomically(&dir.join("leader-epoch-checkpoint"), b"0\n1\n0 0\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bases(c: &Rc<RefCell<BatchCache>>) -> Vec<i64> {
        c.borrow().batches.iter().map(|(b, _, _)| *b).collect()
    }

    #[test]
    fn cache_evicts_the_shards_oldest_batches_first() {
        let budget = CacheBudget::new(3 * (100 + CACHE_ENTRY_OVERHEAD_BYTES));
        let a = Rc::new(RefCell::new(BatchCache::default()));
        let b = Rc::new(RefCell::new(BatchCache::default()));
        let put = |c: &Rc<RefCell<BatchCache>>, base: i64| {
            c.borrow_mut()
                .batches
                .push_back((base, base, Bytes::from(vec![0u8; 100])));
            budget.admit(c, base, 100);
        };
        for base in 0..3 {
            put(&a, base);
        }
        put(&b, 0);
        assert_eq!((bases(&a), bases(&b)), (vec![1, 2], vec![0]));
        put(&b, 1);
        assert_eq!((bases(&a), bases(&b)), (vec![2], vec![0, 1]));
        a.borrow_mut().clear();
        put(&b, 2);
        assert_eq!(bases(&b), vec![0, 1, 2], "the cleared batch made the room");
        put(&b, 3);
        assert_eq!(bases(&b), vec![1, 2, 3], "b's oldest went first");
        assert_eq!(budget.used.get(), 3 * (100 + CACHE_ENTRY_OVERHEAD_BYTES));
        drop(b);
        put(&a, 10);
        put(&a, 11);
        assert_eq!(
            bases(&a),
            vec![10, 11],
            "a dropped cache's bytes count until evicted"
        );
        assert_eq!(budget.used.get(), 3 * (100 + CACHE_ENTRY_OVERHEAD_BYTES));
    }
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
        }
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
                let p = Partition::open(
                    dir.path(),
                    "t",
                    0,
                    config,
                    CacheBudget::new(cache_bytes),
                    Rc::new(SpaceGuard::unlimited()),
                    true,
                )
                .await
                .unwrap();
                let small = make_batch(3, Compression::None, 0).len();
                let big = make_batch(50, Compression::None, 0).len();
                for n in std::iter::repeat_n(3, 20)
                    .chain([50])
                    .chain(std::iter::repeat_n(3, 400))
                {
                    let batch = make_batch(n, Compression::None, 0).freeze();
                    p.produce(batch, false, |_| {}).await.unwrap();
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

    #[test]
    fn produce_then_read_from_disk_without_cache() {
        run(|| async {
            let dir = tempfile::tempdir().unwrap();
            crate::log::probe_device(dir.path()).await.unwrap();
            let space = Rc::new(SpaceGuard::unlimited());
            let p = Partition::open(
                dir.path(),
                "t",
                0,
                config(),
                CacheBudget::new(0),
                space,
                true,
            )
            .await
            .unwrap();
            let flushes = Rc::new(RefCell::new(Vec::new()));
            for i in 0..5 {
                let f = flushes.clone();
                let batch = make_batch(3, Compression::None, 0).freeze();
                let produce = p.produce(batch, true, move |p| f.borrow_mut().push(p));
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
