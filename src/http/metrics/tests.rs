use super::*;
use crate::http::gather::{ClusterView, GroupView, PartitionView};
use crate::metrics::{ApiSnapshot, IoOp, IoSnapshot, Snapshot, TopicSnapshot};

fn histogram(count: u64) -> HistogramSnapshot {
    let mut counts = vec![0; crate::metrics::LATENCY_BUCKETS_SECONDS.len() + 1];
    counts[3] = count;
    HistogramSnapshot {
        counts,
        count,
        sum_seconds: 0.0001 * count as f64,
    }
}

fn partition(topic: &str, partition: i32, leader: bool, hw: i64) -> PartitionView {
    PartitionView {
        topic: topic.into(),
        partition,
        leader,
        log_end_offset: hw + 5,
        high_watermark: hw,
        log_start_offset: 0,
        size_bytes: 4096,
        replicas: 3,
        in_sync_replicas: 2,
        follower_lags: if leader { vec![(2, 5)] } else { vec![] },
    }
}

fn gathered() -> Gathered {
    let counters = Snapshot {
        apis: vec![ApiSnapshot {
            api_key: 0,
            requests: 7,
            seconds: histogram(7),
        }],
        errors: vec![(0, 6, 2)],
        connections_accepted: 3,
        connections_closed: 1,
        io: vec![IoSnapshot {
            op: IoOp::Fsync,
            bytes: 0,
            in_flight: 1,
            seconds: histogram(4),
        }],
        topics: vec![(
            "t".into(),
            TopicSnapshot {
                bytes_in: 100,
                bytes_out: 50,
                produce_batches: 2,
                produce_records: 10,
            },
        )],
        ..Default::default()
    };
    Gathered {
        shards: vec![ShardView {
            shard: 1,
            counters,
            partitions: vec![partition("t", 0, true, 40), partition("t", 1, false, 8)],
            groups: vec![GroupView {
                group: "g".into(),
                state: "Stable",
                members: 2,
                offsets: vec![("t".into(), 0, 30), ("t".into(), 1, 9), ("u".into(), 0, 1)],
            }],
            ..Default::default()
        }],
        cluster: ClusterView {
            active_controller: true,
            offline_partitions: 0,
            ..Default::default()
        },
    }
}

#[test]
fn a_scrape_is_prometheus_text_with_the_gathered_values() {
    let text = encode(families(&gathered())).unwrap();
    for line in [
        "# TYPE ringtail_requests_total counter",
        "ringtail_requests_total{shard=\"1\",api=\"Produce\"} 7",
        "ringtail_request_errors_total{shard=\"1\",api=\"Produce\",error=\"NOT_LEADER_OR_FOLLOWER\"} 2",
        "# TYPE ringtail_request_duration_seconds histogram",
        "ringtail_request_duration_seconds_bucket{shard=\"1\",api=\"Produce\",le=\"0.0001\"} 7",
        "ringtail_request_duration_seconds_count{shard=\"1\",api=\"Produce\"} 7",
        "ringtail_connections_open{shard=\"1\"} 2",
        "ringtail_fsync_duration_seconds_count{shard=\"1\"} 4",
        "ringtail_io_uring_in_flight{shard=\"1\",op=\"fsync\"} 1",
        "ringtail_topic_bytes_in_total{shard=\"1\",topic=\"t\"} 100",
        "ringtail_produce_records_total{shard=\"1\",topic=\"t\"} 10",
        "ringtail_partition_high_watermark{topic=\"t\",partition=\"0\"} 40",
        "ringtail_follower_lag_messages{topic=\"t\",partition=\"0\",replica=\"2\"} 5",
        "ringtail_under_replicated_partitions{shard=\"1\"} 1",
        "ringtail_active_controller 1",
        "ringtail_consumer_group_state{group=\"g\",state=\"Stable\"} 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(!text.contains("# EOF"), "Prometheus text, not OpenMetrics");
}

#[test]
fn group_lag_uses_the_leader_high_watermark_and_skips_partitions_not_here() {
    let text = encode(families(&gathered())).unwrap();
    let lag = |p: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("ringtail_consumer_group_lag_messages{{{p}}}")))
            .map(|l| l.rsplit(' ').next().unwrap().to_string())
    };
    assert_eq!(
        lag("group=\"g\",topic=\"t\",partition=\"0\"").as_deref(),
        Some("10")
    );
    // Committed past a follower's high watermark: never negative.
    assert_eq!(
        lag("group=\"g\",topic=\"t\",partition=\"1\"").as_deref(),
        Some("0")
    );
    assert_eq!(lag("group=\"g\",topic=\"u\",partition=\"0\""), None);
}

#[test]
fn error_names_are_kafkas() {
    assert_eq!(error_name(6), "NOT_LEADER_OR_FOLLOWER");
    assert_eq!(error_name(3), "UNKNOWN_TOPIC_OR_PARTITION");
    assert_eq!(error_name(-999), "-999");
    assert_eq!(api_name(1), "Fetch");
}
