//! Fetch (key 1), v4-16: whole batches from each partition's owner shard,
//! with long polling: a fetch short of min_bytes waits until a partition's
//! high watermark moves or max_wait elapses. No fetch sessions: every fetch
//! is a full fetch (session id 0), which all clients accept.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::FetchRequest;
use kafka_protocol::messages::fetch_response::{
    FetchResponse, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{BrokerId, TopicName};
use kafka_protocol::ResponseError;

use super::{partition_error_code, str_bytes};
use crate::config::MAX_FETCH_WAIT_MS;
use crate::partition::FetchedData;
use crate::shard::Shard;

/// One partition of the fetch, resolved to a topic name.
struct Wanted {
    topic_slot: usize,
    topic: String,
    index: i32,
    offset: i64,
    max_bytes: usize,
    error: Option<ResponseError>,
}

type ReadResult = Result<FetchedData, ResponseError>;

async fn read_on_owner(
    shard: Rc<Shard>,
    topic: String,
    index: i32,
    offset: i64,
    max_bytes: usize,
) -> ReadResult {
    let partition = shard
        .partition(&topic, index)
        .ok_or_else(|| shard.missing_partition_error(&topic, index))?;
    partition.read(offset, max_bytes).await.map_err(|e| {
        tracing::warn!(topic, index, offset, error = %e, "fetch read failed");
        partition_error_code(&e)
    })
}

async fn wait_on_owner(
    shard: Rc<Shard>,
    topic: String,
    index: i32,
    offset: i64,
    timeout: Duration,
) {
    if let Some(p) = shard.partition(&topic, index) {
        p.wait_for_data(offset, timeout).await;
    }
}

pub async fn handle(shard: &Rc<Shard>, req: FetchRequest, version: i16) -> FetchResponse {
    let table = shard.topics();
    let mut topics = Vec::new();
    let mut wanted = Vec::new();
    for t in &req.topics {
        let meta = if version >= 13 {
            table.by_id(&t.topic_id)
        } else {
            table.get(t.topic.0.as_str())
        };
        let unknown = if version >= 13 {
            ResponseError::UnknownTopicId
        } else {
            ResponseError::UnknownTopicOrPartition
        };
        let name = meta
            .map(|m| m.name.clone())
            .unwrap_or_else(|| t.topic.0.to_string());
        for p in &t.partitions {
            let error = match meta {
                None => Some(unknown),
                Some(m) if p.partition < 0 || p.partition >= m.partitions => {
                    Some(ResponseError::UnknownTopicOrPartition)
                }
                Some(_) if p.current_leader_epoch > 0 => Some(ResponseError::UnknownLeaderEpoch),
                Some(_) => None,
            };
            wanted.push(Wanted {
                topic_slot: topics.len(),
                topic: name.clone(),
                index: p.partition,
                offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes.max(0) as usize,
                error,
            });
        }
        topics.push(
            FetchableTopicResponse::default()
                .with_topic(TopicName(str_bytes(&name)))
                .with_topic_id(t.topic_id),
        );
    }
    let max_bytes = if req.max_bytes > 0 {
        req.max_bytes as usize
    } else {
        usize::MAX
    };
    let min_bytes = req.min_bytes.max(0) as usize;
    let deadline = Instant::now()
        + Duration::from_millis((req.max_wait_ms.max(0) as u64).min(MAX_FETCH_WAIT_MS));
    let mut results = read_all(shard, &wanted, max_bytes).await;
    loop {
        let total: usize = results
            .iter()
            .map(|r| r.as_ref().map_or(0, |d| d.records.len()))
            .sum();
        let any_error = results.iter().any(|r| r.is_err());
        let now = Instant::now();
        if total >= min_bytes.max(1)
            || any_error
            || now >= deadline
            || wanted.is_empty()
            || shard.shutting_down.get()
        {
            break;
        }
        let thresholds: Vec<i64> = wanted
            .iter()
            .zip(&results)
            .map(|(w, r)| {
                r.as_ref()
                    .map_or(w.offset, |d| d.high_watermark.max(w.offset))
            })
            .collect();
        wait_any(shard, &wanted, &thresholds, deadline - now).await;
        results = read_all(shard, &wanted, max_bytes).await;
    }
    for (w, r) in wanted.iter().zip(results) {
        topics[w.topic_slot]
            .partitions
            .push(partition_data(w.index, r));
    }
    FetchResponse::default()
        .with_responses(topics)
        .with_session_id(0)
}

/// Reads every wanted partition concurrently, then trims to the response
/// limit (the first non-empty partition is always kept whole).
async fn read_all(shard: &Rc<Shard>, wanted: &[Wanted], max_bytes: usize) -> Vec<ReadResult> {
    let futures = wanted.iter().map(|w| {
        let (topic, index, offset, limit, error) = (
            w.topic.clone(),
            w.index,
            w.offset,
            w.max_bytes.min(max_bytes),
            w.error,
        );
        let owner = shard.owner(&w.topic, w.index);
        async move {
            if let Some(e) = error {
                return Err(e);
            }
            shard
                .invoke_on(owner, move |s| {
                    read_on_owner(s, topic, index, offset, limit)
                })
                .await
                .unwrap_or(Err(ResponseError::BrokerNotAvailable))
        }
    });
    let mut results = futures::future::join_all(futures).await;
    let mut total = 0usize;
    for r in results.iter_mut().flatten() {
        if total > 0 && total + r.records.len() > max_bytes {
            r.records = Bytes::new();
        }
        total += r.records.len();
    }
    results
}

/// Resolves when any partition's high watermark passes its threshold.
async fn wait_any(shard: &Rc<Shard>, wanted: &[Wanted], thresholds: &[i64], timeout: Duration) {
    let waits: Vec<_> = wanted
        .iter()
        .zip(thresholds)
        .map(|(w, threshold)| {
            let (topic, index, offset) = (w.topic.clone(), w.index, *threshold);
            let owner = shard.owner(&w.topic, w.index);
            Box::pin(shard.invoke_on(owner, move |s| {
                wait_on_owner(s, topic, index, offset, timeout)
            }))
        })
        .collect();
    let timer = Box::pin(glommio::timer::sleep(timeout));
    futures::future::select(futures::future::select_all(waits), timer).await;
}

fn partition_data(index: i32, result: ReadResult) -> PartitionData {
    let base = PartitionData::default()
        .with_partition_index(index)
        .with_preferred_read_replica(BrokerId(-1))
        .with_aborted_transactions(Some(Vec::new()));
    match result {
        Ok(d) => base
            .with_high_watermark(d.high_watermark)
            .with_last_stable_offset(d.high_watermark)
            .with_log_start_offset(d.log_start_offset)
            .with_records(Some(d.records)),
        Err(e) => base
            .with_error_code(e.code())
            .with_high_watermark(-1)
            .with_last_stable_offset(-1)
            .with_log_start_offset(-1)
            .with_records(Some(Bytes::new())),
    }
}
