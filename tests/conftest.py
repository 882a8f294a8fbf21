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
BINARY = ROOT / "target" / "release" / "ringtail"
START_TIMEOUT_S = 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, data_dir, extra_args=(), cores=2):
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.data_dir = Path(data_dir)
        self.extra_args = list(extra_args)
        self.cores = cores
        self.proc = None
        self.log_path = self.data_dir.parent / f"broker-{self.port}.log"

    def start(self):
        args = [str(BINARY), "serve", "--listen", self.bootstrap, "--data-dir", str(self.data_dir),
                "--cores", str(self.cores)] + self.extra_args
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=self.log)
        deadline = time.time() + START_TIMEOUT_S
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
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(30)
        assert rc == 0, f"broker exited with {rc}:\n{self.log_tail()}"

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


def api_versions(port, version=0):
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(frame(18, version, 7))
        return read_frame(s)


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
