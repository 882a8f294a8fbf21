"""The request table the bounds walk interprets (src/protocol/schema/table.rs)
is generated from Kafka's JSON schemas in the kafka-clients jar; it must be
exactly what scripts/gen-request-schema writes today, so a change to
SUPPORTED_APIS or to the Kafka version cannot leave it stale."""

import shutil
import subprocess
import sys

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "gen-request-schema"
TABLE = ROOT / "src" / "protocol" / "schema" / "table.rs"


def run_check(output):
    return subprocess.run([sys.executable, str(SCRIPT), "--check", "--output", str(output)],
                          capture_output=True, text=True, timeout=120)


def test_committed_table_matches_the_generator():
    result = run_check(TABLE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_stale_table_is_detected(tmp_path):
    stale = tmp_path / "table.rs"
    shutil.copy(TABLE, stale)
    text = stale.read_text()
    # One field's version range off by one, as a hand edit would leave it.
    edited = text.replace("F::new(Ty::Int16, 3, 12), // Acks", "F::new(Ty::Int16, 4, 12), // Acks", 1)
    assert edited != text
    stale.write_text(edited)
    result = run_check(stale)
    assert result.returncode != 0
    assert "Acks" in result.stdout
