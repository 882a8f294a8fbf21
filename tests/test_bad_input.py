"""Bad input on the wire: the offending connection is closed or answered with
a Kafka error code; the broker keeps serving and data stays intact."""

import os
import random
import socket
import struct

import pytest

from conftest import api_versions, assert_closed, consume_all, frame, read_frame, write_some


def check_still_serving(broker, n):
    write_some(broker.bootstrap, "intact", 10, start=n)
    got = consume_all(broker.bootstrap, "intact", 1, n + 10)
    assert [m.value() for m in got] == [f"v{i}".encode() for i in range(n + 10)]


@pytest.mark.parametrize("payload", [
    struct.pack(">i", 0x7FFFFFFF) + b"\x00" * 64,       # 2 GiB frame: refused before allocating
    struct.pack(">i", -5),                               # negative length
    struct.pack(">i", 3) + b"abc",                       # shorter than any header
    # garbage: a plausible length (so the broker reads the whole frame) then
    # random bytes; a random length prefix could legitimately make it wait.
    struct.pack(">i", 4092) + b"\xff\xff" + random.Random(7).randbytes(4090),
    frame(0x7FF0, 0, 1),                                 # unknown API key
    frame(0, 99, 1),                                     # unsupported Produce version
    frame(3, 1, 1, b"\xff\xff\xff\x7f"),                 # Metadata with a huge topic array
    frame(0, 3, 1, b"\x00\x01"),                         # truncated Produce body
])
def test_bad_frames_close_only_that_connection(broker, payload):
    write_some(broker.bootstrap, "intact", 10)
    with socket.create_connection(("127.0.0.1", broker.port)) as bad, \
            socket.create_connection(("127.0.0.1", broker.port)) as good:
        bad.sendall(payload)
        assert_closed(bad)
        # An unrelated connection opened before is unaffected.
        good.sendall(frame(18, 0, 42))
        resp = read_frame(good)
        assert struct.unpack(">i", resp[:4])[0] == 42
    assert broker.alive()
    check_still_serving(broker, 10)


def test_unknown_api_versions_version_gets_error_35_and_versions(broker):
    resp = api_versions(broker.port, version=99)
    correlation, error, count = struct.unpack(">ihi", resp[:10])
    assert correlation == 7
    assert error == 35
    keys = {struct.unpack(">hhh", resp[10 + 6 * i:16 + 6 * i])[0] for i in range(count)}
    assert {0, 1, 2, 3, 18} <= keys


def test_corrupt_batch_is_refused_with_corrupt_message(broker):
    write_some(broker.bootstrap, "intact", 10)
    # A produce v3 of one batch whose CRC does not match its content.
    batch = bytearray(61 + 8)
    struct.pack_into(">qiibIhiqqqhii", batch, 0, 0, len(batch) - 12, -1, 2, 0xDEADBEEF, 0, 0,
                     0, 0, -1, -1, -1, 1)
    records = bytes(batch)
    topic = b"intact"
    body = struct.pack(">h", -1)  # null transactional id
    body += struct.pack(">hi", -1, 5000)  # acks, timeout
    body += struct.pack(">i", 1) + struct.pack(">h", len(topic)) + topic
    body += struct.pack(">i", 1) + struct.pack(">i", 0) + struct.pack(">i", len(records)) + records
    with socket.create_connection(("127.0.0.1", broker.port)) as s:
        s.sendall(frame(0, 3, 9, body))
        resp = read_frame(s)
    # correlation, topics[1], name, partitions[1], index, error_code
    at = 4 + 4
    name_len = struct.unpack(">h", resp[at:at + 2])[0]
    at += 2 + name_len + 4
    index, error = struct.unpack(">ih", resp[at:at + 6])
    assert (index, error) == (0, 2)  # CORRUPT_MESSAGE
    check_still_serving(broker, 10)


def test_offset_for_leader_epoch(broker):
    write_some(broker.bootstrap, "intact", 10)
    topic = b"intact"

    def ask(partition, current_epoch, epoch):
        body = struct.pack(">i", 1) + struct.pack(">h", len(topic)) + topic
        body += struct.pack(">i", 1) + struct.pack(">iii", partition, current_epoch, epoch)
        with socket.create_connection(("127.0.0.1", broker.port)) as s:
            s.sendall(frame(23, 2, 5, body))
            resp = read_frame(s)
        at = 4 + 4 + 4  # correlation, throttle, topics count
        at += 2 + struct.unpack(">h", resp[at:at + 2])[0] + 4
        return struct.unpack(">hiiq", resp[at:at + 18])

    assert ask(0, 0, 0) == (0, 0, 0, 10)          # epoch 0 ends at the log end
    assert ask(0, -1, 5) == (0, 0, -1, -1)         # a later epoch is unknown
    assert ask(0, 7, 0)[0] == 75                   # UNKNOWN_LEADER_EPOCH (client ahead)
    assert ask(9, -1, 0)[0] == 3                   # UNKNOWN_TOPIC_OR_PARTITION
