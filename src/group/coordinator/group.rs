//! One group's state: its members, generation and committed offsets, and
//! the rebalance steps of the classic protocol (Kafka's GroupMetadata and
//! the join-phase parts of GroupCoordinator). Owned by the coordinator of
//! the shard that leads the group's `__consumer_offsets` partition; no I/O,
//! time passed in.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::ResponseError;

use crate::group::records::{GroupValue, MemberValue};

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
    pub(super) join_waiter: Option<oneshot::Sender<JoinResult>>,
    pub(super) sync_waiter: Option<oneshot::Sender<SyncResult>>,
}

impl Member {
    pub(super) fn metadata_for(&self, protocol: &str) -> Bytes {
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
    pub(super) pending: HashMap<String, Instant>,
    pub(super) rebalance_deadline: Option<Instant>,
    /// An empty group's first rebalance completes no earlier than this.
    pub(super) initial_delay_until: Option<Instant>,
    pub offsets: BTreeMap<(String, i32), CommittedOffset>,
    pub(super) next_member: u64,
}

impl Group {
    pub(super) fn new(id: &str) -> Group {
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

    pub(super) fn new_member_id(&mut self, client_id: &str) -> String {
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

    /// Nothing but a name: no generation, members or offsets (a group
    /// created by a simple commit whose offsets are all deleted).
    pub(super) fn is_blank(&self) -> bool {
        self.state == GroupState::Empty
            && self.generation == 0
            && self.protocol_type.is_none()
            && self.members.is_empty()
            && self.pending.is_empty()
            && self.offsets.is_empty()
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

    pub(super) fn start_rebalance(&mut self, now: Instant, delay: Duration) {
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
    /// group's initial delay passed), at the rebalance deadline, or at once
    /// when no member is left. Returns the group metadata record to store
    /// when the group became Empty (Kafka writes it too, so a restart finds
    /// the group Empty rather than with its last generation's members).
    pub(super) fn try_complete_join(&mut self, now: Instant) -> Option<GroupValue> {
        if self.state != GroupState::PreparingRebalance {
            return None;
        }
        let delay_over = self.initial_delay_until.is_none_or(|d| d <= now);
        let deadline_over = self.rebalance_deadline.is_some_and(|d| d <= now);
        if self.members.is_empty() || (self.all_joined() && delay_over) || deadline_over {
            return self.complete_join();
        }
        None
    }

    fn all_joined(&self) -> bool {
        self.members.values().all(|m| m.join_waiter.is_some())
    }

    /// Finishes the join phase: drops members that did not rejoin, opens the
    /// next generation and answers every waiting JoinGroup. A group left
    /// without members becomes Empty in the next generation (as Kafka's
    /// initNextGeneration) and its record to store is returned.
    fn complete_join(&mut self) -> Option<GroupValue> {
        self.members.retain(|_, m| m.join_waiter.is_some());
        self.rebalance_deadline = None;
        self.initial_delay_until = None;
        self.generation += 1;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
            return Some(self.to_value(super::now_ms()));
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
        None
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

    /// Removes a member (LeaveGroup, session expiry). The others rebalance;
    /// when it was the last one the group is Empty at once and the record
    /// to store is returned.
    pub(super) fn remove_member(
        &mut self,
        id: &str,
        now: Instant,
        delay: Duration,
    ) -> Option<GroupValue> {
        if let Some(mut m) = self.members.remove(id) {
            if let Some(tx) = m.join_waiter.take() {
                let _ = tx.send(JoinResult::error(ResponseError::UnknownMemberId, id));
            }
            if let Some(tx) = m.sync_waiter.take() {
                let _ = tx.send(Err(ResponseError::UnknownMemberId));
            }
        }
        if matches!(
            self.state,
            GroupState::Stable | GroupState::CompletingRebalance
        ) {
            self.start_rebalance(now, delay);
        }
        self.try_complete_join(now)
    }
}

pub(super) fn metadata_of(protocols: &[(String, Bytes)], name: &str) -> Bytes {
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
