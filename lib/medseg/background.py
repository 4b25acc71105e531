"""Background work yields the CPU to a clinician's requests.

MONAI Label runs training and scoring in task processes of their own, next to the
server that answers infer, next-sample and submit requests. At normal priority they
share the cores evenly with it, and on a small machine an infer then takes several
times as long. Task processes lower their own priority (``os.nice``) when they start:
with nobody waiting they still get every idle cycle, and an interactive request is
served first. The server process itself is never lowered.
"""
from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger(__name__)

NICENESS = 10  # added to the process's niceness (0 normal, 19 lowest)


TASK_RUNNER = os.path.join("monailabel", "interfaces", "utils", "app.py")  # what MONAI Label's task processes run


def in_task_process(argv: list[str] | None = None) -> bool:
    """True in a process MONAI Label started for a background task (``python -m monailabel.interfaces.utils.app``)."""
    argv = sys.argv if argv is None else argv
    return bool(argv) and os.path.normpath(argv[0]).endswith(TASK_RUNNER)


def lower_priority() -> bool:
    """Lower a task process's CPU priority once; False (and nothing done) anywhere else (the server, tests)."""
    if not in_task_process():
        return False
    if not getattr(lower_priority, "done", False):
        os.nice(NICENESS)
        lower_priority.done = True
        logger.info("background task: CPU priority lowered (niceness %d)", os.nice(0))
    return True
