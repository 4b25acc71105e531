"""Schemathesis fuzzes every operation of the server's OpenAPI schema: no answer may be a 5xx.

Bounded in examples and time so it fits CI. Operations that start background processes
(training, batch inference, scoring) are left out: their inputs are checked by the
security tests, and a fuzzer that starts hundreds of trainings measures nothing.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

EXAMPLES_PER_OPERATION = 60
SEED = 14


def test_no_operation_answers_5xx(training_server, tmp_path):
    """On a server of its own (the fuzzer changes image and label info)."""
    schemathesis = Path(sys.executable).with_name("schemathesis")
    cmd = [str(schemathesis), "run", f"{training_server.url}/openapi.json", "--checks", "not_a_server_error",
           "--max-examples", str(EXAMPLES_PER_OPERATION), "--seed", str(SEED), "--workers", "1",
           "--request-timeout", "120", "--exclude-deprecated",
           "--exclude-path-regex", r"^/(train|batch|scoring)/",
           "--report", "junit", "--report-dir", str(tmp_path)]
    env = dict(os.environ, NO_COLOR="1")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env)
    out = done.stdout + done.stderr
    summary = re.search(r"(\d+) generated", out)
    print(f"schemathesis: {summary.group(0) if summary else 'no summary'}; exit {done.returncode}")
    assert summary and int(summary.group(1)) > 100, out[-3000:]
    assert done.returncode == 0, out[-6000:]
