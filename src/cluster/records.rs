//! Records of the cluster metadata log: the facts the active controller
//! decides, replicated by the controller quorum and applied by every broker
//! in log order into its [`MetadataImage`](super::image::MetadataImage).
//!
//! Pure data; encoded as JSON inside each Raft entry (metadata changes are
//! rare and small next to the data path, and a readable log is worth more
//! than a few bytes).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Broker ids as Kafka numbers them.
pub type NodeId = i32;

/// No leader (Kafka's -1 in PartitionRecord.leader).
pub const NO_LEADER: NodeId = -1;

/// One fact of the metadata log. Names follow Kafka's KRaft record types.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataRecord {
    /// The cluster's identity, written once by the first active controller.
    Bootstrap { cluster_id: String },
    /// A broker (re)registered; it starts fenced until it has caught up.
    RegisterBroker(BrokerRegistration),
    /// A broker's session expired or it shut down: it leads nothing.
    FenceBroker { node_id: NodeId, broker_epoch: u64 },
    /// A registered broker caught up with the metadata log.
    UnfenceBroker { node_id: NodeId, broker_epoch: u64 },
    /// A broker asked for a controlled shutdown.
    BrokerShuttingDown { node_id: NodeId, broker_epoch: u64 },
    /// A topic exists (Kafka's TopicRecord, with its initial configs).
    Topic(TopicRecord),
    /// A partition exists with this assignment (Kafka's PartitionRecord).
    Partition(PartitionRecord),
    /// Leader and/or ISR of a partition changed (PartitionChangeRecord).
    PartitionChange(PartitionChange),
    /// A topic was deleted (RemoveTopicRecord).
    RemoveTopic { topic_id: Uuid },
    /// A topic config was set (`Some`) or removed (`None`) (ConfigRecord).
    TopicConfig {
        topic_id: Uuid,
        key: String,
        value: Option<String>,
    },
    /// A dynamic broker config was set (`Some`) or removed (`None`), for
    /// one broker or (`broker: None`) the cluster default (ConfigRecord of
    /// a BROKER resource).
    BrokerConfig {
        broker: Option<NodeId>,
        key: String,
        value: Option<String>,
    },
    /// The next block of producer ids handed to a broker (ProducerIdsRecord).
    ProducerIds {
        node_id: NodeId,
        next_producer_id: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRegistration {
    pub node_id: NodeId,
    /// Random per process start: tells a restarted broker from its old self.
    pub incarnation_id: Uuid,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub name: String,
    pub topic_id: Uuid,
    pub internal: bool,
    pub configs: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    pub topic_id: Uuid,
    pub partition: i32,
    pub replicas: Vec<NodeId>,
    pub isr: Vec<NodeId>,
    pub leader: NodeId,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
}

/// A change to one partition. A new leader bumps the leader epoch; every
/// change bumps the partition epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionChange {
    pub topic_id: Uuid,
    pub partition: i32,
    pub leader: Option<NodeId>,
    pub isr: Option<Vec<NodeId>>,
}

/// One Raft entry: the records one controller operation produced, applied
/// atomically, tagged so the proposer recognises its own entry when applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataEntry {
    pub proposer: NodeId,
    pub request_id: u64,
    pub records: Vec<MetadataRecord>,
}

impl MetadataEntry {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("metadata records always serialize")
    }

    pub fn decode(bytes: &[u8]) -> Result<MetadataEntry, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// A Kafka-style cluster id: a random UUID as 22 characters of URL-safe
/// base64 without padding (what `kafka-storage random-uuid` prints).
pub fn random_cluster_id() -> String {
    base64_url(Uuid::new_v4().as_bytes())
}

fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_look_like_kafkas() {
        let id = random_cluster_id();
        assert_eq!(id.len(), 22, "{id}");
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(base64_url(&[0xfb, 0xff]), "-_8");
        assert_eq!(base64_url(b"Man"), "TWFu");
    }

    #[test]
    fn entries_round_trip() {
        let entry = MetadataEntry {
            proposer: 2,
            request_id: 9,
            records: vec![
                MetadataRecord::Bootstrap {
                    cluster_id: "x".into(),
                },
                MetadataRecord::PartitionChange(PartitionChange {
                    topic_id: Uuid::from_u128(7),
                    partition: 3,
                    leader: Some(1),
                    isr: None,
                }),
            ],
        };
        assert_eq!(MetadataEntry::decode(&entry.encode()).unwrap(), entry);
    }
}
