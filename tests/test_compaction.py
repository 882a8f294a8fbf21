"""Log compaction (cleanup.policy=compact, compact,delete) with the real
binary: keyed records with overwrites and tombstones, read back with a real
consumer (the last value per key at its original offset, offsets rising
with gaps, tombstones kept until delete.retention.ms and then gone),
Kafka 4.1's kafka-dump-log on the cleaned segments (same records, indexes
verified), compaction started on a live topic by kafka-configs --alter, both
policies together, and `__consumer_offsets` compacted so that a restarted
broker serves the committed offsets from the compacted log."""

import os
import re
import subprocess
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from conftest import consume_all, create_topic
from test_kafka_tools import LIB, tool

CONFIG_COMMAND = "kafka.admin.ConfigCommand"
BROKER_CONFIG = ("log_cleaner_backoff_ms = 200\nretention_check_interval_ms = 300\n"
                 "offsets_topic_partitions = 1\noffsets_topic_segment_bytes = 16384\n")
COMPACT = {"cleanup.policy": "compact", "segment.bytes": "16384",
           "min.cleanable.dirty.ratio": "0.01", "file.delete.delay.ms": "0"}


def produce(bootstrap, topic, records, timestamp=None, compression="none"):
    """Produces (key, value) pairs in order; returns {key: (offset, value)}
    of the last write of each key and every offset acknowledged."""
    last, offsets = {}, []

    def on_delivery(err, msg):
        assert err is None, err
        offsets.append(msg.offset())
        last[msg.key().decode()] = (msg.offset(), msg.value())
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.size": 2048,
                  "compression.type": compression})
    for k, v in records:
        kwargs = {"timestamp": timestamp} if timestamp else {}
        p.produce(topic, key=k.encode(), value=v, on_delivery=on_delivery, **kwargs)
        p.poll(0)
    assert p.flush(30) == 0
    return last, offsets


def read_back(bootstrap, topic, timeout=10):
    """Every record of partition 0 from the log start to its end."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    c.assign([TopicPartition(topic, 0, low)])
    out = []
    deadline = time.time() + timeout
    while (not out or out[-1].offset() < high - 1) and time.time() < deadline:
        for m in c.consume(500, 0.5):
            assert not m.error(), m.error()
            out.append(m)
    c.close()
    return [(m.offset(), m.key().decode(), m.value()) for m in out]


def sealed_bytes(data_dir, topic):
    """Bytes of the sealed segments (every .log file but the active one)."""
    return sum(f.stat().st_size for f in sorted((data_dir / f"{topic}-0").glob("*.log"))[:-1])


def keys_unique(records, prefix="k"):
    keys = [k for _, k, _ in records if k.startswith(prefix)]
    return len(keys) == len(set(keys))


def wait_for(predicate, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def dump(*args):
    out = subprocess.run(["java", "-cp", LIB, "kafka.tools.DumpLogSegments", *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Exception" not in out.stderr, out.stderr[-2000:]
    return out.stdout + out.stderr


def latest(records):
    """{key: (offset, value)} of each key's last record."""
    return {k: (o, v) for o, k, v in records}


def overwrites(keys, rounds, tag="v"):
    """`rounds` values for each of `keys` keys, hardly compressible."""
    return [(f"k{k:03d}", f"{tag}{r:03d}-{k:03d}-".encode() + os.urandom(40).hex().encode())
            for r in range(rounds) for k in range(keys)]


def test_compaction_keeps_the_last_value_per_key_and_drops_tombstones(broker_factory):
    b = broker_factory(config=BROKER_CONFIG)
    create_topic(b.bootstrap, "kv", 1, config=dict(COMPACT, **{"delete.retention.ms": "8000"}))
    # As in Kafka, a compacted topic refuses records without a key.
    errors = []
    p = Producer({"bootstrap.servers": b.bootstrap, "retries": 0})
    p.produce("kv", value=b"no key", on_delivery=lambda err, msg: errors.append(err))
    p.flush(10)
    assert errors and errors[0] is not None and errors[0].name() == "INVALID_RECORD", errors
    records = overwrites(60, 20)
    records += [(f"k{k:03d}", None) for k in range(10)]          # tombstones for k000..k009
    records += [(f"f{i:04d}", b"filler" * 30) for i in range(150)]  # roll past them
    last, offsets = produce(b.bootstrap, "kv", records)
    total = len(records)
    assert len(list((b.data_dir / "kv-0").glob("*.log"))) > 5
    wait_for(lambda: keys_unique(read_back(b.bootstrap, "kv")), "the log to be compacted")
    got = read_back(b.bootstrap, "kv")
    got_offsets = [o for o, _, _ in got]
    assert got_offsets == sorted(set(got_offsets)), "offsets rise"
    assert len(got) < total and got_offsets[-1] == total - 1, "gaps, same end"
    by_key = {}
    for o, k, v in got:
        assert k not in by_key or k.startswith("f"), f"{k} twice"
        by_key[k] = (o, v)
    # Every live key: exactly its last value at its original offset.
    for k, (o, v) in last.items():
        if v is not None:
            assert by_key.get(k) == (o, v), k
    # Tombstones: kept for delete.retention.ms after the pass that found them ...
    tombstones = {k for k, (o, v) in by_key.items() if v is None}
    assert tombstones == {f"k{k:03d}" for k in range(10)}, tombstones
    # ... then gone, with the values they deleted.
    wait_for(lambda: not any(v is None for _, _, v in read_back(b.bootstrap, "kv")),
             "the tombstones to be removed", timeout=40)
    got = read_back(b.bootstrap, "kv")
    assert {k for _, k, _ in got} == {k for k, (o, v) in last.items() if v is not None}

    # kafka-dump-log sees the same records in the cleaned segments, and
    # their indexes are what Kafka writes.
    logs = sorted((b.data_dir / "kv-0").glob("*.log"))
    out = dump("--print-data-log", "--files", ",".join(str(f) for f in logs))
    dumped = re.findall(r"\| offset: (\d+) .*?key: (\S+) payload: (\S*)", out)
    assert [int(o) for o, _, _ in dumped] == [o for o, _, _ in got]
    assert [k for _, k, _ in dumped] == [k for _, k, _ in got]
    sealed = logs[:-1]
    assert sealed
    indexes = [str(f.with_suffix(ext)) for f in sealed for ext in (".index", ".timeindex")]
    out = dump("--verify-index-only", "--files", ",".join(indexes))
    assert not re.search(r"Mismatches in|mismatch|out of order|Indexed offset", out, re.I), out[-3000:]
    assert not list((b.data_dir / "kv-0").glob("*.cleaned")) + list((b.data_dir / "kv-0").glob("*.swap"))

    # A restart reads the cleaned log and keeps the cleaner's place.
    b.restart()
    assert read_back(b.bootstrap, "kv") == got
    assert "kv 0 " in (b.data_dir / "cleaner-offset-checkpoint").read_text()


def test_compaction_set_live_and_with_delete(broker_factory):
    b = broker_factory(config=BROKER_CONFIG)
    # A delete-policy topic keeps every overwrite ...
    create_topic(b.bootstrap, "live", 1, config={"segment.bytes": "16384"})
    last, _ = produce(b.bootstrap, "live", overwrites(40, 15) + [("tail", b"t" * 500)] * 20)
    time.sleep(1)
    assert len(read_back(b.bootstrap, "live")) == 40 * 15 + 20
    # ... until kafka-configs switches it to compact.
    tool(CONFIG_COMMAND, "--bootstrap-server", b.bootstrap, "--entity-type", "topics",
         "--entity-name", "live", "--alter", "--add-config",
         "cleanup.policy=compact,min.cleanable.dirty.ratio=0.01,file.delete.delay.ms=0")
    wait_for(lambda: len(read_back(b.bootstrap, "live")) < 40 * 3, "the live topic to be compacted")
    assert latest(read_back(b.bootstrap, "live")) == last, "the newest value of every key stays"

    # compact,delete: retention removes the old segments, compaction the overwrites.
    create_topic(b.bootstrap, "both", 1, config=dict(
        COMPACT, **{"cleanup.policy": "compact,delete", "retention.ms": "600000"}))
    hour_ago = int(time.time() * 1000) - 3_600_000
    produce(b.bootstrap, "both", [(f"old{i:04d}", b"o" * 200) for i in range(400)], timestamp=hour_ago)
    last, _ = produce(b.bootstrap, "both", overwrites(30, 20) + [("tail", b"t" * 500)] * 30,
                      compression="lz4")
    wait_for(lambda: read_back(b.bootstrap, "both")[0][0] > 0, "retention to move the log start")
    wait_for(lambda: len(read_back(b.bootstrap, "both")) < 30 * 4 + 30, "compaction of the rest")
    got = read_back(b.bootstrap, "both")
    assert not any(k.startswith("old") for _, k, _ in got)
    assert {k: ov for k, ov in latest(got).items() if k.startswith("k")} == \
        {k: ov for k, ov in last.items() if k.startswith("k")}


def test_consumer_offsets_are_compacted_and_survive_a_restart(broker_factory):
    b = broker_factory(config=BROKER_CONFIG)
    create_topic(b.bootstrap, "work", 2)
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "busy", "enable.auto.commit": False})
    for i in range(1, 1201):
        c.commit(offsets=[TopicPartition("work", 0, i), TopicPartition("work", 1, 2 * i)],
                 asynchronous=False)
    low, high = c.get_watermark_offsets(TopicPartition("__consumer_offsets", 0), timeout=10)
    assert high >= 2400, "one record per partition per commit: over 150 KB uncompacted"
    wait_for(lambda: sealed_bytes(b.data_dir, "__consumer_offsets") < 8192,
             "__consumer_offsets to be compacted")
    c.close()
    b.restart()
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "busy"})
    got = c.committed([TopicPartition("work", 0), TopicPartition("work", 1)], timeout=20)
    c.close()
    assert [(t.partition, t.offset) for t in got] == [(0, 1200), (1, 2400)]
    assert sealed_bytes(b.data_dir, "__consumer_offsets") < 8192
    # The cleaner's broker settings are reported under Kafka's names.
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    res = ConfigResource(ConfigResource.Type.BROKER, "0")
    broker_configs = admin.describe_configs([res])[res].result(10)
    assert broker_configs["offsets.topic.segment.bytes"].value == "16384"
    assert broker_configs["log.cleaner.backoff.ms"].value == "200"
    assert int(broker_configs["log.cleaner.io.max.bytes.per.second"].value) > 0
    # A consumer of the group starts where the compacted log says.
    assert len(consume_all(b.bootstrap, "work", 2, 0, timeout=1)) == 0
