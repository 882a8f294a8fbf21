"""A partition fenced for a corrupt sealed segment answers KAFKA_STORAGE_ERROR
to every request that names it (raw frames via kafka-python's protocol classes,
and confluent-kafka), the other partitions serve, and `ringtail repair` salvages
every intact batch while keeping the damaged files aside."""

import struct
import subprocess
import time

from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AdminClient

from conftest import BINARY, create_topic, partition_errors

STORAGE_ERROR = 56
TOPIC = "fence"
PARTITIONS = 3


def log_batches(path):
    """(position, size, base offset, last offset) of each batch of a segment file."""
    data = path.read_bytes()
    out, pos = [], 0
    while pos + 61 <= len(data):
        base, length = struct.unpack_from(">qi", data, pos)
        if length <= 0:
            break
        delta = struct.unpack_from(">i", data, pos + 23)[0]
        out.append((pos, 12 + length, base, base + delta))
        pos += 12 + length
    return out


def produce_load(bootstrap, count):
    acked = {}

    def on_delivery(err, msg):
        assert err is None, err
        acked[(msg.partition(), msg.offset())] = msg.value()

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.size": 8192,
                  "enable.idempotence": True})
    for i in range(count):
        p.produce(TOPIC, value=f"{i % PARTITIONS}-{i:06d}".encode() * 10,
                  partition=i % PARTITIONS, on_delivery=on_delivery)
        p.poll(0)
    assert p.flush(30) == 0
    return acked


def read_partition(bootstrap, partition):
    """Every record of one partition of TOPIC up to its high watermark, by offset."""
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "verify",
                  "enable.auto.commit": False})
    tp = TopicPartition(TOPIC, partition)
    low, high = c.get_watermark_offsets(tp, timeout=10)
    c.assign([TopicPartition(TOPIC, partition, low)])
    got = {}
    deadline = time.time() + 30
    while (not got or max(got) < high - 1) and time.time() < deadline:
        for m in c.consume(500, 0.5):
            assert m.error() is None, m.error()
            got[m.offset()] = m.value()
    c.close()
    return got


def confluent_errors(bootstrap):
    """confluent-kafka (librdkafka): Metadata's error for each partition, and
    the delivery result of a produce (no retries) to each partition."""
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(TOPIC, timeout=10)
    meta = {p: (e.error.code() if e.error else 0) for p, e in md.topics[TOPIC].partitions.items()}
    delivered = {}
    p = Producer({"bootstrap.servers": bootstrap, "retries": 0, "acks": "all",
                  "message.timeout.ms": 20000})
    for part in range(PARTITIONS):
        p.produce(TOPIC, value=b"confluent", partition=part,
                  on_delivery=lambda err, msg: delivered.__setitem__(
                      msg.partition(), err.code() if err else 0))
    p.flush(30)
    return meta, delivered


def test_fenced_partition_answers_storage_error_and_repair_salvages_it(broker_factory):
    b = broker_factory(config="segment_bytes = 65536\noffsets_topic_partitions = 1\n")
    create_topic(b.bootstrap, TOPIC, PARTITIONS)
    acked = produce_load(b.bootstrap, 6000)
    b.stop()
    # As after a crash before the first checkpoint: recovery scans every
    # segment, so the damage below is found at start-up.
    (b.data_dir / "recovery-point-offset-checkpoint").unlink()

    # Damage one batch in the middle of the first (sealed) segment of partition 0.
    part_dir = b.data_dir / f"{TOPIC}-0"
    segments = sorted(part_dir.glob("*.log"))
    assert len(segments) > 2, segments
    first = segments[0]
    batches = log_batches(first)
    pos, size, lost_base, lost_last = batches[len(batches) // 2]
    data = bytearray(first.read_bytes())
    data[pos + size - 5] ^= 0xFF
    first.write_bytes(bytes(data))
    damaged_bytes = bytes(data)

    b.start()
    assert "partition fenced" in b.log_tail(300)
    errors = partition_errors(b.port, TOPIC, PARTITIONS)
    for api in ("metadata", "list_offsets", "leader_epoch", "fetch", "produce"):
        assert errors[api][0] == STORAGE_ERROR, (api, errors)
        assert errors[api][1] == 0 and errors[api][2] == 0, (api, errors)
    assert errors["offline"] == {0: [0], 1: [], 2: []}
    meta, delivered = confluent_errors(b.bootstrap)
    assert meta == {0: KafkaError.KAFKA_STORAGE_ERROR, 1: 0, 2: 0}
    assert delivered == {0: KafkaError.KAFKA_STORAGE_ERROR, 1: 0, 2: 0}
    # The other partitions serve.
    for part in (1, 2):
        got = read_partition(b.bootstrap, part)
        assert all(got.get(o) == v for (p, o), v in acked.items() if p == part)
    assert first.read_bytes() == damaged_bytes, "a fenced partition is left untouched"

    # Repair refuses to run beside the broker.
    busy = subprocess.run([str(BINARY), "repair", "--data-dir", str(b.data_dir)],
                          capture_output=True, text=True, timeout=60)
    assert busy.returncode != 0 and "in use" in busy.stderr, busy
    b.stop()

    out = subprocess.run([str(BINARY), "repair", "--data-dir", str(b.data_dir)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out
    report = out.stdout
    print(report)
    assert f"{TOPIC}-0: damaged" in report, report
    assert f"offsets {lost_base}..={lost_last} missing" in report, report
    assert f"dropped {size} bytes at {pos}..{pos + size}" in report, report
    assert f"{TOPIC}-1" not in report and f"{TOPIC}-2" not in report, report
    aside = list(part_dir.glob("damaged-*"))
    assert len(aside) == 1, list(part_dir.iterdir())
    assert (aside[0] / first.name).read_bytes() == damaged_bytes, "damaged files kept aside"
    assert sorted(p.name for p in aside[0].glob("*.log")) == [s.name for s in segments]
    for s in segments:
        assert (part_dir / s.with_suffix(".index").name).exists()

    b.start()
    errors = partition_errors(b.port, TOPIC, PARTITIONS)
    assert all(errors[api][0] == 0 for api in ("metadata", "list_offsets", "leader_epoch",
                                               "fetch", "produce")), errors
    expected = {o: v for (p, o), v in acked.items()
                if p == 0 and not lost_base <= o <= lost_last}
    got = read_partition(b.bootstrap, 0)
    missing = [o for o in expected if got.get(o) != expected[o]]
    assert not missing, f"{len(missing)} intact records not read back, e.g. {missing[:5]}"
    assert not any(lost_base <= o <= lost_last for o in got), "the damaged batch is gone"
    assert all(o > lost_last for o in got.keys() - expected.keys()), "only new records added"


def test_repair_of_a_named_intact_partition_changes_nothing(broker_factory):
    b = broker_factory(config="segment_bytes = 65536\noffsets_topic_partitions = 1\n")
    create_topic(b.bootstrap, TOPIC, 1)
    p = Producer({"bootstrap.servers": b.bootstrap})
    for i in range(500):
        p.produce(TOPIC, value=b"%06d" % i * 20)
    assert p.flush(30) == 0
    b.stop()
    before = {f.name: f.read_bytes() for f in (b.data_dir / f"{TOPIC}-0").iterdir()}
    out = subprocess.run([str(BINARY), "repair", "--data-dir", str(b.data_dir),
                          "--topic", TOPIC, "--partition", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out
    assert f"{TOPIC}-0: intact; nothing to repair" in out.stdout
    after = {f.name: f.read_bytes() for f in (b.data_dir / f"{TOPIC}-0").iterdir()}
    assert after == before
