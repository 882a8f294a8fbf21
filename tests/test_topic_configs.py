"""Topic configs as Kafka users set them (Kafka 4.1's kafka-configs and the
AdminClient): validated with Kafka's error codes, committed through the
controller, applied to a live topic without a restart, and shown by
DescribeConfigs with their sources."""

import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource,
                                   NewTopic)

from conftest import create_topic
from test_kafka_tools import LIB, tool

CONFIG_COMMAND = "kafka.admin.ConfigCommand"


def describe(bootstrap, topic):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    return admin.describe_configs([res])[res].result(10)


def incremental(bootstrap, topic, *entries):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    res = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=list(entries))
    return admin.incremental_alter_configs([res])[res].result(10)


def produce_one(bootstrap, topic, value, **produce_args):
    p = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 20_000_000,
                  "message.timeout.ms": 10_000})
    errors = []
    p.produce(topic, value=value, on_delivery=lambda err, msg: errors.append(err), **produce_args)
    p.flush(15)
    return errors[0] if errors else "not delivered"


def test_kafka_configs_alter_describe_and_live_effect(broker):
    create_topic(broker.bootstrap, "cfg", 1)
    b = ["--bootstrap-server", broker.bootstrap, "--entity-type", "topics", "--entity-name", "cfg"]
    tool(CONFIG_COMMAND, *b, "--alter", "--add-config", "max.message.bytes=50000,retention.ms=5000")
    out = tool(CONFIG_COMMAND, *b, "--describe")
    assert "max.message.bytes=50000" in out and "retention.ms=5000" in out, out
    entries = describe(broker.bootstrap, "cfg")
    assert entries["max.message.bytes"].value == "50000"
    assert entries["max.message.bytes"].source == 1  # DYNAMIC_TOPIC_CONFIG
    assert entries["segment.ms"].source == 5  # DEFAULT_CONFIG
    # --all lists every supported key.
    everything = tool(CONFIG_COMMAND, *b, "--describe", "--all")
    for key in ("cleanup.policy", "message.timestamp.type", "segment.bytes", "retention.bytes"):
        assert key + "=" in everything, everything

    # The change holds on the live topic: a 100 KB record is refused.
    err = produce_one(broker.bootstrap, "cfg", b"x" * 100_000)
    assert err is not None and err.name() == "MSG_SIZE_TOO_LARGE", err
    assert produce_one(broker.bootstrap, "cfg", b"x" * 1000) is None

    tool(CONFIG_COMMAND, *b, "--alter", "--delete-config", "max.message.bytes")
    assert describe(broker.bootstrap, "cfg")["max.message.bytes"].source != 1
    assert produce_one(broker.bootstrap, "cfg", b"x" * 100_000) is None


def test_invalid_and_unknown_configs_are_refused(broker):
    create_topic(broker.bootstrap, "strict", 1)
    for entry, why in [
        (ConfigEntry("no.such.config", "1", incremental_operation=AlterConfigOpType.SET), "unknown"),
        (ConfigEntry("retention.ms", "soon", incremental_operation=AlterConfigOpType.SET), "retention.ms"),
        (ConfigEntry("cleanup.policy", "compact,shred", incremental_operation=AlterConfigOpType.SET),
         "cleanup.policy"),
        (ConfigEntry("unclean.leader.election.enable", "true",
                     incremental_operation=AlterConfigOpType.SET), "unclean"),
    ]:
        with pytest.raises(KafkaException) as e:
            incremental(broker.bootstrap, "strict", entry)
        assert e.value.args[0].name() == "INVALID_CONFIG", e.value
        assert why in str(e.value), e.value
    # Nothing changed, and creation checks the same rules.
    assert describe(broker.bootstrap, "strict")["retention.ms"].source == 5
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    fut = admin.create_topics([NewTopic("bad", 1, 1, config={"segment.ms": "-5"})])["bad"]
    with pytest.raises(KafkaException) as e:
        fut.result(10)
    assert e.value.args[0].name() == "INVALID_CONFIG"


def test_log_append_time_and_timestamp_bounds(broker):
    create_topic(broker.bootstrap, "stamped", 1)
    incremental(broker.bootstrap, "stamped",
                ConfigEntry("message.timestamp.type", "LogAppendTime",
                            incremental_operation=AlterConfigOpType.SET))
    before = int(time.time() * 1000)
    p = Producer({"bootstrap.servers": broker.bootstrap})
    p.produce("stamped", value=b"old", timestamp=1_000_000)
    assert p.flush(10) == 0
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "ts"})
    c.assign([TopicPartition("stamped", 0, 0)])
    msg = None
    deadline = time.time() + 15
    while msg is None and time.time() < deadline:
        msg = c.poll(0.5)
    c.close()
    assert msg is not None and msg.error() is None
    kind, ts = msg.timestamp()
    assert kind == 2, "LogAppendTime"  # confluent_kafka.TIMESTAMP_LOG_APPEND_TIME
    assert before - 1000 <= ts <= int(time.time() * 1000) + 1000

    create_topic(broker.bootstrap, "bounded", 1)
    incremental(broker.bootstrap, "bounded",
                ConfigEntry("message.timestamp.before.max.ms", "60000",
                            incremental_operation=AlterConfigOpType.SET))
    now = int(time.time() * 1000)
    err = produce_one(broker.bootstrap, "bounded", b"v", timestamp=now - 3_600_000)
    assert err is not None and err.name() == "INVALID_TIMESTAMP", err
    err = produce_one(broker.bootstrap, "bounded", b"v", timestamp=now + 2 * 3_600_000)
    assert err is not None and err.name() == "INVALID_TIMESTAMP", err
    assert produce_one(broker.bootstrap, "bounded", b"v", timestamp=now) is None
