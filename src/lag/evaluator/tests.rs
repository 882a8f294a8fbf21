use super::*;

const SEC: i64 = 1_000;

fn limits(window_samples: usize) -> LagConfig {
    LagConfig {
        window_samples,
        ..LagConfig::default()
    }
}

fn owner() -> Option<Owner> {
    Some(Owner {
        client_host: "/10.0.0.7".into(),
        client_id: "rdkafka".into(),
    })
}

fn obs(partition: i32, committed: i64, log_end: i64, owned: bool) -> Observation {
    Observation {
        topic: "orders".into(),
        partition,
        committed_offset: committed,
        log_end_offset: log_end,
        owner: if owned { owner() } else { None },
    }
}

/// Feeds `(committed, log_end)` pairs to partition 0 of group "g", one a
/// second from t = 0; returns the time of the last sample.
fn feed(ev: &mut LagEvaluator, pairs: &[(i64, i64)], owned: bool) -> i64 {
    let mut t = 0;
    for (i, (c, e)) in pairs.iter().enumerate() {
        t = i as i64 * SEC;
        ev.observe_group("g", &[obs(0, *c, *e, owned)], t).unwrap();
    }
    t
}

fn status_at(ev: &LagEvaluator, now_ms: i64) -> (Status, Status) {
    let g = ev.evaluate("local", "g", now_ms).unwrap();
    (g.status, g.partitions[0].status)
}

#[test]
fn zero_lag_anywhere_in_the_window_is_ok() {
    let mut ev = LagEvaluator::new(limits(5));
    // Stuck offsets and growing lag, but the consumer was caught up once.
    let t = feed(&mut ev, &[(10, 10), (10, 20), (10, 30), (10, 40)], true);
    assert_eq!(status_at(&ev, t), (Status::Ok, Status::Ok));
    // Once the caught-up sample leaves the window, the stall shows.
    let mut ev = LagEvaluator::new(limits(3));
    let t = feed(&mut ev, &[(10, 10), (10, 20), (10, 30), (10, 40)], true);
    assert_eq!(status_at(&ev, t), (Status::Err, Status::Stall));
}

#[test]
fn current_lag_zero_is_ok_whatever_came_before() {
    let mut ev = LagEvaluator::new(limits(5));
    let t = feed(&mut ev, &[(10, 20), (9, 20), (9, 30), (30, 30)], false);
    assert_eq!(status_at(&ev, t + 60 * SEC), (Status::Ok, Status::Ok));
}

#[test]
fn a_consumer_keeping_up_is_ok() {
    let mut ev = LagEvaluator::new(limits(5));
    // Lag goes up and down while offsets move: it decreases somewhere.
    let t = feed(
        &mut ev,
        &[(0, 50), (40, 100), (90, 120), (110, 180), (170, 190)],
        true,
    );
    assert_eq!(status_at(&ev, t), (Status::Ok, Status::Ok));
}

#[test]
fn offsets_moving_with_lag_never_decreasing_is_warn() {
    let mut ev = LagEvaluator::new(limits(5));
    let t = feed(
        &mut ev,
        &[(0, 50), (10, 70), (20, 80), (30, 90), (40, 110)],
        true,
    );
    assert_eq!(status_at(&ev, t), (Status::Warn, Status::Warn));
    // Equal lag counts as not decreasing.
    let mut ev = LagEvaluator::new(limits(3));
    let t = feed(&mut ev, &[(0, 50), (10, 60), (20, 70)], true);
    assert_eq!(status_at(&ev, t), (Status::Warn, Status::Warn));
}

#[test]
fn committed_offset_going_back_is_rewind() {
    let mut ev = LagEvaluator::new(limits(5));
    let t = feed(&mut ev, &[(50, 100), (60, 110), (20, 120), (30, 130)], true);
    let g = ev.evaluate("local", "g", t).unwrap();
    assert_eq!(
        (g.status, g.partitions[0].status),
        (Status::Err, Status::Rewind)
    );
    // Rewind wins over stop: it is checked first.
    assert_eq!(
        partition_status(&ev_samples(&ev), false, t + 3_600 * SEC),
        Status::Rewind
    );
}

fn ev_samples(ev: &LagEvaluator) -> Vec<Sample> {
    ev.groups["g"].partitions[&("orders".to_string(), 0)]
        .samples
        .iter()
        .copied()
        .collect()
}

#[test]
fn no_owner_and_no_commit_for_longer_than_the_window_span_is_stop() {
    let mut ev = LagEvaluator::new(limits(10));
    // Commits seen at 0, 1, 2, 3 s (a 3 s span), then the consumer is gone:
    // the offset stays at 30 while the log grows.
    let pairs = [(0, 20), (10, 30), (20, 40), (30, 50), (30, 60), (30, 70)];
    let t = feed(&mut ev, &pairs, false);
    assert_eq!(t, 5 * SEC);
    // Silent for 2 s, then 3 s: not longer than the 3 s it committed.
    assert_eq!(status_at(&ev, t), (Status::Warn, Status::Warn));
    assert_eq!(status_at(&ev, 6 * SEC).1, Status::Warn);
    // Past that, the consumer has been silent longer than it committed.
    assert_eq!(status_at(&ev, 6 * SEC + 1), (Status::Err, Status::Stop));
}

#[test]
fn a_live_owner_committing_the_same_offset_is_stall_not_stop() {
    let mut ev = LagEvaluator::new(limits(4));
    let t = feed(&mut ev, &[(30, 40), (30, 50), (30, 60), (30, 70)], true);
    assert_eq!(
        status_at(&ev, t + 3_600 * SEC),
        (Status::Err, Status::Stall)
    );
    // The same window without an owner is a stop.
    let mut ev = LagEvaluator::new(limits(4));
    let t = feed(&mut ev, &[(30, 40), (30, 50), (30, 60), (30, 70)], false);
    assert_eq!(status_at(&ev, t), (Status::Err, Status::Stop));
}

#[test]
fn a_partially_stuck_window_with_an_owner_warns_before_it_stalls() {
    let mut ev = LagEvaluator::new(limits(4));
    let t = feed(&mut ev, &[(10, 40), (20, 50), (20, 60), (20, 70)], true);
    assert_eq!(status_at(&ev, t).1, Status::Warn);
    ev.observe_group("g", &[obs(0, 20, 80, true)], t + SEC)
        .unwrap();
    assert_eq!(status_at(&ev, t + SEC).1, Status::Stall);
}

#[test]
fn one_sample_is_ok_and_incomplete() {
    let mut ev = LagEvaluator::new(limits(10));
    ev.observe_group("g", &[obs(0, 5, 500, false)], 0).unwrap();
    let g = ev.evaluate("local", "g", 3_600 * SEC).unwrap();
    assert_eq!(g.status, Status::Ok);
    assert_eq!(g.partitions[0].complete, 0.1);
    assert_eq!(g.complete, 0.0);
    assert_eq!(g.partitions[0].current_lag, 495);
}

#[test]
fn the_window_slides_and_recovery_is_ok() {
    let mut ev = LagEvaluator::new(limits(3));
    let t = feed(&mut ev, &[(0, 10), (0, 20), (0, 30)], false);
    assert_eq!(status_at(&ev, t).1, Status::Stop);
    ev.observe_group("g", &[obs(0, 30, 30, true)], t + SEC)
        .unwrap();
    assert_eq!(status_at(&ev, t + SEC), (Status::Ok, Status::Ok));
    let p = &ev.evaluate("local", "g", t + SEC).unwrap().partitions[0];
    assert_eq!(p.start.unwrap().observed_at_ms, SEC);
    assert_eq!(p.end.unwrap().committed_offset, 30);
    assert_eq!(p.end.unwrap().commit_timestamp_ms, t + SEC);
    assert_eq!(p.complete, 1.0);
}

#[test]
fn commit_time_is_when_the_offset_was_first_seen() {
    let mut ev = LagEvaluator::new(limits(5));
    feed(&mut ev, &[(1, 9), (1, 9), (2, 9), (2, 9)], true);
    let s = ev_samples(&ev);
    let ts: Vec<_> = s.iter().map(|s| s.commit_timestamp_ms).collect();
    assert_eq!(ts, vec![0, 0, 2 * SEC, 2 * SEC]);
    let lags: Vec<_> = s.iter().map(|s| s.lag).collect();
    assert_eq!(lags, vec![8, 8, 7, 7]);
}

#[test]
fn group_status_is_the_worst_partition_capped_at_err_with_maxlag_and_totallag() {
    let mut ev = LagEvaluator::new(limits(2));
    for (i, t) in [0, SEC].into_iter().enumerate() {
        let i = i as i64;
        ev.observe_group(
            "g",
            &[
                obs(0, 10 + 10 * i, 20 + 30 * i, true), // lag 10 -> 30: WARN
                obs(1, 5, 5, true),                     // caught up: OK
                obs(2, 7, 100, false),                  // stuck, no owner: STOP
            ],
            t,
        )
        .unwrap();
    }
    let g = ev.evaluate("local", "g", 5 * SEC).unwrap();
    let statuses: Vec<_> = g.partitions.iter().map(|p| p.status).collect();
    assert_eq!(statuses, vec![Status::Warn, Status::Ok, Status::Stop]);
    assert_eq!(g.status, Status::Err);
    assert_eq!(g.partition_count, 3);
    assert_eq!(g.totallag, 30 + 93);
    assert_eq!(g.maxlag.as_ref().unwrap().partition, 2);
    assert_eq!(g.complete, 1.0);
    assert_eq!(g.partitions[0].owner, "/10.0.0.7");
    assert_eq!(g.partitions[2].owner, "");
}

#[test]
fn maxlag_ties_go_to_the_first_partition() {
    let mut ev = LagEvaluator::new(limits(2));
    ev.observe_group("g", &[obs(0, 0, 5, true), obs(1, 0, 5, true)], 0)
        .unwrap();
    let g = ev.evaluate("local", "g", 0).unwrap();
    assert_eq!(g.maxlag.unwrap().partition, 0);
    assert_eq!(g.complete, 0.0);
}

#[test]
fn partitions_and_groups_no_longer_seen_are_forgotten() {
    let mut ev = LagEvaluator::new(limits(3));
    ev.observe_group("g", &[obs(0, 0, 5, true), obs(1, 0, 5, true)], 0)
        .unwrap();
    ev.observe_group("h", &[obs(0, 0, 5, true)], 0).unwrap();
    ev.observe_group("g", &[obs(1, 1, 5, true)], SEC).unwrap();
    let g = ev.evaluate("local", "g", SEC).unwrap();
    assert_eq!(g.partitions.len(), 1);
    assert_eq!(ev.partition_count, 2);
    ev.retain_groups(|g| g != "h");
    assert_eq!(ev.groups().collect::<Vec<_>>(), vec!["g"]);
    assert_eq!(ev.partition_count, 1);
    assert!(ev.evaluate("local", "h", SEC).is_none());
}

#[test]
fn groups_and_partitions_are_bounded() {
    let mut ev = LagEvaluator::new(LagConfig {
        max_groups: 2,
        max_partitions: 3,
        ..LagConfig::default()
    });
    ev.observe_group("a", &[obs(0, 0, 1, true), obs(1, 0, 1, true)], 0)
        .unwrap();
    ev.observe_group("b", &[obs(0, 0, 1, true)], 0).unwrap();
    assert_eq!(
        ev.observe_group("c", &[obs(0, 0, 1, true)], 0),
        Err(LagError::TooManyGroups {
            group: "c".into(),
            limit: 2
        })
    );
    // "b" may not grow past the partition limit; what fits is kept.
    let err = ev.observe_group("b", &[obs(0, 0, 1, true), obs(1, 0, 1, true)], SEC);
    assert!(matches!(err, Err(LagError::TooManyPartitions { .. })));
    assert_eq!(ev.evaluate("local", "b", SEC).unwrap().partition_count, 1);
    // Dropping a group frees its room.
    ev.retain_groups(|g| g == "b");
    ev.observe_group("c", &[obs(0, 0, 1, true), obs(1, 0, 1, true)], SEC)
        .unwrap();
    assert_eq!(ev.partition_count, 3);
}

#[test]
fn statuses_serialize_as_burrow_words() {
    let words: Vec<String> = [
        Status::NotFound,
        Status::Ok,
        Status::Warn,
        Status::Err,
        Status::Stop,
        Status::Stall,
        Status::Rewind,
    ]
    .iter()
    .map(|s| {
        let json = serde_json::to_string(s).unwrap();
        assert_eq!(json, format!("\"{}\"", s.name()));
        s.name().to_string()
    })
    .collect();
    assert_eq!(
        words,
        ["NOTFOUND", "OK", "WARN", "ERR", "STOP", "STALL", "REWIND"]
    );
}
