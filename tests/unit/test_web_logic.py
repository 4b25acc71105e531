"""The browser client's logic modules (web/app/js), run by node's own test runner.

web/test/*.test.mjs cover the label map (brush in mm, eraser, undo and redo, pasting a
changed-region answer), the mapping between NiiVue's RAS order and the file's voxel order,
NIfTI label files, segments and the guided-edit requests. The page itself is tested in a real
browser by tests/e2e/test_browser.py.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO


def test_the_page_logic_passes_its_node_tests():
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the page's unit tests: node is missing (.ci/run installs nodejs)")
        pytest.skip("node is not installed")
    done = subprocess.run([node, "--test", "test/"], cwd=REPO / "web", capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]

