"""Schemathesis against the real server on loopback: every route of /openapi.json, all its checks.

Schemathesis (4.x) generates requests from the schema, valid and invalid, and checks that the
answers are what the schema promises: no 5xx, declared statuses and content types, responses
that match their schemas, invalid data rejected, valid data accepted, 405 with the right Allow.
Bounded by --max-examples (a few hundred cases, well under a minute here).
"""

import json
import subprocess
import sys

import pytest

from conftest import ROOT

MAX_EXAMPLES = 25  # per operation and phase


def schemathesis_command():
    """The `st` command of the Schemathesis installed beside this Python."""
    pytest.importorskip("schemathesis", reason="pip install -e '.[dev]'")
    return [sys.executable, "-c", "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())"]


def test_schemathesis_finds_no_failure_on_any_route(lite0_server, tmp_path):
    url, _ = lite0_server
    command = [*schemathesis_command(), "--config-file", str(ROOT / "tests" / "schemathesis.toml"), "run",
               f"{url}/openapi.json", "--checks", "all", "--max-examples", str(MAX_EXAMPLES), "--seed", "12",
               "--request-timeout", "60", "--no-color", "--generation-database", "none",
               "--report", "json", "--report-dir", str(tmp_path)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    print(f"schemathesis: {report['test_cases']['generated']} cases, {report['test_cases']['unique_failures']} "
          f"failures, {report['operations']['tested']} operations, {report['running_time']:.0f} s")
    assert run.returncode == 0, run.stdout[-6000:]
    assert report["operations"]["tested"] == report["operations"]["total"] == 18  # TF Serving, V2, catsdogs
    assert report["test_cases"]["unique_failures"] == 0 and not report["errors"]
    assert report["test_cases"]["generated"] >= 200
