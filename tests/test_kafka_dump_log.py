"""Kafka's own kafka-dump-log (kafka.tools.DumpLogSegments, 4.1.1) on the
data directory of a running broker: the sealed segments' .index and
.timeindex entries are what Kafka writes (--verify-index-only reports no
mismatch), and the active segment, whose O_DIRECT pages end in padding,
prints every acknowledged record without an exception."""

import re
import subprocess

from confluent_kafka import Producer

from conftest import create_topic
from test_kafka_tools import LIB

# What DumpLogSegments prints for index entries that do not match the log.
MISMATCH = re.compile(r"Mismatches in|mismatch|out of order|Indexed offset|Exception", re.I)


def dump(*args):
    out = subprocess.run(["java", "-cp", LIB, "kafka.tools.DumpLogSegments", *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Exception" not in out.stderr, out.stderr[-2000:]
    # Mismatches go to stderr ("Mismatches in :<file>", "Indexed offset: ...").
    return out.stdout + out.stderr


def produce(bootstrap, topic, values, linger_ms):
    """Produces `values` with acks=all; returns the offsets acknowledged."""
    acked = []

    def on_delivery(err, msg):
        assert err is None, err
        acked.append(msg.offset())
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": linger_ms,
                  "batch.size": 4096, "enable.idempotence": True})
    for v in values:
        p.produce(topic, value=v, on_delivery=on_delivery)
        p.poll(0)
    assert p.flush(30) == 0
    assert len(acked) == len(values)
    return acked


def test_kafka_dump_log_reads_indexes_and_the_active_segment(broker_factory):
    b = broker_factory(config="segment_bytes = 65536\nindex_interval_bytes = 4096\n")
    create_topic(b.bootstrap, "dump", 1)
    acked = produce(b.bootstrap, "dump", [f"{i:06d}".encode() * 17 for i in range(3000)], 2)
    part = b.data_dir / "dump-0"
    logs = sorted(part.glob("*.log"))
    assert len(logs) > 3, logs
    sealed, active = logs[:-1], logs[-1]

    # Sealed segments: every index entry checked against the log.
    indexes = [str(f.with_suffix(ext)) for f in sealed for ext in (".index", ".timeindex")]
    out = dump("--verify-index-only", "--files", ",".join(indexes))
    assert not MISMATCH.search(out), out[-3000:]
    listed = dump("--files", indexes[0])
    entries = re.findall(r"offset: (\d+) position: (\d+)", listed)
    assert len(entries) > 3, listed[-2000:]

    # The active segment of the running broker: a few more small batches so
    # its last page is partial, then every acknowledged offset in it printed.
    acked += produce(b.bootstrap, "dump", [b"tail-%d" % i for i in range(7)], 0)
    assert b.alive()
    size = active.stat().st_size
    assert size % 4096 == 0, "the active file ends at a page: O_DIRECT writes"
    out = dump("--print-data-log", "--files", str(active))
    printed = {int(o) for o in re.findall(r"\| offset: (\d+)", out)}
    base = int(active.stem)
    want = {o for o in acked if o >= base}
    assert want and want <= printed, sorted(want - printed)[:10]
    assert "payload: tail-6" in out
