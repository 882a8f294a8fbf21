"""deploy/: the Ansible playbook installs and starts a 3-node cluster on
localhost (local connection, a temporary prefix, background processes as
this host has no systemd) that real clients use; the example config starts
a broker; the systemd unit, the compose file and the Grafana dashboard
parse."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import BINARY, ROOT, Broker, free_port

DEPLOY = ROOT / "deploy"
ANSIBLE_VENV = ROOT / ".cache" / "ansible-venv"


def runs(exe):
    try:
        return subprocess.run([str(exe), "--version"], capture_output=True).returncode == 0
    except OSError:
        return False


def ansible_playbook():
    """ansible-playbook from PATH, else from a venv with ansible-core from PyPI."""
    found = shutil.which("ansible-playbook")
    if found:
        return found
    exe = ANSIBLE_VENV / "bin" / "ansible-playbook"
    if exe.exists() and not runs(exe):
        shutil.rmtree(ANSIBLE_VENV)  # a venv moved from elsewhere: its scripts point there
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(ANSIBLE_VENV)], check=True)
        pip = subprocess.run([str(ANSIBLE_VENV / "bin" / "pip"), "install", "-q", "ansible-core"],
                             capture_output=True, text=True, timeout=600)
        if pip.returncode != 0:
            shutil.rmtree(ANSIBLE_VENV, ignore_errors=True)
            pytest.skip(f"ansible-core could not be installed from PyPI: {pip.stderr[-500:]}")
    return str(exe)


def free_pair():
    """A free port whose next port is free too."""
    while True:
        p = free_port()
        if p < 65535:
            try:
                import socket
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p + 1))
                return p
            except OSError:
                continue


def stop_pidfiles(prefixes):
    pids = []
    for prefix in prefixes:
        pidfile = prefix / "var" / "lib" / "ringtail" / "ringtail.pid"
        if pidfile.exists():
            pid = int(pidfile.read_text().strip())
            try:
                os.kill(pid, signal.SIGTERM)
                pids.append(pid)
            except ProcessLookupError:
                pass
    deadline = time.time() + 60
    for pid in pids:
        while time.time() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)


def test_playbook_installs_and_forms_a_three_node_cluster(tmp_path):
    playbook = ansible_playbook()
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    group = subprocess.run(["id", "-gn"], capture_output=True, text=True).stdout.strip()
    ports = {n: free_pair() for n in (1, 2, 3)}
    prefixes = {n: tmp_path / f"node{n}" for n in (1, 2, 3)}
    lines = ["[ringtail]"]
    for n in (1, 2, 3):
        lines.append(f"node{n} ringtail_node_id={n} ringtail_port={ports[n]} "
                     f"ringtail_controller_port={ports[n] + 1} ringtail_http_port={free_port()} "
                     f"ringtail_prefix={prefixes[n]}")
    lines += ["[ringtail:vars]", "ansible_connection=local",
              f"ansible_python_interpreter={sys.executable}", "ringtail_host=127.0.0.1",
              "ringtail_listen_host=127.0.0.1", "ringtail_become=false",
              "ringtail_manage_user=false", f"ringtail_user={user}", f"ringtail_group={group}",
              "ringtail_service_manager=process", "ringtail_cores=1",
              "ringtail_min_free_bytes=0", f"ringtail_binary={BINARY}",
              "ringtail_extra_config='broker_session_timeout_ms = 9000'"]
    inventory = tmp_path / "hosts"
    inventory.write_text("\n".join(lines) + "\n")
    env = dict(os.environ, ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"),
               ANSIBLE_REMOTE_TEMP=str(tmp_path / "ansible-tmp"))
    try:
        run = subprocess.run([playbook, "-i", str(inventory), str(DEPLOY / "ansible" / "ringtail.yml")],
                             capture_output=True, text=True, env=env, timeout=600)
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
        config = (prefixes[2] / "etc" / "ringtail" / "ringtail.toml").read_text()
        voters = ",".join(f"{n}@127.0.0.1:{ports[n] + 1}" for n in (1, 2, 3))
        assert f'controller_voters = "{voters}"' in config, config
        assert (prefixes[1] / "usr" / "local" / "bin" / "ringtail").exists()

        from confluent_kafka.admin import AdminClient, NewTopic
        bootstrap = ",".join(f"127.0.0.1:{ports[n]}" for n in (1, 2, 3))
        admin = AdminClient({"bootstrap.servers": bootstrap})
        deadline = time.time() + 30
        while len(admin.list_topics(timeout=5).brokers) < 3 and time.time() < deadline:
            time.sleep(0.2)
        assert sorted(admin.list_topics(timeout=5).brokers) == [1, 2, 3]
        # Replication factor 3 needs all three brokers in one cluster.
        admin.create_topics([NewTopic("deployed", 3, 3)])["deployed"].result(20)
        kcat = shutil.which("kcat")
        if kcat:
            listing = subprocess.run([kcat, "-b", f"127.0.0.1:{ports[3]}", "-L", "-t", "deployed"],
                                     capture_output=True, text=True, timeout=30)
            assert "3 brokers" in listing.stdout and "replicas: " in listing.stdout, listing.stdout

        # A second run changes nothing and leaves the brokers running.
        again = subprocess.run([playbook, "-i", str(inventory), str(DEPLOY / "ansible" / "ringtail.yml")],
                               capture_output=True, text=True, env=env, timeout=600)
        assert again.returncode == 0, again.stdout[-4000:]
        assert "changed=0" in again.stdout, again.stdout[-3000:]
    finally:
        stop_pidfiles(prefixes.values())


def test_example_config_starts_a_broker(tmp_path):
    controller = free_port()
    b = Broker(tmp_path / "data", cores=1)
    b.extra_args = ["--config", str(DEPLOY / "systemd" / "ringtail.toml"), "--node-id", "1",
                    "--advertise", b.bootstrap, "--controller-listen", f"127.0.0.1:{controller}",
                    "--controller-voters", f"1@127.0.0.1:{controller}"]
    try:
        b.start()
        from confluent_kafka.admin import AdminClient
        md = AdminClient({"bootstrap.servers": b.bootstrap}).list_topics(timeout=10)
        assert list(md.brokers) == [1]
    finally:
        b.cleanup()


def test_systemd_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    unit = (DEPLOY / "systemd" / "ringtail.service").read_text()
    assert "LimitMEMLOCK=infinity" in unit and "LimitNOFILE=" in unit and "User=ringtail" in unit
    # The unit names /usr/local/bin/ringtail; verify it against the built binary.
    local = tmp_path / "ringtail.service"
    local.write_text(unit.replace("/usr/local/bin/ringtail", str(BINARY)))
    out = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (out.stdout + out.stderr).splitlines()
                if "ringtail.service" in line and "user" not in line.lower()]
    assert not problems, out.stdout + out.stderr


def test_compose_file_describes_a_three_voter_cluster():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert sorted(services) == ["ringtail-1", "ringtail-2", "ringtail-3"]
    voters = set()
    for name, svc in services.items():
        cmd = svc["command"]
        args = dict(zip(cmd[1::2], cmd[2::2]))
        assert args["--node-id"] == name.rsplit("-", 1)[1]
        assert args["--advertise"].split(":")[0] == name
        voters.add(args["--controller-voters"])
        assert svc["security_opt"] == ["seccomp=unconfined"] and svc["ulimits"]["memlock"] == -1
    assert len(voters) == 1
    # `docker compose config` checks it against the compose schema where the
    # compose plugin is installed (it needs no daemon).
    docker = shutil.which("docker")
    has_compose = docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                            timeout=30).returncode == 0
    if has_compose:
        out = subprocess.run([docker, "compose", "-f", str(DEPLOY / "docker-compose.yml"), "config",
                              "-q"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr


def test_grafana_dashboard_queries_ringtail_metrics():
    dash = json.loads((DEPLOY / "grafana" / "ringtail.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 15 and all("ringtail_" in e for e in exprs)
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
