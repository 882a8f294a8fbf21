//! OffsetForLeaderEpoch (key 23), v2-4: the end offset of a leader epoch.
//! A single node leads every partition in epoch 0 from offset 0, so epoch 0
//! ends at the log end offset and later epochs are unknown.

use std::rc::Rc;

use kafka_protocol::messages::offset_for_leader_epoch_request::OffsetForLeaderEpochRequest;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderEpochResponse, OffsetForLeaderTopicResult,
};
use kafka_protocol::ResponseError;

use crate::shard::Shard;

/// Leader epoch of every partition on this node.
pub const LEADER_EPOCH: i32 = 0;

pub async fn handle(
    shard: &Rc<Shard>,
    req: OffsetForLeaderEpochRequest,
    _version: i16,
) -> OffsetForLeaderEpochResponse {
    let table = shard.topics();
    let mut topics = Vec::new();
    for t in req.topics {
        let name = t.topic.0.to_string();
        let count = table.get(&name).map(|m| m.partitions);
        let mut parts = Vec::new();
        for p in t.partitions {
            let base = EpochEndOffset::default()
                .with_partition(p.partition)
                .with_leader_epoch(-1)
                .with_end_offset(-1);
            let result = if count.is_none_or(|n| p.partition < 0 || p.partition >= n) {
                Err(ResponseError::UnknownTopicOrPartition)
            } else if p.current_leader_epoch > LEADER_EPOCH {
                Err(ResponseError::UnknownLeaderEpoch)
            } else if p.leader_epoch > LEADER_EPOCH {
                Ok(None)
            } else {
                let (topic, index) = (name.clone(), p.partition);
                shard
                    .invoke_on(shard.owner(&name, p.partition), move |s| async move {
                        s.serving_partition(&topic, index)
                            .map(|part| Some(part.log_end_offset()))
                    })
                    .await
                    .unwrap_or(Err(ResponseError::BrokerNotAvailable))
            };
            parts.push(match result {
                Ok(Some(end)) => base.with_leader_epoch(LEADER_EPOCH).with_end_offset(end),
                Ok(None) => base,
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
