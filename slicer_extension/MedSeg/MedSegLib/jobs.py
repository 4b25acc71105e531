"""Blocking calls on worker threads, results handed back on the thread that polls.

Slicer's scene and Qt widgets may only be touched from the main thread, and a request to the
server can take minutes (inference on a CPU server). So the widget submits the HTTP part here,
and a ``qt.QTimer`` on the main thread calls ``poll()``, which runs the callbacks of finished
jobs on the main thread (the pattern of SlicerMONAIAuto3DSeg). Nothing here imports Qt.
"""
from __future__ import annotations

import concurrent.futures
import traceback
from dataclasses import dataclass
from typing import Any, Callable, List, Optional


@dataclass
class Job:
    name: str
    future: concurrent.futures.Future
    on_done: Optional[Callable[[Any], None]]
    on_error: Optional[Callable[[BaseException, str], None]]


class BackgroundJobs:
    def __init__(self, max_workers: int = 3):
        # Several workers: a training-progress poll must not wait behind a long inference.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=max_workers,
                                                               thread_name_prefix="medseg")
        self._jobs: List[Job] = []

    def submit(self, name: str, fn: Callable, *args, on_done: Optional[Callable[[Any], None]] = None,
               on_error: Optional[Callable[[BaseException, str], None]] = None, **kwargs) -> Job:
        """Run ``fn(*args, **kwargs)`` on a worker; at most one job per name at a time."""
        if self.busy(name):
            raise RuntimeError(f"'{name}' is already running")
        job = Job(name, self._executor.submit(fn, *args, **kwargs), on_done, on_error)
        self._jobs.append(job)
        return job

    def busy(self, name: Optional[str] = None) -> bool:
        # A finished job counts until poll() has run its callback: its result is not shown yet.
        return any(name is None or j.name == name for j in self._jobs)

    def poll(self) -> int:
        """Run the callbacks of finished jobs here (the caller's thread); how many finished."""
        finished = [j for j in self._jobs if j.future.done()]
        for job in finished:
            self._jobs.remove(job)
            error = job.future.exception()
            if error is None:
                if job.on_done is not None:
                    job.on_done(job.future.result())
            elif job.on_error is not None:
                details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
                job.on_error(error, details)
        return len(finished)

    def shutdown(self) -> None:
        """Forget pending callbacks and let running calls end on their own (no scene access)."""
        self._jobs.clear()
        self._executor.shutdown(wait=False)
