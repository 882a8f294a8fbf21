//! Retention of one partition (cleanup.policy=delete), the I/O shell around
//! the pure decisions of `log/retention.rs`: rolls an active segment older
//! than segment.ms, then takes the oldest sealed segments past
//! retention.ms or over retention.bytes out of the log one at a time,
//! moving the log start offset (reads below it answer OFFSET_OUT_OF_RANGE;
//! the log-start-offset checkpoint keeps it). Their files are renamed
//! `.deleted` and removed after file.delete.delay.ms, so a fetch already
//! reading one finishes.
//!
//! DeleteRecords moves the log start the same way, on the leader by request
//! and on followers as the leader's log start reaches them in fetches.
//!
//! Runs on the partition's shard from the shard's retention task (or the
//! request), one segment per step with a yield between, never holding the
//! append lock except to roll.

use std::rc::Rc;
use std::time::Duration;

use super::{Partition, PartitionError};
use crate::log::retention::{self, Limits};

impl Partition {
    /// One retention pass at `now_ms` (the wall clock); returns the
    /// segments taken out.
    pub async fn enforce_retention(self: &Rc<Self>, now_ms: i64) -> Result<usize, PartitionError> {
        let config = self.topic_config();
        if !config.cleanup_delete || self.is_poisoned() || self.deleted.get() {
            return Ok(0);
        }
        if self.active_too_old(config.segment_ms, now_ms) {
            let _append = self
                .append_lock
                .acquire_permit(1)
                .await
                .map_err(|_| PartitionError::Deleted)?;
            if self.active_too_old(config.segment_ms, now_ms) {
                self.roll().await?;
            }
        }
        let mut removed = 0;
        loop {
            let limits = Limits {
                retention_ms: config.retention_ms,
                retention_bytes: config.retention_bytes,
                high_watermark: self.high_watermark(),
                now_ms,
            };
            if retention::deletable(&self.log.borrow().retention_view(), limits) == 0 {
                break;
            }
            self.remove_oldest_segment(config.file_delete_delay_ms)
                .await?;
            removed += 1;
            glommio::yield_if_needed().await;
        }
        Ok(removed)
    }

    /// DeleteRecords as leader: the log start moves to `offset` (-1: the
    /// high watermark), which may not pass the high watermark, and the
    /// segments wholly below it go. Returns the new log start (the low
    /// watermark).
    pub async fn delete_records(self: &Rc<Self>, offset: i64) -> Result<i64, PartitionError> {
        if !self.is_leader() {
            return Err(PartitionError::NotLeaderOrFollower);
        }
        let hw = self.high_watermark();
        let offset = if offset == -1 { hw } else { offset };
        if offset < 0 || offset > hw {
            return Err(PartitionError::OffsetOutOfRange(offset));
        }
        self.advance_log_start(offset).await?;
        Ok(self.log_start_offset())
    }

    /// DeleteRecords' wait (Kafka's DelayedDeleteRecords): resolves with
    /// the low watermark once every serving replica's log start reached
    /// `offset`, or fails with a timeout after `timeout`.
    pub async fn wait_low_watermark(
        &self,
        offset: i64,
        timeout: std::time::Duration,
    ) -> Result<i64, PartitionError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if !self.is_leader() {
                return Err(PartitionError::NotLeaderOrFollower);
            }
            let low = self.replica.borrow().low_watermark(self.log_start_offset());
            if low >= offset {
                return Ok(low);
            }
            if std::time::Instant::now() >= deadline {
                return Err(PartitionError::Timeout);
            }
            glommio::timer::sleep(std::time::Duration::from_millis(
                crate::config::DELETE_RECORDS_POLL_MS,
            ))
            .await;
        }
    }

    /// Moves the log start to `offset` (never back, never past the log
    /// end) and removes the segments wholly below it: DeleteRecords on the
    /// leader, the leader's log start on a follower.
    pub async fn advance_log_start(self: &Rc<Self>, offset: i64) -> Result<(), PartitionError> {
        let offset = offset.min(self.log_end_offset());
        if offset <= self.log_start_offset() {
            return Ok(());
        }
        self.log.borrow_mut().log_start_offset = offset;
        self.epochs.borrow_mut().truncate_from_start(offset);
        self.save_epochs();
        self.replica.borrow_mut().on_log_start(offset);
        let delay = self.topic_config().file_delete_delay_ms;
        loop {
            let below = {
                let log = self.log.borrow();
                log.segments.len() > 1 && log.segments[1].base_offset <= offset
            };
            if !below {
                return Ok(());
            }
            self.remove_oldest_segment(delay).await?;
        }
    }

    /// Takes the oldest segment out of the log (moving the log start to the
    /// next one's base) and removes its files after `delay_ms`.
    async fn remove_oldest_segment(&self, delay_ms: u64) -> Result<(), PartitionError> {
        let _io = self
            .io_lock
            .acquire_permit(1)
            .await
            .map_err(|_| PartitionError::Deleted)?;
        let renamed = self.log.borrow_mut().remove_oldest()?;
        let start = self.log_start_offset();
        self.epochs.borrow_mut().truncate_from_start(start);
        self.save_epochs();
        self.replica.borrow_mut().on_log_start(start);
        tracing::info!(topic = %self.topic, partition = self.index, log_start_offset = start, "deleted the oldest segment");
        glommio::spawn_local(async move {
            glommio::timer::sleep(Duration::from_millis(delay_ms)).await;
            for path in renamed {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "removing a deleted segment file");
                }
            }
        })
        .detach();
        Ok(())
    }

    fn active_too_old(&self, segment_ms: i64, now_ms: i64) -> bool {
        let log = self.log.borrow();
        let a = log.active();
        retention::should_roll(a.size, a.created_ms, segment_ms, now_ms)
    }
}
