//! Consumer workers: catch-up reads from the earliest offset to the end
//! offsets seen at start, or tailing reads from the latest offset that
//! measure end-to-end latency from the send time stamped in each value.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::producer::{pin, share, unix_micros};
use super::report::{new_histogram, Outcome};
use super::wire::{self, FETCH_VERSION, LIST_OFFSETS_VERSION};
use super::{BenchOptions, Live};
use crate::client::Client;
use crate::record::{BatchHeader, LOG_OVERHEAD};

/// Bytes asked per partition per fetch.
pub const PARTITION_FETCH_BYTES: i32 = 8 * 1024 * 1024;
/// Bytes asked per fetch.
pub const FETCH_BYTES: i32 = 64 * 1024 * 1024;

fn offsets(bootstrap: &str, topic: &str, partitions: &[i32], timestamp: i64) -> Result<Vec<i64>> {
    let mut c = Client::connect(bootstrap, "ringtail-bench")?;
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(
                partitions
                    .iter()
                    .map(|p| {
                        ListOffsetsPartition::default()
                            .with_partition_index(*p)
                            .with_timestamp(timestamp)
                    })
                    .collect(),
            )]);
    let resp: ListOffsetsResponse = c.call(ApiKey::ListOffsets, LIST_OFFSETS_VERSION, &req)?;
    let found = resp
        .topics
        .first()
        .map(|t| t.partitions.clone())
        .unwrap_or_default();
    partitions
        .iter()
        .map(|p| {
            found
                .iter()
                .find(|r| r.partition_index == *p && r.error_code == 0)
                .map(|r| r.offset)
                .ok_or_else(|| anyhow!("no offset for partition {p}"))
        })
        .collect()
}

/// Records in whole batches of `bytes` at or after `from`; returns the count
/// and the next offset to fetch.
fn count_records(bytes: &[u8], from: i64) -> (u64, i64) {
    let (mut n, mut next, mut rest) = (0u64, from, bytes);
    while rest.len() >= crate::record::BATCH_HEADER_BYTES {
        let Ok(h) = BatchHeader::parse(rest) else {
            break;
        };
        let size = h.total_size();
        if size <= LOG_OVERHEAD || size > rest.len() {
            break;
        }
        if h.last_offset() >= next {
            n += (h.last_offset() + 1 - h.base_offset().max(next)) as u64;
            next = h.last_offset() + 1;
        }
        rest = &rest[size..];
    }
    (n, next)
}

struct Reader {
    stream: std::net::TcpStream,
    topic: TopicName,
    correlation: i32,
    /// Memory for the next response, and the body of the last one (taken
    /// back once the caller has dropped its records).
    spare: Vec<u8>,
    last: Option<Bytes>,
}

impl Reader {
    fn fetch(&mut self, positions: &[(i32, i64)]) -> Result<Vec<(i32, i16, Bytes)>> {
        let req = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(500)
            .with_min_bytes(1)
            .with_max_bytes(FETCH_BYTES)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(self.topic.clone())
                .with_partitions(
                    positions
                        .iter()
                        .map(|(p, o)| {
                            FetchPartition::default()
                                .with_partition(*p)
                                .with_fetch_offset(*o)
                                .with_partition_max_bytes(PARTITION_FETCH_BYTES)
                        })
                        .collect(),
                )]);
        self.correlation += 1;
        wire::send(
            &mut self.stream,
            &wire::frame(ApiKey::Fetch, FETCH_VERSION, self.correlation, &req)?,
        )?;
        if let Some(spare) = self.last.take().and_then(wire::reclaim) {
            self.spare = spare;
        }
        let (_, resp, body): (i32, FetchResponse, Bytes) = wire::read_response_into(
            &mut self.stream,
            ApiKey::Fetch,
            FETCH_VERSION,
            &mut self.spare,
        )?;
        self.last = Some(body);
        Ok(resp
            .responses
            .into_iter()
            .flat_map(|t| t.partitions)
            .map(|p| {
                (
                    p.partition_index,
                    p.error_code,
                    p.records.unwrap_or_default(),
                )
            })
            .collect())
    }
}

fn reader(o: &BenchOptions) -> Result<Reader> {
    Ok(Reader {
        stream: wire::connect(&o.bootstrap)?,
        topic: TopicName(StrBytes::from_string(o.topic.clone())),
        correlation: 0,
        spare: Vec::new(),
        last: None,
    })
}

/// Reads everything from the earliest offset up to the end offsets at start.
pub fn run_catch_up(
    o: &BenchOptions,
    partitions: &[i32],
    live: &Arc<Live>,
    deadline: Instant,
) -> Result<Outcome> {
    let start = offsets(&o.bootstrap, &o.topic, partitions, -2)?;
    let end = offsets(&o.bootstrap, &o.topic, partitions, -1)?;
    if start.iter().zip(&end).all(|(s, e)| s >= e) {
        bail!("topic {} is empty: produce first", o.topic);
    }
    let began = Instant::now();
    let consumers = o.consumers.max(1);
    let mut handles = Vec::new();
    for id in 0..consumers {
        let mine = share(partitions, id, consumers);
        let mut work: Vec<(i32, i64, i64)> = mine
            .iter()
            .map(|p| {
                let i = partitions
                    .iter()
                    .position(|x| x == p)
                    .expect("own partition");
                (*p, start[i], end[i])
            })
            .collect();
        if id >= partitions.len() {
            work.clear();
        }
        let (o, live) = (o.clone(), live.clone());
        handles.push(std::thread::spawn(move || -> Result<Outcome> {
            pin(id);
            let mut r = reader(&o)?;
            let mut out = Outcome::default();
            while Instant::now() < deadline && work.iter().any(|(_, pos, end)| pos < end) {
                let positions: Vec<(i32, i64)> = work
                    .iter()
                    .filter(|(_, p, e)| p < e)
                    .map(|(p, pos, _)| (*p, *pos))
                    .collect();
                for (p, err, records) in r.fetch(&positions)? {
                    if err != 0 {
                        bail!("fetch of partition {p} failed with error code {err}");
                    }
                    let w = work.iter_mut().find(|w| w.0 == p).expect("asked");
                    let (n, next) = count_records(&records, w.1);
                    w.1 = next;
                    out.messages += n;
                    out.bytes += records.len() as u64;
                    live.messages.fetch_add(n, Ordering::Relaxed);
                    live.bytes
                        .fetch_add(records.len() as u64, Ordering::Relaxed);
                }
            }
            Ok(out)
        }));
    }
    let mut total = Outcome::default();
    for h in handles {
        total.merge(
            h.join()
                .map_err(|_| anyhow!("consumer thread panicked"))??,
        );
    }
    total.elapsed = Some(began.elapsed());
    Ok(total)
}

pub struct Tailing {
    handles: Vec<JoinHandle<Result<Outcome>>>,
}

impl Tailing {
    pub fn join(self) -> Result<Outcome> {
        let mut total = Outcome::default();
        for h in self.handles {
            total.merge(
                h.join()
                    .map_err(|_| anyhow!("consumer thread panicked"))??,
            );
        }
        Ok(total)
    }
}

/// Tails the topic from its end; each record's value starts with the unix
/// microsecond it was due to be sent.
pub fn start_tailing(
    o: &BenchOptions,
    partitions: &[i32],
    live: &Arc<Live>,
    warm_at: Instant,
    deadline: Instant,
) -> Result<Tailing> {
    let end = offsets(&o.bootstrap, &o.topic, partitions, -1)?;
    let warm_us = unix_micros(warm_at);
    let consumers = o.consumers.max(1);
    let mut handles = Vec::new();
    for id in 0..consumers.min(partitions.len()) {
        let mut work: Vec<(i32, i64)> = share(partitions, id, consumers)
            .iter()
            .map(|p| {
                (
                    *p,
                    end[partitions.iter().position(|x| x == p).expect("own")],
                )
            })
            .collect();
        let (o, live) = (o.clone(), live.clone());
        handles.push(std::thread::spawn(move || -> Result<Outcome> {
            pin(id + o.producers);
            let mut r = reader(&o)?;
            let mut out = Outcome {
                e2e: Some(new_histogram()),
                ..Outcome::default()
            };
            let stop_at = deadline + Duration::from_secs(2);
            while Instant::now() < stop_at {
                for (p, err, records) in r.fetch(&work)? {
                    if err != 0 {
                        bail!("fetch of partition {p} failed with error code {err}");
                    }
                    let w = work.iter_mut().find(|w| w.0 == p).expect("asked");
                    let mut buf = records.clone();
                    let now_us = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_micros() as u64;
                    while !buf.is_empty() {
                        let Ok(set) = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf)
                        else {
                            break;
                        };
                        let from = w.1;
                        for rec in set.records.iter().filter(|rec| rec.offset >= from) {
                            let sent = rec
                                .value
                                .as_ref()
                                .filter(|v| v.len() >= 8)
                                .map(|v| u64::from_be_bytes(v[..8].try_into().expect("8")));
                            if let (Some(sent), Some(h)) = (sent, out.e2e.as_mut()) {
                                if sent >= warm_us {
                                    let _ = h.record(now_us.saturating_sub(sent).max(1));
                                }
                            }
                            w.1 = rec.offset + 1;
                            out.messages += 1;
                        }
                    }
                    let _ = live.errors.load(Ordering::Relaxed);
                }
            }
            Ok(out)
        }));
    }
    Ok(Tailing { handles })
}
