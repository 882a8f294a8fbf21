//! Unit tests of the group coordinator state machine, time passed in.

use super::*;
use crate::group::records::{GroupValue, OffsetValue};

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
    // A group that only held offsets goes with the last of them, as it
    // would not be loaded after a restart either.
    c.apply_offset("solo", "t", 0, None);
    assert!(!c.groups.borrow().contains_key("solo"));
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

/// Runs a one-member group "g" to Stable; returns the member id.
fn stable_one(c: &GroupCoordinator, t0: Instant) -> String {
    let a = now_result(join(c, "", t0)).member_id;
    let mut rx = waited(join(c, &a, t0));
    c.tick(t0 + Duration::from_millis(400));
    let r = rx.try_recv().unwrap().unwrap();
    match c.sync(
        "g",
        &a,
        r.generation,
        None,
        vec![(a.clone(), Bytes::new())],
        t0,
    ) {
        SyncOutcome::Completed { waiters, .. } => {
            for (tx, asg) in waiters {
                let _ = tx.send(Ok(asg));
            }
        }
        _ => panic!("the only member leads"),
    }
    a
}

#[test]
fn last_member_leaving_empties_the_group_at_once() {
    let c = GroupCoordinator::new(GroupConfig::default());
    let t0 = Instant::now();
    let a = stable_one(&c, t0);
    let out = c.leave("g", vec![(a.clone(), None)], t0).unwrap();
    assert_eq!(out.results, vec![Ok(())]);
    // No timer tick needed: Empty now, in the next generation.
    {
        let groups = c.groups.borrow();
        let g = &groups["g"];
        assert_eq!((g.state, g.generation), (GroupState::Empty, 2));
        assert!(g.members.is_empty() && g.protocol.is_none() && g.leader.is_none());
    }
    let v = out.store.expect("the Empty group's record is stored");
    assert!(v.members.is_empty());
    assert_eq!(
        (v.generation, v.protocol.as_deref(), v.leader.as_deref()),
        (2, None, None)
    );
    assert_eq!(v.protocol_type, "consumer");
    // An offset reset (a simple commit) is accepted right away.
    assert_eq!(c.check_commit("g", "", -1, None), Ok(()));
    // The record replays to the same Empty group.
    let r = GroupCoordinator::new(GroupConfig::default());
    r.apply_group("g", Some(v), t0);
    let groups = r.groups.borrow();
    assert_eq!(groups["g"].state, GroupState::Empty);
    assert!(groups["g"].members.is_empty());
}

#[test]
fn a_member_leaving_others_behind_rebalances_without_a_record() {
    let c = GroupCoordinator::new(GroupConfig::default());
    let t0 = Instant::now();
    let a = now_result(join(&c, "", t0)).member_id;
    let _rx_a = waited(join(&c, &a, t0));
    let b = now_result(join(&c, "", t0)).member_id;
    let _rx_b = waited(join(&c, &b, t0));
    c.tick(t0 + Duration::from_millis(400));
    let out = c.leave("g", vec![(b, None)], t0).unwrap();
    assert!(out.store.is_none());
    assert_eq!(c.groups.borrow()["g"].state, GroupState::PreparingRebalance);
}

#[test]
fn only_member_leaving_during_the_initial_delay_empties_the_group() {
    let c = GroupCoordinator::new(GroupConfig::default());
    let t0 = Instant::now();
    let a = now_result(join(&c, "", t0)).member_id;
    let mut rx = waited(join(&c, &a, t0));
    let out = c.leave("g", vec![(a, None)], t0).unwrap();
    assert!(out.store.is_some());
    assert_eq!(c.groups.borrow()["g"].state, GroupState::Empty);
    // Its pending JoinGroup is answered.
    assert_eq!(
        rx.try_recv().unwrap().unwrap().error,
        Some(ResponseError::UnknownMemberId)
    );
}

#[test]
fn last_member_expiring_empties_the_group_and_yields_its_record() {
    let c = GroupCoordinator::new(GroupConfig::default());
    let t0 = Instant::now();
    stable_one(&c, t0);
    assert!(c.tick(t0 + Duration::from_secs(5)).is_empty());
    let stores = c.tick(t0 + Duration::from_secs(11));
    assert_eq!(stores.len(), 1);
    assert_eq!(stores[0].0, "g");
    assert!(stores[0].1.members.is_empty());
    assert_eq!(c.groups.borrow()["g"].state, GroupState::Empty);
    // Only once.
    assert!(c.tick(t0 + Duration::from_secs(12)).is_empty());
}

#[test]
fn deleted_group_replays_as_gone() {
    let c = GroupCoordinator::new(GroupConfig::default());
    let t0 = Instant::now();
    let committed = Some(OffsetValue {
        offset: 3,
        leader_epoch: 0,
        metadata: String::new(),
        commit_timestamp: 1,
    });
    c.apply_offset("g", "t", 0, committed.clone());
    c.apply_group(
        "g",
        Some(GroupValue {
            protocol_type: "consumer".into(),
            generation: 2,
            protocol: None,
            leader: None,
            current_state_timestamp: 0,
            members: vec![],
        }),
        t0,
    );
    // DeleteGroups: the offsets' tombstones, then the group's.
    c.apply_offset("g", "t", 0, None);
    c.apply_group("g", None, t0);
    assert!(!c.groups.borrow().contains_key("g"));
    // A tombstone alone creates nothing.
    c.apply_offset("other", "t", 0, None);
    c.apply_group("other", None, t0);
    assert!(c.groups.borrow().is_empty());
    // Offsets committed after the delete keep a fresh Empty group.
    c.apply_offset("g", "t", 0, committed.clone());
    c.apply_group("g", None, t0);
    assert_eq!(c.groups.borrow()["g"].generation, 0);
    // A simple-commit group goes with its last offset.
    c.apply_offset("g", "t", 0, None);
    assert!(!c.groups.borrow().contains_key("g"));
}
