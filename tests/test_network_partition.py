"""A network partition that isolates a partition leader, built with network
namespaces and veth links (traffic stays inside the namespaces this test
creates): three nodes and a client, each in its own namespace, joined by a
bridge in a fifth. The isolated leader stops acknowledging acks=all, the
majority side elects a new leader, and after healing nothing acknowledged
is lost and the old leader's unacknowledged tail is gone."""

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from conftest import BINARY, ROOT

LIB = str(ROOT / ".cache" / "kafka" / "lib-4.1.1" / "*")
SUBNET = "10.213.0"
CLIENT_IP = f"{SUBNET}.100"
PORT, CONTROLLER_PORT = 9092, 9093

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None
                                or shutil.which("kcat") is None,
                                reason="needs root, iproute2 and kcat")


def sh(*args, check=True, **kw):
    return subprocess.run(list(args), check=check, capture_output=True, text=True, **kw)


class Net:
    """A bridge namespace and one namespace per member, each with a veth."""

    def __init__(self, members):
        tag = f"rtp{os.getpid() % 100000}"
        self.bridge = f"{tag}-br"
        self.ns = {m: f"{tag}-{m}" for m in members}
        self.port = {m: f"v{tag[-5:]}{m}" for m in members}

    def up(self, ips):
        sh("ip", "netns", "add", self.bridge)
        sh("ip", "-n", self.bridge, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.bridge, "link", "set", "br0", "up")
        for m, ns in self.ns.items():
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", self.port[m], "netns", self.bridge, "type", "veth",
               "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", self.bridge, "link", "set", self.port[m], "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{ips[m]}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

    def cut(self, member, up=False):
        sh("ip", "-n", self.bridge, "link", "set", self.port[member], "up" if up else "down")

    def run(self, member, *args, **kw):
        return sh("ip", "netns", "exec", self.ns[member], *args, **kw)

    def down(self):
        for ns in list(self.ns.values()) + [self.bridge]:
            sh("ip", "netns", "del", ns, check=False)


def node_ip(n):
    return f"{SUBNET}.{n}"


def kcat_produce(net, member, bootstrap, values, timeout_ms):
    out = net.run(member, "kcat", "-b", bootstrap, "-P", "-t", "np", "-X", "acks=all",
                  "-X", f"message.timeout.ms={timeout_ms}", "-X", "enable.idempotence=true",
                  input="\n".join(values) + "\n", check=False, timeout=timeout_ms / 1000 + 30)
    return out


def metadata(net, bootstrap):
    out = net.run("c", "kcat", "-b", bootstrap, "-L", "-J", "-t", "np", "-m", "5", check=False,
                  timeout=30)
    if out.returncode != 0:
        return None
    md = json.loads(out.stdout)
    parts = md["topics"][0].get("partitions") or []
    return parts[0] if parts else None


def wait_for(what, predicate, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_isolated_leader_stops_acknowledging_and_nothing_acknowledged_is_lost(tmp_path):
    net = Net(["n1", "n2", "n3", "c"])
    procs = {}
    try:
        net.up({"n1": node_ip(1), "n2": node_ip(2), "n3": node_ip(3), "c": CLIENT_IP})
        voters = ",".join(f"{n}@{node_ip(n)}:{CONTROLLER_PORT}" for n in (1, 2, 3))
        config = tmp_path / "node.toml"
        config.write_text("replica_lag_time_max_ms = 3000\n")
        for n in (1, 2, 3):
            log = open(tmp_path / f"node-{n}.log", "ab")
            procs[n] = subprocess.Popen(
                ["ip", "netns", "exec", net.ns[f"n{n}"], str(BINARY), "serve",
                 "--node-id", str(n), "--listen", f"{node_ip(n)}:{PORT}",
                 "--controller-listen", f"{node_ip(n)}:{CONTROLLER_PORT}",
                 "--controller-voters", voters, "--data-dir", str(tmp_path / f"data-{n}"),
                 "--cores", "1", "--config", str(config)], stdout=log, stderr=log)
        everyone = ",".join(f"{node_ip(n)}:{PORT}" for n in (1, 2, 3))
        wait_for("the cluster", lambda: net.run("c", "kcat", "-b", everyone, "-L", "-m", "3",
                                                check=False, timeout=20).stdout.count(
                                                    f":{PORT}") >= 3, 60)
        net.run("c", "java", "-cp", LIB, "org.apache.kafka.tools.TopicCommand",
                "--bootstrap-server", everyone, "--create", "--topic", "np", "--partitions", "1",
                "--replication-factor", "3", "--config", "min.insync.replicas=2", timeout=120)
        wait_for("a full ISR", lambda: (m := metadata(net, everyone)) and len(m["isrs"]) == 3, 30)

        before = [f"before-{i}" for i in range(100)]
        out = kcat_produce(net, "c", everyone, before, 30000)
        assert out.returncode == 0, out.stderr

        leader = metadata(net, everyone)["leader"]
        net.cut(f"n{leader}")
        cut_at = time.time()
        # From inside its own namespace the isolated leader is still
        # reachable: it must not acknowledge acks=all.
        isolated = kcat_produce(net, f"n{leader}", f"{node_ip(leader)}:{PORT}",
                                ["isolated-0", "isolated-1"], 8000)
        assert isolated.returncode != 0 or "fail" in isolated.stderr.lower(), isolated.stderr

        majority = ",".join(f"{node_ip(n)}:{PORT}" for n in (1, 2, 3) if n != leader)
        after = [f"after-{i}" for i in range(100)]
        out = kcat_produce(net, "c", majority, after, 60000)
        assert out.returncode == 0, out.stderr
        md = metadata(net, majority)
        assert md["leader"] not in (leader, -1), md
        print(f"new leader {md['leader']} acknowledging {time.time() - cut_at:.1f} s after the cut")

        net.cut(f"n{leader}", up=True)
        # Asked through the majority: right after healing, the old leader may
        # still answer from its stale view (itself leading, full ISR) until
        # it hears from the controller, as a Kafka broker would.
        wait_for("the old leader back in the ISR",
                 lambda: (m := metadata(net, majority)) and m["leader"] != leader
                 and len(m["isrs"]) == 3, 60)
        out = net.run("c", "kcat", "-b", majority, "-C", "-t", "np", "-o", "beginning", "-e",
                      "-q", timeout=60)
        got = out.stdout.split()
        assert sorted(got) == sorted(before + after), (len(got), got[-5:])
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
            assert p.wait(60) == 0
        logs = b"".join(f.read_bytes() for f in (tmp_path / f"data-{leader}" / "np-0").glob("*.log"))
        assert b"before-99" in logs and b"after-99" in logs
        assert b"isolated-" not in logs, "the isolated leader's tail was truncated"
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait(10)
        net.down()
