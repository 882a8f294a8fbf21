"""Fixtures: the real `ringtail` binary on loopback, one per test, with its
own data directory; helpers for topics and raw Kafka frames."""

import os
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# RINGTAIL_BIN: a copy of the binary, so a rebuild does not change it mid-run.
BINARY = Path(os.environ.get("RINGTAIL_BIN", ROOT / "target" / "release" / "ringtail"))
START_TIMEOUT_S = 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, data_dir, extra_args=(), cores=2, log_dir=None):
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        # Every broker gets its own HTTP (metrics) port, unless the test
        # names one: the default 9644 would be shared by brokers on one host.
        self.http_port = free_port()
        self.http = f"127.0.0.1:{self.http_port}"
        self.data_dir = Path(data_dir)
        self.extra_args = list(extra_args)
        self.cores = cores
        self.proc = None
        self.log_path = Path(log_dir or self.data_dir.parent) / f"broker-{self.port}.log"

    def start(self):
        self.spawn()
        return self.wait_ready()

    def spawn(self):
        args = [str(BINARY), "serve", "--listen", self.bootstrap, "--data-dir", str(self.data_dir),
                "--cores", str(self.cores)] + self.extra_args
        if "--http-listen" not in self.extra_args:
            # A fresh port at each start: while the broker was down, a
            # client's reconnect may have taken the old one as its local port.
            self.http_port = free_port()
            self.http = f"127.0.0.1:{self.http_port}"
            args += ["--http-listen", self.http]
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=self.log)

    def wait_ready(self, timeout=START_TIMEOUT_S):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                api_versions(self.port)
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"broker did not start:\n{self.log_tail()}")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self):
        rc = self.terminate()
        assert rc == 0, f"broker exited with {rc}:\n{self.log_tail()}"

    def terminate(self, timeout=60):
        """SIGTERM; returns the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def restart(self):
        self.stop()
        return self.start()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n=40):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def cleanup(self):
        if self.alive():
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def broker_factory(tmp_path):
    brokers = []

    def make(extra_args=(), config=None, cores=2):
        args = list(extra_args)
        if config is not None:
            path = tmp_path / f"config-{len(brokers)}.toml"
            path.write_text(config)
            args += ["--config", str(path)]
        b = Broker(tmp_path / f"data-{len(brokers)}", args, cores)
        brokers.append(b)
        return b.start()

    yield make
    for b in brokers:
        if b.alive():
            print(f"--- broker {b.bootstrap} log tail ---\n{b.log_tail()}")
        b.cleanup()


class Cluster:
    """`size` `ringtail serve` processes on loopback, every one a controller
    voter and a broker (node ids 1..size)."""

    def __init__(self, tmp_path, size=3, cores=1, config=None):
        self.controller_ports = [free_port() for _ in range(size)]
        voters = ",".join(f"{i + 1}@127.0.0.1:{p}" for i, p in enumerate(self.controller_ports))
        self.nodes = {}
        for i in range(size):
            node_id = i + 1
            args = ["--node-id", str(node_id), "--controller-listen",
                    f"127.0.0.1:{self.controller_ports[i]}", "--controller-voters", voters]
            if config is not None:
                path = tmp_path / f"node-{node_id}.toml"
                path.write_text(config)
                args += ["--config", str(path)]
            self.nodes[node_id] = Broker(tmp_path / f"node-{node_id}", args, cores)

    @property
    def bootstrap(self):
        return ",".join(b.bootstrap for b in self.nodes.values())

    def live_bootstrap(self):
        return ",".join(b.bootstrap for b in self.nodes.values() if b.alive())

    def start(self, timeout=60):
        for b in self.nodes.values():
            b.spawn()
        for b in self.nodes.values():
            b.wait_ready(timeout)
        self.wait_for(lambda md: len(md.brokers) == len(self.nodes), "all brokers registered")
        return self

    def admin(self):
        from confluent_kafka.admin import AdminClient
        return AdminClient({"bootstrap.servers": self.live_bootstrap()})

    def metadata(self, topic=None, via=None):
        """Metadata as one live broker answers it (librdkafka's view)."""
        from confluent_kafka.admin import AdminClient
        nodes = [via] if via is not None else [n for n, b in self.nodes.items() if b.alive()]
        last = None
        for n in nodes:
            try:
                admin = AdminClient({"bootstrap.servers": self.nodes[n].bootstrap})
                return admin.list_topics(topic=topic, timeout=5)
            except Exception as e:  # noqa: BLE001 - try the next broker
                last = e
        raise last

    def wait_for(self, predicate, what, timeout=30, topic=None, via=None):
        """Polls Metadata (from broker `via`, else any live one) until
        `predicate` holds."""
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            try:
                md = self.metadata(topic, via=via)
                if predicate(md):
                    return md
                last = md
            except Exception as e:  # noqa: BLE001 - brokers may be moving
                last = e
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; last: {describe(last)}")

    def create_topic(self, name, partitions=1, replication_factor=3, config=None):
        from confluent_kafka.admin import NewTopic
        admin = self.admin()
        f = admin.create_topics([NewTopic(name, num_partitions=partitions,
                                          replication_factor=replication_factor,
                                          config=config or {})], operation_timeout=15)
        f[name].result(timeout=20)
        self.wait_for(lambda md: full_isr(md, name, partitions, replication_factor),
                      f"{name} to have leaders and full ISRs", topic=name)

    def leaders(self, topic, md=None):
        md = md or self.metadata(topic)
        return {p: pm.leader for p, pm in md.topics[topic].partitions.items()}

    def cleanup(self):
        for b in self.nodes.values():
            if b.alive():
                print(f"--- node {b.bootstrap} log tail ---\n{b.log_tail()}")
            b.cleanup()


def quorum_leader(port):
    """The metadata quorum's leader (the active controller) per DescribeQuorum
    v0 sent to the broker on `port` (forwarded to the active controller);
    -1 when none answers."""
    name = b"__cluster_metadata"
    body = (b"\x02" + bytes([len(name) + 1]) + name + b"\x02" + struct.pack(">i", 0)
            + b"\x00\x00\x00")
    header = struct.pack(">hhih", 55, 0, 9, 3) + b"raw" + b"\x00"
    payload = header + body
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(struct.pack(">i", len(payload)) + payload)
            r = read_frame(s, timeout=15)
    except OSError:
        return -1
    # correlation id, header tags, error code, topics, name, partitions,
    # partition index, partition error code, leader id.
    error = struct.unpack(">h", r[5:7])[0]
    if error != 0:
        return -1
    at = 7 + 1 + 1 + len(name) + 1 + 4
    if struct.unpack(">h", r[at:at + 2])[0] != 0:
        return -1
    return struct.unpack(">i", r[at + 2:at + 6])[0]


def full_isr(md, topic, partitions, replication_factor):
    t = md.topics.get(topic)
    if t is None or t.error is not None or len(t.partitions) != partitions:
        return False
    return all(p.leader >= 0 and len(p.isrs) == replication_factor
               for p in t.partitions.values())


def describe(md):
    if not hasattr(md, "topics"):
        return repr(md)
    parts = []
    for name, t in sorted(md.topics.items()):
        if name.startswith("__"):
            continue
        for i, p in sorted(t.partitions.items()):
            parts.append(f"{name}-{i}: leader {p.leader} replicas {p.replicas} isr {p.isrs}")
    return f"brokers {sorted(md.brokers)} controller {md.controller_id}; " + "; ".join(parts)


@pytest.fixture
def cluster_factory(tmp_path):
    clusters = []

    def make(size=3, cores=1, config=None):
        c = Cluster(tmp_path, size, cores, config)
        clusters.append(c)
        return c.start()

    yield make
    for c in clusters:
        c.cleanup()


@pytest.fixture
def broker(broker_factory):
    return broker_factory()


def create_topic(bootstrap, name, partitions=1, config=None):
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1,
                                            config=config or {})], operation_timeout=10)
    for f in futures.values():
        f.result(timeout=15)


def frame(api_key, version, correlation_id, body=b"", client_id=b"raw", flexible=False):
    """A request frame with a v1 header, or v2 (an empty tagged-field
    section after the client id) when `flexible`."""
    header = struct.pack(">hhih", api_key, version, correlation_id, len(client_id)) + client_id
    if flexible:
        header += b"\x00"
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def assert_closed(sock):
    """The broker closes `sock` (after a request it refuses)."""
    sock.settimeout(5)
    try:
        data = sock.recv(1024)
    except ConnectionResetError:
        return
    assert data == b"", f"expected the broker to close the connection, got {data!r}"


def write_some(bootstrap, topic, n, start=0):
    """Produces values v{start}..v{start+n-1} with acks=all."""
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for i in range(start, start + n):
        p.produce(topic, value=f"v{i}".encode())
    assert p.flush(10) == 0


def read_frame(sock, timeout=5):
    sock.settimeout(timeout)
    size = struct.unpack(">i", recv_exact(sock, 4))[0]
    return recv_exact(sock, size)


def recv_exact(sock, n):
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


def kafka_request(port, request, response_class, version, correlation_id=1):
    """Sends one request built with kafka-python's protocol classes (e.g.
    `MetadataRequest[5](...)`) on a fresh connection and decodes the answer."""
    request.with_header(correlation_id=correlation_id, client_id="raw")
    data = request.encode(version=version, header=True, framed=True)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        body = read_frame(s, timeout=10)
    return response_class.decode(body, version=version, header=True)


def record_batch(value):
    """One v2 record batch holding `value`, built by kafka-python."""
    from kafka.record.memory_records import MemoryRecordsBuilder
    b = MemoryRecordsBuilder(magic=2, compression_type=0, batch_size=1 << 20)
    b.append(timestamp=int(time.time() * 1000), key=None, value=value)
    b.close()
    return bytes(b.buffer())


def partition_errors(port, topic, partitions, produce_to=None):
    """Error code per partition of `topic` in Metadata (v5), ListOffsets (v1),
    OffsetForLeaderEpoch (v2), Fetch (v4) and Produce (v3, one record to each
    partition of `produce_to`, all by default), sent as raw frames built with
    kafka-python's protocol classes; plus Metadata's offline replicas."""
    from kafka.protocol.consumer.fetch import FetchRequest, FetchResponse
    from kafka.protocol.consumer.offsets import (ListOffsetsRequest, ListOffsetsResponse,
                                                 OffsetForLeaderEpochRequest,
                                                 OffsetForLeaderEpochResponse)
    from kafka.protocol.metadata import MetadataRequest, MetadataResponse
    from kafka.protocol.producer.produce import ProduceRequest, ProduceResponse
    parts = list(range(partitions))
    produce_to = parts if produce_to is None else produce_to
    md = kafka_request(port, MetadataRequest[5](
        topics=[MetadataRequest.MetadataRequestTopic(name=topic)],
        allow_auto_topic_creation=False), MetadataResponse, 5)
    md_parts = {p.partition_index: p for p in md.topics[0].partitions}
    lo = kafka_request(port, ListOffsetsRequest[1](replica_id=-1, topics=[
        ListOffsetsRequest.ListOffsetsTopic(name=topic, partitions=[
            ListOffsetsRequest.ListOffsetsTopic.ListOffsetsPartition(partition_index=p, timestamp=-1)
            for p in parts])]), ListOffsetsResponse, 1)
    ep = kafka_request(port, OffsetForLeaderEpochRequest[2](topics=[
        OffsetForLeaderEpochRequest.OffsetForLeaderTopic(topic=topic, partitions=[
            OffsetForLeaderEpochRequest.OffsetForLeaderTopic.OffsetForLeaderPartition(
                partition=p, current_leader_epoch=-1, leader_epoch=0) for p in parts])]),
        OffsetForLeaderEpochResponse, 2)
    fe = kafka_request(port, FetchRequest[4](
        replica_id=-1, max_wait_ms=100, min_bytes=1, max_bytes=1 << 20, isolation_level=0,
        topics=[FetchRequest.FetchTopic(topic=topic, partitions=[
            FetchRequest.FetchTopic.FetchPartition(partition=p, fetch_offset=0,
                                                   partition_max_bytes=1 << 20)
            for p in parts])]), FetchResponse, 4)
    errors = {
        "metadata": {p: md_parts[p].error_code for p in parts},
        "offline": {p: list(md_parts[p].offline_replicas) for p in parts},
        "list_offsets": {p.partition_index: p.error_code for p in lo.topics[0].partitions},
        "leader_epoch": {p.partition: p.error_code for p in ep.topics[0].partitions},
        "fetch": {p.partition_index: p.error_code for p in fe.responses[0].partitions},
    }
    if produce_to:
        pr = kafka_request(port, ProduceRequest[3](acks=-1, timeout_ms=10000, topic_data=[
            ProduceRequest.TopicProduceData(name=topic, partition_data=[
                ProduceRequest.TopicProduceData.PartitionProduceData(
                    index=p, records=record_batch(b"raw-%d" % p)) for p in produce_to])]),
            ProduceResponse, 3)
        errors["produce"] = {p.index: p.error_code for p in pr.responses[0].partition_responses}
    return errors


def api_versions(port, version=0):
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(frame(18, version, 7))
        return read_frame(s)


def first_consume_error(bootstrap, topic, partition, offset, timeout=15):
    """Reads from `offset` with auto.offset.reset=error and returns the first
    error the consumer reports (None if none within `timeout`)."""
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "first-error",
                  "auto.offset.reset": "error"})
    c.assign([TopicPartition(topic, partition, offset)])
    err = None
    deadline = time.time() + timeout
    while err is None and time.time() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error():
            err = m.error()
    c.close()
    return err


def consume_all(bootstrap, topic, partitions, expected, timeout=30, extra=None):
    """Reads from offset 0 of every partition until `expected` records or timeout."""
    from confluent_kafka import Consumer, TopicPartition
    conf = {"bootstrap.servers": bootstrap, "group.id": "verify", "enable.auto.commit": False,
            "fetch.message.max.bytes": 4 << 20, "receive.message.max.bytes": 64 << 20}
    conf.update(extra or {})
    c = Consumer(conf)
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out = []
    deadline = time.time() + timeout
    while len(out) < expected and time.time() < deadline:
        for m in c.consume(1000, 0.5):
            if m.error():
                raise AssertionError(f"consume error: {m.error()}")
            out.append(m)
    c.close()
    return out
