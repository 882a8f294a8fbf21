"""Consumer group state as Kafka reports it: a group whose last member
leaves is Empty at once (so an offset reset can follow straight away, with
Kafka's own tool and with kafkajs), an Empty group comes back Empty after a
restart (the empty-group record is stored), a deleted group stays deleted,
and a member that expired does not come back as a ghost."""

import json
import signal
import subprocess
import sys
import time

from confluent_kafka import ConsumerGroupState, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from conftest import create_topic
from node_clients import run_node
from test_groups import MEMBER_SCRIPT, consumer, fill, poll_all
from test_kafka_tools import tool

GROUP_TOOL = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"


def describe(admin, group):
    [desc] = [f.result(10) for f in admin.describe_consumer_groups([group]).values()]
    return desc


def committed(admin, group, topic, partitions):
    f = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(
        group, [TopicPartition(topic, p) for p in range(partitions)])])
    [res] = [x.result(10) for x in f.values()]
    return {tp.partition: tp.offset for tp in res.topic_partitions}


def consume_and_commit(bootstrap, group, topic, n):
    c = consumer(bootstrap, group)
    c.subscribe([topic])
    got = poll_all([c], lambda r: len(r[0]) >= n)
    assert len(got[0]) >= n
    c.commit(asynchronous=False)
    return c


def test_last_member_leaving_makes_the_group_empty_at_once(broker):
    create_topic(broker.bootstrap, "leave", 2)
    fill(broker.bootstrap, "leave", 20, 2)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    c = consume_and_commit(broker.bootstrap, "leavers", "leave", 20)
    assert describe(admin, "leavers").state == ConsumerGroupState.STABLE
    c.close()  # LeaveGroup
    # No wait: Kafka reports Empty as soon as the last member left.
    desc = describe(admin, "leavers")
    assert desc.state == ConsumerGroupState.EMPTY, desc.state
    assert desc.members == []
    # Kafka's reset-offsets refuses unless the group is Empty (or Dead).
    out = tool(GROUP_TOOL, "--bootstrap-server", broker.bootstrap, "--group", "leavers",
               "--reset-offsets", "--to-earliest", "--topic", "leave", "--execute")
    rows = [l.split() for l in out.splitlines() if l.startswith("leavers")]
    assert sorted((r[1], r[2], r[3]) for r in rows) == [("leave", "0", "0"), ("leave", "1", "0")], out
    assert committed(admin, "leavers", "leave", 2) == {0: 0, 1: 0}


KAFKAJS_RESET = r"""
const { Kafka, logLevel } = require('kafkajs')
const [broker, topic, groupId] = process.argv.slice(1)
;(async () => {
  const kafka = new Kafka({ brokers: [broker], logLevel: logLevel.NOTHING })
  const admin = kafka.admin()
  await admin.connect()
  const consumer = kafka.consumer({ groupId, sessionTimeout: 6000 })
  await consumer.connect()
  await consumer.subscribe({ topic, fromBeginning: true })
  let seen = 0
  await new Promise(resolve => consumer.run({ eachMessage: async () => { if (++seen >= 10) resolve() } }))
  await consumer.disconnect()  // LeaveGroup; the admin calls follow at once
  await admin.setOffsets({ groupId, topic, partitions: [{ partition: 0, offset: '3' }] })
  await admin.resetOffsets({ groupId, topic, earliest: true })
  const offsets = await admin.fetchOffsets({ groupId, topics: [topic] })
  console.log(JSON.stringify(offsets))
  await admin.disconnect()
})().catch(e => { console.error(`${e.name}: ${e.message}`); process.exit(1) })
"""


def test_kafkajs_set_then_reset_offsets_right_after_leaving(broker):
    create_topic(broker.bootstrap, "jsreset", 1)
    fill(broker.bootstrap, "jsreset", 10, 1)
    out = run_node(KAFKAJS_RESET, broker.bootstrap, "jsreset", "js-resetters")
    assert out.returncode == 0, out.stderr
    [topic] = json.loads(out.stdout.strip().splitlines()[-1])
    # kafkajs commits -2 for "earliest" and resolves it when a consumer starts.
    assert [p["offset"] for p in topic["partitions"]] == ["-2"], topic


def test_empty_group_comes_back_empty_after_restart(broker):
    create_topic(broker.bootstrap, "emptied", 2)
    fill(broker.bootstrap, "emptied", 10, 2)
    c = consume_and_commit(broker.bootstrap, "emptied-g", "emptied", 10)
    c.close()
    broker.restart()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    desc = describe(admin, "emptied-g")
    assert desc.state == ConsumerGroupState.EMPTY, desc.state
    assert desc.members == []
    assert committed(admin, "emptied-g", "emptied", 2) == {0: 5, 1: 5}
    listed = {g.group_id: g.state for g in admin.list_consumer_groups().result(10).valid}
    assert listed.get("emptied-g") == ConsumerGroupState.EMPTY
    # And it takes a new member at once.
    c = consumer(broker.bootstrap, "emptied-g")
    c.subscribe(["emptied"])
    poll_all([c], lambda r: bool(c.assignment()), timeout=20)
    assert {tp.partition for tp in c.assignment()} == {0, 1}
    c.close()


def test_deleted_group_stays_deleted_after_restart(broker):
    create_topic(broker.bootstrap, "deleted", 1)
    fill(broker.bootstrap, "deleted", 5, 1)
    c = consume_and_commit(broker.bootstrap, "deleted-g", "deleted", 5)
    c.close()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    list(admin.delete_consumer_groups(["deleted-g"]).values())[0].result(10)
    broker.restart()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    listed = {g.group_id for g in admin.list_consumer_groups().result(10).valid}
    assert "deleted-g" not in listed
    assert describe(admin, "deleted-g").state == ConsumerGroupState.DEAD
    assert committed(admin, "deleted-g", "deleted", 1) == {0: -1001}  # no committed offset
    out = tool(GROUP_TOOL, "--bootstrap-server", broker.bootstrap, "--list")
    assert "deleted-g" not in out.split()


def test_expired_member_does_not_come_back_after_restart(broker):
    create_topic(broker.bootstrap, "ghosts", 2)
    proc = subprocess.Popen([sys.executable, "-c", MEMBER_SCRIPT, broker.bootstrap, "ghost-g", "ghosts"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "assigned"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        deadline = time.time() + 30
        while time.time() < deadline and describe(admin, "ghost-g").state != ConsumerGroupState.EMPTY:
            time.sleep(0.2)
        assert describe(admin, "ghost-g").state == ConsumerGroupState.EMPTY
    finally:
        proc.kill()
    broker.restart()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    desc = describe(admin, "ghost-g")
    assert desc.state == ConsumerGroupState.EMPTY, desc.state
    assert desc.members == []
