"""Dynamic broker configs as Kafka operators set them (kafka-configs
--entity-type brokers, --entity-default or --entity-name ID): the topic
configs' broker-level defaults change live for every topic without an
override, are shown with their sources, survive a restart, and static keys
are refused with the reason."""

import time

import pytest
from confluent_kafka import Consumer, KafkaException, TIMESTAMP_LOG_APPEND_TIME
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from conftest import create_topic
from test_kafka_tools import tool
from test_topic_configs import CONFIG_COMMAND, describe, produce_one

DYNAMIC_BROKER = 2
DYNAMIC_DEFAULT_BROKER = 3


def brokers_args(bootstrap, *entity):
    return ["--bootstrap-server", bootstrap, "--entity-type", "brokers", *entity]


def alter_broker(bootstrap, name, *entries):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    res = ConfigResource(ConfigResource.Type.BROKER, name, incremental_configs=list(entries))
    return admin.incremental_alter_configs([res])[res].result(10)


def describe_broker(bootstrap, name):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    res = ConfigResource(ConfigResource.Type.BROKER, name)
    return admin.describe_configs([res])[res].result(10)


def test_cluster_default_changes_every_topic_live_and_survives_restart(broker):
    create_topic(broker.bootstrap, "plain", 1)
    create_topic(broker.bootstrap, "own", 1, config={"max.message.bytes": "200000"})
    default = brokers_args(broker.bootstrap, "--entity-default")
    assert produce_one(broker.bootstrap, "plain", b"x" * 100_000) is None

    tool(CONFIG_COMMAND, *default, "--alter", "--add-config", "message.max.bytes=50000")
    out = tool(CONFIG_COMMAND, *default, "--describe")
    assert "message.max.bytes=50000" in out and "DYNAMIC_DEFAULT_BROKER_CONFIG" in out, out
    entry = describe(broker.bootstrap, "plain")["max.message.bytes"]
    assert (entry.value, entry.source) == ("50000", DYNAMIC_DEFAULT_BROKER), entry
    assert [s.name for s in entry.synonyms.values()][0] == "message.max.bytes"

    # The live topic refuses what the new default forbids; its own override wins.
    err = produce_one(broker.bootstrap, "plain", b"x" * 100_000)
    assert err is not None and err.name() == "MSG_SIZE_TOO_LARGE", err
    assert produce_one(broker.bootstrap, "own", b"x" * 100_000) is None

    broker.restart()
    entry = describe(broker.bootstrap, "plain")["max.message.bytes"]
    assert (entry.value, entry.source) == ("50000", DYNAMIC_DEFAULT_BROKER), entry
    err = produce_one(broker.bootstrap, "plain", b"x" * 100_000)
    assert err is not None and err.name() == "MSG_SIZE_TOO_LARGE", err

    tool(CONFIG_COMMAND, *default, "--alter", "--delete-config", "message.max.bytes")
    assert describe(broker.bootstrap, "plain")["max.message.bytes"].source != DYNAMIC_DEFAULT_BROKER
    assert produce_one(broker.bootstrap, "plain", b"x" * 100_000) is None


def test_per_broker_value_wins_over_the_default(broker):
    create_topic(broker.bootstrap, "stamped", 1)
    own = brokers_args(broker.bootstrap, "--entity-name", "0")
    default = brokers_args(broker.bootstrap, "--entity-default")
    tool(CONFIG_COMMAND, *default, "--alter", "--add-config", "log.retention.ms=7000000")
    tool(CONFIG_COMMAND, *own, "--alter", "--add-config",
         "log.retention.ms=6000000,log.message.timestamp.type=LogAppendTime")
    out = tool(CONFIG_COMMAND, *own, "--describe")
    assert "log.retention.ms=6000000" in out and "DYNAMIC_BROKER_CONFIG" in out, out
    everything = tool(CONFIG_COMMAND, *own, "--describe", "--all")
    assert "log.segment.bytes=" in everything and "log.dirs=" in everything, everything

    entries = describe_broker(broker.bootstrap, "0")
    retention = entries["log.retention.ms"]
    assert (retention.value, retention.source) == ("6000000", DYNAMIC_BROKER)
    # Synonyms most specific first, as Kafka lists them.
    assert ("log.retention.ms=6000000 sensitive=false synonyms={"
            "DYNAMIC_BROKER_CONFIG:log.retention.ms=6000000, "
            "DYNAMIC_DEFAULT_BROKER_CONFIG:log.retention.ms=7000000, "
            "DEFAULT_CONFIG:log.retention.ms=604800000}") in everything, everything
    topic = describe(broker.bootstrap, "stamped")
    assert (topic["retention.ms"].value, topic["retention.ms"].source) == ("6000000", DYNAMIC_BROKER)

    # LogAppendTime from the broker's dynamic default reaches a consumer.
    before = int(time.time() * 1000)
    assert produce_one(broker.bootstrap, "stamped", b"v", timestamp=1_000) is None
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "stamped-reader",
                  "auto.offset.reset": "earliest"})
    c.subscribe(["stamped"])
    msg = None
    deadline = time.time() + 20
    while msg is None and time.time() < deadline:
        msg = c.poll(0.5)
    c.close()
    assert msg is not None and msg.error() is None
    kind, ts = msg.timestamp()
    assert kind == TIMESTAMP_LOG_APPEND_TIME and ts >= before, (kind, ts)


def test_static_keys_and_bad_values_are_refused(broker):
    for entry, why in [
        (ConfigEntry("log.dirs", "/elsewhere", incremental_operation=AlterConfigOpType.SET),
         "not a dynamic broker config"),
        (ConfigEntry("log.retention.ms", "-5", incremental_operation=AlterConfigOpType.SET),
         "log.retention.ms"),
        (ConfigEntry("log.cleanup.policy", "delete", incremental_operation=AlterConfigOpType.APPEND),
         "APPEND"),
    ]:
        with pytest.raises(KafkaException) as e:
            alter_broker(broker.bootstrap, "0", entry)
        assert e.value.args[0].name() == "INVALID_CONFIG", e.value
        assert why in str(e.value), e.value
    default = brokers_args(broker.bootstrap, "--entity-default")
    with pytest.raises(AssertionError) as e:
        tool(CONFIG_COMMAND, *default, "--alter", "--add-config", "num.network.threads=8")
    assert "not a dynamic broker config" in str(e.value), e.value
    # Nothing was set.
    out = tool(CONFIG_COMMAND, *default, "--describe")
    assert "=" not in out, out
    assert describe_broker(broker.bootstrap, "0")["log.retention.ms"].source != DYNAMIC_BROKER
