"""Broker-side recompression (topic compression.type) with the real binary:
batches produced in any client codec are stored in the topic's codec
(kafka-dump-log shows it), and confluent_kafka, kafka-python, Kafka 4.1's
console consumer and kafkajs read every record back exactly (keys, values,
headers, timestamps, offsets); kafka-configs --alter changes the codec
live for new batches and sets the codec levels; an idempotent producer's
resent batch is still a duplicate; a batch that only fits compressed is
refused with MESSAGE_TOO_LARGE on an uncompressed topic."""

import json
import re
import socket
import subprocess
import zlib

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from conftest import create_topic, kafka_request
from kafka_records import CODEC_GZIP, batch, produce_error, records
from node_clients import run_node
from test_kafka_tools import LIB, tool

TOPIC_CODECS = ["gzip", "snappy", "lz4", "zstd", "uncompressed"]
CLIENT_CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
# What kafka-dump-log prints for each compression.type.
DUMPED = {"uncompressed": "none", "gzip": "gzip", "snappy": "snappy", "lz4": "lz4", "zstd": "zstd"}
CONFIG_COMMAND = "kafka.admin.ConfigCommand"
MESSAGE_TOO_LARGE = 10


def expected_records(codec, n=20, base_ts=1_700_000_000_000, null_header=True):
    """Records a client with `codec` sends: compressible values, keys,
    headers (one with a null value) and distinct timestamps."""
    nulls = [("n", None)] if null_header else []
    return [(f"{codec}-k{i}".encode(), (f"{codec} value {i} " * 30).encode(),
             [("h", f"{codec}-{i}".encode())] + nulls, base_ts + 1000 * i)
            for i in range(n)]


def produce_confluent(bootstrap, topic, codec, recs):
    p = Producer({"bootstrap.servers": bootstrap, "compression.type": codec, "linger.ms": 50,
                  "batch.size": 1 << 20, "enable.idempotence": True})
    for k, v, h, ts in recs:
        p.produce(topic, key=k, value=v, headers=h, timestamp=ts)
    assert p.flush(30) == 0


def produce_kafka_python(bootstrap, topic, recs):
    """kafka-python with gzip (its only codec without extra modules)."""
    from kafka import KafkaProducer
    p = KafkaProducer(bootstrap_servers=bootstrap, compression_type="gzip", linger_ms=50,
                      batch_size=1 << 20)
    for k, v, h, ts in recs:
        p.send(topic, key=k, value=v, headers=h, timestamp_ms=ts)
    p.flush(30)
    p.close()


def read_confluent(bootstrap, topic, expected):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{topic}",
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    out = []
    for _ in range(60):
        for m in c.consume(1000, 0.5):
            assert not m.error(), m.error()
            out.append((m.offset(), m.key(), m.value(), m.headers() or [], m.timestamp()[1]))
        if len(out) >= expected:
            break
    c.close()
    return out


def read_kafka_python(bootstrap, topic, expected):
    from kafka import KafkaConsumer
    c = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                      enable_auto_commit=False, consumer_timeout_ms=5000)
    tp = __import__("kafka").TopicPartition(topic, 0)
    c.assign([tp])
    c.seek(tp, 0)
    out = []
    for m in c:
        out.append((m.offset, m.key, m.value, [(k, v) for k, v in m.headers], m.timestamp))
        if len(out) >= expected:
            break
    c.close()
    return out


def read_console(bootstrap, topic, expected):
    """Kafka's console consumer: offset, key, value and timestamp per line."""
    out = tool("org.apache.kafka.tools.consumer.ConsoleConsumer", "--bootstrap-server", bootstrap,
               "--topic", topic, "--from-beginning", "--max-messages", str(expected),
               "--property", "print.offset=true", "--property", "print.key=true",
               "--property", "print.timestamp=true", "--property", "key.separator=|")
    rows = []
    for line in out.splitlines():
        m = re.match(r"CreateTime:(\d+)[\s|]+Offset:(\d+)[\s|]+(.*?)\|(.*)$", line)
        if m:
            rows.append((int(m[2]), m[3].encode(), m[4].encode(), int(m[1])))
    return rows


def dumped_codecs(data_dir, topic):
    logs = sorted((data_dir / f"{topic}-0").glob("*.log"))
    out = subprocess.run(["java", "-cp", LIB, "kafka.tools.DumpLogSegments", "--files",
                          ",".join(map(str, logs))], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return re.findall(r"compresscodec: (\w+)", out.stdout)


@pytest.mark.parametrize("topic_codec", TOPIC_CODECS)
def test_every_client_reads_batches_recompressed_to_the_topic_codec(broker, topic_codec):
    b = broker.bootstrap
    topic = f"rc-{topic_codec}"
    create_topic(b, topic, 1, {"compression.type": topic_codec})
    sent = []
    for codec in CLIENT_CODECS:
        recs = expected_records(codec)
        produce_confluent(b, topic, codec, recs)
        sent += recs
    py = expected_records("kafka-python", null_header=False)
    produce_kafka_python(b, topic, py)
    sent += py
    java_lines = [f"jk{i}|java value {i}" for i in range(10)]
    java_codec = "zstd" if topic_codec != "zstd" else "gzip"
    tool("org.apache.kafka.tools.ConsoleProducer", "--bootstrap-server", b, "--topic", topic,
         "--compression-codec", java_codec, "--property", "parse.key=true",
         "--property", "key.separator=|", stdin="\n".join(java_lines) + "\n")
    total = len(sent) + len(java_lines)

    # Every stored batch is in the topic's codec.
    codecs = dumped_codecs(broker.data_dir, topic)
    assert len(codecs) >= len(CLIENT_CODECS) + 2, codecs
    assert set(codecs) == {DUMPED[topic_codec]}, codecs

    want = [(i, k, v, h, ts) for i, (k, v, h, ts) in enumerate(sent)]
    got = read_confluent(b, topic, total)
    assert len(got) == total
    assert got[:len(sent)] == want
    assert [(g[1], g[2]) for g in got[len(sent):]] == \
        [tuple(x.encode() for x in l.split("|")) for l in java_lines]
    assert [g[0] for g in got] == list(range(total))

    console = read_console(b, topic, total)
    assert [(o, k, v, ts) for o, k, v, ts in console[:len(sent)]] == \
        [(o, k, v, ts) for o, k, v, _, ts in want]
    assert len(console) == total

    if topic_codec in ("gzip", "uncompressed"):
        # kafka-python decodes gzip and uncompressed batches here (the
        # other codecs need modules the test environment lacks).
        assert read_kafka_python(b, topic, total)[:len(sent)] == want


def test_kafkajs_writes_and_reads_through_recompression(broker):
    b = broker.bootstrap
    create_topic(b, "rc-js", 1, {"compression.type": "gzip"})
    create_topic(b, "rc-js-none", 1, {"compression.type": "uncompressed"})
    # Written uncompressed by kafkajs, stored gzip; written gzip by
    # kafkajs, stored uncompressed. kafkajs reads both back.
    script = r"""
const { Kafka, CompressionTypes } = require('kafkajs');
const [broker] = process.argv.slice(1);
(async () => {
  const kafka = new Kafka({ brokers: [broker], logLevel: 0 });
  const p = kafka.producer();
  await p.connect();
  const msgs = Array.from({ length: 20 }, (_, i) => ({
    key: `js-${i}`, value: `kafkajs value ${i} `.repeat(20),
    headers: { h: `hv-${i}` }, timestamp: String(1700000000000 + i) }));
  await p.send({ topic: 'rc-js', messages: msgs, compression: CompressionTypes.None });
  await p.send({ topic: 'rc-js-none', messages: msgs, compression: CompressionTypes.GZIP });
  await p.disconnect();
  const out = {};
  for (const topic of ['rc-js', 'rc-js-none']) {
    const c = kafka.consumer({ groupId: `g-${topic}` });
    await c.connect();
    await c.subscribe({ topic, fromBeginning: true });
    const got = [];
    await new Promise((resolve) => {
      c.run({ eachMessage: async ({ message }) => {
        got.push([message.offset, message.key.toString(), message.value.toString(),
                  message.headers.h.toString(), message.timestamp]);
        if (got.length === 20) resolve();
      } });
    });
    await c.disconnect();
    out[topic] = got;
  }
  console.log(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(1); });
"""
    out = run_node(script, b)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    want = [[str(i), f"js-{i}", f"kafkajs value {i} " * 20, f"hv-{i}", str(1700000000000 + i)]
            for i in range(20)]
    assert got["rc-js"] == want
    assert got["rc-js-none"] == want
    assert set(dumped_codecs(broker.data_dir, "rc-js")) == {"gzip"}
    assert set(dumped_codecs(broker.data_dir, "rc-js-none")) == {"none"}


def describe(bootstrap, topic):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    return {k: v.value for k, v in admin.describe_configs([res])[res].result(timeout=15).items()}


def alter(bootstrap, topic, configs):
    return subprocess.run(["java", "-cp", LIB, CONFIG_COMMAND, "--bootstrap-server", bootstrap,
                           "--entity-type", "topics", "--entity-name", topic, "--alter",
                           "--add-config", configs], capture_output=True, text=True, timeout=120)


def test_compression_type_and_levels_change_live(broker):
    b = broker.bootstrap
    create_topic(b, "live", 1)
    d = describe(b, "live")
    assert (d["compression.type"], d["compression.gzip.level"], d["compression.lz4.level"],
            d["compression.zstd.level"]) == ("producer", "-1", "9", "3")
    produce_confluent(b, "live", "zstd", expected_records("a", 5))
    out = alter(b, "live", "compression.type=lz4,compression.lz4.level=12")
    assert out.returncode == 0, out.stderr[-2000:]
    d = describe(b, "live")
    assert (d["compression.type"], d["compression.lz4.level"]) == ("lz4", "12")
    produce_confluent(b, "live", "zstd", expected_records("b", 5))
    out = alter(b, "live", "compression.type=uncompressed")
    assert out.returncode == 0, out.stderr[-2000:]
    produce_confluent(b, "live", "gzip", expected_records("c", 5))
    assert dumped_codecs(broker.data_dir, "live") == ["zstd", "lz4", "none"]
    got = read_confluent(b, "live", 15)
    assert [g[1] for g in got] == [k for k, *_ in
                                    expected_records("a", 5) + expected_records("b", 5)
                                    + expected_records("c", 5)]
    # Out-of-range levels and unknown codecs are refused, not ignored.
    for bad in ["compression.zstd.level=23", "compression.gzip.level=0",
                "compression.lz4.level=18", "compression.type=brotli"]:
        out = alter(b, "live", bad)
        assert out.returncode != 0 and "InvalidConfig" in out.stderr + out.stdout, bad
    assert describe(b, "live")["compression.type"] == "uncompressed"


def test_broker_default_compression_type(broker_factory):
    b = broker_factory(config='compression_type = "zstd"\ncompression_zstd_level = 9\n')
    create_topic(b.bootstrap, "bd", 1)
    d = describe(b.bootstrap, "bd")
    assert (d["compression.type"], d["compression.zstd.level"]) == ("zstd", "9")
    produce_confluent(b.bootstrap, "bd", "lz4", expected_records("x", 5))
    assert dumped_codecs(b.data_dir, "bd") == ["zstd"]


def init_producer_id(port):
    from kafka.protocol.producer.transaction import InitProducerIdRequest, InitProducerIdResponse
    r = kafka_request(port, InitProducerIdRequest[1](transactional_id=None,
                                                     transaction_timeout_ms=60000),
                      InitProducerIdResponse, 1)
    assert r.error_code == 0
    return r.producer_id, r.producer_epoch


def gzip_batch(values, pid, epoch, seq):
    z = zlib.compressobj(6, zlib.DEFLATED, 31)
    payload = z.compress(records(values)) + z.flush()
    return batch(payload, len(values), attributes=CODEC_GZIP, producer_id=pid,
                 producer_epoch=epoch, base_sequence=seq)


def test_idempotent_resend_is_a_duplicate_after_recompression(broker):
    create_topic(broker.bootstrap, "idem", 1, {"compression.type": "zstd"})
    pid, epoch = init_producer_id(broker.port)
    first = gzip_batch([b"a", b"b", b"c"], pid, epoch, 0)
    second = gzip_batch([b"d", b"e"], pid, epoch, 3)
    with socket.create_connection(("127.0.0.1", broker.port), timeout=10) as s:
        assert produce_error(s, "idem", 0, first) == (0, 0)
        assert produce_error(s, "idem", 0, first) == (0, 0)  # the resend
        assert produce_error(s, "idem", 0, second) == (0, 3)
        assert produce_error(s, "idem", 0, second) == (0, 3)
    got = read_confluent(broker.bootstrap, "idem", 5)
    assert [(o, v) for o, _, v, _, _ in got] == list(enumerate([b"a", b"b", b"c", b"d", b"e"]))
    assert dumped_codecs(broker.data_dir, "idem") == ["zstd", "zstd"]


def test_message_too_large_after_recompression(broker):
    b = broker.bootstrap
    create_topic(b, "big", 1, {"compression.type": "uncompressed", "max.message.bytes": "20000"})
    # 100 KB of one byte: a few hundred bytes in zstd, five times the
    # topic's limit uncompressed.
    errors = []
    p = Producer({"bootstrap.servers": b, "compression.type": "zstd", "retries": 0})
    for value in [b"x" * 100_000, b"small"]:
        p.produce("big", value=value, on_delivery=lambda err, msg: errors.append(err))
        assert p.flush(30) == 0
    assert [e.code() if e else None for e in errors] == [KafkaError.MSG_SIZE_TOO_LARGE, None]
    # The same through a raw produce: error 10, nothing stored.
    z = zlib.compressobj(6, zlib.DEFLATED, 31)
    payload = z.compress(records([b"y" * 30_000])) + z.flush()
    with socket.create_connection(("127.0.0.1", broker.port), timeout=10) as s:
        assert produce_error(s, "big", 0, batch(payload, 1, attributes=CODEC_GZIP))[0] == \
            MESSAGE_TOO_LARGE


def test_ringtail_bench_produces_into_a_topic_with_its_compression_type(broker, tmp_path):
    from conftest import BINARY
    out = tmp_path / "bench.json"
    args = [str(BINARY), "bench", "produce", "--bootstrap", broker.bootstrap, "--topic", "bt",
            "--partitions", "1", "--messages", "4000", "--warmup-s", "0", "--duration-s", "30",
            "--compression", "lz4", "--topic-config", "compression.type=zstd",
            "--json", str(out)]
    subprocess.run(args, check=True, timeout=60, capture_output=True)
    result = json.loads(out.read_text())["result"]
    assert result["errors"] == 0 and result["messages"] >= 4000
    codecs = dumped_codecs(broker.data_dir, "bt")
    assert codecs and set(codecs) == {"zstd"}
    assert describe(broker.bootstrap, "bt")["compression.type"] == "zstd"
    # An existing topic would keep its configs: refused rather than ignored.
    again = subprocess.run(args, timeout=60, capture_output=True, text=True)
    assert again.returncode != 0 and "exists" in again.stderr
