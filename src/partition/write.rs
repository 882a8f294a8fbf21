//! A partition's write path: buffered pages to the device, fdatasync, rolls,
//! the high watermark, and what a full or failing device does to the
//! partition.
//!
//! Runs on the partition's shard, under the partition's io lock (one write
//! or sync in flight per partition).
//!
//! - A full file system (ENOSPC/EDQUOT, or a short write) is not a failure of
//!   the data: the pages stay in `stalled` (the buffer is shared with the
//!   write, so nothing is copied), the shard's space guard is marked full,
//!   new produce is refused with a retriable error, and the shard's disk
//!   watcher retries the same write at the same position, before any later
//!   pages, until it succeeds. Nothing acknowledged or queued is lost or
//!   reordered; waiting acks are answered once the pages are written and
//!   synced.
//! - Any other write error, and every fdatasync error, poisons the
//!   partition: acks stop and nothing is retried (after a failed fsync the
//!   state of the written pages is unknown).
//! - Preallocation asks the space guard for its step, so it never takes the
//!   free-space headroom, and a failed fallocate gives back what it took.

use std::rc::Rc;

use super::replica::AckState;
use super::{Partition, PartitionError};
use crate::log::segment::{align_up, write_file_atomic, PendingWrite, Segment};
use crate::log::space::is_no_space;
use crate::log::LogError;

impl Partition {
    /// Writes buffered pages to the device and, with `sync`, fdatasyncs; then
    /// advances the high watermark over what is now durable and wakes waiters.
    pub async fn write_out(self: &Rc<Self>, sync: bool) -> Result<(), PartitionError> {
        let _io = self
            .io_lock
            .acquire_permit(1)
            .await
            .map_err(|_| PartitionError::Deleted)?;
        self.dirty.set(false);
        if self.poisoned.get() {
            return Err(PartitionError::Poisoned);
        }
        let end_offset = self.log.borrow().log_end_offset();
        match self.write_and_sync(sync).await {
            Ok(()) => {
                if sync {
                    self.synced_end.set(end_offset);
                }
                if sync || !self.group_commit {
                    self.on_durable(end_offset);
                }
                Ok(())
            }
            Err(PartitionError::NoSpace) => Err(PartitionError::NoSpace),
            Err(e) => {
                tracing::error!(topic = %self.topic, partition = self.index, error = %e, "storage error; partition poisoned");
                self.poison();
                Err(e)
            }
        }
    }

    async fn write_and_sync(&self, sync: bool) -> Result<(), PartitionError> {
        let stalled = self.stalled.borrow_mut().take();
        if let Some(w) = stalled {
            self.write_pages(w, true).await?;
            tracing::info!(topic = %self.topic, partition = self.index, "write retried after the file system had room again");
        }
        let pending = self.log.borrow_mut().active_mut().take_write();
        if let Some(p) = pending {
            if self.log.borrow().config.preallocate {
                self.preallocate(&p).await;
            }
            self.write_pages(p, false).await?;
        }
        if sync && !self.synced.get() {
            let (file, path) = {
                let log = self.log.borrow();
                (log.active().file.clone(), log.active().path.clone())
            };
            let timer = crate::metrics::io_begin(crate::metrics::IoOp::Fsync, 0);
            let synced = file.fdatasync().await;
            drop(timer);
            synced.map_err(|e| LogError::io("fdatasync", &path, e))?;
            self.synced.set(true);
        }
        Ok(())
    }

    /// Writes one run of pages (`retry`: again, after it met a full file
    /// system). Without room, keeps them in `stalled` for the next retry and
    /// answers NoSpace.
    async fn write_pages(&self, w: PendingWrite, retry: bool) -> Result<(), PartitionError> {
        let len = w.buffer.len();
        let timer = crate::metrics::io_begin(crate::metrics::IoOp::DirectWrite, len);
        let result = w.file.write_rc_at(w.buffer.clone(), w.position).await;
        drop(timer);
        self.synced.set(false);
        let failure = match result {
            Ok(n) if n == len => {
                let grown = self.with_segment(w.base_offset, |s| s.written_to(w.end));
                self.space.took(grown.unwrap_or(0));
                return Ok(());
            }
            Ok(n) => format!("short write: {n} of {len} bytes"),
            Err(e) => {
                let e: std::io::Error = e.into();
                if !is_no_space(&e) {
                    let path = self.segment_path(w.base_offset);
                    return Err(LogError::io("write", &path, e).into());
                }
                e.to_string()
            }
        };
        if !retry {
            tracing::warn!(topic = %self.topic, partition = self.index, error = %failure, "file system full; write kept for a retry, produce refused until space returns");
        }
        self.space.ran_out();
        *self.stalled.borrow_mut() = Some(w);
        Err(PartitionError::NoSpace)
    }

    /// Reserves blocks past the write with fallocate, as far as the space
    /// guard allows. Failure only costs the reservation: whatever a failed
    /// fallocate allocated past the old end is punched out again.
    async fn preallocate(&self, p: &PendingWrite) {
        let end = p.position + p.buffer.len() as u64;
        let plan = self.with_segment(p.base_offset, |seg| {
            let need = align_up(end).saturating_sub(seg.allocated());
            let step = self.space.preallocation_step(need);
            seg.preallocation_needed(end, step)
                .map(|target| (seg.allocated(), target))
        });
        let Some((allocated, target)) = plan.flatten() else {
            return;
        };
        match p.file.pre_allocate(target, true).await {
            Ok(()) => {
                self.with_segment(p.base_offset, |s| s.allocated_to(target));
                self.space.took(target - allocated);
            }
            Err(e) => {
                let e: std::io::Error = e.into();
                if is_no_space(&e) {
                    self.space.ran_out();
                }
                tracing::warn!(topic = %self.topic, partition = self.index, target, error = %e, "preallocation failed; giving back what it took");
                if let Err(e) = p.file.deallocate(allocated, target - allocated).await {
                    tracing::warn!(topic = %self.topic, partition = self.index, error = %e, "releasing a failed preallocation");
                }
            }
        }
    }

    fn with_segment<R>(&self, base: i64, f: impl FnOnce(&mut Segment) -> R) -> Option<R> {
        self.log.borrow_mut().segment_mut(base).map(f)
    }

    fn segment_path(&self, base: i64) -> std::path::PathBuf {
        self.with_segment(base, |s| s.path.clone())
            .unwrap_or_else(|| self.dir.clone())
    }

    /// The log is durable up to `end_offset`: local waiters (acks=1, a
    /// follower's next fetch) are answered, and as leader the high
    /// watermark may move.
    pub(super) fn on_durable(&self, end_offset: i64) {
        let effects = self
            .replica
            .borrow_mut()
            .on_durable(end_offset, crate::shard::now_ms());
        let mut waiters = self.local_waiters.borrow_mut();
        while waiters.front().is_some_and(|(o, _)| *o <= end_offset) {
            let (_, tx) = waiters.pop_front().expect("checked");
            let _ = tx.send(true);
        }
        drop(waiters);
        if let Some(hw) = effects.high_watermark {
            self.high_watermark_moved(hw);
        }
    }

    /// Answers the acks=all produces the high watermark now covers and wakes
    /// consumers' long polls.
    pub(super) fn high_watermark_moved(&self, hw: i64) {
        let min_isr = self.min_insync_replicas.get();
        let mut waiters = self.hw_waiters.borrow_mut();
        while waiters.front().is_some_and(|(o, _)| *o <= hw) {
            let (end, tx) = waiters.pop_front().expect("checked");
            let outcome = match self.replica.borrow().ack_state(end, min_isr) {
                AckState::NotEnoughReplicasAfterAppend => {
                    Err(PartitionError::NotEnoughReplicasAfterAppend)
                }
                _ => Ok(()),
            };
            let _ = tx.send(outcome);
        }
        drop(waiters);
        for tx in self.data_waiters.borrow_mut().drain(..) {
            let _ = tx.send(());
        }
    }

    pub(super) fn poison(&self) {
        self.poisoned.set(true);
        for (_, tx) in self.local_waiters.borrow_mut().drain(..) {
            let _ = tx.send(false);
        }
        for (_, tx) in self.hw_waiters.borrow_mut().drain(..) {
            let _ = tx.send(Err(PartitionError::Poisoned));
        }
    }

    /// Seals the active segment (written, synced, trimmed, indexes on disk)
    /// and starts a new one at the log end offset. Without room it changes
    /// nothing that a later roll would not redo, so it answers NoSpace
    /// rather than poisoning.
    pub(super) async fn roll(self: &Rc<Self>) -> Result<(), PartitionError> {
        self.write_out(true).await?;
        let _io = self
            .io_lock
            .acquire_permit(1)
            .await
            .map_err(|_| PartitionError::Deleted)?;
        let result = async {
            let (dir, next, sealed_base, seal) = {
                let log = self.log.borrow();
                let active = log.active();
                (
                    log.dir.clone(),
                    log.log_end_offset(),
                    active.base_offset,
                    active.seal_job(),
                )
            };
            seal.run().await?;
            // What recovery needs to start at the new segment, synced before
            // the segment exists: the producer state here and the epochs.
            let (snapshot, epochs) = (
                self.producers.borrow().encode_snapshot(),
                self.epochs.borrow().encode(),
            );
            let snapshot_path = dir.join(crate::producer_state::snapshot_file_name(next));
            write_file_atomic(&snapshot_path, &snapshot).await?;
            write_file_atomic(&dir.join(super::replicated::EPOCH_CHECKPOINT), epochs.as_bytes())
                .await?;
            let seg = Segment::create(&dir, next).await?;
            tracing::debug!(topic = %self.topic, partition = self.index, sealed_base, next, "rolled segment");
            self.log.borrow_mut().segments.push(seg);
            Ok::<(), LogError>(())
        }
        .await;
        result.map_err(|e| {
            if e.is_no_space() {
                tracing::warn!(topic = %self.topic, partition = self.index, error = %e, "rolling the segment needs room; produce refused until space returns");
                self.space.ran_out();
                PartitionError::NoSpace
            } else {
                self.poison();
                PartitionError::Log(e)
            }
        })
    }
}
