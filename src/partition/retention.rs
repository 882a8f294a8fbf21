//! Retention of one partition (cleanup.policy=delete), the I/O shell around
//! the pure decisions of `log/retention.rs`: rolls an active segment older
//! than segment.ms, then takes the oldest sealed segments past
//! retention.ms or over retention.bytes out of the log one at a time,
//! moving the log start offset (reads below it answer OFFSET_OUT_OF_RANGE;
//! the log-start-offset checkpoint keeps it). Their files are renamed
//! `.deleted` and removed after file.delete.delay.ms, so a fetch already
//! reading one finishes.
//!
//! Runs on the partition's shard from the shard's retention task, one
//! segment per step with a yield between, never holding the append lock
//! except to roll.

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
            tracing::info!(topic = %self.topic, partition = self.index, log_start_offset = start, "retention deleted a segment");
            let delay = Duration::from_millis(config.file_delete_delay_ms);
            glommio::spawn_local(async move {
                glommio::timer::sleep(delay).await;
                for path in renamed {
                    if let Err(e) = std::fs::remove_file(&path) {
                        tracing::warn!(path = %path.display(), error = %e, "removing a deleted segment file");
                    }
                }
            })
            .detach();
            removed += 1;
            drop(_io);
            glommio::yield_if_needed().await;
        }
        Ok(removed)
    }

    fn active_too_old(&self, segment_ms: i64, now_ms: i64) -> bool {
        let log = self.log.borrow();
        let a = log.active();
        retention::should_roll(a.size, a.created_ms, segment_ms, now_ms)
    }
}
