"""`ringtail tune` with the real binary on this host: show and check, apply
and revert of real sysctls and a real block-queue attribute (restored byte
for byte), revert after a kill -9 in the middle of an apply, refusals, the
root requirement, and a tiny end-to-end experiment (also interrupted).

Tests that change the host need root and skip otherwise. Each saves the
files it may change first and writes them back in a `finally`, so a failing
test leaves the host as it found it. Snapshots go to a per-test state
directory, never /var/lib/ringtail/tune.
"""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BINARY, ROOT

SHIPPED_TUNING = ROOT / "tuning"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
APPLY_TIMEOUT_S = 30
EXPERIMENT_TIMEOUT_S = 240

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not os.access("/proc/sys/vm/swappiness", os.W_OK),
    reason="changes the host's sysctls and block queues (needs root and a writable /proc/sys)")


def sysctl_path(name):
    return Path("/proc/sys") / name.replace(".", "/")


def read_bytes(path):
    return Path(path).read_bytes()


def write_value(path, value):
    """One write, as the kernel expects."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, value if isinstance(value, bytes) else value.encode())
    finally:
        os.close(fd)


def selected(raw):
    """`none [mq-deadline] kyber` -> `mq-deadline`."""
    for word in raw.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return raw.strip()


class Saved:
    """Exact contents of kernel files, written back on `restore` (for the
    `finally` of a test whose own revert did not run or did not work)."""

    # Written in this order: a scheduler switch resets the others, and a
    # dirty ratio zeroes its *_bytes partner (so the non-zero one goes last).
    def __init__(self, paths):
        self.saved = [(Path(p), read_bytes(p)) for p in paths]

    def changed(self):
        return [str(p) for p, before in self.saved if read_bytes(p) != before]

    def restore(self):
        for path, before in self.saved:
            if read_bytes(path) == before:
                continue
            text = before.decode()
            value = selected(text) if path.name == "scheduler" else text.strip()
            if path.name.startswith("dirty_") and value == "0":
                continue  # restored by writing its non-zero partner
            try:
                write_value(path, value)
            except OSError:
                pass


def run_tune(args, state_dir, tuning_dir=None, env=None, timeout=APPLY_TIMEOUT_S, prefix=()):
    cmd = list(prefix) + [str(BINARY), "tune", "--state-dir", str(state_dir)]
    if tuning_dir is not None:
        cmd += ["--tuning-dir", str(tuning_dir)]
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("RUST_BACKTRACE", None)
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout, env=full_env)


def write_profile(tuning_dir, name, text):
    profiles = Path(tuning_dir) / "profiles"
    profiles.mkdir(parents=True, exist_ok=True)
    (profiles / f"{name}.toml").write_text(text)


def nudged(name, delta=1):
    return int(sysctl_path(name).read_text()) + delta


def snapshots(state_dir):
    return [json.loads(p.read_text()) for p in sorted(Path(state_dir).glob("*.json"))]


class Loop:
    """A loop device over a sparse file; its queue attributes are saved right
    after attaching and written back after detaching."""

    ATTRS = ["scheduler", "nr_requests", "read_ahead_kb", "wbt_lat_usec", "io_poll"]

    def __init__(self, tmp_path):
        image = tmp_path / "loop.img"
        with open(image, "wb") as f:
            f.truncate(64 << 20)
        r = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"no loop device: {r.stderr.strip()}")
        self.name = Path(r.stdout.strip()).name
        self.queue = Path("/sys/block") / self.name / "queue"
        self.saved = Saved([self.queue / a for a in self.ATTRS])

    def read(self):
        return {a: read_bytes(self.queue / a) for a in self.ATTRS}

    def close(self):
        subprocess.run(["losetup", "-d", f"/dev/{self.name}"], capture_output=True)
        self.saved.restore()


# ---------------------------------------------------------------- show, check


def test_show_json_covers_every_group(tmp_path):
    r = run_tune(["show", "--json", "--data-dir", str(tmp_path)], tmp_path / "state")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    facts = {(f["group"], f["name"]): f for f in out["facts"]}
    for group in ["cpu", "memory", "storage", "network", "io_uring", "broker"]:
        assert any(g == group for g, _ in facts), f"no {group} facts"
    for group, name in [("memory", "vm.swappiness"), ("memory", "vm.dirty_ratio"), ("memory", "thp.enabled"),
                        ("network", "net.core.busy_poll"), ("network", "net.ipv4.tcp_rmem"),
                        ("cpu", "cmdline.isolcpus"), ("io_uring", "io_uring_setup"),
                        ("broker", "flush_policy"), ("broker", "polled I/O"), ("broker", "SQPOLL")]:
        assert (group, name) in facts, f"no {group}/{name}"
    swappiness = facts[("memory", "vm.swappiness")]
    assert swappiness["value"] == sysctl_path("vm.swappiness").read_text().strip()
    assert swappiness["source"] == "/proc/sys/vm/swappiness"
    assert out["applied"] == []
    # Text mode prints the same facts with their sources.
    r = run_tune(["show", "--data-dir", str(tmp_path)], tmp_path / "state")
    assert r.returncode == 0 and "[/proc/sys/vm/swappiness]" in r.stdout, r.stdout


def test_knob_list_names_every_settable_knob(tmp_path):
    r = run_tune(["show", "--knobs"], tmp_path / "state")
    assert r.returncode == 0, r.stderr
    for knob in ["sysctl.vm.swappiness", "block.scheduler", "block.io_poll", "thp.enabled", "cpu.governor"]:
        assert knob in r.stdout
    assert "(reported only)" in r.stdout and "cmdline" in r.stdout


@needs_root
def test_check_and_serve_warn_about_the_same_setting(tmp_path, broker_factory):
    """A swappiness above 10 is a warning; the broker logs it at start."""
    tuning = tmp_path / "tuning"
    state = tmp_path / "state"
    write_profile(tuning, "swappy", 'description = "t"\n[sysctl]\nvm.swappiness = 30\n')
    saved = Saved([sysctl_path("vm.swappiness")])
    try:
        r = run_tune(["check", "swappy", "--json", "--data-dir", str(tmp_path)], state, tuning)
        assert r.returncode == 0, r.stderr
        warned = {w["knob"]: w for w in json.loads(r.stdout)}
        assert "sysctl.vm.swappiness" in warned and "batch cache" in warned["sysctl.vm.swappiness"]["reason"]
        r = run_tune(["apply", "swappy"], state, tuning)
        assert r.returncode == 0, r.stdout + r.stderr
        b = broker_factory()
        log = b.log_path.read_text(errors="replace")
        assert "host setting may hurt the broker" in log and "sysctl.vm.swappiness" in log, log[-2000:]
        b.stop()
        r = run_tune(["revert"], state)
        assert r.returncode == 0, r.stdout + r.stderr
        assert saved.changed() == []
    finally:
        saved.restore()


@needs_root
def test_check_looks_at_the_disks_given_with_device(tmp_path):
    loop = Loop(tmp_path)
    try:
        if "bfq" not in (loop.queue / "scheduler").read_text():
            pytest.skip("this kernel offers no bfq scheduler")
        write_value(loop.queue / "scheduler", "bfq")
        r = run_tune(["check", "--json", "--device", loop.name], tmp_path / "state")
        assert r.returncode == 0, r.stderr
        warned = {w["knob"]: w for w in json.loads(r.stdout)}
        assert f"block.scheduler[{loop.name}]" in warned, warned
        assert "mq-deadline or none" in warned[f"block.scheduler[{loop.name}]"]["reason"]
        r = run_tune(["check", "--json", "--data-dir", str(tmp_path)], tmp_path / "state")
        assert f"block.scheduler[{loop.name}]" not in r.stdout
    finally:
        loop.close()


# ------------------------------------------------------------ apply, revert


@needs_root
def test_apply_and_revert_real_sysctls_and_block_queue_byte_exact(tmp_path):
    loop = Loop(tmp_path)
    sysctls = ["vm.dirty_expire_centisecs", "net.ipv4.tcp_rmem", "vm.dirty_background_ratio",
               "vm.dirty_background_bytes", "net.ipv4.tcp_notsent_lowat"]
    saved = Saved([sysctl_path(s) for s in sysctls])
    tuning, state = tmp_path / "tuning", tmp_path / "state"
    try:
        before_queue = loop.read()
        rmem = [int(x) for x in sysctl_path("net.ipv4.tcp_rmem").read_text().split()]
        other = "mq-deadline" if selected(before_queue["scheduler"].decode()) == "none" else "none"
        write_profile(tuning, "round-trip", f"""
description = "round trip"
[sysctl]
vm.dirty_expire_centisecs = {nudged("vm.dirty_expire_centisecs")}
net.ipv4.tcp_rmem = [{rmem[0]}, {rmem[1] + 4096}, {rmem[2]}]
vm.dirty_background_bytes = 268435456
net.ipv4.tcp_notsent_lowat = 131072
[block]
scheduler = "{other}"
read_ahead_kb = 512
nr_requests = 64
""")
        dry = run_tune(["apply", "round-trip", "--dry-run", "--device", loop.name], state, tuning)
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert f"block.scheduler[{loop.name}]" in dry.stdout and "->" in dry.stdout
        assert saved.changed() == [] and loop.read() == before_queue, "a dry run changed the host"
        assert not list(state.glob("*.json")), "a dry run wrote a snapshot"

        r = run_tune(["apply", "round-trip", "--device", loop.name], state, tuning)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "previous values saved in" in r.stdout
        now = loop.read()
        assert selected(now["scheduler"].decode()) == other
        assert now["read_ahead_kb"].strip() == b"512" and now["nr_requests"].strip() == b"64"
        assert sysctl_path("vm.dirty_background_bytes").read_text().strip() == "268435456"
        assert sysctl_path("vm.dirty_background_ratio").read_text().strip() == "0"
        assert sysctl_path("net.ipv4.tcp_notsent_lowat").read_text().strip() == "131072"
        (snap,) = snapshots(state)
        assert snap["state"] == "applied"
        entry = {(e["knob"], e["target"]): e for e in snap["entries"]}
        assert entry[("block.scheduler", loop.name)]["previous"] == before_queue["scheduler"].decode()
        # Only named knobs (and what the kernel moves with them) are saved.
        assert {k for k, _ in entry} <= {"sysctl." + s for s in sysctls} | {
            "block.scheduler", "block.read_ahead_kb", "block.nr_requests", "block.wbt_lat_usec",
            "sysctl.vm.dirty_bytes", "sysctl.vm.dirty_ratio"}

        r = run_tune(["show", "--json"], state)
        assert json.loads(r.stdout)["applied"][0]["profile"] == "round-trip"

        r = run_tune(["revert"], state)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "every file reads as before" in r.stdout
        assert saved.changed() == [], r.stdout
        assert loop.read() == before_queue, r.stdout
        assert snapshots(state)[0]["state"] == "reverted"
        r = run_tune(["revert"], state)
        assert r.returncode == 0 and "nothing to revert" in r.stdout
    finally:
        run_tune(["revert"], state)
        saved.restore()
        loop.close()


@needs_root
def test_revert_restores_after_kill_9_in_the_middle_of_an_apply(tmp_path):
    names = ["vm.dirty_expire_centisecs", "vm.dirty_writeback_centisecs", "net.core.netdev_budget",
             "net.ipv4.tcp_notsent_lowat"]
    saved = Saved([sysctl_path(n) for n in names])
    tuning, state = tmp_path / "tuning", tmp_path / "state"
    wanted = {n: str(nudged(n, -1 if n == "net.ipv4.tcp_notsent_lowat" else 1)) for n in names}
    write_profile(tuning, "slow", 'description = "t"\n[sysctl]\n' + "".join(f"{n} = {v}\n" for n, v in wanted.items()))
    proc = None
    try:
        cmd = [str(BINARY), "tune", "--state-dir", str(state), "--tuning-dir", str(tuning), "apply", "slow"]
        env = dict(os.environ, RINGTAIL_TUNE_STEP_DELAY_MS="1500")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        deadline = time.time() + APPLY_TIMEOUT_S
        while time.time() < deadline and not saved.changed():
            time.sleep(0.02)
        changed = saved.changed()
        assert changed, "the apply changed nothing"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert 0 < len(saved.changed()) < len(names), "the kill did not land in the middle of the apply"
        (snap,) = snapshots(state)
        assert snap["state"] == "applying", snap["state"]
        assert len(snap["entries"]) == len(names), "every previous value is saved before the first change"

        r = run_tune(["show"], state)
        assert "profile slow applied" in r.stdout
        r = run_tune(["revert"], state)
        assert r.returncode == 0, r.stdout + r.stderr
        assert saved.changed() == [], r.stdout
        assert snapshots(state)[0]["state"] == "reverted"
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        run_tune(["revert"], state)
        saved.restore()


@pytest.mark.parametrize("text, needle", [
    ("[sysctl]\nvm.swapiness = 1\n", "unknown knob \"sysctl.vm.swapiness\"; did you mean sysctl.vm.swappiness"),
    ("[sysctl]\nkernel.panic = 1\n", "unknown knob \"sysctl.kernel.panic\""),
    ("[sysctl]\nvm.swappiness = 500\n", "must be in 0..=200"),
    ("[sysctl]\nvm.swappiness = \"lots\"\n", "not an integer"),
    ("[sysctl]\nnet.ipv4.tcp_rmem = [4096, 1, 6291456]\n", "ordered min <= default <= max"),
    ("[sysctl]\nnet.ipv4.tcp_congestion_control = \"warp-speed\"\n", "this host offers"),
    ("[thp]\nenabled = \"sometimes\"\n", "this host offers"),
    ("[block]\nwrite_cache = \"write through\"\n", "reported only"),
    ("[cmdline]\nisolcpus = \"1\"\n", "reboot-level"),
    ("[grub]\nisolcpus = \"1\"\n", "unknown key \"grub\""),
])
def test_unknown_knobs_and_bad_values_are_refused_before_any_change(tmp_path, text, needle):
    tuning, state = tmp_path / "tuning", tmp_path / "state"
    # A valid knob beside the bad one: the whole profile is refused.
    good = "vm.dirty_expire_centisecs = 1234\n" if text.startswith("[sysctl]") else "[sysctl.vm]\ndirty_expire_centisecs = 1234\n"
    write_profile(tuning, "bad", f'description = "t"\n{text}{good}')
    before = read_bytes(sysctl_path("vm.dirty_expire_centisecs"))
    for args in (["apply", "bad", "--dry-run"], ["apply", "bad"], ["check", "bad"]):
        r = run_tune(args, state, tuning)
        assert r.returncode != 0, f"{args}: {r.stdout}"
        assert needle in r.stderr, f"{args}: {r.stderr}"
    assert read_bytes(sysctl_path("vm.dirty_expire_centisecs")) == before
    assert not list(state.glob("*.json")), "a refused profile left a snapshot"


def test_apply_and_revert_need_root_with_a_clear_error(tmp_path):
    state = tmp_path / "state"
    if os.geteuid() == 0:
        prefix = NOBODY
    else:
        prefix = []
    before = read_bytes(sysctl_path("net.ipv4.tcp_autocorking"))
    r = run_tune(["apply", "no-autocork"], state, SHIPPED_TUNING, prefix=prefix)
    assert r.returncode != 0
    assert "ringtail tune apply needs root" in r.stderr and "--dry-run" in r.stderr, r.stderr
    r = run_tune(["revert"], state, SHIPPED_TUNING, prefix=prefix)
    assert r.returncode != 0 and "ringtail tune revert needs root" in r.stderr, r.stderr
    # Looking needs no root.
    r = run_tune(["apply", "no-autocork", "--dry-run"], state, SHIPPED_TUNING, prefix=prefix)
    assert r.returncode == 0 and "sysctl.net.ipv4.tcp_autocorking" in r.stdout, r.stderr
    assert read_bytes(sysctl_path("net.ipv4.tcp_autocorking")) == before


# -------------------------------------------------------------- experiment


def tiny_experiment(path, knob, value, bench_seconds=1, repeats=2):
    path.write_text(f"""
description = "tiny: {knob} as it is vs {value}"
metric = "messages_per_sec"
repeats = {repeats}
cooldown_s = 1
baseline = "as-is"

[workload]
mode = "produce"
args = ["--duration-s", "{bench_seconds}", "--warmup-s", "0", "--message-bytes", "256",
        "--partitions", "2", "--producers", "1"]

[broker]
cores = 1

[[variant]]
name = "nudged"
[variant.host.sysctl]
{knob.removeprefix("sysctl.")} = {value}

[[variant]]
name = "as-is"
[variant.broker]
write_buffer_bytes = 1048576
""")


@needs_root
def test_a_tiny_experiment_writes_json_report_and_plot_and_restores_the_host(tmp_path):
    knob = "sysctl.vm.dirty_expire_centisecs"
    path = sysctl_path("vm.dirty_expire_centisecs")
    saved = Saved([path])
    exp = tmp_path / "tiny.toml"
    tiny_experiment(exp, knob, nudged("vm.dirty_expire_centisecs"))
    out, state = tmp_path / "out", tmp_path / "state"
    try:
        r = run_tune(["experiment", str(exp), "--dry-run"], state, SHIPPED_TUNING)
        assert r.returncode == 0, r.stderr
        assert "order: nudged#1 as-is#1 as-is#2 nudged#2" in r.stdout, r.stdout
        r = run_tune(["experiment", str(exp), "--out", str(out)], state, SHIPPED_TUNING, timeout=EXPERIMENT_TIMEOUT_S)
        assert r.returncode == 0, r.stdout + r.stderr
        assert saved.changed() == []
        assert not [s for s in snapshots(state) if s["state"] != "reverted"]

        results = json.loads((out / "results.json").read_text())
        runs = results["runs"]
        assert [x["variant"] for x in runs] == ["nudged", "as-is", "as-is", "nudged"]
        for run in runs:
            assert run["error"] is None and run["metric"] > 0 and run["broker_exit"] == 0
            assert run["bench"]["result"]["messages"] > 0
            c = run["counters"]
            assert len(c["cpu_busy_percent"]) == os.cpu_count()
            assert c["context_switches_per_s"] > 0 and "tcp_retransmits" in c and c["disks"]
        assert runs[0]["knobs"] == [[knob, "applied"]]
        summary = {s["name"]: s for s in results["summary"]}
        assert summary["as-is"]["baseline"] and summary["as-is"]["median"] > 0
        nudged_summary = summary["nudged"]
        lo, hi = nudged_summary["ci"]
        assert lo <= nudged_summary["ratio"] <= hi
        assert 0 < nudged_summary["p_value"] <= 1
        (verdict,) = results["verdict"]
        # Two runs each can never reach p < 0.05.
        assert verdict.startswith("no difference detected between nudged and as-is"), verdict
        assert results["host_restored"] is True

        report = (out / "report.txt").read_text()
        assert "verdict: no difference detected" in report and "95% CI" in report
        assert "host restored" in report
        svg = (out / "runs.svg").read_text()
        assert svg.startswith("<svg") and svg.count('class="run"') == 4
        assert (out / "runs" / "01-nudged" / "bench.json").exists()
        assert not (out / "data").exists() or not any((out / "data").iterdir()), "run data left behind"
        # The live progress line names the runs as they go.
        assert "[run 4/4 nudged #2]" in r.stderr, r.stderr[-2000:]
    finally:
        run_tune(["revert"], state)
        saved.restore()


@needs_root
def test_ctrl_c_during_an_experiment_stops_the_run_and_reverts(tmp_path):
    path = sysctl_path("vm.dirty_writeback_centisecs")
    saved = Saved([path])
    exp = tmp_path / "long.toml"
    tiny_experiment(exp, "sysctl.vm.dirty_writeback_centisecs", nudged("vm.dirty_writeback_centisecs"),
                    bench_seconds=60)
    out, state = tmp_path / "out", tmp_path / "state"
    cmd = [str(BINARY), "tune", "--state-dir", str(state), "--tuning-dir", str(SHIPPED_TUNING),
           "experiment", str(exp), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        bench_log = out / "runs" / "01-nudged" / "bench.log"
        deadline = time.time() + 60
        while time.time() < deadline and not bench_log.exists():
            time.sleep(0.1)
        assert bench_log.exists(), "the first run's bench never started"
        time.sleep(1)
        assert saved.changed() == [str(path)], "the variant's knob is not applied during its run"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode != 0
        assert "interrupted" in stderr, stderr[-2000:]
        assert saved.changed() == []
        assert not [s for s in snapshots(state) if s["state"] != "reverted"]
        results = json.loads((out / "results.json").read_text())
        assert results["host_restored"] is True and "interrupted" in results["error"]
        assert "stopped early" in (out / "report.txt").read_text()
        assert (out / "runs.svg").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        run_tune(["revert"], state)
        saved.restore()
