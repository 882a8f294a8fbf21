//! The replication side of a partition, the I/O shell around `replica.rs`
//! and `epochs.rs`: taking the role the controller gave, serving follower
//! fetches as leader (divergence, follower progress), appending a leader's
//! batches byte for byte as follower, cutting a divergent tail, and keeping
//! `leader-epoch-checkpoint` on disk in Kafka's format.
//!
//! Runs on the partition's shard.

use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::channel::oneshot;

use super::epochs::{EpochEnd, LeaderEpochCache};
use super::replica::{Effects, Role};
use super::{FetchedData, Partition, PartitionError};
use crate::cluster::records::NodeId;
use crate::cluster::topic_config::TopicConfig;
use crate::log::LogError;
use crate::record::{self, BatchHeader};

/// A partition's part as the metadata image gives it.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub role: Role,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub replicas: Vec<NodeId>,
    pub isr: Vec<NodeId>,
    /// Brokers the controller would refuse in the ISR.
    pub ineligible: BTreeSet<NodeId>,
    /// The topic's configs as they are now (applied live).
    pub config: TopicConfig,
}

/// One partition of a follower's fetch, as the leader receives it.
#[derive(Debug, Clone, Copy)]
pub struct FollowerFetch {
    pub replica: NodeId,
    pub offset: i64,
    /// The epoch of the follower's last batch (v12+), or -1.
    pub last_fetched_epoch: i32,
    /// The follower's log start (v5+), or -1: DeleteRecords' low watermark.
    pub log_start_offset: i64,
}

/// A follower fetch as the leader answers it.
pub struct FollowerRead {
    pub data: FetchedData,
    pub diverging: Option<EpochEnd>,
    pub effects: Effects,
}

pub(super) const EPOCH_CHECKPOINT: &str = "leader-epoch-checkpoint";

/// Writes Kafka's `leader-epoch-checkpoint` by rename, unsynced. A crash may
/// leave the old content: recovery trusts the file only for epochs that
/// start before the segment it scans from, and the roll that sealed those
/// segments wrote it synced (`write.rs`); later epochs come back from the
/// scanned batches.
pub fn write_epoch_checkpoint(
    dir: &std::path::Path,
    epochs: &LeaderEpochCache,
) -> std::io::Result<()> {
    crate::cluster::write_replaced(&dir.join(EPOCH_CHECKPOINT), epochs.encode().as_bytes())
}

/// Reads `leader-epoch-checkpoint`.
pub fn read_epoch_checkpoint(dir: &std::path::Path) -> Result<LeaderEpochCache, String> {
    let path = dir.join(EPOCH_CHECKPOINT);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    LeaderEpochCache::decode(&text).map_err(|e| e.to_string())
}

impl Partition {
    pub(super) fn save_epochs(&self) {
        let epochs = self.epochs.borrow().clone();
        if let Err(e) = write_epoch_checkpoint(&self.dir, &epochs) {
            tracing::error!(topic = %self.topic, partition = self.index, error = %e, "writing leader-epoch-checkpoint; partition poisoned");
            self.poison();
        }
    }

    /// Takes the role the controller gave. A new leader epoch starts at the
    /// log end; produces waiting on a former leadership are refused.
    pub fn assign(&self, a: &Assignment, now_ms: u64) -> Effects {
        let was_leader = self.is_leader();
        let new_leader_epoch = a.role == Role::Leader && a.leader_epoch != self.leader_epoch();
        if new_leader_epoch {
            let end = self.log_end_offset();
            if self.epochs.borrow_mut().assign(a.leader_epoch, end) {
                self.save_epochs();
            }
        }
        self.min_insync_replicas
            .set(a.config.min_insync_replicas.max(1));
        self.set_config(&a.config);
        let effects = self.replica.borrow_mut().assign(
            a.role,
            a.leader_epoch,
            a.partition_epoch,
            &a.replicas,
            &a.isr,
            a.ineligible.clone(),
            now_ms,
        );
        if was_leader && !self.is_leader() {
            for (_, tx) in self.hw_waiters.borrow_mut().drain(..) {
                let _ = tx.send(Err(PartitionError::NotLeaderOrFollower));
            }
        }
        if let Some(hw) = effects.high_watermark {
            self.high_watermark_moved(hw);
        }
        effects
    }

    /// Periodic lag check as leader.
    pub fn tick(&self, now_ms: u64) -> Effects {
        self.replica.borrow_mut().tick(now_ms)
    }

    pub fn alter_failed(&self) {
        self.replica.borrow_mut().alter_failed();
    }

    /// As leader, a follower's fetch from `offset`, whose last batch has
    /// `last_fetched_epoch`: where it diverges, or the batches from `offset`
    /// up to the log end, its progress recorded.
    pub async fn serve_follower(
        &self,
        fetch: FollowerFetch,
        max_bytes: usize,
        first_batch_max_bytes: usize,
        now_ms: u64,
    ) -> Result<FollowerRead, PartitionError> {
        let FollowerFetch {
            replica,
            offset,
            last_fetched_epoch,
            log_start_offset,
        } = fetch;
        if !self.is_leader() {
            return Err(PartitionError::NotLeaderOrFollower);
        }
        let leo = self.log_end_offset();
        let diverging = self
            .epochs
            .borrow()
            .diverging(offset, last_fetched_epoch, leo);
        if diverging.is_some() {
            let data = FetchedData {
                records: Default::default(),
                high_watermark: self.high_watermark(),
                log_start_offset: self.log_start_offset(),
            };
            return Ok(FollowerRead {
                data,
                diverging,
                effects: Effects::default(),
            });
        }
        if offset > leo || offset < self.log_start_offset() {
            return Err(PartitionError::OffsetOutOfRange(offset));
        }
        let effects =
            self.replica
                .borrow_mut()
                .on_follower_fetch(replica, offset, log_start_offset, now_ms);
        if let Some(hw) = effects.high_watermark {
            self.high_watermark_moved(hw);
        }
        let data = self
            .read_below(offset, max_bytes, first_batch_max_bytes, leo)
            .await?;
        Ok(FollowerRead {
            data,
            diverging: None,
            effects,
        })
    }

    /// Resolves when the log end passes `offset` (a follower's long poll),
    /// or after `timeout`.
    pub async fn wait_for_append(&self, offset: i64, timeout: Duration) {
        if self.log_end_offset() > offset || self.deleted.get() {
            return;
        }
        let (tx, rx) = oneshot::channel();
        self.append_waiters.borrow_mut().push(tx);
        let timer = glommio::timer::sleep(timeout);
        futures::pin_mut!(timer);
        let _ = futures::future::select(rx, timer).await;
    }

    /// As follower: appends the leader's batches unchanged (offsets, epochs,
    /// CRCs). They must start at our log end. Returns the new log end.
    pub async fn append_replicated(
        self: &Rc<Self>,
        records: Bytes,
        mark_dirty: impl FnOnce(Rc<Partition>),
    ) -> Result<i64, PartitionError> {
        if self.poisoned.get() {
            return Err(PartitionError::Poisoned);
        }
        if self.space.is_full() || self.is_stalled() {
            return Err(PartitionError::NoSpace);
        }
        // What the leader accepted under the topic's max.message.bytes, even
        // above the broker's own limit.
        let max_batch =
            (self.batch_limits.max_batch_bytes).max(self.config.borrow().max_message_bytes);
        let sizes = record::split_replicated(&records, max_batch)?;
        let _permit = self
            .append_lock
            .acquire_permit(1)
            .await
            .map_err(|_| PartitionError::Deleted)?;
        if self.is_leader() {
            return Err(PartitionError::NotLeaderOrFollower);
        }
        let want = self.log_end_offset();
        let got = BatchHeader::parse(&records)?.base_offset();
        // Past the log end is a gap the leader's cleaner left (Kafka
        // accepts it too); before it would overwrite what is here.
        if got < want {
            return Err(PartitionError::OffsetMismatch { got, want });
        }
        let mut rest = BytesMut::from(&records[..]);
        for size in sizes {
            self.append_batch(rest.split_to(size), None).await?;
        }
        drop(_permit);
        if !self.dirty.replace(true) {
            mark_dirty(self.clone());
        }
        Ok(self.log_end_offset())
    }

    /// Waits until the local log is durable up to `end` (a follower fetches
    /// further only then, so its fetch offset tells the leader what it holds
    /// durably). `false`: the partition failed.
    pub async fn wait_durable(&self, end: i64) -> bool {
        match self.wait_local(end) {
            None => true,
            Some(rx) => rx.await.unwrap_or(false),
        }
    }

    /// As follower: the leader's high watermark, capped by our durable log.
    pub fn leader_high_watermark(&self, hw: i64) {
        let effects = self.replica.borrow_mut().on_leader_high_watermark(hw);
        if let Some(hw) = effects.high_watermark {
            self.high_watermark_moved(hw);
        }
    }

    /// Where this follower's log diverging from the leader's (`leader`)
    /// must be cut, and whether that settles it.
    pub fn truncation_for(&self, leader: EpochEnd) -> (i64, bool) {
        self.epochs
            .borrow()
            .truncation_for(leader, self.log_end_offset())
    }

    /// The epoch of our last batch, for the next fetch's divergence check.
    pub fn last_fetched_epoch(&self) -> i32 {
        self.epochs.borrow().latest_epoch().unwrap_or(-1)
    }

    /// OffsetForLeaderEpoch: the largest epoch <= `epoch` and where it ends.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> EpochEnd {
        self.epochs
            .borrow()
            .end_offset_for(epoch, self.log_end_offset())
    }

    /// Cuts the log at `offset` (a follower's divergent tail): everything is
    /// written out first, then the segments, cache, epochs and producer
    /// state forget what lay past it.
    pub async fn truncate_to(self: &Rc<Self>, offset: i64) -> Result<(), PartitionError> {
        let _append = self
            .append_lock
            .acquire_permit(1)
            .await
            .map_err(|_| PartitionError::Deleted)?;
        if offset >= self.log_end_offset() {
            return Ok(());
        }
        self.write_out(true).await?;
        let _io = self
            .io_lock
            .acquire_permit(1)
            .await
            .map_err(|_| PartitionError::Deleted)?;
        let before = self.log_end_offset();
        if let Err(e) = self.cut_log(offset).await {
            self.poison();
            return Err(PartitionError::Log(e));
        }
        self.cache.borrow_mut().truncate(offset);
        self.synced_end.set(self.synced_end.get().min(offset));
        self.epochs.borrow_mut().truncate_from_end(offset);
        self.save_epochs();
        self.producers.borrow_mut().truncate(offset);
        self.replica.borrow_mut().on_truncate(offset);
        tracing::info!(topic = %self.topic, partition = self.index, from = before, to = offset, "truncated a divergent tail");
        Ok(())
    }
}

impl Partition {
    /// The log's cut, its I/O done without a borrow of the log held.
    async fn cut_log(&self, offset: i64) -> Result<(), LogError> {
        let plan = self.log.borrow_mut().cut_from(offset)?;
        match plan {
            Some(plan) => {
                let cut = plan.run(offset).await?;
                self.log.borrow_mut().cut_done(offset, cut);
            }
            None => {
                let dir = self.log.borrow().dir.clone();
                let seg = crate::log::segment::Segment::create(&dir, offset).await?;
                self.log.borrow_mut().replace_all(seg)?;
            }
        }
        Ok(())
    }
}
