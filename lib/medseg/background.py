"""Background work yields the CPU to a clinician's requests.

MONAI Label runs training and scoring in task processes of their own, next to the
server that answers infer, next-sample and submit requests. At normal priority they
share the cores evenly with it, and on a small machine an infer then takes several
times as long. Task processes lower their own priority (``os.nice``) when they start:
with nobody waiting they still get every idle cycle, and an interactive request is
served first. The server process itself is never lowered.

On Linux both the niceness and the scheduling policy belong to a thread, not to the
process: ``os.nice`` in the task's main thread left the worker threads torch had already
started (its intra-op pool, where the training's arithmetic runs) at full priority. So
every thread of the process is lowered, and put under ``SCHED_IDLE`` where the system has
it: such threads run only on a core nothing else wants, and yield it as soon as a
request's thread wakes up. Threads started later inherit this from the thread that starts them.
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
        threads = process_threads()
        for thread in threads:
            lower_thread(thread)
        lower_priority.done = True
        logger.info("background task: CPU priority lowered (niceness %d, %s) for %d threads", os.nice(0),
                    "SCHED_IDLE" if hasattr(os, "SCHED_IDLE") else "no idle policy", len(threads))
    return True


def process_threads() -> list[int]:
    """Kernel ids of this process's threads (Linux), or [0]: the calling thread only."""
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


def lower_thread(thread: int) -> None:
    """Niceness up by NICENESS and the idle policy, for one thread; a thread that ended meanwhile is skipped."""
    try:
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + NICENESS))
        if hasattr(os, "SCHED_IDLE"):
            os.sched_setscheduler(thread, os.SCHED_IDLE, os.sched_param(0))
    except (ProcessLookupError, PermissionError):
        pass
