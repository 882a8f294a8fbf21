//! Produce (key 0), v3-12: route each partition's records to its owner
//! shard, append there, answer once durable (acks=1/all), or not at all (acks=0).

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::produce_request::ProduceRequest;
use kafka_protocol::messages::produce_response::{
    PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};
use kafka_protocol::ResponseError;

use super::{partition_error_code, str_bytes};
use crate::cluster::image::TopicImage;
use crate::partition::{Acks, Appended};
use crate::record::{BatchHeader, Codec};
use crate::shard::Shard;
use std::time::Duration;

type PartitionResult = Result<Appended, (ResponseError, String)>;

/// Appends on the owner shard. Runs there.
async fn produce_on_owner(
    shard: Rc<Shard>,
    topic: String,
    index: i32,
    records: bytes::Bytes,
    acks: Acks,
    timeout: Duration,
) -> PartitionResult {
    let Some(partition) = shard.partition(&topic, index) else {
        let e = shard.missing_partition_error(&topic, index);
        return Err((e, e.to_string()));
    };
    let s = shard.clone();
    partition
        .produce(records, acks, timeout, move |p| s.mark_dirty(p))
        .await
        .map_err(|e| {
            tracing::debug!(topic, index, error = %e, "produce refused");
            (partition_error_code(&e), e.to_string())
        })
}

/// Refusals Kafka answers before the partition looks at the records.
fn early_error(
    topic: &str,
    acks: i16,
    version: i16,
    meta: Option<&TopicImage>,
    index: i32,
    records: Option<&Bytes>,
) -> Option<ResponseError> {
    if !matches!(acks, -1..=1) {
        return Some(ResponseError::InvalidRequiredAcks);
    }
    // Only the broker itself writes its internal topics (Kafka's
    // ReplicaManager refuses client appends to them), created yet or not.
    if topic == crate::cluster::CONSUMER_OFFSETS_TOPIC {
        return Some(ResponseError::InvalidTopicException);
    }
    let Some(meta) = meta.filter(|m| (0..m.partition_count()).contains(&index)) else {
        return Some(ResponseError::UnknownTopicOrPartition);
    };
    if meta.internal {
        return Some(ResponseError::InvalidTopicException);
    }
    let Some(records) = records.filter(|r| !r.is_empty()) else {
        return Some(ResponseError::InvalidRecord);
    };
    // zstd arrived with produce v7 (Kafka's ProduceRequest.validateRecords).
    let codec = BatchHeader::parse(records).map(|h| h.compression_codec());
    if version < 7 && codec == Ok(Codec::Zstd as i16) {
        return Some(ResponseError::UnsupportedCompressionType);
    }
    None
}

pub async fn handle(
    shard: &Rc<Shard>,
    req: ProduceRequest,
    version: i16,
) -> Option<ProduceResponse> {
    let acks = req.acks;
    let mode = match acks {
        0 => Acks::None,
        1 => Acks::Leader,
        _ => Acks::All,
    };
    let timeout = Duration::from_millis(req.timeout_ms.max(0) as u64);
    let table = shard.image();
    let mut topics = Vec::with_capacity(req.topic_data.len());
    let mut pending = Vec::new();
    for t in req.topic_data {
        let name = t.name.0.to_string();
        let meta = table.topic(&name);
        let mut parts = Vec::with_capacity(t.partition_data.len());
        for p in t.partition_data {
            let response = PartitionProduceResponse::default()
                .with_index(p.index)
                .with_base_offset(-1)
                .with_log_append_time_ms(-1)
                .with_log_start_offset(-1);
            let early = early_error(
                &name,
                acks,
                version,
                meta.map(|m| &**m),
                p.index,
                p.records.as_ref(),
            );
            if early.is_none() {
                let owner = shard.owner(&name, p.index);
                let (topic, index, records) =
                    (name.clone(), p.index, p.records.clone().expect("checked"));
                pending.push((
                    topics.len(),
                    parts.len(),
                    shard.invoke_on(owner, move |s| {
                        produce_on_owner(s, topic, index, records, mode, timeout)
                    }),
                ));
            }
            parts.push(response.with_error_code(early.map_or(0, |e| e.code())));
        }
        topics.push(
            TopicProduceResponse::default()
                .with_name(t.name)
                .with_partition_responses(parts),
        );
    }
    let (slots, futures): (Vec<_>, Vec<_>) =
        pending.into_iter().map(|(t, p, f)| ((t, p), f)).unzip();
    let results = futures::future::join_all(futures).await;
    if acks == 0 {
        return None;
    }
    for ((t, p), result) in slots.into_iter().zip(results) {
        let slot = &mut topics[t].partition_responses[p];
        let gone = ResponseError::BrokerNotAvailable;
        match result.unwrap_or(Err((gone, gone.to_string()))) {
            Ok(a) => {
                slot.base_offset = a.base_offset;
                slot.log_start_offset = a.log_start_offset;
            }
            Err((e, message)) => {
                slot.error_code = e.code();
                slot.error_message = Some(str_bytes(&message));
            }
        }
    }
    Some(ProduceResponse::default().with_responses(topics))
}
