//! The fetch response, encoded here rather than by the codec so that record
//! sets are written from the buffers they were read into, without a copy.
//!
//! Built and encoded on the connection's shard; the response owns its
//! record sets and the fetch budget they are counted against.

use bytes::{BufMut, BytesMut};

use super::ReadResult;
use crate::partition::epochs::EpochEnd;
use crate::protocol::FrameBuilder;
use crate::record::RecordSet;
use crate::shard::Grant;

/// A fetch response. Encoded here rather than by the codec so that record
/// sets are written from the buffers they were read into; every field the
/// codec would write for these values is written the same way (tested
/// against the codec for every version served).
pub struct FetchReply {
    pub(super) topics: Vec<TopicReply>,
    /// The fetch budget held by the record sets.
    pub(super) grant: Option<Grant>,
}

pub(super) struct TopicReply {
    pub(super) name: String,
    pub(super) topic_id: uuid::Uuid,
    pub(super) partitions: Vec<PartitionReply>,
}

pub(super) struct PartitionReply {
    index: i32,
    error_code: i16,
    high_watermark: i64,
    log_start_offset: i64,
    diverging: Option<EpochEnd>,
    records: RecordSet,
}

impl PartitionReply {
    pub(super) fn new(index: i32, result: ReadResult) -> PartitionReply {
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
    /// Counts each partition's error code for the metrics.
    pub fn count_errors(&self) {
        let key = kafka_protocol::messages::ApiKey::Fetch as i16;
        for p in self.topics.iter().flat_map(|t| &t.partitions) {
            crate::metrics::request_error(key, p.error_code);
        }
    }

    /// The budget held by the record sets, to be kept until they are sent.
    pub fn take_grant(&mut self) -> Option<Grant> {
        self.grant.take()
    }

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
    use kafka_protocol::ResponseError;

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
            grant: None,
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
