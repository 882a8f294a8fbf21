//! Replay of `__consumer_offsets` at load time: committed offsets, group
//! metadata records and tombstones rebuild the groups of a partition this
//! shard now leads, as Kafka's GroupMetadataManager.loadGroupsAndOffsets.

use std::time::{Duration, Instant};

use super::group::{CommittedOffset, Group, GroupState, Member};
use super::GroupCoordinator;
use crate::group::records::{GroupValue, OffsetValue};

impl GroupCoordinator {
    /// Applies a committed offset or its tombstone (at load time, and after
    /// a commit or an OffsetDelete is stored). A tombstone creates no group,
    /// and a group that only existed for its offsets goes with the last of
    /// them, as Kafka loads no group for it after a restart.
    pub fn apply_offset(
        &self,
        group_id: &str,
        topic: &str,
        partition: i32,
        value: Option<OffsetValue>,
    ) {
        let mut groups = self.groups.borrow_mut();
        let key = (topic.to_string(), partition);
        let Some(v) = value else {
            if let Some(group) = groups.get_mut(group_id) {
                group.offsets.remove(&key);
                if group.is_blank() {
                    groups.remove(group_id);
                }
            }
            return;
        };
        let group = groups
            .entry(group_id.to_string())
            .or_insert_with(|| Group::new(group_id));
        group.offsets.insert(
            key,
            CommittedOffset {
                offset: v.offset,
                leader_epoch: v.leader_epoch,
                metadata: v.metadata,
                commit_timestamp: v.commit_timestamp,
            },
        );
    }

    /// Replays a group metadata record (or tombstone) at start-up. A
    /// tombstone (DeleteGroups, written after its offsets' tombstones)
    /// removes the group; offsets committed after it, if any, keep an Empty
    /// group with no generation, as Kafka loads one.
    pub fn apply_group(&self, group_id: &str, value: Option<GroupValue>, now: Instant) {
        let mut groups = self.groups.borrow_mut();
        let Some(v) = value else {
            if let Some(old) = groups.remove(group_id) {
                if !old.offsets.is_empty() {
                    let mut fresh = Group::new(group_id);
                    fresh.offsets = old.offsets;
                    groups.insert(group_id.to_string(), fresh);
                }
            }
            return;
        };
        let group = groups
            .entry(group_id.to_string())
            .or_insert_with(|| Group::new(group_id));
        group.generation = v.generation;
        group.protocol_type = (!v.protocol_type.is_empty()).then_some(v.protocol_type);
        group.protocol = v.protocol.clone();
        group.leader = v.leader;
        group.members.clear();
        for m in v.members {
            let protocols = v
                .protocol
                .iter()
                .map(|p| (p.clone(), m.subscription.clone()))
                .collect();
            group.members.insert(
                m.member_id.clone(),
                Member {
                    id: m.member_id,
                    instance_id: m.group_instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    session_timeout: Duration::from_millis(m.session_timeout.max(0) as u64),
                    rebalance_timeout: Duration::from_millis(m.rebalance_timeout.max(0) as u64),
                    protocols,
                    assignment: m.assignment,
                    last_heartbeat: now,
                    join_waiter: None,
                    sync_waiter: None,
                },
            );
        }
        group.state = if group.members.is_empty() {
            GroupState::Empty
        } else {
            GroupState::Stable
        };
    }

    pub fn forget(&self, group_id: &str) {
        self.groups.borrow_mut().remove(group_id);
    }
}
