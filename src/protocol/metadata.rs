//! Metadata (key 3), v0-12: this broker, its topics and their partitions
//! (single node: leader and only replica of everything). Auto-creates
//! requested topics when allowed, and says so when that fails.
//!
//! A partition this broker cannot serve (fenced at recovery, not opened, or
//! poisoned by an I/O error) is listed with KAFKA_STORAGE_ERROR and this
//! broker in its offline replicas, as Kafka lists a partition whose log
//! directory is offline; the shards owning partitions are asked for them.

use std::collections::HashSet;
use std::rc::Rc;

use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::messages::metadata_response::{
    MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, TopicName};
use kafka_protocol::ResponseError;

use super::{str_bytes, topics};
use crate::cluster::{valid_topic_name, TopicMeta};
use crate::shard::{PartitionKey, Shard};

/// Partitions answering KAFKA_STORAGE_ERROR, gathered from every shard.
async fn offline_partitions(shard: &Rc<Shard>) -> HashSet<PartitionKey> {
    let asks = (0..shard.count)
        .map(|s| shard.invoke_on(s, |s: Rc<Shard>| async move { s.offline_partitions() }));
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .flatten()
        .collect()
}

pub async fn handle(shard: &Rc<Shard>, req: MetadataRequest, version: i16) -> MetadataResponse {
    let node = BrokerId(shard.config.node_id);
    let (host, port) = shard.config.advertised();
    let mut response = MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(node)
            .with_host(str_bytes(&host))
            .with_port(port)])
        .with_cluster_id(Some(str_bytes(&shard.config.cluster_id)))
        .with_controller_id(node);
    // v0: an empty list means all topics; v1+: null means all topics.
    let requested: Option<Vec<_>> = match req.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(t),
    };
    let offline = offline_partitions(shard).await;
    let Some(requested) = requested else {
        let table = shard.topics();
        response.topics = table
            .topics
            .values()
            .map(|t| topic_entry(t, node, &offline))
            .collect();
        return response;
    };
    let auto_create =
        shard.config.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
    // Each topic is answered once however often it is named, as Kafka does:
    // otherwise a small request naming one topic of 10,000 partitions over
    // and over would build a response thousands of times its own size.
    let mut answered = HashSet::new();
    for t in requested {
        let name = match (&t.name, t.topic_id.is_nil()) {
            (Some(n), _) => n.0.to_string(),
            (None, false) => match shard.topics().by_id(&t.topic_id) {
                Some(meta) => meta.name.clone(),
                None => {
                    response.topics.push(error_topic(
                        None,
                        t.topic_id,
                        ResponseError::UnknownTopicId,
                    ));
                    continue;
                }
            },
            (None, true) => continue,
        };
        if !answered.insert(name.clone()) {
            continue;
        }
        if !valid_topic_name(&name) {
            response.topics.push(error_topic(
                Some(&name),
                t.topic_id,
                ResponseError::InvalidTopicException,
            ));
            continue;
        }
        let meta = match shard.topics().get(&name).cloned() {
            Some(m) => Ok(m),
            None if auto_create => topics::auto_create(shard, &name).await,
            None => Err(ResponseError::UnknownTopicOrPartition),
        };
        match meta {
            Ok(m) => response.topics.push(topic_entry(&m, node, &offline)),
            Err(e) => response
                .topics
                .push(error_topic(Some(&name), t.topic_id, e)),
        }
    }
    response
}

fn error_topic(name: Option<&str>, id: uuid::Uuid, error: ResponseError) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_error_code(error.code())
        .with_name(name.map(|n| TopicName(str_bytes(n))))
        .with_topic_id(id)
}

fn topic_entry(
    t: &TopicMeta,
    node: BrokerId,
    offline: &HashSet<PartitionKey>,
) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(&t.name))))
        .with_topic_id(t.id)
        .with_is_internal(t.internal)
        .with_partitions(
            (0..t.partitions)
                .map(|p| {
                    let entry = MetadataResponsePartition::default()
                        .with_partition_index(p)
                        .with_leader_id(node)
                        .with_leader_epoch(0)
                        .with_replica_nodes(vec![node])
                        .with_isr_nodes(vec![node]);
                    if !offline.is_empty() && offline.contains(&(t.name.clone(), p)) {
                        entry
                            .with_error_code(ResponseError::KafkaStorageError.code())
                            .with_offline_replicas(vec![node])
                    } else {
                        entry
                    }
                })
                .collect(),
        )
}
