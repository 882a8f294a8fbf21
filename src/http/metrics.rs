//! `/metrics`: the gathered shard views ([`super::gather`]) as metric
//! families, encoded in the Prometheus text format (0.0.4) by
//! `prometheus-client`. The registry is built per scrape from the copies,
//! so the data path never touches its types.
//!
//! Runs on the shard serving HTTP (shard 0), in the HTTP task queue.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use kafka_protocol::messages::ApiKey;
use kafka_protocol::ResponseError;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::gather::{gather, Gathered, ShardView};
use super::server::Response;
use crate::lag::monitor::LagMonitor;
use crate::metrics::HistogramSnapshot;
use crate::shard::Shard;

type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Clone)]
enum Value {
    Counter(u64),
    /// A counter of seconds.
    CounterF64(f64),
    Gauge(f64),
    Histogram(HistogramSnapshot),
}

/// One metric: name (counters without `_total`, which the encoder adds),
/// help, type and samples.
#[derive(Debug)]
pub struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Vec<(Labels, Value)>,
}

impl Family {
    fn new(name: &'static str, help: &'static str, kind: MetricType) -> Family {
        Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    fn counter(&mut self, labels: Labels, v: u64) {
        self.samples.push((labels, Value::Counter(v)));
    }

    fn counter_f64(&mut self, labels: Labels, v: f64) {
        self.samples.push((labels, Value::CounterF64(v)));
    }

    fn gauge(&mut self, labels: Labels, v: f64) {
        self.samples.push((labels, Value::Gauge(v)));
    }

    fn histogram(&mut self, labels: Labels, h: HistogramSnapshot) {
        self.samples.push((labels, Value::Histogram(h)));
    }
}

#[derive(Debug)]
struct Families(Vec<Family>);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in self.0.iter().filter(|f| !f.samples.is_empty()) {
            let mut metric = encoder.encode_descriptor(f.name, f.help, None, f.kind)?;
            for (labels, value) in &f.samples {
                let mut m = metric.encode_family(labels)?;
                match value {
                    Value::Counter(v) => m.encode_counter::<NoLabelSet, _, u64>(v, None)?,
                    Value::CounterF64(v) => m.encode_counter::<NoLabelSet, _, f64>(v, None)?,
                    // Offsets, counts and bytes print as integers.
                    Value::Gauge(v) if v.fract() == 0.0 && v.abs() < 9.0e15 => {
                        m.encode_gauge(&(*v as i64))?
                    }
                    Value::Gauge(v) => m.encode_gauge(v)?,
                    Value::Histogram(h) => m.encode_histogram::<NoLabelSet>(
                        h.sum_seconds,
                        h.count,
                        &h.buckets(),
                        None,
                    )?,
                }
            }
        }
        Ok(())
    }
}

/// Serves a scrape.
pub async fn scrape(shard: Rc<Shard>, lag: Option<Arc<LagMonitor>>) -> Response {
    let gathered = gather(&shard).await;
    let mut all = families(&gathered);
    if let Some(lag) = lag {
        all.extend(lag_families(&lag.statuses(crate::lag::monitor::now_ms())));
    }
    match encode(all) {
        Ok(text) => Response::new(
            200,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            text,
        ),
        Err(_) => Response::text(500, "encoding the metrics failed\n"),
    }
}

pub fn encode(families: Vec<Family>) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Families(families)));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

fn api_name(key: i16) -> String {
    ApiKey::try_from(key)
        .map(|k| format!("{k:?}"))
        .unwrap_or_else(|_| key.to_string())
}

/// Kafka's spelling of an error code (NOT_LEADER_OR_FOLLOWER), or the number.
fn error_name(code: i16) -> String {
    let Some(e) = ResponseError::try_from_code(code) else {
        return code.to_string();
    };
    let camel = format!("{e:?}");
    if !camel.chars().all(|c| c.is_ascii_alphanumeric()) {
        return code.to_string(); // a code the codec does not name
    }
    let mut out = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn shard_label(s: &ShardView) -> Labels {
    vec![("shard", s.shard.to_string())]
}

fn with(mut labels: Labels, more: &[(&'static str, String)]) -> Labels {
    labels.extend_from_slice(more);
    labels
}

/// Every family of a scrape, in a stable order.
pub fn families(g: &Gathered) -> Vec<Family> {
    let mut out = Vec::new();
    out.extend(request_families(g));
    out.extend(io_families(g));
    out.extend(topic_families(g));
    out.extend(shard_families(g));
    out.extend(partition_families(g));
    out.extend(cluster_families(g));
    out.extend(group_families(g));
    out
}

fn request_families(g: &Gathered) -> Vec<Family> {
    use MetricType::*;
    let mut requests = Family::new("ringtail_requests", "Requests answered, by API.", Counter);
    let mut errors = Family::new(
        "ringtail_request_errors",
        "Error codes in responses, by API and error (once per partition, topic or group answered with it).",
        Counter,
    );
    let mut seconds = Family::new(
        "ringtail_request_duration_seconds",
        "Time from a request's decoding to its response being ready, by API.",
        Histogram,
    );
    let mut in_flight = Family::new(
        "ringtail_requests_in_flight",
        "Requests being handled.",
        Gauge,
    );
    let mut open = Family::new(
        "ringtail_connections_open",
        "Client connections open.",
        Gauge,
    );
    let mut accepted = Family::new(
        "ringtail_connections_accepted",
        "Client connections accepted.",
        Counter,
    );
    let mut closed = Family::new(
        "ringtail_connections_closed",
        "Client connections closed.",
        Counter,
    );
    for s in &g.shards {
        let c = &s.counters;
        for a in &c.apis {
            let l = with(shard_label(s), &[("api", api_name(a.api_key))]);
            requests.counter(l.clone(), a.requests);
            seconds.histogram(l, a.seconds.clone());
        }
        for &(api, code, n) in &c.errors {
            let l = with(
                shard_label(s),
                &[("api", api_name(api)), ("error", error_name(code))],
            );
            errors.counter(l, n);
        }
        in_flight.gauge(shard_label(s), s.requests_in_flight as f64);
        let open_now = c.connections_accepted.saturating_sub(c.connections_closed);
        open.gauge(shard_label(s), open_now as f64);
        accepted.counter(shard_label(s), c.connections_accepted);
        closed.counter(shard_label(s), c.connections_closed);
    }
    vec![requests, errors, seconds, in_flight, open, accepted, closed]
}

fn io_families(g: &Gathered) -> Vec<Family> {
    use MetricType::*;
    let mut fsync = Family::new(
        "ringtail_fsync_duration_seconds",
        "fdatasync of segment files; _count is the number of fsyncs.",
        Histogram,
    );
    let mut write_bytes = Family::new(
        "ringtail_direct_write_bytes",
        "Bytes written to segment files with O_DIRECT.",
        Counter,
    );
    let mut write_seconds = Family::new(
        "ringtail_direct_write_duration_seconds",
        "O_DIRECT writes of segment pages.",
        Histogram,
    );
    let mut read_bytes = Family::new(
        "ringtail_direct_read_bytes",
        "Bytes read from segment files with O_DIRECT for fetches.",
        Counter,
    );
    let mut read_seconds = Family::new(
        "ringtail_direct_read_duration_seconds",
        "O_DIRECT reads of segment bytes for fetches.",
        Histogram,
    );
    let mut queued = Family::new(
        "ringtail_io_uring_in_flight",
        "Segment I/O operations submitted to the shard's io_uring and not completed (its queue depth), by operation.",
        Gauge,
    );
    for s in &g.shards {
        for io in &s.counters.io {
            use crate::metrics::IoOp;
            let l = shard_label(s);
            queued.gauge(
                with(l.clone(), &[("op", io.op.name().to_string())]),
                io.in_flight as f64,
            );
            match io.op {
                IoOp::Fsync => fsync.histogram(l, io.seconds.clone()),
                IoOp::DirectWrite => {
                    write_bytes.counter(l.clone(), io.bytes);
                    write_seconds.histogram(l, io.seconds.clone());
                }
                IoOp::DirectRead => {
                    read_bytes.counter(l.clone(), io.bytes);
                    read_seconds.histogram(l, io.seconds.clone());
                }
            }
        }
    }
    vec![
        fsync,
        write_bytes,
        write_seconds,
        read_bytes,
        read_seconds,
        queued,
    ]
}

fn topic_families(g: &Gathered) -> Vec<Family> {
    use MetricType::*;
    let mut bytes_in = Family::new(
        "ringtail_topic_bytes_in",
        "Record batch bytes produced to the topic (appended as leader).",
        Counter,
    );
    let mut bytes_out = Family::new(
        "ringtail_topic_bytes_out",
        "Record batch bytes fetched from the topic by consumers.",
        Counter,
    );
    let mut batches = Family::new(
        "ringtail_produce_batches",
        "Record batches produced to the topic.",
        Counter,
    );
    let mut records = Family::new(
        "ringtail_produce_records",
        "Records produced to the topic.",
        Counter,
    );
    for s in &g.shards {
        for (topic, t) in &s.counters.topics {
            let l = with(shard_label(s), &[("topic", topic.clone())]);
            bytes_in.counter(l.clone(), t.bytes_in);
            bytes_out.counter(l.clone(), t.bytes_out);
            batches.counter(l.clone(), t.produce_batches);
            records.counter(l, t.produce_records);
        }
    }
    vec![bytes_in, bytes_out, batches, records]
}

fn shard_families(g: &Gathered) -> Vec<Family> {
    use MetricType::*;
    let mut hits = Family::new(
        "ringtail_batch_cache_hits",
        "Partition reads answered from the batch cache.",
        Counter,
    );
    let mut misses = Family::new(
        "ringtail_batch_cache_misses",
        "Partition reads that went to the segment files.",
        Counter,
    );
    let mut bytes = Family::new(
        "ringtail_batch_cache_bytes",
        "Bytes held by the batch cache.",
        Gauge,
    );
    let mut limit = Family::new(
        "ringtail_batch_cache_limit_bytes",
        "The batch cache's limit (batch_cache_bytes).",
        Gauge,
    );
    let mut busy = Family::new(
        "ringtail_shard_busy_seconds",
        "Time the shard's executor ran tasks.",
        Counter,
    );
    let mut ratio = Family::new(
        "ringtail_shard_busy_ratio",
        "Fraction of the time since the previous scrape that the shard's executor ran tasks (the rest it was idle or polling I/O).",
        Gauge,
    );
    for s in &g.shards {
        let c = &s.counters;
        hits.counter(shard_label(s), c.cache_hits);
        misses.counter(shard_label(s), c.cache_misses);
        bytes.gauge(shard_label(s), s.cache_bytes as f64);
        limit.gauge(shard_label(s), s.cache_limit_bytes as f64);
        busy.counter_f64(shard_label(s), s.busy_seconds);
        ratio.gauge(shard_label(s), s.busy_ratio);
    }
    vec![hits, misses, bytes, limit, busy, ratio]
}

fn partition_families(g: &Gathered) -> Vec<Family> {
    use MetricType::*;
    let mut leo = Family::new(
        "ringtail_partition_log_end_offset",
        "Log end offset of each partition replica on this broker.",
        Gauge,
    );
    let mut hw = Family::new(
        "ringtail_partition_high_watermark",
        "High watermark of each partition replica on this broker.",
        Gauge,
    );
    let mut start = Family::new(
        "ringtail_partition_log_start_offset",
        "Log start offset of each partition replica on this broker.",
        Gauge,
    );
    let mut size = Family::new(
        "ringtail_partition_size_bytes",
        "Bytes of each partition replica's segments.",
        Gauge,
    );
    let mut leader = Family::new(
        "ringtail_partition_leader",
        "1 where this broker leads the partition, 0 where it follows.",
        Gauge,
    );
    let mut isr = Family::new(
        "ringtail_partition_in_sync_replicas",
        "In-sync replicas of each partition this broker leads.",
        Gauge,
    );
    let mut lag = Family::new(
        "ringtail_follower_lag_messages",
        "Offsets a follower is behind the leader's log end, on the leader.",
        Gauge,
    );
    for s in &g.shards {
        for p in &s.partitions {
            let l = vec![
                ("topic", p.topic.clone()),
                ("partition", p.partition.to_string()),
            ];
            leo.gauge(l.clone(), p.log_end_offset as f64);
            hw.gauge(l.clone(), p.high_watermark as f64);
            start.gauge(l.clone(), p.log_start_offset as f64);
            size.gauge(l.clone(), p.size_bytes as f64);
            leader.gauge(l.clone(), if p.leader { 1.0 } else { 0.0 });
            if p.leader {
                isr.gauge(l.clone(), p.in_sync_replicas as f64);
            }
            for (replica, behind) in &p.follower_lags {
                lag.gauge(
                    with(l.clone(), &[("replica", replica.to_string())]),
                    *behind as f64,
                );
            }
        }
    }
    vec![leo, hw, start, size, leader, isr, lag]
}

fn cluster_families(g: &Gathered) -> Vec<Family> {
    use MetricType::*;
    let mut under = Family::new(
        "ringtail_under_replicated_partitions",
        "Partitions this broker leads whose ISR is smaller than their replicas.",
        Gauge,
    );
    let mut storage = Family::new(
        "ringtail_storage_offline_partitions",
        "Partitions of this broker answering KAFKA_STORAGE_ERROR (corrupt or poisoned).",
        Gauge,
    );
    let mut shrinks = Family::new(
        "ringtail_isr_shrinks",
        "ISR shrinks of partitions this broker leads, accepted by the controller.",
        Counter,
    );
    let mut expands = Family::new(
        "ringtail_isr_expands",
        "ISR expansions of partitions this broker leads, accepted by the controller.",
        Counter,
    );
    for s in &g.shards {
        let n = s
            .partitions
            .iter()
            .filter(|p| p.leader && p.in_sync_replicas < p.replicas)
            .count();
        under.gauge(shard_label(s), n as f64);
        storage.gauge(shard_label(s), s.storage_offline_partitions as f64);
        shrinks.counter(shard_label(s), s.counters.isr_shrinks);
        expands.counter(shard_label(s), s.counters.isr_expands);
    }
    let mut active = Family::new(
        "ringtail_active_controller",
        "1 on the broker that is the active controller (the metadata quorum's leader).",
        Gauge,
    );
    active.gauge(
        Vec::new(),
        if g.cluster.active_controller {
            1.0
        } else {
            0.0
        },
    );
    let mut offline = Family::new(
        "ringtail_offline_partitions",
        "Partitions without a leader, reported by the active controller (0 elsewhere).",
        Gauge,
    );
    offline.gauge(Vec::new(), g.cluster.offline_partitions as f64);
    let mut free = Family::new(
        "ringtail_disk_free_bytes",
        "Free bytes of the data directory's file system, as last checked.",
        Gauge,
    );
    let mut total = Family::new(
        "ringtail_disk_total_bytes",
        "Size of the data directory's file system.",
        Gauge,
    );
    if g.cluster.disk_total_bytes > 0 {
        free.gauge(Vec::new(), g.cluster.disk_free_bytes as f64);
        total.gauge(Vec::new(), g.cluster.disk_total_bytes as f64);
    }
    vec![
        under, storage, shrinks, expands, active, offline, free, total,
    ]
}

/// The lag monitor's evaluation of every tracked group (Burrow's model):
/// its status as a number (1 OK, 2 WARN, 3 ERR; STOP, STALL and REWIND
/// partitions make their group ERR) and its total lag.
pub fn lag_families(statuses: &[crate::lag::evaluator::GroupStatus]) -> Vec<Family> {
    use crate::lag::evaluator::Status;
    let mut status = Family::new(
        "ringtail_consumer_group_status",
        "Burrow's status of the group from the lag monitor: 1 OK, 2 WARN, 3 ERR.",
        MetricType::Gauge,
    );
    let mut total = Family::new(
        "ringtail_consumer_group_total_lag_messages",
        "The lag monitor's total lag of the group over its partitions.",
        MetricType::Gauge,
    );
    for g in statuses {
        let n = match g.status {
            Status::Ok => 1.0,
            Status::Warn => 2.0,
            Status::NotFound => continue,
            _ => 3.0,
        };
        status.gauge(vec![("group", g.group.clone())], n);
        total.gauge(vec![("group", g.group.clone())], g.totallag as f64);
    }
    vec![status, total]
}

fn group_families(g: &Gathered) -> Vec<Family> {
    use MetricType::*;
    // High watermark per partition from this broker's replicas, the leader's
    // where it is here.
    let mut hw: HashMap<(&str, i32), (bool, i64)> = HashMap::new();
    for p in g.shards.iter().flat_map(|s| &s.partitions) {
        let e = hw
            .entry((p.topic.as_str(), p.partition))
            .or_insert((p.leader, p.high_watermark));
        if p.leader && !e.0 {
            *e = (true, p.high_watermark);
        }
    }
    let mut committed = Family::new(
        "ringtail_consumer_group_committed_offset",
        "Offset committed by the group for the partition.",
        Gauge,
    );
    let mut lag = Family::new(
        "ringtail_consumer_group_lag_messages",
        "High watermark minus the group's committed offset, for partitions with a replica on this broker.",
        Gauge,
    );
    let mut state = Family::new(
        "ringtail_consumer_group_state",
        "1 for the group's current state, for groups coordinated by this broker.",
        Gauge,
    );
    let mut members = Family::new(
        "ringtail_consumer_group_members",
        "Members of the group.",
        Gauge,
    );
    for grp in g.shards.iter().flat_map(|s| &s.groups) {
        let gl = vec![("group", grp.group.clone())];
        state.gauge(with(gl.clone(), &[("state", grp.state.to_string())]), 1.0);
        members.gauge(gl.clone(), grp.members as f64);
        for (topic, partition, offset) in &grp.offsets {
            let l = with(
                gl.clone(),
                &[
                    ("topic", topic.clone()),
                    ("partition", partition.to_string()),
                ],
            );
            committed.gauge(l.clone(), *offset as f64);
            if let Some((_, high)) = hw.get(&(topic.as_str(), *partition)) {
                lag.gauge(l, (*high - *offset).max(0) as f64);
            }
        }
    }
    vec![committed, lag, state, members]
}

#[cfg(test)]
mod tests;
