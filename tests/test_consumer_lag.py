"""`ringtail groups lag`: Burrow's evaluation of a real consumer group
(confluent_kafka) as it consumes (OK), stops committing while it still owns
its partitions (STALL, group ERR), leaves the group (STOP, group ERR) and
comes back (OK); against ringtail and against Apache Kafka."""

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from conftest import BINARY, ROOT, api_versions, create_topic, free_port

SAMPLES = 4
INTERVAL_MS = 250


def lag(bootstrap, group, *extra):
    out = subprocess.run([str(BINARY), "groups", "lag", group, "--bootstrap-server", bootstrap,
                          "--samples", str(SAMPLES), "--interval-ms", str(INTERVAL_MS), "--json",
                          *extra], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def produce(bootstrap, topic, n, partitions):
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(n):
        p.produce(topic, value=f"m{i}".encode(), partition=i % partitions)
    assert p.flush(30) == 0


def consume_and_commit(c, n, timeout=30):
    got = 0
    deadline = time.time() + timeout
    while got < n and time.time() < deadline:
        m = c.poll(0.2)
        if m is not None and not m.error():
            got += 1
    assert got == n, f"consumed {got} of {n}"
    c.commit(asynchronous=False)


def consumer(bootstrap, group):
    return Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                     "auto.offset.reset": "earliest", "enable.auto.commit": False,
                     "session.timeout.ms": 6000, "heartbeat.interval.ms": 500})


def statuses(body):
    return {(p["topic"], p["partition"]): p["status"] for p in body["status"]["partitions"]}


def drive_ok_err_ok(bootstrap, topic, group, partitions=2):
    """Consumes, stalls, leaves and returns; checks Burrow's statuses at each step."""
    produce(bootstrap, topic, 100, partitions)
    c = consumer(bootstrap, group)
    c.subscribe([topic])
    consume_and_commit(c, 100)

    body = lag(bootstrap, group)
    s = body["status"]
    assert body["error"] is False and body["message"] == "consumer status returned"
    assert (s["cluster"], s["group"], s["status"]) == ("local", group, "OK"), body
    assert s["totallag"] == 0 and s["partition_count"] == partitions and s["complete"] == 1.0
    p = s["partitions"][0]
    assert set(p) >= {"topic", "partition", "owner", "client_id", "status", "start", "end",
                      "current_lag", "complete"}
    assert set(p["end"]) == {"offset", "timestamp", "observedAt", "lag"}
    assert p["owner"], "a live member owns the partition"

    # The member stays in the group but stops committing while the log grows.
    c.pause(c.assignment())
    produce(bootstrap, topic, 50, partitions)
    body = lag(bootstrap, group)
    s = body["status"]
    assert s["status"] == "ERR", body
    assert set(statuses(body).values()) == {"STALL"}, body
    assert s["totallag"] == 50
    assert s["maxlag"]["current_lag"] == 25 and s["maxlag"]["status"] == "STALL"

    # The member leaves: nobody commits, the lag stays.
    c.close()
    body = lag(bootstrap, group)
    assert body["status"]["status"] == "ERR", body
    assert set(statuses(body).values()) == {"STOP"}, body
    assert all(p["owner"] == "" for p in body["status"]["partitions"])

    # A new member catches up and commits.
    c = consumer(bootstrap, group)
    c.subscribe([topic])
    consume_and_commit(c, 50)
    body = lag(bootstrap, group)
    assert body["status"]["status"] == "OK", body
    assert set(statuses(body).values()) == {"OK"}
    assert body["status"]["totallag"] == 0
    c.close()


def test_a_consumer_goes_ok_then_err_then_ok(broker):
    create_topic(broker.bootstrap, "lagged", 2)
    drive_ok_err_ok(broker.bootstrap, "lagged", "laggers")


def test_every_group_table_and_unknown_group(broker):
    create_topic(broker.bootstrap, "tabled", 1)
    produce(broker.bootstrap, "tabled", 10, 1)
    c = consumer(broker.bootstrap, "tablers")
    c.subscribe(["tabled"])
    consume_and_commit(c, 10)
    c.close()
    produce(broker.bootstrap, "tabled", 5, 1)
    out = subprocess.run([str(BINARY), "groups", "lag", "--bootstrap", broker.bootstrap,
                          "--samples", "3", "--interval-ms", "100"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Group tablers is ERR" in out.stdout, out.stdout
    row = [line for line in out.stdout.splitlines() if line.startswith("tabled")]
    assert row and row[0].split()[:6] == ["tabled", "0", "STOP", "10", "10", "5"], out.stdout
    missing = subprocess.run([str(BINARY), "groups", "lag", "nobody", "--bootstrap",
                              broker.bootstrap, "--samples", "2", "--interval-ms", "50"],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "group nobody not found" in missing.stderr
    bad = subprocess.run([str(BINARY), "groups", "lag", "--bootstrap", broker.bootstrap,
                          "--samples", "1"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--samples" in bad.stderr


def test_groups_on_a_three_node_cluster_are_sampled_from_their_coordinators(cluster_factory):
    c = cluster_factory()
    c.create_topic("spread", partitions=3, replication_factor=3)
    groups = [f"g{i}" for i in range(4)]
    produce(c.bootstrap, "spread", 30, 3)
    for g in groups:
        m = consumer(c.bootstrap, g)
        m.subscribe(["spread"])
        consume_and_commit(m, 30)
        m.close()
    first = c.nodes[1].bootstrap
    out = subprocess.run([str(BINARY), "groups", "lag", "--bootstrap", first, "--samples", "2",
                          "--interval-ms", "100", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    bodies = [json.loads(line) for line in out.stdout.splitlines()]
    seen = {b["status"]["group"]: b["status"] for b in bodies}
    for g in groups:
        assert seen[g]["status"] == "OK" and seen[g]["partition_count"] == 3, seen.get(g)


@pytest.fixture
def apache_kafka(tmp_path):
    lib = ROOT / ".cache" / "kafka" / "lib-4.1.1"
    if not lib.is_dir():
        pytest.skip("Kafka jars missing: run scripts/kafka fetch")
    port = free_port()
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port + 1), timeout=0.2):
                port = free_port()
        except OSError:
            break
    env = dict(os.environ, KAFKA_HEAP_OPTS="-Xms256m -Xmx512m")
    out = subprocess.run([str(ROOT / "scripts" / "kafka"), "start", str(port), str(tmp_path / "kafka")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.strip().splitlines()[-1])
    try:
        deadline = time.time() + 60
        while True:
            try:
                api_versions(port)
                break
            except OSError:
                if time.time() > deadline:
                    raise AssertionError(Path(tmp_path / "kafka" / "server.log").read_text()[-3000:])
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        os.kill(pid, signal.SIGKILL)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def test_the_same_rules_against_apache_kafka(apache_kafka):
    create_topic(apache_kafka, "lagged", 2)
    drive_ok_err_ok(apache_kafka, "lagged", "laggers")


def http_json(address, path):
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_brokers_own_monitor_serves_burrows_endpoints(broker_factory):
    b = broker_factory(config="[lag]\nsample_interval_ms = 200\nwindow_samples = 4\n")
    create_topic(b.bootstrap, "watched", 2)
    produce(b.bootstrap, "watched", 40, 2)
    c = consumer(b.bootstrap, "watchers")
    c.subscribe(["watched"])
    consume_and_commit(c, 40)

    def group_status():
        code, body = http_json(b.http, "/v3/kafka/local/consumer/watchers/lag")
        return code, body
    deadline = time.time() + 30
    code, body = group_status()
    while (code != 200 or body["status"]["status"] != "OK"
           or body["status"]["partition_count"] != 2) and time.time() < deadline:
        time.sleep(0.3)
        code, body = group_status()
    assert code == 200 and body["status"]["status"] == "OK", body
    assert body["status"]["partition_count"] == 2 and body["status"]["totallag"] == 0

    code, listed = http_json(b.http, "/v3/kafka/local/consumer")
    assert code == 200 and "watchers" in listed["consumers"], listed

    # Paused while the log grows: the monitor sees the lag stall.
    c.pause(c.assignment())
    produce(b.bootstrap, "watched", 20, 2)
    deadline = time.time() + 30
    code, body = group_status()
    while body["status"]["status"] != "ERR" and time.time() < deadline:
        time.sleep(0.3)
        code, body = group_status()
    assert body["status"]["status"] == "ERR" and body["status"]["totallag"] == 20, body
    c.close()

    import urllib.request
    with urllib.request.urlopen(f"http://{b.http}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert 'ringtail_consumer_group_status{group="watchers"} 3' in metrics, metrics[-3000:]
    assert "ringtail_disk_free_bytes " in metrics

    code, missing = http_json(b.http, "/v3/kafka/local/consumer/nobody/lag")
    assert code == 404 and missing["status"]["status"] == "NOTFOUND", missing
