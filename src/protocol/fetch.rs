//! Fetch (key 1), v4-16: whole batches from each partition's owner shard,
//! with long polling: a fetch short of min_bytes waits until a partition's
//! high watermark moves (a consumer) or its log end moves (a follower), or
//! max_wait elapses. No fetch sessions: every fetch is a full fetch
//! (session id 0), which all clients accept.
//!
//! Consumers read from leaders only, below the high watermark. A follower's
//! fetch (replica id >= 0) reads up to the log end, tells the leader where
//! the follower is (high watermark, ISR), and answers a divergent follower
//! with the epoch where it must truncate (v12+).

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::fetch_request::FetchRequest;
use kafka_protocol::ResponseError;

use super::{partition_error_code, FrameBuilder};
use crate::config::MAX_FETCH_WAIT_MS;
use crate::partition::epochs::EpochEnd;
use crate::partition::FetchedData;
use crate::record::RecordSet;
use crate::shard::Shard;

/// One partition of the fetch, resolved to a topic name.
#[derive(Clone)]
struct Wanted {
    topic_slot: usize,
    topic: String,
    index: i32,
    offset: i64,
    max_bytes: usize,
    current_leader_epoch: i32,
    last_fetched_epoch: i32,
    /// The fetching replica, or -1 for a consumer.
    replica: i32,
    error: Option<ResponseError>,
}

/// A partition's answer: records and offsets, and for a follower whose log
/// diverges, where it must truncate.
struct Read {
    data: FetchedData,
    diverging: Option<EpochEnd>,
}

type ReadResult = Result<Read, ResponseError>;

async fn read_on_owner(shard: Rc<Shard>, w: Wanted, max_bytes: usize) -> ReadResult {
    let partition = shard.serving_partition(&w.topic, w.index)?;
    let code = |e: crate::partition::PartitionError| partition_error_code(&e);
    partition
        .check_leader_epoch(w.current_leader_epoch)
        .map_err(code)?;
    if w.replica >= 0 {
        let now = crate::shard::now_ms();
        let read = partition
            .serve_follower(w.replica, w.offset, w.last_fetched_epoch, max_bytes, now)
            .await
            .map_err(code)?;
        shard.handle_effects(&partition, read.effects);
        return Ok(Read {
            data: read.data,
            diverging: read.diverging,
        });
    }
    let data = partition.read(w.offset, max_bytes).await.map_err(|e| {
        tracing::debug!(topic = %w.topic, index = w.index, offset = w.offset, error = %e, "fetch read refused");
        code(e)
    })?;
    Ok(Read {
        data,
        diverging: None,
    })
}

async fn wait_on_owner(shard: Rc<Shard>, w: Wanted, threshold: i64, timeout: Duration) {
    if let Some(p) = shard.partition(&w.topic, w.index) {
        if w.replica >= 0 {
            p.wait_for_append(threshold, timeout).await;
        } else {
            p.wait_for_data(threshold, timeout).await;
        }
    }
}

pub async fn handle(shard: &Rc<Shard>, req: FetchRequest, version: i16) -> FetchReply {
    let table = shard.image();
    let replica = if version >= 15 {
        req.replica_state.replica_id.0
    } else {
        req.replica_id.0
    };
    let mut topics = Vec::new();
    let mut wanted = Vec::new();
    for t in &req.topics {
        let meta = if version >= 13 {
            table.topic_by_id(&t.topic_id)
        } else {
            table.topic(t.topic.0.as_str())
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
                Some(m) if p.partition < 0 || p.partition >= m.partition_count() => {
                    Some(ResponseError::UnknownTopicOrPartition)
                }
                Some(_) => None,
            };
            wanted.push(Wanted {
                topic_slot: topics.len(),
                topic: name.clone(),
                index: p.partition,
                offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes.max(0) as usize,
                current_leader_epoch: p.current_leader_epoch,
                last_fetched_epoch: if version >= 12 {
                    p.last_fetched_epoch
                } else {
                    -1
                },
                replica,
                error,
            });
        }
        topics.push(TopicReply {
            name,
            topic_id: t.topic_id,
            partitions: Vec::new(),
        });
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
            .map(|r| r.as_ref().map_or(0, |d| d.data.records.len()))
            .sum();
        let any_error = results
            .iter()
            .any(|r| r.as_ref().map_or(true, |d| d.diverging.is_some()));
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
            .map(|(w, r)| match r {
                Ok(d) if w.replica < 0 => d.data.high_watermark.max(w.offset),
                _ => w.offset,
            })
            .collect();
        wait_any(shard, &wanted, &thresholds, deadline - now).await;
        results = read_all(shard, &wanted, max_bytes).await;
    }
    for (w, r) in wanted.iter().zip(results) {
        topics[w.topic_slot]
            .partitions
            .push(PartitionReply::new(w.index, r));
    }
    FetchReply { topics }
}

/// Reads every wanted partition concurrently, then trims to the response
/// limit (the first non-empty partition is always kept whole).
async fn read_all(shard: &Rc<Shard>, wanted: &[Wanted], max_bytes: usize) -> Vec<ReadResult> {
    let futures = wanted.iter().map(|w| {
        let (w, limit) = (w.clone(), w.max_bytes.min(max_bytes));
        let owner = shard.owner(&w.topic, w.index);
        async move {
            if let Some(e) = w.error {
                return Err(e);
            }
            shard
                .invoke_on(owner, move |s| read_on_owner(s, w, limit))
                .await
                .unwrap_or(Err(ResponseError::BrokerNotAvailable))
        }
    });
    let mut results = futures::future::join_all(futures).await;
    let mut total = 0usize;
    for r in results.iter_mut().flatten() {
        if total > 0 && total + r.data.records.len() > max_bytes {
            r.data.records = RecordSet::default();
        }
        total += r.data.records.len();
    }
    results
}

/// Resolves when any partition's high watermark passes its threshold.
async fn wait_any(shard: &Rc<Shard>, wanted: &[Wanted], thresholds: &[i64], timeout: Duration) {
    let waits: Vec<_> = wanted
        .iter()
        .zip(thresholds)
        .map(|(w, threshold)| {
            let (w, threshold) = (w.clone(), *threshold);
            let owner = shard.owner(&w.topic, w.index);
            Box::pin(shard.invoke_on(owner, move |s| wait_on_owner(s, w, threshold, timeout)))
        })
        .collect();
    let timer = Box::pin(glommio::timer::sleep(timeout));
    futures::future::select(futures::future::select_all(waits), timer).await;
}

/// A fetch response. Encoded here rather than by the codec so that record
/// sets are written from the buffers they were read into; every field the
/// codec would write for these values is written the same way (tested
/// against the codec for every version served).
pub struct FetchReply {
    topics: Vec<TopicReply>,
}

struct TopicReply {
    name: String,
    topic_id: uuid::Uuid,
    partitions: Vec<PartitionReply>,
}

struct PartitionReply {
    index: i32,
    error_code: i16,
    high_watermark: i64,
    log_start_offset: i64,
    diverging: Option<EpochEnd>,
    records: RecordSet,
}

impl PartitionReply {
    fn new(index: i32, result: ReadResult) -> PartitionReply {
        match result {
            Ok(r) => PartitionReply {
                index,
                error_code: 0,
                high_watermark: r.data.high_watermark,
                log_start_offset: r.data.log_start_offset,
                diverging: r.diverging,
                records: r.data.records,
            },
            Err(e) => PartitionReply {
                index,
                error_code: e.code(),
                high_watermark: -1,
                log_start_offset: -1,
                diverging: None,
                records: RecordSet::default(),
            },
        }
    }
}

fn put_uvarint(buf: &mut BytesMut, mut n: u32) {
    while n >= 0x80 {
        buf.put_u8((n as u8) | 0x80);
        n >>= 7;
    }
    buf.put_u8(n as u8);
}

/// Array length: int32 before flexible versions, unsigned varint of n+1 after.
fn put_len(buf: &mut BytesMut, flexible: bool, n: usize) {
    if flexible {
        put_uvarint(buf, n as u32 + 1);
    } else {
        buf.put_i32(n as i32);
    }
}

/// A partition's tagged fields: the diverging epoch (tag 0, an
/// EpochEndOffset: epoch, end offset, no tags of its own) when there is one.
fn put_partition_tags(buf: &mut BytesMut, diverging: Option<EpochEnd>) {
    match diverging {
        None => put_uvarint(buf, 0),
        Some(d) => {
            put_uvarint(buf, 1);
            put_uvarint(buf, 0);
            put_uvarint(buf, 4 + 8 + 1);
            buf.put_i32(d.epoch);
            buf.put_i64(d.end_offset);
            put_uvarint(buf, 0);
        }
    }
}

impl FetchReply {
    /// Encodes the body for `version` (4 to 16).
    pub fn encode(&self, frame: &mut FrameBuilder, version: i16) {
        let flexible = version >= 12;
        let buf = frame.head();
        buf.put_i32(0); // throttle_time_ms
        if version >= 7 {
            buf.put_i16(0); // error_code
            buf.put_i32(0); // session_id: no fetch sessions
        }
        put_len(buf, flexible, self.topics.len());
        for t in &self.topics {
            let buf = frame.head();
            if version >= 13 {
                buf.put_slice(t.topic_id.as_bytes());
            } else if flexible {
                put_uvarint(buf, t.name.len() as u32 + 1);
                buf.put_slice(t.name.as_bytes());
            } else {
                buf.put_i16(t.name.len() as i16);
                buf.put_slice(t.name.as_bytes());
            }
            put_len(buf, flexible, t.partitions.len());
            for p in &t.partitions {
                let buf = frame.head();
                buf.put_i32(p.index);
                buf.put_i16(p.error_code);
                buf.put_i64(p.high_watermark);
                buf.put_i64(p.high_watermark); // last_stable_offset: no transactions
                if version >= 5 {
                    buf.put_i64(p.log_start_offset);
                }
                put_len(buf, flexible, 0); // aborted_transactions: none
                if version >= 11 {
                    buf.put_i32(-1); // preferred_read_replica
                }
                put_len(buf, flexible, p.records.len());
                frame.records(&p.records);
                if flexible {
                    put_partition_tags(frame.head(), p.diverging);
                }
            }
            if flexible {
                put_uvarint(frame.head(), 0); // topic tagged fields
            }
        }
        if flexible {
            put_uvarint(frame.head(), 0); // response tagged fields
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::messages::fetch_response::{
        EpochEndOffset, FetchResponse, FetchableTopicResponse, PartitionData,
    };
    use kafka_protocol::messages::{ApiKey, BrokerId, ResponseHeader, TopicName};
    use kafka_protocol::protocol::Encodable;

    use crate::record::RecordSetBuilder;

    fn records(sizes: &[usize], seed: u8) -> RecordSet {
        let mut b = RecordSetBuilder::default();
        for (i, n) in sizes.iter().enumerate() {
            let part: Vec<u8> = (0..*n)
                .map(|k| (k as u8).wrapping_mul(seed) ^ i as u8)
                .collect();
            b.push(Bytes::from(part));
        }
        b.finish()
    }

    fn sample() -> FetchReply {
        let ok = |index, hw, sizes: &[usize]| PartitionReply {
            index,
            error_code: 0,
            high_watermark: hw,
            log_start_offset: 3,
            diverging: None,
            records: records(sizes, index as u8 + 1),
        };
        let diverging = PartitionReply {
            diverging: Some(EpochEnd {
                epoch: 3,
                end_offset: 17,
            }),
            ..ok(5, 20, &[])
        };
        FetchReply {
            topics: vec![
                TopicReply {
                    name: "orders".into(),
                    topic_id: uuid::Uuid::from_u128(0x1234_5678_9abc),
                    partitions: vec![
                        ok(0, 1_000_000, &[100_000, 20, 70_000, 5]),
                        PartitionReply::new(1, Err(ResponseError::OffsetOutOfRange)),
                        ok(2, 0, &[]),
                        diverging,
                    ],
                },
                TopicReply {
                    name: "x".repeat(300),
                    topic_id: uuid::Uuid::nil(),
                    partitions: vec![ok(7, 42, &[300])],
                },
                TopicReply {
                    name: "empty".into(),
                    topic_id: uuid::Uuid::from_u128(9),
                    partitions: Vec::new(),
                },
            ],
        }
    }

    /// The same response built with the codec's types.
    fn as_message(reply: &FetchReply) -> FetchResponse {
        let topics = reply
            .topics
            .iter()
            .map(|t| {
                FetchableTopicResponse::default()
                    .with_topic(TopicName(crate::protocol::str_bytes(&t.name)))
                    .with_topic_id(t.topic_id)
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|p| {
                                PartitionData::default()
                                    .with_partition_index(p.index)
                                    .with_error_code(p.error_code)
                                    .with_high_watermark(p.high_watermark)
                                    .with_last_stable_offset(p.high_watermark)
                                    .with_log_start_offset(p.log_start_offset)
                                    .with_aborted_transactions(Some(Vec::new()))
                                    .with_preferred_read_replica(BrokerId(-1))
                                    .with_records(Some(p.records.to_bytes()))
                                    .with_diverging_epoch(match p.diverging {
                                        Some(d) => EpochEndOffset::default()
                                            .with_epoch(d.epoch)
                                            .with_end_offset(d.end_offset),
                                        None => EpochEndOffset::default(),
                                    })
                            })
                            .collect(),
                    )
            })
            .collect();
        FetchResponse::default()
            .with_responses(topics)
            .with_session_id(0)
    }

    #[test]
    fn encodes_like_the_codec_for_every_served_version() {
        let reply = sample();
        let (min, max) = crate::protocol::supported_range(ApiKey::Fetch).expect("served");
        for version in min..=max {
            let mut frame = FrameBuilder::new(ApiKey::Fetch, version, 77);
            reply.encode(&mut frame, version);
            let frame = frame.finish();
            assert!(
                frame.parts.len() > 2,
                "large record sets stay separate parts"
            );
            let mut ours = BytesMut::new();
            for p in &frame.parts {
                ours.extend_from_slice(p);
            }

            let mut body = BytesMut::new();
            ResponseHeader::default()
                .with_correlation_id(77)
                .encode(&mut body, ApiKey::Fetch.response_header_version(version))
                .unwrap();
            as_message(&reply).encode(&mut body, version).unwrap();
            let mut codec = BytesMut::new();
            codec.extend_from_slice(&(body.len() as i32).to_be_bytes());
            codec.extend_from_slice(&body);
            assert_eq!(ours.len(), codec.len(), "version {version}");
            assert!(ours == codec, "version {version}: bytes differ");
        }
    }
}
