//! Group APIs: FindCoordinator (10) v0-4, JoinGroup (11) v0-9, SyncGroup
//! (14) v0-5, Heartbeat (12) v0-4, LeaveGroup (13) v0-5, OffsetCommit (8)
//! v2-8, OffsetFetch (9) v1-8, ListGroups (16) v0-4, DescribeGroups (15)
//! v0-5, DeleteGroups (42) v0-2, OffsetDelete (47) v0.
//!
//! The coordinator of a group is the leader of the group's
//! `__consumer_offsets` partition; each group request runs on the shard
//! owning that partition on this broker, which answers NOT_COORDINATOR when
//! it does not lead it and COORDINATOR_LOAD_IN_PROGRESS while it loads its
//! groups. Requests naming several groups are split per group and their
//! answers merged here.

//!
//! This file holds what they share: routing to the coordinator shard,
//! storing records in `__consumer_offsets`, loading them back, and the
//! group timer. Handlers: `find_coordinator`, `membership` (JoinGroup,
//! SyncGroup, Heartbeat, LeaveGroup), `offsets` (OffsetCommit, OffsetFetch,
//! OffsetDelete), `admin` (ListGroups, DescribeGroups, DeleteGroups).

mod admin;
mod find_coordinator;
mod membership;
mod offsets;

pub use admin::{delete_groups, describe_groups, list_groups};
pub use find_coordinator::{find_coordinator, NO_TRANSACTIONS};
pub use membership::{heartbeat, join_group, leave_group, sync_group};
pub use offsets::{offset_commit, offset_delete, offset_fetch};

use std::rc::Rc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use kafka_protocol::ResponseError;

use crate::cluster::CONSUMER_OFFSETS_TOPIC;
use crate::group::coordinator::now_ms;
use crate::group::offsets_partition_for;
use crate::group::records::{GroupValue, Key, OffsetValue};
use crate::record::{readable_records, BatchHeader, BATCH_HEADER_BYTES};
use crate::shard::Shard;

/// Who sent a request: JoinGroup records it per member.
#[derive(Clone)]
pub struct Client {
    pub client_id: String,
    pub host: String,
}

fn partition_of(shard: &Shard, group: &str) -> i32 {
    offsets_partition_for(group, shard.config.offsets_topic_partitions)
}

/// Longest a group change waits for its records to reach the ISR of the
/// group's `__consumer_offsets` partition (Kafka's `offsets.commit.timeout.ms`).
pub const OFFSETS_COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(5_000);

/// Whether this shard coordinates the groups of `__consumer_offsets`
/// partition `index`: it leads it and has loaded its groups.
fn coordinates(shard: &Shard, index: i32) -> Result<(), ResponseError> {
    match shard.partition(CONSUMER_OFFSETS_TOPIC, index) {
        Some(p) if p.is_leader() => {
            if shard.groups.loaded.borrow().contains(&index) {
                Ok(())
            } else {
                Err(ResponseError::CoordinatorLoadInProgress)
            }
        }
        _ => Err(ResponseError::NotCoordinator),
    }
}

/// Runs `f` on the coordinator shard of `group`.
async fn on_coordinator<T, F, Fut>(shard: &Rc<Shard>, group: &str, f: F) -> Result<T, ResponseError>
where
    T: Send + 'static,
    F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    let index = partition_of(shard, group);
    let owner = shard.owner(CONSUMER_OFFSETS_TOPIC, index);
    shard
        .invoke_on(owner, move |s: Rc<Shard>| async move {
            coordinates(&s, index)?;
            Ok(f(s).await)
        })
        .await
        .map_err(|_| ResponseError::CoordinatorNotAvailable)?
}

/// Appends records to the group's `__consumer_offsets` partition and waits
/// until they are durable. Runs on the coordinator shard.
async fn persist(
    shard: &Rc<Shard>,
    group: &str,
    records: Vec<(Bytes, Option<Bytes>)>,
) -> Result<(), ResponseError> {
    let index = partition_of(shard, group);
    let partition = shard
        .partition(CONSUMER_OFFSETS_TOPIC, index)
        .ok_or(ResponseError::CoordinatorNotAvailable)?;
    let ts = now_ms();
    let records: Vec<Record> = records
        .into_iter()
        .enumerate()
        .map(|(i, (key, value))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32,
            timestamp: ts,
            key: Some(key),
            value,
            headers: Default::default(),
        })
        .collect();
    let mut batch = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut batch,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(|_| ResponseError::UnknownServerError)?;
    let s = shard.clone();
    partition
        .produce(
            batch.freeze(),
            crate::partition::Acks::All,
            OFFSETS_COMMIT_TIMEOUT,
            move |p| s.mark_dirty(p),
        )
        .await
        .map(|_| ())
        .map_err(|e| {
            tracing::warn!(group, error = %e, "persisting group records");
            // Kafka's mapping for the group coordinator's appends.
            match e {
                crate::partition::PartitionError::NotLeaderOrFollower
                | crate::partition::PartitionError::Poisoned
                | crate::partition::PartitionError::Log(_) => ResponseError::NotCoordinator,
                _ => ResponseError::CoordinatorNotAvailable,
            }
        })
}

/// Rebuilds the groups stored in one `__consumer_offsets` partition this
/// shard now leads, reading its whole log. Records are read with the
/// bounded iteration of `record`; a batch that cannot be read (stored by an
/// older version) is skipped with a warning.
pub async fn load_partition_groups(
    shard: &Rc<Shard>,
    p: &Rc<crate::partition::Partition>,
) -> Result<(), String> {
    let now = Instant::now();
    let limit = shard.config.max_decompressed_batch_bytes;
    let mut offset = p.log_start_offset();
    let end = p.log_end_offset();
    while offset < end {
        let data = p
            .read_below(offset, 1 << 20, usize::MAX, end)
            .await
            .map_err(|e| e.to_string())?;
        let bytes = data.records.to_bytes();
        let mut rest = &bytes[..];
        let before = offset;
        while let Ok(h) = BatchHeader::parse(rest) {
            let size = h.total_size().clamp(BATCH_HEADER_BYTES, rest.len());
            offset = offset.max(h.last_offset() + 1);
            for r in readable_records(&rest[..size], limit, true) {
                apply_record(shard, r, now);
            }
            rest = &rest[size..];
        }
        if offset <= before {
            break;
        }
    }
    shard.groups.loaded.borrow_mut().insert(p.index);
    tracing::debug!(partition = p.index, "consumer groups loaded");
    Ok(())
}

/// Applies one `__consumer_offsets` record to the shard's groups.
fn apply_record(shard: &Shard, r: crate::record::Record, now: Instant) {
    let Some(key) = r.key.as_deref().and_then(Key::decode) else {
        return;
    };
    match key {
        Key::Offset {
            group,
            topic,
            partition,
        } => {
            let v = r.value.as_deref().and_then(OffsetValue::decode);
            shard.groups.apply_offset(&group, &topic, partition, v);
        }
        Key::Group { group } => {
            let v = r.value.as_deref().and_then(GroupValue::decode);
            shard.groups.apply_group(&group, v, now);
        }
    }
}

/// Stores a group's metadata record (a completed generation, or the group
/// left Empty) in its `__consumer_offsets` partition. Runs on the
/// coordinator shard.
async fn store_group(
    shard: &Rc<Shard>,
    group: &str,
    value: GroupValue,
) -> Result<(), ResponseError> {
    let record = (
        Key::Group {
            group: group.to_string(),
        }
        .encode(),
        Some(value.encode()),
    );
    persist(shard, group, vec![record]).await
}

/// Expires members and completes rebalances on this shard, forever; stores
/// the groups that became Empty (each in its own task, so a slow append
/// never holds back the next tick; appends keep their order).
pub fn start_group_timer(shard: &Rc<Shard>) {
    let shard = shard.clone();
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
            for (group, value) in shard.groups.tick(Instant::now()) {
                let s = shard.clone();
                glommio::spawn_local(async move {
                    let _ = store_group(&s, &group, value).await;
                })
                .detach();
            }
        }
    })
    .detach();
}

/// The broker leading the group's `__consumer_offsets` partition.
fn coordinator_of(shard: &Shard, group: &str) -> Result<(i32, String, i32), ResponseError> {
    let image = shard.image();
    let index = partition_of(shard, group);
    let p = image
        .partition(CONSUMER_OFFSETS_TOPIC, index)
        .ok_or(ResponseError::CoordinatorNotAvailable)?;
    let b = image
        .broker(p.leader)
        .filter(|b| !b.fenced)
        .ok_or(ResponseError::CoordinatorNotAvailable)?;
    Ok((p.leader, b.registration.host.clone(), b.registration.port))
}
