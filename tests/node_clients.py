"""kafkajs for the tests, installed by the suite itself with npm into
`.cache/node` (git-ignored) the first time a test asks for it; tests that
need it are skipped where node or npm is missing or the install fails."""

import os
import shutil
import subprocess

import pytest

from conftest import ROOT

KAFKAJS_VERSION = "2.2.4"
NODE_DIR = ROOT / ".cache" / "node"


def kafkajs():
    """Path of the node_modules holding kafkajs; skips the test without it."""
    modules = NODE_DIR / "node_modules"
    if (modules / "kafkajs" / "package.json").exists():
        return modules
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("node and npm are needed for kafkajs")
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR),
                          f"kafkajs@{KAFKAJS_VERSION}"], capture_output=True, text=True, timeout=300)
    if out.returncode != 0 or not (modules / "kafkajs").exists():
        pytest.skip(f"npm could not install kafkajs: {out.stderr[-500:]}")
    return modules


def run_node(script, *args, timeout=120):
    """Runs `script` with kafkajs on the module path; returns the process."""
    env = dict(os.environ, NODE_PATH=str(kafkajs()))
    return subprocess.run(["node", "-e", script, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
