//! Controller decisions driven with time passed in, each applied to an image
//! as the quorum would.

use super::*;
use crate::cluster::records::NO_LEADER;

const SESSION_MS: u64 = 9_000;
const REFUSED_MS: u64 = 2_000;
const HEARTBEAT_MS: u64 = 1_000;

struct Harness {
    controller: Controller,
    image: MetadataImage,
    index: u64,
}

impl Harness {
    fn new() -> Harness {
        let mut next = 0u128;
        let config = ControllerConfig {
            session_timeout_ms: SESSION_MS,
            refused_timeout_ms: REFUSED_MS,
            producer_id_block_size: 1000,
            default_partitions: 1,
            default_replication_factor: 1,
            offsets_topic_partitions: 4,
            offsets_topic_replication_factor: 3,
            offsets_topic_segment_bytes: 100 << 20,
        };
        Harness {
            controller: Controller::new(
                config,
                Box::new(move || {
                    next += 1;
                    Uuid::from_u128(next)
                }),
            ),
            image: MetadataImage::default(),
            index: 0,
        }
    }

    fn apply(&mut self, records: &[MetadataRecord]) {
        if !records.is_empty() {
            self.index += 1;
            self.image.apply(self.index, records);
        }
    }

    fn run(
        &mut self,
        req: ControllerRequest,
        now: u64,
    ) -> Result<ControllerReply, ControllerError> {
        let d = self.controller.decide(&self.image, req, now);
        self.apply(&d.records);
        d.reply.complete(&self.image)
    }

    fn tick(&mut self, now: u64) {
        let records = self.controller.tick(&self.image, now);
        self.apply(&records);
    }

    fn start_broker(&mut self, node: NodeId, now: u64) -> u64 {
        let reg = BrokerRegistration {
            node_id: node,
            incarnation_id: Uuid::from_u128(1000 + node as u128 + now as u128),
            host: "127.0.0.1".into(),
            port: 9000 + node,
            rack: None,
        };
        let Ok(ControllerReply::Registered { broker_epoch }) =
            self.run(ControllerRequest::RegisterBroker(reg), now)
        else {
            panic!("registration refused")
        };
        let reply = self.heartbeat(node, broker_epoch, now, false);
        assert_eq!(
            reply,
            Ok(ControllerReply::Heartbeat {
                fenced: false,
                shutdown_ready: false
            })
        );
        broker_epoch
    }

    fn heartbeat(
        &mut self,
        node: NodeId,
        epoch: u64,
        now: u64,
        want_shutdown: bool,
    ) -> Result<ControllerReply, ControllerError> {
        let offset = self.image.offset;
        self.run(
            ControllerRequest::Heartbeat {
                node_id: node,
                broker_epoch: epoch,
                metadata_offset: offset,
                want_shutdown,
            },
            now,
        )
    }

    fn create(
        &mut self,
        name: &str,
        partitions: i32,
        rf: i32,
    ) -> Result<CreatedTopic, ControllerError> {
        let topic = NewTopic {
            name: name.into(),
            partitions,
            replication_factor: rf,
            assignments: Vec::new(),
            configs: TopicConfigs::new(),
        };
        match self.run(
            ControllerRequest::CreateTopics {
                topics: vec![topic],
                validate_only: false,
            },
            0,
        ) {
            Ok(ControllerReply::CreateTopics(mut r)) => r.remove(0),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn brokers_register_fenced_and_unfence_once_caught_up() {
    let mut h = Harness::new();
    let reg = BrokerRegistration {
        node_id: 1,
        incarnation_id: Uuid::from_u128(77),
        host: "h".into(),
        port: 1,
        rack: None,
    };
    let epoch = match h.run(ControllerRequest::RegisterBroker(reg.clone()), 0) {
        Ok(ControllerReply::Registered { broker_epoch }) => broker_epoch,
        other => panic!("{other:?}"),
    };
    assert!(h.image.broker(1).unwrap().fenced);
    let behind = h.run(
        ControllerRequest::Heartbeat {
            node_id: 1,
            broker_epoch: epoch,
            metadata_offset: epoch - 1,
            want_shutdown: false,
        },
        10,
    );
    assert_eq!(
        behind,
        Ok(ControllerReply::Heartbeat {
            fenced: true,
            shutdown_ready: false
        })
    );
    assert!(h.heartbeat(1, epoch, 20, false).is_ok());
    assert!(!h.image.broker(1).unwrap().fenced);
    assert_eq!(
        h.heartbeat(1, epoch + 5, 30, false),
        Err(ControllerError::StaleBrokerEpoch(1))
    );
    // The same incarnation registering again keeps its epoch.
    assert_eq!(
        h.run(ControllerRequest::RegisterBroker(reg), 40),
        Ok(ControllerReply::Registered {
            broker_epoch: epoch
        })
    );
}

#[test]
fn topics_spread_over_brokers_and_refuse_too_many_replicas() {
    let mut h = Harness::new();
    for n in 1..=3 {
        h.start_broker(n, 0);
    }
    let t = h.create("orders", 6, 3).unwrap();
    assert_eq!((t.partitions, t.replication_factor), (6, 3));
    let leaders: Vec<NodeId> = h
        .image
        .topic("orders")
        .unwrap()
        .partitions
        .iter()
        .map(|p| p.leader)
        .collect();
    for n in 1..=3 {
        assert_eq!(
            leaders.iter().filter(|l| **l == n).count(),
            2,
            "{leaders:?}"
        );
    }
    assert!(matches!(
        h.create("wide", 1, 4),
        Err(ControllerError::InvalidReplicationFactor(_))
    ));
    assert_eq!(
        h.create("orders", 1, 1),
        Err(ControllerError::TopicAlreadyExists("orders".into()))
    );
    assert!(matches!(
        h.create("bad name", 1, 1),
        Err(ControllerError::InvalidTopic(_))
    ));
}

#[test]
fn an_expired_session_fences_the_broker_and_moves_its_leaderships() {
    let mut h = Harness::new();
    let epochs: Vec<u64> = (1..=3).map(|n| h.start_broker(n, 0)).collect();
    h.create("t", 3, 3).unwrap();
    let led_by_1 = h.image.partitions_led_by(1).len();
    assert_eq!(led_by_1, 1);
    // Brokers 2 and 3 keep heartbeating; 1 goes silent.
    for now in (1000..=SESSION_MS + 1000).step_by(1000) {
        h.heartbeat(2, epochs[1], now, false).unwrap();
        h.heartbeat(3, epochs[2], now, false).unwrap();
        h.tick(now);
    }
    assert!(h.image.broker(1).unwrap().fenced);
    assert!(h.image.partitions_led_by(1).is_empty());
    for p in &h.image.topic("t").unwrap().partitions {
        assert_ne!(p.leader, NO_LEADER);
        assert!(!p.isr.contains(&1), "{p:?}");
    }
}

/// Three brokers with a topic of three partitions, one led by each; 2 and 3
/// heartbeat every second from `from` to `to` with a tick after each.
fn live_brokers(h: &mut Harness, epochs: &[u64], from: u64, to: u64) {
    for now in (from..=to).step_by(HEARTBEAT_MS as usize) {
        h.heartbeat(2, epochs[1], now, false).unwrap();
        h.heartbeat(3, epochs[2], now, false).unwrap();
        h.tick(now);
    }
}

fn three_brokers_one_topic(h: &mut Harness) -> Vec<u64> {
    let epochs: Vec<u64> = (1..=3).map(|n| h.start_broker(n, 0)).collect();
    h.create("t", 3, 3).unwrap();
    assert_eq!(h.image.partitions_led_by(1).len(), 1);
    epochs
}

#[test]
fn a_refused_broker_that_stopped_heartbeating_is_fenced_before_its_session_ends() {
    let mut h = Harness::new();
    let epochs = three_brokers_one_topic(&mut h);
    // Broker 1 heartbeats last at 1000 and dies; its port refuses from 1200.
    h.heartbeat(1, epochs[0], 1000, false).unwrap();
    h.controller.link_refused(1, 1200);
    live_brokers(&mut h, &epochs, 1000, 2000);
    assert!(
        !h.image.broker(1).unwrap().fenced,
        "one heartbeat late is not enough"
    );
    h.tick(1000 + REFUSED_MS - 1);
    assert!(!h.image.broker(1).unwrap().fenced);
    h.tick(1000 + REFUSED_MS);
    assert!(h.image.broker(1).unwrap().fenced);
    assert!(h.image.partitions_led_by(1).is_empty());
    for p in &h.image.topic("t").unwrap().partitions {
        assert_ne!(p.leader, NO_LEADER);
        assert!(!p.isr.contains(&1), "{p:?}");
    }
}

#[test]
fn a_refusal_alone_does_not_fence_a_broker_that_heartbeats() {
    let mut h = Harness::new();
    let epochs = three_brokers_one_topic(&mut h);
    // Refusals (a firewall, say) while broker 1 keeps heartbeating, even late.
    for now in (1000..=3 * SESSION_MS).step_by(1500) {
        h.controller.link_refused(1, now + 100);
        h.heartbeat(1, epochs[0], now, false).unwrap();
        live_brokers(&mut h, &epochs, now, now + 1000);
    }
    assert!(!h.image.broker(1).unwrap().fenced);
    assert_eq!(h.image.partitions_led_by(1).len(), 1);
}

#[test]
fn a_silent_broker_that_still_accepts_keeps_its_full_session() {
    // SIGSTOP, overload or a partition: no refusal, or a refusal answered by
    // a connection afterwards, or one from before its last heartbeat.
    let mut h = Harness::new();
    let epochs = three_brokers_one_topic(&mut h);
    h.controller.link_refused(1, 500);
    h.heartbeat(1, epochs[0], 1000, false).unwrap();
    live_brokers(&mut h, &epochs, 1000, SESSION_MS);
    assert!(
        !h.image.broker(1).unwrap().fenced,
        "refused before its last heartbeat"
    );
    h.controller.link_refused(1, SESSION_MS + 100);
    h.controller.link_connected(1);
    h.tick(1000 + SESSION_MS - 1);
    assert!(
        !h.image.broker(1).unwrap().fenced,
        "reconnected since the refusal"
    );
    live_brokers(&mut h, &epochs, 1000 + SESSION_MS, 1000 + SESSION_MS);
    assert!(
        h.image.broker(1).unwrap().fenced,
        "the session still expires"
    );
}

#[test]
fn a_new_active_controller_forgets_refusals_and_gives_a_full_grace() {
    let mut h = Harness::new();
    let epochs = three_brokers_one_topic(&mut h);
    h.controller.link_refused(1, 500);
    h.controller.reset_sessions();
    live_brokers(&mut h, &epochs, 10_000, 10_000 + SESSION_MS - 1000);
    assert!(
        !h.image.broker(1).unwrap().fenced,
        "refusals seen before becoming active"
    );
    // Refused again after this controller took over: fenced once the
    // session it gave broker 1 at 10000 is REFUSED_MS old.
    let mut h = Harness::new();
    let epochs = three_brokers_one_topic(&mut h);
    h.controller.reset_sessions();
    h.tick(10_000);
    h.controller.link_refused(1, 10_200);
    live_brokers(&mut h, &epochs, 11_000, 10_000 + REFUSED_MS - 1);
    assert!(!h.image.broker(1).unwrap().fenced);
    h.tick(10_000 + REFUSED_MS);
    assert!(h.image.broker(1).unwrap().fenced);
}

#[test]
fn the_last_in_sync_replica_keeps_its_place_and_leads_again_when_back() {
    let mut h = Harness::new();
    let e1 = h.start_broker(1, 0);
    h.create("solo", 1, 1).unwrap();
    h.tick(SESSION_MS + 1);
    let p = h.image.partition("solo", 0).unwrap().clone();
    assert_eq!((p.leader, p.isr.clone()), (NO_LEADER, vec![1]));
    // The broker restarts: a new incarnation, unfenced once caught up.
    let e2 = h.start_broker(1, SESSION_MS + 2);
    assert!(e2 > e1);
    let p = h.image.partition("solo", 0).unwrap();
    assert_eq!(p.leader, 1);
    assert!(p.leader_epoch > 0);
}

#[test]
fn controlled_shutdown_moves_leadership_before_saying_ready() {
    let mut h = Harness::new();
    let epochs: Vec<u64> = (1..=3).map(|n| h.start_broker(n, 0)).collect();
    h.create("t", 6, 2).unwrap();
    assert!(!h.image.partitions_led_by(2).is_empty());
    let reply = h.heartbeat(2, epochs[1], 100, true).unwrap();
    assert_eq!(
        reply,
        ControllerReply::Heartbeat {
            fenced: false,
            shutdown_ready: true
        }
    );
    assert!(h.image.partitions_led_by(2).is_empty());
    // New topics avoid a broker that is shutting down.
    h.create("after", 6, 2).unwrap();
    let t = h.image.topic("after").unwrap();
    assert!(t.partitions.iter().all(|p| !p.replicas.contains(&2)));
}

#[test]
fn alter_partition_checks_epochs_and_eligibility() {
    let mut h = Harness::new();
    let epochs: Vec<u64> = (1..=3).map(|n| h.start_broker(n, 0)).collect();
    let t = h.create("t", 1, 3).unwrap();
    let p = h.image.partition("t", 0).unwrap().clone();
    let leader = p.leader;
    let follower = *p.replicas.iter().find(|r| **r != leader).unwrap();
    let shrink: Vec<NodeId> = p.isr.iter().copied().filter(|r| *r != follower).collect();
    let item = |leader_epoch, partition_epoch, isr: Vec<NodeId>| AlterPartitionItem {
        topic_id: t.topic_id,
        partition: 0,
        leader_epoch,
        partition_epoch,
        new_isr: isr,
    };
    let epoch_of = |n: NodeId| epochs[(n - 1) as usize];
    let alter = |h: &mut Harness, node: NodeId, i: AlterPartitionItem| match h.run(
        ControllerRequest::AlterPartition {
            node_id: node,
            broker_epoch: epoch_of(node),
            items: vec![i],
        },
        0,
    ) {
        Ok(ControllerReply::AlterPartition(mut r)) => r.remove(0),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        alter(&mut h, follower, item(0, 0, shrink.clone())),
        Err(ControllerError::NotLeaderOrFollower)
    );
    assert_eq!(
        alter(&mut h, leader, item(1, 0, shrink.clone())),
        Err(ControllerError::FencedLeaderEpoch)
    );
    let ok = alter(&mut h, leader, item(0, 0, shrink.clone())).unwrap();
    assert_eq!((ok.isr, ok.partition_epoch), (shrink.clone(), 1));
    assert_eq!(
        alter(&mut h, leader, item(0, 0, p.isr.clone())),
        Err(ControllerError::InvalidUpdateVersion),
        "a stale partition epoch is refused"
    );
    assert!(alter(&mut h, leader, item(0, 1, p.isr.clone())).is_ok());
    assert_eq!(h.image.partition("t", 0).unwrap().isr.len(), 3);
}

#[test]
fn preferred_election_returns_leadership_to_the_first_replica() {
    let mut h = Harness::new();
    let epochs: Vec<u64> = (1..=2).map(|n| h.start_broker(n, 0)).collect();
    h.create("t", 2, 2).unwrap();
    h.heartbeat(1, epochs[0], 10, true).unwrap();
    // Broker 1 restarts as a new incarnation and catches up.
    h.start_broker(1, 20);
    let reply = h.run(
        ControllerRequest::ElectPreferredLeaders { partitions: None },
        30,
    );
    let Ok(ControllerReply::ElectLeaders(results)) = reply else {
        panic!("{reply:?}")
    };
    // Broker 1 is not back in the ISR yet (its leader adds it): not available.
    assert!(results
        .iter()
        .any(|(_, r)| r == &Err(ControllerError::PreferredLeaderNotAvailable)));
    let again = h.run(
        ControllerRequest::ElectPreferredLeaders {
            partitions: Some(vec![("t".into(), 0), ("nope".into(), 0)]),
        },
        40,
    );
    let Ok(ControllerReply::ElectLeaders(results)) = again else {
        panic!()
    };
    assert!(matches!(
        results[1].1,
        Err(ControllerError::UnknownTopicOrPartition(_))
    ));
}

#[test]
fn the_offsets_topic_waits_for_enough_brokers() {
    let mut h = Harness::new();
    h.start_broker(1, 0);
    h.start_broker(2, 0);
    h.run(ControllerRequest::EnsureOffsetsTopic, 0).unwrap();
    assert!(h
        .image
        .topic(crate::cluster::CONSUMER_OFFSETS_TOPIC)
        .is_none());
    h.start_broker(3, 0);
    h.run(ControllerRequest::EnsureOffsetsTopic, 0).unwrap();
    let t = h
        .image
        .topic(crate::cluster::CONSUMER_OFFSETS_TOPIC)
        .unwrap();
    assert_eq!(t.partitions.len(), 4);
    assert!(t.internal);
    assert!(t.partitions.iter().all(|p| p.replicas.len() == 3));
}

#[test]
fn producer_id_blocks_never_overlap() {
    let mut h = Harness::new();
    let e = h.start_broker(1, 0);
    let mut firsts = Vec::new();
    for _ in 0..3 {
        match h.run(
            ControllerRequest::AllocateProducerIds {
                node_id: 1,
                broker_epoch: e,
            },
            0,
        ) {
            Ok(ControllerReply::ProducerIds { first, count }) => {
                assert_eq!(count, 1000);
                firsts.push(first)
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(firsts, vec![0, 1000, 2000]);
}
