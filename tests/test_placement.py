"""Shard placement with the real binary: shards run on the CPUs the process
is allowed (taskset, cpusets), not on CPUs 0..n."""

import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BINARY, api_versions, free_port

START_TIMEOUT_S = 20


def shard_cpus(pid):
    """Cpus_allowed_list of each shard thread, by shard name (glommio names
    the thread `shard-N-<executor id>`)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            status = (task / "status").read_text()
        except FileNotFoundError:
            continue
        if name.startswith("shard-"):
            line = next(l for l in status.splitlines() if l.startswith("Cpus_allowed_list:"))
            out["-".join(name.split("-")[:2])] = line.split(":", 1)[1].strip()
    return out


def serve_pinned(tmp_path, cpu_list, cores):
    port = free_port()
    log = open(tmp_path / "broker.log", "ab")
    proc = subprocess.Popen(["taskset", "-c", cpu_list, str(BINARY), "serve", "--listen",
                             f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data"),
                             "--cores", str(cores), "--http-listen", "127.0.0.1:0"],
                            stdout=log, stderr=log)
    deadline = time.time() + START_TIMEOUT_S
    while time.time() < deadline:
        assert proc.poll() is None, (tmp_path / "broker.log").read_text()
        try:
            api_versions(port)
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("broker did not start:\n" + (tmp_path / "broker.log").read_text())


def stop(proc):
    proc.terminate()
    assert proc.wait(60) == 0


@pytest.fixture
def last_cpu():
    cpus = sorted(os.sched_getaffinity(0))
    if cpus[-1] == 0:
        pytest.skip("needs a CPU other than 0")
    return cpus[-1]


def test_one_shard_runs_on_the_allowed_cpu(tmp_path, last_cpu):
    proc, port = serve_pinned(tmp_path, str(last_cpu), cores=1)
    try:
        assert shard_cpus(proc.pid) == {"shard-0": str(last_cpu)}
        api_versions(port)
    finally:
        stop(proc)


def test_more_shards_than_allowed_cpus_wrap_round_them(tmp_path, last_cpu):
    proc, port = serve_pinned(tmp_path, str(last_cpu), cores=2)
    try:
        assert shard_cpus(proc.pid) == {"shard-0": str(last_cpu), "shard-1": str(last_cpu)}
        # Not steerable (two shards on one CPU): the kernel's hash spreads
        # connections and each is still served.
        for _ in range(4):
            api_versions(port)
    finally:
        stop(proc)
