"""Memory stays bounded whatever clients do: clients that never read their
responses, connections that announce huge frames and send nothing, fetches
that list one partition many times. The broker's memory is read from
/proc/PID/status (VmRSS now, VmHWM the peak, VmSize the address space)."""

import json
import resource
import socket
import struct
import subprocess
import threading
import time

from confluent_kafka import Producer

from conftest import BINARY, api_versions, consume_all, create_topic, frame, read_frame

MiB = 1 << 20

# Small limits so the bounds are tight (each broker-wide limit is split over
# the test broker's 2 shards; the batch cache is per shard).
BATCH_CACHE_BYTES = 16 * MiB
FETCH_BYTES = 128 * MiB
REQUEST_BYTES = 64 * MiB
POOL_BYTES = 8 * MiB
TIGHT = f"""
batch_cache_bytes = {BATCH_CACHE_BYTES}
max_in_flight_fetch_bytes = {FETCH_BYTES}
queued_max_request_bytes = {REQUEST_BYTES}
frame_pool_bytes = {POOL_BYTES}
connection_max_queued_response_bytes = {8 * MiB}
"""
# What the broker holds besides these budgets and varies with the load:
# per-partition write buffers, executors' I/O memory, allocator slack.
SLACK_BYTES = 96 * MiB


def memory(broker):
    """VmRSS, VmHWM and VmSize of the broker, in bytes."""
    out = {}
    with open(f"/proc/{broker.proc.pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "VmSize"):
                out[key] = int(value.split()[0]) * 1024
    return out


def raise_file_limit(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, max(hard, needed)))


def bench_produce(broker, topic, messages, partitions, message_bytes=1024):
    """`ringtail bench produce` of a fixed number of messages; its result."""
    out = broker.data_dir.parent / f"produce-{topic}-{time.time_ns()}.json"
    args = [str(BINARY), "bench", "produce", "--bootstrap", broker.bootstrap, "--topic", topic,
            "--partitions", str(partitions), "--messages", str(messages), "--message-bytes",
            str(message_bytes), "--warmup-s", "0", "--duration-s", "300", "--json", str(out)]
    subprocess.run(args, check=True, timeout=300, capture_output=True)
    return json.loads(out.read_text())["result"]


def fetch_request(correlation_id, topic, partitions, max_bytes, max_wait_ms=500):
    """Fetch v4; `partitions` lists (partition, offset, partition_max_bytes)."""
    name = topic.encode()
    body = struct.pack(">iiiib", -1, max_wait_ms, 1, max_bytes, 0)
    body += struct.pack(">i", 1) + struct.pack(">h", len(name)) + name
    body += struct.pack(">i", len(partitions))
    body += b"".join(struct.pack(">iqi", p, o, m) for p, o, m in partitions)
    return frame(1, 4, correlation_id, body)


def parse_fetch_v4(resp):
    """[(topic, [(partition, error, high_watermark, records)])] of a v4 response."""
    at = 4 + 4  # correlation id, throttle time
    (topic_count,) = struct.unpack_from(">i", resp, at)
    at += 4
    topics = []
    for _ in range(topic_count):
        (name_len,) = struct.unpack_from(">h", resp, at)
        name = resp[at + 2:at + 2 + name_len].decode()
        at += 2 + name_len
        (count,) = struct.unpack_from(">i", resp, at)
        at += 4
        partitions = []
        for _ in range(count):
            index, error, hw, _lso = struct.unpack_from(">ihqq", resp, at)
            at += 4 + 2 + 8 + 8
            (aborted,) = struct.unpack_from(">i", resp, at)
            at += 4 + max(aborted, 0) * 16
            (size,) = struct.unpack_from(">i", resp, at)
            at += 4
            records = resp[at:at + max(size, 0)]
            at += max(size, 0)
            partitions.append((index, error, hw, records))
        topics.append((name, partitions))
    assert at == len(resp), "whole response parsed"
    return topics


def batches(records):
    """(base offset, last offset, size) of each whole batch in `records`."""
    out, at = [], 0
    while len(records) - at >= 61:
        base, length = struct.unpack_from(">qi", records, at)
        size = 12 + length
        if size > len(records) - at:
            break
        (last_delta,) = struct.unpack_from(">i", records, at + 23)
        out.append((base, base + last_delta, size))
        at += size
    assert at == len(records), "only whole batches"
    return out


class SlowReader:
    """A connection that keeps sending fetches and never reads a response."""

    def __init__(self, port, topic, partitions):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.setblocking(False)
        self.request = lambda cid: fetch_request(
            cid, topic, [(p, 0, 32 * MiB) for p in range(partitions)], 64 * MiB)
        self.sent = 0
        self.pending = b""

    def pump(self):
        """Sends what the socket takes now."""
        try:
            while True:
                if not self.pending:
                    self.pending = self.request(self.sent)
                    self.sent += 1
                n = self.sock.send(self.pending)
                self.pending = self.pending[n:]
        except BlockingIOError:
            pass

    def close(self):
        self.sock.close()


def test_slow_readers_stay_within_the_budgets_and_do_not_stop_producers(broker_factory):
    broker = broker_factory(config=TIGHT)
    create_topic(broker.bootstrap, "big", 2)
    bench_produce(broker, "big", 131072, 2)  # 128 MiB to fetch from the start
    before = memory(broker)
    bound = (before["VmRSS"] + 2 * BATCH_CACHE_BYTES + FETCH_BYTES + REQUEST_BYTES + 2 * POOL_BYTES
             + SLACK_BYTES)
    readers = [SlowReader(broker.port, "big", 2) for _ in range(10)]
    stop = threading.Event()
    exceeded = []

    def pump():
        while not stop.is_set():
            for r in readers:
                r.pump()
            now = memory(broker)
            if now["VmRSS"] > bound:
                # Unbounded growth: stop before it takes the machine's memory.
                exceeded.append(now)
                broker.proc.kill()
                return
            time.sleep(0.01)

    pumper = threading.Thread(target=pump)
    pumper.start()
    try:
        started = time.time()
        produced = bench_produce(broker, "big", 1 << 20, 2)  # 1 GiB more
        produce_s = time.time() - started
    except subprocess.CalledProcessError:
        assert not exceeded, ("over the bound: broker stopped", before, exceeded, bound)
        raise
    finally:
        stop.set()
        pumper.join()
    assert not exceeded, ("over the bound: broker stopped", before, exceeded, bound)
    during = memory(broker)
    assert during["VmHWM"] <= bound, (before, during, bound)
    assert produced["errors"] == 0 and produced["messages"] >= 1 << 20, produced
    assert produce_s < 240
    assert all(r.sent > 1 for r in readers), "the slow readers kept sending"

    for r in readers:
        r.close()
    settled = before["VmRSS"] + 2 * BATCH_CACHE_BYTES + SLACK_BYTES
    deadline = time.time() + 10
    while time.time() < deadline and memory(broker)["VmRSS"] > settled:
        time.sleep(0.2)
    after = memory(broker)
    assert after["VmRSS"] <= settled, (before, during, after)
    # Still serving: a consumer reads the start of the topic.
    got = consume_all(broker.bootstrap, "big", 1, 1000, extra={"group.id": "after-slow"})
    assert len(got) >= 1000


def test_connections_announcing_huge_frames_cost_only_what_they_sent(broker_factory):
    connections = 2000
    raise_file_limit(2 * connections + 1000)
    broker = broker_factory()
    create_topic(broker.bootstrap, "served", 1)
    before = memory(broker)
    held = []
    try:
        for _ in range(connections):
            s = socket.create_connection(("127.0.0.1", broker.port))
            # 100 MiB announced (the default max_request_bytes), 10 bytes sent.
            s.sendall(struct.pack(">i", 100 * MiB) + b"\x00\x03\x00\x01\x00\x00\x00\x07\x00\x00")
            held.append(s)
        time.sleep(1)
        during = memory(broker)
        grown = {k: during[k] - before[k] for k in during}
        # 16 KiB of buffer each at most, plus the connections' own state.
        assert grown["VmSize"] < 256 * MiB, (before, during)
        assert grown["VmRSS"] < 128 * MiB, (before, during)
        # Others are served meanwhile.
        p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
        for i in range(100):
            p.produce("served", value=b"v%d" % i)
        assert p.flush(20) == 0
        got = consume_all(broker.bootstrap, "served", 1, 100)
        assert [m.value() for m in got] == [b"v%d" % i for i in range(100)]
    finally:
        for s in held:
            s.close()
    assert broker.alive()
    deadline = time.time() + 10
    while time.time() < deadline and memory(broker)["VmRSS"] > before["VmRSS"] + 32 * MiB:
        time.sleep(0.2)
    assert memory(broker)["VmRSS"] <= before["VmRSS"] + 32 * MiB
    api_versions(broker.port)


def fetch_once(port, request):
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(request)
        return parse_fetch_v4(read_frame(s, timeout=30))


def test_partition_listed_64_times_is_answered_and_read_once(broker_factory):
    # A cache of 1 MiB per shard: the fetch reads from the device, into
    # fresh memory, so each read of the partition would show in the peak.
    broker = broker_factory(config=f"batch_cache_bytes = {MiB}\n")
    create_topic(broker.bootstrap, "dup", 1)
    bench_produce(broker, "dup", 65536, 1)  # 64 MiB
    # Kafka answers a partition once, at its first place, with the offset
    # and limit of its last listing.
    listed = [(0, 0, 32 * MiB)] * 63 + [(0, 1000, 32 * MiB)]
    before = memory(broker)
    started = time.time()
    topics = fetch_once(broker.port, fetch_request(1, "dup", listed, 1 << 30))
    elapsed = time.time() - started
    after = memory(broker)
    assert [(name, [p[0] for p in parts]) for name, parts in topics] == [("dup", [0])]
    index, error, hw, records = topics[0][1][0]
    assert error == 0 and hw >= 65536
    found = batches(records)
    assert found[0][0] <= 1000 <= found[0][1], "starts at the last listing's offset"
    assert all(b[0] == a[1] + 1 for a, b in zip(found, found[1:])), "contiguous"
    assert 31 * MiB <= len(records) <= 32 * MiB
    # One read of 32 MiB holds it and its raw read at most; 64 reads would
    # hold 2 GiB.
    assert after["VmHWM"] - before["VmHWM"] <= 160 * MiB, (before, after)
    assert elapsed < 10


def test_response_max_bytes_is_shared_and_the_first_batch_always_returned(broker_factory):
    broker = broker_factory(config=f"batch_cache_bytes = {MiB}\n")
    create_topic(broker.bootstrap, "shared", 3)
    bench_produce(broker, "shared", 12288, 3)  # about 4 MiB per partition
    every = [(p, 0, 8 * MiB) for p in range(3)]

    def fetch(cid, partitions, max_bytes):
        topics = fetch_once(broker.port, fetch_request(cid, "shared", partitions, max_bytes))
        assert [name for name, _ in topics] == ["shared"]
        assert [p for p, *_ in topics[0][1]] == [p for p, *_ in partitions], "request order"
        assert all(e == 0 for _, e, _, _ in topics[0][1])
        return {p: batches(r) for p, _, _, r in topics[0][1]}

    def size(found):
        return sum(b[2] for b in found)

    full = fetch(1, every, 64 * MiB)
    assert all(size(full[p]) > MiB for p in range(3))
    # max_bytes of 1: the first partition gives one whole batch anyway
    # (Kafka's rule, so a consumer always progresses), the others nothing.
    got = fetch(2, every, 1)
    assert got == {0: full[0][:1], 1: [], 2: []}
    # Room for the first partition and half the second: read in request
    # order against what is left, whole batches only.
    room = size(full[0]) + size(full[1]) // 2
    got = fetch(3, every, room)
    assert got[0] == full[0] and got[2] == []
    assert 0 < size(got[1]) <= room - size(full[0])
    assert got[1] == full[1][:len(got[1])]
    # The other way round, partition 2 comes first.
    got = fetch(4, every[::-1], size(full[2]))
    assert got == {2: full[2], 1: [], 0: []}
    # Partition limits hold too.
    got = fetch(5, [(p, 0, 300 * 1024) for p in range(3)], 64 * MiB)
    for p in range(3):
        assert 0 < size(got[p]) <= 300 * 1024 and got[p] == full[p][:len(got[p])]


def test_pipelined_fetches_of_a_reading_client_all_arrive(broker_factory):
    # The per-connection bound mutes reading while responses queue; a client
    # that does read gets every response, in order.
    broker = broker_factory(config=TIGHT)
    create_topic(broker.bootstrap, "pipe", 2)
    bench_produce(broker, "pipe", 16384, 2)
    with socket.create_connection(("127.0.0.1", broker.port)) as s:
        for cid in range(20):
            s.sendall(fetch_request(cid, "pipe", [(0, 0, 4 * MiB), (1, 0, 4 * MiB)], 8 * MiB))
        for cid in range(20):
            resp = read_frame(s, timeout=30)
            assert struct.unpack(">i", resp[:4])[0] == cid
            parts = parse_fetch_v4(resp)[0][1]
            assert all(e == 0 and len(r) > 0 for _, e, _, r in parts)


def unread_by_broker(broker_port, client_port):
    """Bytes the broker has not read yet from the connection whose client end
    is `client_port`: its socket's receive queue, from /proc/net/tcp."""
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if (int(local.split(":")[1], 16) == broker_port
                    and int(remote.split(":")[1], 16) == client_port):
                return int(fields[4].split(":")[1], 16)
    raise AssertionError("broker end of the connection not found")


def read_frame_into(sock):
    """One response frame, read into a preallocated buffer."""
    sock.settimeout(30)
    (size,) = struct.unpack(">i", sock.recv(4, socket.MSG_WAITALL))
    buf = bytearray(size)
    view, at = memoryview(buf), 0
    while at < size:
        n = sock.recv_into(view[at:])
        assert n > 0, "closed"
        at += n
    return bytes(buf)


def test_a_connection_whose_responses_are_not_read_is_not_read(broker_factory):
    # connection_max_queued_response_bytes is 8 MiB in TIGHT; each fetch
    # counts its 4 MiB limit from the moment it is read. The in-flight
    # request bound (32) alone would let the broker read all 20 requests.
    broker = broker_factory(config=TIGHT)
    create_topic(broker.bootstrap, "mute", 2)
    bench_produce(broker, "mute", 16384, 2)  # about 8 MiB per partition
    requests = [fetch_request(cid, "mute", [(0, 0, 4 * MiB), (1, 0, 4 * MiB)], 4 * MiB)
                for cid in range(20)]
    with socket.create_connection(("127.0.0.1", broker.port)) as s:
        s.sendall(b"".join(requests))
        client_port = s.getsockname()[1]
        # The broker reads two fetches (8 MiB of responses queued), a few
        # more at most as the kernel's socket buffers take the first
        # responses, then stops.
        time.sleep(2)
        unread = unread_by_broker(broker.port, client_port)
        assert unread >= 10 * len(requests[0]), (unread, len(requests[0]))
        # Once the client reads, the broker reads again: every response
        # arrives, in order.
        for cid in range(20):
            resp = read_frame_into(s)
            assert struct.unpack(">i", resp[:4])[0] == cid
            parts = parse_fetch_v4(resp)[0][1]
            assert all(e == 0 for _, e, _, _ in parts)
            assert sum(len(r) for _, _, _, r in parts) > MiB
        assert unread_by_broker(broker.port, client_port) == 0
