"""Durable, atomic file writes: what is acknowledged survives a kill and a power loss.

A write goes to a hidden temporary file in the destination's folder, is flushed and
fsynced, renamed over the destination (atomic on POSIX), and then the folder itself is
fsynced, since the rename lives in the folder's entry and is lost with the page cache
otherwise (ext4, xfs). A reader sees the old file or the new one, never a part.

Temporary names all end in ``TMP_SUFFIX`` and start with a dot, so the datastore's
file watcher and reconcile ignore them and ``remove_leftovers`` can find what a kill
left behind.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, IO

TMP_SUFFIX = ".tmp"


def fsync_dir(folder: str | os.PathLike) -> None:
    fd = os.open(str(folder), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(dest: str | os.PathLike, keep_suffix: str = "") -> str:
    """A hidden name beside ``dest``; ``keep_suffix`` last (nibabel picks the format by suffix)."""
    dest = str(dest)
    return os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.{os.getpid()}{TMP_SUFFIX}{keep_suffix}")


def commit(tmp: str | os.PathLike, dest: str | os.PathLike) -> None:
    """fsync ``tmp``, rename it over ``dest``, fsync the folder."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dest)
    fsync_dir(os.path.dirname(os.path.abspath(dest)))


def write_atomic(dest: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``dest`` through ``write(file)``; on any error the old ``dest`` stays and no temp file is left."""
    tmp = temp_name(dest)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        fsync_dir(os.path.dirname(os.path.abspath(dest)))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes_atomic(dest: str | os.PathLike, data: bytes) -> None:
    write_atomic(dest, lambda f: f.write(data))


def copy_atomic(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    with open(src, "rb") as source:
        write_atomic(dest, lambda f: shutil.copyfileobj(source, f, 1 << 20))


def remove_durably(path: str | os.PathLike) -> None:
    """Remove a file (if there) and make the removal durable."""
    try:
        os.remove(path)
    except FileNotFoundError:
        return
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def remove_leftovers(root: str | os.PathLike, prefixes: tuple[str, ...] = ()) -> list[str]:
    """Delete the temporary files (and hidden staging folders named by ``prefixes``) under ``root``.

    Hidden folders are not entered.
    Call only while no write can be in progress (at start-up, holding the datastore lock).
    Returns what was removed, relative to ``root``.
    """
    removed = []
    root = Path(root)
    for folder, dirs, files in os.walk(root):
        for name in files:
            if name.startswith(".") and TMP_SUFFIX in name:
                os.remove(os.path.join(folder, name))
                removed.append(os.path.relpath(os.path.join(folder, name), root))
        for name in list(dirs):
            if not name.startswith("."):
                continue
            dirs.remove(name)  # hidden folders (.medseg: caches, weights) are not the datastore's records
            if prefixes and name.startswith(prefixes):
                shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
                removed.append(os.path.relpath(os.path.join(folder, name), root))
    return removed
