"""Produce and consume with real clients: content, order, keys, headers,
nulls, compression codecs, large values, offsets by time."""

import subprocess
import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, NewTopic

from conftest import consume_all, create_topic


def produce(bootstrap, topic, records, **conf):
    """records: (key, value, headers, partition) tuples; returns delivery reports."""
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, **conf})
    reports = []

    def on_delivery(err, msg):
        assert err is None, err
        reports.append((msg.partition(), msg.offset(), msg.key(), msg.value()))

    for key, value, headers, partition in records:
        kwargs = {"key": key, "value": value, "headers": headers, "on_delivery": on_delivery}
        if partition is not None:
            kwargs["partition"] = partition
        p.produce(topic, **kwargs)
        p.poll(0)
    assert p.flush(30) == 0
    return reports


def test_topic_create_list_describe_delete(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    create_topic(broker.bootstrap, "alpha", 3, {"segment.bytes": "1048576"})
    create_topic(broker.bootstrap, "beta", 1)
    topics = admin.list_topics(timeout=10).topics
    assert {"alpha", "beta"} <= set(topics)
    assert len(topics["alpha"].partitions) == 3
    # Creating it again fails with TOPIC_ALREADY_EXISTS.
    with pytest.raises(KafkaException) as e:
        admin.create_topics([NewTopic("alpha", 1, 1)])["alpha"].result(10)
    assert e.value.args[0].code() == 36
    with pytest.raises(KafkaException):
        admin.create_topics([NewTopic("bad name!", 1, 1)])["bad name!"].result(10)
    admin.create_partitions([NewPartitions("beta", 4)])["beta"].result(10)
    assert len(admin.list_topics("beta", timeout=10).topics["beta"].partitions) == 4
    configs = admin.describe_configs([ConfigResource("topic", "alpha")])
    described = list(configs.values())[0].result(10)
    assert described["segment.bytes"].value == "1048576"
    assert described["cleanup.policy"].value == "delete"
    admin.delete_topics(["beta"])["beta"].result(10)
    deadline = time.time() + 10
    while "beta" in admin.list_topics(timeout=10).topics and time.time() < deadline:
        time.sleep(0.1)
    assert "beta" not in admin.list_topics(timeout=10).topics
    assert not (broker.data_dir / "beta-0").exists()


def test_auto_create_on_produce_metadata(broker):
    reports = produce(broker.bootstrap, "auto-created", [(b"k", b"v", None, None)])
    assert reports == [(0, 0, b"k", b"v")]
    assert (broker.data_dir / "auto-created-0").is_dir()


def test_auto_create_can_be_disabled(broker_factory):
    b = broker_factory(config="auto_create_topics = false\n")
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "g"})
    md = c.list_topics("never-made", timeout=10)
    assert md.topics["never-made"].error is not None
    c.close()
    assert not (b.data_dir / "never-made-0").exists()


def test_keyed_records_keep_content_and_order(broker):
    create_topic(broker.bootstrap, "orders", 4)
    records = []
    for i in range(4000):
        key = None if i % 97 == 0 else f"customer-{i % 13}".encode()
        value = None if i % 101 == 0 else f"order-{i}".encode()
        headers = [("seq", str(i).encode()), ("empty", b"")] if i % 3 else None
        records.append((key, value, headers, i % 4 if key is None else None))
    reports = produce(broker.bootstrap, "orders", records)
    assert len(reports) == 4000
    got = consume_all(broker.bootstrap, "orders", 4, 4000)
    assert len(got) == 4000
    by_partition = {}
    for m in got:
        by_partition.setdefault(m.partition(), []).append(m)
    expected_by_partition = {}
    for (partition, offset, key, value) in reports:
        expected_by_partition.setdefault(partition, []).append((offset, key, value))
    for partition, msgs in by_partition.items():
        expected = sorted(expected_by_partition[partition])
        assert [(m.offset(), m.key(), m.value()) for m in msgs] == expected
    # Same key, same partition, in produce order.
    seen = {}
    for m in got:
        if m.key() is not None:
            seen.setdefault(m.key(), set()).add(m.partition())
    assert all(len(p) == 1 for p in seen.values())
    headers = {m.value(): m.headers() for m in got if m.value() is not None}
    assert headers[b"order-1"] == [("seq", b"1"), ("empty", b"")]
    assert headers[b"order-3"] is None


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_batches(broker, codec):
    create_topic(broker.bootstrap, "codec", 2)
    records = [(f"k{i}".encode(), (f"{codec}-value-{i}-" * 20).encode(), [("c", codec.encode())], None)
               for i in range(3000)]
    produce(broker.bootstrap, "codec", records, **{"compression.type": codec, "linger.ms": 20})
    got = consume_all(broker.bootstrap, "codec", 2, 3000)
    assert sorted(m.value() for m in got) == sorted(r[1] for r in records)
    assert all(m.headers() == [("c", codec.encode())] for m in got)


def test_one_mib_values(broker):
    create_topic(broker.bootstrap, "big", 1)
    values = [bytes([i]) * (1 << 20) for i in range(6)]
    produce(broker.bootstrap, "big", [(None, v, None, None) for v in values],
            **{"message.max.bytes": 2 << 20, "batch.size": 2 << 20})
    got = consume_all(broker.bootstrap, "big", 1, 6, extra={"fetch.max.bytes": 8 << 20})
    assert [m.value() for m in got] == values


def test_offsets_by_timestamp_and_watermarks(broker):
    create_topic(broker.bootstrap, "timed", 1)
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})
    base = 1_700_000_000_000
    for i in range(50):
        p.produce("timed", value=str(i).encode(), timestamp=base + i * 1000)
        p.flush(10)  # one batch per record: lookups must reach inside batches too
    for i in range(50, 100):
        p.produce("timed", value=str(i).encode(), timestamp=base + i * 1000)
    p.flush(10)
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "t"})
    assert c.get_watermark_offsets(TopicPartition("timed", 0), timeout=10) == (0, 100)
    for target, expected in [(base, 0), (base + 10_500, 11), (base + 75_000, 75), (base + 99_000, 99)]:
        [tp] = c.offsets_for_times([TopicPartition("timed", 0, target)], timeout=10)
        assert tp.offset == expected, (target, tp)
    [tp] = c.offsets_for_times([TopicPartition("timed", 0, base + 500_000)], timeout=10)
    assert tp.offset == -1
    c.close()


def test_kafka_python_client(broker):
    from kafka import KafkaConsumer, KafkaProducer
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    sent = []
    for i in range(200):
        key = None if i == 7 else f"k{i}".encode()
        value = None if i == 8 else f"v{i}".encode()
        md = producer.send("kp", key=key, value=value, headers=[("h", b"x")]).get(timeout=10)
        sent.append((md.offset, key, value))
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, consumer_timeout_ms=5000)
    consumer.assign([TopicPartition_kp()])
    consumer.seek_to_beginning()
    got = [(m.offset, m.key, m.value, m.headers) for m in consumer]
    consumer.close()
    assert [(o, k, v) for o, k, v, _ in got] == sent
    assert all(h == [("h", b"x")] for *_, h in got)


def TopicPartition_kp():
    from kafka import TopicPartition as KTP
    return KTP("kp", 0)


def test_kcat_round_trip(broker):
    lines = "".join(f"key{i}:value {i}\n" for i in range(100))
    subprocess.run(["kcat", "-b", broker.bootstrap, "-P", "-t", "kc", "-K:"], input=lines.encode(),
                   check=True, timeout=30)
    out = subprocess.run(["kcat", "-b", broker.bootstrap, "-C", "-t", "kc", "-e", "-f", "%k|%s|%o\n"],
                         capture_output=True, check=True, timeout=30).stdout.decode()
    assert out.splitlines() == [f"key{i}|value {i}|{i}" for i in range(100)]
    listing = subprocess.run(["kcat", "-b", broker.bootstrap, "-L"], capture_output=True, check=True,
                             timeout=30).stdout.decode()
    assert 'topic "kc" with 1 partitions' in listing


@pytest.mark.parametrize("acks", ["0", "1", "all"])
def test_every_acks_setting_stores_records(broker, acks):
    create_topic(broker.bootstrap, "acks", 1)
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": acks, "linger.ms": 2})
    for i in range(500):
        p.produce("acks", value=f"{acks}-{i}".encode())
    assert p.flush(20) == 0
    got = consume_all(broker.bootstrap, "acks", 1, 500)
    assert [m.value() for m in got] == [f"{acks}-{i}".encode() for i in range(500)]


def test_long_poll_wakes_on_append(broker):
    create_topic(broker.bootstrap, "poll", 1)
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "poller",
                  "fetch.wait.max.ms": 5000, "fetch.min.bytes": 1})
    c.assign([TopicPartition("poll", 0, 0)])
    assert c.poll(1.0) is None  # an empty partition: the fetch is parked
    time.sleep(0.5)
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})
    sent = time.time()
    p.produce("poll", value=b"wake")
    p.flush(5)
    m = None
    while m is None and time.time() - sent < 10:
        m = c.poll(0.1)
    waited = time.time() - sent
    c.close()
    assert m is not None and m.value() == b"wake"
    assert waited < 2.5, f"the parked fetch should answer on append, not after max_wait ({waited:.2f}s)"


def test_interval_flush_policy_serves_and_shuts_down_cleanly(broker_factory):
    b = broker_factory(config='flush_policy = "interval"\nflush_interval_ms = 200\n')
    produce(b.bootstrap, "lazy", [(None, f"x{i}".encode(), None, None) for i in range(300)])
    b.stop()
    b.start()
    got = consume_all(b.bootstrap, "lazy", 1, 300)
    assert [m.value() for m in got] == [f"x{i}".encode() for i in range(300)]


def test_slow_reader_gets_large_fetch_responses_intact(broker_factory):
    # Responses of many large batches are written from the cached batches by
    # reference; a consumer with a tiny receive buffer that stalls between
    # polls makes the broker's socket fill, so every write resumes mid-part.
    # Read back from the cache and, with a cache too small to hold them, from
    # the device.
    for cache in (None, 1 << 20):
        config = "" if cache is None else f"batch_cache_bytes = {cache}\n"
        b = broker_factory(config=config)
        create_topic(b.bootstrap, "bulk", 2)
        p = Producer({"bootstrap.servers": b.bootstrap, "linger.ms": 50, "batch.size": 1 << 20,
                      "compression.type": "none"})
        n = 1200
        for i in range(n):
            p.produce("bulk", value=(b"%06d" % i) * 1700, partition=i % 2)
        assert p.flush(30) == 0
        c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "slow", "enable.auto.commit": False,
                      "socket.receive.buffer.bytes": 4096, "fetch.max.bytes": 32 << 20,
                      "max.partition.fetch.bytes": 16 << 20, "receive.message.max.bytes": 64 << 20})
        c.assign([TopicPartition("bulk", 0, 0), TopicPartition("bulk", 1, 0)])
        seen = set()
        deadline = time.time() + 60
        while len(seen) < n and time.time() < deadline:
            time.sleep(0.2)
            for m in c.consume(500, 1.0):
                assert m.error() is None, m.error()
                i = int(m.value()[:6])
                assert m.value() == (b"%06d" % i) * 1700
                assert m.partition() == i % 2
                seen.add(i)
        c.close()
        assert len(seen) == n


def test_write_round_delay_gathers_rounds_and_keeps_acks_durable(broker_factory):
    # Rounds wait 20 ms to gather appends; every acknowledged record is still
    # synced before its ack (kill -9 loses none of them).
    b = broker_factory(config="write_round_delay_us = 20000\nwrite_round_bytes = 1048576\n")
    create_topic(b.bootstrap, "gathered", 3)
    reports = produce(b.bootstrap, "gathered", [(None, f"g{i}".encode(), None, i % 3) for i in range(600)])
    assert len(reports) == 600
    b.kill()
    b.start()
    got = consume_all(b.bootstrap, "gathered", 3, 600)
    assert sorted(m.value() for m in got) == sorted(f"g{i}".encode() for i in range(600))
