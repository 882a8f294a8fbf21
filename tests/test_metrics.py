"""The HTTP listener: Prometheus /metrics (parsed with the prometheus_client
package's text parser) moving with real clients' traffic, /healthz and
/readyz, a 3-broker cluster's under-replicated partitions and active
controller, `--http-listen 0`, and hostile HTTP clients that must not hurt
the broker."""

import socket
import time
import urllib.error
import urllib.request

from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from conftest import Cluster, create_topic, kafka_request, quorum_leader, record_batch

UNKNOWN_TOPIC_OR_PARTITION = 3
# config.rs HTTP_MAX_CONNECTIONS and HTTP_REQUEST_TIMEOUT_MS.
HTTP_MAX_CONNECTIONS = 16
HTTP_REQUEST_TIMEOUT_S = 5


def get(addr, path, timeout=10):
    """(status, content type, body) of GET http://addr/path."""
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read().decode()


class Scrape:
    def __init__(self, addr):
        status, ctype, text = get(addr, "/metrics")
        assert status == 200, text
        assert ctype.startswith("text/plain; version=0.0.4"), ctype
        self.samples = [s for f in text_string_to_metric_families(text) for s in f.samples]

    def values(self, name, **labels):
        return [s.value for s in self.samples
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

    def total(self, name, **labels):
        return sum(self.values(name, **labels))


def produce(bootstrap, topic, values, partition=None):
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for v in values:
        if partition is None:
            p.produce(topic, value=v)
        else:
            p.produce(topic, value=v, partition=partition)
    assert p.flush(30) == 0


def consume_and_commit(bootstrap, topic, group, count):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    got, deadline = 0, time.time() + 30
    while got < count and time.time() < deadline:
        m = c.poll(1)
        if m is not None and not m.error():
            got += 1
    assert got == count, f"consumed {got} of {count}"
    c.commit(asynchronous=False)
    c.close()


def test_metrics_move_with_real_traffic(broker_factory):
    b = broker_factory()
    assert get(b.http, "/healthz")[0] == 200
    # The Kafka port answers once one shard listens; ready waits for all.
    deadline = time.time() + 10
    status, _, body = get(b.http, "/readyz")
    while status != 200 and time.time() < deadline:
        time.sleep(0.05)
        status, _, body = get(b.http, "/readyz")
    assert (status, body) == (200, "ready\n")
    before = Scrape(b.http)
    create_topic(b.bootstrap, "metered", partitions=2)
    values = [b"v%05d" % i + b"x" * 94 for i in range(200)]
    produce(b.bootstrap, "metered", values[:100], partition=0)
    produce(b.bootstrap, "metered", values[100:], partition=1)
    consume_and_commit(b.bootstrap, "metered", "metered-group", 200)
    produce(b.bootstrap, "metered", values[:50], partition=0)
    from kafka.protocol.producer.produce import ProduceRequest, ProduceResponse
    refused = kafka_request(b.port, ProduceRequest[3](acks=1, timeout_ms=5000, topic_data=[
        ProduceRequest.TopicProduceData(name="metered", partition_data=[
            ProduceRequest.TopicProduceData.PartitionProduceData(
                index=99, records=record_batch(b"nowhere"))])]), ProduceResponse, 3)
    assert refused.responses[0].partition_responses[0].error_code == UNKNOWN_TOPIC_OR_PARTITION
    after = Scrape(b.http)

    def grew(name, **labels):
        return after.total(name, **labels) - before.total(name, **labels)

    assert grew("ringtail_requests_total", api="Produce") >= 2
    assert grew("ringtail_requests_total", api="Fetch") >= 1
    assert grew("ringtail_requests_total", api="OffsetCommit") >= 1
    assert grew("ringtail_request_duration_seconds_count", api="Produce") >= 2
    assert grew("ringtail_request_errors_total", api="Produce",
                error="UNKNOWN_TOPIC_OR_PARTITION") == 1
    # Records are counted once each (idempotent producer: no duplicates).
    assert after.total("ringtail_produce_records_total", topic="metered") == 250
    assert after.total("ringtail_produce_batches_total", topic="metered") >= 2
    assert after.total("ringtail_topic_bytes_in_total", topic="metered") >= 250 * 100
    assert after.total("ringtail_topic_bytes_out_total", topic="metered") >= 200 * 100
    assert grew("ringtail_fsync_duration_seconds_count") >= 1
    assert grew("ringtail_direct_write_bytes_total") >= 250 * 100
    assert grew("ringtail_batch_cache_hits_total") >= 1
    assert grew("ringtail_connections_accepted_total") >= 3
    assert grew("ringtail_connections_closed_total") >= 3
    assert after.total("ringtail_shard_busy_seconds_total") > 0
    # Offsets per partition: 250 records over two partitions, all readable.
    assert after.total("ringtail_partition_log_end_offset", topic="metered") == 250
    assert after.total("ringtail_partition_high_watermark", topic="metered") == 250
    assert after.total("ringtail_partition_log_start_offset", topic="metered") == 0
    assert after.total("ringtail_partition_size_bytes", topic="metered") >= 250 * 100
    # The group committed 200 and 50 more arrived in partition 0.
    assert after.total("ringtail_consumer_group_committed_offset", group="metered-group") == 200
    assert after.values("ringtail_consumer_group_lag_messages", group="metered-group",
                        topic="metered", partition="0") == [50]
    assert after.values("ringtail_consumer_group_lag_messages", group="metered-group",
                        topic="metered", partition="1") == [0]
    assert after.values("ringtail_consumer_group_state", group="metered-group",
                        state="Empty") == [1]
    assert after.values("ringtail_active_controller") == [1]
    assert after.total("ringtail_under_replicated_partitions") == 0


def test_http_listen_0_disables_the_listener(broker_factory):
    b = broker_factory(["--http-listen", "0"])
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", b.http_port)) != 0, "something listens on the HTTP port"
    create_topic(b.bootstrap, "quiet")
    produce(b.bootstrap, "quiet", [b"still serving"])


def test_readyz_waits_for_registration_with_the_quorum(tmp_path):
    c = Cluster(tmp_path, size=3)
    try:
        lone = c.nodes[1]
        lone.spawn()
        # Alone, node 1 has no quorum: it serves HTTP but is not ready.
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                if get(lone.http, "/healthz", timeout=2)[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        assert get(lone.http, "/healthz")[0] == 200
        status, _, body = get(lone.http, "/readyz")
        assert status == 503 and body.startswith("not ready"), (status, body)
        for n in (2, 3):
            c.nodes[n].spawn()
        deadline = time.time() + 30
        while time.time() < deadline and get(lone.http, "/readyz")[0] != 200:
            time.sleep(0.2)
        assert get(lone.http, "/readyz")[0] == 200
    finally:
        c.cleanup()


def test_cluster_under_replicated_partitions_and_one_active_controller(cluster_factory):
    c = cluster_factory()
    c.create_topic("replicated", partitions=3, replication_factor=3)
    produce(c.bootstrap, "replicated", [b"r%d" % i for i in range(300)])
    scrapes = {n: Scrape(b.http) for n, b in c.nodes.items()}
    assert sum(s.total("ringtail_active_controller") for s in scrapes.values()) == 1
    active = quorum_leader(c.nodes[1].port)
    assert scrapes[active].values("ringtail_active_controller") == [1]
    assert sum(s.total("ringtail_under_replicated_partitions") for s in scrapes.values()) == 0
    # Each leader reports its two followers' lag, on every partition.
    lags = [v for s in scrapes.values()
            for v in s.values("ringtail_follower_lag_messages", topic="replicated")]
    assert len(lags) == 6 and all(v >= 0 for v in lags), lags

    victim = next(n for n in c.nodes if n != active)
    # Every partition with a replica on the victim (its own and
    # __consumer_offsets') becomes under-replicated on its leader.
    md = c.metadata()
    expected = sum(victim in p.replicas for t in md.topics.values()
                   for p in t.partitions.values())
    assert expected >= 3
    c.nodes[victim].kill()
    live = [n for n in c.nodes if n != victim]
    deadline, under = time.time() + 30, 0
    while time.time() < deadline:
        under = sum(Scrape(c.nodes[n].http).total("ringtail_under_replicated_partitions")
                    for n in live)
        if under == expected:
            break
        time.sleep(0.5)
    assert under == expected, f"{under} of {expected} under-replicated after killing {victim}"
    actives = [Scrape(c.nodes[n].http).total("ringtail_active_controller") for n in live]
    assert sorted(actives) == [0, 1]

    # Back: the leaders ask to take it into their ISRs again.
    expands_before = sum(Scrape(c.nodes[n].http).total("ringtail_isr_expands_total")
                         for n in live)
    c.nodes[victim].start()
    deadline = time.time() + 30
    while time.time() < deadline:
        scrapes = [Scrape(b.http) for b in c.nodes.values()]
        under = sum(s.total("ringtail_under_replicated_partitions") for s in scrapes)
        expands = sum(s.total("ringtail_isr_expands_total") for s in scrapes)
        if under == 0 and expands >= expands_before + expected:
            break
        time.sleep(0.5)
    assert under == 0 and expands - expands_before >= expected, (under, expands - expands_before)


def raw_http(addr, payload, timeout=10):
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(payload)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def test_hostile_http_clients_do_not_hurt_the_broker(broker_factory):
    b = broker_factory()
    create_topic(b.bootstrap, "sturdy")
    huge = b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    try:
        answer = raw_http(b.http, huge)
        assert answer.startswith(b"HTTP/1.1 431"), answer[:80]
    except (ConnectionResetError, BrokenPipeError):
        pass  # closed before the client finished sending: refused too
    assert raw_http(b.http, b"\x16\x03\x01\x02\x00garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert raw_http(b.http, b"DELETE /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405")
    assert raw_http(b.http, b"GET /nowhere HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404")
    head = raw_http(b.http, b"HEAD /healthz HTTP/1.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n"), head

    # Slow clients take every connection slot and send half a request line.
    host, port = b.http.rsplit(":", 1)
    slow = []
    for _ in range(HTTP_MAX_CONNECTIONS + 4):
        s = socket.create_connection((host, int(port)), timeout=30)
        s.sendall(b"GET /met")
        slow.append(s)
    started = time.time()
    produce(b.bootstrap, "sturdy", [b"during-%d" % i for i in range(100)])
    assert time.time() - started < HTTP_REQUEST_TIMEOUT_S, "produce waited on HTTP clients"
    # Each is dropped after the request timeout, and the listener serves again.
    status, _, _ = get(b.http, "/healthz", timeout=4 * HTTP_REQUEST_TIMEOUT_S)
    assert status == 200
    for s in slow[:HTTP_MAX_CONNECTIONS]:
        s.settimeout(3 * HTTP_REQUEST_TIMEOUT_S)
        answer = s.recv(1024)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer
        s.close()
    for s in slow[HTTP_MAX_CONNECTIONS:]:
        s.close()
    after = Scrape(b.http)
    assert after.total("ringtail_produce_records_total", topic="sturdy") == 100
    assert b.alive()
