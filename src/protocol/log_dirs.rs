//! DescribeLogDirs (key 35), v1-4: this broker's one log directory (the
//! data directory) and every partition replica it hosts, leader or
//! follower, with its size in bytes (the batches in its segments, as Kafka's
//! `Log.size`). There are no future replicas (no moves between log
//! directories), so every offset lag is 0 and `is_future_key` false. v4
//! adds the file system's total and usable bytes (-1 when unknown, as Kafka).
//!
//! Answered by the broker it is sent to, never forwarded: `kafka-log-dirs
//! --describe` asks each broker for its own directories.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::messages::describe_log_dirs_request::DescribeLogDirsRequest;
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResponse, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::TopicName;

use super::str_bytes;
use crate::shard::Shard;

/// Kafka's value for a volume size it could not read.
const UNKNOWN_VOLUME_BYTES: i64 = -1;

/// (topic, partition, size in bytes) of every replica this broker hosts.
async fn hosted_partitions(shard: &Rc<Shard>) -> Vec<(String, i32, u64)> {
    let mut all = Vec::new();
    for target in 0..shard.count {
        let listed = shard
            .invoke_on(target, |s: Rc<Shard>| async move {
                s.local_partitions()
                    .iter()
                    .map(|p| (p.topic.clone(), p.index, p.size_bytes()))
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
        all.extend(listed);
    }
    all
}

pub async fn describe(
    shard: &Rc<Shard>,
    req: DescribeLogDirsRequest,
    version: i16,
) -> DescribeLogDirsResponse {
    // None: every partition; otherwise only those named.
    let wanted = req.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.topic.0.to_string(), t.partitions))
            .collect::<Vec<_>>()
    });
    let mut by_topic: BTreeMap<String, Vec<(i32, u64)>> = BTreeMap::new();
    for (topic, index, size) in hosted_partitions(shard).await {
        let asked = wanted.as_ref().is_none_or(|w| {
            w.iter()
                .any(|(t, parts)| *t == topic && parts.contains(&index))
        });
        if asked {
            by_topic.entry(topic).or_default().push((index, size));
        }
    }
    let topics = by_topic
        .into_iter()
        .map(|(name, mut parts)| {
            parts.sort_unstable();
            DescribeLogDirsTopic::default()
                .with_name(TopicName(str_bytes(&name)))
                .with_partitions(
                    parts
                        .into_iter()
                        .map(|(index, size)| {
                            DescribeLogDirsPartition::default()
                                .with_partition_index(index)
                                .with_partition_size(size.min(i64::MAX as u64) as i64)
                                .with_offset_lag(0)
                                .with_is_future_key(false)
                        })
                        .collect(),
                )
        })
        .collect();
    let data_dir = &shard.config.data_dir;
    let log_dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.clone());
    let mut result = DescribeLogDirsResult::default()
        .with_log_dir(str_bytes(&log_dir.display().to_string()))
        .with_topics(topics);
    if version >= 4 {
        let total = shard.space.total_bytes();
        let (total, usable) = if total == 0 {
            (UNKNOWN_VOLUME_BYTES, UNKNOWN_VOLUME_BYTES)
        } else {
            let free = shard.space.free_bytes().min(total);
            (total as i64, free as i64)
        };
        result = result.with_total_bytes(total).with_usable_bytes(usable);
    }
    DescribeLogDirsResponse::default().with_results(vec![result])
}
