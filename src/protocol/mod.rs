//! Kafka protocol: frame decoding, dispatch per API key with the version
//! ranges this broker serves, response encoding, and the one place where
//! internal errors become Kafka error codes. No I/O here: handlers call into
//! shards and partitions.

mod alter_configs;
mod api_versions;
mod cluster_admin;
mod configs;
mod delete_records;
mod errors;
mod fetch;
pub mod groups;
mod leader_epoch;
mod list_offsets;
mod log_dirs;
mod metadata;
mod produce;
mod producer_id;
pub mod schema;
mod topics;

use std::rc::Rc;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::ResponseError;
use thiserror::Error;

use crate::cluster::controller::ControllerError;
use crate::partition::PartitionError;
use crate::record::BatchError;
use crate::shard::{Grant, Shard};

/// API keys served, with the version range for each. Lower bounds are the
/// codec's; upper bounds are the newest versions whose semantics are built.
pub const SUPPORTED_APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 12),
    (ApiKey::Fetch, 4, 16),
    (ApiKey::ListOffsets, 1, 8),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::ElectLeaders, 0, 2),
    (ApiKey::DescribeQuorum, 0, 2),
    (ApiKey::DescribeCluster, 0, 2),
];

pub fn supported_range(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED_APIS
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, min, max)| (*min, *max))
}

#[derive(Debug, Error)]
pub enum ProtocolError {
    #[error("unknown API key {0}")]
    UnknownApiKey(i16),
    #[error("API {0:?} version {1} is not supported")]
    UnsupportedVersion(ApiKey, i16),
    #[error("malformed {0:?} request: {1}")]
    Malformed(ApiKey, String),
    #[error("request frame of {0} bytes is too short for an API key and version")]
    ShortFrame(usize),
    #[error("malformed {api_key:?} v{version} request refused before decoding: {source}")]
    OutOfBounds {
        api_key: ApiKey,
        version: i16,
        source: schema::BoundsError,
    },
}

/// A request read off a connection, decoded on the connection's shard.
pub struct Decoded {
    pub api_key: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    /// None for an ApiVersions request of a version this broker doesn't know:
    /// it is answered with a v0 body and UNSUPPORTED_VERSION.
    pub request: Option<RequestKind>,
}

/// Decodes one request frame (without its length prefix). An error closes
/// the connection, as Kafka does. Every frame is first walked against the
/// request's schema (`schema::check_request`) so the codec only ever sees
/// counts and lengths that fit in the frame.
pub fn decode(mut frame: Bytes) -> Result<Decoded, ProtocolError> {
    if frame.len() < 4 {
        return Err(ProtocolError::ShortFrame(frame.len()));
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let api_key = ApiKey::try_from(raw_key).map_err(|_| ProtocolError::UnknownApiKey(raw_key))?;
    let Some((min, max)) = supported_range(api_key) else {
        return Err(ProtocolError::UnsupportedVersion(api_key, version));
    };
    let malformed = |e: anyhow::Error| ProtocolError::Malformed(api_key, e.to_string());
    let refused = |source: schema::BoundsError| {
        tracing::warn!(?api_key, version, error = %source, "malformed request refused");
        ProtocolError::OutOfBounds {
            api_key,
            version,
            source,
        }
    };
    if api_key == ApiKey::ApiVersions && !(min..=max).contains(&version) {
        // Kafka parses the header of an unknown ApiVersions version as v1
        // (no tagged fields) so it can answer with its supported versions.
        schema::check_header(&frame, 1).map_err(refused)?;
        let header = RequestHeader::decode(&mut frame, 1).map_err(malformed)?;
        return Ok(Decoded {
            api_key,
            version,
            header,
            request: None,
        });
    }
    if !(min..=max).contains(&version) {
        return Err(ProtocolError::UnsupportedVersion(api_key, version));
    }
    let header_version = api_key.request_header_version(version);
    schema::check_request(&frame, header_version).map_err(refused)?;
    let header = RequestHeader::decode(&mut frame, header_version).map_err(malformed)?;
    let request = RequestKind::decode(api_key, &mut frame, version).map_err(malformed)?;
    Ok(Decoded {
        api_key,
        version,
        header,
        request: Some(request),
    })
}

/// Serves one request; `None` means no response (produce with acks=0).
pub async fn handle(
    shard: Rc<Shard>,
    d: Decoded,
    peer: Option<std::net::SocketAddr>,
) -> Option<ResponseFrame> {
    let client = groups::Client {
        client_id: d
            .header
            .client_id
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_default(),
        host: peer.map(|p| format!("/{}", p.ip())).unwrap_or_default(),
    };
    let correlation_id = d.header.correlation_id;
    let (response, version) = match d.request {
        None => (ResponseKind::ApiVersions(api_versions::unsupported()), 0),
        // Fetch responses keep their record sets by reference.
        Some(RequestKind::Fetch(r)) => {
            let mut reply = fetch::handle(&shard, r, d.version).await;
            reply.count_errors();
            let mut frame = FrameBuilder::new(ApiKey::Fetch, d.version, correlation_id);
            reply.encode(&mut frame, d.version);
            let mut frame = frame.finish();
            frame.memory = reply.take_grant();
            return Some(frame);
        }
        Some(request) => (
            dispatch(&shard, request, d.version, client).await?,
            d.version,
        ),
    };
    errors::count(d.api_key, &response);
    let body = encode_response(d.api_key, version, correlation_id, &response)?;
    Some(ResponseFrame::from_encoded(body))
}

/// Most bytes the response to `d` may take while it waits to be written, as
/// far as the request says: a fetch's response limit; other responses are
/// small and counted once built.
pub fn response_bytes_bound(d: &Decoded) -> usize {
    match &d.request {
        Some(RequestKind::Fetch(r)) => fetch::response_bytes_bound(r),
        _ => 0,
    }
}

/// A response frame ready to write: the 4-byte length prefix, the header
/// and the body, as parts written in order with one vectored send.
#[derive(Debug, Default)]
pub struct ResponseFrame {
    pub parts: Vec<Bytes>,
    /// The budget its record sets are counted against, given back once the
    /// frame is written or dropped.
    pub memory: Option<Grant>,
}

impl ResponseFrame {
    /// A frame encoded in one buffer whose first 4 bytes are reserved for
    /// the length.
    fn from_encoded(mut out: BytesMut) -> ResponseFrame {
        let len = (out.len() - 4) as i32;
        (&mut out[..4]).put_i32(len);
        ResponseFrame {
            parts: vec![out.freeze()],
            memory: None,
        }
    }

    pub fn len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Builds a [`ResponseFrame`]: fields are encoded into a head buffer, record
/// sets are appended by reference (small ones copied into the head).
pub struct FrameBuilder {
    parts: Vec<Bytes>,
    head: BytesMut,
}

impl FrameBuilder {
    fn new(api_key: ApiKey, version: i16, correlation_id: i32) -> FrameBuilder {
        let mut head = BytesMut::with_capacity(1024);
        ResponseHeader::default()
            .with_correlation_id(correlation_id)
            .encode(&mut head, api_key.response_header_version(version))
            .expect("a response header always encodes");
        FrameBuilder {
            parts: Vec::new(),
            head,
        }
    }

    /// The buffer that fields are encoded into.
    pub fn head(&mut self) -> &mut BytesMut {
        &mut self.head
    }

    pub fn records(&mut self, set: &crate::record::RecordSet) {
        for part in set.parts() {
            if part.len() < crate::record::COALESCE_BATCH_BYTES {
                self.head.extend_from_slice(part);
            } else {
                if !self.head.is_empty() {
                    self.parts.push(self.head.split().freeze());
                }
                self.parts.push(part.clone());
            }
        }
    }

    pub fn finish(mut self) -> ResponseFrame {
        if !self.head.is_empty() {
            self.parts.push(self.head.split().freeze());
        }
        let len: usize = self.parts.iter().map(Bytes::len).sum();
        let prefix = Bytes::copy_from_slice(&(len as i32).to_be_bytes());
        self.parts.insert(0, prefix);
        ResponseFrame {
            parts: self.parts,
            memory: None,
        }
    }
}

async fn dispatch(
    shard: &Rc<Shard>,
    request: RequestKind,
    v: i16,
    client: groups::Client,
) -> Option<ResponseKind> {
    Some(match request {
        RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(api_versions::handle(v)),
        RequestKind::Metadata(r) => ResponseKind::Metadata(metadata::handle(shard, r, v).await),
        RequestKind::Produce(r) => ResponseKind::Produce(produce::handle(shard, r, v).await?),
        RequestKind::ListOffsets(r) => {
            ResponseKind::ListOffsets(list_offsets::handle(shard, r, v).await)
        }
        RequestKind::CreateTopics(r) => {
            ResponseKind::CreateTopics(topics::create(shard, r, v).await)
        }
        RequestKind::DeleteTopics(r) => {
            ResponseKind::DeleteTopics(topics::delete(shard, r, v).await)
        }
        RequestKind::CreatePartitions(r) => {
            ResponseKind::CreatePartitions(topics::create_partitions(shard, r, v).await)
        }
        RequestKind::DescribeConfigs(r) => {
            ResponseKind::DescribeConfigs(configs::describe(shard, r, v))
        }
        RequestKind::IncrementalAlterConfigs(r) => {
            ResponseKind::IncrementalAlterConfigs(alter_configs::incremental(shard, r, v).await)
        }
        RequestKind::AlterConfigs(r) => {
            ResponseKind::AlterConfigs(alter_configs::legacy(shard, r, v).await)
        }
        RequestKind::DeleteRecords(r) => {
            ResponseKind::DeleteRecords(delete_records::handle(shard, r, v).await)
        }
        RequestKind::DescribeLogDirs(r) => {
            ResponseKind::DescribeLogDirs(log_dirs::describe(shard, r, v).await)
        }
        RequestKind::InitProducerId(r) => {
            ResponseKind::InitProducerId(producer_id::handle(shard, r, v).await)
        }
        RequestKind::OffsetForLeaderEpoch(r) => {
            ResponseKind::OffsetForLeaderEpoch(leader_epoch::handle(shard, r, v).await)
        }
        RequestKind::FindCoordinator(r) => {
            ResponseKind::FindCoordinator(groups::find_coordinator(shard, r, v))
        }
        RequestKind::JoinGroup(r) => {
            ResponseKind::JoinGroup(groups::join_group(shard, r, v, client).await)
        }
        RequestKind::SyncGroup(r) => ResponseKind::SyncGroup(groups::sync_group(shard, r, v).await),
        RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(groups::heartbeat(shard, r, v).await),
        RequestKind::LeaveGroup(r) => {
            ResponseKind::LeaveGroup(groups::leave_group(shard, r, v).await)
        }
        RequestKind::OffsetCommit(r) => {
            ResponseKind::OffsetCommit(groups::offset_commit(shard, r, v).await)
        }
        RequestKind::OffsetFetch(r) => {
            ResponseKind::OffsetFetch(groups::offset_fetch(shard, r, v).await)
        }
        RequestKind::ListGroups(r) => {
            ResponseKind::ListGroups(groups::list_groups(shard, r, v).await)
        }
        RequestKind::DescribeGroups(r) => {
            ResponseKind::DescribeGroups(groups::describe_groups(shard, r, v).await)
        }
        RequestKind::DeleteGroups(r) => {
            ResponseKind::DeleteGroups(groups::delete_groups(shard, r, v).await)
        }
        RequestKind::OffsetDelete(r) => {
            ResponseKind::OffsetDelete(groups::offset_delete(shard, r, v).await)
        }
        RequestKind::DescribeCluster(r) => {
            ResponseKind::DescribeCluster(cluster_admin::describe_cluster(shard, r, v).await)
        }
        RequestKind::ElectLeaders(r) => {
            ResponseKind::ElectLeaders(cluster_admin::elect_leaders(shard, r, v).await)
        }
        RequestKind::DescribeQuorum(r) => {
            ResponseKind::DescribeQuorum(cluster_admin::describe_quorum(shard, r, v).await)
        }
        other => {
            tracing::warn!(request = ?std::mem::discriminant(&other), "request without handler");
            return None;
        }
    })
}

fn encode_response(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    response: &ResponseKind,
) -> Option<BytesMut> {
    let mut out = BytesMut::with_capacity(256);
    out.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let header_version = if api_key == ApiKey::ApiVersions {
        0
    } else {
        api_key.response_header_version(version)
    };
    if let Err(e) = header
        .encode(&mut out, header_version)
        .and_then(|_| response.encode(&mut out, version))
    {
        tracing::error!(?api_key, version, error = %e, "encoding response");
        return None;
    }
    Some(out)
}

/// Maps a partition-level error to its Kafka error code.
pub fn partition_error_code(e: &PartitionError) -> ResponseError {
    match e {
        PartitionError::Batch(b) => batch_error_code(b),
        PartitionError::Log(crate::log::LogError::OffsetOutOfRange(_)) => {
            ResponseError::OffsetOutOfRange
        }
        // Retriable in every client, so producers wait for space to return.
        PartitionError::NoSpace => ResponseError::KafkaStorageError,
        PartitionError::Log(_) | PartitionError::Poisoned => ResponseError::KafkaStorageError,
        PartitionError::OutOfOrderSequence => ResponseError::OutOfOrderSequenceNumber,
        PartitionError::InvalidProducerEpoch => ResponseError::InvalidProducerEpoch,
        PartitionError::OffsetOutOfRange(_) => ResponseError::OffsetOutOfRange,
        PartitionError::Deleted => ResponseError::UnknownTopicOrPartition,
        PartitionError::NotLeaderOrFollower => ResponseError::NotLeaderOrFollower,
        PartitionError::NotEnoughReplicas => ResponseError::NotEnoughReplicas,
        PartitionError::NotEnoughReplicasAfterAppend => ResponseError::NotEnoughReplicasAfterAppend,
        PartitionError::Timeout => ResponseError::RequestTimedOut,
        PartitionError::FencedLeaderEpoch(_) => ResponseError::FencedLeaderEpoch,
        PartitionError::UnknownLeaderEpoch(_) => ResponseError::UnknownLeaderEpoch,
        PartitionError::OffsetMismatch { .. } => ResponseError::UnknownServerError,
    }
}

/// Maps a controller's refusal to its Kafka error code.
pub fn controller_error_code(e: &ControllerError) -> ResponseError {
    use ControllerError as C;
    match e {
        C::NotController => ResponseError::NotController,
        C::Timeout => ResponseError::RequestTimedOut,
        C::TopicAlreadyExists(_) => ResponseError::TopicAlreadyExists,
        C::InvalidTopic(_) => ResponseError::InvalidTopicException,
        C::UnknownTopicOrPartition(_) => ResponseError::UnknownTopicOrPartition,
        C::UnknownTopicId(_) => ResponseError::UnknownTopicId,
        C::InvalidPartitions(_) => ResponseError::InvalidPartitions,
        C::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor,
        C::InvalidReplicaAssignment(_) => ResponseError::InvalidReplicaAssignment,
        C::InvalidRequest(_) => ResponseError::InvalidRequest,
        C::InvalidConfig(_) => ResponseError::InvalidConfig,
        C::StaleBrokerEpoch(_) => ResponseError::StaleBrokerEpoch,
        C::UnknownBroker(_) => ResponseError::BrokerIdNotRegistered,
        C::FencedLeaderEpoch => ResponseError::FencedLeaderEpoch,
        C::InvalidUpdateVersion => ResponseError::InvalidUpdateVersion,
        C::NotLeaderOrFollower => ResponseError::NotLeaderOrFollower,
        C::IneligibleReplica(_) => ResponseError::IneligibleReplica,
        C::ElectionNotNeeded => ResponseError::ElectionNotNeeded,
        C::PreferredLeaderNotAvailable => ResponseError::PreferredLeaderNotAvailable,
        C::EligibleLeadersNotAvailable => ResponseError::EligibleLeadersNotAvailable,
    }
}

/// The code Kafka answers a refused batch with: CORRUPT_MESSAGE where its
/// framing, CRC or compressed payload is damaged (Kafka itself answers
/// UNKNOWN_SERVER_ERROR for a payload its codec cannot read; the batch, not
/// the broker, is at fault), INVALID_RECORD for what Kafka's LogValidator
/// refuses, and the specific codes for size, codec and timestamps.
fn batch_error_code(e: &BatchError) -> ResponseError {
    match e {
        BatchError::BadCrc { .. }
        | BatchError::BadLength(_)
        | BatchError::CorruptCompressed { .. } => ResponseError::CorruptMessage,
        // Kafka refuses magic 0 and 1 in a v3+ produce as invalid, and
        // any other magic as corrupt.
        BatchError::BadMagic(0 | 1) => ResponseError::InvalidRecord,
        BatchError::BadMagic(_) => ResponseError::CorruptMessage,
        // Kafka checks the size again after recompression
        // (RecordTooLargeException).
        BatchError::TooLarge(_) | BatchError::RecompressedTooLarge { .. } => {
            ResponseError::MessageTooLarge
        }
        BatchError::UnsupportedCompression(_) => ResponseError::UnsupportedCompressionType,
        BatchError::InvalidTimestamp(_) => ResponseError::InvalidTimestamp,
        BatchError::Truncated(_)
        | BatchError::Invalid(_)
        | BatchError::DecompressedTooLarge { .. }
        | BatchError::BadRecord { .. } => ResponseError::InvalidRecord,
    }
}

pub fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}
