"""Apache Kafka's own command line tools (Java client 4.1) against ringtail:
console producer and consumer, kafka-topics, kafka-consumer-groups. The jars
come from Maven Central through scripts/kafka (scripts/test fetches them)."""

import glob
import json
import subprocess

from conftest import ROOT, create_topic

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


def test_kafka_log_dirs_describe(broker):
    """kafka-log-dirs --describe: the data directory and each partition with
    its size (the batches in its segments), offset lag 0, not a future."""
    b = broker.bootstrap
    create_topic(b, "dirs", 3)
    value = "x" * 1000
    tool("org.apache.kafka.tools.ConsoleProducer", "--bootstrap-server", b, "--topic", "dirs",
         "--compression-codec", "none", "--property", "parse.key=true", "--property", "key.separator=:",
         stdin="".join(f"{k}:{value}\n" for k in ["a", "b", "c"] * 100))
    out = tool("org.apache.kafka.tools.LogDirsCommand", "--bootstrap-server", b, "--describe",
               "--topic-list", "dirs")
    [line] = [l for l in out.splitlines() if l.startswith("{")]
    [entry] = json.loads(line)["brokers"]
    [log_dir] = entry["logDirs"]
    assert log_dir["error"] is None
    assert log_dir["logDir"] == str(broker.data_dir.resolve())
    parts = {p["partition"]: p for p in log_dir["partitions"]}
    assert set(parts) == {"dirs-0", "dirs-1", "dirs-2"}, parts
    assert all(p["offsetLag"] == 0 and p["isFuture"] is False for p in parts.values())
    sizes = [p["size"] for p in parts.values()]
    # 300 records of 1000-byte values, in record batches: a little more.
    assert 300 * 1000 <= sum(sizes) < 300 * 1000 * 1.2, sizes
    # Without --topic-list every hosted partition is listed, the offsets topic too.
    out = tool("org.apache.kafka.tools.LogDirsCommand", "--bootstrap-server", b, "--describe")
    [line] = [l for l in out.splitlines() if l.startswith("{")]
    listed = {p["partition"] for p in json.loads(line)["brokers"][0]["logDirs"][0]["partitions"]}
    assert {"dirs-0", "dirs-1", "dirs-2"} <= listed
