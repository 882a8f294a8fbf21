//! CreateTopics (key 19) v2-7, DeleteTopics (key 20) v1-6,
//! CreatePartitions (key 37) v0-3, and topic auto-creation. All changes go
//! through the controller shard (`Shard::change_topics`). A topic table that
//! could not be written, or a data directory below its free-space threshold,
//! is answered with KAFKA_STORAGE_ERROR, never a silent no.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::messages::create_partitions_request::CreatePartitionsRequest;
use kafka_protocol::messages::create_partitions_response::{
    CreatePartitionsResponse, CreatePartitionsTopicResult,
};
use kafka_protocol::messages::create_topics_request::CreateTopicsRequest;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicResult, CreateTopicsResponse,
};
use kafka_protocol::messages::delete_topics_request::DeleteTopicsRequest;
use kafka_protocol::messages::delete_topics_response::{
    DeletableTopicResult, DeleteTopicsResponse,
};
use kafka_protocol::messages::TopicName;
use kafka_protocol::ResponseError;

use super::str_bytes;
use crate::cluster::{valid_topic_name, TopicMeta, CONSUMER_OFFSETS_TOPIC};
use crate::config::MAX_PARTITIONS_PER_TOPIC;
use crate::shard::Shard;

/// Topic configs accepted at creation (others get INVALID_CONFIG).
const KNOWN_TOPIC_CONFIGS: &[&str] = &[
    "cleanup.policy",
    "compression.type",
    "delete.retention.ms",
    "file.delete.delay.ms",
    "flush.messages",
    "flush.ms",
    "index.interval.bytes",
    "max.compaction.lag.ms",
    "max.message.bytes",
    "message.timestamp.type",
    "min.cleanable.dirty.ratio",
    "min.compaction.lag.ms",
    "min.insync.replicas",
    "preallocate",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.index.bytes",
    "segment.jitter.ms",
    "segment.ms",
    "unclean.leader.election.enable",
    "message.downconversion.enable",
    "message.timestamp.difference.max.ms",
    "message.timestamp.before.max.ms",
    "message.timestamp.after.max.ms",
];

fn new_topic(name: &str, partitions: i32, configs: BTreeMap<String, String>) -> TopicMeta {
    TopicMeta {
        name: name.to_string(),
        id: uuid::Uuid::new_v4(),
        partitions,
        configs,
        internal: name == CONSUMER_OFFSETS_TOPIC,
    }
}

/// Creating a topic writes the topic table and the partitions' files:
/// refused while the data directory is below its free-space threshold.
fn refuse_when_full(shard: &Shard) -> Result<(), ResponseError> {
    if shard.space.is_full() {
        Err(ResponseError::KafkaStorageError)
    } else {
        Ok(())
    }
}

/// Creates `name` with the default partition count (Metadata auto-create).
pub async fn auto_create(shard: &Rc<Shard>, name: &str) -> Result<TopicMeta, ResponseError> {
    refuse_when_full(shard)?;
    let partitions = shard.config.default_partitions;
    let topic = name.to_string();
    shard
        .change_topics(move |table| {
            if let Some(existing) = table.get(&topic) {
                return Ok(existing.clone());
            }
            let meta = new_topic(&topic, partitions, BTreeMap::new());
            table.topics.insert(topic.clone(), meta.clone());
            Ok(meta)
        })
        .await
}

fn check_create(
    name: &str,
    partitions: i32,
    replication: i16,
    configs: &BTreeMap<String, String>,
) -> Result<(), (ResponseError, String)> {
    if !valid_topic_name(name) {
        return Err((
            ResponseError::InvalidTopicException,
            format!("invalid topic name {name:?}"),
        ));
    }
    if partitions == 0 || !(-1..=MAX_PARTITIONS_PER_TOPIC).contains(&partitions) {
        return Err((
            ResponseError::InvalidPartitions,
            format!("partition count {partitions} out of range"),
        ));
    }
    if replication != -1 && replication != 1 {
        return Err((
            ResponseError::InvalidReplicationFactor,
            "replication factor must be 1 on a single node".into(),
        ));
    }
    if let Some(bad) = configs
        .keys()
        .find(|k| !KNOWN_TOPIC_CONFIGS.contains(&k.as_str()))
    {
        return Err((
            ResponseError::InvalidConfig,
            format!("unknown topic config {bad}"),
        ));
    }
    if let Some(v) = configs.get("segment.bytes") {
        if v.parse::<u64>()
            .map_or(true, |b| !(16384..=u32::MAX as u64).contains(&b))
        {
            return Err((
                ResponseError::InvalidConfig,
                "segment.bytes must be 16384..4294967295".into(),
            ));
        }
    }
    Ok(())
}

pub async fn create(
    shard: &Rc<Shard>,
    req: CreateTopicsRequest,
    _version: i16,
) -> CreateTopicsResponse {
    let mut results = Vec::new();
    for t in req.topics {
        let name = t.name.0.to_string();
        let configs: BTreeMap<String, String> = t
            .configs
            .iter()
            .filter_map(|c| {
                c.value
                    .as_ref()
                    .map(|v| (c.name.to_string(), v.to_string()))
            })
            .collect();
        let partitions = if t.num_partitions == -1 {
            shard.config.default_partitions
        } else {
            t.num_partitions
        };
        let mut result = CreatableTopicResult::default()
            .with_name(t.name.clone())
            .with_num_partitions(-1)
            .with_replication_factor(-1);
        let checked = check_create(&name, t.num_partitions, t.replication_factor, &configs)
            .and_then(|_| {
                if t.assignments.is_empty() {
                    Ok(())
                } else {
                    Err((
                        ResponseError::InvalidReplicaAssignment,
                        "manual assignment is not supported".into(),
                    ))
                }
            });
        let outcome = match checked {
            Err(e) => Err(e),
            Ok(()) if req.validate_only => match shard.topics().get(&name) {
                Some(_) => Err((
                    ResponseError::TopicAlreadyExists,
                    format!("topic {name} already exists"),
                )),
                None => Ok(new_topic(&name, partitions, configs)),
            },
            Ok(()) if refuse_when_full(shard).is_err() => Err((
                ResponseError::KafkaStorageError,
                "the data directory is below its free-space threshold".into(),
            )),
            Ok(()) => {
                let topic = name.clone();
                shard
                    .change_topics(move |table| {
                        if table.get(&topic).is_some() {
                            return Err(ResponseError::TopicAlreadyExists);
                        }
                        let meta = new_topic(&topic, partitions, configs);
                        table.topics.insert(topic.clone(), meta.clone());
                        Ok(meta)
                    })
                    .await
                    .map_err(|e| (e, format!("creating topic {name}: {e}")))
            }
        };
        match outcome {
            Ok(meta) => {
                result = result
                    .with_topic_id(meta.id)
                    .with_num_partitions(meta.partitions)
                    .with_replication_factor(1);
            }
            Err((e, msg)) => {
                result = result
                    .with_error_code(e.code())
                    .with_error_message(Some(str_bytes(&msg)));
            }
        }
        results.push(result);
    }
    CreateTopicsResponse::default().with_topics(results)
}

pub async fn delete(
    shard: &Rc<Shard>,
    req: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let table = shard.topics();
    let mut targets: Vec<(Option<String>, uuid::Uuid)> = req
        .topic_names
        .iter()
        .map(|n| (Some(n.0.to_string()), uuid::Uuid::nil()))
        .collect();
    if version >= 6 {
        targets = req
            .topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id))
            .collect();
    }
    let mut results = Vec::new();
    for (name, id) in targets {
        let resolved = match &name {
            Some(n) => table.get(n).map(|m| m.name.clone()),
            None => table.by_id(&id).map(|m| m.name.clone()),
        };
        let mut result = DeletableTopicResult::default()
            .with_name(name.as_ref().map(|n| TopicName(str_bytes(n))))
            .with_topic_id(id);
        let outcome = match resolved {
            None if name.is_none() => Err(ResponseError::UnknownTopicId),
            None => Err(ResponseError::UnknownTopicOrPartition),
            Some(n) if n == CONSUMER_OFFSETS_TOPIC => Err(ResponseError::TopicAuthorizationFailed),
            Some(n) => {
                result = result.with_name(Some(TopicName(str_bytes(&n))));
                shard
                    .change_topics(move |t| {
                        t.topics
                            .remove(&n)
                            .map(|_| ())
                            .ok_or(ResponseError::UnknownTopicOrPartition)
                    })
                    .await
            }
        };
        if let Err(e) = outcome {
            result = result.with_error_code(e.code());
        }
        results.push(result);
    }
    DeleteTopicsResponse::default().with_responses(results)
}

pub async fn create_partitions(
    shard: &Rc<Shard>,
    req: CreatePartitionsRequest,
    _version: i16,
) -> CreatePartitionsResponse {
    let mut results = Vec::new();
    for t in req.topics {
        let name = t.name.0.to_string();
        let count = t.count;
        let validate_only = req.validate_only;
        let outcome = shard
            .change_topics(move |table| {
                let meta = table
                    .topics
                    .get_mut(&name)
                    .ok_or(ResponseError::UnknownTopicOrPartition)?;
                if count <= meta.partitions || count > MAX_PARTITIONS_PER_TOPIC {
                    return Err(ResponseError::InvalidPartitions);
                }
                if !validate_only {
                    meta.partitions = count;
                }
                Ok(())
            })
            .await;
        let mut result = CreatePartitionsTopicResult::default().with_name(t.name);
        if let Err(e) = outcome {
            result = result
                .with_error_code(e.code())
                .with_error_message(Some(str_bytes(&e.to_string())));
        }
        results.push(result);
    }
    CreatePartitionsResponse::default().with_results(results)
}
