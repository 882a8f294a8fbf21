"""Apache Kafka's own command line tools (Java client 4.1) against ringtail:
console producer and consumer, kafka-topics, kafka-consumer-groups. The jars
come from Maven Central through scripts/kafka (scripts/test fetches them)."""

import glob
import subprocess

from conftest import ROOT

LIB = str(ROOT / ".cache" / "kafka" / "lib-4.1.1" / "*")


def tool(main, *args, stdin=None):
    assert glob.glob(LIB), "Kafka jars missing: run scripts/kafka fetch"
    out = subprocess.run(["java", "-cp", LIB, main, *args], input=stdin, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_kafka_console_tools_topics_and_groups(broker):
    b = broker.bootstrap
    tool("org.apache.kafka.tools.TopicCommand", "--bootstrap-server", b, "--create", "--topic", "jt",
         "--partitions", "3", "--replication-factor", "1")
    described = tool("org.apache.kafka.tools.TopicCommand", "--bootstrap-server", b, "--describe", "--topic", "jt")
    assert "PartitionCount: 3" in described
    lines = [f"line-{i}" for i in range(30)]
    tool("org.apache.kafka.tools.ConsoleProducer", "--bootstrap-server", b, "--topic", "jt",
         stdin="\n".join(lines) + "\n")
    consumed = tool("org.apache.kafka.tools.consumer.ConsoleConsumer", "--bootstrap-server", b, "--topic", "jt",
                    "--from-beginning", "--max-messages", "30", "--group", "java-group")
    assert sorted(consumed.split()) == sorted(lines)
    groups = tool("org.apache.kafka.tools.consumer.group.ConsumerGroupCommand", "--bootstrap-server", b,
                  "--describe", "--group", "java-group")
    rows = [l.split() for l in groups.splitlines() if l.startswith("java-group")]
    assert len(rows) == 3
    assert sum(int(r[3]) for r in rows) == 30 and all(r[5] == "0" for r in rows)
