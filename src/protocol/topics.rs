//! CreateTopics (key 19) v2-7, DeleteTopics (key 20) v1-6,
//! CreatePartitions (key 37) v0-3, and topic auto-creation. Every change is
//! decided by the active controller (forwarded there from any broker) and
//! answered once committed to the metadata log; the answer waits briefly
//! for this broker's own image to show it, so a client's next request here
//! finds it.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

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

use super::{controller_error_code, str_bytes};
use crate::cluster::controller::{
    ControllerError, ControllerReply, ControllerRequest, NewTopic, TopicRef,
};
use crate::cluster::image::MetadataImage;
use crate::cluster::valid_topic_name;
use crate::config::MAX_PARTITIONS_PER_TOPIC;
use crate::shard::Shard;

/// Longest a topic change's answer waits for this broker's image to show it.
const APPLIED_WAIT: Duration = Duration::from_secs(5);

/// Waits until this broker's image satisfies `done`, at most APPLIED_WAIT.
pub(super) async fn applied_here(shard: &Rc<Shard>, done: impl Fn(&MetadataImage) -> bool) {
    let start = Instant::now();
    while !done(&shard.image()) && start.elapsed() < APPLIED_WAIT {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

/// Creates `name` with the default partition count and replication
/// factor (Metadata auto-create).
pub async fn auto_create(shard: &Rc<Shard>, name: &str) -> Result<(), ResponseError> {
    if shard.space.is_full() {
        return Err(ResponseError::KafkaStorageError);
    }
    let topic = NewTopic {
        name: name.to_string(),
        partitions: -1,
        replication_factor: -1,
        assignments: Vec::new(),
        configs: BTreeMap::new(),
    };
    let reply = shard
        .controller_call(ControllerRequest::CreateTopics {
            topics: vec![topic],
            validate_only: false,
        })
        .await;
    let outcome = match reply {
        Ok(ControllerReply::CreateTopics(mut r)) if !r.is_empty() => r.remove(0).map(|_| ()),
        Ok(other) => Err(ControllerError::InvalidRequest(format!(
            "unexpected reply {other:?}"
        ))),
        Err(e) => Err(e),
    };
    match outcome {
        Ok(()) | Err(ControllerError::TopicAlreadyExists(_)) => {
            let n = name.to_string();
            applied_here(shard, |i| i.topic(&n).is_some()).await;
            Ok(())
        }
        Err(e) => {
            tracing::warn!(topic = name, error = %e, "auto-creating a topic failed");
            Err(controller_error_code(&e))
        }
    }
}

fn check_create(
    name: &str,
    partitions: i32,
    replication: i16,
    configs: &BTreeMap<String, String>,
) -> Result<(), (ResponseError, String)> {
    if replication == 0 || replication < -1 {
        return Err((
            ResponseError::InvalidReplicationFactor,
            format!("replication factor {replication} is invalid"),
        ));
    }
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
    if let Err(why) = crate::cluster::topic_config::validate_all(configs) {
        return Err((ResponseError::InvalidConfig, why));
    }
    Ok(())
}

/// One topic of a CreateTopics request, checked here before the
/// controller sees it (configs are this broker's concern too).
fn new_topic(
    t: &kafka_protocol::messages::create_topics_request::CreatableTopic,
) -> Result<NewTopic, (ResponseError, String)> {
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
    check_create(&name, t.num_partitions, t.replication_factor, &configs)?;
    let mut assignments: Vec<(i32, Vec<i32>)> = t
        .assignments
        .iter()
        .map(|a| {
            (
                a.partition_index,
                a.broker_ids.iter().map(|b| b.0).collect(),
            )
        })
        .collect();
    assignments.sort_by_key(|(p, _)| *p);
    if assignments
        .iter()
        .enumerate()
        .any(|(i, (p, _))| *p != i as i32)
    {
        return Err((
            ResponseError::InvalidReplicaAssignment,
            "assigned partitions must be numbered 0..n".into(),
        ));
    }
    Ok(NewTopic {
        name,
        partitions: t.num_partitions,
        replication_factor: t.replication_factor as i32,
        assignments: assignments.into_iter().map(|(_, r)| r).collect(),
        configs,
    })
}

pub async fn create(
    shard: &Rc<Shard>,
    req: CreateTopicsRequest,
    _version: i16,
) -> CreateTopicsResponse {
    let mut results: Vec<CreatableTopicResult> = Vec::new();
    let mut wanted = Vec::new();
    let mut slots = Vec::new();
    for t in &req.topics {
        let result = CreatableTopicResult::default()
            .with_name(t.name.clone())
            .with_num_partitions(-1)
            .with_replication_factor(-1);
        match new_topic(t) {
            Ok(_) if shard.space.is_full() && !req.validate_only => {
                results.push(with_error(
                    result,
                    ResponseError::KafkaStorageError,
                    "the data directory is below its free-space threshold".into(),
                ));
            }
            Ok(topic) => {
                slots.push(results.len());
                wanted.push(topic);
                results.push(result);
            }
            Err((e, msg)) => results.push(with_error(result, e, msg)),
        }
    }
    if wanted.is_empty() {
        return CreateTopicsResponse::default().with_topics(results);
    }
    let names: Vec<String> = wanted.iter().map(|t| t.name.clone()).collect();
    let reply = shard
        .controller_call(ControllerRequest::CreateTopics {
            topics: wanted,
            validate_only: req.validate_only,
        })
        .await;
    let outcomes: Vec<Result<_, ControllerError>> = match reply {
        Ok(ControllerReply::CreateTopics(r)) if r.len() == slots.len() => r,
        Ok(other) => vec![
            Err(ControllerError::InvalidRequest(format!(
                "unexpected reply {other:?}"
            )));
            slots.len()
        ],
        Err(e) => vec![Err(e); slots.len()],
    };
    for (slot, outcome) in slots.into_iter().zip(outcomes) {
        let r = std::mem::take(&mut results[slot]);
        results[slot] = match outcome {
            Ok(c) => r
                .with_topic_id(c.topic_id)
                .with_num_partitions(c.partitions)
                .with_replication_factor(c.replication_factor as i16),
            Err(e) => {
                let msg = e.to_string();
                with_error(r, controller_error_code(&e), msg)
            }
        };
    }
    if !req.validate_only {
        applied_here(shard, |i| names.iter().all(|n| i.topic(n).is_some())).await;
    }
    CreateTopicsResponse::default().with_topics(results)
}

fn with_error(r: CreatableTopicResult, e: ResponseError, msg: String) -> CreatableTopicResult {
    r.with_error_code(e.code())
        .with_error_message(Some(str_bytes(&msg)))
}

pub async fn delete(
    shard: &Rc<Shard>,
    req: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
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
    let refs: Vec<TopicRef> = targets
        .iter()
        .map(|(name, id)| match name {
            Some(n) => TopicRef::Name(n.clone()),
            None => TopicRef::Id(*id),
        })
        .collect();
    let reply = shard
        .controller_call(ControllerRequest::DeleteTopics { topics: refs })
        .await;
    let outcomes: Vec<Result<String, ControllerError>> = match reply {
        Ok(ControllerReply::DeleteTopics(r)) if r.len() == targets.len() => r,
        Ok(other) => vec![
            Err(ControllerError::InvalidRequest(format!(
                "unexpected reply {other:?}"
            )));
            targets.len()
        ],
        Err(e) => vec![Err(e); targets.len()],
    };
    let mut results = Vec::new();
    let mut deleted = Vec::new();
    for ((name, id), outcome) in targets.into_iter().zip(outcomes) {
        let mut result = DeletableTopicResult::default()
            .with_name(name.as_ref().map(|n| TopicName(str_bytes(n))))
            .with_topic_id(id);
        match outcome {
            Ok(n) => {
                result = result.with_name(Some(TopicName(str_bytes(&n))));
                deleted.push(n);
            }
            Err(e) => {
                result = result
                    .with_error_code(controller_error_code(&e).code())
                    .with_error_message(Some(str_bytes(&e.to_string())));
            }
        }
        results.push(result);
    }
    applied_here(shard, |i| deleted.iter().all(|n| i.topic(n).is_none())).await;
    DeleteTopicsResponse::default().with_responses(results)
}

pub async fn create_partitions(
    shard: &Rc<Shard>,
    req: CreatePartitionsRequest,
    _version: i16,
) -> CreatePartitionsResponse {
    let mut results = Vec::new();
    let mut wanted = Vec::new();
    let mut slots = Vec::new();
    for t in &req.topics {
        let result = CreatePartitionsTopicResult::default().with_name(t.name.clone());
        if t.assignments.as_ref().is_some_and(|a| !a.is_empty()) {
            results.push(
                result
                    .with_error_code(ResponseError::InvalidReplicaAssignment.code())
                    .with_error_message(Some(str_bytes(
                        "assignments for new partitions are not supported; they are placed over the live brokers",
                    ))),
            );
            continue;
        }
        slots.push(results.len());
        wanted.push((t.name.0.to_string(), t.count));
        results.push(result);
    }
    if !wanted.is_empty() {
        let counts = wanted.clone();
        let reply = shard
            .controller_call(ControllerRequest::CreatePartitions {
                topics: wanted,
                validate_only: req.validate_only,
            })
            .await;
        let outcomes: Vec<Result<(), ControllerError>> = match reply {
            Ok(ControllerReply::CreatePartitions(r)) if r.len() == slots.len() => r,
            Ok(other) => vec![
                Err(ControllerError::InvalidRequest(format!(
                    "unexpected reply {other:?}"
                )));
                slots.len()
            ],
            Err(e) => vec![Err(e); slots.len()],
        };
        for (slot, outcome) in slots.into_iter().zip(outcomes) {
            if let Err(e) = outcome {
                let r = std::mem::take(&mut results[slot]);
                results[slot] = r
                    .with_error_code(controller_error_code(&e).code())
                    .with_error_message(Some(str_bytes(&e.to_string())));
            }
        }
        if !req.validate_only {
            applied_here(shard, |i| {
                counts
                    .iter()
                    .all(|(n, c)| i.topic(n).is_none_or(|t| t.partition_count() >= *c))
            })
            .await;
        }
    }
    CreatePartitionsResponse::default().with_results(results)
}
