"""Hostile record batches against the real broker: each is refused with the
code Kafka answers (or a clearer one where Kafka's is UNKNOWN_SERVER_ERROR),
nothing of it is stored, the broker keeps serving, ListOffsets by time works
and a librdkafka consumer reads every good record around it. A batch with an
absurd count already on disk (stored by an older version) does not take the
broker down when read."""

import socket
import struct
import time
import zlib

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from conftest import consume_all, create_topic
from kafka_records import (CODEC_GZIP, batch, crc32c, produce_error, record, record_body,
                           records, varint)

CORRUPT_MESSAGE = 2
INVALID_RECORD = 87
BASE_TS = 1_700_000_000_000


def gzip_member(data, level=9):
    z = zlib.compressobj(level, zlib.DEFLATED, 31)
    return z.compress(data) + z.flush()


def zeros_bomb():
    """1 GiB of zeros as gzip, about 1 MB on the wire: 64 members of 16 MiB
    each (one member compressed once; concatenated members are one gzip
    stream to Kafka's and our decoders)."""
    return gzip_member(bytes(16 << 20)) * 64


def records_bomb(n=65):
    """`n` well-formed records of 1 MiB of zeros each, gzip, about 1 KiB per
    record on the wire: more than the 64 MiB decompression cap."""
    value = gzip_member(bytes(1 << 20))
    out = b""
    for i in range(n):
        head = varint(i)  # offset delta
        prefix = b"\x00" + varint(0) + head + varint(-1) + varint(1 << 20)
        length = len(prefix) + (1 << 20) + 1
        out += gzip_member(varint(length) + prefix) + value + gzip_member(varint(0))
    return batch(out, n, attributes=CODEC_GZIP)


def malformed_varints():
    # Key length encoded in six bytes (Kafka reads at most five).
    body = b"\x00" + varint(0) + varint(0) + b"\xff\xff\xff\xff\xff\x01" + varint(1) + b"v" + varint(0)
    return batch(varint(len(body)) + body, 1)


HOSTILE = {
    # records_count 2^31-1, last offset delta 2^31-2, one real record.
    "count_2_to_the_31": (lambda: batch(record(0, value=b"x"), 2**31 - 1, 2**31 - 2), INVALID_RECORD),
    # gzip-flagged random bytes, CRC fixed up. Kafka: UNKNOWN_SERVER_ERROR
    # (its codec's ZipException); the payload is corrupt, not the broker.
    "gzip_random_bytes": (lambda: batch(bytes(range(7, 250)) * 3, 1, attributes=CODEC_GZIP),
                          CORRUPT_MESSAGE),
    "malformed_varints": (malformed_varints, INVALID_RECORD),
    # Record length claims more than the batch holds.
    "record_past_batch": (lambda: batch(varint(40) + record_body(0, value=b"abc"), 1), INVALID_RECORD),
    "gzip_zeros_1_gib": (lambda: batch(zeros_bomb(), 1, attributes=CODEC_GZIP), INVALID_RECORD),
    "gzip_records_past_cap": (records_bomb, INVALID_RECORD),
    "offset_deltas_swapped": (lambda: batch(record(1, value=b"a") + record(0, value=b"b"), 2),
                              INVALID_RECORD),
}


def produce_good(bootstrap, topic, start, n):
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
    for i in range(start, start + n):
        p.produce(topic, value=f"good-{i}".encode(), timestamp=BASE_TS + i * 1000)
        p.flush(10)  # one batch each, so each has its own timestamps
    assert p.flush(10) == 0


def offset_for_time(bootstrap, topic, ts):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "times"})
    try:
        [tp] = c.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=15)
        assert tp.error is None, tp.error
        return tp.offset
    finally:
        c.close()


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_batch_is_refused_and_nothing_stored(broker, name):
    make, expected = HOSTILE[name]
    topic = f"hostile-{name}".replace("_", "-")
    create_topic(broker.bootstrap, topic)
    produce_good(broker.bootstrap, topic, 0, 5)
    bad = make()
    assert len(bad) < 4 << 20, "must fit the default max message bytes"
    assert struct.unpack(">I", bad[17:21])[0] == crc32c(bad[21:]), "CRC must be valid"
    with socket.create_connection(("127.0.0.1", broker.port)) as s:
        started = time.monotonic()
        error, base_offset = produce_error(s, topic, 0, bad)
        elapsed = time.monotonic() - started
    assert (error, base_offset) == (expected, -1)
    assert elapsed < 10, f"refusal took {elapsed:.1f}s"
    assert broker.alive()
    produce_good(broker.bootstrap, topic, 5, 5)
    got = consume_all(broker.bootstrap, topic, 1, 10)
    assert [(m.offset(), m.value()) for m in got] == [(i, f"good-{i}".encode()) for i in range(10)]
    assert offset_for_time(broker.bootstrap, topic, BASE_TS + 6500) == 7
    assert offset_for_time(broker.bootstrap, topic, BASE_TS + 1000) == 1


def test_two_batches_in_one_produce_are_refused_as_kafka_does(broker):
    topic = "two-batches"
    create_topic(broker.bootstrap, topic)
    one = batch(records([b"a", b"b"]), 2)
    with socket.create_connection(("127.0.0.1", broker.port)) as s:
        assert produce_error(s, topic, 0, one + one) == (INVALID_RECORD, -1)
        assert produce_error(s, topic, 0, one) == (0, 0)
    got = consume_all(broker.bootstrap, topic, 1, 2)
    assert [m.value() for m in got] == [b"a", b"b"]


def append_to_segment(data_dir, topic, raw):
    """Appends `raw` after the last batch of the partition's only segment
    (the broker is stopped, so the segment is trimmed to its batches)."""
    path = data_dir / f"{topic}-0" / "00000000000000000000.log"
    data = path.read_bytes()
    at = 0
    while at + 12 <= len(data):
        length = struct.unpack(">i", data[at + 8:at + 12])[0]
        if length <= 0:
            break
        at += 12 + length
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(raw)
        f.truncate()


def test_absurd_count_stored_by_an_older_version_does_not_crash_lookups(broker):
    topic = "at-rest"
    create_topic(broker.bootstrap, topic)
    produce_good(broker.bootstrap, topic, 0, 5)
    broker.stop()
    absurd = bytearray(batch(record(0, value=b"x"), 2**31 - 1, 2**31 - 2,
                             base_timestamp=BASE_TS + 100_000, max_timestamp=BASE_TS + 100_000))
    absurd[0:8] = struct.pack(">q", 5)  # its place in the log (not covered by the CRC)
    append_to_segment(broker.data_dir, topic, bytes(absurd))
    for _ in range(2):  # a lookup that reaches it, then again after a restart
        broker.start()
        assert offset_for_time(broker.bootstrap, topic, BASE_TS + 50_000) == 5
        assert offset_for_time(broker.bootstrap, topic, BASE_TS + 2000) == 2
        assert broker.alive()
        broker.stop()
    broker.start()
    end = 5 + 2**31 - 1
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "wm"})
    assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (0, end)
    c.close()
    produce_good(broker.bootstrap, topic, 200, 1)
    assert offset_for_time(broker.bootstrap, topic, BASE_TS + 150_000) == end


def test_request_level_refusals(broker):
    topic = "rules"
    create_topic(broker.bootstrap, topic)
    zstd_flagged = batch(b"\x28\xb5\x2f\xfd" + bytes(20), 1, attributes=4)
    good = batch(records([b"a"]), 1)
    with socket.create_connection(("127.0.0.1", broker.port)) as s:
        # zstd arrived with produce v7: UNSUPPORTED_COMPRESSION_TYPE before it.
        assert produce_error(s, topic, 0, zstd_flagged, version=3) == (76, -1)
        # Clients may not write the broker's internal topic: INVALID_TOPIC_EXCEPTION.
        assert produce_error(s, "__consumer_offsets", 0, good) == (17, -1)
        # Codec ids 5-7 do not exist: UNSUPPORTED_COMPRESSION_TYPE.
        assert produce_error(s, topic, 0, batch(records([b"a"]), 1, attributes=5)) == (76, -1)
        assert produce_error(s, topic, 0, good) == (0, 0)
