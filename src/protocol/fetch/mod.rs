//! Fetch (key 1), v4-16: whole batches from each partition's owner shard,
//! with long polling: a fetch short of min_bytes waits until a partition's
//! high watermark moves or max_wait elapses. No fetch sessions: every fetch
//! is a full fetch (session id 0), which all clients accept.
//!
//! As Kafka does, a partition listed more than once is answered once, at its
//! first place, with its last listing's offset and limit; partitions are read
//! one after another against what is left of the response's max_bytes, so no
//! more is read than is sent, and the first partition with data returns at
//! least one whole batch even above max_bytes or its partition limit.
//!
//! Memory: before reading, a fetch takes what it may read from the fetch
//! budget of its connection's shard (at most its limits, at least room for
//! one whole batch when available) and reads no more than that; the bytes
//! read are held against the budget until the response is written. With no
//! budget left a fetch waits like a long poll and, at its max wait, answers
//! with what it has.
//!
//! Runs on the connection's shard; each partition is read on its owner shard.
//! The response and its encoding are in [`reply`].
//!
//! Consumers read from leaders only, below the high watermark. A follower's
//! fetch (replica id >= 0) reads up to the log end, tells the leader where
//! the follower is (high watermark, ISR), waits for appends rather than for
//! the high watermark, and is answered, when its log diverges, with the
//! epoch where it must truncate (v12+).

mod reply;

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use kafka_protocol::messages::fetch_request::FetchRequest;
use kafka_protocol::ResponseError;

use super::partition_error_code;
use crate::cluster::image::MetadataImage;
use crate::config::MAX_FETCH_WAIT_MS;
use crate::log::MIN_DISK_READ_BYTES;
use crate::partition::epochs::EpochEnd;
use crate::partition::{FetchedData, FollowerFetch};
use crate::shard::Shard;

pub use reply::FetchReply;
use reply::{PartitionReply, TopicReply};

/// One partition of the fetch, resolved to a topic name.
struct Wanted {
    topic_slot: usize,
    topic: String,
    index: i32,
    offset: i64,
    max_bytes: usize,
    current_leader_epoch: i32,
    last_fetched_epoch: i32,
    /// The fetching follower's log start (v5+), or -1.
    log_start_offset: i64,
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

/// One partition to read on its owner shard.
struct ReadItem {
    topic: String,
    index: i32,
    offset: i64,
    partition_max: usize,
    current_leader_epoch: i32,
    last_fetched_epoch: i32,
    log_start_offset: i64,
    replica: i32,
}

/// Most bytes the response to `req` may hold by its own limits (a first
/// batch above them aside).
pub fn response_bytes_bound(req: &FetchRequest) -> usize {
    let partitions: usize = req
        .topics
        .iter()
        .flat_map(|t| &t.partitions)
        .map(|p| p.partition_max_bytes.max(0) as usize)
        .fold(0, usize::saturating_add);
    partitions.min(req.max_bytes.max(0) as usize)
}

/// Where one pass of reads stands: bytes the response may still take (its
/// max_bytes), bytes of memory still granted, and whether a partition has
/// returned data yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReadLimits {
    response_left: usize,
    memory_left: usize,
    data_seen: bool,
}

/// Memory a read of up to `bytes` may hold at once: a read from the device
/// copies whole batches out of a raw read of up to the same size (at least
/// MIN_DISK_READ_BYTES) before that is freed.
fn read_memory(bytes: usize) -> usize {
    bytes.saturating_mul(2).saturating_add(MIN_DISK_READ_BYTES)
}

impl ReadLimits {
    /// The limit for a partition asked for at most `partition_max`, and the
    /// limit for its first batch: until a partition has returned data, one
    /// whole batch may pass every limit but the memory granted (Kafka's
    /// rule, so a consumer always progresses).
    fn for_partition(&self, partition_max: usize) -> (usize, usize) {
        let memory = self.memory_left.saturating_sub(MIN_DISK_READ_BYTES) / 2;
        let max = partition_max.min(self.response_left).min(memory);
        let first = if self.data_seen { max } else { memory };
        (max, first)
    }

    fn took(&mut self, bytes: usize) {
        if bytes > 0 {
            self.data_seen = true;
            self.response_left = self.response_left.saturating_sub(bytes);
            self.memory_left = self.memory_left.saturating_sub(bytes);
        }
    }
}

/// Reads `reads` in order on their owner shard.
async fn read_on_owner(
    shard: Rc<Shard>,
    reads: Vec<ReadItem>,
    mut limits: ReadLimits,
) -> (Vec<ReadResult>, ReadLimits) {
    let mut out = Vec::with_capacity(reads.len());
    for item in reads {
        let (max, first) = limits.for_partition(item.partition_max);
        let result = read_one(&shard, &item, max, first).await;
        if let Ok(r) = &result {
            limits.took(r.data.records.len());
        }
        out.push(result);
    }
    (out, limits)
}

async fn read_one(shard: &Rc<Shard>, w: &ReadItem, max: usize, first: usize) -> ReadResult {
    let partition = shard.serving_partition(&w.topic, w.index)?;
    let code = |e: crate::partition::PartitionError| partition_error_code(&e);
    partition
        .check_leader_epoch(w.current_leader_epoch)
        .map_err(code)?;
    if w.replica >= 0 {
        let now = crate::shard::now_ms();
        let fetch = FollowerFetch {
            replica: w.replica,
            offset: w.offset,
            last_fetched_epoch: w.last_fetched_epoch,
            log_start_offset: w.log_start_offset,
        };
        let read = partition
            .serve_follower(fetch, max, first, now)
            .await
            .map_err(code)?;
        shard.handle_effects(&partition, read.effects);
        return Ok(Read {
            data: read.data,
            diverging: read.diverging,
        });
    }
    let data = partition
        .read_bounded(w.offset, max, first)
        .await
        .map_err(|e| {
            tracing::debug!(topic = %w.topic, index = w.index, offset = w.offset, error = %e, "fetch read refused");
            code(e)
        })?;
    Ok(Read {
        data,
        diverging: None,
    })
}

/// Waits on the owner shard: a follower for the log end to pass
/// `threshold`, a consumer for the high watermark.
async fn wait_on_owner(
    shard: Rc<Shard>,
    topic: String,
    index: i32,
    follower: bool,
    threshold: i64,
    timeout: Duration,
) {
    if let Some(p) = shard.partition(&topic, index) {
        if follower {
            p.wait_for_append(threshold, timeout).await;
        } else {
            p.wait_for_data(threshold, timeout).await;
        }
    }
}

/// The partitions of `req` once each, in Kafka's order, with the topic
/// entries of the response: consecutive partitions of one topic share one.
fn resolve(
    table: &MetadataImage,
    req: &FetchRequest,
    version: i16,
) -> (Vec<TopicReply>, Vec<Wanted>) {
    let mut topics: Vec<TopicReply> = Vec::new();
    let mut wanted: Vec<Wanted> = Vec::new();
    let mut seen: HashMap<(uuid::Uuid, String, i32), usize> = HashMap::new();
    let replica = if version >= 15 {
        req.replica_state.replica_id.0
    } else {
        req.replica_id.0
    };
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
            let (offset, max_bytes) = (p.fetch_offset, p.partition_max_bytes.max(0) as usize);
            let last_fetched_epoch = if version >= 12 {
                p.last_fetched_epoch
            } else {
                -1
            };
            let log_start_offset = if version >= 5 { p.log_start_offset } else { -1 };
            let key = (t.topic_id, name.clone(), p.partition);
            if let Some(&i) = seen.get(&key) {
                let w = &mut wanted[i];
                (w.offset, w.max_bytes, w.error) = (offset, max_bytes, error);
                w.current_leader_epoch = p.current_leader_epoch;
                w.last_fetched_epoch = last_fetched_epoch;
                w.log_start_offset = log_start_offset;
                continue;
            }
            let same_topic = wanted.last().is_some_and(|w| {
                let entry = &topics[w.topic_slot];
                entry.name == name && entry.topic_id == t.topic_id
            });
            if !same_topic {
                topics.push(TopicReply {
                    name: name.clone(),
                    topic_id: t.topic_id,
                    partitions: Vec::new(),
                });
            }
            seen.insert(key, wanted.len());
            wanted.push(Wanted {
                topic_slot: topics.len() - 1,
                topic: name.clone(),
                index: p.partition,
                offset,
                max_bytes,
                current_leader_epoch: p.current_leader_epoch,
                last_fetched_epoch,
                log_start_offset,
                replica,
                error,
            });
        }
    }
    (topics, wanted)
}

/// Bytes of budget a pass asks for: what the limits allow, but room for one
/// whole batch (the first partition with data returns one whatever its
/// limits), with the room to read it; none when nothing is to be read.
fn grant_wanted(wanted: &[Wanted], max_bytes: usize, max_batch_bytes: usize) -> usize {
    let readable = wanted.iter().filter(|w| w.error.is_none());
    if readable.clone().next().is_none() {
        return 0;
    }
    let partitions = readable.map(|w| w.max_bytes).fold(0, usize::saturating_add);
    read_memory(partitions.min(max_bytes).max(max_batch_bytes))
}

pub async fn handle(shard: &Rc<Shard>, req: FetchRequest, version: i16) -> FetchReply {
    let (mut topics, wanted) = resolve(&shard.image(), &req, version);
    let max_bytes = req.max_bytes.max(0) as usize;
    let min_bytes = req.min_bytes.max(0) as usize;
    let deadline = Instant::now()
        + Duration::from_millis((req.max_wait_ms.max(0) as u64).min(MAX_FETCH_WAIT_MS));
    let want = grant_wanted(&wanted, max_bytes, shard.config.max_message_bytes);
    loop {
        let mut grant = shard.fetch_budget.take_up_to(want);
        let starved = grant.bytes() < want;
        let results = read_all(shard, &wanted, max_bytes, grant.bytes()).await;
        let total: usize = results
            .iter()
            .map(|r| r.as_ref().map_or(0, |d| d.data.records.len()))
            .sum();
        grant.shrink_to(total);
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
            for (w, r) in wanted.iter().zip(results) {
                topics[w.topic_slot]
                    .partitions
                    .push(PartitionReply::new(w.index, r));
            }
            return FetchReply {
                topics,
                grant: Some(grant),
            };
        }
        let thresholds: Vec<i64> = wanted
            .iter()
            .zip(&results)
            .map(|(w, r)| match r {
                Ok(d) if w.replica < 0 => d.data.high_watermark.max(w.offset),
                _ => w.offset,
            })
            .collect();
        // Nothing is held while waiting: the next pass reads afresh.
        drop((results, grant));
        wait_any(shard, &wanted, &thresholds, deadline - now, starved).await;
    }
}

/// Reads every wanted partition once against the response's `max_bytes`
/// and the `grant` of memory (the reads hold at most `grant` bytes at any
/// time), in request order as Kafka does: consecutive partitions of one
/// owner shard in one hop. Once nothing more can be read, the remaining
/// partitions only report their offsets, all owners at once.
async fn read_all(
    shard: &Rc<Shard>,
    wanted: &[Wanted],
    max_bytes: usize,
    grant: usize,
) -> Vec<ReadResult> {
    let mut results: Vec<Option<ReadResult>> = wanted.iter().map(|w| w.error.map(Err)).collect();
    let mut runs: Vec<(usize, Vec<usize>)> = Vec::new();
    for (i, w) in wanted.iter().enumerate().filter(|(_, w)| w.error.is_none()) {
        let owner = shard.owner(&w.topic, w.index);
        match runs.last_mut() {
            Some((o, items)) if *o == owner => items.push(i),
            _ => runs.push((owner, vec![i])),
        }
    }
    let mut limits = ReadLimits {
        response_left: max_bytes,
        memory_left: grant,
        data_seen: false,
    };
    let mut runs = runs.into_iter().peekable();
    while runs.peek().is_some() && limits.for_partition(usize::MAX) != (0, 0) {
        let (owner, items) = runs.next().expect("peeked");
        let (read, after) = read_on(shard, wanted, owner, &items, limits).await;
        limits = after;
        for (i, r) in items.into_iter().zip(read) {
            results[i] = Some(r);
        }
    }
    let mut rest: Vec<(usize, Vec<usize>)> = Vec::new();
    for (owner, items) in runs {
        match rest.iter_mut().find(|(o, _)| *o == owner) {
            Some((_, all)) => all.extend(items),
            None => rest.push((owner, items)),
        }
    }
    let offsets_only = rest
        .iter()
        .map(|(owner, items)| read_on(shard, wanted, *owner, items, limits));
    let read = futures::future::join_all(offsets_only).await;
    for ((_, items), (read, _)) in rest.into_iter().zip(read) {
        for (i, r) in items.into_iter().zip(read) {
            results[i] = Some(r);
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or(Err(ResponseError::UnknownServerError)))
        .collect()
}

/// Reads the partitions `items` of `wanted` in order on their owner shard;
/// also returns the limits left.
fn read_on(
    shard: &Rc<Shard>,
    wanted: &[Wanted],
    owner: usize,
    items: &[usize],
    limits: ReadLimits,
) -> impl std::future::Future<Output = (Vec<ReadResult>, ReadLimits)> {
    let reads: Vec<ReadItem> = items
        .iter()
        .map(|&i| {
            let w = &wanted[i];
            ReadItem {
                topic: w.topic.clone(),
                index: w.index,
                offset: w.offset,
                partition_max: w.max_bytes,
                current_leader_epoch: w.current_leader_epoch,
                last_fetched_epoch: w.last_fetched_epoch,
                log_start_offset: w.log_start_offset,
                replica: w.replica,
            }
        })
        .collect();
    let count = reads.len();
    let shard = shard.clone();
    async move {
        shard
            .invoke_on(owner, move |s| read_on_owner(s, reads, limits))
            .await
            .unwrap_or_else(|_| {
                let gone = (0..count).map(|_| Err(ResponseError::BrokerNotAvailable));
                (gone.collect(), limits)
            })
    }
}

/// Resolves when any partition's high watermark passes its threshold, or,
/// when the last pass was short of budget, when budget comes back.
async fn wait_any(
    shard: &Rc<Shard>,
    wanted: &[Wanted],
    thresholds: &[i64],
    timeout: Duration,
    starved: bool,
) {
    let waits: Vec<_> = wanted
        .iter()
        .zip(thresholds)
        .map(|(w, threshold)| {
            let (topic, index, threshold) = (w.topic.clone(), w.index, *threshold);
            let follower = w.replica >= 0;
            let owner = shard.owner(&w.topic, w.index);
            Box::pin(shard.invoke_on(owner, move |s| {
                wait_on_owner(s, topic, index, follower, threshold, timeout)
            }))
        })
        .collect();
    let data = futures::future::select_all(waits);
    let budget = async {
        if starved {
            shard.fetch_budget.released().await
        } else {
            futures::future::pending().await
        }
    };
    let timer = glommio::timer::sleep(timeout);
    futures::pin_mut!(budget, timer);
    futures::future::select(futures::future::select(data, budget), timer).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::TopicName;

    fn table(topics: &[(&str, i32)]) -> MetadataImage {
        use crate::cluster::image::{PartitionImage, TopicImage};
        let mut table = MetadataImage::default();
        for (i, (name, partitions)) in topics.iter().enumerate() {
            let id = uuid::Uuid::from_u128(i as u128 + 1);
            let partition = PartitionImage {
                replicas: vec![0],
                isr: vec![0],
                leader: 0,
                leader_epoch: 0,
                partition_epoch: 0,
            };
            table.topics.insert(
                name.to_string(),
                std::sync::Arc::new(TopicImage {
                    name: name.to_string(),
                    id,
                    internal: false,
                    configs: Default::default(),
                    partitions: vec![partition; *partitions as usize],
                }),
            );
            table.topic_names.insert(id, name.to_string());
        }
        table
    }

    /// A topic's listing in a request: (partition, offset, partition max bytes).
    type Listing<'a> = (&'a str, &'a [(i32, i64, i32)]);

    fn request(listed: &[Listing<'_>]) -> FetchRequest {
        use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
        let topics = listed
            .iter()
            .map(|(name, partitions)| {
                FetchTopic::default()
                    .with_topic(TopicName(crate::protocol::str_bytes(name)))
                    .with_partitions(
                        partitions
                            .iter()
                            .map(|(p, offset, max)| {
                                FetchPartition::default()
                                    .with_partition(*p)
                                    .with_fetch_offset(*offset)
                                    .with_partition_max_bytes(*max)
                            })
                            .collect(),
                    )
            })
            .collect();
        FetchRequest::default()
            .with_max_bytes(1 << 20)
            .with_topics(topics)
    }

    #[test]
    fn a_partition_listed_again_is_answered_once_with_its_last_listing() {
        let table = table(&[("a", 3), ("b", 1)]);
        let req = request(&[
            ("a", &[(0, 5, 100), (1, 7, 100), (0, 9, 200)]),
            ("b", &[(0, 1, 100)]),
            ("a", &[(1, 8, 300), (2, 0, 100)]),
            ("a", &[(0, 3, 50)]),
            ("b", &[]),
        ]);
        let (topics, wanted) = resolve(&table, &req, 12);
        let got: Vec<_> = wanted
            .iter()
            .map(|w| {
                (
                    w.topic_slot,
                    w.topic.as_str(),
                    w.index,
                    w.offset,
                    w.max_bytes,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (0, "a", 0, 3, 50),
                (0, "a", 1, 8, 300),
                (1, "b", 0, 1, 100),
                (2, "a", 2, 0, 100),
            ]
        );
        // Consecutive partitions of a topic share an entry, as in Kafka's
        // response; a topic listed without partitions gets none.
        let names: Vec<_> = topics.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "a"]);
        assert_eq!(response_bytes_bound(&req), 950, "the listed limits");
        assert_eq!(response_bytes_bound(&req.with_max_bytes(600)), 600);
    }

    #[test]
    fn unknown_partitions_keep_their_place_with_an_error() {
        let table = table(&[("a", 2)]);
        let req = request(&[("a", &[(5, 0, 10), (1, 0, 10)]), ("zz", &[(0, 0, 10)])]);
        let (topics, wanted) = resolve(&table, &req, 12);
        let errors: Vec<_> = wanted.iter().map(|w| (w.index, w.error)).collect();
        assert_eq!(
            errors,
            vec![
                (5, Some(ResponseError::UnknownTopicOrPartition)),
                (1, None),
                (0, Some(ResponseError::UnknownTopicOrPartition)),
            ]
        );
        assert_eq!(topics.len(), 2);
        assert_eq!(grant_wanted(&wanted, 1 << 20, 4096), read_memory(4096));
        let none_readable = &wanted[2..];
        assert_eq!(grant_wanted(none_readable, 1 << 20, 4096), 0);
    }

    #[test]
    fn the_first_batch_may_pass_every_limit_but_the_memory_granted() {
        let memory = read_memory(1000);
        let mut limits = ReadLimits {
            response_left: 300,
            memory_left: memory,
            data_seen: false,
        };
        // Before any data: up to the partition's and the response's limits,
        // a first batch up to what the memory granted can read.
        assert_eq!(limits.for_partition(200), (200, 1000));
        assert_eq!(limits.for_partition(usize::MAX), (300, 1000));
        limits.took(0);
        assert!(!limits.data_seen, "an empty partition changes nothing");
        limits.took(700); // one batch above max_bytes
        assert_eq!(limits.response_left, 0);
        assert_eq!(limits.for_partition(200), (0, 0), "nothing more is read");
        let mut limits = ReadLimits {
            response_left: 5000,
            memory_left: memory,
            data_seen: false,
        };
        limits.took(400);
        assert_eq!(
            limits.for_partition(4000),
            (800, 800),
            "memory left bounds the rest"
        );
    }
}
