//! Producer workers: one thread per producer, pinned, with its own
//! connection; a reader thread per connection matches responses to the
//! requests in flight (at most MAX_IN_FLIGHT) and records latency from each
//! message's intended send time.

use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Result};
use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::report::{new_histogram, Outcome};
use super::wire::{self, PRODUCE_VERSION};
use super::{BenchOptions, Live, MAX_IN_FLIGHT};
use crate::record;

/// A request in flight: its messages were due at `first_due + k * spacing`.
struct InFlight {
    first_due: Instant,
    spacing: Duration,
    messages: u64,
    bytes: u64,
}

pub fn run_all(
    o: &BenchOptions,
    partitions: &[i32],
    live: &Arc<Live>,
    warm_at: Instant,
    deadline: Instant,
    stamp: bool,
) -> Result<Outcome> {
    let producers = o.producers.max(1);
    let all = partitions.len();
    let mut handles = Vec::new();
    for id in 0..producers {
        let mine = share(partitions, id, producers);
        let (o, live) = (o.clone(), live.clone());
        handles.push(
            std::thread::Builder::new()
                .name(format!("bench-producer-{id}"))
                .spawn(move || {
                    pin(id);
                    produce(id, &o, &mine, all, &live, (warm_at, deadline), stamp)
                })?,
        );
    }
    let mut total = Outcome::default();
    for h in handles {
        total.merge(
            h.join()
                .map_err(|_| anyhow!("producer thread panicked"))??,
        );
    }
    Ok(total)
}

/// Partitions of worker `id` out of `workers`: round-robin, and every worker
/// gets at least one.
pub fn share(partitions: &[i32], id: usize, workers: usize) -> Vec<i32> {
    if partitions.len() < workers {
        return vec![partitions[id % partitions.len()]];
    }
    partitions
        .iter()
        .copied()
        .enumerate()
        .filter(|(i, _)| i % workers == id)
        .map(|(_, p)| p)
        .collect()
}

pub fn pin(id: usize) {
    if let Some(cores) = core_affinity::get_core_ids() {
        if !cores.is_empty() {
            core_affinity::set_for_current(cores[id % cores.len()]);
        }
    }
}

fn payload(len: usize, seed: u64) -> Bytes {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// Unix time in microseconds of a monotonic instant (same host).
pub fn unix_micros(t: Instant) -> u64 {
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as i128;
    let now = Instant::now();
    let delta = if t >= now {
        (t - now).as_micros() as i128
    } else {
        -((now - t).as_micros() as i128)
    };
    (now_unix + delta).max(0) as u64
}

/// One producer's loop. With `stamp`, each value starts with the unix
/// microsecond it was due (for end-to-end latency); without it and without
/// keys, one encoded batch per size is resent with fresh timestamps, so the
/// generator spends its time sending rather than encoding.
fn produce(
    id: usize,
    o: &BenchOptions,
    mine: &[i32],
    all: usize,
    live: &Arc<Live>,
    (warm_at, deadline): (Instant, Instant),
    stamp: bool,
) -> Result<Outcome> {
    let mut stream = wire::connect(&o.bootstrap)?;
    let compression = wire::compression(&o.compression)?;
    let wait_acks = o.acks != 0;
    let (tx, rx) = sync_channel::<InFlight>(MAX_IN_FLIGHT);
    let reader = if wait_acks {
        let (s, live) = (stream.try_clone()?, live.clone());
        Some(std::thread::spawn(move || read_acks(s, rx, live, warm_at)))
    } else {
        None
    };
    // With keys, each partition gets the keys Kafka's partitioner maps to
    // it, and partitions no key maps to get nothing.
    let mut keyed: Vec<(Vec<Bytes>, usize)> = Vec::new();
    let mine: Vec<i32> = if o.keys > 0 {
        let mut buckets = vec![Vec::new(); all];
        for k in 0..o.keys {
            let key = Bytes::from(format!("key-{k}"));
            buckets[wire::partition_for_key(&key, all)].push(key);
        }
        let mine: Vec<i32> = mine
            .iter()
            .copied()
            .filter(|p| !buckets[*p as usize % all].is_empty())
            .collect();
        keyed = mine
            .iter()
            .map(|p| (std::mem::take(&mut buckets[*p as usize % all]), 0))
            .collect();
        mine
    } else {
        mine.to_vec()
    };
    if mine.is_empty() {
        return Ok(Outcome::default());
    }
    let base = payload(o.message_bytes, id as u64 + 7);
    let per_batch = (o.batch_bytes / o.message_bytes.max(1)).max(1);
    let rate = o.rate as f64 / o.producers.max(1) as f64;
    let spacing = if rate > 0.0 {
        Duration::from_secs_f64(1.0 / rate)
    } else {
        Duration::ZERO
    };
    let linger = Duration::from_millis(o.linger_ms);
    let e2e = stamp && o.message_bytes >= 8;
    let reuse = !e2e && o.keys == 0;
    let mut template: Option<(usize, BytesMut)> = None;
    let mut next_due = Instant::now();
    let mut correlation = 0i32;
    let mut counter = 0u64;
    let mut round = 0usize;
    let topic = TopicName(StrBytes::from_string(o.topic.clone()));
    let producers = o.producers.max(1) as u64;
    let quota = match o.messages {
        0 => u64::MAX,
        m => m / producers + u64::from((id as u64) < m % producers),
    };
    while Instant::now() < deadline && !live.stop.load(Ordering::Relaxed) && counter < quota {
        // Open loop: a batch holds the messages due within the linger window.
        // Indexes into `mine`.
        let (n, parts): (usize, Vec<usize>) = if rate > 0.0 {
            let n = ((linger.as_secs_f64() * rate) as usize).clamp(1, per_batch);
            (n, vec![round % mine.len()])
        } else {
            (per_batch, (0..mine.len()).collect())
        };
        round += 1;
        let first_due = if rate > 0.0 { next_due } else { Instant::now() };
        if rate > 0.0 {
            next_due += spacing * n as u32;
            let send_at = first_due + spacing * (n as u32 - 1);
            let now = Instant::now();
            if send_at > now {
                std::thread::sleep(send_at - now);
            }
        }
        let mut partition_data = Vec::with_capacity(parts.len());
        let mut bytes = 0u64;
        for slot in parts.iter().copied() {
            let records = if reuse {
                if template.as_ref().is_none_or(|(size, _)| *size != n) {
                    let values = vec![base.clone(); n];
                    let batch = wire::batch(&values, &vec![None; n], compression)?;
                    template = Some((n, BytesMut::from(&batch[..])));
                }
                let (_, t) = template.as_mut().expect("just built");
                record::set_timestamps(t, crate::group::coordinator::now_ms());
                Bytes::copy_from_slice(t)
            } else {
                let mut values = Vec::with_capacity(n);
                let mut keys = Vec::with_capacity(n);
                for k in 0..n {
                    let due = first_due + spacing * k as u32;
                    let mut v = base.to_vec();
                    if e2e {
                        v[..8].copy_from_slice(&unix_micros(due).to_be_bytes());
                    }
                    values.push(Bytes::from(v));
                    keys.push(keyed.get_mut(slot).map(|(ring, next)| {
                        let key = ring[*next % ring.len()].clone();
                        *next += 1;
                        key
                    }));
                }
                wire::batch(&values, &keys, compression)?
            };
            counter += n as u64;
            bytes += (n * o.message_bytes) as u64;
            partition_data.push(
                PartitionProduceData::default()
                    .with_index(mine[slot])
                    .with_records(Some(records)),
            );
        }
        let request = ProduceRequest::default()
            .with_acks(o.acks)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(topic.clone())
                .with_partition_data(partition_data)]);
        correlation = correlation.wrapping_add(1);
        let frame = wire::frame(ApiKey::Produce, PRODUCE_VERSION, correlation, &request)?;
        let messages = (n * parts.len()) as u64;
        if wait_acks {
            tx.send(InFlight {
                first_due,
                spacing,
                messages,
                bytes,
            })
            .map_err(|_| anyhow!("ack reader stopped"))?;
        } else if first_due >= warm_at {
            live.messages.fetch_add(messages, Ordering::Relaxed);
            live.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        wire::send(&mut stream, &frame)?;
    }
    drop(tx);
    match reader {
        Some(r) => r.join().map_err(|_| anyhow!("ack reader panicked"))?,
        None => Ok(Outcome::default()),
    }
}

fn read_acks(
    mut stream: TcpStream,
    rx: Receiver<InFlight>,
    live: Arc<Live>,
    warm_at: Instant,
) -> Result<Outcome> {
    let mut out = Outcome {
        latency: new_histogram(),
        ..Outcome::default()
    };
    let hist: &mut Histogram<u64> = &mut out.latency;
    let mut last_ack = warm_at;
    while let Ok(f) = rx.recv() {
        let (_, resp): (i32, ProduceResponse) =
            wire::read_response(&mut stream, ApiKey::Produce, PRODUCE_VERSION)?;
        let now = Instant::now();
        last_ack = now;
        let codes: Vec<i16> = resp
            .responses
            .iter()
            .flat_map(|t| &t.partition_responses)
            .map(|p| p.error_code)
            .filter(|c| *c != 0)
            .collect();
        if !codes.is_empty() {
            for code in codes {
                *out.error_codes.entry(code).or_default() += 1;
            }
            live.errors.fetch_add(1, Ordering::Relaxed);
            out.errors += 1;
            continue;
        }
        if f.first_due < warm_at {
            continue;
        }
        if f.spacing.is_zero() {
            let us = now.saturating_duration_since(f.first_due).as_micros() as u64;
            let _ = hist.record_n(us.max(1), f.messages);
        } else {
            for k in 0..f.messages {
                let due = f.first_due + f.spacing * k as u32;
                let _ = hist.record(now.saturating_duration_since(due).as_micros().max(1) as u64);
            }
        }
        out.messages += f.messages;
        out.bytes += f.bytes;
        live.messages.fetch_add(f.messages, Ordering::Relaxed);
        live.bytes.fetch_add(f.bytes, Ordering::Relaxed);
    }
    out.measured = Some(warm_at);
    out.elapsed = Some(last_ack.saturating_duration_since(warm_at));
    Ok(out)
}
