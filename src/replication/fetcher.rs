//! One follower fetch loop: every partition a shard follows from one leader
//! broker, fetched together in one Fetch (v12, with each partition's last
//! fetched epoch for the leader's divergence check) over one connection,
//! one request in flight. Batches are appended as the leader wrote them;
//! the next fetch waits until they are durable here, so the fetch offset
//! the leader sees is what this broker holds durably. A diverging epoch in
//! the answer cuts the local tail first.
//!
//! Runs on its shard; the partitions are that shard's.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::{Rc, Weak};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::fetch_response::{FetchResponse, PartitionData};
use kafka_protocol::messages::{ApiKey, BrokerId, RequestHeader, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::ResponseError;

use crate::cluster::records::NodeId;
use crate::partition::epochs::EpochEnd;
use crate::partition::{Partition, PartitionError};
use crate::shard::{PartitionKey, Shard};

/// Fetch version the fetch loops speak (flexible, with last fetched epoch
/// and diverging epoch, topics by name).
const FETCH_VERSION: i16 = 12;
/// Bytes a response may exceed the asked maximum by (headers, one batch
/// larger than the limit).
const RESPONSE_SLACK_BYTES: usize = 8 * 1024 * 1024;

pub struct Fetcher {
    leader: NodeId,
    shard: Weak<Shard>,
    partitions: RefCell<BTreeMap<PartitionKey, Rc<Partition>>>,
    wake: LocalSender<()>,
    next_correlation: Cell<i32>,
}

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("leader {0} has no address in the metadata")]
    NoAddress(NodeId),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("codec: {0}")]
    Codec(String),
}

impl Fetcher {
    pub fn start(shard: &Rc<Shard>, leader: NodeId) -> Rc<Fetcher> {
        let (wake, rx) = local_channel::new_bounded(1);
        let fetcher = Rc::new(Fetcher {
            leader,
            shard: Rc::downgrade(shard),
            partitions: RefCell::new(BTreeMap::new()),
            wake,
            next_correlation: Cell::new(1),
        });
        let f = fetcher.clone();
        glommio::spawn_local(async move { f.run(rx).await }).detach();
        fetcher
    }

    pub fn add(&self, part: Rc<Partition>) {
        let key = (part.topic.clone(), part.index);
        let new = self.partitions.borrow_mut().insert(key, part).is_none();
        if new {
            let _ = self.wake.try_send(());
        }
    }

    pub fn remove(&self, key: &PartitionKey) {
        self.partitions.borrow_mut().remove(key);
    }

    async fn run(self: Rc<Self>, rx: LocalReceiver<()>) {
        let mut conn: Option<TcpStream> = None;
        loop {
            let Some(shard) = self.shard.upgrade() else {
                return;
            };
            if shard.shutting_down.get() {
                return;
            }
            let backoff = Duration::from_millis(shard.config.replica_fetch_backoff_ms);
            if self.partitions.borrow().is_empty() {
                conn = None;
                let timer = glommio::timer::sleep(backoff);
                let bell = rx.recv();
                futures::pin_mut!(timer, bell);
                futures::future::select(timer, bell).await;
                continue;
            }
            if let Err(e) = self.round(&shard, &mut conn).await {
                tracing::debug!(leader = self.leader, error = %e, "follower fetch failed; backing off");
                conn = None;
                glommio::timer::sleep(backoff).await;
            }
        }
    }

    /// One fetch: send, answer, append, wait until durable.
    async fn round(
        &self,
        shard: &Rc<Shard>,
        conn: &mut Option<TcpStream>,
    ) -> Result<(), FetchError> {
        if conn.is_none() {
            *conn = Some(self.connect(shard).await?);
        }
        let stream = conn.as_mut().expect("connected");
        let parts: Vec<Rc<Partition>> = self.partitions.borrow().values().cloned().collect();
        let request = self.request(shard, &parts);
        let correlation = self.next_correlation.get();
        self.next_correlation.set(correlation.wrapping_add(1));
        send(stream, &request, correlation, shard.node_id).await?;
        let limit = shard.config.replica_fetch_response_max_bytes + RESPONSE_SLACK_BYTES;
        let response = receive(stream, correlation, limit).await?;
        let mut any_error = false;
        let mut appended = Vec::new();
        for topic in response.responses {
            for p in topic.partitions {
                let key = (topic.topic.0.to_string(), p.partition_index);
                let Some(part) = parts.iter().find(|x| (x.topic.clone(), x.index) == key) else {
                    continue;
                };
                // A partition handed to another leader meanwhile is left alone.
                if !self.partitions.borrow().contains_key(&key) {
                    continue;
                }
                match self.take(shard, part, p).await {
                    Ok(Some(end)) => appended.push((part.clone(), end)),
                    Ok(None) => {}
                    Err(e) => {
                        any_error = true;
                        tracing::debug!(topic = %part.topic, partition = part.index, error = %e, "follower fetch of a partition failed");
                    }
                }
            }
        }
        let durable = appended.iter().map(|(part, end)| part.wait_durable(*end));
        futures::future::join_all(durable).await;
        if any_error {
            glommio::timer::sleep(Duration::from_millis(shard.config.replica_fetch_backoff_ms))
                .await;
        }
        Ok(())
    }

    async fn connect(&self, shard: &Rc<Shard>) -> Result<TcpStream, FetchError> {
        let image = shard.image();
        let broker = image
            .broker(self.leader)
            .ok_or(FetchError::NoAddress(self.leader))?;
        let addr = format!("{}:{}", broker.registration.host, broker.registration.port);
        let stream = TcpStream::connect(addr.as_str()).await.map_err(|e| {
            FetchError::Io(std::io::Error::other(format!("connecting to {addr}: {e}")))
        })?;
        stream
            .set_nodelay(true)
            .map_err(|e| FetchError::Io(std::io::Error::other(e.to_string())))?;
        Ok(stream)
    }

    fn request(&self, shard: &Rc<Shard>, parts: &[Rc<Partition>]) -> FetchRequest {
        let mut topics: BTreeMap<String, Vec<FetchPartition>> = BTreeMap::new();
        for p in parts {
            topics.entry(p.topic.clone()).or_default().push(
                FetchPartition::default()
                    .with_partition(p.index)
                    .with_current_leader_epoch(p.leader_epoch())
                    .with_fetch_offset(p.log_end_offset())
                    .with_last_fetched_epoch(p.last_fetched_epoch())
                    .with_log_start_offset(p.log_start_offset())
                    .with_partition_max_bytes(shard.config.replica_fetch_max_bytes as i32),
            );
        }
        let config = &shard.config;
        FetchRequest::default()
            .with_replica_id(BrokerId(shard.node_id))
            .with_max_wait_ms(config.replica_fetch_wait_max_ms as i32)
            .with_min_bytes(1)
            .with_max_bytes(config.replica_fetch_response_max_bytes as i32)
            .with_session_epoch(-1)
            .with_topics(
                topics
                    .into_iter()
                    .map(|(name, partitions)| {
                        FetchTopic::default()
                            .with_topic(TopicName(StrBytes::from_string(name)))
                            .with_partitions(partitions)
                    })
                    .collect(),
            )
    }

    /// Handles one partition's answer; `Some(end)`: batches were appended
    /// up to `end`.
    async fn take(
        &self,
        shard: &Rc<Shard>,
        part: &Rc<Partition>,
        p: PartitionData,
    ) -> Result<Option<i64>, PartitionError> {
        if p.error_code != 0 {
            let error = ResponseError::try_from_code(p.error_code);
            if error == Some(ResponseError::OffsetOutOfRange)
                && part.log_end_offset() < p.log_start_offset
            {
                // Behind the leader's log start: start over from there.
                part.truncate_to(part.log_start_offset().min(p.log_start_offset))
                    .await?;
            }
            return Err(PartitionError::Log(crate::log::LogError::io(
                "fetch",
                &part.dir,
                std::io::Error::other(format!("leader answered {error:?}")),
            )));
        }
        if p.diverging_epoch.epoch >= 0 {
            let leader = EpochEnd {
                epoch: p.diverging_epoch.epoch,
                end_offset: p.diverging_epoch.end_offset,
            };
            let (offset, _) = part.truncation_for(leader);
            part.truncate_to(offset).await?;
            return Ok(None);
        }
        let mut end = None;
        if let Some(records) = p.records.filter(|r| !r.is_empty()) {
            let s = shard.clone();
            end = Some(
                part.append_replicated(records, move |x| s.mark_dirty(x))
                    .await?,
            );
        }
        part.leader_high_watermark(p.high_watermark);
        // Retention and DeleteRecords on the leader move its log start;
        // the follower's follows (as far as its own log reaches).
        part.advance_log_start(p.log_start_offset).await?;
        Ok(end)
    }
}

async fn send(
    stream: &mut TcpStream,
    request: &FetchRequest,
    correlation: i32,
    node_id: NodeId,
) -> Result<(), FetchError> {
    let mut buf = BytesMut::with_capacity(1024);
    buf.put_i32(0);
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Fetch as i16)
        .with_request_api_version(FETCH_VERSION)
        .with_correlation_id(correlation)
        .with_client_id(Some(StrBytes::from_string(format!(
            "ringtail-replica-{node_id}"
        ))));
    header
        .encode(
            &mut buf,
            ApiKey::Fetch.request_header_version(FETCH_VERSION),
        )
        .and_then(|_| request.encode(&mut buf, FETCH_VERSION))
        .map_err(|e| FetchError::Codec(e.to_string()))?;
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    stream.write_all(&buf).await?;
    Ok(())
}

async fn receive(
    stream: &mut TcpStream,
    correlation: i32,
    limit: usize,
) -> Result<FetchResponse, FetchError> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = i32::from_be_bytes(len);
    if len < 4 || len as usize > limit {
        return Err(FetchError::Codec(format!("response of {len} bytes")));
    }
    let mut body = Vec::new();
    (&mut *stream)
        .take(len as u64)
        .read_to_end(&mut body)
        .await?;
    if body.len() != len as usize {
        return Err(FetchError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    let mut body = Bytes::from(body);
    let header = ResponseHeader::decode(
        &mut body,
        ApiKey::Fetch.response_header_version(FETCH_VERSION),
    )
    .map_err(|e| FetchError::Codec(e.to_string()))?;
    if header.correlation_id != correlation {
        return Err(FetchError::Codec(format!(
            "correlation id {} does not match {correlation}",
            header.correlation_id
        )));
    }
    let response = FetchResponse::decode(&mut body, FETCH_VERSION)
        .map_err(|e| FetchError::Codec(e.to_string()))?;
    let _ = body.remaining();
    Ok(response)
}
