//! Kafka wire helpers for the load generator: request framing for pipelined
//! connections, record batches, topic set-up and the broker's facts.

use std::io::{Read, Write};
use std::net::TcpStream;

use anyhow::{bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use serde::Serialize;

use crate::client::Client;

pub const PRODUCE_VERSION: i16 = 8;
pub const FETCH_VERSION: i16 = 11;
pub const LIST_OFFSETS_VERSION: i16 = 5;
const CLIENT_ID: &str = "ringtail-bench";

pub fn compression(name: &str) -> Result<Compression> {
    Ok(match name {
        "none" => Compression::None,
        "gzip" => Compression::Gzip,
        "snappy" => Compression::Snappy,
        "lz4" => Compression::Lz4,
        "zstd" => Compression::Zstd,
        other => bail!("unknown compression {other:?}"),
    })
}

/// What the broker said about itself, recorded in the result.
#[derive(Debug, Clone, Serialize, Default)]
pub struct BrokerInfo {
    pub cluster_id: Option<String>,
    pub brokers: Vec<String>,
    pub api_versions: Vec<(i16, i16, i16)>,
}

impl BrokerInfo {
    pub fn probe(bootstrap: &str) -> Result<BrokerInfo> {
        let mut c = Client::connect(bootstrap, CLIENT_ID)?;
        let versions: ApiVersionsResponse = c.call(
            ApiKey::ApiVersions,
            3,
            &ApiVersionsRequest::default()
                .with_client_software_name(StrBytes::from_static_str("ringtail-bench"))
                .with_client_software_version(StrBytes::from_static_str("1")),
        )?;
        let md: MetadataResponse = c.call(
            ApiKey::Metadata,
            7,
            &MetadataRequest::default().with_topics(Some(Vec::new())),
        )?;
        Ok(BrokerInfo {
            cluster_id: md.cluster_id.map(|c| c.to_string()),
            brokers: md
                .brokers
                .iter()
                .map(|b| format!("{}@{}:{}", b.node_id.0, b.host.as_str(), b.port))
                .collect(),
            api_versions: versions
                .api_keys
                .iter()
                .map(|k| (k.api_key, k.min_version, k.max_version))
                .collect(),
        })
    }
}

/// Creates the topic when missing, with `configs`; returns its partition
/// ids. With `configs`, an existing topic is an error (its configs would
/// not be the ones asked for).
pub fn ensure_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    configs: &[(String, String)],
) -> Result<Vec<i32>> {
    let mut c = Client::connect(bootstrap, CLIENT_ID)?;
    let name = TopicName(StrBytes::from_string(topic.to_string()));
    let create = CreateTopicsRequest::default()
        .with_timeout_ms(30_000)
        .with_topics(vec![create_topics_request::CreatableTopic::default()
            .with_name(name.clone())
            .with_num_partitions(partitions)
            .with_replication_factor(1)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        create_topics_request::CreatableTopicConfig::default()
                            .with_name(StrBytes::from_string(k.clone()))
                            .with_value(Some(StrBytes::from_string(v.clone())))
                    })
                    .collect(),
            )]);
    let created: CreateTopicsResponse = c.call(ApiKey::CreateTopics, 4, &create)?;
    let code = created.topics.first().map_or(0, |t| t.error_code);
    if code == 36 && !configs.is_empty() {
        bail!("topic {topic} exists: --topic-config applies only to a topic the run creates");
    }
    if code != 0 && code != 36 {
        let message = created
            .topics
            .first()
            .and_then(|t| t.error_message.as_ref())
            .map_or(String::new(), |m| format!(" ({m})"));
        bail!("creating topic {topic}: error code {code}{message}");
    }
    for _ in 0..50 {
        let req = MetadataRequest::default().with_topics(Some(vec![
            metadata_request::MetadataRequestTopic::default().with_name(Some(name.clone())),
        ]));
        let md: MetadataResponse = c.call(ApiKey::Metadata, 7, &req)?;
        if let Some(t) = md.topics.first() {
            if t.error_code == 0
                && !t.partitions.is_empty()
                && t.partitions.iter().all(|p| p.leader_id.0 >= 0)
            {
                let mut ids: Vec<i32> = t.partitions.iter().map(|p| p.partition_index).collect();
                ids.sort_unstable();
                if leaders_answer(&mut c, &name, &ids)? {
                    return Ok(ids);
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    bail!("topic {topic} has no leaders")
}

/// One framed request ready to write.
/// Whether every partition answers ListOffsets without error: a new topic's
/// leaders can be named in metadata before they take requests (Kafka then
/// answers NOT_LEADER_OR_FOLLOWER for a moment).
fn leaders_answer(c: &mut Client, name: &TopicName, partitions: &[i32]) -> Result<bool> {
    use list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(name.clone())
            .with_partitions(
                partitions
                    .iter()
                    .map(|p| {
                        ListOffsetsPartition::default()
                            .with_partition_index(*p)
                            .with_timestamp(-1)
                    })
                    .collect(),
            )]);
    let resp: ListOffsetsResponse = c.call(ApiKey::ListOffsets, LIST_OFFSETS_VERSION, &req)?;
    let ok = resp
        .topics
        .iter()
        .flat_map(|t| &t.partitions)
        .filter(|p| p.error_code == 0)
        .count();
    Ok(ok == partitions.len())
}

/// Kafka's murmur2 hash, which its default partitioner applies to keys.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, b) in tail.iter().enumerate().rev() {
            h ^= (*b as u32) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for `key`.
pub fn partition_for_key(key: &[u8], partitions: usize) -> usize {
    (murmur2(key) & 0x7fff_ffff) as usize % partitions.max(1)
}

pub fn frame<Req: Encodable>(
    api_key: ApiKey,
    version: i16,
    correlation: i32,
    req: &Req,
) -> Result<BytesMut> {
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
    let header_version = api_key.request_header_version(version);
    let size = 4 + header.compute_size(header_version)? + req.compute_size(version)?;
    let mut buf = BytesMut::with_capacity(size);
    buf.put_i32(0);
    header.encode(&mut buf, header_version)?;
    req.encode(&mut buf, version)?;
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf)
}

/// Reads one response frame and decodes it.
pub fn read_response<Resp: Decodable>(
    stream: &mut TcpStream,
    api_key: ApiKey,
    version: i16,
) -> Result<(i32, Resp)> {
    let (correlation, resp, _) = read_response_into(stream, api_key, version, &mut Vec::new())?;
    Ok((correlation, resp))
}

/// Reads one response into `spare`'s memory (no zeroing, no fresh pages)
/// and decodes it; also returns the body, whose memory the caller can take
/// back with [`reclaim`] once every piece of the response is dropped.
pub fn read_response_into<Resp: Decodable>(
    stream: &mut TcpStream,
    api_key: ApiKey,
    version: i16,
    spare: &mut Vec<u8>,
) -> Result<(i32, Resp, Bytes)> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = i32::from_be_bytes(len).max(0) as usize;
    if len > crate::client::MAX_RESPONSE_BYTES {
        bail!("response of {len} bytes");
    }
    spare.clear();
    let read = (&mut *stream).take(len as u64).read_to_end(spare)?;
    if read < len {
        bail!("connection closed inside a response");
    }
    let body = Bytes::from(std::mem::take(spare));
    let mut rest = body.clone();
    let header = ResponseHeader::decode(&mut rest, api_key.response_header_version(version))?;
    Ok((
        header.correlation_id,
        Resp::decode(&mut rest, version)?,
        body,
    ))
}

/// The memory of a response body nothing else refers to any more.
pub fn reclaim(body: Bytes) -> Option<Vec<u8>> {
    body.try_into_mut().ok().map(Vec::from)
}

pub fn connect(bootstrap: &str) -> Result<TcpStream> {
    let s = TcpStream::connect(bootstrap).with_context(|| format!("connecting to {bootstrap}"))?;
    s.set_nodelay(true)?;
    Ok(s)
}

pub fn send(stream: &mut TcpStream, buf: &[u8]) -> Result<()> {
    stream.write_all(buf)?;
    Ok(())
}

/// A record batch of `values` with optional keys, timestamped now.
pub fn batch(values: &[Bytes], keys: &[Option<Bytes>], compression: Compression) -> Result<Bytes> {
    let ts = crate::group::coordinator::now_ms();
    let records: Vec<Record> = values
        .iter()
        .zip(keys)
        .enumerate()
        .map(|(i, (v, k))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32,
            timestamp: ts,
            key: k.clone(),
            value: Some(v.clone()),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )?;
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas() {
        // Values printed by org.apache.kafka.common.utils.Utils.murmur2.
        for (key, hash, partition_of_8) in [
            ("21", -973932308, 4),
            ("foobar", -790332482, 6),
            ("a-little-bit-long-string", -985981536, 0),
            ("abc", 479470107, 3),
            ("key-0", 29210041, 1),
            ("key-12345", -952703915, 5),
            ("", 275646681, 1),
        ] {
            assert_eq!(murmur2(key.as_bytes()), hash, "{key:?}");
            assert_eq!(
                partition_for_key(key.as_bytes(), 8),
                partition_of_8,
                "{key:?}"
            );
        }
    }
}
