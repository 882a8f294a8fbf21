//! Metadata (key 3), v0-12: the live brokers, the active controller, and
//! every partition's leader, leader epoch, replicas, ISR and offline
//! replicas, from this broker's metadata image. Auto-creates requested
//! topics when allowed (through the controller), and says so when that fails.
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
use crate::cluster::image::{MetadataImage, TopicImage};
use crate::cluster::records::NO_LEADER;
use crate::cluster::valid_topic_name;
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

/// The live brokers of the image, as Metadata lists them.
pub fn live_brokers(image: &MetadataImage) -> Vec<MetadataResponseBroker> {
    image
        .brokers
        .values()
        .filter(|b| !b.fenced)
        .map(|b| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.registration.node_id))
                .with_host(str_bytes(&b.registration.host))
                .with_port(b.registration.port)
                .with_rack(b.registration.rack.as_deref().map(str_bytes))
        })
        .collect()
}

/// The controller id clients see: the active controller when it is a live
/// broker, else this broker, which forwards admin requests for them (as a
/// KRaft broker does). Never -1: clients with no controller to send admin
/// requests to would wait instead of getting an answer.
pub async fn controller_id(shard: &Rc<Shard>) -> i32 {
    let leader = shard
        .invoke_on(0, |s: Rc<Shard>| async move { s.cluster().leader() })
        .await
        .ok()
        .flatten();
    let image = shard.image();
    match leader {
        Some(id) if image.broker(id).is_some_and(|b| !b.fenced) => id,
        _ => shard.node_id,
    }
}

pub async fn handle(shard: &Rc<Shard>, req: MetadataRequest, version: i16) -> MetadataResponse {
    let image = shard.image();
    let mut response = MetadataResponse::default()
        .with_brokers(live_brokers(&image))
        .with_cluster_id(image.cluster_id.as_deref().map(str_bytes))
        .with_controller_id(BrokerId(controller_id(shard).await));
    // v0: an empty list means all topics; v1+: null means all topics.
    let requested: Option<Vec<_>> = match req.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(t),
    };
    let offline = offline_partitions(shard).await;
    let me = shard.node_id;
    let Some(requested) = requested else {
        response.topics = image
            .topics
            .values()
            .map(|t| topic_entry(&image, t, me, &offline))
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
            (None, false) => match image.topic_by_id(&t.topic_id) {
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
        let known = shard.image();
        let entry = match known.topic(&name) {
            Some(m) => Ok(topic_entry(&known, m, me, &offline)),
            None if auto_create => match topics::auto_create(shard, &name).await {
                Ok(()) => {
                    let now = shard.image();
                    match now.topic(&name) {
                        Some(m) => Ok(topic_entry(&now, m, me, &offline)),
                        // Created, not yet here: the client asks again.
                        None => Err(ResponseError::LeaderNotAvailable),
                    }
                }
                Err(e) => Err(e),
            },
            None => Err(ResponseError::UnknownTopicOrPartition),
        };
        match entry {
            Ok(e) => response.topics.push(e),
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
    image: &MetadataImage,
    t: &TopicImage,
    me: i32,
    offline: &HashSet<PartitionKey>,
) -> MetadataResponseTopic {
    let down = |r: &i32| image.broker(*r).is_none_or(|b| b.fenced);
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(&t.name))))
        .with_topic_id(t.id)
        .with_is_internal(t.internal)
        .with_partitions(
            t.partitions
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let index = i as i32;
                    let mut offline_replicas: Vec<BrokerId> = p
                        .replicas
                        .iter()
                        .filter(|r| down(r))
                        .map(|r| BrokerId(*r))
                        .collect();
                    let local_offline = offline.contains(&(t.name.clone(), index));
                    if local_offline && !offline_replicas.contains(&BrokerId(me)) {
                        offline_replicas.push(BrokerId(me));
                    }
                    let error = if local_offline && p.leader == me {
                        ResponseError::KafkaStorageError.code()
                    } else if p.leader == NO_LEADER {
                        ResponseError::LeaderNotAvailable.code()
                    } else {
                        0
                    };
                    MetadataResponsePartition::default()
                        .with_error_code(error)
                        .with_partition_index(index)
                        .with_leader_id(BrokerId(p.leader))
                        .with_leader_epoch(p.leader_epoch)
                        .with_replica_nodes(p.replicas.iter().map(|r| BrokerId(*r)).collect())
                        .with_isr_nodes(p.isr.iter().map(|r| BrokerId(*r)).collect())
                        .with_offline_replicas(offline_replicas)
                })
                .collect(),
        )
}
