"""Partition replication across a 3-node cluster on loopback: nothing
acknowledged lost or duplicated when a leader is killed under an idempotent
acks=all producer, a returning leader's unreplicated acks=1 tail truncated,
min.insync.replicas refusals, a full-cluster restart, replicas' logs equal
byte for byte, and Kafka's verifiable producer and consumer."""

import json
import signal
import struct
import subprocess
import threading
import time
from pathlib import Path

from confluent_kafka import Producer

from conftest import ROOT, consume_all, kafka_request, quorum_leader, record_batch

LIB = str(ROOT / ".cache" / "kafka" / "lib-4.1.1" / "*")
NOT_ENOUGH_REPLICAS = 19
NOT_ENOUGH_REPLICAS_AFTER_APPEND = 20


def batches(data_dir, topic, partition):
    """Every record batch of a replica's log, as stored (bytes)."""
    out = []
    part = Path(data_dir) / f"{topic}-{partition}"
    for seg in sorted(part.glob("*.log")):
        data = seg.read_bytes()
        at = 0
        while at + 12 <= len(data):
            length = struct.unpack(">i", data[at + 8:at + 12])[0]
            if length <= 0 or at + 12 + length > len(data):
                break
            out.append(data[at:at + 12 + length])
            at += 12 + length
    return out


def assert_replicas_equal(c, topic, partitions):
    for p in range(partitions):
        logs = {n: batches(b.data_dir, topic, p) for n, b in c.nodes.items()}
        first = next(iter(logs.values()))
        assert first, f"{topic}-{p} is empty"
        for n, log in logs.items():
            assert log == first, (f"{topic}-{p}: node {n} holds {len(log)} batches, "
                                  f"another {len(first)}")


def raw_produce(port, topic, partition, acks, value=b"raw"):
    from kafka.protocol.producer.produce import ProduceRequest, ProduceResponse
    r = kafka_request(port, ProduceRequest[3](acks=acks, timeout_ms=5000, topic_data=[
        ProduceRequest.TopicProduceData(name=topic, partition_data=[
            ProduceRequest.TopicProduceData.PartitionProduceData(
                index=partition, records=record_batch(value))])]), ProduceResponse, 3)
    return r.responses[0].partition_responses[0].error_code


class Acked:
    def __init__(self):
        self.values, self.errors = [], []

    def __call__(self, err, msg):
        if err is None:
            self.values.append(msg.value())
        else:
            self.errors.append(err)


def test_leader_killed_under_idempotent_acks_all_producer_loses_and_duplicates_nothing(
        cluster_factory):
    c = cluster_factory()
    c.create_topic("durable", partitions=3, replication_factor=3,
                   config={"min.insync.replicas": "2"})
    active = quorum_leader(c.nodes[1].port)
    victim = next(b for b in c.leaders("durable").values() if b != active)
    acked = Acked()
    p = Producer({"bootstrap.servers": c.bootstrap, "acks": "all", "enable.idempotence": True,
                  "linger.ms": 2, "message.timeout.ms": 120000})
    total = 20000
    killer = threading.Timer(1.5, c.nodes[victim].kill)
    killer.start()
    for i in range(total):
        while True:
            try:
                p.produce("durable", value=b"%08d" % i, on_delivery=acked)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
        if i % 1000 == 0:
            time.sleep(0.2)
    assert p.flush(150) == 0
    killer.join()
    assert acked.errors == [], acked.errors[:3]
    assert len(acked.values) == total

    c.nodes[victim].start()
    c.wait_for(lambda md: all(len(p.isrs) == 3 for p in md.topics["durable"].partitions.values()),
               "the killed broker back in every ISR", timeout=60, topic="durable")
    got = [m.value() for m in consume_all(c.bootstrap, "durable", 3, total + 1, timeout=40)]
    assert len(got) == len(set(got)), "duplicates after the failover"
    assert set(got) == set(acked.values)

    for b in c.nodes.values():
        b.stop()
    assert_replicas_equal(c, "durable", 3)


def test_returning_leader_truncates_its_unreplicated_acks1_tail(cluster_factory):
    c = cluster_factory()
    c.create_topic("tail", partitions=1, replication_factor=3)
    acked = Acked()
    p = Producer({"bootstrap.servers": c.bootstrap, "acks": "all"})
    for i in range(100):
        p.produce("tail", value=b"base-%d" % i, on_delivery=acked)
    assert p.flush(30) == 0 and len(acked.values) == 100

    leader = c.leaders("tail")[0]
    followers = [n for n in c.nodes if n != leader]
    for f in followers:
        c.nodes[f].proc.send_signal(signal.SIGSTOP)
    try:
        for i in range(50):
            assert raw_produce(c.nodes[leader].port, "tail", 0, 1, b"lost-%d" % i) == 0
    finally:
        c.nodes[leader].kill()
        for f in followers:
            c.nodes[f].proc.send_signal(signal.SIGCONT)

    md = c.wait_for(lambda md: c.leaders("tail", md)[0] in followers, "a new leader", timeout=40,
                    topic="tail")
    new_leader = c.leaders("tail", md)[0]
    for i in range(20):
        assert raw_produce(c.nodes[new_leader].port, "tail", 0, -1, b"new-%d" % i) == 0

    c.nodes[leader].start()
    c.wait_for(lambda md: len(md.topics["tail"].partitions[0].isrs) == 3,
               "the old leader back in the ISR", timeout=60, topic="tail")
    got = [m.value() for m in consume_all(c.bootstrap, "tail", 1, 171, timeout=20)]
    # A follower's fetch already in flight when it was stopped may carry the
    # first acks=1 batch; the new leader keeps what it has, and the old
    # leader's tail beyond it is gone.
    kept = [v for v in got if v.startswith(b"lost-")]
    assert kept == [b"lost-%d" % i for i in range(len(kept))] and len(kept) < 50, kept
    assert len(got) == 120 + len(kept)
    for b in c.nodes.values():
        b.stop()
    assert_replicas_equal(c, "tail", 1)
    on_disk = b"".join(batches(c.nodes[leader].data_dir, "tail", 0))
    assert b"lost-%d" % len(kept) not in on_disk


def test_min_insync_replicas_refusals(cluster_factory):
    c = cluster_factory(config="replica_lag_time_max_ms = 2000\n")
    c.create_topic("single", partitions=1, replication_factor=1,
                   config={"min.insync.replicas": "2"})
    port = c.nodes[c.leaders("single")[0]].port
    assert raw_produce(port, "single", 0, -1) == NOT_ENOUGH_REPLICAS
    assert raw_produce(port, "single", 0, 1) == 0

    c.create_topic("strict", partitions=1, replication_factor=3,
                   config={"min.insync.replicas": "3"})
    leader = c.leaders("strict")[0]
    assert raw_produce(c.nodes[leader].port, "strict", 0, -1) == 0
    follower = next(n for n in c.nodes if n != leader and n != quorum_leader(c.nodes[leader].port))
    c.nodes[follower].proc.send_signal(signal.SIGSTOP)
    try:
        # acks=all waits for the stopped follower until the leader drops it
        # from the ISR: then the append is refused after the fact.
        code = raw_produce(c.nodes[leader].port, "strict", 0, -1)
        assert code in (NOT_ENOUGH_REPLICAS_AFTER_APPEND, 7), code  # 7: request timed out
        # The leader's own view: another broker may apply the change first.
        c.wait_for(lambda md: len(md.topics["strict"].partitions[0].isrs) == 2,
                   "the ISR to shrink", timeout=30, topic="strict", via=leader)
        assert raw_produce(c.nodes[leader].port, "strict", 0, -1) == NOT_ENOUGH_REPLICAS
        assert raw_produce(c.nodes[leader].port, "strict", 0, 1) == 0
    finally:
        c.nodes[follower].proc.send_signal(signal.SIGCONT)
    c.wait_for(lambda md: len(md.topics["strict"].partitions[0].isrs) == 3,
               "the follower back in the ISR", timeout=30, topic="strict", via=leader)
    assert raw_produce(c.nodes[leader].port, "strict", 0, -1) == 0


def test_full_cluster_restart_keeps_data_and_group_offsets(cluster_factory):
    from confluent_kafka import Consumer, TopicPartition
    c = cluster_factory()
    c.create_topic("restart", partitions=3, replication_factor=3)
    acked = Acked()
    p = Producer({"bootstrap.servers": c.bootstrap, "acks": "all"})
    for i in range(3000):
        p.produce("restart", value=b"r-%d" % i, on_delivery=acked)
    assert p.flush(60) == 0 and len(acked.values) == 3000
    cons = Consumer({"bootstrap.servers": c.bootstrap, "group.id": "keep",
                     "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    cons.subscribe(["restart"])
    seen = 0
    deadline = time.time() + 60
    while seen < 1000 and time.time() < deadline:
        seen += len([m for m in cons.consume(100, 0.5) if not m.error()])
    cons.commit(asynchronous=False)
    committed = {tp.partition: tp.offset for tp in
                 cons.committed([TopicPartition("restart", i) for i in range(3)], timeout=10)}
    cons.close()

    for b in c.nodes.values():
        b.stop()
    c.start()
    c.wait_for(lambda md: all(len(p.isrs) == 3 for p in md.topics["restart"].partitions.values()),
               "full ISRs after the restart", timeout=60, topic="restart")
    got = consume_all(c.bootstrap, "restart", 3, 3000)
    assert sorted(m.value() for m in got) == sorted(acked.values)
    cons = Consumer({"bootstrap.servers": c.bootstrap, "group.id": "keep"})
    deadline = time.time() + 30
    while True:
        try:
            after = {tp.partition: tp.offset for tp in
                     cons.committed([TopicPartition("restart", i) for i in range(3)], timeout=10)}
            break
        except Exception:  # noqa: BLE001 - the coordinator may still be loading
            if time.time() > deadline:
                raise
            time.sleep(0.5)
    cons.close()
    assert after == committed


def test_kafka_verifiable_producer_and_consumer_against_the_cluster(cluster_factory):
    c = cluster_factory()
    c.create_topic("verifiable", partitions=3, replication_factor=3,
                   config={"min.insync.replicas": "2"})
    out = subprocess.run(["java", "-cp", LIB, "org.apache.kafka.tools.VerifiableProducer",
                          "--bootstrap-server", c.bootstrap, "--topic", "verifiable",
                          "--max-messages", "2000", "--acks", "-1"],
                         capture_output=True, text=True, timeout=120)
    events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    done = [e for e in events if e["name"] == "tool_data"]
    assert done and done[-1]["acked"] == 2000 and done[-1]["sent"] == 2000, out.stdout[-2000:]

    out = subprocess.run(["java", "-cp", LIB, "org.apache.kafka.tools.VerifiableConsumer",
                          "--bootstrap-server", c.bootstrap, "--topic", "verifiable",
                          "--group-id", "verifiers", "--max-messages", "2000",
                          "--reset-policy", "earliest"],
                         capture_output=True, text=True, timeout=120)
    events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    consumed = sum(e["count"] for e in events if e["name"] == "records_consumed")
    commits = [e for e in events if e["name"] == "offsets_committed"]
    assert consumed == 2000, out.stdout[-2000:]
    assert commits and all(e["success"] for e in commits), commits[-3:]
