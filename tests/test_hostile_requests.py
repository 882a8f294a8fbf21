"""Hostile requests against the real broker: counts, lengths and varints
that claim far more than the frame holds, and truncated frames, for several
APIs, each on a fresh connection. Every one must close only its own
connection (refused by the bounds walk before the codec allocates), and
the broker must keep serving with its memory where it was."""

import socket
import struct

import pytest

from conftest import api_versions, assert_closed, consume_all, frame, read_frame, write_some

U32_MAX_VARINT = b"\xff\xff\xff\xff\x0f"     # compact count/length 0xfffffffe
OVERLONG_VARINT = b"\xff" * 10                 # no varint of ours is longer than 5 bytes
I32_MAX = struct.pack(">i", 0x7FFFFFFF)


def string(s):
    return struct.pack(">h", len(s)) + s


def compact(s):
    return bytes([len(s) + 1]) + s


def fetch_v11_body(partition_count=1):
    body = struct.pack(">iiiibii", -1, 500, 1, 1 << 20, 0, 0, -1)  # replica .. session epoch
    body += struct.pack(">i", 1) + string(b"intact") + struct.pack(">i", partition_count)
    body += struct.pack(">iiqqi", 0, -1, 0, -1, 1 << 20)            # one partition
    body += struct.pack(">i", 0) + string(b"")                       # forgotten topics, rack
    return body


def produce_v3_body(records_length=None, records=b"\x00" * 70):
    length = len(records) if records_length is None else records_length
    return (struct.pack(">hhi", -1, -1, 1000) + struct.pack(">i", 1) + string(b"intact")
            + struct.pack(">ii", 1, 0) + struct.pack(">i", length) + records)


def raw(payload):
    """`payload` behind its 4-byte length prefix."""
    return struct.pack(">i", len(payload)) + payload


def truncated(full, keep):
    """`full` (a frame with its length prefix) cut to `keep` payload bytes,
    with a length prefix that matches, so the broker reads all of it."""
    return raw(full[4:4 + keep])


HOSTILE = {
    # The reproduction: Metadata v1 with a topic count of 0x7fffffff (26 bytes).
    "metadata_v1_topic_count": bytes.fromhex("000000160003000100000001000570726f62657fffffff000178"),
    "metadata_v12_compact_count_u32_max": frame(3, 12, 1, U32_MAX_VARINT + b"\x01\x00\x00",
                                                flexible=True),
    "metadata_v12_overlong_count": frame(3, 12, 1, OVERLONG_VARINT + b"\x01\x00\x00",
                                         flexible=True),
    # Header v2 whose tagged-field count is an overlong varint.
    "metadata_v12_header_tags_overlong": frame(3, 12, 1, OVERLONG_VARINT + b"\x01\x01\x00\x00"),
    "metadata_v1_topic_name_length": frame(3, 1, 1, struct.pack(">ih", 1, 0x7FFF) + b"ab"),
    "metadata_v1_negative_name_length": frame(3, 1, 1, struct.pack(">ih", 1, -2) + b"ab"),
    "produce_v3_client_id_length": raw(struct.pack(">hhih", 0, 3, 1, 0x7FFF) + b"abcd"),
    "produce_v3_records_length": frame(0, 3, 1, produce_v3_body(records_length=0x7FFFFFFF)),
    "produce_v9_compact_records_length": frame(
        0, 9, 1, b"\x00" + struct.pack(">hi", -1, 1000) + b"\x02" + compact(b"intact") + b"\x02"
        + struct.pack(">i", 0) + U32_MAX_VARINT + b"\x00" * 16, flexible=True),
    "fetch_v11_partition_count": frame(1, 11, 1, fetch_v11_body(partition_count=0x7FFFFFFF)),
    "fetch_v12_tagged_field_count": frame(
        1, 12, 1, struct.pack(">iiiibii", -1, 500, 1, 1 << 20, 0, 0, -1) + b"\x01\x01\x01"
        + b"\xfe\xff\xff\xff\x07", flexible=True),
    "join_group_v5_protocol_count": frame(
        11, 5, 1, string(b"g") + struct.pack(">ii", 10000, 10000) + string(b"") + struct.pack(">h", -1)
        + string(b"consumer") + I32_MAX + b"\x00" * 8),
    "create_topics_v5_name_length": frame(19, 5, 1, b"\x02" + U32_MAX_VARINT + b"abc",
                                          flexible=True),
    "offset_commit_v8_group_length": frame(8, 8, 1, b"\x80\x80\x80\x80\x08" + b"g" * 8,
                                           flexible=True),
    "describe_groups_v5_group_count": frame(15, 5, 1, U32_MAX_VARINT + b"\x02g\x00\x00",
                                            flexible=True),
    "list_offsets_v1_negative_topic_count": frame(2, 1, 1, struct.pack(">ii", -1, -2)),
    # An ApiVersions version the broker does not know: only its v1 header is
    # read, and that header's client id claims 32 KiB.
    "api_versions_v99_client_id_length": raw(struct.pack(">hhih", 18, 99, 1, 0x7FFF) + b"abcd"),
    "fetch_v11_truncated": truncated(frame(1, 11, 1, fetch_v11_body()), 60),
    "produce_v3_truncated": truncated(frame(0, 3, 1, produce_v3_body()), 40),
    "metadata_v12_truncated_varint": frame(3, 12, 1, b"\x80\x80", flexible=True),
}

ROUNDS = 5
RSS_GROWTH_LIMIT_KB = 32 * 1024


def rss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def refusals(broker):
    return broker.log_path.read_text(errors="replace").count("malformed request refused")


def send_on_fresh_connection(port, payload):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        assert_closed(s)


def metadata_answered(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(frame(3, 1, 99, struct.pack(">i", -1)))   # all topics
        resp = read_frame(s)
    assert struct.unpack(">i", resp[:4])[0] == 99


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_request_closes_only_its_connection(broker, name):
    before = refusals(broker)
    with socket.create_connection(("127.0.0.1", broker.port)) as good:
        send_on_fresh_connection(broker.port, HOSTILE[name])
        # A connection opened before is still served.
        good.sendall(frame(18, 0, 42))
        assert struct.unpack(">i", read_frame(good)[:4])[0] == 42
    assert broker.alive()
    assert refusals(broker) == before + 1, broker.log_tail()
    api_versions(broker.port)
    metadata_answered(broker.port)


def test_broker_keeps_serving_and_its_memory_after_rounds_of_hostile_requests(broker):
    write_some(broker.bootstrap, "intact", 20)
    assert len(consume_all(broker.bootstrap, "intact", 1, 20)) == 20
    rss_before = rss_kb(broker.proc.pid)
    for _ in range(ROUNDS):
        for name, payload in HOSTILE.items():
            send_on_fresh_connection(broker.port, payload)
            assert broker.alive(), f"broker died on {name}:\n{broker.log_tail()}"
    assert refusals(broker) == ROUNDS * len(HOSTILE)
    api_versions(broker.port)
    metadata_answered(broker.port)
    write_some(broker.bootstrap, "intact", 20, start=20)
    got = consume_all(broker.bootstrap, "intact", 1, 40)
    assert [m.value() for m in got] == [f"v{i}".encode() for i in range(40)]
    growth = rss_kb(broker.proc.pid) - rss_before
    assert growth < RSS_GROWTH_LIMIT_KB, f"RSS grew by {growth} KiB"


def test_metadata_answers_a_repeated_topic_once(broker):
    write_some(broker.bootstrap, "intact", 1)
    names = struct.pack(">i", 3) + string(b"intact") * 2 + string(b"missing")
    with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as s:
        s.sendall(frame(3, 1, 5, names))
        resp = read_frame(s)
    at = 4
    (brokers,) = struct.unpack_from(">i", resp, at)
    at += 4
    for _ in range(brokers):
        at += 4                                                   # node id
        at += 2 + struct.unpack_from(">h", resp, at)[0]           # host
        at += 4                                                   # port
        rack = struct.unpack_from(">h", resp, at)[0]
        at += 2 + max(rack, 0)
    at += 4                                                       # controller id
    (topics,) = struct.unpack_from(">i", resp, at)
    assert topics == 2
