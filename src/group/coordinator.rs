//! Classic consumer group protocol (JoinGroup/SyncGroup/Heartbeat/LeaveGroup)
//! and committed offsets, for the groups whose `__consumer_offsets` partition
//! this shard owns.
//!
//! Runs on that shard only; the coordinator owns the group state. State
//! changes are synchronous and take `now`, so the state machine can be driven
//! by tests without sockets; the async layer (protocol/groups.rs) waits on the
//! oneshot channels handed out here and persists records.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::ResponseError;

use super::records::{GroupValue, MemberValue, OffsetValue};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// What a joining member learns when the rebalance completes.
#[derive(Debug, Clone)]
pub struct JoinResult {
    pub error: Option<ResponseError>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Filled for the leader only: (member id, instance id, metadata).
    pub members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinResult {
    pub fn error(e: ResponseError, member_id: &str) -> JoinResult {
        JoinResult {
            error: Some(e),
            generation: -1,
            protocol_type: None,
            protocol: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
        }
    }
}

pub type SyncResult = Result<Bytes, ResponseError>;

#[derive(Debug)]
pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    pub last_heartbeat: Instant,
    join_waiter: Option<oneshot::Sender<JoinResult>>,
    sync_waiter: Option<oneshot::Sender<SyncResult>>,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp: i64,
}

#[derive(Debug)]
pub struct Group {
    pub id: String,
    pub state: GroupState,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, with when.
    pending: HashMap<String, Instant>,
    rebalance_deadline: Option<Instant>,
    /// An empty group's first rebalance completes no earlier than this.
    initial_delay_until: Option<Instant>,
    pub offsets: BTreeMap<(String, i32), CommittedOffset>,
    next_member: u64,
}

impl Group {
    fn new(id: &str) -> Group {
        Group {
            id: id.to_string(),
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: HashMap::new(),
            rebalance_deadline: None,
            initial_delay_until: None,
            offsets: BTreeMap::new(),
            next_member: 0,
        }
    }

    fn new_member_id(&mut self, client_id: &str) -> String {
        self.next_member += 1;
        let nonce: u64 = rand_u64();
        format!(
            "{client_id}-{:016x}{:04x}",
            nonce,
            self.next_member & 0xffff
        )
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Group metadata record value for the current generation.
    pub fn to_value(&self, now_ms: i64) -> GroupValue {
        GroupValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            current_state_timestamp: now_ms,
            members: self
                .members
                .values()
                .map(|m| MemberValue {
                    member_id: m.id.clone(),
                    group_instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout: m.rebalance_timeout.as_millis() as i32,
                    session_timeout: m.session_timeout.as_millis() as i32,
                    subscription: self
                        .protocol
                        .as_deref()
                        .map(|p| m.metadata_for(p))
                        .unwrap_or_default(),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }

    fn start_rebalance(&mut self, now: Instant, delay: Duration) {
        let was_empty = self.state == GroupState::Empty;
        self.state = GroupState::PreparingRebalance;
        // Members awaiting a sync learn the generation is gone.
        for m in self.members.values_mut() {
            if let Some(tx) = m.sync_waiter.take() {
                let _ = tx.send(Err(ResponseError::RebalanceInProgress));
            }
        }
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        self.rebalance_deadline = Some(now + timeout.max(delay));
        self.initial_delay_until = was_empty.then(|| now + delay);
    }

    /// Completes the join phase once every member rejoined (and an empty
    /// group's initial delay passed), or at the rebalance deadline.
    fn try_complete_join(&mut self, now: Instant) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        let delay_over = self.initial_delay_until.is_none_or(|d| d <= now);
        let deadline_over = self.rebalance_deadline.is_some_and(|d| d <= now);
        if (self.all_joined() && delay_over) || deadline_over {
            self.complete_join();
        }
    }

    fn all_joined(&self) -> bool {
        self.members.values().all(|m| m.join_waiter.is_some())
    }

    /// Finishes the join phase: drops members that did not rejoin, opens the
    /// next generation and answers every waiting JoinGroup.
    fn complete_join(&mut self) {
        self.members.retain(|_, m| m.join_waiter.is_some());
        self.rebalance_deadline = None;
        self.initial_delay_until = None;
        self.generation += 1;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
            return;
        }
        self.protocol = self.select_protocol();
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        self.state = GroupState::CompletingRebalance;
        let protocol = self.protocol.clone().unwrap_or_default();
        let leader = self.leader.clone().unwrap_or_default();
        let everyone: Vec<(String, Option<String>, Bytes)> = self
            .members
            .values()
            .map(|m| {
                (
                    m.id.clone(),
                    m.instance_id.clone(),
                    m.metadata_for(&protocol),
                )
            })
            .collect();
        for m in self.members.values_mut() {
            m.assignment = Bytes::new();
            if let Some(tx) = m.join_waiter.take() {
                let _ = tx.send(JoinResult {
                    error: None,
                    generation: self.generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol: self.protocol.clone(),
                    leader: leader.clone(),
                    member_id: m.id.clone(),
                    members: if m.id == leader {
                        everyone.clone()
                    } else {
                        Vec::new()
                    },
                });
            }
        }
    }

    /// The protocol every member supports that most members rank first.
    fn select_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(n, _)| n)
            .filter(|n| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(p, _)| p == *n))
            })
            .collect();
        candidates
            .iter()
            .max_by_key(|c| {
                let votes = self
                    .members
                    .values()
                    .filter(|m| {
                        m.protocols
                            .iter()
                            .find(|(p, _)| candidates.contains(&p))
                            .is_some_and(|(p, _)| p == **c)
                    })
                    .count();
                // Ties go to the earlier protocol in the first member's list.
                (
                    votes,
                    usize::MAX - candidates.iter().position(|x| x == *c).unwrap_or(0),
                )
            })
            .map(|c| (*c).clone())
    }

    fn remove_member(&mut self, id: &str, now: Instant, delay: Duration) {
        if let Some(mut m) = self.members.remove(id) {
            if let Some(tx) = m.join_waiter.take() {
                let _ = tx.send(JoinResult::error(ResponseError::UnknownMemberId, id));
            }
            if let Some(tx) = m.sync_waiter.take() {
                let _ = tx.send(Err(ResponseError::UnknownMemberId));
            }
        }
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.start_rebalance(now, delay)
            }
            GroupState::PreparingRebalance => self.try_complete_join(now),
            _ => {}
        }
        if self.members.is_empty() && self.state != GroupState::PreparingRebalance {
            self.state = GroupState::Empty;
        }
    }
}

fn metadata_of(protocols: &[(String, Bytes)], name: &str) -> Bytes {
    protocols
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, m)| m.clone())
        .unwrap_or_default()
}

fn rand_u64() -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..8]);
    u64::from_le_bytes(buf)
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
        group.try_complete_join(now);
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

    /// Removes the members named by id or instance id; per-member results.
    pub fn leave(
        &self,
        group_id: &str,
        members: Vec<(String, Option<String>)>,
        now: Instant,
    ) -> Result<Vec<Result<(), ResponseError>>, ResponseError> {
        let mut groups = self.groups.borrow_mut();
        let group = groups
            .get_mut(group_id)
            .ok_or(ResponseError::UnknownMemberId)?;
        let delay = self.delay();
        Ok(members
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
                        group.remove_member(&t, now, delay);
                        Ok(())
                    }
                    Some(_) => Err(ResponseError::FencedInstanceId),
                    None => Err(ResponseError::UnknownMemberId),
                }
            })
            .collect())
    }

    /// Expires members past their session timeout, pending member ids, and
    /// rebalances past their deadline. Called periodically by the shard.
    pub fn tick(&self, now: Instant) {
        let delay = self.delay();
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
            for id in expired {
                tracing::info!(group = %group.id, member = %id, "member session expired");
                group.remove_member(&id, now, delay);
            }
            group.try_complete_join(now);
        }
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

    pub fn apply_offset(
        &self,
        group_id: &str,
        topic: &str,
        partition: i32,
        value: Option<OffsetValue>,
    ) {
        let mut groups = self.groups.borrow_mut();
        let group = groups
            .entry(group_id.to_string())
            .or_insert_with(|| Group::new(group_id));
        let key = (topic.to_string(), partition);
        match value {
            Some(v) => {
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
            None => {
                group.offsets.remove(&key);
            }
        }
    }

    /// Replays a group metadata record (or tombstone) at start-up.
    pub fn apply_group(&self, group_id: &str, value: Option<GroupValue>, now: Instant) {
        let mut groups = self.groups.borrow_mut();
        let Some(v) = value else {
            if let Some(g) = groups.get_mut(group_id) {
                g.members.clear();
                g.state = GroupState::Empty;
                g.generation = 0;
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

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(c: &GroupCoordinator, member: &str, now: Instant) -> JoinOutcome {
        c.join(
            JoinRequest {
                group_id: "g".into(),
                member_id: member.into(),
                instance_id: None,
                client_id: "c".into(),
                client_host: "h".into(),
                session_timeout_ms: 10_000,
                rebalance_timeout_ms: 20_000,
                protocol_type: "consumer".into(),
                protocols: vec![("range".into(), Bytes::from_static(b"m"))],
                require_known_member_id: true,
            },
            now,
        )
    }

    fn now_result(o: JoinOutcome) -> JoinResult {
        match o {
            JoinOutcome::Now(r) => r,
            JoinOutcome::Wait(_) => panic!("expected an immediate answer"),
        }
    }

    fn waited(o: JoinOutcome) -> oneshot::Receiver<JoinResult> {
        match o {
            JoinOutcome::Wait(rx) => rx,
            JoinOutcome::Now(r) => panic!("expected to wait, got {:?}", r.error),
        }
    }

    #[test]
    fn member_id_required_then_two_members_share_a_generation() {
        let c = GroupCoordinator::new(GroupConfig::default());
        let t0 = Instant::now();
        let first = now_result(join(&c, "", t0));
        assert_eq!(first.error, Some(ResponseError::MemberIdRequired));
        let a = first.member_id.clone();
        let mut rx_a = waited(join(&c, &a, t0));
        let second = now_result(join(&c, "", t0));
        let b = second.member_id.clone();
        let mut rx_b = waited(join(&c, &b, t0));
        // The initial delay holds the first generation open.
        c.tick(t0 + Duration::from_millis(100));
        assert!(rx_a.try_recv().unwrap().is_none());
        c.tick(t0 + Duration::from_millis(400));
        let ra = rx_a.try_recv().unwrap().unwrap();
        let rb = rx_b.try_recv().unwrap().unwrap();
        assert_eq!((ra.generation, rb.generation), (1, 1));
        assert_eq!(ra.leader, rb.leader);
        let leader_result = if ra.leader == a { &ra } else { &rb };
        assert_eq!(leader_result.members.len(), 2);
        // Leader syncs the assignment; the follower gets its share.
        let leader = ra.leader.clone();
        let follower = if leader == a { b.clone() } else { a.clone() };
        let waiting = match c.sync("g", &follower, 1, None, vec![], t0) {
            SyncOutcome::Wait(rx) => rx,
            _ => panic!("follower waits for the leader"),
        };
        let assignments = vec![
            (leader.clone(), Bytes::from_static(b"L")),
            (follower.clone(), Bytes::from_static(b"F")),
        ];
        match c.sync("g", &leader, 1, None, assignments, t0) {
            SyncOutcome::Completed { waiters, value, .. } => {
                assert_eq!(value.members.len(), 2);
                for (tx, a) in waiters {
                    let _ = tx.send(Ok(a));
                }
            }
            _ => panic!("leader completes the generation"),
        }
        let mut waiting = waiting;
        assert_eq!(
            waiting.try_recv().unwrap().unwrap().unwrap(),
            Bytes::from_static(b"F")
        );
        assert_eq!(c.heartbeat("g", &follower, 1, None, t0), Ok(()));
        assert_eq!(
            c.heartbeat("g", &follower, 0, None, t0),
            Err(ResponseError::IllegalGeneration)
        );
    }

    #[test]
    fn expired_member_triggers_rebalance_and_is_dropped() {
        let c = GroupCoordinator::new(GroupConfig::default());
        let t0 = Instant::now();
        let a = now_result(join(&c, "", t0)).member_id;
        let _rx = waited(join(&c, &a, t0));
        c.tick(t0 + Duration::from_millis(500));
        assert_eq!(
            c.groups.borrow()["g"].state,
            GroupState::CompletingRebalance
        );
        // No heartbeat for longer than the session timeout.
        c.tick(t0 + Duration::from_secs(11));
        let groups = c.groups.borrow();
        assert!(groups["g"].members.is_empty());
        assert_eq!(groups["g"].state, GroupState::Empty);
    }

    #[test]
    fn unknown_member_and_bad_timeouts_are_refused() {
        let c = GroupCoordinator::new(GroupConfig::default());
        let t0 = Instant::now();
        assert_eq!(
            now_result(join(&c, "ghost", t0)).error,
            Some(ResponseError::UnknownMemberId)
        );
        let mut r = JoinRequest {
            group_id: "g".into(),
            member_id: String::new(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "h".into(),
            session_timeout_ms: 10,
            rebalance_timeout_ms: 10,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::new())],
            require_known_member_id: false,
        };
        assert_eq!(
            now_result(c.join(r, t0)).error,
            Some(ResponseError::InvalidSessionTimeout)
        );
        r = JoinRequest {
            group_id: "g2".into(),
            member_id: String::new(),
            instance_id: Some("i1".into()),
            client_id: "c".into(),
            client_host: "h".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 10_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::new())],
            require_known_member_id: true,
        };
        // Static members skip MEMBER_ID_REQUIRED.
        assert!(matches!(c.join(r, t0), JoinOutcome::Wait(_)));
    }

    #[test]
    fn simple_commits_need_an_empty_group() {
        let c = GroupCoordinator::new(GroupConfig::default());
        assert_eq!(c.check_commit("solo", "", -1, None), Ok(()));
        c.apply_offset(
            "solo",
            "t",
            0,
            Some(OffsetValue {
                offset: 5,
                leader_epoch: 0,
                metadata: String::new(),
                commit_timestamp: 1,
            }),
        );
        assert_eq!(
            c.groups.borrow()["solo"].offsets[&("t".to_string(), 0)].offset,
            5
        );
        c.apply_offset("solo", "t", 0, None);
        assert!(c.groups.borrow()["solo"].offsets.is_empty());
    }

    fn static_join(
        c: &GroupCoordinator,
        instance: &str,
        metadata: &'static [u8],
        now: Instant,
    ) -> JoinOutcome {
        c.join(
            JoinRequest {
                group_id: "s".into(),
                member_id: String::new(),
                instance_id: Some(instance.into()),
                client_id: "c".into(),
                client_host: "h".into(),
                session_timeout_ms: 10_000,
                rebalance_timeout_ms: 20_000,
                protocol_type: "consumer".into(),
                protocols: vec![("range".into(), Bytes::from_static(metadata))],
                require_known_member_id: true,
            },
            now,
        )
    }

    /// Runs a one-member generation to Stable and returns its member id.
    fn stable_static(c: &GroupCoordinator, t0: Instant) -> String {
        let mut rx = waited(static_join(c, "i-1", b"sub", t0));
        c.tick(t0 + Duration::from_millis(400));
        let r = rx.try_recv().unwrap().unwrap();
        match c.sync(
            "s",
            &r.member_id,
            r.generation,
            Some("i-1"),
            vec![(r.member_id.clone(), Bytes::from_static(b"A"))],
            t0,
        ) {
            SyncOutcome::Completed { waiters, .. } => {
                for (tx, a) in waiters {
                    let _ = tx.send(Ok(a));
                }
            }
            _ => panic!("the only member leads"),
        }
        r.member_id
    }

    #[test]
    fn static_member_rejoins_without_rebalance_and_fences_its_old_id() {
        let c = GroupCoordinator::new(GroupConfig::default());
        let t0 = Instant::now();
        let old = stable_static(&c, t0);
        let again = now_result(static_join(&c, "i-1", b"sub", t0));
        assert_eq!(again.error, None);
        assert_eq!(again.generation, 1, "same generation: no rebalance");
        assert_ne!(again.member_id, old);
        assert_eq!(c.groups.borrow()["s"].state, GroupState::Stable);
        match c.sync("s", &again.member_id, 1, Some("i-1"), vec![], t0) {
            SyncOutcome::Now(Ok(a)) => assert_eq!(a, Bytes::from_static(b"A")),
            _ => panic!("keeps its assignment"),
        }
        assert_eq!(
            c.heartbeat("s", &old, 1, Some("i-1"), t0),
            Err(ResponseError::FencedInstanceId)
        );
    }

    #[test]
    fn static_member_with_a_new_subscription_triggers_a_rebalance() {
        let c = GroupCoordinator::new(GroupConfig::default());
        let t0 = Instant::now();
        stable_static(&c, t0);
        let _rx = waited(static_join(&c, "i-1", b"other-topics", t0));
        assert_eq!(c.groups.borrow()["s"].state, GroupState::PreparingRebalance);
    }

    #[test]
    fn replay_rebuilds_offsets_groups_and_tombstones() {
        use crate::group::records::{GroupValue, MemberValue};
        let c = GroupCoordinator::new(GroupConfig::default());
        let t0 = Instant::now();
        let v = |o| {
            Some(OffsetValue {
                offset: o,
                leader_epoch: 0,
                metadata: String::new(),
                commit_timestamp: 1,
            })
        };
        c.apply_offset("g", "t", 0, v(10));
        c.apply_offset("g", "t", 1, v(20));
        c.apply_offset("g", "t", 0, v(15));
        c.apply_offset("g", "t", 1, None);
        let member = MemberValue {
            member_id: "m-1".into(),
            group_instance_id: None,
            client_id: "c".into(),
            client_host: "h".into(),
            rebalance_timeout: 30_000,
            session_timeout: 10_000,
            subscription: Bytes::from_static(b"sub"),
            assignment: Bytes::from_static(b"asg"),
        };
        c.apply_group(
            "g",
            Some(GroupValue {
                protocol_type: "consumer".into(),
                generation: 4,
                protocol: Some("range".into()),
                leader: Some("m-1".into()),
                current_state_timestamp: 0,
                members: vec![member],
            }),
            t0,
        );
        {
            let groups = c.groups.borrow();
            let g = &groups["g"];
            assert_eq!(g.offsets.len(), 1);
            assert_eq!(g.offsets[&("t".to_string(), 0)].offset, 15);
            assert_eq!((g.state, g.generation), (GroupState::Stable, 4));
        }
        // The restored member keeps heartbeating in its generation...
        assert_eq!(c.heartbeat("g", "m-1", 4, None, t0), Ok(()));
        // ...and a group tombstone empties the group.
        c.apply_group("g", None, t0);
        assert!(c.groups.borrow()["g"].members.is_empty());
    }

    #[test]
    fn pending_member_ids_are_bounded() {
        let c = GroupCoordinator::new(GroupConfig::default());
        let t0 = Instant::now();
        for _ in 0..MAX_MEMBERS_PER_GROUP {
            assert_eq!(
                now_result(join(&c, "", t0)).error,
                Some(ResponseError::MemberIdRequired)
            );
        }
        assert_eq!(
            now_result(join(&c, "", t0)).error,
            Some(ResponseError::GroupMaxSizeReached)
        );
    }
}
