//! Partition decisions: ISR changes asked by leaders (Kafka's AlterPartition,
//! checked against leader and partition epochs), leader elections when
//! brokers go away or come back, preferred leader election.

use uuid::Uuid;

use super::AlterPartitionItem;
use super::{ControllerError, ControllerReply, Decision, PartitionState, Reply};
use crate::cluster::image::{MetadataImage, PartitionImage};
use crate::cluster::placement::{elect_leader, without_broker};
use crate::cluster::records::{MetadataRecord, NodeId, PartitionChange, NO_LEADER};

pub(super) fn state_of(
    image: &MetadataImage,
    topic_id: &Uuid,
    partition: i32,
) -> Result<PartitionState, ControllerError> {
    let t = image
        .topic_by_id(topic_id)
        .ok_or(ControllerError::UnknownTopicId(*topic_id))?;
    let p = usize::try_from(partition)
        .ok()
        .and_then(|i| t.partitions.get(i))
        .ok_or_else(|| {
            ControllerError::UnknownTopicOrPartition(format!("{}-{partition}", t.name))
        })?;
    Ok(PartitionState {
        leader: p.leader,
        leader_epoch: p.leader_epoch,
        partition_epoch: p.partition_epoch,
        isr: p.isr.clone(),
    })
}

fn partition_of<'a>(
    image: &'a MetadataImage,
    topic_id: &Uuid,
    partition: i32,
) -> Result<&'a PartitionImage, ControllerError> {
    let t = image
        .topic_by_id(topic_id)
        .ok_or(ControllerError::UnknownTopicId(*topic_id))?;
    usize::try_from(partition)
        .ok()
        .and_then(|i| t.partitions.get(i))
        .ok_or_else(|| ControllerError::UnknownTopicOrPartition(format!("{}-{partition}", t.name)))
}

/// Checks one ISR change asked by a partition leader.
fn check_alter(
    image: &MetadataImage,
    leader: NodeId,
    item: &AlterPartitionItem,
) -> Result<Option<MetadataRecord>, ControllerError> {
    let p = partition_of(image, &item.topic_id, item.partition)?;
    if p.leader != leader {
        return Err(ControllerError::NotLeaderOrFollower);
    }
    if item.leader_epoch != p.leader_epoch {
        return Err(ControllerError::FencedLeaderEpoch);
    }
    if item.partition_epoch != p.partition_epoch {
        return Err(ControllerError::InvalidUpdateVersion);
    }
    if !item.new_isr.contains(&leader) {
        return Err(ControllerError::InvalidRequest(
            "the ISR must contain the leader".into(),
        ));
    }
    for r in &item.new_isr {
        let eligible = p.replicas.contains(r) && image.broker(*r).is_some_and(|b| b.is_active());
        if !eligible && !p.isr.contains(r) {
            return Err(ControllerError::IneligibleReplica(*r));
        }
    }
    let mut isr = item.new_isr.clone();
    isr.dedup();
    if isr == p.isr {
        return Ok(None);
    }
    Ok(Some(MetadataRecord::PartitionChange(PartitionChange {
        topic_id: item.topic_id,
        partition: item.partition,
        leader: None,
        isr: Some(isr),
    })))
}

pub(super) fn alter_partition(
    image: &MetadataImage,
    node: NodeId,
    broker_epoch: u64,
    items: &[AlterPartitionItem],
) -> Decision {
    if image
        .broker(node)
        .is_none_or(|b| b.broker_epoch != broker_epoch)
    {
        return Decision::refuse(ControllerError::StaleBrokerEpoch(node));
    }
    let mut records = Vec::new();
    let mut results = Vec::new();
    for item in items {
        match check_alter(image, node, item) {
            Ok(record) => {
                records.extend(record);
                results.push(Ok((item.topic_id, item.partition)));
            }
            Err(e) => results.push(Err(e)),
        }
    }
    Decision {
        records,
        reply: Reply::AlterPartition(results),
    }
}

/// Leadership and ISR changes once the brokers `gone` stop being active.
pub(super) fn moves_without(image: &MetadataImage, gone: &[NodeId]) -> Vec<MetadataRecord> {
    if gone.is_empty() {
        return Vec::new();
    }
    let active = |r: NodeId| !gone.contains(&r) && image.broker(r).is_some_and(|b| b.is_active());
    let mut records = Vec::new();
    for t in image.topics.values() {
        for (index, p) in t.partitions.iter().enumerate() {
            let mut state = p.clone();
            let mut changed = false;
            for g in gone {
                if let Some((leader, isr)) = without_broker(&state, *g, active) {
                    if let Some(l) = leader {
                        state.leader = l;
                    }
                    if let Some(i) = isr {
                        state.isr = i;
                    }
                    changed = true;
                }
            }
            if changed {
                records.push(change(t.id, index as i32, p, &state));
            }
        }
    }
    records
}

fn change(
    topic_id: Uuid,
    partition: i32,
    old: &PartitionImage,
    new: &PartitionImage,
) -> MetadataRecord {
    MetadataRecord::PartitionChange(PartitionChange {
        topic_id,
        partition,
        leader: (new.leader != old.leader).then_some(new.leader),
        isr: (new.isr != old.isr).then(|| new.isr.clone()),
    })
}

/// Leaders for offline partitions whose ISR has an active member again
/// (`back` counts as active: it is being unfenced by the same decision).
pub(super) fn revive_offline(image: &MetadataImage, back: &[NodeId]) -> Vec<MetadataRecord> {
    let active = |r: NodeId| back.contains(&r) || image.broker(r).is_some_and(|b| b.is_active());
    let mut records = Vec::new();
    for t in image.topics.values() {
        for (index, p) in t.partitions.iter().enumerate() {
            if p.leader != NO_LEADER {
                continue;
            }
            if let Some(leader) = elect_leader(p, active) {
                records.push(MetadataRecord::PartitionChange(PartitionChange {
                    topic_id: t.id,
                    partition: index as i32,
                    leader: Some(leader),
                    isr: None,
                }));
            }
        }
    }
    records
}

/// Moves leadership to each partition's first replica where it is in sync
/// and active (kafka-leader-election --election-type preferred).
pub(super) fn elect_preferred(image: &MetadataImage, wanted: Option<&[(String, i32)]>) -> Decision {
    let all: Vec<(String, i32)>;
    let wanted = match wanted {
        Some(w) => w,
        None => {
            all = image
                .topics
                .values()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .enumerate()
                        .filter(|(_, p)| p.replicas.first() != Some(&p.leader))
                        .map(|(i, _)| (t.name.clone(), i as i32))
                })
                .collect();
            &all
        }
    };
    let mut records = Vec::new();
    let mut results = Vec::new();
    for (topic, partition) in wanted {
        let outcome = preferred_change(image, topic, *partition);
        let outcome = outcome.map(|r| records.push(r));
        results.push(((topic.clone(), *partition), outcome));
    }
    Decision {
        records,
        reply: Reply::Ready(Ok(ControllerReply::ElectLeaders(results))),
    }
}

fn preferred_change(
    image: &MetadataImage,
    topic: &str,
    partition: i32,
) -> Result<MetadataRecord, ControllerError> {
    let t = image
        .topic(topic)
        .ok_or_else(|| ControllerError::UnknownTopicOrPartition(format!("{topic}-{partition}")))?;
    let p = image
        .partition(topic, partition)
        .ok_or_else(|| ControllerError::UnknownTopicOrPartition(format!("{topic}-{partition}")))?;
    let preferred = *p
        .replicas
        .first()
        .ok_or(ControllerError::PreferredLeaderNotAvailable)?;
    if p.leader == preferred {
        return Err(ControllerError::ElectionNotNeeded);
    }
    let active = image.broker(preferred).is_some_and(|b| b.is_active());
    if !active || !p.isr.contains(&preferred) {
        return Err(ControllerError::PreferredLeaderNotAvailable);
    }
    Ok(MetadataRecord::PartitionChange(PartitionChange {
        topic_id: t.id,
        partition,
        leader: Some(preferred),
        isr: None,
    }))
}
