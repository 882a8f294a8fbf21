//! Requests built field by field with the codec's own types, as a client
//! writes them: Produce with real record batches and Fetch over several
//! topics and partitions. Shared by the fuzz seeds and the walk's bench.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{
    FetchPartition, FetchRequest, FetchTopic, ForgottenTopic,
};
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::{ApiKey, BrokerId, RequestHeader, TopicName};
use kafka_protocol::protocol::{Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use uuid::Uuid;

/// One uncompressed v2 batch of `records` records with `value_bytes` values.
pub fn batch(records: usize, value_bytes: usize) -> Bytes {
    let records: Vec<Record> = (0..records)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32,
            timestamp: 1_700_000_000_000 + i as i64,
            key: Some(Bytes::from(format!("key-{i}"))),
            value: Some(Bytes::from(vec![(i % 251) as u8; value_bytes])),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, &records, &options).unwrap();
    buf.freeze()
}

fn frame(key: ApiKey, version: i16, body: &impl Encodable) -> Vec<u8> {
    let mut out = BytesMut::new();
    let mut header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("rdkafka")));
    let header_version = key.request_header_version(version);
    if header_version >= 2 {
        header
            .unknown_tagged_fields
            .insert(77, Bytes::from_static(b"hdr"));
    }
    header.encode(&mut out, header_version).unwrap();
    body.encode(&mut out, version).unwrap();
    out.to_vec()
}

fn topic(i: usize) -> TopicName {
    TopicName(StrBytes::from_string(format!("topic-{i}")))
}

/// Produce of `topics` x `partitions` partitions, each with `batch`.
pub fn produce(version: i16, topics: usize, partitions: usize, batch: &Bytes) -> Vec<u8> {
    let flexible = version >= 9;
    let topic_data = (0..topics)
        .map(|t| {
            let mut data = TopicProduceData::default()
                .with_name(topic(t))
                .with_partition_data(
                    (0..partitions)
                        .map(|p| {
                            let mut part = PartitionProduceData::default()
                                .with_index(p as i32)
                                .with_records(Some(batch.clone()));
                            if flexible {
                                part.unknown_tagged_fields
                                    .insert(50, Bytes::from_static(b"x"));
                            }
                            part
                        })
                        .collect(),
                );
            if flexible {
                data.unknown_tagged_fields.insert(60, Bytes::new());
            }
            data
        })
        .collect();
    let request = ProduceRequest::default()
        .with_transactional_id(None)
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(topic_data);
    frame(ApiKey::Produce, version, &request)
}

fn fetch_partition(version: i16, p: usize) -> FetchPartition {
    let mut part = FetchPartition::default()
        .with_partition(p as i32)
        .with_fetch_offset(1_000 + p as i64)
        .with_partition_max_bytes(1 << 20);
    if version >= 5 {
        part = part.with_log_start_offset(0);
    }
    if version >= 9 {
        part = part.with_current_leader_epoch(3);
    }
    if version >= 12 {
        part = part.with_last_fetched_epoch(2);
    }
    part
}

/// Fetch of `topics` x `partitions` partitions, with forgotten topics
/// (v7+), a rack (v11+), topic ids (v13+) and a cluster id tag (v12+).
pub fn fetch(version: i16, topics: usize, partitions: usize) -> Vec<u8> {
    let topics_data = (0..topics)
        .map(|t| {
            let mut ft = FetchTopic::default().with_partitions(
                (0..partitions)
                    .map(|p| fetch_partition(version, p))
                    .collect(),
            );
            if version >= 13 {
                ft = ft.with_topic_id(Uuid::from_u128(t as u128 + 1));
            } else {
                ft = ft.with_topic(topic(t));
            }
            ft
        })
        .collect();
    let mut request = FetchRequest::default()
        .with_max_wait_ms(500)
        .with_min_bytes(1)
        .with_max_bytes(50 << 20)
        .with_isolation_level(0)
        .with_topics(topics_data);
    if version <= 14 {
        request = request.with_replica_id(BrokerId(-1));
    }
    if version >= 7 {
        let mut forgotten = ForgottenTopic::default().with_partitions(vec![0, 1, 2]);
        if version >= 13 {
            forgotten = forgotten.with_topic_id(Uuid::from_u128(99));
        } else {
            forgotten = forgotten.with_topic(topic(99));
        }
        request = request
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_forgotten_topics_data(vec![forgotten]);
    }
    if version >= 11 {
        request = request.with_rack_id(StrBytes::from_static_str("rack-a"));
    }
    if version >= 12 {
        request = request.with_cluster_id(Some(StrBytes::from_static_str("ringtail-cluster")));
    }
    frame(ApiKey::Fetch, version, &request)
}
