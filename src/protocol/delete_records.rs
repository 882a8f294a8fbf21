//! DeleteRecords (key 21), v0-2 (`kafka-delete-records`,
//! AdminClient.deleteRecords): on each partition's leader the log start
//! moves to the given offset (-1: the high watermark; past it:
//! OFFSET_OUT_OF_RANGE) and the segments wholly below it are deleted.
//! Followers follow as the leader's log start reaches them in their
//! fetches, and tell theirs in the next; the answer waits (up to the
//! request's timeout: REQUEST_TIMED_OUT) until every serving replica's log
//! start reached the new one, and gives the lowest as the low watermark,
//! as Kafka does.

use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::messages::delete_records_request::DeleteRecordsRequest;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsResponse, DeleteRecordsTopicResult,
};
use kafka_protocol::ResponseError;

use super::partition_error_code;
use crate::shard::Shard;

async fn delete_on_owner(
    shard: Rc<Shard>,
    topic: String,
    index: i32,
    offset: i64,
    timeout: Duration,
) -> Result<i64, ResponseError> {
    let p = shard.serving_partition(&topic, index)?;
    let code = |e| partition_error_code(&e);
    let start = p.delete_records(offset).await.map_err(code)?;
    p.wait_low_watermark(start, timeout).await.map_err(code)
}

pub async fn handle(
    shard: &Rc<Shard>,
    req: DeleteRecordsRequest,
    _version: i16,
) -> DeleteRecordsResponse {
    let image = shard.image();
    let timeout = Duration::from_millis(req.timeout_ms.max(0) as u64);
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let name = t.name.0.to_string();
        let meta = image.topic(&name).cloned();
        let futures = t.partitions.iter().map(|p| {
            let (topic, index, offset) = (name.clone(), p.partition_index, p.offset);
            let owner = shard.owner(&name, index);
            let known = meta
                .as_ref()
                .is_some_and(|m| !m.internal && (0..m.partition_count()).contains(&index));
            async move {
                if !known {
                    return Err(ResponseError::UnknownTopicOrPartition);
                }
                shard
                    .invoke_on(owner, move |s| {
                        delete_on_owner(s, topic, index, offset, timeout)
                    })
                    .await
                    .unwrap_or(Err(ResponseError::BrokerNotAvailable))
            }
        });
        let results = futures::future::join_all(futures).await;
        let partitions = t
            .partitions
            .iter()
            .zip(results)
            .map(|(p, r)| {
                let base =
                    DeleteRecordsPartitionResult::default().with_partition_index(p.partition_index);
                match r {
                    Ok(low) => base.with_low_watermark(low),
                    Err(e) => base.with_low_watermark(-1).with_error_code(e.code()),
                }
            })
            .collect();
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}
