"""Small JSON files in the work dir, written atomically and updated under a file lock.

The server answers requests in several threads (and MONAI Label runs scoring in other
processes); a lock file serializes read-modify-write cycles between all of them, and
``os.replace`` means a reader never sees half a file.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path


def read_json(path: Path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, ValueError):
        # A missing or corrupt file (e.g. edited by hand) counts as empty: scores can be recomputed.
        return default


def write_json(path: Path, data) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(path: Path):
    """Exclusive lock for a read-modify-write of ``path`` (lock file beside it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
