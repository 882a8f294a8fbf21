//! Seeded simulation of the controller quorum: three members with the real
//! raft-rs nodes, the real controller and image, an in-memory durable log,
//! and a network that loses, delays and reorders messages, partitions nodes,
//! and crashes them (also between sending a Ready's messages and making it
//! durable); the active controller hears of refused links to crashed members
//! (and now and then to running ones), as its I/O shell reports them. After every step it checks that committed metadata never
//! diverges: one entry per index, the same image at the same index, one
//! leader per term. At the end the network heals and every member must
//! converge. A failing seed replays exactly (`RINGTAIL_SIM_SEED=N`).
//!
//! `RINGTAIL_SIM_SEEDS` sets how many seeds run (CI: a short run).

use std::collections::{BTreeMap, HashMap};

use raft::prelude::{Message, MessageType};
use uuid::Uuid;

use super::node::{node_id, QuorumConfig, QuorumNode};
use super::storage::{LogStore, MemLog};
use crate::cluster::controller::{Controller, ControllerConfig, ControllerRequest, NewTopic};
use crate::cluster::records::{BrokerRegistration, MetadataEntry, NodeId};

/// A small deterministic generator (splitmix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const NODES: NodeId = 3;
const TICK_MS: u64 = 100;

struct Member {
    node: Option<QuorumNode>,
    store: MemLog,
    controller: Controller,
    was_active: bool,
}

struct InFlight {
    from: NodeId,
    to: NodeId,
    deliver_at: u64,
    msg: Message,
}

struct Sim {
    rng: Rng,
    members: Vec<Member>,
    net: Vec<InFlight>,
    now_ms: u64,
    step: u64,
    /// Nodes cut off from the others.
    isolated: Option<NodeId>,
    loss_percent: u64,
    /// Crashes between a Ready's messages and its persistence allowed.
    crash_mid_ready: bool,
    /// Every applied entry by index, as first seen.
    committed: BTreeMap<u64, MetadataEntry>,
    /// Image (JSON) after each applied index, as first seen.
    images: HashMap<u64, String>,
    leaders: HashMap<u64, NodeId>,
    request_id: u64,
}

fn config(node: NodeId) -> QuorumConfig {
    QuorumConfig {
        node_id: node,
        voters: (0..NODES).collect(),
        election_tick: 10,
        heartbeat_tick: 2,
        // Distinct fixed timeouts: no randomness inside raft-rs.
        fixed_election_tick: Some(10 + 3 * node as usize),
        snapshot_every_entries: 16,
        max_size_per_msg: 64 * 1024,
        max_inflight_msgs: 16,
    }
}

fn controller(seed: u64, node: NodeId) -> Controller {
    let mut ids = Rng::new(seed ^ (node as u64 + 1) << 32);
    Controller::new(
        ControllerConfig {
            session_timeout_ms: 3_000,
            refused_timeout_ms: 700,
            producer_id_block_size: 10,
            default_partitions: 2,
            default_replication_factor: 2,
            offsets_topic_partitions: 3,
            offsets_topic_replication_factor: 3,
            offsets_topic_segment_bytes: 100 << 20,
        },
        Box::new(move || Uuid::from_u64_pair(ids.next(), ids.next())),
    )
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let members = (0..NODES)
            .map(|n| Member {
                node: None,
                store: MemLog::default(),
                controller: controller(seed, n),
                was_active: false,
            })
            .collect();
        let mut sim = Sim {
            rng: Rng::new(seed),
            members,
            net: Vec::new(),
            now_ms: 0,
            step: 0,
            isolated: None,
            loss_percent: 10,
            crash_mid_ready: true,
            committed: BTreeMap::new(),
            images: HashMap::new(),
            leaders: HashMap::new(),
            request_id: 0,
        };
        for n in 0..NODES {
            sim.start(n);
        }
        sim
    }

    fn start(&mut self, n: NodeId) {
        let m = &mut self.members[n as usize];
        let persisted = m.store.load().expect("memory store loads");
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        m.node = Some(QuorumNode::new(&config(n), &persisted, &logger).expect("node starts"));
    }

    fn crash(&mut self, n: NodeId) {
        self.members[n as usize].node = None;
        let lost: Vec<InFlight> = self
            .net
            .iter()
            .filter(|m| m.to == n)
            .map(|m| InFlight {
                from: m.from,
                to: m.to,
                deliver_at: m.deliver_at,
                msg: m.msg.clone(),
            })
            .collect();
        self.net.retain(|m| m.to != n);
        for m in lost {
            self.snapshot_outcome(&m, false);
        }
    }

    /// A snapshot message's fate goes back to its sender, as the transport
    /// reports it.
    fn snapshot_outcome(&mut self, m: &InFlight, delivered: bool) {
        if m.msg.get_msg_type() != MessageType::MsgSnapshot {
            return;
        }
        if let Some(node) = self.members[m.from as usize].node.as_mut() {
            node.report_snapshot(m.to, delivered);
        }
    }

    fn send(&mut self, from: NodeId, msgs: Vec<Message>) {
        for msg in msgs {
            let to = node_id(msg.to);
            let cut = self.isolated.is_some_and(|i| i == from || i == to);
            let deliver_at = self.step + 1 + self.rng.below(20);
            let m = InFlight {
                from,
                to,
                deliver_at,
                msg,
            };
            if cut || self.rng.chance(self.loss_percent) {
                self.snapshot_outcome(&m, false);
                continue;
            }
            self.net.push(m);
        }
    }

    /// Handles every Ready of node `n`, maybe crashing it mid-way.
    fn drain(&mut self, n: NodeId, may_crash: bool) {
        loop {
            let Some(node) = self.members[n as usize].node.as_mut() else {
                return;
            };
            let Some(pending) = node.take_ready() else {
                return;
            };
            let messages = pending.messages.clone();
            self.send(n, messages);
            if may_crash && self.crash_mid_ready && self.rng.chance(1) {
                // Messages left, nothing made durable.
                self.crash(n);
                return;
            }
            let m = &mut self.members[n as usize];
            m.store
                .persist(&pending.work)
                .expect("memory store persists");
            let node = m.node.as_mut().expect("running");
            let outcome = node.finish_ready(pending).expect("ready finishes");
            self.send(n, outcome.messages);
            for a in &outcome.applied {
                match self.committed.get(&a.index) {
                    Some(e) => assert_eq!(
                        e, &a.entry,
                        "node {n} applied a different entry at index {}",
                        a.index
                    ),
                    None => {
                        self.committed.insert(a.index, a.entry.clone());
                    }
                }
            }
            self.check_image(n);
        }
    }

    fn check_image(&mut self, n: NodeId) {
        let node = self.members[n as usize].node.as_ref().expect("running");
        let index = node.applied_index();
        let json = serde_json::to_string(node.image()).expect("image serializes");
        match self.images.get(&index) {
            Some(seen) => assert_eq!(seen, &json, "node {n} image differs at index {index}"),
            None => {
                self.images.insert(index, json);
            }
        }
        if node.is_leader() {
            let term = node.term();
            let leader = *self.leaders.entry(term).or_insert(n);
            assert_eq!(leader, n, "two leaders in term {term}");
        }
    }

    fn random_request(&mut self, leader: NodeId) -> ControllerRequest {
        let node = self.rng.below(NODES as u64) as NodeId;
        let image = self.members[leader as usize]
            .node
            .as_ref()
            .expect("leader runs")
            .image()
            .clone();
        match self.rng.below(6) {
            0 => ControllerRequest::RegisterBroker(BrokerRegistration {
                node_id: node,
                incarnation_id: Uuid::from_u64_pair(node as u64, self.rng.below(3)),
                host: "127.0.0.1".into(),
                port: 9092 + node,
                rack: None,
            }),
            1 | 2 => ControllerRequest::Heartbeat {
                node_id: node,
                broker_epoch: image.broker(node).map_or(0, |b| b.broker_epoch),
                metadata_offset: image.offset,
                want_shutdown: self.rng.chance(5),
            },
            3 => ControllerRequest::CreateTopics {
                topics: vec![NewTopic {
                    name: format!("t{}", self.rng.below(8)),
                    partitions: -1,
                    replication_factor: -1,
                    assignments: Vec::new(),
                    configs: Default::default(),
                }],
                validate_only: false,
            },
            4 => ControllerRequest::ElectPreferredLeaders { partitions: None },
            _ => ControllerRequest::EnsureOffsetsTopic,
        }
    }

    /// The active controller decides something and proposes it.
    fn control(&mut self) {
        let Some(leader) = (0..NODES).find(|n| {
            self.members[*n as usize]
                .node
                .as_ref()
                .is_some_and(|q| q.is_active_controller())
        }) else {
            return;
        };
        let request = self.random_request(leader);
        let now = self.now_ms;
        let down: Vec<NodeId> = (0..NODES)
            .filter(|n| self.members[*n as usize].node.is_none())
            .collect();
        self.request_id += 1;
        let request_id = self.request_id;
        let m = &mut self.members[leader as usize];
        let node = m.node.as_mut().expect("leader runs");
        if !m.was_active {
            m.controller.reset_sessions();
            m.was_active = true;
        }
        let image = node.image().clone();
        // The leader's links: a crashed member's port refuses connections
        // (reported on most reconnects); a running one's is refused now and
        // then too (a firewall), and accepts otherwise.
        for n in 0..NODES {
            let crashed = down.contains(&n);
            if (crashed && self.rng.chance(70)) || self.rng.chance(2) {
                m.controller.link_refused(n, now);
            } else if !crashed && self.rng.chance(20) {
                m.controller.link_connected(n);
            }
        }
        let mut records = m.controller.tick(&image, now);
        if records.is_empty() {
            records = m.controller.decide(&image, request, now).records;
        }
        if !records.is_empty() {
            let entry = MetadataEntry {
                proposer: leader,
                request_id,
                records,
            };
            let _ = node.propose(&entry);
        }
    }

    fn deliver(&mut self) {
        let due: Vec<usize> = (0..self.net.len())
            .filter(|i| self.net[*i].deliver_at <= self.step)
            .collect();
        if due.is_empty() {
            return;
        }
        let pick = due[self.rng.below(due.len() as u64) as usize];
        let m = self.net.swap_remove(pick);
        let cut = self.isolated.is_some_and(|i| i == m.from || i == m.to);
        let delivered = !cut && self.members[m.to as usize].node.is_some();
        self.snapshot_outcome(&m, delivered);
        if !delivered {
            return;
        }
        if let Some(node) = self.members[m.to as usize].node.as_mut() {
            let _ = node.step(m.msg);
        }
        self.drain(m.from, true);
        self.drain(m.to, true);
    }

    fn tick_all(&mut self) {
        self.now_ms += TICK_MS;
        for n in 0..NODES {
            if let Some(node) = self.members[n as usize].node.as_mut() {
                node.tick();
                if !node.is_leader() {
                    self.members[n as usize].was_active = false;
                }
            }
            self.drain(n, true);
        }
    }

    fn chaos(&mut self) {
        let running: Vec<NodeId> = (0..NODES)
            .filter(|n| self.members[*n as usize].node.is_some())
            .collect();
        let down: Vec<NodeId> = (0..NODES).filter(|n| !running.contains(n)).collect();
        match self.rng.below(4) {
            0 if running.len() > 1 => {
                let n = running[self.rng.below(running.len() as u64) as usize];
                self.crash(n);
            }
            1 if !down.is_empty() => {
                let n = down[self.rng.below(down.len() as u64) as usize];
                self.start(n);
            }
            2 => self.isolated = Some(self.rng.below(NODES as u64) as NodeId),
            _ => self.isolated = None,
        }
    }

    fn run(&mut self, steps: u64) {
        for _ in 0..steps {
            self.step += 1;
            match self.rng.below(1000) {
                0..=249 => self.tick_all(),
                250..=749 => self.deliver(),
                750..=994 => self.control(),
                _ => self.chaos(),
            }
        }
    }

    /// Heals everything and runs until every member applied the same log.
    fn converge(&mut self) {
        self.isolated = None;
        self.loss_percent = 0;
        self.crash_mid_ready = false;
        for n in 0..NODES {
            if self.members[n as usize].node.is_none() {
                self.start(n);
            }
        }
        for _ in 0..3000 {
            self.step += 1;
            self.tick_all();
            while !self.net.is_empty() {
                self.step += 20;
                self.deliver();
            }
            let applied: Vec<u64> = self
                .members
                .iter()
                .map(|m| m.node.as_ref().expect("running").applied_index())
                .collect();
            let leader_known = self
                .members
                .iter()
                .any(|m| m.node.as_ref().is_some_and(|q| q.is_active_controller()));
            let last = self.members[0].node.as_ref().expect("running").last_index();
            if leader_known && applied.iter().all(|a| *a == last) {
                return;
            }
        }
        let states: Vec<String> = self
            .members
            .iter()
            .map(|m| {
                let q = m.node.as_ref().expect("running");
                format!(
                    "applied {} committed {} last {} term {} leader {:?} active {}",
                    q.applied_index(),
                    q.committed_index(),
                    q.last_index(),
                    q.term(),
                    q.leader(),
                    q.is_active_controller()
                )
            })
            .collect();
        panic!("members did not converge: {states:#?}");
    }
}

fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("RINGTAIL_SIM_SEED") {
        return vec![seed.parse().expect("RINGTAIL_SIM_SEED is a number")];
    }
    let count = std::env::var("RINGTAIL_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    (1..=count).collect()
}

#[test]
fn committed_metadata_never_diverges() {
    let mut total_entries = 0;
    for seed in seeds() {
        let result = std::panic::catch_unwind(|| {
            let mut sim = Sim::new(seed);
            sim.run(3000);
            sim.converge();
            sim.committed.len()
        });
        match result {
            Ok(n) => total_entries += n,
            Err(e) => {
                eprintln!(
                    "simulation failed with seed {seed}; replay with RINGTAIL_SIM_SEED={seed}"
                );
                std::panic::resume_unwind(e);
            }
        }
    }
    eprintln!("quorum simulation: {total_entries} entries committed over all seeds");
    assert!(total_entries > 0, "the simulations committed nothing");
}
