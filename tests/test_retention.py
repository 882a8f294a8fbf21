"""Retention (cleanup.policy=delete) with the real binary, set live with
Kafka 4.1's kafka-configs: time retention, size retention, segment.ms
rolling an idle segment so time retention reaches it, the log start offset
moving (ListOffsets earliest, OFFSET_OUT_OF_RANGE below it) and the disk
reclaimed."""

import time

from confluent_kafka import Consumer, Producer, TopicPartition

from conftest import create_topic, first_consume_error
from test_kafka_tools import tool

CONFIG_COMMAND = "kafka.admin.ConfigCommand"
BROKER_CONFIG = "segment_bytes = 65536\nretention_check_interval_ms = 300\n"


def alter(bootstrap, topic, configs):
    tool(CONFIG_COMMAND, "--bootstrap-server", bootstrap, "--entity-type", "topics",
         "--entity-name", topic, "--alter", "--add-config", configs)


def watermarks(bootstrap, topic):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "wm"})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    finally:
        c.close()


def produce(bootstrap, topic, n, timestamp=None):
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.size": 8192})
    for i in range(n):
        kwargs = {"timestamp": timestamp} if timestamp else {}
        p.produce(topic, value=f"{i:06d}".encode() * 20, **kwargs)
    assert p.flush(30) == 0


def log_bytes(data_dir, topic):
    return sum(f.stat().st_size for f in (data_dir / f"{topic}-0").iterdir() if f.suffix == ".log")


def wait_for(predicate, what, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_time_retention_set_live_deletes_old_segments(broker_factory):
    b = broker_factory(config=BROKER_CONFIG)
    create_topic(b.bootstrap, "aged", 1)
    hour_ago = int(time.time() * 1000) - 3_600_000
    produce(b.bootstrap, "aged", 3000, timestamp=hour_ago)
    produce(b.bootstrap, "aged", 10)  # a fresh tail stays
    low, high = watermarks(b.bootstrap, "aged")
    assert (low, high) == (0, 3010)
    before = log_bytes(b.data_dir, "aged")
    alter(b.bootstrap, "aged", "retention.ms=60000,file.delete.delay.ms=0")
    wait_for(lambda: watermarks(b.bootstrap, "aged")[0] > 0, "the log start to move")
    low, high = watermarks(b.bootstrap, "aged")
    assert 0 < low <= 3000 and high == 3010
    wait_for(lambda: log_bytes(b.data_dir, "aged") < before / 2, "disk to be reclaimed")
    assert not list((b.data_dir / "aged-0").glob("*.deleted"))
    # Below the log start: OFFSET_OUT_OF_RANGE (the consumer reports it).
    err = first_consume_error(b.bootstrap, "aged", 0, 0)
    assert err is not None and "out of range" in err.str().lower(), err
    # The start survives a restart.
    b.restart()
    assert watermarks(b.bootstrap, "aged") == (low, high)


def test_size_retention_and_segment_ms(broker_factory):
    b = broker_factory(config=BROKER_CONFIG)
    create_topic(b.bootstrap, "sized", 1)
    produce(b.bootstrap, "sized", 6000)
    assert log_bytes(b.data_dir, "sized") > 600_000
    alter(b.bootstrap, "sized", "retention.bytes=200000,file.delete.delay.ms=0")
    # Within retention.bytes plus one segment (the active file ends on a page).
    wait_for(lambda: log_bytes(b.data_dir, "sized") <= 200_000 + 65536 + 4096, "size retention")
    low, high = watermarks(b.bootstrap, "sized")
    assert low > 0 and high == 6000

    # An idle active segment rolls after segment.ms, then expires by time.
    create_topic(b.bootstrap, "idle", 1)
    produce(b.bootstrap, "idle", 50)
    alter(b.bootstrap, "idle", "segment.ms=500,retention.ms=1000,file.delete.delay.ms=0")
    wait_for(lambda: watermarks(b.bootstrap, "idle") == (50, 50), "the idle segment to roll and expire")
