"""A full disk, on a small ext4 file system of our own (a loop-mounted image:
O_DIRECT needs a real file system; needs root, skipped otherwise):

- below the free-space threshold produce is refused with the retriable
  KAFKA_STORAGE_ERROR and resumes by itself when space returns, nothing
  acknowledged lost; preallocation never takes the free space below the
  threshold;
- with no threshold, ENOSPC on a write is no poison: the write is retried
  once space returns and every record is kept, in order; creating a topic
  while the topic table cannot be written is answered with an error;
- shutdown with a partition that cannot be written exits non-zero;
- an I/O error (the file system shut down under the broker) poisons only the
  partition that met it, and that partition answers KAFKA_STORAGE_ERROR to
  every request and is listed offline in Metadata.
"""

import errno
import fcntl
import os
import struct
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka.protocol.metadata import MetadataRequest, MetadataResponse

from conftest import Broker, create_topic, kafka_request, partition_errors

MIB = 1 << 20
FS_BYTES = 128 * MIB
THRESHOLD = 24 * MIB
STORAGE_ERROR = 56


# ioctl(EXT4_IOC_SHUTDOWN, EXT4_GOING_FLAGS_NOLOGFLUSH): every later I/O on
# the file system fails with EIO, as on a dead device.
EXT4_IOC_SHUTDOWN = 0x8004587D
EXT4_GOING_FLAGS_NOLOGFLUSH = 2


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class SmallFs:
    """An ext4 image mounted under a temp dir, with brokers whose data lives
    on it (their logs do not) and a filler file to take its space."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.image = tmp_path / "fs.img"
        self.mnt = tmp_path / "mnt"
        self.filler = self.mnt / "filler"
        self.brokers = []

    def mount(self):
        self.mnt.mkdir()
        with open(self.image, "wb") as f:
            f.truncate(FS_BYTES)
        subprocess.run(["mkfs.ext4", "-F", "-q", "-m", "0", "-b", "4096", str(self.image)],
                       check=True, capture_output=True)
        r = subprocess.run(["mount", "-o", "loop", str(self.image), str(self.mnt)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot loop-mount an ext4 image here: {r.stderr.strip()}")

    def unmount(self):
        for b in self.brokers:
            if b.alive():
                print(f"--- broker {b.bootstrap} log tail ---\n{b.log_tail()}")
            b.cleanup()
        for attempt in range(50):
            r = subprocess.run(["umount", str(self.mnt)], capture_output=True, text=True)
            if r.returncode == 0 or not os.path.ismount(self.mnt):
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(self.mnt)], check=False)
        self.image.unlink(missing_ok=True)

    def broker(self, config):
        path = self.tmp / f"config-{len(self.brokers)}.toml"
        path.write_text(config)
        b = Broker(self.mnt / "data", ["--config", str(path)], cores=2, log_dir=self.tmp)
        self.brokers.append(b)
        return b.start()

    def _write_filler(self, keep_going):
        """Appends to the filler, unbuffered, while `keep_going(free)` says so;
        stops quietly at ENOSPC."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        blocks_only = False
        try:
            while True:
                n = keep_going(free_bytes(self.mnt))
                if n <= 0:
                    break
                if blocks_only:
                    n = 4096
                try:
                    os.write(fd, b"\xa5" * n)
                    os.fsync(fd)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    if n <= 4096:
                        break
                    blocks_only = True
        finally:
            os.close(fd)

    def fill_to(self, free_target):
        """Grows the filler until about `free_target` bytes are free."""
        self._write_filler(lambda free: min(MIB, free - free_target)
                           if free > free_target + 4096 else 0)

    def fill_up(self):
        """Takes every free block: large writes, then single blocks until ENOSPC."""
        self._write_filler(lambda free: MIB if free > 2 * MIB else 4096)
        assert free_bytes(self.mnt) == 0, free_bytes(self.mnt)

    def release(self):
        self.filler.unlink()
        os.sync()


@pytest.fixture
def small_fs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to loop-mount a small ext4 image (O_DIRECT needs a real file system)")
    for tool in ("mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    fs = SmallFs(tmp_path)
    fs.mount()
    try:
        yield fs
    finally:
        fs.unmount()


class Acks:
    """Delivery reports of a confluent producer, by partition and offset."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ok = {}
        self.errors = []

    def __call__(self, err, msg):
        with self.lock:
            if err is None:
                self.ok[(msg.partition(), msg.offset())] = msg.value()
            else:
                self.errors.append(err)

    def count(self, prefix):
        with self.lock:
            return sum(1 for v in self.ok.values() if v.startswith(prefix))


def producer(bootstrap, **extra):
    conf = {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
            "linger.ms": 5, "message.timeout.ms": 120000}
    conf.update(extra)
    return Producer(conf)


def read_back(bootstrap, topic, partitions, highs_at_least):
    """Every record of every partition up to its high watermark, by (partition, offset)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "verify",
                  "enable.auto.commit": False})
    highs = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
             for p in range(partitions)}
    assert sum(highs.values()) >= highs_at_least, highs
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got = {}
    deadline = time.time() + 60
    while len(got) < sum(highs.values()) and time.time() < deadline:
        for m in c.consume(1000, 0.5):
            assert m.error() is None, m.error()
            got[(m.partition(), m.offset())] = m.value()
    c.close()
    return got


def storage_error_from_kafka_python(bootstrap, topic):
    """kafka-python's producer, no retries: the error it raises for a produce."""
    from kafka import KafkaProducer
    kp = KafkaProducer(bootstrap_servers=bootstrap, retries=0, acks="all",
                       request_timeout_ms=10000)
    try:
        kp.send(topic, value=b"kafka-python", partition=0).get(timeout=20)
    except Exception as e:  # the error class is what is checked
        return e
    finally:
        kp.close(timeout=5)
    return None


def test_produce_pauses_below_the_threshold_and_resumes_without_loss(small_fs):
    b = small_fs.broker(f"min_free_bytes = {THRESHOLD}\nmin_free_percent = 0\n"
                        "disk_check_interval_ms = 50\noffsets_topic_partitions = 1\n"
                        f"segment_bytes = {8 * MIB}\n")
    create_topic(b.bootstrap, "full", 2)

    # Free space sampled all along: preallocation must never take it below the threshold.
    lowest = [free_bytes(small_fs.mnt)]
    sampling = threading.Event()
    sampling.set()

    def sample():
        while sampling.is_set():
            lowest[0] = min(lowest[0], free_bytes(small_fs.mnt))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        small_fs.fill_to(THRESHOLD + 20 * MIB)
        acks = Acks()
        p = producer(b.bootstrap)
        for i in range(3000):
            p.produce("full", value=b"a-%06d-" % i + b"x" * 1000, partition=i % 2,
                      on_delivery=acks)
            p.poll(0)
        assert p.flush(60) == 0 and acks.errors == []
        assert acks.count(b"a-") == 3000
        time.sleep(0.3)
    finally:
        sampling.clear()
        sampler.join()
    assert lowest[0] >= THRESHOLD, \
        f"free space fell to {lowest[0] / MIB:.1f} MiB, below the {THRESHOLD / MIB} MiB threshold"

    # Below the threshold: produce is refused with the retriable storage error.
    small_fs.fill_to(THRESHOLD - 4 * MIB)
    time.sleep(0.5)
    err = storage_error_from_kafka_python(b.bootstrap, "full")
    assert err is not None and getattr(err, "errno", None) == STORAGE_ERROR, repr(err)
    assert err.retriable, "clients retry KAFKA_STORAGE_ERROR"
    for i in range(500):
        p.produce("full", value=b"b-%06d-" % i + b"y" * 1000, partition=i % 2, on_delivery=acks)
        p.poll(0)
    deadline = time.time() + 3
    while time.time() < deadline:
        p.poll(0.1)
    assert acks.count(b"b-") == 0, "nothing is acknowledged while full"
    assert b.alive()

    # Space returns: the waiting records go through by themselves.
    small_fs.release()
    assert p.flush(60) == 0, "the producer's retries succeed once space is back"
    assert acks.errors == [], acks.errors[:3]
    assert acks.count(b"b-") == 500
    got = read_back(b.bootstrap, "full", 2, 3500)
    missing = [k for k, v in acks.ok.items() if got.get(k) != v]
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {missing[:3]}"
    for part in (0, 1):
        values = [got[k] for k in sorted(k for k in got if k[0] == part)]
        seqs = [int(v[2:8]) for v in values if v.startswith(b"b-")]
        assert seqs == sorted(seqs), "records kept in order per partition"
    log = b.log_tail(400)
    assert "poisoned" not in log, log
    assert "produce resumes" in log, log
    b.stop()


def test_enospc_is_not_a_poison_and_topic_creation_reports_it(small_fs):
    b = small_fs.broker("min_free_bytes = 0\nmin_free_percent = 0\npreallocate = false\n"
                        "disk_check_interval_ms = 50\noffsets_topic_partitions = 1\n")
    create_topic(b.bootstrap, "nospace", 1)
    acks = Acks()
    p = producer(b.bootstrap)
    for i in range(200):
        p.produce("nospace", value=b"a-%06d-" % i + b"x" * 500, on_delivery=acks)
    assert p.flush(30) == 0 and acks.count(b"a-") == 200

    small_fs.fill_up()
    for i in range(300):
        p.produce("nospace", value=b"b-%06d-" % i + b"y" * 1000, on_delivery=acks)
        p.poll(0)
    deadline = time.time() + 3
    while time.time() < deadline:
        p.poll(0.1)
    assert acks.count(b"b-") == 0, "a write that met ENOSPC is not acknowledged"
    assert "file system full" in b.log_tail(200)

    # Topic creation while the topic table cannot be written: an error, not silence.
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    # The topic's metadata lives in the metadata log, not on the full data
    # file system: creation is refused, or the new partition refuses writes
    # with a storage error; never a silent success.
    fut = admin.create_topics([NewTopic("while-full", 1, 1)], operation_timeout=10)["while-full"]
    try:
        fut.result(timeout=20)
        errors = partition_errors(b.port, "while-full", 1)
        assert errors["produce"][0] == STORAGE_ERROR, errors
    except KafkaException as created:
        assert created.args[0].code() == KafkaError.KAFKA_STORAGE_ERROR, created
    md = kafka_request(b.port, MetadataRequest[5](
        topics=[MetadataRequest.MetadataRequestTopic(name="auto-while-full")],
        allow_auto_topic_creation=True), MetadataResponse, 5)
    if md.topics[0].error_code != STORAGE_ERROR:
        assert md.topics[0].error_code == 0, md
        errors = partition_errors(b.port, "auto-while-full", 1)
        assert errors["produce"][0] == STORAGE_ERROR, errors

    small_fs.release()
    assert p.flush(60) == 0 and acks.errors == [], acks.errors[:3]
    for i in range(100):
        p.produce("nospace", value=b"c-%06d" % i, on_delivery=acks)
    assert p.flush(30) == 0
    got = read_back(b.bootstrap, "nospace", 1, 600)
    values = [got[k] for k in sorted(got)]
    expected = ([b"a-%06d-" % i + b"x" * 500 for i in range(200)]
                + [b"b-%06d-" % i + b"y" * 1000 for i in range(300)]
                + [b"c-%06d" % i for i in range(100)])
    assert values == expected, "every record once, in order"
    md = kafka_request(b.port, MetadataRequest[5](
        topics=[MetadataRequest.MetadataRequestTopic(name="auto-after")],
        allow_auto_topic_creation=True), MetadataResponse, 5)
    assert md.topics[0].error_code == 0, md
    log = b.log_tail(400)
    assert "poisoned" not in log, log
    b.stop()


def test_shutdown_exits_non_zero_when_a_partition_cannot_be_closed(small_fs):
    b = small_fs.broker("min_free_bytes = 0\nmin_free_percent = 0\npreallocate = false\n"
                        "disk_check_interval_ms = 50\noffsets_topic_partitions = 1\n")
    create_topic(b.bootstrap, "stuck", 1)
    acks = Acks()
    p = producer(b.bootstrap)
    for i in range(100):
        p.produce("stuck", value=b"a-%06d" % i, on_delivery=acks)
    assert p.flush(30) == 0
    small_fs.fill_up()
    for i in range(300):
        p.produce("stuck", value=b"b-%06d-" % i + b"y" * 1000, on_delivery=acks)
    deadline = time.time() + 2
    while time.time() < deadline:
        p.poll(0.1)
    assert acks.count(b"b-") == 0
    rc = b.terminate()
    log = b.log_tail(100)
    assert rc != 0, log
    assert "partition not closed cleanly" in log and "stuck-0" in log, log
    assert "stopped cleanly" not in log, log

    # Nothing acknowledged was lost: the first records are all there.
    small_fs.release()
    b.start()
    got = read_back(b.bootstrap, "stuck", 1, 100)
    assert [got[(0, o)] for o in range(100)] == [b"a-%06d" % i for i in range(100)]
    b.stop()


def test_io_error_poisons_only_that_partition_and_it_is_reported_everywhere(small_fs):
    b = small_fs.broker("disk_check_interval_ms = 50\noffsets_topic_partitions = 1\n"
                        "min_free_bytes = 0\n")
    create_topic(b.bootstrap, "eio", 2)
    acks = Acks()
    p = producer(b.bootstrap)
    for i in range(200):
        p.produce("eio", value=b"a-%06d" % i, partition=i % 2, on_delivery=acks)
    assert p.flush(30) == 0 and acks.count(b"a-") == 200
    assert partition_errors(b.port, "eio", 2, produce_to=[])["metadata"] == {0: 0, 1: 0}

    fd = os.open(small_fs.mnt, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_NOLOGFLUSH))
    except OSError as e:
        pytest.skip(f"cannot shut the ext4 file system down to inject I/O errors: {e}")
    finally:
        os.close(fd)

    # Only partition 0 is written after the device "died".
    failed = {}
    q = Producer({"bootstrap.servers": b.bootstrap, "retries": 0, "acks": "all",
                  "message.timeout.ms": 20000})
    q.produce("eio", value=b"after", partition=0,
              on_delivery=lambda err, msg: failed.__setitem__("code", err and err.code()))
    q.flush(30)
    assert failed.get("code") == KafkaError.KAFKA_STORAGE_ERROR, failed
    assert "partition poisoned" in b.log_tail(100)

    errors = partition_errors(b.port, "eio", 2, produce_to=[0])
    for api in ("metadata", "list_offsets", "leader_epoch", "fetch", "produce"):
        assert errors[api][0] == STORAGE_ERROR, (api, errors)
    for api in ("metadata", "list_offsets", "leader_epoch", "fetch"):
        assert errors[api][1] == 0, (api, errors)
    assert errors["offline"] == {0: [0], 1: []}
    md = AdminClient({"bootstrap.servers": b.bootstrap}).list_topics("eio", timeout=10)
    assert md.topics["eio"].partitions[0].error.code() == KafkaError.KAFKA_STORAGE_ERROR
    assert md.topics["eio"].partitions[1].error is None

    rc = b.terminate()
    log = b.log_tail(100)
    assert rc != 0 and "eio-0" in log, log
