"""`ringtail bench` against the real broker: every mode runs, counts what it
moved, and writes its JSON result and SVG plot."""

import json
import subprocess

from conftest import BINARY


def bench(broker, tmp_path, mode, *extra, duration="2", warmup="1"):
    out = tmp_path / f"{mode}.json"
    svg = tmp_path / f"{mode}.svg"
    args = [str(BINARY), "bench", mode, "--bootstrap", broker.bootstrap, "--topic", "bench-t",
            "--partitions", "4", "--duration-s", duration, "--warmup-s", warmup, "--message-bytes", "512",
            "--json", str(out), "--svg", str(svg), *extra]
    subprocess.run(args, check=True, timeout=60, capture_output=True)
    return json.loads(out.read_text()), svg.read_text()


def test_produce_consume_and_e2e_report_what_they_moved(broker, tmp_path):
    produced, svg = bench(broker, tmp_path, "produce", "--compression", "lz4", "--keys", "10")
    r = produced["result"]
    assert r["messages"] > 1000 and r["errors"] == 0
    assert 0 < r["latency_us"]["p50"] <= r["latency_us"]["p99"] <= r["latency_max_us"]
    assert produced["host"]["cores"] >= 1 and produced["host"]["kernel"]
    assert any(k[0] == 0 for k in produced["broker"]["facts"]["api_versions"])
    assert svg.startswith("<svg") and "polyline" in svg

    consumed, _ = bench(broker, tmp_path, "consume")
    # Catch-up reads at least everything acknowledged above (warm-up included).
    assert consumed["result"]["messages"] >= r["messages"]

    e2e, _ = bench(broker, tmp_path, "e2e", "--rate", "2000")
    assert e2e["result"]["e2e_latency_us"]["p50"] > 0
    # Open loop: the fixed rate is kept, within scheduling slack.
    assert 3000 <= e2e["result"]["messages"] <= 4400


def test_produce_stops_at_a_message_count_and_catch_up_reads_it_all(broker, tmp_path):
    # No keys: the generator resends one encoded batch with fresh timestamps;
    # the broker must accept every copy (valid CRC) and the consumer must read
    # back exactly what was sent, in whole batches.
    produced, _ = bench(broker, tmp_path, "produce", "--messages", "20000", "--batch-bytes", "16384",
                        duration="30", warmup="0")
    r = produced["result"]
    assert r["errors"] == 0 and r["error_codes"] == {}
    # Rounded up to whole batches: 32 messages of 512 bytes per partition.
    assert 20000 <= r["messages"] < 20000 + 2 * 4 * 32
    assert r["seconds"] < 30
    consumed, _ = bench(broker, tmp_path, "consume")
    assert consumed["result"]["messages"] == r["messages"]


def test_keyed_produce_sends_each_key_to_the_partition_kafka_would(broker, tmp_path):
    from kafka.partitioner.default import murmur2
    from conftest import consume_all

    produced, _ = bench(broker, tmp_path, "produce", "--messages", "3000", "--keys", "3",
                        "--batch-bytes", "8192", duration="30", warmup="0")
    r = produced["result"]
    assert r["errors"] == 0 and r["messages"] >= 3000
    records = consume_all(broker.bootstrap, "bench-t", 4, r["messages"])
    assert len(records) == r["messages"]
    seen = {}
    for m in records:
        key = m.key()
        assert key in (b"key-0", b"key-1", b"key-2")
        assert m.partition() == (murmur2(key) & 0x7FFFFFFF) % 4, key
        seen[key] = seen.get(key, 0) + 1
    assert len(seen) == 3 and min(seen.values()) > 0
