//! A partition's replication state, without I/O and with time passed in:
//! its role, leader epoch, replicas and ISR as the controller last
//! committed them, and as leader each follower's log end offset and when it
//! was last caught up. From these come the high watermark (Kafka's
//! maybeIncrementLeaderHW over the "maximal" ISR, pending additions
//! included), ISR shrinks after `replica_lag_time_max_ms` and expansions
//! once a follower reaches the high watermark (maybeShrinkIsr,
//! maybeExpandIsr), and the answer to an acks=all produce.
//!
//! The leader's own contribution is its durable end: a batch counts towards
//! the high watermark only once the leader has made it durable under its
//! flush policy, and each follower's fetch offset is likewise its durable
//! end, so an acknowledged batch is on the devices of an ISR quorum.
//!
//! Owned by the partition on its shard; the partition applies the effects.

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster::records::NodeId;

/// A follower's offset as the leader last heard it; -1 until it fetches.
const UNKNOWN_OFFSET: i64 = -1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower(NodeId),
    /// No leader, or this broker is not (yet) told its part.
    Offline,
}

#[derive(Debug, Clone, Copy)]
struct Progress {
    log_end_offset: i64,
    /// The follower's log start as its last fetch gave it.
    log_start_offset: i64,
    last_caught_up_ms: u64,
    last_fetch_ms: u64,
    last_fetch_leader_end: i64,
}

/// What the partition must do after a state change.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Effects {
    /// The high watermark moved here: wake waiting produces and fetches.
    pub high_watermark: Option<i64>,
    /// Ask the controller for this ISR (AlterPartition).
    pub alter_isr: Option<Vec<NodeId>>,
}

/// An acks=all produce's fate for the batch ending at `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckState {
    Wait,
    Done,
    /// Replicated, but the ISR shrank below min.insync.replicas meanwhile.
    NotEnoughReplicasAfterAppend,
}

#[derive(Debug, Clone)]
pub struct ReplicaState {
    node_id: NodeId,
    pub role: Role,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub replicas: Vec<NodeId>,
    pub isr: Vec<NodeId>,
    /// An ISR asked of the controller and not yet committed.
    pending_isr: Option<Vec<NodeId>>,
    followers: BTreeMap<NodeId, Progress>,
    /// Brokers the controller would refuse in the ISR (fenced, shutting down).
    ineligible: BTreeSet<NodeId>,
    /// Appended (the leader's LEO) and durable ends of the local log.
    log_end_offset: i64,
    durable_end_offset: i64,
    high_watermark: i64,
    /// Where the current leader epoch starts in the log.
    epoch_start_offset: i64,
    lag_time_max_ms: u64,
}

impl ReplicaState {
    /// A replica that knows its log and nothing of the cluster yet.
    pub fn new(
        node_id: NodeId,
        log_end_offset: i64,
        high_watermark: i64,
        lag_time_max_ms: u64,
    ) -> Self {
        ReplicaState {
            node_id,
            role: Role::Offline,
            leader_epoch: -1,
            partition_epoch: -1,
            replicas: Vec::new(),
            isr: Vec::new(),
            pending_isr: None,
            followers: BTreeMap::new(),
            ineligible: BTreeSet::new(),
            log_end_offset,
            durable_end_offset: log_end_offset,
            high_watermark: high_watermark.min(log_end_offset),
            epoch_start_offset: log_end_offset,
            lag_time_max_ms,
        }
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }

    pub fn log_end_offset(&self) -> i64 {
        self.log_end_offset
    }

    pub fn durable_end_offset(&self) -> i64 {
        self.durable_end_offset
    }

    /// As leader: how many offsets each follower is behind the log end
    /// (followers not heard from since this leadership began count from 0).
    pub fn follower_lags(&self) -> Vec<(NodeId, i64)> {
        self.followers
            .iter()
            .map(|(id, p)| (*id, (self.log_end_offset - p.log_end_offset.max(0)).max(0)))
            .collect()
    }

    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }

    /// Takes the role the controller gave: a new leader epoch resets what
    /// the leader knew of its followers, each starting a full lag window.
    #[allow(clippy::too_many_arguments)]
    pub fn assign(
        &mut self,
        role: Role,
        leader_epoch: i32,
        partition_epoch: i32,
        replicas: &[NodeId],
        isr: &[NodeId],
        ineligible: BTreeSet<NodeId>,
        now_ms: u64,
    ) -> Effects {
        let new_term = leader_epoch != self.leader_epoch || role != self.role;
        // Any committed change supersedes an ISR change in flight: had it
        // committed, the partition epoch moved; if not, the controller will
        // refuse it for its stale partition epoch.
        if partition_epoch != self.partition_epoch || new_term {
            self.pending_isr = None;
        }
        self.role = role;
        self.leader_epoch = leader_epoch;
        self.partition_epoch = partition_epoch;
        self.replicas = replicas.to_vec();
        self.isr = isr.to_vec();
        self.ineligible = ineligible;
        if new_term {
            self.epoch_start_offset = self.log_end_offset;
            self.followers = replicas
                .iter()
                .filter(|r| **r != self.node_id)
                .map(|r| {
                    let progress = Progress {
                        log_end_offset: UNKNOWN_OFFSET,
                        log_start_offset: UNKNOWN_OFFSET,
                        last_caught_up_ms: now_ms,
                        last_fetch_ms: now_ms,
                        last_fetch_leader_end: UNKNOWN_OFFSET,
                    };
                    (*r, progress)
                })
                .collect();
        }
        self.followers.retain(|r, _| replicas.contains(r));
        self.maybe_advance_hw(now_ms)
    }

    /// The leader appended up to `end` (not yet durable).
    pub fn on_append(&mut self, end: i64) {
        self.log_end_offset = self.log_end_offset.max(end);
    }

    /// The local log is durable up to `end`.
    pub fn on_durable(&mut self, end: i64, now_ms: u64) -> Effects {
        self.durable_end_offset = self.durable_end_offset.max(end);
        self.log_end_offset = self.log_end_offset.max(end);
        match self.role {
            Role::Leader => self.maybe_advance_hw(now_ms),
            _ => Effects::default(),
        }
    }

    /// A follower fetched from `fetch_offset`: everything before it is
    /// durable there.
    pub fn on_follower_fetch(
        &mut self,
        replica: NodeId,
        fetch_offset: i64,
        log_start_offset: i64,
        now_ms: u64,
    ) -> Effects {
        if self.role != Role::Leader {
            return Effects::default();
        }
        let leader_end = self.log_end_offset;
        let Some(p) = self.followers.get_mut(&replica) else {
            return Effects::default();
        };
        if fetch_offset >= leader_end {
            p.last_caught_up_ms = p.last_caught_up_ms.max(now_ms);
        } else if fetch_offset >= p.last_fetch_leader_end {
            p.last_caught_up_ms = p.last_caught_up_ms.max(p.last_fetch_ms);
        }
        p.last_fetch_leader_end = leader_end;
        p.last_fetch_ms = now_ms;
        p.log_end_offset = fetch_offset;
        p.log_start_offset = log_start_offset;
        let mut effects = self.maybe_advance_hw(now_ms);
        if effects.alter_isr.is_none() {
            effects.alter_isr = self.maybe_expand_isr(replica);
        }
        effects
    }

    /// Periodic check: followers out of sync for longer than the lag
    /// window leave the ISR.
    pub fn tick(&mut self, now_ms: u64) -> Effects {
        if self.role != Role::Leader || self.pending_isr.is_some() {
            return Effects::default();
        }
        let out: Vec<NodeId> = self
            .isr
            .iter()
            .copied()
            .filter(|r| *r != self.node_id && !self.is_caught_up(*r, now_ms))
            .collect();
        if out.is_empty() {
            return Effects::default();
        }
        let isr: Vec<NodeId> = self
            .isr
            .iter()
            .copied()
            .filter(|r| !out.contains(r))
            .collect();
        self.pending_isr = Some(isr.clone());
        Effects {
            high_watermark: None,
            alter_isr: Some(isr),
        }
    }

    /// The controller refused or lost an ISR change: it may be asked again.
    pub fn alter_failed(&mut self) {
        self.pending_isr = None;
    }

    /// As follower: the leader's high watermark, capped by the local log.
    pub fn on_leader_high_watermark(&mut self, leader_hw: i64) -> Effects {
        let hw = leader_hw.min(self.durable_end_offset);
        if hw > self.high_watermark {
            self.high_watermark = hw;
            return Effects {
                high_watermark: Some(hw),
                alter_isr: None,
            };
        }
        Effects::default()
    }

    /// The local log was truncated to `end` (a follower's divergent tail).
    pub fn on_truncate(&mut self, end: i64) {
        self.log_end_offset = end;
        self.durable_end_offset = self.durable_end_offset.min(end);
        self.high_watermark = self.high_watermark.min(end);
        self.epoch_start_offset = self.epoch_start_offset.min(end);
    }

    /// The log start moved past the high watermark (records deleted).
    pub fn on_log_start(&mut self, start: i64) {
        self.high_watermark = self.high_watermark.max(start.min(self.log_end_offset));
    }

    /// DeleteRecords' low watermark as leader (Kafka's
    /// lowWatermarkIfLeader): the lowest log start among this log's
    /// (`local_start`) and those of the followers that may serve (not
    /// fenced or shutting down), as their last fetches gave them; -1 for a
    /// follower not heard from yet.
    pub fn low_watermark(&self, local_start: i64) -> i64 {
        self.replicas
            .iter()
            .filter(|r| **r != self.node_id && !self.ineligible.contains(r))
            .map(|r| {
                self.followers
                    .get(r)
                    .map_or(UNKNOWN_OFFSET, |p| p.log_start_offset)
            })
            .fold(local_start, i64::min)
    }

    /// Whether an acks=all produce of a batch ending at `end` is answered.
    pub fn ack_state(&self, end: i64, min_insync_replicas: usize) -> AckState {
        if self.high_watermark < end {
            return AckState::Wait;
        }
        if self.isr.len() >= min_insync_replicas {
            AckState::Done
        } else {
            AckState::NotEnoughReplicasAfterAppend
        }
    }

    /// Whether an acks=all produce may append at all (NOT_ENOUGH_REPLICAS).
    pub fn enough_replicas(&self, min_insync_replicas: usize) -> bool {
        self.isr.len() >= min_insync_replicas
    }

    fn is_caught_up(&self, replica: NodeId, now_ms: u64) -> bool {
        self.followers.get(&replica).is_some_and(|p| {
            p.log_end_offset == self.log_end_offset
                || now_ms.saturating_sub(p.last_caught_up_ms) <= self.lag_time_max_ms
        })
    }

    /// The ISR with additions asked for but not committed: the high
    /// watermark waits for them too, so no pending member lacks an
    /// acknowledged batch once the addition commits.
    fn maximal_isr(&self) -> Vec<NodeId> {
        let mut m = self.isr.clone();
        if let Some(p) = &self.pending_isr {
            m.extend(p.iter().filter(|r| !self.isr.contains(r)));
        }
        m
    }

    fn maybe_advance_hw(&mut self, _now_ms: u64) -> Effects {
        if self.role != Role::Leader {
            return Effects::default();
        }
        let maximal = self.maximal_isr();
        let mut hw = self.durable_end_offset;
        for (r, p) in &self.followers {
            if maximal.contains(r) && p.log_end_offset < hw {
                hw = p.log_end_offset;
            }
        }
        if hw > self.high_watermark {
            self.high_watermark = hw;
            return Effects {
                high_watermark: Some(hw),
                alter_isr: None,
            };
        }
        Effects::default()
    }

    /// A follower not in the ISR that reached the high watermark (and the
    /// start of this leader's epoch) joins it.
    fn maybe_expand_isr(&mut self, replica: NodeId) -> Option<Vec<NodeId>> {
        if self.pending_isr.is_some()
            || self.isr.contains(&replica)
            || self.ineligible.contains(&replica)
            || !self.replicas.contains(&replica)
        {
            return None;
        }
        let p = self.followers.get(&replica)?;
        if p.log_end_offset < self.high_watermark || p.log_end_offset < self.epoch_start_offset {
            return None;
        }
        let mut isr = self.isr.clone();
        isr.push(replica);
        self.pending_isr = Some(isr.clone());
        Some(isr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAG_MS: u64 = 30_000;

    fn leader(isr: &[NodeId]) -> ReplicaState {
        let mut s = ReplicaState::new(1, 0, 0, LAG_MS);
        s.assign(Role::Leader, 1, 0, &[1, 2, 3], isr, BTreeSet::new(), 0);
        s
    }

    #[test]
    fn the_high_watermark_waits_for_every_isr_member_and_the_leaders_disk() {
        let mut s = leader(&[1, 2, 3]);
        s.on_append(10);
        assert_eq!(
            s.on_durable(10, 1).high_watermark,
            None,
            "followers unknown"
        );
        s.on_follower_fetch(2, 10, 0, 2);
        assert_eq!(s.high_watermark(), 0);
        let e = s.on_follower_fetch(3, 7, 0, 3);
        assert_eq!(e.high_watermark, Some(7));
        assert_eq!(s.ack_state(10, 2), AckState::Wait);
        s.on_follower_fetch(3, 10, 0, 4);
        assert_eq!(s.ack_state(10, 2), AckState::Done);
        // The leader's own durable end bounds it too.
        s.on_append(20);
        s.on_follower_fetch(2, 20, 0, 5);
        s.on_follower_fetch(3, 20, 0, 5);
        assert_eq!(s.high_watermark(), 10);
        s.on_durable(20, 6);
        assert_eq!(s.high_watermark(), 20);
    }

    #[test]
    fn a_lagging_follower_leaves_the_isr_and_rejoins_once_caught_up() {
        let mut s = leader(&[1, 2, 3]);
        s.on_append(5);
        s.on_durable(5, 0);
        s.on_follower_fetch(2, 5, 0, 100);
        s.on_follower_fetch(3, 0, 0, 100);
        assert_eq!(s.tick(LAG_MS).alter_isr, None, "within the lag window");
        s.on_follower_fetch(2, 5, 0, LAG_MS + 50);
        let e = s.tick(LAG_MS + 100);
        assert_eq!(e.alter_isr, Some(vec![1, 2]));
        assert_eq!(s.tick(LAG_MS + 200).alter_isr, None, "one change in flight");
        s.assign(
            Role::Leader,
            1,
            1,
            &[1, 2, 3],
            &[1, 2],
            BTreeSet::new(),
            LAG_MS + 300,
        );
        assert_eq!(
            s.high_watermark(),
            5,
            "3 no longer holds the watermark back"
        );
        let e = s.on_follower_fetch(3, 4, 0, LAG_MS + 400);
        assert_eq!(e.alter_isr, None, "below the high watermark");
        let e = s.on_follower_fetch(3, 5, 0, LAG_MS + 500);
        assert_eq!(e.alter_isr, Some(vec![1, 2, 3]));
    }

    #[test]
    fn a_pending_addition_holds_the_high_watermark() {
        let mut s = leader(&[1, 2]);
        s.on_append(5);
        s.on_durable(5, 0);
        s.on_follower_fetch(2, 5, 0, 1);
        assert_eq!(s.high_watermark(), 5);
        assert_eq!(
            s.on_follower_fetch(3, 5, 0, 2).alter_isr,
            Some(vec![1, 2, 3])
        );
        s.on_append(9);
        s.on_durable(9, 3);
        s.on_follower_fetch(2, 9, 0, 4);
        assert_eq!(
            s.high_watermark(),
            5,
            "3 is joining: the watermark waits for it"
        );
        s.on_follower_fetch(3, 9, 0, 5);
        assert_eq!(s.high_watermark(), 9);
    }

    #[test]
    fn the_low_watermark_is_the_lowest_log_start_of_the_serving_replicas() {
        let mut s = leader(&[1, 2, 3]);
        s.on_append(10);
        assert_eq!(s.low_watermark(5), -1, "followers not heard from");
        s.on_follower_fetch(2, 10, 5, 1);
        s.on_follower_fetch(3, 10, 2, 1);
        assert_eq!(s.low_watermark(5), 2);
        s.on_follower_fetch(3, 10, 7, 2);
        assert_eq!(s.low_watermark(5), 5);
        // A fenced follower does not hold DeleteRecords back.
        s.assign(
            Role::Leader,
            1,
            0,
            &[1, 2, 3],
            &[1, 2],
            BTreeSet::from([3]),
            3,
        );
        s.on_follower_fetch(2, 10, 6, 3);
        assert_eq!(s.low_watermark(6), 6);
    }

    #[test]
    fn acks_all_reports_a_shrunken_isr() {
        let mut s = leader(&[1]);
        assert!(!s.enough_replicas(2));
        s.on_append(3);
        s.on_durable(3, 1);
        assert_eq!(s.ack_state(3, 2), AckState::NotEnoughReplicasAfterAppend);
        assert_eq!(s.ack_state(3, 1), AckState::Done);
    }

    #[test]
    fn a_follower_caps_the_leaders_watermark_by_its_own_log() {
        let mut s = ReplicaState::new(2, 0, 0, LAG_MS);
        s.assign(
            Role::Follower(1),
            1,
            0,
            &[1, 2],
            &[1, 2],
            BTreeSet::new(),
            0,
        );
        s.on_durable(4, 0);
        assert_eq!(s.on_leader_high_watermark(10).high_watermark, Some(4));
        s.on_truncate(2);
        assert_eq!(s.high_watermark(), 2);
    }
}
