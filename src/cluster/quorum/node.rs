//! One member of the controller quorum, without I/O: raft-rs's `RawNode`
//! over [`MetaStorage`], and the metadata image its committed entries build.
//!
//! The driver (or the simulation) calls `tick`, `step` and `propose`, then
//! handles readiness in two halves so the durable write can happen off the
//! shard: [`QuorumNode::take_ready`] returns messages to send now and the
//! state to make durable; once that is durable, [`QuorumNode::finish_ready`]
//! applies committed entries and returns the messages that had to wait.
//! Every `snapshot_every_entries` applied entries the image is snapshotted
//! and the log compacted.
//!
//! Owned by the controller shard's driver; time enters only through `tick`.

use raft::prelude::{Entry, EntryType, Message, Snapshot};
use raft::{RawNode, StateRole};

use super::storage::{MetaStorage, PersistWork, Persisted};
use crate::cluster::image::{ImageChanges, MetadataImage};
use crate::cluster::records::{MetadataEntry, NodeId};

/// Raft ids are Kafka node ids plus one: raft-rs reserves 0.
pub fn raft_id(node: NodeId) -> u64 {
    node as u64 + 1
}

pub fn node_id(raft_id: u64) -> NodeId {
    raft_id as NodeId - 1
}

#[derive(Debug, Clone)]
pub struct QuorumConfig {
    pub node_id: NodeId,
    pub voters: Vec<NodeId>,
    /// Ticks without a leader's heartbeat before a follower campaigns.
    pub election_tick: usize,
    pub heartbeat_tick: usize,
    /// Fixed election timeout in ticks (simulation: no randomness); `None`
    /// randomizes in [election_tick, 2 * election_tick) as Raft intends.
    pub fixed_election_tick: Option<usize>,
    pub snapshot_every_entries: u64,
    pub max_size_per_msg: u64,
    pub max_inflight_msgs: usize,
}

/// An entry applied to the image.
#[derive(Debug, Clone)]
pub struct Applied {
    pub index: u64,
    pub entry: MetadataEntry,
}

/// What a finished Ready produced.
#[derive(Debug, Default)]
pub struct ReadyOutcome {
    pub messages: Vec<Message>,
    pub applied: Vec<Applied>,
    pub changes: ImageChanges,
    /// The whole image was replaced by a snapshot from the leader.
    pub image_replaced: bool,
}

/// A Ready taken from raft-rs: send `messages` at once, make `work`
/// durable, then hand it back to `finish_ready`.
pub struct PendingReady {
    pub messages: Vec<Message>,
    pub work: PersistWork,
    ready: Option<raft::Ready>,
}

pub struct QuorumNode {
    pub node_id: NodeId,
    raw: RawNode<MetaStorage>,
    storage: MetaStorage,
    image: MetadataImage,
    applied: u64,
    snapshot_every: u64,
    /// A snapshot of the image taken locally, to persist with the next Ready.
    compaction: Option<Snapshot>,
    /// As leader: the index this node must apply before it acts as the
    /// controller (the no-op entry of its term).
    leader_since: Option<(u64, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum QuorumError {
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("snapshot image does not decode: {0}")]
    Snapshot(serde_json::Error),
}

impl QuorumNode {
    /// A node restored from what its store holds.
    pub fn new(
        config: &QuorumConfig,
        persisted: &Persisted,
        logger: &slog::Logger,
    ) -> Result<QuorumNode, QuorumError> {
        let voters: Vec<u64> = config.voters.iter().map(|v| raft_id(*v)).collect();
        let storage = MetaStorage::new(persisted, &voters);
        let (image, applied) = match &persisted.snapshot {
            Some(s) => (decode_image(s)?, s.get_metadata().index),
            None => (MetadataImage::default(), 0),
        };
        let mut cfg = raft::Config {
            id: raft_id(config.node_id),
            election_tick: config.election_tick,
            heartbeat_tick: config.heartbeat_tick,
            applied,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: config.max_size_per_msg,
            max_inflight_msgs: config.max_inflight_msgs,
            ..Default::default()
        };
        if let Some(t) = config.fixed_election_tick {
            cfg.min_election_tick = t;
            cfg.max_election_tick = t + 1;
        }
        cfg.validate()?;
        let raw = RawNode::new(&cfg, storage.clone(), logger)?;
        Ok(QuorumNode {
            node_id: config.node_id,
            raw,
            storage,
            image,
            applied,
            snapshot_every: config.snapshot_every_entries.max(1),
            compaction: None,
            leader_since: None,
        })
    }

    pub fn tick(&mut self) {
        self.raw.tick();
    }

    /// Starts an election at once (a one-voter quorum elects itself).
    pub fn campaign(&mut self) -> Result<(), QuorumError> {
        Ok(self.raw.campaign()?)
    }

    pub fn step(&mut self, msg: Message) -> Result<(), QuorumError> {
        Ok(self.raw.step(msg)?)
    }

    /// Proposes an entry; only the active controller does.
    pub fn propose(&mut self, entry: &MetadataEntry) -> Result<(), QuorumError> {
        Ok(self.raw.propose(Vec::new(), entry.encode())?)
    }

    pub fn report_unreachable(&mut self, node: NodeId) {
        self.raw.report_unreachable(raft_id(node));
    }

    /// Tells raft-rs whether a snapshot sent to `node` arrived; until then
    /// the leader sends that follower nothing else.
    pub fn report_snapshot(&mut self, node: NodeId, delivered: bool) {
        let status = if delivered {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.raw.report_snapshot(raft_id(node), status);
    }

    pub fn image(&self) -> &MetadataImage {
        &self.image
    }

    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    pub fn committed_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    pub fn last_index(&self) -> u64 {
        self.raw.raft.raft_log.last_index()
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The current Raft leader (the active controller), if known.
    pub fn leader(&self) -> Option<NodeId> {
        let id = self.raw.raft.leader_id;
        (id != raft::INVALID_ID).then(|| node_id(id))
    }

    /// Leader whose image has caught up with everything committed before
    /// its term: it may decide and propose.
    pub fn is_active_controller(&self) -> bool {
        match self.leader_since {
            Some((term, index)) => {
                self.is_leader() && self.raw.raft.term == term && self.applied >= index
            }
            None => false,
        }
    }

    /// Replication progress of each voter as the leader sees it
    /// (node, matched index), for DescribeQuorum.
    /// As leader: each voter's matched index and whether it was heard from
    /// within the last election timeout.
    pub fn voter_progress(&self) -> Vec<(NodeId, u64, bool)> {
        let mut out: Vec<(NodeId, u64, bool)> = self
            .raw
            .raft
            .prs()
            .iter()
            .map(|(id, p)| (node_id(*id), p.matched, p.recent_active))
            .collect();
        out.sort_unstable();
        out
    }

    pub fn voters(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self
            .storage
            .conf_state()
            .voters
            .iter()
            .map(|id| node_id(*id))
            .collect();
        v.sort_unstable();
        v
    }

    pub fn has_work(&self) -> bool {
        self.raw.has_ready() || self.compaction.is_some()
    }

    /// Takes what raft-rs has ready, if anything.
    pub fn take_ready(&mut self) -> Option<PendingReady> {
        let compaction = self.compaction.take();
        if !self.raw.has_ready() {
            return compaction.map(|s| PendingReady {
                messages: Vec::new(),
                work: PersistWork {
                    snapshot: Some(s),
                    ..Default::default()
                },
                ready: None,
            });
        }
        let mut ready = self.raw.ready();
        let messages = ready.take_messages();
        let snapshot = (!ready.snapshot().is_empty()).then(|| ready.snapshot().clone());
        let work = PersistWork {
            // A snapshot from the leader supersedes a local compaction.
            snapshot: snapshot.or(compaction),
            entries: ready.entries().clone(),
            hard_state: ready.hs().cloned(),
        };
        Some(PendingReady {
            messages,
            work,
            ready: Some(ready),
        })
    }

    /// Continues a Ready whose `work` is now durable.
    pub fn finish_ready(&mut self, pending: PendingReady) -> Result<ReadyOutcome, QuorumError> {
        let mut out = ReadyOutcome::default();
        let Some(mut ready) = pending.ready else {
            if let Some(s) = pending.work.snapshot {
                self.storage.apply_snapshot(s);
            }
            return Ok(out);
        };
        if let Some(s) = pending.work.snapshot {
            let from_leader = !ready.snapshot().is_empty();
            if from_leader {
                self.image = decode_image(&s)?;
                self.applied = s.get_metadata().index;
                out.image_replaced = true;
            }
            self.storage.apply_snapshot(s);
        }
        self.storage.append(&pending.work.entries);
        if let Some(hs) = pending.work.hard_state {
            self.storage.set_hard_state(hs);
        }
        self.apply_entries(ready.take_committed_entries(), &mut out);
        out.messages.extend(ready.take_persisted_messages());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.storage.set_commit(commit);
        }
        out.messages.extend(light.take_messages());
        self.apply_entries(light.take_committed_entries(), &mut out);
        self.raw.advance_apply_to(self.applied);
        self.note_leadership();
        self.maybe_compact();
        Ok(out)
    }

    fn apply_entries(&mut self, entries: Vec<Entry>, out: &mut ReadyOutcome) {
        for e in entries {
            if e.index <= self.applied {
                continue;
            }
            self.applied = e.index;
            if e.get_entry_type() != EntryType::EntryNormal || e.data.is_empty() {
                self.image.offset = self.image.offset.max(e.index);
                continue;
            }
            match MetadataEntry::decode(&e.data) {
                Ok(entry) => {
                    let changes = self.image.apply(e.index, &entry.records);
                    out.changes.merge(changes);
                    out.applied.push(Applied {
                        index: e.index,
                        entry,
                    });
                }
                Err(err) => {
                    // Deterministic on every node: the entry is skipped.
                    tracing::error!(index = e.index, error = %err, "undecodable metadata entry skipped");
                    self.image.offset = self.image.offset.max(e.index);
                }
            }
        }
    }

    fn note_leadership(&mut self) {
        let term = self.raw.raft.term;
        if !self.is_leader() {
            self.leader_since = None;
        } else if self.leader_since.is_none_or(|(t, _)| t != term) {
            self.leader_since = Some((term, self.raw.raft.raft_log.last_index()));
        }
    }

    fn maybe_compact(&mut self) {
        let base = self.storage.snapshot_index();
        if self.applied < base + self.snapshot_every || self.compaction.is_some() {
            return;
        }
        let Some(term) = self.storage.term_of(self.applied) else {
            return;
        };
        let mut s = Snapshot {
            data: serde_json::to_vec(&self.image)
                .expect("images serialize")
                .into(),
            ..Default::default()
        };
        let meta = s.mut_metadata();
        meta.index = self.applied;
        meta.term = term;
        meta.set_conf_state(self.storage.conf_state());
        self.compaction = Some(s);
    }
}

fn decode_image(s: &Snapshot) -> Result<MetadataImage, QuorumError> {
    serde_json::from_slice(&s.data).map_err(QuorumError::Snapshot)
}
