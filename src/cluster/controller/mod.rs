//! The active controller's decisions, as a state machine without I/O: given
//! the committed metadata image, a request and the time, it returns the
//! records to append to the metadata log and the reply to give once they
//! are applied. Broker sessions (heartbeat deadlines) are the only state of
//! its own; they are not logged, as in Kafka, and start afresh on every
//! controller failover (each broker gets a full session timeout).
//!
//! A broker is fenced when its session expires, or sooner when its process
//! is known to be gone: the I/O shell reports that a connection to the
//! broker's controller listener was refused (on loopback or a LAN whose
//! host is up, a killed process's port answers with a reset at once; a
//! stopped, overloaded or partitioned one accepts or times out instead), and
//! the broker has also sent no heartbeat for `refused_timeout_ms` since
//! before that refusal. Both signals are needed: a refusal alone may be a
//! firewall's, a late heartbeat alone is load.
//!
//! Runs on the controller shard of the Raft leader; the driver serializes
//! requests, so each decision sees every earlier decision applied.

mod brokers;
mod partitions;
mod topics;

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::image::MetadataImage;
use super::records::{BrokerRegistration, MetadataRecord, NodeId};

pub use topics::NewTopic;

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// A broker without heartbeat for this long is fenced (Kafka's broker.session.timeout.ms).
    pub session_timeout_ms: u64,
    /// A broker whose controller listener refused a connection after its
    /// last heartbeat is fenced once that heartbeat is this old.
    pub refused_timeout_ms: u64,
    /// Producer ids handed to a broker at a time.
    pub producer_id_block_size: i64,
    /// Partitions of a topic created with -1 (Kafka's num.partitions).
    pub default_partitions: i32,
    /// Replicas of a topic created with -1 (Kafka's default.replication.factor).
    pub default_replication_factor: i32,
    pub offsets_topic_partitions: i32,
    /// Capped by the active brokers when `__consumer_offsets` is created.
    pub offsets_topic_replication_factor: i32,
    /// segment.bytes given to `__consumer_offsets` when it is created.
    pub offsets_topic_segment_bytes: u64,
}

/// Why a request was refused; protocol/ maps each to its Kafka error code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ControllerError {
    #[error("this node is not the active controller")]
    NotController,
    #[error("the controller did not commit the change in time")]
    Timeout,
    #[error("topic {0} already exists")]
    TopicAlreadyExists(String),
    #[error("invalid topic: {0}")]
    InvalidTopic(String),
    #[error("unknown topic or partition: {0}")]
    UnknownTopicOrPartition(String),
    #[error("unknown topic id {0}")]
    UnknownTopicId(Uuid),
    #[error("invalid partitions: {0}")]
    InvalidPartitions(String),
    #[error("invalid replication factor: {0}")]
    InvalidReplicationFactor(String),
    #[error("invalid replica assignment: {0}")]
    InvalidReplicaAssignment(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error("broker {0} is not registered with this epoch")]
    StaleBrokerEpoch(NodeId),
    #[error("broker {0} is not registered")]
    UnknownBroker(NodeId),
    #[error("leader epoch is fenced")]
    FencedLeaderEpoch,
    #[error("partition epoch is stale")]
    InvalidUpdateVersion,
    #[error("not the leader of the partition")]
    NotLeaderOrFollower,
    #[error("replica {0} may not join the ISR")]
    IneligibleReplica(NodeId),
    #[error("the preferred leader already leads")]
    ElectionNotNeeded,
    #[error("the preferred leader is not available")]
    PreferredLeaderNotAvailable,
    #[error("no eligible leader")]
    EligibleLeadersNotAvailable,
}

/// One partition's leader and ISR request (Kafka's AlterPartition item).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlterPartitionItem {
    pub topic_id: Uuid,
    pub partition: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub new_isr: Vec<NodeId>,
}

/// What brokers and admin requests ask the active controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerRequest {
    RegisterBroker(BrokerRegistration),
    Heartbeat {
        node_id: NodeId,
        broker_epoch: u64,
        /// Last metadata offset the broker applied.
        metadata_offset: u64,
        want_shutdown: bool,
    },
    CreateTopics {
        topics: Vec<NewTopic>,
        validate_only: bool,
    },
    DeleteTopics {
        topics: Vec<TopicRef>,
    },
    CreatePartitions {
        topics: Vec<(String, i32)>,
        validate_only: bool,
    },
    AlterPartition {
        node_id: NodeId,
        broker_epoch: u64,
        items: Vec<AlterPartitionItem>,
    },
    /// Preferred leader election for the given partitions, or all when `None`.
    ElectPreferredLeaders {
        partitions: Option<Vec<(String, i32)>>,
    },
    AllocateProducerIds {
        node_id: NodeId,
        broker_epoch: u64,
    },
    /// IncrementalAlterConfigs / AlterConfigs (`replace`) of one topic.
    AlterTopicConfigs {
        topic: String,
        ops: Vec<crate::cluster::topic_config::ConfigOp>,
        replace: bool,
        validate_only: bool,
    },
    /// IncrementalAlterConfigs / AlterConfigs (`replace`) of the dynamic
    /// configs of one broker, or of the cluster default (`broker: None`).
    AlterBrokerConfigs {
        broker: Option<NodeId>,
        ops: Vec<crate::cluster::topic_config::ConfigOp>,
        replace: bool,
        validate_only: bool,
    },
    /// Internal: `__consumer_offsets` exists once brokers are there.
    EnsureOffsetsTopic,
    /// Answered by the Raft leader's node from its quorum state, never
    /// decided here.
    DescribeQuorum,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TopicRef {
    Name(String),
    Id(Uuid),
}

/// A partition's state as a reply carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    pub leader: NodeId,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub isr: Vec<NodeId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedTopic {
    pub name: String,
    pub topic_id: Uuid,
    pub partitions: i32,
    pub replication_factor: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerReply {
    Registered {
        broker_epoch: u64,
    },
    Heartbeat {
        fenced: bool,
        shutdown_ready: bool,
    },
    CreateTopics(Vec<Result<CreatedTopic, ControllerError>>),
    /// Per topic: its name when resolved.
    DeleteTopics(Vec<Result<String, ControllerError>>),
    CreatePartitions(Vec<Result<(), ControllerError>>),
    AlterPartition(Vec<Result<PartitionState, ControllerError>>),
    ElectLeaders(Vec<((String, i32), Result<(), ControllerError>)>),
    ProducerIds {
        first: i64,
        count: i64,
    },
    Quorum(crate::cluster::quorum::QuorumStatus),
    Done,
}

/// A decision: records to commit, then the reply (completed against the
/// image once the records are applied).
#[derive(Debug)]
pub struct Decision {
    pub records: Vec<MetadataRecord>,
    pub reply: Reply,
}

/// A reply, some parts of which are known only after the records apply.
#[derive(Debug)]
pub enum Reply {
    Ready(Result<ControllerReply, ControllerError>),
    /// The broker epoch is the index of the entry that registered it.
    Registered(NodeId),
    Heartbeat(NodeId),
    AlterPartition(Vec<Result<(Uuid, i32), ControllerError>>),
}

impl Reply {
    /// The reply against the image after the decision's records applied.
    pub fn complete(self, image: &MetadataImage) -> Result<ControllerReply, ControllerError> {
        match self {
            Reply::Ready(r) => r,
            Reply::Registered(node) => image
                .broker(node)
                .map(|b| ControllerReply::Registered {
                    broker_epoch: b.broker_epoch,
                })
                .ok_or(ControllerError::UnknownBroker(node)),
            Reply::Heartbeat(node) => {
                let b = image
                    .broker(node)
                    .ok_or(ControllerError::UnknownBroker(node))?;
                Ok(ControllerReply::Heartbeat {
                    fenced: b.fenced,
                    shutdown_ready: b.shutting_down && image.partitions_led_by(node).is_empty(),
                })
            }
            Reply::AlterPartition(items) => Ok(ControllerReply::AlterPartition(
                items
                    .into_iter()
                    .map(|r| r.and_then(|(id, p)| partitions::state_of(image, &id, p)))
                    .collect(),
            )),
        }
    }
}

/// A broker's heartbeat deadline, in controller time (ms).
#[derive(Debug, Clone, Copy)]
struct Session {
    broker_epoch: u64,
    /// When its last heartbeat (or registration, or this controller's first
    /// look at it) arrived.
    heard_ms: u64,
    deadline_ms: u64,
}

impl Session {
    fn new(broker_epoch: u64, now_ms: u64, timeout_ms: u64) -> Session {
        Session {
            broker_epoch,
            heard_ms: now_ms,
            deadline_ms: now_ms + timeout_ms,
        }
    }
}

pub struct Controller {
    config: ControllerConfig,
    sessions: HashMap<NodeId, Session>,
    /// Per broker: when a connection to its controller listener was last
    /// refused, if none has succeeded since.
    refused: HashMap<NodeId, u64>,
    new_topic_id: Box<dyn FnMut() -> Uuid>,
}

impl Controller {
    pub fn new(config: ControllerConfig, new_topic_id: Box<dyn FnMut() -> Uuid>) -> Controller {
        Controller {
            config,
            sessions: HashMap::new(),
            refused: HashMap::new(),
            new_topic_id,
        }
    }

    /// Forgets every session: a newly active controller gives each broker a
    /// full session timeout from now.
    pub fn reset_sessions(&mut self) {
        self.sessions.clear();
        self.refused.clear();
    }

    /// The shell's connection to broker `node`'s controller listener was
    /// refused (ECONNREFUSED): nothing listens there now.
    pub fn link_refused(&mut self, node: NodeId, now_ms: u64) {
        self.refused.insert(node, now_ms);
    }

    /// The shell connected to broker `node`'s controller listener.
    pub fn link_connected(&mut self, node: NodeId) {
        self.refused.remove(&node);
    }

    pub fn decide(
        &mut self,
        image: &MetadataImage,
        request: ControllerRequest,
        now_ms: u64,
    ) -> Decision {
        use ControllerRequest as R;
        match request {
            R::RegisterBroker(reg) => self.register(image, reg, now_ms),
            R::Heartbeat {
                node_id,
                broker_epoch,
                metadata_offset,
                want_shutdown,
            } => self.heartbeat(
                image,
                node_id,
                broker_epoch,
                metadata_offset,
                want_shutdown,
                now_ms,
            ),
            R::CreateTopics {
                topics,
                validate_only,
            } => self.create_topics(image, topics, validate_only),
            R::DeleteTopics { topics } => topics::delete_topics(image, &topics),
            R::CreatePartitions {
                topics,
                validate_only,
            } => topics::create_partitions(image, &topics, validate_only),
            R::AlterPartition {
                node_id,
                broker_epoch,
                items,
            } => partitions::alter_partition(image, node_id, broker_epoch, &items),
            R::ElectPreferredLeaders { partitions } => {
                partitions::elect_preferred(image, partitions.as_deref())
            }
            R::AllocateProducerIds {
                node_id,
                broker_epoch,
            } => self.allocate_producer_ids(image, node_id, broker_epoch),
            R::AlterTopicConfigs {
                topic,
                ops,
                replace,
                validate_only,
            } => topics::alter_configs(image, &topic, &ops, replace, validate_only),
            R::AlterBrokerConfigs {
                broker,
                ops,
                replace,
                validate_only,
            } => topics::alter_broker_configs(image, broker, &ops, replace, validate_only),
            R::EnsureOffsetsTopic => self.ensure_offsets_topic(image),
            R::DescribeQuorum => Decision {
                records: Vec::new(),
                reply: Reply::Ready(Err(ControllerError::InvalidRequest(
                    "DescribeQuorum is answered by the quorum, not the controller".into(),
                ))),
            },
        }
    }

    /// Periodic work: fence brokers whose session expired or whose process
    /// is gone, bring offline partitions back when an in-sync replica is
    /// active again.
    pub fn tick(&mut self, image: &MetadataImage, now_ms: u64) -> Vec<MetadataRecord> {
        let mut records = Vec::new();
        let mut gone = Vec::new();
        for b in image.brokers.values() {
            let node = b.registration.node_id;
            if b.fenced {
                self.sessions.remove(&node);
                continue;
            }
            let timeout = self.config.session_timeout_ms;
            let session =
                self.sessions
                    .entry(node)
                    .or_insert(Session::new(b.broker_epoch, now_ms, timeout));
            if session.broker_epoch != b.broker_epoch {
                *session = Session::new(b.broker_epoch, now_ms, timeout);
            }
            let session = *session;
            if session.deadline_ms <= now_ms {
                tracing::warn!(
                    broker = node,
                    "broker session expired; fencing it and moving its leaderships"
                );
                gone.push((node, b.broker_epoch));
            } else if let Some(refused_ms) = self.process_gone(node, &session, now_ms) {
                tracing::warn!(
                    broker = node,
                    silent_ms = now_ms - session.heard_ms,
                    refused_ms_ago = now_ms - refused_ms,
                    "broker's controller listener refuses connections and it stopped heartbeating; fencing it and moving its leaderships"
                );
                gone.push((node, b.broker_epoch));
            }
        }
        for (node, epoch) in &gone {
            self.sessions.remove(node);
            self.refused.remove(node);
            records.push(MetadataRecord::FenceBroker {
                node_id: *node,
                broker_epoch: *epoch,
            });
        }
        let gone: Vec<NodeId> = gone.into_iter().map(|(n, _)| n).collect();
        records.extend(partitions::moves_without(image, &gone));
        if records.is_empty() {
            records.extend(partitions::revive_offline(image, &[]));
        }
        records
    }

    /// When a broker's listener refused a connection after its last
    /// heartbeat, which is now `refused_timeout_ms` old: its process is gone.
    fn process_gone(&self, node: NodeId, session: &Session, now_ms: u64) -> Option<u64> {
        let refused_ms = *self.refused.get(&node)?;
        let silent = now_ms.saturating_sub(session.heard_ms) >= self.config.refused_timeout_ms;
        (refused_ms >= session.heard_ms && silent).then_some(refused_ms)
    }

    fn allocate_producer_ids(
        &mut self,
        image: &MetadataImage,
        node_id: NodeId,
        broker_epoch: u64,
    ) -> Decision {
        if image
            .broker(node_id)
            .is_none_or(|b| b.broker_epoch != broker_epoch)
        {
            return Decision::refuse(ControllerError::StaleBrokerEpoch(node_id));
        }
        let first = image.next_producer_id;
        let count = self.config.producer_id_block_size;
        Decision {
            records: vec![MetadataRecord::ProducerIds {
                node_id,
                next_producer_id: first + count,
            }],
            reply: Reply::Ready(Ok(ControllerReply::ProducerIds { first, count })),
        }
    }
}

impl Decision {
    fn refuse(e: ControllerError) -> Decision {
        Decision {
            records: Vec::new(),
            reply: Reply::Ready(Err(e)),
        }
    }

    fn ready(records: Vec<MetadataRecord>, reply: ControllerReply) -> Decision {
        Decision {
            records,
            reply: Reply::Ready(Ok(reply)),
        }
    }
}

/// Configs of a new topic, as given.
pub type TopicConfigs = BTreeMap<String, String>;

#[cfg(test)]
mod tests;
