"""Blocking calls on worker threads, results handed back on the thread that polls.

Slicer's scene and Qt widgets may only be touched from the main thread, and a request to the
server can take minutes (inference on a CPU server). So the widget submits the HTTP part here,
and a ``qt.QTimer`` on the main thread calls ``poll()``, which runs the callbacks of finished
jobs on the main thread (the pattern of SlicerMONAIAuto3DSeg). Nothing here imports Qt.

- Workers are daemon threads: quitting Slicer never waits for a 30-minute inference.
- ``cancel(name)`` forgets a job at once: its callbacks never run, and a job that takes the
  ``cancel`` event it was given stops its transfer. (MONAI Label cannot stop an inference it has
  started; the server finishes it and the answer is dropped.)
- ``poll()`` may be re-entered (a modal dialog in a callback runs Qt's event loop, and with it the
  timer): each job's callback runs once.
"""
from __future__ import annotations

import threading
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional


@dataclass
class Job:
    name: str
    on_done: Optional[Callable[[Any], None]]
    on_error: Optional[Callable[[BaseException, str], None]]
    cancel: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: Optional[BaseException] = None
    details: str = ""

    def run(self, fn: Callable, args, kwargs) -> None:
        try:
            self.result = fn(*args, **kwargs)
        except BaseException as e:  # noqa: B902 - handed to the main thread as it is
            self.error = e
            self.details = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        finally:
            self.finished.set()


class BackgroundJobs:
    def __init__(self):
        self._jobs: List[Job] = []
        self._lock = threading.Lock()

    def submit(self, name: str, fn: Callable, *args, on_done: Optional[Callable[[Any], None]] = None,
               on_error: Optional[Callable[[BaseException, str], None]] = None, with_cancel: bool = False,
               **kwargs) -> Job:
        """Run ``fn(*args, **kwargs)`` on a worker; at most one job per name at a time.

        ``with_cancel``: ``fn`` also gets ``cancel=<threading.Event>``, set by ``cancel(name)``.
        """
        if self.busy(name):
            raise RuntimeError(f"'{name}' is already running")
        job = Job(name, on_done, on_error)
        if with_cancel:
            kwargs["cancel"] = job.cancel
        with self._lock:
            self._jobs.append(job)
        threading.Thread(target=job.run, args=(fn, args, kwargs), name=f"medseg-{name}", daemon=True).start()
        return job

    def busy(self, name: Optional[str] = None) -> bool:
        # A finished job counts until poll() has run its callback: its result is not shown yet.
        with self._lock:
            return any(name is None or j.name == name for j in self._jobs)

    def cancel(self, name: str) -> bool:
        """Forget the job ``name`` (its callbacks will not run); whether there was one."""
        with self._lock:
            jobs = [j for j in self._jobs if j.name == name]
            for job in jobs:
                job.cancel.set()
                self._jobs.remove(job)
        return bool(jobs)

    def poll(self) -> int:
        """Run the callbacks of finished jobs here (the caller's thread); how many finished."""
        count = 0
        while True:
            with self._lock:  # take one finished job out before its callback can re-enter poll()
                job = next((j for j in self._jobs if j.finished.is_set()), None)
                if job is None:
                    return count
                self._jobs.remove(job)
            count += 1
            if job.error is None:
                if job.on_done is not None:
                    job.on_done(job.result)
            elif job.on_error is not None:
                job.on_error(job.error, job.details)

    def shutdown(self) -> None:
        """Forget every job; running calls end on their own (daemon threads, no scene access)."""
        with self._lock:
            for job in self._jobs:
                job.cancel.set()
            self._jobs.clear()
