//! Topic decisions: create (placement over the active brokers, or a given
//! assignment), delete, add partitions, the internal offsets topic, and
//! config changes (topic overrides and dynamic broker configs).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{
    Controller, ControllerError, ControllerReply, CreatedTopic, Decision, TopicConfigs, TopicRef,
};
use crate::cluster::image::MetadataImage;
use crate::cluster::placement::{place, PlacementError};
use crate::cluster::records::{MetadataRecord, NodeId, PartitionRecord, TopicRecord, NO_LEADER};
use crate::cluster::{valid_topic_name, CONSUMER_OFFSETS_TOPIC};
use crate::config::MAX_PARTITIONS_PER_TOPIC;

/// A topic to create, as CreateTopics gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTopic {
    pub name: String,
    /// -1: the default.
    pub partitions: i32,
    /// -1: the default.
    pub replication_factor: i32,
    /// Explicit replica lists, partition by partition (then both counts are -1).
    pub assignments: Vec<Vec<NodeId>>,
    pub configs: TopicConfigs,
}

impl Controller {
    pub(super) fn create_topics(
        &mut self,
        image: &MetadataImage,
        topics: Vec<NewTopic>,
        validate_only: bool,
    ) -> Decision {
        let mut records = Vec::new();
        let mut results = Vec::new();
        let mut seen = BTreeSet::new();
        let mut start = total_partitions(image);
        for t in topics {
            let outcome = if !seen.insert(t.name.clone()) {
                Err(ControllerError::InvalidRequest(format!(
                    "topic {} is listed twice",
                    t.name
                )))
            } else {
                self.plan_topic(image, &t, start)
            };
            match outcome {
                Ok((created, topic_records)) => {
                    start += created.partitions as usize;
                    if !validate_only {
                        records.extend(topic_records);
                    }
                    results.push(Ok(created));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        Decision::ready(records, ControllerReply::CreateTopics(results))
    }

    fn plan_topic(
        &mut self,
        image: &MetadataImage,
        t: &NewTopic,
        start: usize,
    ) -> Result<(CreatedTopic, Vec<MetadataRecord>), ControllerError> {
        if !valid_topic_name(&t.name) {
            return Err(ControllerError::InvalidTopic(format!(
                "invalid topic name {:?}",
                t.name
            )));
        }
        if image.topic(&t.name).is_some() {
            return Err(ControllerError::TopicAlreadyExists(t.name.clone()));
        }
        let assignment = if t.assignments.is_empty() {
            let partitions = match t.partitions {
                -1 => self.config.default_partitions,
                n => n,
            };
            if !(1..=MAX_PARTITIONS_PER_TOPIC).contains(&partitions) {
                return Err(ControllerError::InvalidPartitions(format!(
                    "partition count {partitions} is not in 1..={MAX_PARTITIONS_PER_TOPIC}"
                )));
            }
            let rf = match t.replication_factor {
                -1 => self.config.default_replication_factor,
                n => n,
            };
            placed(image, partitions, rf, start)?
        } else {
            checked_assignment(image, t)?
        };
        let topic_id = (self.new_topic_id)();
        let created = CreatedTopic {
            name: t.name.clone(),
            topic_id,
            partitions: assignment.len() as i32,
            replication_factor: assignment[0].len() as i32,
        };
        let mut records = vec![MetadataRecord::Topic(TopicRecord {
            name: t.name.clone(),
            topic_id,
            internal: t.name == CONSUMER_OFFSETS_TOPIC,
            configs: t.configs.clone(),
        })];
        records.extend(partition_records(image, topic_id, 0, assignment));
        Ok((created, records))
    }

    /// Creates `__consumer_offsets` once enough brokers are active for its
    /// replication factor (Kafka refuses to create it with fewer).
    pub(super) fn ensure_offsets_topic(&mut self, image: &MetadataImage) -> Decision {
        if image.topic(CONSUMER_OFFSETS_TOPIC).is_some()
            || (image.active_brokers().len() as i32) < self.config.offsets_topic_replication_factor
        {
            return Decision::ready(Vec::new(), ControllerReply::Done);
        }
        let topic = NewTopic {
            name: CONSUMER_OFFSETS_TOPIC.to_string(),
            partitions: self.config.offsets_topic_partitions,
            replication_factor: self.config.offsets_topic_replication_factor,
            assignments: Vec::new(),
            configs: [
                ("cleanup.policy".to_string(), "compact".to_string()),
                (
                    "segment.bytes".to_string(),
                    self.config.offsets_topic_segment_bytes.to_string(),
                ),
            ]
            .into_iter()
            .collect(),
        };
        match self.plan_topic(image, &topic, total_partitions(image)) {
            Ok((_, records)) => Decision::ready(records, ControllerReply::Done),
            Err(e) => Decision::refuse(e),
        }
    }
}

fn total_partitions(image: &MetadataImage) -> usize {
    image.topics.values().map(|t| t.partitions.len()).sum()
}

fn placed(
    image: &MetadataImage,
    partitions: i32,
    rf: i32,
    start: usize,
) -> Result<Vec<Vec<NodeId>>, ControllerError> {
    place(&image.active_brokers(), partitions, rf, start).map_err(|e| match e {
        PlacementError::NotEnoughBrokers { wanted, active } => {
            ControllerError::InvalidReplicationFactor(format!(
                "replication factor {wanted} is larger than the {active} available brokers"
            ))
        }
        PlacementError::InvalidReplicationFactor(n) => {
            ControllerError::InvalidReplicationFactor(format!("replication factor {n} is invalid"))
        }
    })
}

/// An explicit assignment: every partition's replicas distinct, registered
/// brokers, the same count for all.
fn checked_assignment(
    image: &MetadataImage,
    t: &NewTopic,
) -> Result<Vec<Vec<NodeId>>, ControllerError> {
    let bad = |m: String| Err(ControllerError::InvalidReplicaAssignment(m));
    if t.partitions != -1 || t.replication_factor != -1 {
        return Err(ControllerError::InvalidRequest(
            "give either a partition count and replication factor or an assignment".into(),
        ));
    }
    if t.assignments.len() > MAX_PARTITIONS_PER_TOPIC as usize {
        return Err(ControllerError::InvalidPartitions(
            "too many partitions".into(),
        ));
    }
    let rf = t.assignments[0].len();
    for (p, replicas) in t.assignments.iter().enumerate() {
        let distinct: BTreeSet<_> = replicas.iter().collect();
        if replicas.is_empty() || distinct.len() != replicas.len() {
            return bad(format!(
                "partition {p}: replicas must be distinct and not empty"
            ));
        }
        if replicas.len() != rf {
            return bad(format!(
                "partition {p}: every partition needs {rf} replicas"
            ));
        }
        if let Some(b) = replicas.iter().find(|b| image.broker(**b).is_none()) {
            return bad(format!("partition {p}: broker {b} is not registered"));
        }
    }
    Ok(t.assignments.clone())
}

fn partition_records(
    image: &MetadataImage,
    topic_id: uuid::Uuid,
    first: i32,
    assignment: Vec<Vec<NodeId>>,
) -> Vec<MetadataRecord> {
    let active = |r: &NodeId| image.broker(*r).is_some_and(|b| b.is_active());
    assignment
        .into_iter()
        .enumerate()
        .map(|(i, replicas)| {
            let mut isr: Vec<NodeId> = replicas.iter().copied().filter(active).collect();
            if isr.is_empty() {
                isr = replicas.clone();
            }
            let leader = replicas
                .iter()
                .copied()
                .find(|r| active(r))
                .unwrap_or(NO_LEADER);
            MetadataRecord::Partition(PartitionRecord {
                topic_id,
                partition: first + i as i32,
                replicas,
                isr,
                leader,
                leader_epoch: 0,
                partition_epoch: 0,
            })
        })
        .collect()
}

pub(super) fn delete_topics(image: &MetadataImage, refs: &[TopicRef]) -> Decision {
    let mut records = Vec::new();
    let mut results = Vec::new();
    for r in refs {
        let topic = match r {
            TopicRef::Name(n) => image
                .topic(n)
                .ok_or_else(|| ControllerError::UnknownTopicOrPartition(n.clone())),
            TopicRef::Id(id) => image
                .topic_by_id(id)
                .ok_or(ControllerError::UnknownTopicId(*id)),
        };
        let outcome = topic.and_then(|t| {
            if t.name == CONSUMER_OFFSETS_TOPIC {
                return Err(ControllerError::InvalidRequest(
                    "the internal offsets topic cannot be deleted".into(),
                ));
            }
            let removal = MetadataRecord::RemoveTopic { topic_id: t.id };
            if !records.contains(&removal) {
                records.push(removal);
            }
            Ok(t.name.clone())
        });
        results.push(outcome);
    }
    Decision::ready(records, ControllerReply::DeleteTopics(results))
}

pub(super) fn create_partitions(
    image: &MetadataImage,
    topics: &[(String, i32)],
    validate_only: bool,
) -> Decision {
    let mut records = Vec::new();
    let mut results = Vec::new();
    for (name, count) in topics {
        let outcome = (|| {
            let t = image
                .topic(name)
                .ok_or_else(|| ControllerError::UnknownTopicOrPartition(name.clone()))?;
            let current = t.partition_count();
            if *count <= current || *count > MAX_PARTITIONS_PER_TOPIC {
                return Err(ControllerError::InvalidPartitions(format!(
                    "topic {name} has {current} partitions; {count} is not more, or above {MAX_PARTITIONS_PER_TOPIC}"
                )));
            }
            let rf = t.partitions.first().map_or(1, |p| p.replicas.len()) as i32;
            let assignment = placed(image, count - current, rf, current as usize)?;
            if !validate_only {
                records.extend(partition_records(image, t.id, current, assignment));
            }
            Ok(())
        })();
        results.push(outcome);
    }
    Decision::ready(records, ControllerReply::CreatePartitions(results))
}

/// A topic's config changes: checked as a whole, then one record per key
/// that changes (none when nothing does, or `validate_only`).
pub(super) fn alter_configs(
    image: &MetadataImage,
    topic: &str,
    ops: &[crate::cluster::topic_config::ConfigOp],
    replace: bool,
    validate_only: bool,
) -> Decision {
    let Some(t) = image.topic(topic) else {
        return Decision::refuse(ControllerError::UnknownTopicOrPartition(topic.to_string()));
    };
    if t.internal {
        return Decision::refuse(ControllerError::InvalidRequest(format!(
            "{topic} is internal: its configs are the broker's"
        )));
    }
    let next = match crate::cluster::topic_config::apply_ops(&t.configs, ops, replace) {
        Ok(next) => next,
        Err(why) => return Decision::refuse(ControllerError::InvalidConfig(why)),
    };
    let mut records = Vec::new();
    let keys: BTreeSet<&String> = t.configs.keys().chain(next.keys()).collect();
    for key in keys {
        let (old, new) = (t.configs.get(key), next.get(key));
        if old != new && !validate_only {
            records.push(MetadataRecord::TopicConfig {
                topic_id: t.id,
                key: key.clone(),
                value: new.cloned(),
            });
        }
    }
    Decision::ready(records, ControllerReply::Done)
}

/// A broker's (or the cluster default's) dynamic config changes: checked
/// as a whole, then one record per key that changes.
pub(super) fn alter_broker_configs(
    image: &MetadataImage,
    broker: Option<NodeId>,
    ops: &[crate::cluster::topic_config::ConfigOp],
    replace: bool,
    validate_only: bool,
) -> Decision {
    let name = broker.map_or(String::new(), |id| id.to_string());
    let empty = Default::default();
    let current = image.broker_configs.get(&name).unwrap_or(&empty);
    let next = match crate::cluster::broker_config::apply_ops(current, ops, replace) {
        Ok(next) => next,
        Err(why) => return Decision::refuse(ControllerError::InvalidConfig(why)),
    };
    let mut records = Vec::new();
    let keys: BTreeSet<&String> = current.keys().chain(next.keys()).collect();
    for key in keys {
        let (old, new) = (current.get(key), next.get(key));
        if old != new && !validate_only {
            records.push(MetadataRecord::BrokerConfig {
                broker,
                key: key.clone(),
                value: new.cloned(),
            });
        }
    }
    Decision::ready(records, ControllerReply::Done)
}
