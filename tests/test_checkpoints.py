"""The data directory's offset checkpoints (recovery point, high watermark,
log start offset) and producer snapshots, with the real binary: written in
Kafka's formats, periodically and at shutdown, readable by Kafka's own
kafka-dump-log, and used by recovery, which loads the sealed segments below
the recovery point from their indexes instead of scanning them."""

import re
import subprocess
import time

from confluent_kafka import Consumer, Producer, TopicPartition

from conftest import consume_all, create_topic
from test_kafka_tools import LIB

FILES = ("recovery-point-offset-checkpoint", "replication-offset-checkpoint",
         "log-start-offset-checkpoint")


def read_checkpoint(path):
    lines = path.read_text().splitlines()
    assert lines[0] == "0", lines[:2]
    count = int(lines[1])
    entries = [line.split(" ") for line in lines[2:]]
    assert len(entries) == count
    return {(t, int(p)): int(o) for t, p, o in entries}


def high_watermarks(bootstrap, topic, partitions):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "hw"})
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in range(partitions)}
    finally:
        c.close()


def produce(bootstrap, topic, n, start=0):
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5,
                  "batch.size": 8192})
    for i in range(start, start + n):
        p.produce(topic, value=f"{i:06d}".encode() * 20, partition=i % 2)
    assert p.flush(30) == 0


def wait_for(predicate, what, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_checkpoints_are_written_periodically_and_recovery_starts_from_them(broker_factory):
    b = broker_factory(config="segment_bytes = 65536\ncheckpoint_interval_ms = 300\n")
    create_topic(b.bootstrap, "ckpt", 2)
    produce(b.bootstrap, "ckpt", 3000)
    ends = high_watermarks(b.bootstrap, "ckpt", 2)
    assert sum(ends.values()) == 3000

    def written():
        try:
            rp = read_checkpoint(b.data_dir / FILES[0])
        except (OSError, ValueError, IndexError, AssertionError):
            return False
        return all(rp.get(("ckpt", p)) == ends[p] for p in range(2))
    wait_for(written, "the periodic checkpoint to reach the log ends")
    hw = read_checkpoint(b.data_dir / FILES[1])
    start = read_checkpoint(b.data_dir / FILES[2])
    for p in range(2):
        assert hw[("ckpt", p)] == ends[p]
        assert start[("ckpt", p)] == 0

    # A producer snapshot at each rolled segment's base, readable by Kafka.
    part = b.data_dir / "ckpt-0"
    bases = sorted(int(f.stem) for f in part.glob("*.log"))
    snapshots = sorted(int(f.stem) for f in part.glob("*.snapshot"))
    assert len(bases) > 3 and snapshots == bases[1:], (bases, snapshots)
    last = part / f"{bases[-1]:020d}.snapshot"
    out = subprocess.run(["java", "-cp", LIB, "kafka.tools.DumpLogSegments", "--files", str(last)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"producerId: \d+ producerEpoch: 0", out.stdout), out.stdout[-2000:]

    # kill -9: the next start loads the sealed segments below the recovery
    # point unread and scans only the last (producer state and epochs from
    # the snapshot and the epoch checkpoint); the log reads back whole and
    # takes new writes.
    b.kill()
    b.start()
    plain = re.sub(r"\x1b\[[0-9;]*m", "", b.log_tail(400))
    recovered = [line for line in plain.splitlines()
                 if "log recovered" in line and "ckpt-0" in line]
    assert recovered, b.log_tail(60)
    loaded = int(re.search(r"loaded=(\d+)", recovered[-1]).group(1))
    scanned = int(re.search(r"scanned=(\d+)", recovered[-1]).group(1))
    assert (loaded, scanned) == (len(bases) - 1, 1), recovered[-1]
    produce(b.bootstrap, "ckpt", 1000, start=3000)
    got = consume_all(b.bootstrap, "ckpt", 2, 4000)
    values = sorted(m.value() for m in got)
    assert values == sorted(f"{i:06d}".encode() * 20 for i in range(4000))


def test_clean_shutdown_writes_the_checkpoints(broker):
    create_topic(broker.bootstrap, "tidy", 2)
    produce(broker.bootstrap, "tidy", 200)
    ends = high_watermarks(broker.bootstrap, "tidy", 2)
    broker.stop()
    rp = read_checkpoint(broker.data_dir / FILES[0])
    hw = read_checkpoint(broker.data_dir / FILES[1])
    for p in range(2):
        assert rp[("tidy", p)] == ends[p] == hw[("tidy", p)]
    broker.start()
    # The high watermark is back at once, before any new write.
    assert high_watermarks(broker.bootstrap, "tidy", 2) == ends
