"""Until ringtail has transactions, a transactional client fails fast with
a clear, non-retriable error: FindCoordinator for a transactional id and
InitProducerId with one answer UNSUPPORTED_VERSION (35). Before, the
retriable COORDINATOR_NOT_AVAILABLE kept the Java producer waiting 60 s,
kafkajs 6-9 s and `kafka-transactions` looking up the coordinator in a
loop. Checked with the Java producer and AdminClient (Kafka 4.1's tools),
kafka-python, kafkajs and raw requests."""

import glob
import json
import subprocess
import time

import pytest

from conftest import create_topic, kafka_request
from node_clients import run_node
from test_kafka_tools import LIB

UNSUPPORTED_VERSION = 35
MESSAGE = "Transactions are not supported by this broker"
FAST_S = 5
# A JVM tool starts in a few seconds; the old behaviour took 60.
FAST_JVM_S = 20


def java(main, *args):
    assert glob.glob(LIB), "Kafka jars missing: run scripts/kafka fetch"
    start = time.time()
    out = subprocess.run(["java", "-cp", LIB, main, *args], capture_output=True, text=True, timeout=120)
    return out, time.time() - start


def test_find_coordinator_for_a_transaction_is_refused(broker):
    from kafka.protocol.metadata.find_coordinator import (FindCoordinatorRequest,
                                                          FindCoordinatorResponse)
    r = kafka_request(broker.port, FindCoordinatorRequest[1](key="tx-1", key_type=1),
                      FindCoordinatorResponse, 1)
    assert r.error_code == UNSUPPORTED_VERSION
    assert MESSAGE in r.error_message
    r = kafka_request(broker.port, FindCoordinatorRequest[4](key_type=1, coordinator_keys=["a", "b"]),
                      FindCoordinatorResponse, 4)
    assert [(c.key, c.error_code) for c in r.coordinators] == [("a", 35), ("b", 35)]
    assert all(MESSAGE in c.error_message for c in r.coordinators)
    # Groups are found as before; an unknown key type is an invalid request.
    r = kafka_request(broker.port, FindCoordinatorRequest[4](key_type=0, coordinator_keys=["g"]),
                      FindCoordinatorResponse, 4)
    assert r.coordinators[0].error_code in (0, 14, 15)  # found, or still loading
    r = kafka_request(broker.port, FindCoordinatorRequest[4](key_type=7, coordinator_keys=["g"]),
                      FindCoordinatorResponse, 4)
    assert r.coordinators[0].error_code == 42


def test_transactional_init_producer_id_is_refused(broker):
    from kafka.protocol.producer.transaction import InitProducerIdRequest, InitProducerIdResponse
    r = kafka_request(broker.port, InitProducerIdRequest[1](transactional_id="tx-1",
                                                            transaction_timeout_ms=60000),
                      InitProducerIdResponse, 1)
    assert (r.error_code, r.producer_id) == (UNSUPPORTED_VERSION, -1)
    r = kafka_request(broker.port, InitProducerIdRequest[1](transactional_id=None,
                                                            transaction_timeout_ms=60000),
                      InitProducerIdResponse, 1)
    assert r.error_code == 0 and r.producer_id >= 0


def test_java_transactional_producer_fails_fast(broker):
    create_topic(broker.bootstrap, "txj", 1)
    out, took = java("org.apache.kafka.tools.ProducerPerformance", "--topic", "txj",
                     "--num-records", "10", "--record-size", "10", "--throughput", "-1",
                     "--transactional-id", "java-tx", "--producer-props",
                     f"bootstrap.servers={broker.bootstrap}")
    assert out.returncode != 0, out.stdout
    assert MESSAGE in out.stderr, out.stderr[-2000:]
    assert took < FAST_JVM_S, took


def test_kafka_transactions_describe_fails_fast(broker):
    out, took = java("org.apache.kafka.tools.TransactionsCommand", "--bootstrap-server",
                     broker.bootstrap, "describe", "--transactional-id", "java-tx")
    assert out.returncode != 0, out.stdout
    # The tool prints the exception's message (an UnsupportedVersionException).
    assert "FindCoordinator request for key" in out.stderr, out.stderr[-2000:]
    assert "type=TRANSACTION" in out.stderr, out.stderr[-2000:]
    assert took < FAST_JVM_S, took


def test_kafka_python_transactional_producer_fails_fast(broker):
    from kafka import KafkaProducer
    from kafka.errors import KafkaError
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id="py-tx")
    start = time.time()
    with pytest.raises(KafkaError) as e:
        p.init_transactions()
    assert time.time() - start < FAST_S
    assert "UnsupportedVersion" in str(e.value) or "unexpected error" in str(e.value), e.value
    p.close(timeout=1)


KAFKAJS_TRANSACTION = r"""
const { Kafka, logLevel } = require('kafkajs')
const [broker] = process.argv.slice(1)
;(async () => {
  const kafka = new Kafka({ brokers: [broker], logLevel: logLevel.NOTHING })
  const producer = kafka.producer({ transactionalId: 'js-tx', idempotent: true, maxInFlightRequests: 1 })
  await producer.connect()
  const start = Date.now()
  try {
    await producer.transaction()
    console.log(JSON.stringify({ ok: true }))
  } catch (e) {
    console.log(JSON.stringify({ ok: false, name: e.name, retriable: e.retriable, ms: Date.now() - start }))
  }
  await producer.disconnect()
})().catch(e => { console.error(`${e.name}: ${e.message}`); process.exit(1) })
"""


def test_kafkajs_transaction_fails_fast(broker):
    out = run_node(KAFKAJS_TRANSACTION, broker.bootstrap)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ok"] is False, result
    assert result["ms"] < FAST_S * 1000, result
