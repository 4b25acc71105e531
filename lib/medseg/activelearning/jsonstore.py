"""Small JSON files in the work dir, written atomically and updated under a file lock.

The server answers requests in several threads (and MONAI Label runs scoring in other
processes); a lock file serializes read-modify-write cycles between all of them, and
``os.replace`` means a reader never sees half a file.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
from pathlib import Path

from medseg import durable


def read_json(path: Path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, ValueError):
        # A missing or corrupt file (e.g. edited by hand) counts as empty: scores can be recomputed.
        return default


def write_json(path: Path, data) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    durable.write_bytes_atomic(path, json.dumps(data, indent=1, sort_keys=True).encode())


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
