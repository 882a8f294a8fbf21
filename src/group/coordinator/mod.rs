//! Classic consumer group protocol (JoinGroup/SyncGroup/Heartbeat/LeaveGroup)
//! and committed offsets, for the groups whose `__consumer_offsets` partition
//! this shard owns.
//!
//! Runs on that shard only; the coordinator owns the group state. State
//! changes are synchronous and take `now`, so the state machine can be driven
//! by tests without sockets; the async layer (protocol/groups/) waits on the
//! oneshot channels handed out here and persists the records it is given
//! (a completed generation, a group left Empty).
//!
//! `group` holds one group's state and rebalance steps, `replay` rebuilds
//! groups from `__consumer_offsets` at load time.

mod group;
mod replay;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::ResponseError;

use crate::group::records::GroupValue;

use group::metadata_of;
pub use group::{CommittedOffset, Group, GroupState, JoinResult, Member, SyncResult};

/// Members one group may hold.
pub const MAX_MEMBERS_PER_GROUP: usize = 1000;
/// Groups one shard may coordinate.
pub const MAX_GROUPS_PER_SHARD: usize = 100_000;

#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub min_session_timeout_ms: i32,
    pub max_session_timeout_ms: i32,
    /// Wait before the first rebalance of an empty group completes, so
    /// members starting together land in one generation (Kafka: 3000 ms).
    pub initial_rebalance_delay_ms: u64,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            min_session_timeout_ms: 6000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 300,
        }
    }
}

/// A JoinGroup after validation, as the state machine sees it.
pub struct JoinRequest {
    pub group_id: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: an unknown member first gets MEMBER_ID_REQUIRED.
    pub require_known_member_id: bool,
}

/// What a LeaveGroup did: one result per member named, and the group's
/// record to store when it is now Empty.
pub struct LeaveOutcome {
    pub results: Vec<Result<(), ResponseError>>,
    pub store: Option<GroupValue>,
}

pub enum JoinOutcome {
    Now(JoinResult),
    Wait(oneshot::Receiver<JoinResult>),
}

pub enum SyncOutcome {
    Now(SyncResult),
    Wait(oneshot::Receiver<SyncResult>),
    /// The leader's assignment completed the generation: persist the group,
    /// then answer everyone (the leader included) through `waiters`.
    Completed {
        value: GroupValue,
        waiters: Vec<(oneshot::Sender<SyncResult>, Bytes)>,
        leader: oneshot::Receiver<SyncResult>,
    },
}

#[derive(Default)]
pub struct GroupCoordinator {
    pub config: GroupConfig,
    pub groups: RefCell<HashMap<String, Group>>,
    /// `__consumer_offsets` partitions whose groups are loaded here (this
    /// shard leads them).
    pub loaded: RefCell<std::collections::HashSet<i32>>,
}

impl GroupCoordinator {
    pub fn new(config: GroupConfig) -> GroupCoordinator {
        GroupCoordinator {
            config,
            groups: RefCell::new(HashMap::new()),
            loaded: RefCell::new(std::collections::HashSet::new()),
        }
    }

    fn delay(&self) -> Duration {
        Duration::from_millis(self.config.initial_rebalance_delay_ms)
    }

    pub fn join(&self, r: JoinRequest, now: Instant) -> JoinOutcome {
        let err = |e| JoinOutcome::Now(JoinResult::error(e, &r.member_id));
        if r.session_timeout_ms < self.config.min_session_timeout_ms
            || r.session_timeout_ms > self.config.max_session_timeout_ms
        {
            return err(ResponseError::InvalidSessionTimeout);
        }
        if r.protocol_type.is_empty() || r.protocols.is_empty() {
            return err(ResponseError::InconsistentGroupProtocol);
        }
        let mut groups = self.groups.borrow_mut();
        if !groups.contains_key(&r.group_id) && groups.len() >= MAX_GROUPS_PER_SHARD {
            return err(ResponseError::CoordinatorNotAvailable);
        }
        let delay = self.delay();
        let group = groups
            .entry(r.group_id.clone())
            .or_insert_with(|| Group::new(&r.group_id));
        if !group.members.is_empty() {
            let same_type = group.protocol_type.as_deref() == Some(r.protocol_type.as_str());
            let shared = group.members.values().all(|m| {
                m.protocols
                    .iter()
                    .any(|(p, _)| r.protocols.iter().any(|(q, _)| q == p))
            });
            if !same_type || !shared {
                return err(ResponseError::InconsistentGroupProtocol);
            }
        }
        let mut member_id = r.member_id.clone();
        if member_id.is_empty() {
            if let Some(instance) = &r.instance_id {
                if let Some(old) = group
                    .members
                    .values()
                    .find(|m| m.instance_id.as_ref() == Some(instance))
                    .map(|m| m.id.clone())
                {
                    return self.rejoin_static(group, old, r, now);
                }
            }
            member_id = group.new_member_id(&r.client_id);
            if r.require_known_member_id && r.instance_id.is_none() {
                if group.pending.len() >= MAX_MEMBERS_PER_GROUP {
                    return err(ResponseError::GroupMaxSizeReached);
                }
                group.pending.insert(member_id.clone(), now);
                let mut result = JoinResult::error(ResponseError::MemberIdRequired, &member_id);
                result.member_id = member_id;
                return JoinOutcome::Now(result);
            }
        } else if !group.members.contains_key(&member_id)
            && group.pending.remove(&member_id).is_none()
        {
            let fenced = r.instance_id.as_ref().is_some_and(|i| {
                group
                    .members
                    .values()
                    .any(|m| m.instance_id.as_ref() == Some(i))
            });
            return err(if fenced {
                ResponseError::FencedInstanceId
            } else {
                ResponseError::UnknownMemberId
            });
        } else if let Some(instance) = &r.instance_id {
            if group
                .members
                .get(&member_id)
                .is_some_and(|m| m.instance_id.as_ref() != Some(instance))
            {
                return err(ResponseError::FencedInstanceId);
            }
        }
        if !group.members.contains_key(&member_id) && group.members.len() >= MAX_MEMBERS_PER_GROUP {
            return err(ResponseError::GroupMaxSizeReached);
        }
        let (tx, rx) = oneshot::channel();
        let member = group
            .members
            .entry(member_id.clone())
            .or_insert_with(|| Member {
                id: member_id.clone(),
                instance_id: r.instance_id.clone(),
                client_id: r.client_id.clone(),
                client_host: r.client_host.clone(),
                session_timeout: Duration::ZERO,
                rebalance_timeout: Duration::ZERO,
                protocols: Vec::new(),
                assignment: Bytes::new(),
                last_heartbeat: now,
                join_waiter: None,
                sync_waiter: None,
            });
        member.session_timeout = Duration::from_millis(r.session_timeout_ms as u64);
        member.rebalance_timeout =
            Duration::from_millis(r.rebalance_timeout_ms.max(r.session_timeout_ms) as u64);
        member.protocols = r.protocols;
        member.last_heartbeat = now;
        if let Some(old) = member.join_waiter.replace(tx) {
            let _ = old.send(JoinResult::error(
                ResponseError::UnknownMemberId,
                &member_id,
            ));
        }
        group.protocol_type = Some(r.protocol_type);
        if group.state != GroupState::PreparingRebalance {
            group.start_rebalance(now, delay);
        }
        // The member just joined, so the group cannot have become Empty.
        let emptied = group.try_complete_join(now);
        debug_assert!(emptied.is_none());
        JoinOutcome::Wait(rx)
    }

    /// A static member restarting (same instance id, new member id): takes
    /// over the old member's place and assignment without a rebalance when
    /// the group is stable.
    fn rejoin_static(
        &self,
        group: &mut Group,
        old_id: String,
        r: JoinRequest,
        now: Instant,
    ) -> JoinOutcome {
        let mut old = group.members.remove(&old_id).expect("found");
        if let Some(tx) = old.join_waiter.take() {
            let _ = tx.send(JoinResult::error(ResponseError::FencedInstanceId, &old_id));
        }
        if let Some(tx) = old.sync_waiter.take() {
            let _ = tx.send(Err(ResponseError::FencedInstanceId));
        }
        let new_id = group.new_member_id(&r.client_id);
        let chosen = group.protocol.clone().unwrap_or_default();
        let unchanged = old.metadata_for(&chosen) == metadata_of(&r.protocols, &chosen);
        old.id = new_id.clone();
        old.last_heartbeat = now;
        old.protocols = r.protocols;
        old.session_timeout = Duration::from_millis(r.session_timeout_ms as u64);
        old.rebalance_timeout =
            Duration::from_millis(r.rebalance_timeout_ms.max(r.session_timeout_ms) as u64);
        if group.leader.as_deref() == Some(old_id.as_str()) {
            group.leader = Some(new_id.clone());
        }
        group.members.insert(new_id.clone(), old);
        if group.state == GroupState::Stable && unchanged {
            let protocol = group.protocol.clone().unwrap_or_default();
            let leader = group.leader.clone().unwrap_or_default();
            let members = if leader == new_id {
                group
                    .members
                    .values()
                    .map(|m| {
                        (
                            m.id.clone(),
                            m.instance_id.clone(),
                            m.metadata_for(&protocol),
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            };
            return JoinOutcome::Now(JoinResult {
                error: None,
                generation: group.generation,
                protocol_type: group.protocol_type.clone(),
                protocol: group.protocol.clone(),
                leader,
                member_id: new_id,
                members,
            });
        }
        let (tx, rx) = oneshot::channel();
        group
            .members
            .get_mut(&new_id)
            .expect("inserted")
            .join_waiter = Some(tx);
        if group.state != GroupState::PreparingRebalance {
            group.start_rebalance(now, self.delay());
        }
        JoinOutcome::Wait(rx)
    }

    fn check_member(
        group: &Group,
        member_id: &str,
        generation: i32,
        instance: Option<&str>,
    ) -> Result<(), ResponseError> {
        let Some(m) = group.members.get(member_id) else {
            // An old member id of a static instance that has since rejoined.
            let taken = instance.is_some_and(|i| {
                group
                    .members
                    .values()
                    .any(|m| m.instance_id.as_deref() == Some(i))
            });
            return Err(if taken {
                ResponseError::FencedInstanceId
            } else {
                ResponseError::UnknownMemberId
            });
        };
        if instance.is_some() && m.instance_id.as_deref() != instance {
            return Err(ResponseError::FencedInstanceId);
        }
        if generation != group.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        Ok(())
    }

    pub fn sync(
        &self,
        group_id: &str,
        member_id: &str,
        generation: i32,
        instance: Option<&str>,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
    ) -> SyncOutcome {
        let mut groups = self.groups.borrow_mut();
        let Some(group) = groups.get_mut(group_id) else {
            return SyncOutcome::Now(Err(ResponseError::UnknownMemberId));
        };
        if let Err(e) = Self::check_member(group, member_id, generation, instance) {
            return SyncOutcome::Now(Err(e));
        }
        group
            .members
            .get_mut(member_id)
            .expect("checked")
            .last_heartbeat = now;
        match group.state {
            GroupState::PreparingRebalance => {
                SyncOutcome::Now(Err(ResponseError::RebalanceInProgress))
            }
            GroupState::Stable => SyncOutcome::Now(Ok(group.members[member_id].assignment.clone())),
            GroupState::Empty | GroupState::Dead => {
                SyncOutcome::Now(Err(ResponseError::UnknownMemberId))
            }
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                group
                    .members
                    .get_mut(member_id)
                    .expect("checked")
                    .sync_waiter = Some(tx);
                if group.leader.as_deref() != Some(member_id) {
                    return SyncOutcome::Wait(rx);
                }
                let assigned: HashMap<String, Bytes> = assignments.into_iter().collect();
                for m in group.members.values_mut() {
                    m.assignment = assigned.get(&m.id).cloned().unwrap_or_default();
                }
                group.state = GroupState::Stable;
                let waiters = group
                    .members
                    .values_mut()
                    .filter_map(|m| m.sync_waiter.take().map(|tx| (tx, m.assignment.clone())))
                    .collect();
                SyncOutcome::Completed {
                    value: group.to_value(now_ms()),
                    waiters,
                    leader: rx,
                }
            }
        }
    }

    pub fn heartbeat(
        &self,
        group_id: &str,
        member_id: &str,
        generation: i32,
        instance: Option<&str>,
        now: Instant,
    ) -> Result<(), ResponseError> {
        let mut groups = self.groups.borrow_mut();
        let group = groups
            .get_mut(group_id)
            .ok_or(ResponseError::UnknownMemberId)?;
        let Some(m) = group.members.get_mut(member_id) else {
            return Self::check_member(group, member_id, generation, instance);
        };
        m.last_heartbeat = now;
        if group.state == GroupState::PreparingRebalance {
            return Err(ResponseError::RebalanceInProgress);
        }
        Self::check_member(group, member_id, generation, instance)
    }

    /// Removes the members named by id or instance id: per-member results,
    /// and the group record to store when the last member left (the group
    /// is Empty at once, as on Kafka, so an offset reset may follow).
    pub fn leave(
        &self,
        group_id: &str,
        members: Vec<(String, Option<String>)>,
        now: Instant,
    ) -> Result<LeaveOutcome, ResponseError> {
        let mut groups = self.groups.borrow_mut();
        let group = groups
            .get_mut(group_id)
            .ok_or(ResponseError::UnknownMemberId)?;
        let delay = self.delay();
        let mut store = None;
        let results = members
            .into_iter()
            .map(|(id, instance)| {
                let target = match &instance {
                    Some(i) => group
                        .members
                        .values()
                        .find(|m| m.instance_id.as_ref() == Some(i))
                        .map(|m| m.id.clone()),
                    None => group.members.contains_key(&id).then(|| id.clone()),
                };
                match target {
                    Some(t) if id.is_empty() || t == id => {
                        store = group.remove_member(&t, now, delay).or(store.take());
                        Ok(())
                    }
                    Some(_) => Err(ResponseError::FencedInstanceId),
                    None => Err(ResponseError::UnknownMemberId),
                }
            })
            .collect();
        Ok(LeaveOutcome { results, store })
    }

    /// Expires members past their session timeout, pending member ids, and
    /// rebalances past their deadline. Called periodically by the shard.
    /// Returns the records of the groups that became Empty, to store.
    pub fn tick(&self, now: Instant) -> Vec<(String, GroupValue)> {
        let delay = self.delay();
        let mut stores = Vec::new();
        for group in self.groups.borrow_mut().values_mut() {
            group
                .pending
                .retain(|_, at| now.duration_since(*at) < Duration::from_secs(300));
            let expired: Vec<String> = group
                .members
                .values()
                .filter(|m| {
                    m.join_waiter.is_none()
                        && now.duration_since(m.last_heartbeat) > m.session_timeout
                })
                .map(|m| m.id.clone())
                .collect();
            let mut emptied = None;
            for id in expired {
                tracing::info!(group = %group.id, member = %id, "member session expired");
                emptied = group.remove_member(&id, now, delay).or(emptied);
            }
            if let Some(v) = group.try_complete_join(now).or(emptied) {
                tracing::info!(group = %group.id, generation = group.generation, "group is now empty");
                stores.push((group.id.clone(), v));
            }
        }
        stores
    }

    /// Validates an OffsetCommit against the group's generation. A commit
    /// with generation -1 and no member id is a simple (manual) commit.
    pub fn check_commit(
        &self,
        group_id: &str,
        member_id: &str,
        generation: i32,
        instance: Option<&str>,
    ) -> Result<(), ResponseError> {
        let mut groups = self.groups.borrow_mut();
        if generation < 0 && member_id.is_empty() {
            if !groups.contains_key(group_id) && groups.len() >= MAX_GROUPS_PER_SHARD {
                return Err(ResponseError::CoordinatorNotAvailable);
            }
            let group = groups
                .entry(group_id.to_string())
                .or_insert_with(|| Group::new(group_id));
            return if group.is_empty() {
                Ok(())
            } else {
                Err(ResponseError::IllegalGeneration)
            };
        }
        let group = groups
            .get(group_id)
            .ok_or(ResponseError::IllegalGeneration)?;
        Self::check_member(group, member_id, generation, instance)?;
        if group.state == GroupState::CompletingRebalance {
            return Err(ResponseError::RebalanceInProgress);
        }
        Ok(())
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
