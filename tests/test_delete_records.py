"""DeleteRecords with the real binary: Kafka 4.1's kafka-delete-records and
the AdminClient move the log start offset, the low watermark comes back,
reads below it answer OFFSET_OUT_OF_RANGE, whole segments below it are
deleted, and a follower's log start follows the leader's."""

import json

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from conftest import create_topic, first_consume_error
from test_kafka_tools import tool


def produce(bootstrap, topic, n):
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.size": 8192})
    for i in range(n):
        p.produce(topic, value=f"{i:06d}".encode() * 20)
    assert p.flush(30) == 0


def watermarks(bootstrap, topic, partition=0):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "wm"})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
    finally:
        c.close()


def test_delete_records_with_kafka_tool_and_admin_client(broker_factory, tmp_path):
    b = broker_factory(config="segment_bytes = 65536\n")
    create_topic(b.bootstrap, "purge", 1)
    produce(b.bootstrap, "purge", 3000)
    segments = len(list((b.data_dir / "purge-0").glob("*.log")))
    assert segments > 3

    spec = tmp_path / "offsets.json"
    spec.write_text(json.dumps({"version": 1, "partitions": [
        {"topic": "purge", "partition": 0, "offset": 1500}]}))
    out = tool("org.apache.kafka.tools.DeleteRecordsCommand", "--bootstrap-server", b.bootstrap,
               "--offset-json-file", str(spec))
    assert "low_watermark: 1500" in out, out
    assert watermarks(b.bootstrap, "purge") == (1500, 3000)
    assert len(list((b.data_dir / "purge-0").glob("*.log"))) < segments, "segments below deleted"

    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    res = admin.delete_records([TopicPartition("purge", 0, 2000)])
    deleted = list(res.values())[0].result(10)
    assert deleted.low_watermark == 2000
    # Past the high watermark: OFFSET_OUT_OF_RANGE; -1 means the high watermark.
    with pytest.raises(KafkaException) as e:
        list(admin.delete_records([TopicPartition("purge", 0, 5000)]).values())[0].result(10)
    assert "OFFSET_OUT_OF_RANGE" in str(e.value)
    everything = list(admin.delete_records([TopicPartition("purge", 0, -1)]).values())[0].result(10)
    assert everything.low_watermark == 3000
    assert watermarks(b.bootstrap, "purge") == (3000, 3000)

    produce(b.bootstrap, "purge", 10)
    err = first_consume_error(b.bootstrap, "purge", 0, 0)
    assert err is not None and "out of range" in err.str().lower(), err


def test_followers_follow_the_leaders_log_start(cluster_factory):
    cluster = cluster_factory(config="segment_bytes = 65536\n")
    cluster.create_topic("purged", partitions=1, replication_factor=3)
    produce(cluster.bootstrap, "purged", 3000)
    leader = cluster.leaders("purged")[0]
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    low = list(admin.delete_records([TopicPartition("purged", 0, 2500)]).values())[0].result(15)
    assert low.low_watermark == 2500

    def followers_trimmed():
        for node_id, node in cluster.nodes.items():
            if node_id == leader:
                continue
            logs = sorted((node.data_dir / "purged-0").glob("*.log"))
            if not logs or int(logs[0].stem) > 2500 or len(logs) > 2:
                return False
        return True
    # The answer waited for every replica's log start (Kafka's low
    # watermark): the followers have already dropped those segments.
    assert followers_trimmed(), "followers drop the segments below the leader's log start"
