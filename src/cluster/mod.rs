//! Cluster metadata of this (single-node) broker: the topic table, its
//! persistence, and partition placement on shards.
//!
//! Every shard holds a full copy of the table. Shard 0 acts as controller:
//! it alone changes the table, persists it (temp file, fsync, rename) and then
//! pushes the new copy to every shard.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub mod active;
pub mod bootstrap;
pub mod broker_config;
pub mod controller;
pub mod image;
pub mod placement;
pub mod quorum;
pub mod records;
pub mod service;
pub mod topic_config;
pub mod transport;

/// Topic table file in the data directory.
pub const TOPICS_FILE: &str = "topics.json";
/// Longest topic name (Kafka: 249).
pub const MAX_TOPIC_NAME_LEN: usize = 249;
/// The internal topic holding committed offsets and group metadata.
pub const CONSUMER_OFFSETS_TOPIC: &str = "__consumer_offsets";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub name: String,
    pub id: uuid::Uuid,
    pub partitions: i32,
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
    #[serde(default)]
    pub internal: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicTable {
    pub topics: BTreeMap<String, TopicMeta>,
}

impl TopicTable {
    pub fn load(data_dir: &Path) -> std::io::Result<TopicTable> {
        let path = data_dir.join(TOPICS_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TopicTable::default()),
            Err(e) => Err(e),
        }
    }

    pub fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_atomically(&data_dir.join(TOPICS_FILE), &bytes)
    }

    pub fn get(&self, name: &str) -> Option<&TopicMeta> {
        self.topics.get(name)
    }

    pub fn by_id(&self, id: &uuid::Uuid) -> Option<&TopicMeta> {
        self.topics.values().find(|t| &t.id == id)
    }
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new
/// content: temp file, fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Replaces `path` with `bytes` through a temp file and a rename, without
/// syncing: for files rebuilt from the log at open (the leader epoch
/// checkpoint), where a crash may leave the old or the new content, never a
/// torn one, and neither is trusted over the log.
pub fn write_replaced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Owner shard of a partition: a topic's partitions are spread round-robin
/// from a per-topic starting shard.
pub fn owner_shard(topic: &str, partition: i32, shards: usize) -> usize {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in topic.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    ((h % shards as u64) as usize + partition as usize) % shards
}

/// Kafka's topic name rule: 1..=249 of `[a-zA-Z0-9._-]`, not "." or "..".
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOPIC_NAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kafka_rules() {
        assert!(valid_topic_name("orders.v1_x-y"));
        assert!(!valid_topic_name(""));
        assert!(!valid_topic_name(".."));
        assert!(!valid_topic_name("a b"));
        assert!(!valid_topic_name(&"x".repeat(250)));
    }

    #[test]
    fn placement_spreads_partitions() {
        let shards: Vec<usize> = (0..4).map(|p| owner_shard("t", p, 4)).collect();
        let mut sorted = shards.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2, 3]);
        assert_eq!(owner_shard("t", 3, 1), 0);
    }

    #[test]
    fn table_round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = TopicTable::default();
        t.topics.insert(
            "a".into(),
            TopicMeta {
                name: "a".into(),
                id: uuid::Uuid::new_v4(),
                partitions: 3,
                configs: BTreeMap::new(),
                internal: false,
            },
        );
        t.save(dir.path()).unwrap();
        assert_eq!(TopicTable::load(dir.path()).unwrap(), t);
    }
}
