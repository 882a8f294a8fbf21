//! Seeded simulation of one partition replicated on three brokers with
//! replication factor 3 and min.insync.replicas 2: the real replica state
//! machine (high watermark, ISR), the real leader epoch cache (divergence
//! and truncation), the real controller (registration, heartbeats, fencing,
//! elections, AlterPartition) against a model of logs whose unsynced tail a
//! crash takes away, with fetches lost, delayed and reordered, brokers
//! isolated, crashed and restarted, and metadata reaching brokers late.
//!
//! After every step: every acknowledged (acks=all) record is on the durable
//! log of every member of the committed ISR, at its offset. At the end the
//! cluster heals and every log must agree with the leader's up to its high
//! watermark, holding every acknowledged record.
//! `RINGTAIL_SIM_SEEDS` (default 300) and `RINGTAIL_SIM_SEED=N` (replay).

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use crate::cluster::controller::{
    AlterPartitionItem, Controller, ControllerConfig, ControllerError, ControllerReply,
    ControllerRequest, NewTopic,
};
use crate::cluster::image::MetadataImage;
use crate::cluster::quorum::sim::Rng;
use crate::cluster::records::{BrokerRegistration, MetadataRecord, NodeId, NO_LEADER};
use crate::partition::epochs::{EpochEnd, LeaderEpochCache};
use crate::partition::replica::{AckState, ReplicaState, Role};

const BROKERS: NodeId = 3;
const MIN_ISR: usize = 2;
const LAG_MS: u64 = 2_000;
const SESSION_MS: u64 = 3_000;
const TICK_MS: u64 = 100;
const TOPIC: &str = "t";
const FETCH_TIMEOUT_STEPS: u64 = 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Batch {
    epoch: i32,
    id: u64,
}

struct Broker {
    id: NodeId,
    alive: bool,
    /// Offsets are positions: batch n is at offset n.
    log: Vec<Batch>,
    durable: usize,
    epochs: LeaderEpochCache,
    state: ReplicaState,
    /// Metadata entries applied so far.
    applied: usize,
    image: MetadataImage,
    broker_epoch: Option<u64>,
    incarnation: u64,
    /// The one fetch in flight (id, sent at step); replies to others are stale.
    fetching: Option<(u64, u64)>,
}

enum Msg {
    Fetch {
        id: u64,
        from: NodeId,
        to: NodeId,
        offset: i64,
        last_epoch: i32,
        leader_epoch: i32,
    },
    Reply {
        id: u64,
        to: NodeId,
        leader: NodeId,
        leader_epoch: i32,
        diverging: Option<EpochEnd>,
        batches: Vec<Batch>,
        first: i64,
        hw: i64,
    },
}

struct Pending {
    leader: NodeId,
    epoch: i32,
    end: i64,
    offset: i64,
    id: u64,
}

struct Sim {
    rng: Rng,
    now: u64,
    controller: Controller,
    image: MetadataImage,
    metadata: Vec<(u64, Vec<MetadataRecord>)>,
    brokers: Vec<Broker>,
    /// In send order; each directed pair delivers in order (one TCP
    /// connection), pairs interleave freely.
    net: Vec<(u64, (NodeId, NodeId), Msg)>,
    step: u64,
    isolated: Option<NodeId>,
    loss: u64,
    pending: Vec<Pending>,
    acked: BTreeMap<i64, u64>,
    next_id: u64,
    topic_id: Option<Uuid>,
    trace: bool,
}

impl Broker {
    fn new(id: NodeId) -> Broker {
        Broker {
            id,
            alive: true,
            log: Vec::new(),
            durable: 0,
            epochs: LeaderEpochCache::default(),
            state: ReplicaState::new(id, 0, 0, LAG_MS),
            applied: 0,
            image: MetadataImage::default(),
            broker_epoch: None,
            incarnation: 0,
            fetching: None,
        }
    }

    fn end(&self) -> i64 {
        self.log.len() as i64
    }

    fn truncate(&mut self, to: i64) {
        let to = to.max(0) as usize;
        if to < self.log.len() {
            self.log.truncate(to);
            self.durable = self.durable.min(to);
            self.epochs.truncate_from_end(to as i64);
            self.state.on_truncate(to as i64);
        }
    }

    fn append(&mut self, batch: Batch) {
        self.epochs.assign(batch.epoch, self.end());
        self.log.push(batch);
        self.state.on_append(self.end());
    }
}

macro_rules! trace {
    ($sim:expr, $($arg:tt)*) => {
        if $sim.trace {
            eprintln!("[{} t={}] {}", $sim.step, $sim.now, format!($($arg)*));
        }
    };
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut ids = Rng::new(seed.wrapping_mul(31));
        let controller = Controller::new(
            ControllerConfig {
                session_timeout_ms: SESSION_MS,
                refused_timeout_ms: 2 * SESSION_MS / 9,
                producer_id_block_size: 100,
                default_partitions: 1,
                default_replication_factor: 3,
                offsets_topic_partitions: 1,
                offsets_topic_replication_factor: 3,
                offsets_topic_segment_bytes: 100 << 20,
            },
            Box::new(move || Uuid::from_u64_pair(ids.next(), ids.next())),
        );
        let mut sim = Sim {
            rng: Rng::new(seed),
            now: 0,
            controller,
            image: MetadataImage::default(),
            metadata: Vec::new(),
            brokers: (0..BROKERS).map(Broker::new).collect(),
            net: Vec::new(),
            step: 0,
            isolated: None,
            loss: 10,
            pending: Vec::new(),
            acked: BTreeMap::new(),
            next_id: 1,
            topic_id: None,
            trace: std::env::var("RINGTAIL_SIM_TRACE").is_ok(),
        };
        for b in 0..BROKERS {
            sim.register(b);
        }
        for b in 0..BROKERS {
            sim.sync_metadata(b);
            sim.heartbeat(b);
        }
        let created = sim.control(ControllerRequest::CreateTopics {
            topics: vec![NewTopic {
                name: TOPIC.into(),
                partitions: 1,
                replication_factor: 3,
                assignments: Vec::new(),
                configs: Default::default(),
            }],
            validate_only: false,
        });
        if let Ok(ControllerReply::CreateTopics(r)) = created {
            sim.topic_id = r[0].as_ref().ok().map(|t| t.topic_id);
        }
        assert!(sim.topic_id.is_some(), "topic created");
        sim
    }

    fn commit(&mut self, records: Vec<MetadataRecord>) {
        if records.is_empty() {
            return;
        }
        trace!(self, "metadata {}: {:?}", self.metadata.len() + 1, records);
        let index = self.metadata.len() as u64 + 1;
        self.image.apply(index, &records);
        self.metadata.push((index, records));
    }

    fn control(&mut self, req: ControllerRequest) -> Result<ControllerReply, ControllerError> {
        let d = self.controller.decide(&self.image, req, self.now);
        self.commit(d.records);
        d.reply.complete(&self.image)
    }

    fn reaches_controller(&self, b: NodeId) -> bool {
        self.brokers[b as usize].alive && self.isolated != Some(b)
    }

    fn register(&mut self, b: NodeId) {
        let broker = &self.brokers[b as usize];
        let reg = BrokerRegistration {
            node_id: b,
            incarnation_id: Uuid::from_u64_pair(b as u64, broker.incarnation),
            host: "h".into(),
            port: 1,
            rack: None,
        };
        if let Ok(ControllerReply::Registered { broker_epoch }) =
            self.control(ControllerRequest::RegisterBroker(reg))
        {
            self.brokers[b as usize].broker_epoch = Some(broker_epoch);
        }
    }

    fn heartbeat(&mut self, b: NodeId) {
        if !self.reaches_controller(b) {
            return;
        }
        let broker = &self.brokers[b as usize];
        let Some(epoch) = broker.broker_epoch else {
            return self.register(b);
        };
        let req = ControllerRequest::Heartbeat {
            node_id: b,
            broker_epoch: epoch,
            metadata_offset: broker.applied as u64,
            want_shutdown: false,
        };
        if let Err(ControllerError::StaleBrokerEpoch(_)) = self.control(req) {
            self.register(b);
        }
    }

    /// Broker `b` applies the metadata it has not seen and takes its role.
    fn sync_metadata(&mut self, b: NodeId) {
        if !self.reaches_controller(b) {
            return;
        }
        let upto = self.metadata.len();
        let broker = &mut self.brokers[b as usize];
        for (index, records) in &self.metadata[broker.applied..upto] {
            broker.image.apply(*index, records);
        }
        broker.applied = upto;
        let Some(p) = broker.image.partition(TOPIC, 0).cloned() else {
            return;
        };
        // Roles only for this incarnation once unfenced: a restarted broker
        // must not resume a leadership its lost tail no longer backs.
        let me = broker.image.broker(b).is_some_and(|x| {
            x.registration.incarnation_id == Uuid::from_u64_pair(b as u64, broker.incarnation)
                && !x.fenced
        });
        let role = if !me || !p.replicas.contains(&b) || p.leader == NO_LEADER {
            Role::Offline
        } else if p.leader == b {
            Role::Leader
        } else {
            Role::Follower(p.leader)
        };
        let ineligible: BTreeSet<NodeId> = broker
            .image
            .brokers
            .values()
            .filter(|x| !x.is_active())
            .map(|x| x.registration.node_id)
            .collect();
        if role == Role::Leader && p.leader_epoch != broker.state.leader_epoch {
            let end = broker.end();
            broker.epochs.assign(p.leader_epoch, end);
        }
        let now = self.now;
        if self.trace && role != self.brokers[b as usize].state.role {
            eprintln!(
                "[{}] broker {b} becomes {role:?} epoch {} isr {:?} log {}",
                self.step,
                p.leader_epoch,
                p.isr,
                self.brokers[b as usize].end()
            );
        }
        let broker = &mut self.brokers[b as usize];
        let e = broker.state.assign(
            role,
            p.leader_epoch,
            p.partition_epoch,
            &p.replicas,
            &p.isr,
            ineligible,
            now,
        );
        self.effects(b, e.alter_isr);
    }

    fn effects(&mut self, b: NodeId, alter: Option<Vec<NodeId>>) {
        let Some(isr) = alter else {
            return;
        };
        let broker = &self.brokers[b as usize];
        let item = AlterPartitionItem {
            topic_id: self.topic_id.expect("created"),
            partition: 0,
            leader_epoch: broker.state.leader_epoch,
            partition_epoch: broker.state.partition_epoch,
            new_isr: isr,
        };
        let ok = self.reaches_controller(b) && !self.rng.chance(self.loss);
        let result = match (ok, broker.broker_epoch) {
            (true, Some(epoch)) => self.control(ControllerRequest::AlterPartition {
                node_id: b,
                broker_epoch: epoch,
                items: vec![item],
            }),
            _ => Err(ControllerError::Timeout),
        };
        let accepted = matches!(&result, Ok(ControllerReply::AlterPartition(r)) if r[0].is_ok());
        trace!(self, "broker {b} alter isr -> {:?}", result);
        if !accepted {
            self.brokers[b as usize].state.alter_failed();
        }
    }

    fn produce(&mut self) {
        let leaders: Vec<NodeId> = (0..BROKERS)
            .filter(|b| {
                let x = &self.brokers[*b as usize];
                x.alive && x.state.is_leader()
            })
            .collect();
        if leaders.is_empty() {
            return;
        }
        let b = leaders[self.rng.below(leaders.len() as u64) as usize];
        let broker = &mut self.brokers[b as usize];
        if !broker.state.enough_replicas(MIN_ISR) {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let epoch = broker.state.leader_epoch;
        let offset = broker.end();
        broker.append(Batch { epoch, id });
        trace!(self, "broker {b} produce id {id} at {offset} epoch {epoch}");
        self.pending.push(Pending {
            leader: b,
            epoch,
            end: offset + 1,
            offset,
            id,
        });
    }

    fn flush(&mut self, b: NodeId) {
        let now = self.now;
        let broker = &mut self.brokers[b as usize];
        if !broker.alive {
            return;
        }
        broker.durable = broker.log.len();
        let e = broker.state.on_durable(broker.end(), now);
        self.effects(b, e.alter_isr);
    }

    fn send_fetch(&mut self, b: NodeId) {
        let broker = &self.brokers[b as usize];
        let Role::Follower(leader) = broker.state.role else {
            return;
        };
        if !broker.alive {
            return;
        }
        // One fetch in flight; a lost one is given up after a timeout.
        if broker
            .fetching
            .is_some_and(|(_, at)| self.step < at + FETCH_TIMEOUT_STEPS)
        {
            return;
        }
        // A follower fetches only once what it has is durable.
        self.flush(b);
        let id = self.next_id;
        self.next_id += 1;
        self.brokers[b as usize].fetching = Some((id, self.step));
        let broker = &self.brokers[b as usize];
        let msg = Msg::Fetch {
            id,
            from: b,
            to: leader,
            offset: broker.end(),
            last_epoch: broker.log.last().map_or(-1, |x| x.epoch),
            leader_epoch: broker.state.leader_epoch,
        };
        self.send(b, leader, msg);
    }

    fn send(&mut self, from: NodeId, to: NodeId, msg: Msg) {
        let cut = self.isolated.is_some_and(|i| i == from || i == to);
        if cut || self.rng.chance(self.loss) {
            return;
        }
        let at = self.step + 1 + self.rng.below(10);
        self.net.push((at, (from, to), msg));
    }

    fn deliver(&mut self) {
        let mut seen = BTreeSet::new();
        let due: Vec<usize> = (0..self.net.len())
            .filter(|i| seen.insert(self.net[*i].1) && self.net[*i].0 <= self.step)
            .collect();
        if due.is_empty() {
            return;
        }
        let (_, _, msg) = self
            .net
            .remove(due[self.rng.below(due.len() as u64) as usize]);
        match msg {
            Msg::Fetch {
                id,
                from,
                to,
                offset,
                last_epoch,
                leader_epoch,
            } => self.serve_fetch(id, from, to, offset, last_epoch, leader_epoch),
            Msg::Reply {
                id,
                to,
                leader,
                leader_epoch,
                diverging,
                batches,
                first,
                hw,
            } => self.take_reply(id, to, leader, leader_epoch, diverging, batches, first, hw),
        }
    }

    fn serve_fetch(
        &mut self,
        id: u64,
        from: NodeId,
        to: NodeId,
        offset: i64,
        last_epoch: i32,
        leader_epoch: i32,
    ) {
        let now = self.now;
        let leader = &mut self.brokers[to as usize];
        if !leader.alive || !leader.state.is_leader() || leader.state.leader_epoch != leader_epoch {
            return;
        }
        let diverging = leader.epochs.diverging(offset, last_epoch, leader.end());
        let (batches, effects) = if diverging.is_some() || offset > leader.end() {
            (Vec::new(), Default::default())
        } else {
            let e = leader.state.on_follower_fetch(from, offset, 0, now);
            (leader.log[offset as usize..].to_vec(), e)
        };
        let hw = leader.state.high_watermark();
        trace!(self, "leader {to} serves fetch from {from} at {offset} last_epoch {last_epoch}: diverging {diverging:?} hw {hw}");
        self.effects(to, effects.alter_isr);
        let reply = Msg::Reply {
            id,
            to: from,
            leader: to,
            leader_epoch,
            diverging,
            batches,
            first: offset,
            hw,
        };
        self.send(to, from, reply);
    }

    #[allow(clippy::too_many_arguments)]
    fn take_reply(
        &mut self,
        id: u64,
        to: NodeId,
        leader: NodeId,
        leader_epoch: i32,
        diverging: Option<EpochEnd>,
        batches: Vec<Batch>,
        first: i64,
        hw: i64,
    ) {
        let f = &mut self.brokers[to as usize];
        if f.fetching.map(|(i, _)| i) != Some(id) {
            return;
        }
        f.fetching = None;
        if !f.alive
            || f.state.role != Role::Follower(leader)
            || f.state.leader_epoch != leader_epoch
        {
            return;
        }
        if first != f.end() {
            return;
        }
        if let Some(d) = diverging {
            let (at, _) = f.epochs.truncation_for(d, f.end());
            let end = f.end();
            f.truncate(at);
            trace!(self, "follower {to} truncates {end} -> {at} for {d:?}");
            return;
        }
        if first != f.end() {
            return;
        }
        let n = batches.len();
        for b in batches {
            f.append(b);
        }
        f.state.on_leader_high_watermark(hw);
        let end = f.end();
        trace!(
            self,
            "follower {to} appends {n} from {first} -> {end}, hw {hw}"
        );
    }

    fn crash(&mut self, b: NodeId) {
        let broker = &mut self.brokers[b as usize];
        broker.alive = false;
        broker.fetching = None;
        let durable = broker.durable as i64;
        broker.log.truncate(broker.durable);
        broker.epochs.truncate_from_end(durable);
        trace!(self, "broker {b} crashes, log {durable}");
    }

    fn restart(&mut self, b: NodeId) {
        let broker = &mut self.brokers[b as usize];
        broker.alive = true;
        broker.incarnation += 1;
        broker.state = ReplicaState::new(b, broker.end(), 0, LAG_MS);
        broker.image = MetadataImage::default();
        broker.applied = 0;
        broker.broker_epoch = None;
        if self.reaches_controller(b) {
            self.register(b);
        }
    }

    fn settle_acks(&mut self) {
        let mut keep = Vec::new();
        for p in std::mem::take(&mut self.pending) {
            let b = &self.brokers[p.leader as usize];
            let same = b.alive && b.state.is_leader() && b.state.leader_epoch == p.epoch;
            if !same {
                continue;
            }
            match b.state.ack_state(p.end, MIN_ISR) {
                AckState::Wait => keep.push(p),
                AckState::Done => {
                    trace!(self, "ack id {} at {} by {}", p.id, p.offset, p.leader);
                    let old = self.acked.insert(p.offset, p.id);
                    assert!(
                        old.is_none() || old == Some(p.id),
                        "offset {} acknowledged twice",
                        p.offset
                    );
                }
                AckState::NotEnoughReplicasAfterAppend => {}
            }
        }
        self.pending = keep;
    }

    /// Every acknowledged record is durable on every committed ISR member.
    fn check(&self) {
        let Some(p) = self.image.partition(TOPIC, 0) else {
            return;
        };
        for member in &p.isr {
            let b = &self.brokers[*member as usize];
            for (offset, id) in &self.acked {
                let held = b.log[..b.durable].get(*offset as usize).map(|x| x.id);
                assert_eq!(
                    held,
                    Some(*id),
                    "step {}: ISR member {member} lost acknowledged offset {offset} (isr {:?}, leader {})",
                    self.step,
                    p.isr,
                    p.leader
                );
            }
        }
    }

    fn tick(&mut self) {
        self.now += TICK_MS;
        let records = self.controller.tick(&self.image, self.now);
        self.commit(records);
        for b in 0..BROKERS {
            if !self.brokers[b as usize].alive {
                continue;
            }
            self.heartbeat(b);
            let now = self.now;
            let e = self.brokers[b as usize].state.tick(now);
            self.effects(b, e.alter_isr);
        }
    }

    fn chaos(&mut self) {
        let b = self.rng.below(BROKERS as u64) as NodeId;
        match self.rng.below(4) {
            0 if self.brokers.iter().filter(|x| x.alive).count() > 1 => self.crash(b),
            1 if !self.brokers[b as usize].alive => self.restart(b),
            2 => {
                trace!(self, "isolate {b}");
                self.isolated = Some(b)
            }
            _ => self.isolated = None,
        }
    }

    fn run(&mut self, steps: u64) {
        for _ in 0..steps {
            self.step += 1;
            let b = self.rng.below(BROKERS as u64) as NodeId;
            match self.rng.below(1000) {
                0..=99 => self.tick(),
                100..=249 => self.produce(),
                250..=399 => self.flush(b),
                400..=549 => self.send_fetch(b),
                550..=849 => self.deliver(),
                850..=989 => self.sync_metadata(b),
                _ => self.chaos(),
            }
            self.settle_acks();
            self.check();
        }
    }

    fn converge(&mut self) {
        self.isolated = None;
        self.loss = 0;
        for b in 0..BROKERS {
            if !self.brokers[b as usize].alive {
                self.restart(b);
            }
        }
        for _ in 0..4000 {
            self.step += 1;
            self.tick();
            for b in 0..BROKERS {
                self.sync_metadata(b);
                self.flush(b);
                self.send_fetch(b);
            }
            while !self.net.is_empty() {
                self.step += 10;
                self.deliver();
            }
            self.settle_acks();
            self.check();
            if self.converged() {
                return;
            }
        }
        let brokers: Vec<String> = self
            .brokers
            .iter()
            .map(|b| {
                format!(
                    "{}: alive {} role {:?} epoch {} log {} durable {} hw {} applied {} broker_epoch {:?} fenced {:?} epochs {:?}",
                    b.id,
                    b.alive,
                    b.state.role,
                    b.state.leader_epoch,
                    b.log.len(),
                    b.durable,
                    b.state.high_watermark(),
                    b.applied,
                    b.broker_epoch,
                    self.image.broker(b.id).map(|x| (x.fenced, x.broker_epoch)),
                    b.epochs.entries()
                )
            })
            .collect();
        let leader = self
            .image
            .partition(TOPIC, 0)
            .map_or(0, |p| p.leader.max(0)) as usize;
        let differ: Vec<(NodeId, Option<usize>)> = self
            .brokers
            .iter()
            .map(|b| {
                let at = b
                    .log
                    .iter()
                    .zip(&self.brokers[leader].log)
                    .position(|(x, y)| x != y);
                (b.id, at)
            })
            .collect();
        panic!(
            "replicas did not converge: {:?}\n{brokers:#?}\nfirst difference from the leader: {differ:?}",
            self.image.partition(TOPIC, 0)
        );
    }

    fn converged(&self) -> bool {
        let Some(p) = self.image.partition(TOPIC, 0) else {
            return false;
        };
        if p.leader == NO_LEADER || p.isr.len() != BROKERS as usize {
            return false;
        }
        let leader = &self.brokers[p.leader as usize];
        let hw = leader.state.high_watermark() as usize;
        let all_acked = self
            .acked
            .iter()
            .all(|(o, id)| leader.log.get(*o as usize).map(|x| x.id) == Some(*id));
        all_acked && hw == leader.log.len() && self.brokers.iter().all(|b| b.log == leader.log)
    }
}

fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("RINGTAIL_SIM_SEED") {
        return vec![seed.parse().expect("RINGTAIL_SIM_SEED is a number")];
    }
    let count = std::env::var("RINGTAIL_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    (1..=count).collect()
}

#[test]
fn no_acknowledged_record_is_ever_lost() {
    let mut acked = 0;
    for seed in seeds() {
        let result = std::panic::catch_unwind(|| {
            let mut sim = Sim::new(seed);
            sim.run(2000);
            sim.converge();
            sim.acked.len()
        });
        match result {
            Ok(n) => acked += n,
            Err(e) => {
                eprintln!("replication simulation failed with seed {seed}; replay with RINGTAIL_SIM_SEED={seed}");
                std::panic::resume_unwind(e);
            }
        }
    }
    eprintln!("replication simulation: {acked} acknowledged records checked");
    assert!(acked > 0, "nothing was ever acknowledged");
}
