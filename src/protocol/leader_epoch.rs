//! OffsetForLeaderEpoch (key 23), v2-4: where a leader epoch ends in this
//! partition's log (Kafka's `endOffsetFor`): consumers validating their
//! position after a leader change (KIP-320) and replicas checking for a
//! divergent tail ask it. Answered by the leader only, unless a replica
//! asks (replica_id >= 0), which any replica answers from its own log.

use std::rc::Rc;

use kafka_protocol::messages::offset_for_leader_epoch_request::OffsetForLeaderEpochRequest;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderEpochResponse, OffsetForLeaderTopicResult,
};
use kafka_protocol::ResponseError;

use super::partition_error_code;
use crate::partition::epochs::EpochEnd;
use crate::shard::Shard;

async fn end_offset(
    shard: Rc<Shard>,
    topic: String,
    index: i32,
    current_leader_epoch: i32,
    epoch: i32,
    from_replica: bool,
) -> Result<EpochEnd, ResponseError> {
    let part = shard.serving_partition(&topic, index)?;
    if !from_replica && !part.is_leader() {
        return Err(ResponseError::NotLeaderOrFollower);
    }
    part.check_leader_epoch(current_leader_epoch)
        .map_err(|e| partition_error_code(&e))?;
    Ok(part.end_offset_for_epoch(epoch))
}

pub async fn handle(
    shard: &Rc<Shard>,
    req: OffsetForLeaderEpochRequest,
    version: i16,
) -> OffsetForLeaderEpochResponse {
    let table = shard.image();
    let from_replica = version >= 3 && req.replica_id.0 >= 0;
    let mut topics = Vec::new();
    for t in req.topics {
        let name = t.topic.0.to_string();
        let count = table.topic(&name).map(|m| m.partition_count());
        let mut parts = Vec::new();
        for p in t.partitions {
            let base = EpochEndOffset::default()
                .with_partition(p.partition)
                .with_leader_epoch(-1)
                .with_end_offset(-1);
            let result = if count.is_none_or(|n| p.partition < 0 || p.partition >= n) {
                Err(ResponseError::UnknownTopicOrPartition)
            } else {
                let (topic, index, current, epoch) = (
                    name.clone(),
                    p.partition,
                    p.current_leader_epoch,
                    p.leader_epoch,
                );
                shard
                    .invoke_on(shard.owner(&name, p.partition), move |s| {
                        end_offset(s, topic, index, current, epoch, from_replica)
                    })
                    .await
                    .unwrap_or(Err(ResponseError::BrokerNotAvailable))
            };
            parts.push(match result {
                Ok(end) => base
                    .with_leader_epoch(end.epoch)
                    .with_end_offset(end.end_offset),
                Err(e) => base.with_error_code(e.code()),
            });
        }
        topics.push(
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(parts),
        );
    }
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
