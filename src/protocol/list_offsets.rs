//! ListOffsets (key 2), v1-8: earliest (-2), latest (-1, the high
//! watermark), max timestamp (-3), earliest local (-4), or the first offset
//! whose record timestamp is at or after a given time.

use std::rc::Rc;

use kafka_protocol::messages::list_offsets_request::ListOffsetsRequest;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::ResponseError;

use super::partition_error_code;
use crate::shard::Shard;

pub const LATEST_TIMESTAMP: i64 = -1;
pub const EARLIEST_TIMESTAMP: i64 = -2;
pub const MAX_TIMESTAMP: i64 = -3;
pub const EARLIEST_LOCAL_TIMESTAMP: i64 = -4;

/// (offset, timestamp, leader epoch) on the owner shard, as leader;
/// offset and timestamp -1 when no record matches.
async fn lookup_on_owner(
    shard: Rc<Shard>,
    topic: String,
    index: i32,
    timestamp: i64,
    current_leader_epoch: i32,
) -> Result<(i64, i64, i32), ResponseError> {
    let p = shard.serving_partition(&topic, index)?;
    if !p.is_leader() {
        return Err(ResponseError::NotLeaderOrFollower);
    }
    p.check_leader_epoch(current_leader_epoch)
        .map_err(|e| partition_error_code(&e))?;
    let epoch = p.leader_epoch();
    let (offset, ts) = match timestamp {
        LATEST_TIMESTAMP => (p.high_watermark(), -1),
        EARLIEST_TIMESTAMP | EARLIEST_LOCAL_TIMESTAMP => (p.log_start_offset(), -1),
        MAX_TIMESTAMP => {
            let (ts, offset) = p.max_timestamp();
            (offset, ts)
        }
        t if t >= 0 => match p.offset_for_timestamp(t).await {
            Ok(Some((offset, ts))) => (offset, ts),
            Ok(None) => (-1, -1),
            Err(e) => return Err(partition_error_code(&e)),
        },
        _ => return Err(ResponseError::InvalidRequest),
    };
    Ok((offset, ts, epoch))
}

pub async fn handle(
    shard: &Rc<Shard>,
    req: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let table = shard.image();
    let mut topics = Vec::new();
    for t in req.topics {
        let name = t.name.0.to_string();
        let partitions = table.topic(&name).map(|m| m.partition_count());
        let futures = t.partitions.iter().map(|p| {
            let (topic, index, ts, epoch) = (
                name.clone(),
                p.partition_index,
                p.timestamp,
                p.current_leader_epoch,
            );
            let owner = shard.owner(&name, index);
            async move {
                if partitions.is_none_or(|n| index < 0 || index >= n) {
                    return Err(ResponseError::UnknownTopicOrPartition);
                }
                shard
                    .invoke_on(owner, move |s| lookup_on_owner(s, topic, index, ts, epoch))
                    .await
                    .unwrap_or(Err(ResponseError::BrokerNotAvailable))
            }
        });
        let results = futures::future::join_all(futures).await;
        let parts = t
            .partitions
            .iter()
            .zip(results)
            .map(|(p, r)| {
                let base =
                    ListOffsetsPartitionResponse::default().with_partition_index(p.partition_index);
                match r {
                    // leader_epoch exists from v4 on.
                    Ok((offset, ts, epoch)) => base
                        .with_offset(offset)
                        .with_timestamp(ts)
                        .with_leader_epoch(if version >= 4 { epoch } else { -1 }),
                    Err(e) => base
                        .with_error_code(e.code())
                        .with_offset(-1)
                        .with_timestamp(-1),
                }
            })
            .collect();
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(parts),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}
