"""Consumer groups with real clients: balanced assignment, member expiry,
commits, resume after a broker crash, lag reporting, group admin."""

import re
import signal
import subprocess
import sys
import textwrap
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from conftest import BINARY, create_topic


def fill(bootstrap, topic, n, partitions):
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(n):
        p.produce(topic, key=str(i).encode(), value=f"m{i}".encode(), partition=i % partitions)
    assert p.flush(30) == 0


def consumer(bootstrap, group, **extra):
    conf = {"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000, "heartbeat.interval.ms": 500, "enable.auto.commit": False}
    conf.update(extra)
    return Consumer(conf)


def poll_all(consumers, until, timeout=30):
    """Polls every consumer round-robin until `until(received)` or timeout."""
    received = [[] for _ in consumers]
    deadline = time.time() + timeout
    while time.time() < deadline and not until(received):
        for i, c in enumerate(consumers):
            m = c.poll(0.05)
            if m is not None and not m.error():
                received[i].append(m)
    return received


def test_members_split_partitions_without_overlap(broker):
    create_topic(broker.bootstrap, "split", 6)
    fill(broker.bootstrap, "split", 600, 6)
    cs = [consumer(broker.bootstrap, "splitters") for _ in range(3)]
    for c in cs:
        c.subscribe(["split"])
    got = poll_all(cs, lambda r: sum(map(len, r)) >= 600)
    assignments = [{tp.partition for tp in c.assignment()} for c in cs]
    for c in cs:
        c.close()
    assert sum(map(len, got)) == 600
    values = sorted(m.value() for r in got for m in r)
    assert values == sorted(f"m{i}".encode() for i in range(600))
    assert set().union(*assignments) == set(range(6))
    assert sum(len(a) for a in assignments) == 6, assignments
    for i, r in enumerate(got):
        assert {m.partition() for m in r} <= assignments[i]


MEMBER_SCRIPT = textwrap.dedent("""
    import sys, time
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": sys.argv[2],
                  "session.timeout.ms": 6000, "heartbeat.interval.ms": 500,
                  "auto.offset.reset": "earliest"})
    c.subscribe([sys.argv[3]])
    deadline = time.time() + 60
    while time.time() < deadline:
        c.poll(0.1)
        if c.assignment():
            print("assigned", flush=True)
""")


def test_killed_member_is_expired_and_its_partitions_reassigned(broker):
    create_topic(broker.bootstrap, "expiry", 4)
    proc = subprocess.Popen([sys.executable, "-c", MEMBER_SCRIPT, broker.bootstrap, "expirers", "expiry"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "assigned"
        survivor = consumer(broker.bootstrap, "expirers")
        survivor.subscribe(["expiry"])
        deadline = time.time() + 30
        while time.time() < deadline and len(survivor.assignment()) != 2:
            survivor.poll(0.1)
        assert len(survivor.assignment()) == 2, "two members share four partitions"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed_at = time.time()
        while time.time() < killed_at + 30 and len(survivor.assignment()) != 4:
            survivor.poll(0.1)
        assert {tp.partition for tp in survivor.assignment()} == {0, 1, 2, 3}
        assert time.time() - killed_at >= 5, "reassigned only after the session timeout"
        survivor.close()
    finally:
        proc.kill()


def test_commit_sync_async_and_auto(broker):
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTP
    create_topic(broker.bootstrap, "commits", 1)
    fill(broker.bootstrap, "commits", 100, 1)
    tp = KTP("commits", 0)

    c = KafkaConsumer("commits", bootstrap_servers=broker.bootstrap, group_id="sync",
                      auto_offset_reset="earliest", enable_auto_commit=False)
    n = 0
    while n < 40:
        n += sum(len(v) for v in c.poll(1000, max_records=40 - n).values())
    c.commit()
    assert c.committed(tp) == 40
    c.close()

    c = KafkaConsumer("commits", bootstrap_servers=broker.bootstrap, group_id="async",
                      auto_offset_reset="earliest", enable_auto_commit=False)
    n = 0
    while n < 60:
        n += sum(len(v) for v in c.poll(1000, max_records=60 - n).values())
    done = []
    c.commit_async(callback=lambda offsets, err: done.append(err))
    deadline = time.time() + 10
    while not done and time.time() < deadline:
        c.poll(100)
    assert done and not isinstance(done[0], Exception)
    assert c.committed(tp) == 60
    c.close()

    c = consumer(broker.bootstrap, "auto", **{"enable.auto.commit": True, "auto.commit.interval.ms": 200})
    c.subscribe(["commits"])
    got = poll_all([c], lambda r: len(r[0]) >= 100)
    assert len(got[0]) == 100
    deadline = time.time() + 10
    while time.time() < deadline:
        c.poll(0.1)
        [committed] = c.committed([TopicPartition("commits", 0)], timeout=5)
        if committed.offset == 100:
            break
    assert committed.offset == 100
    c.close()


def test_resume_from_committed_offsets_after_broker_sigkill(broker):
    create_topic(broker.bootstrap, "resume", 3)
    fill(broker.bootstrap, "resume", 900, 3)
    c = consumer(broker.bootstrap, "resumers")
    c.subscribe(["resume"])
    got = poll_all([c], lambda r: len(r[0]) >= 450)
    c.commit(asynchronous=False)
    last = {}
    for m in got[0]:
        last[m.partition()] = max(last.get(m.partition(), -1), m.offset())
    committed = {tp.partition: tp.offset for tp in c.committed([TopicPartition("resume", p) for p in range(3)], timeout=5)}
    assert all(committed[p] == last[p] + 1 for p in last)
    broker.kill()
    c.close()
    broker.start()
    c = consumer(broker.bootstrap, "resumers")
    c.subscribe(["resume"])
    rest = poll_all([c], lambda r: len(r[0]) >= 900 - len(got[0]), timeout=40)[0]
    c.close()
    first = {}
    for m in rest:
        first.setdefault(m.partition(), m.offset())
    for p, offset in committed.items():
        if offset < 300:  # partitions not finished resume exactly where committed
            assert first[p] == max(offset, 0), (p, first, committed)
    seen = {(m.partition(), m.offset()) for m in got[0] + rest}
    assert len(seen) == 900, "nothing skipped"


def test_groups_describe_reports_lag(broker):
    create_topic(broker.bootstrap, "lagging", 2)
    fill(broker.bootstrap, "lagging", 200, 2)
    c = consumer(broker.bootstrap, "laggards")
    c.assign([TopicPartition("lagging", 0, 0), TopicPartition("lagging", 1, 0)])
    c.commit(offsets=[TopicPartition("lagging", 0, 30), TopicPartition("lagging", 1, 75)], asynchronous=False)
    c.close()
    out = subprocess.run([str(BINARY), "groups", "describe", "laggards", "--bootstrap", broker.bootstrap],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    rows = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 6 and f[0] == "laggards" and f[1] == "lagging":
            rows[int(f[2])] = (int(f[3]), int(f[4]), int(f[5]))
    assert rows == {0: (30, 100, 70), 1: (75, 100, 25)}, out
    listing = subprocess.run([str(BINARY), "groups", "list", "--bootstrap", broker.bootstrap],
                             capture_output=True, text=True, check=True, timeout=30).stdout
    assert re.search(r"^laggards\s+Empty", listing, re.M), listing


def test_group_admin_list_describe_delete(broker):
    create_topic(broker.bootstrap, "admin", 2)
    fill(broker.bootstrap, "admin", 20, 2)
    c = consumer(broker.bootstrap, "admins")
    c.subscribe(["admin"])
    poll_all([c], lambda r: len(r[0]) >= 20)
    c.commit(asynchronous=False)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    listed = {g.group_id for g in admin.list_consumer_groups().result(10).valid}
    assert "admins" in listed
    [desc] = [f.result(10) for f in admin.describe_consumer_groups(["admins"]).values()]
    assert len(desc.members) == 1
    assert {tp.partition for tp in desc.members[0].assignment.topic_partitions} == {0, 1}
    # Deleting a group with members fails (NON_EMPTY_GROUP); after leaving it works.
    try:
        list(admin.delete_consumer_groups(["admins"]).values())[0].result(10)
        raise AssertionError("deleting a live group must fail")
    except KafkaException as e:
        assert e.args[0].code() == 68
    c.close()
    list(admin.delete_consumer_groups(["admins"]).values())[0].result(10)
    listed = {g.group_id for g in admin.list_consumer_groups().result(10).valid}
    assert "admins" not in listed


def test_static_member_rejoins_with_its_assignment(broker):
    create_topic(broker.bootstrap, "static", 4)
    conf = {"group.instance.id": "static-1"}
    a = consumer(broker.bootstrap, "statics", **conf)
    b = consumer(broker.bootstrap, "statics", **{"group.instance.id": "static-2"})
    a.subscribe(["static"])
    b.subscribe(["static"])
    deadline = time.time() + 30
    while time.time() < deadline and not (len(a.assignment()) == 2 and len(b.assignment()) == 2):
        a.poll(0.05)
        b.poll(0.05)
    before = {tp.partition for tp in a.assignment()}
    assert len(before) == 2
    a.close()  # static members do not leave the group on close
    a = consumer(broker.bootstrap, "statics", **conf)
    a.subscribe(["static"])
    deadline = time.time() + 30
    while time.time() < deadline and not a.assignment():
        a.poll(0.05)
        b.poll(0.05)
    assert {tp.partition for tp in a.assignment()} == before
    a.close()
    b.close()


def test_kcat_balanced_consumer(broker):
    create_topic(broker.bootstrap, "kcatg", 2)
    fill(broker.bootstrap, "kcatg", 50, 2)
    out = subprocess.run(["kcat", "-b", broker.bootstrap, "-G", "kcat-group", "-o", "beginning", "-e",
                          "-f", "%s\n", "kcatg"], capture_output=True, text=True, timeout=60).stdout
    assert sorted(out.split()) == sorted(f"m{i}" for i in range(50))
