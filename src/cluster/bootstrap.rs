//! A node's cluster settings from the broker configuration, the first
//! records of a new cluster (its id; on a data dir from a single-node
//! release, the topics of `topics.json` and the next producer id, so such a
//! dir opens unchanged), and `meta.properties` (Kafka's node and cluster
//! ids, checked at every start).
//!
//! Runs once at start-up, before the shards.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::controller::ControllerConfig;
use super::quorum::node::QuorumConfig;
use super::records::{random_cluster_id, MetadataRecord, NodeId, PartitionRecord, TopicRecord};
use super::service::ClusterConfig;
use super::transport::LinkLimits;
use super::TopicTable;
use crate::config::{self, Config};

const META_PROPERTIES: &str = "meta.properties";
const LEGACY_PRODUCER_ID_BLOCK: &str = "producer-id-block";

/// `node.id` and `cluster.id` from `meta.properties`, if it exists.
fn read_meta_properties(data_dir: &Path) -> Result<Option<(Option<i32>, Option<String>)>> {
    let path = data_dir.join(META_PROPERTIES);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().to_string())
    };
    Ok(Some((
        value("node.id").and_then(|v| v.parse().ok()),
        value("cluster.id"),
    )))
}

/// Refuses a data dir that belongs to another node id.
pub fn check_meta_properties(config: &Config) -> Result<()> {
    if let Some((Some(node), _)) = read_meta_properties(&config.data_dir)? {
        if node != config.node_id {
            bail!(
                "{} belongs to node {node}, not node {}; start with --node-id {node} or another --data-dir",
                config.data_dir.join(META_PROPERTIES).display(),
                config.node_id
            );
        }
    }
    Ok(())
}

/// Writes `meta.properties` once the cluster id is known.
pub fn write_meta_properties(data_dir: &Path, node_id: NodeId, cluster_id: &str) -> Result<()> {
    let path = data_dir.join(META_PROPERTIES);
    if let Some((_, Some(existing))) = read_meta_properties(data_dir)? {
        if existing != cluster_id {
            tracing::warn!(
                existing,
                cluster_id,
                "meta.properties names another cluster id"
            );
        }
        return Ok(());
    }
    let text = format!("version=1\nnode.id={node_id}\ncluster.id={cluster_id}\n");
    super::write_atomically(&path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// The records a new cluster starts with when this node bootstraps it.
pub fn bootstrap_records(config: &Config) -> Result<Vec<MetadataRecord>> {
    let known = read_meta_properties(&config.data_dir)?.and_then(|(_, c)| c);
    let cluster_id = known
        .or_else(|| config.cluster_id.clone())
        .unwrap_or_else(random_cluster_id);
    let mut records = vec![MetadataRecord::Bootstrap { cluster_id }];
    let table = TopicTable::load(&config.data_dir).context("loading topics.json")?;
    let node = config.node_id;
    for t in table.topics.values() {
        records.push(MetadataRecord::Topic(TopicRecord {
            name: t.name.clone(),
            topic_id: t.id,
            internal: t.internal,
            configs: t.configs.clone(),
        }));
        for p in 0..t.partitions {
            records.push(MetadataRecord::Partition(PartitionRecord {
                topic_id: t.id,
                partition: p,
                replicas: vec![node],
                isr: vec![node],
                leader: node,
                leader_epoch: 0,
                partition_epoch: 0,
            }));
        }
    }
    let block = config.data_dir.join(LEGACY_PRODUCER_ID_BLOCK);
    if let Ok(text) = std::fs::read_to_string(&block) {
        if let Ok(next) = text.trim().parse::<i64>() {
            records.push(MetadataRecord::ProducerIds {
                node_id: node,
                next_producer_id: next,
            });
        }
    }
    if !table.topics.is_empty() {
        tracing::info!(
            topics = table.topics.len(),
            "importing the topics of a single-node data dir into the cluster metadata"
        );
    }
    Ok(records)
}

fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to nothing"))
}

/// The cluster service's settings for this node.
pub fn cluster_config(config: &Config) -> Result<ClusterConfig> {
    let node = config.node_id;
    let declared = config.voters()?;
    let voters: Vec<(NodeId, SocketAddr)> = declared
        .iter()
        .map(|(id, addr)| Ok((*id, resolve(addr)?)))
        .collect::<Result<_>>()?;
    let controller_listen = match &config.controller_listen {
        Some(l) => Some(l.parse().context("controller_listen")?),
        None => voters.iter().find(|(id, _)| *id == node).map(|(_, a)| *a),
    };
    let voter_ids: Vec<NodeId> = if voters.is_empty() {
        vec![node]
    } else {
        voters.iter().map(|(id, _)| *id).collect()
    };
    let (host, port) = config.advertised();
    let offsets_rf = config
        .offsets_topic_replication_factor
        .min(voter_ids.len() as i32);
    Ok(ClusterConfig {
        node_id: node,
        voters: if voters.is_empty() {
            vec![(node, "127.0.0.1:0".parse().expect("literal"))]
        } else {
            voters
        },
        controller_listen,
        data_dir: config.data_dir.clone(),
        advertised_host: host,
        advertised_port: port,
        controller: ControllerConfig {
            session_timeout_ms: config.broker_session_timeout_ms,
            refused_timeout_ms: config.broker_refused_timeout_ms(),
            producer_id_block_size: config::PRODUCER_ID_BLOCK_SIZE,
            default_partitions: config.default_partitions,
            default_replication_factor: config.default_replication_factor,
            offsets_topic_partitions: config.offsets_topic_partitions,
            offsets_topic_replication_factor: offsets_rf,
            offsets_topic_segment_bytes: config.offsets_topic_segment_bytes,
        },
        quorum: QuorumConfig {
            node_id: node,
            voters: voter_ids,
            election_tick: config::RAFT_ELECTION_TICKS,
            heartbeat_tick: config::RAFT_HEARTBEAT_TICKS,
            fixed_election_tick: None,
            snapshot_every_entries: config::METADATA_SNAPSHOT_EVERY_ENTRIES,
            max_size_per_msg: config::RAFT_MAX_MESSAGE_BYTES,
            max_inflight_msgs: config::RAFT_MAX_INFLIGHT_MESSAGES,
        },
        links: LinkLimits {
            max_frame_bytes: config::CONTROLLER_MAX_FRAME_BYTES,
            queue_messages: config::CONTROLLER_PEER_QUEUE_MESSAGES,
            reconnect_backoff: Duration::from_millis(config::CONTROLLER_RECONNECT_BACKOFF_MS),
            connect_timeout: Duration::from_millis(config::CONTROLLER_CONNECT_TIMEOUT_MS),
        },
        raft_tick: Duration::from_millis(config::RAFT_TICK_MS),
        controller_tick: Duration::from_millis(config::CONTROLLER_TICK_MS),
        heartbeat_interval: Duration::from_millis(config.broker_heartbeat_interval_ms),
        request_timeout: Duration::from_millis(config.controller_request_timeout_ms),
        queue_limit: config::CONTROLLER_QUEUE_LIMIT,
        bootstrap: bootstrap_records(config)?,
        incarnation_id: uuid::Uuid::new_v4(),
    })
}
