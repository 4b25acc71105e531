"""Named points inside multi-step writes where the crash tests kill the server.

``tests/e2e/test_crash_safety.py`` starts a real server with ``MEDSEG_CRASH_AT=<name>:<n>``;
the n-th time a save reaches that point (the first when ``:<n>`` is left out) the process
kills itself with SIGKILL, exactly as ``kill -9`` would (no cleanup, no flush of Python
buffers). Without the variable, ``reached`` is a dictionary lookup and nothing else.
"""
from __future__ import annotations

import os
import signal

ENV = "MEDSEG_CRASH_AT"

# In the order a final-label save passes them (medseg.datastore.local._commit_label).
LABEL_SAVE = (
    "label.intent_written",
    "label.version_file_written",
    "label.version_listed",
    "label.current_file_written",
    "label.index_written",
)


_passes: dict[str, int] = {}


def reached(name: str) -> None:
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
