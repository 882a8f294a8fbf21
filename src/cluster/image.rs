//! The metadata image: every broker's view of the cluster (brokers, topics,
//! partitions with replicas, leader, epochs and ISR, producer-id blocks),
//! built by applying committed metadata records in log order.
//!
//! Pure and deterministic: every node applies the same records to the same
//! image and reaches the same state. A record that does not fit the image
//! (a partition of an unknown topic, say) is skipped the same way on every
//! node. Images are immutable once published: shards hold an `Arc` of one;
//! topics are shared between successive images so a change copies only the
//! topics it touches.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::broker_config::BrokerConfigs;
use super::records::{
    BrokerRegistration, MetadataRecord, NodeId, PartitionChange, PartitionRecord, TopicRecord,
    NO_LEADER,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerImage {
    pub registration: BrokerRegistration,
    /// Index of the log entry that registered this incarnation (Kafka's broker epoch).
    pub broker_epoch: u64,
    pub fenced: bool,
    pub shutting_down: bool,
}

impl BrokerImage {
    /// May lead partitions and sit in ISRs.
    pub fn is_active(&self) -> bool {
        !self.fenced && !self.shutting_down
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionImage {
    pub replicas: Vec<NodeId>,
    pub isr: Vec<NodeId>,
    pub leader: NodeId,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicImage {
    pub name: String,
    pub id: Uuid,
    pub internal: bool,
    pub configs: BTreeMap<String, String>,
    pub partitions: Vec<PartitionImage>,
}

impl TopicImage {
    pub fn partition_count(&self) -> i32 {
        self.partitions.len() as i32
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataImage {
    /// Index of the last applied log entry.
    pub offset: u64,
    pub cluster_id: Option<String>,
    pub brokers: BTreeMap<NodeId, BrokerImage>,
    pub topics: BTreeMap<String, Arc<TopicImage>>,
    pub topic_names: BTreeMap<Uuid, String>,
    /// First producer id not yet handed out in any block.
    pub next_producer_id: i64,
    /// Dynamic broker configs by resource name: "" for the cluster
    /// default, a broker id for one broker (string keys: images are JSON).
    #[serde(default)]
    pub broker_configs: BTreeMap<String, BrokerConfigs>,
}

/// What an applied entry changed, for the brokers' shards to act on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImageChanges {
    /// Partitions created or whose leader, ISR or epochs moved.
    pub partitions: Vec<(String, i32)>,
    /// Topics deleted: name, id.
    pub removed_topics: Vec<(String, Uuid)>,
    /// Topic configs changed.
    pub configs: Vec<String>,
    pub brokers: bool,
    /// Dynamic broker configs changed: every topic may resolve anew.
    pub broker_configs: bool,
}

impl ImageChanges {
    pub fn is_empty(&self) -> bool {
        *self == ImageChanges::default()
    }

    pub fn merge(&mut self, other: ImageChanges) {
        self.partitions.extend(other.partitions);
        self.removed_topics.extend(other.removed_topics);
        self.configs.extend(other.configs);
        self.brokers |= other.brokers;
        self.broker_configs |= other.broker_configs;
    }
}

impl MetadataImage {
    pub fn topic(&self, name: &str) -> Option<&Arc<TopicImage>> {
        self.topics.get(name)
    }

    pub fn topic_by_id(&self, id: &Uuid) -> Option<&Arc<TopicImage>> {
        self.topic_names.get(id).and_then(|n| self.topics.get(n))
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Option<&PartitionImage> {
        let t = self.topics.get(topic)?;
        usize::try_from(partition)
            .ok()
            .and_then(|p| t.partitions.get(p))
    }

    pub fn broker(&self, id: NodeId) -> Option<&BrokerImage> {
        self.brokers.get(&id)
    }

    /// The dynamic broker configs in force on `node`, by broker key.
    pub fn dynamic_broker_configs(&self, node: NodeId) -> BrokerConfigs {
        crate::cluster::broker_config::effective(&self.broker_configs, node)
    }

    /// Brokers that may lead and replicate: registered, unfenced, not shutting down.
    pub fn active_brokers(&self) -> Vec<NodeId> {
        self.brokers
            .values()
            .filter(|b| b.is_active())
            .map(|b| b.registration.node_id)
            .collect()
    }

    /// Applies the records of the entry at log `index`, in order.
    pub fn apply(&mut self, index: u64, records: &[MetadataRecord]) -> ImageChanges {
        let mut changes = ImageChanges::default();
        for record in records {
            self.apply_one(index, record, &mut changes);
        }
        self.offset = self.offset.max(index);
        changes
    }

    fn apply_one(&mut self, index: u64, record: &MetadataRecord, changes: &mut ImageChanges) {
        match record {
            MetadataRecord::Bootstrap { cluster_id } => {
                self.cluster_id.get_or_insert_with(|| cluster_id.clone());
            }
            MetadataRecord::RegisterBroker(reg) => {
                self.brokers.insert(
                    reg.node_id,
                    BrokerImage {
                        registration: reg.clone(),
                        broker_epoch: index,
                        fenced: true,
                        shutting_down: false,
                    },
                );
                changes.brokers = true;
            }
            MetadataRecord::FenceBroker {
                node_id,
                broker_epoch,
            } => self.update_broker(*node_id, *broker_epoch, changes, |b| b.fenced = true),
            MetadataRecord::UnfenceBroker {
                node_id,
                broker_epoch,
            } => self.update_broker(*node_id, *broker_epoch, changes, |b| {
                b.fenced = false;
                b.shutting_down = false;
            }),
            MetadataRecord::BrokerShuttingDown {
                node_id,
                broker_epoch,
            } => self.update_broker(*node_id, *broker_epoch, changes, |b| b.shutting_down = true),
            MetadataRecord::Topic(t) => self.add_topic(t),
            MetadataRecord::Partition(p) => self.add_partition(p, changes),
            MetadataRecord::PartitionChange(c) => self.change_partition(c, changes),
            MetadataRecord::RemoveTopic { topic_id } => {
                if let Some(name) = self.topic_names.remove(topic_id) {
                    self.topics.remove(&name);
                    changes.removed_topics.push((name, *topic_id));
                }
            }
            MetadataRecord::TopicConfig {
                topic_id,
                key,
                value,
            } => {
                if let Some(t) = self.topic_mut(topic_id) {
                    match value {
                        Some(v) => t.configs.insert(key.clone(), v.clone()),
                        None => t.configs.remove(key),
                    };
                    changes.configs.push(t.name.clone());
                }
            }
            MetadataRecord::BrokerConfig { broker, key, value } => {
                let name = broker.map_or(String::new(), |id| id.to_string());
                let scope = self.broker_configs.entry(name.clone()).or_default();
                match value {
                    Some(v) => scope.insert(key.clone(), v.clone()),
                    None => scope.remove(key),
                };
                if scope.is_empty() {
                    self.broker_configs.remove(&name);
                }
                changes.broker_configs = true;
            }
            MetadataRecord::ProducerIds {
                next_producer_id, ..
            } => {
                self.next_producer_id = self.next_producer_id.max(*next_producer_id);
            }
        }
    }

    fn update_broker(
        &mut self,
        node_id: NodeId,
        broker_epoch: u64,
        changes: &mut ImageChanges,
        f: impl FnOnce(&mut BrokerImage),
    ) {
        if let Some(b) = self.brokers.get_mut(&node_id) {
            if b.broker_epoch == broker_epoch {
                f(b);
                changes.brokers = true;
            }
        }
    }

    fn add_topic(&mut self, t: &TopicRecord) {
        if self.topics.contains_key(&t.name) || self.topic_names.contains_key(&t.topic_id) {
            return;
        }
        self.topic_names.insert(t.topic_id, t.name.clone());
        self.topics.insert(
            t.name.clone(),
            Arc::new(TopicImage {
                name: t.name.clone(),
                id: t.topic_id,
                internal: t.internal,
                configs: t.configs.clone(),
                partitions: Vec::new(),
            }),
        );
    }

    fn topic_mut(&mut self, id: &Uuid) -> Option<&mut TopicImage> {
        let name = self.topic_names.get(id)?;
        self.topics.get_mut(name).map(Arc::make_mut)
    }

    fn add_partition(&mut self, p: &PartitionRecord, changes: &mut ImageChanges) {
        let Some(t) = self.topic_mut(&p.topic_id) else {
            return;
        };
        // Partitions are added in order; anything else is not applied.
        if p.partition != t.partition_count() {
            return;
        }
        t.partitions.push(PartitionImage {
            replicas: p.replicas.clone(),
            isr: p.isr.clone(),
            leader: p.leader,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
        });
        changes.partitions.push((t.name.clone(), p.partition));
    }

    fn change_partition(&mut self, c: &PartitionChange, changes: &mut ImageChanges) {
        let Some(t) = self.topic_mut(&c.topic_id) else {
            return;
        };
        let name = t.name.clone();
        let Some(p) = usize::try_from(c.partition)
            .ok()
            .and_then(|i| t.partitions.get_mut(i))
        else {
            return;
        };
        if let Some(leader) = c.leader {
            if leader != p.leader {
                p.leader = leader;
                p.leader_epoch += 1;
            }
        }
        if let Some(isr) = &c.isr {
            p.isr = isr.clone();
        }
        p.partition_epoch += 1;
        changes.partitions.push((name, c.partition));
    }

    /// Partitions led by `node`, with their topic ids.
    pub fn partitions_led_by(&self, node: NodeId) -> Vec<(Uuid, i32)> {
        self.partitions_where(|p| p.leader == node)
    }

    /// Partitions whose ISR or replicas include `node`.
    pub fn partitions_with_replica(&self, node: NodeId) -> Vec<(Uuid, i32)> {
        self.partitions_where(|p| p.replicas.contains(&node))
    }

    fn partitions_where(&self, f: impl Fn(&PartitionImage) -> bool) -> Vec<(Uuid, i32)> {
        self.topics
            .values()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| f(p))
                    .map(|(i, _)| (t.id, i as i32))
            })
            .collect()
    }

    /// True when the partition has no leader (offline).
    pub fn is_offline(p: &PartitionImage) -> bool {
        p.leader == NO_LEADER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str, id: u128) -> MetadataRecord {
        MetadataRecord::Topic(TopicRecord {
            name: name.into(),
            topic_id: Uuid::from_u128(id),
            internal: false,
            configs: BTreeMap::new(),
        })
    }

    fn partition(id: u128, p: i32, replicas: &[NodeId]) -> MetadataRecord {
        MetadataRecord::Partition(PartitionRecord {
            topic_id: Uuid::from_u128(id),
            partition: p,
            replicas: replicas.to_vec(),
            isr: replicas.to_vec(),
            leader: replicas[0],
            leader_epoch: 0,
            partition_epoch: 0,
        })
    }

    #[test]
    fn topics_partitions_and_changes_apply_in_order() {
        let mut image = MetadataImage::default();
        let changes = image.apply(
            1,
            &[
                topic("a", 1),
                partition(1, 0, &[1, 2]),
                partition(1, 1, &[2, 3]),
            ],
        );
        assert_eq!(
            changes.partitions,
            vec![("a".to_string(), 0), ("a".to_string(), 1)]
        );
        // Out of order partition records are skipped.
        image.apply(2, &[partition(1, 5, &[1])]);
        assert_eq!(image.topic("a").unwrap().partition_count(), 2);
        image.apply(
            3,
            &[MetadataRecord::PartitionChange(PartitionChange {
                topic_id: Uuid::from_u128(1),
                partition: 0,
                leader: Some(2),
                isr: Some(vec![2]),
            })],
        );
        let p = image.partition("a", 0).unwrap();
        assert_eq!((p.leader, p.leader_epoch, p.partition_epoch), (2, 1, 1));
        assert_eq!(p.isr, vec![2]);
        // An ISR-only change keeps the leader epoch.
        image.apply(
            4,
            &[MetadataRecord::PartitionChange(PartitionChange {
                topic_id: Uuid::from_u128(1),
                partition: 0,
                leader: None,
                isr: Some(vec![2, 1]),
            })],
        );
        let p = image.partition("a", 0).unwrap();
        assert_eq!((p.leader_epoch, p.partition_epoch), (1, 2));
        assert_eq!(image.offset, 4);
        assert_eq!(image.partitions_led_by(2).len(), 2);
    }

    #[test]
    fn brokers_fence_only_their_own_incarnation() {
        let mut image = MetadataImage::default();
        let reg = BrokerRegistration {
            node_id: 1,
            incarnation_id: Uuid::from_u128(5),
            host: "h".into(),
            port: 1,
            rack: None,
        };
        image.apply(7, &[MetadataRecord::RegisterBroker(reg)]);
        assert!(image.broker(1).unwrap().fenced);
        image.apply(
            8,
            &[MetadataRecord::UnfenceBroker {
                node_id: 1,
                broker_epoch: 7,
            }],
        );
        assert_eq!(image.active_brokers(), vec![1]);
        image.apply(
            9,
            &[MetadataRecord::FenceBroker {
                node_id: 1,
                broker_epoch: 3,
            }],
        );
        assert_eq!(image.active_brokers(), vec![1], "a stale epoch is ignored");
    }

    #[test]
    fn removing_a_topic_frees_its_name() {
        let mut image = MetadataImage::default();
        image.apply(1, &[topic("a", 1), partition(1, 0, &[1])]);
        let changes = image.apply(
            2,
            &[MetadataRecord::RemoveTopic {
                topic_id: Uuid::from_u128(1),
            }],
        );
        assert_eq!(
            changes.removed_topics,
            vec![("a".to_string(), Uuid::from_u128(1))]
        );
        image.apply(3, &[topic("a", 2)]);
        assert_eq!(image.topic("a").unwrap().id, Uuid::from_u128(2));
    }
}
