//! A shard applying a metadata image: it opens the partitions this broker
//! hosts that the shard owns, gives each its role (leader, follower of a
//! given broker, or offline), hands followers to the fetch loop of their
//! leader, deletes the partitions of deleted topics, and loads or unloads
//! the consumer groups of the `__consumer_offsets` partitions it gains or
//! loses the leadership of.
//!
//! Runs on each shard for its own partitions; images arrive in log order
//! (coalesced) from the cluster service on shard 0.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use super::Shard;
use crate::cluster::controller::{AlterPartitionItem, ControllerReply, ControllerRequest};
use crate::cluster::image::{ImageChanges, MetadataImage, PartitionImage, TopicImage};
use crate::cluster::records::NO_LEADER;
use crate::cluster::topic_config::TopicConfig;
use crate::cluster::CONSUMER_OFFSETS_TOPIC;
use crate::config::FlushPolicy;
use crate::partition::replica::{Effects, Role};
use crate::partition::Assignment;
use crate::partition::{Partition, PartitionError};

impl Shard {
    /// This process's registration is the image's and it is unfenced: only
    /// then does the broker take roles (a restarted broker must not resume
    /// a leadership its lost in-memory state no longer backs).
    fn takes_roles(&self, image: &MetadataImage) -> bool {
        image
            .broker(self.node_id)
            .is_some_and(|b| b.registration.incarnation_id == self.incarnation_id && !b.fenced)
    }

    fn assignment(&self, image: &MetadataImage, t: &TopicImage, p: &PartitionImage) -> Assignment {
        let role = if !self.takes_roles(image) || p.leader == NO_LEADER {
            Role::Offline
        } else if p.leader == self.node_id {
            Role::Leader
        } else {
            Role::Follower(p.leader)
        };
        Assignment {
            role,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            replicas: p.replicas.clone(),
            isr: p.isr.clone(),
            ineligible: image
                .brokers
                .values()
                .filter(|b| !b.is_active())
                .map(|b| b.registration.node_id)
                .collect(),
            config: TopicConfig::resolve_with(
                &t.configs,
                &self.config,
                &image.dynamic_broker_configs(self.node_id),
            ),
        }
    }

    /// Applies a newer image. Partitions that cannot be opened stay offline
    /// (KAFKA_STORAGE_ERROR); the error names them.
    pub async fn apply_image(
        self: &Rc<Self>,
        image: Arc<MetadataImage>,
        changes: ImageChanges,
    ) -> Result<(), String> {
        let old = self.image.replace(image.clone());
        for (name, _) in &changes.removed_topics {
            self.drop_topic(name).await;
        }
        let everything = old.offset == 0
            || changes.brokers
            || changes.broker_configs
            || changes.partitions.is_empty();
        let mut targets: Vec<(String, i32)> = if everything {
            image
                .topics
                .values()
                .flat_map(|t| (0..t.partition_count()).map(move |p| (t.name.clone(), p)))
                .collect()
        } else {
            let mut t = changes.partitions.clone();
            for name in &changes.configs {
                if let Some(topic) = image.topic(name) {
                    t.extend((0..topic.partition_count()).map(|p| (name.clone(), p)));
                }
            }
            t
        };
        targets.retain(|(t, p)| self.owner(t, *p) == self.id);
        targets.sort();
        targets.dedup();
        let mut failed = Vec::new();
        for (topic, p) in targets {
            if let Err(e) = self.apply_partition(&image, &topic, p).await {
                failed.push(format!("{topic}-{p}: {e}"));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(format!("opening {}", failed.join("; ")))
        }
    }

    async fn apply_partition(
        self: &Rc<Self>,
        image: &MetadataImage,
        topic: &str,
        index: i32,
    ) -> Result<(), PartitionError> {
        let Some(t) = image.topic(topic) else {
            return Ok(());
        };
        let Some(p) = t.partitions.get(index as usize) else {
            return Ok(());
        };
        if !p.replicas.contains(&self.node_id) {
            return Ok(());
        }
        if self
            .partition(topic, index)
            .is_some_and(|existing| existing.topic_id != t.id)
        {
            // The topic was deleted and created again under the same name.
            self.drop_topic(topic).await;
        }
        let part = match self.partition(topic, index) {
            Some(part) => part,
            None => match self.open_partition(t, index).await? {
                Some(part) => part,
                None => return Ok(()),
            },
        };
        let assignment = self.assignment(image, t, p);
        let was_leader = part.is_leader();
        let effects = part.assign(&assignment, now_ms());
        self.follow(&part, assignment.role);
        self.handle_effects(&part, effects);
        if topic == CONSUMER_OFFSETS_TOPIC && was_leader != part.is_leader() {
            self.move_groups(&part, part.is_leader()).await;
        }
        Ok(())
    }

    /// Opens (recovers) a partition this shard hosts; `None` when it stays
    /// offline.
    async fn open_partition(
        self: &Rc<Self>,
        t: &TopicImage,
        index: i32,
    ) -> Result<Option<Rc<Partition>>, PartitionError> {
        let key = (t.name.clone(), index);
        if self.offline.borrow().contains(&key) {
            return Ok(None);
        }
        let checkpoint = self.checkpoints.borrow_mut().take(&t.name, index);
        let opened = Partition::open(
            &self.config.data_dir,
            &t.name,
            t.id,
            index,
            self.log_config(t),
            self.budget.clone(),
            self.space.clone(),
            self.config.flush_policy == FlushPolicy::GroupCommit,
            self.node_id,
            self.config.replica_lag_time_max_ms,
            checkpoint,
        )
        .await;
        match opened {
            Ok(part) => {
                self.partitions.borrow_mut().insert(key, part.clone());
                Ok(Some(part))
            }
            Err(e) => {
                // Offline: left untouched on disk for an operator (`ringtail
                // repair` for a corrupt log); the rest keeps serving.
                if matches!(e, PartitionError::Log(crate::log::LogError::Corrupt { .. })) {
                    tracing::error!(topic = %t.name, partition = index, error = %e, "partition fenced");
                } else {
                    tracing::error!(topic = %t.name, partition = index, error = %e, "partition offline: opening it failed");
                }
                self.offline.borrow_mut().insert(key);
                Err(e)
            }
        }
    }

    /// Puts a follower under the fetch loop of its leader (one loop per
    /// leader broker on this shard) and takes it out of any other.
    fn follow(self: &Rc<Self>, part: &Rc<Partition>, role: Role) {
        let leader = match role {
            Role::Follower(l) => Some(l),
            _ => None,
        };
        let key = (part.topic.clone(), part.index);
        for (broker, fetcher) in self.fetchers.borrow().iter() {
            if Some(*broker) != leader {
                fetcher.remove(&key);
            }
        }
        let Some(leader) = leader else {
            return;
        };
        let fetcher = self
            .fetchers
            .borrow_mut()
            .entry(leader)
            .or_insert_with(|| crate::replication::Fetcher::start(self, leader))
            .clone();
        fetcher.add(part.clone());
    }

    /// Acts on what a partition's replication state asks: an ISR change
    /// goes to the controller; a refused or lost one may be asked again.
    pub fn handle_effects(self: &Rc<Self>, part: &Rc<Partition>, effects: Effects) {
        let Some(isr) = effects.alter_isr else {
            return;
        };
        let shrink = isr.len() < part.replication_view().1;
        let item = AlterPartitionItem {
            topic_id: part.topic_id,
            partition: part.index,
            leader_epoch: part.leader_epoch(),
            partition_epoch: part.partition_epoch(),
            new_isr: isr,
        };
        tracing::info!(topic = %part.topic, partition = part.index, isr = ?item.new_isr, "asking the controller for an ISR change");
        let (shard, part, node) = (self.clone(), part.clone(), self.node_id);
        glommio::spawn_local(async move {
            let reply = shard
                .invoke_on(0, move |s: Rc<Shard>| async move {
                    let cluster = s.cluster();
                    let Some(broker_epoch) = cluster.broker_epoch() else {
                        return Err(crate::cluster::controller::ControllerError::NotController);
                    };
                    cluster
                        .call(ControllerRequest::AlterPartition {
                            node_id: node,
                            broker_epoch,
                            items: vec![item],
                        })
                        .await
                })
                .await;
            let accepted = matches!(
                &reply,
                Ok(Ok(ControllerReply::AlterPartition(r))) if r.first().is_some_and(|r| r.is_ok())
            );
            if !accepted {
                tracing::debug!(topic = %part.topic, partition = part.index, reply = ?reply, "ISR change not accepted");
                part.alter_failed();
            } else if shrink {
                crate::metrics::with(|m| m.isr_shrinks.inc());
            } else {
                crate::metrics::with(|m| m.isr_expands.inc());
            }
        })
        .detach();
    }

    /// Every lag-check interval: leaders drop followers that fell behind.
    pub fn start_replica_ticker(self: &Rc<Self>) {
        let shard = self.clone();
        glommio::spawn_local(async move {
            let interval =
                std::time::Duration::from_millis(crate::config::REPLICA_LAG_CHECK_INTERVAL_MS);
            loop {
                glommio::timer::sleep(interval).await;
                let now = now_ms();
                for part in shard.local_partitions() {
                    if part.is_leader() {
                        let effects = part.tick(now);
                        shard.handle_effects(&part, effects);
                    }
                }
            }
        })
        .detach();
    }

    /// Loads (as new leader) or forgets (as former leader) the consumer
    /// groups stored in an `__consumer_offsets` partition.
    async fn move_groups(self: &Rc<Self>, part: &Rc<Partition>, lead: bool) {
        let partitions = self.config.offsets_topic_partitions;
        let index = part.index;
        self.groups.loaded.borrow_mut().remove(&index);
        self.groups
            .groups
            .borrow_mut()
            .retain(|g, _| crate::group::offsets_partition_for(g, partitions) != index);
        if lead {
            if let Err(e) = crate::protocol::groups::load_partition_groups(self, part).await {
                tracing::error!(partition = index, error = %e, "loading consumer groups");
            }
        }
    }

    /// Deletes a topic's partitions here. An offline partition's directory
    /// is left on disk (it may hold data an operator wants back).
    pub(super) async fn drop_topic(&self, name: &str) {
        self.offline.borrow_mut().retain(|(t, _)| t != name);
        let removed: Vec<Rc<Partition>> = {
            let mut parts = self.partitions.borrow_mut();
            let keys: Vec<super::PartitionKey> =
                parts.keys().filter(|(t, _)| t == name).cloned().collect();
            keys.iter().filter_map(|k| parts.remove(k)).collect()
        };
        for p in removed {
            for fetcher in self.fetchers.borrow().values() {
                fetcher.remove(&(p.topic.clone(), p.index));
            }
            p.mark_deleted();
            if let Err(e) = std::fs::remove_dir_all(&p.dir) {
                tracing::warn!(dir = %p.dir.display(), error = %e, "removing deleted partition");
            }
        }
    }
}

/// Replication time: milliseconds on this process's monotonic clock.
/// The wall clock in Unix milliseconds: record timestamps (LogAppendTime,
/// timestamp bounds, time retention) are compared with it.
pub fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}
