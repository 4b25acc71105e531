"""Every version of an image's label, kept on disk so that no submission is ever lost.

Layout, per image::

    <root>/<image_id>/v1.nii.gz, v2.nii.gz, ...   the label files, never changed once written
    <root>/<image_id>/index.json                   {"image": ..., "versions": [entry, ...]}

Each entry says when the version was stored, by which client, where it came from
(an upload, a restore of an earlier version, or a label found on disk that no
version held yet) and which model produced the image's ``original`` label at the time.

The store keeps every version including the current one: a crash between writing
a version and replacing the current label then loses nothing. It does no locking of
its own; the datastore calls it while holding its lock.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from datetime import datetime, timezone
from typing import Any

from medseg.errors import MedSegInputError

INDEX = "index.json"


class UnknownVersionError(MedSegInputError):
    http_status = 404


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic(path: str, write) -> None:
    """Write through a temporary file in the same folder, then rename it over ``path``."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class LabelVersionStore:
    def __init__(self, root: str):
        self.root = root

    def _folder(self, image_id: str) -> str:
        if not image_id or os.sep in image_id or image_id in (".", ".."):
            raise MedSegInputError(f"invalid image id {image_id!r}")
        return os.path.join(self.root, image_id)

    def list(self, image_id: str) -> list[dict[str, Any]]:
        """All versions of the image's label, oldest first (empty when it has none)."""
        path = os.path.join(self._folder(image_id), INDEX)
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return json.load(f)["versions"]

    def latest(self, image_id: str) -> dict[str, Any] | None:
        versions = self.list(image_id)
        return versions[-1] if versions else None

    def get(self, image_id: str, version: int) -> dict[str, Any]:
        for entry in self.list(image_id):
            if entry["version"] == version:
                return entry
        raise UnknownVersionError(f"image '{image_id}' has no label version {version}; "
                                  f"list them with GET /medseg/labels/{image_id}/versions")

    def path(self, image_id: str, version: int) -> str:
        return os.path.join(self._folder(image_id), self.get(image_id, version)["file"])

    def add(self, image_id: str, src: str, ext: str, meta: dict[str, Any]) -> dict[str, Any]:
        """Store a copy of ``src`` as the next version; ``meta`` goes into its index entry.

        The file is written before the index names it, so the index never points at
        a missing or partial file.
        """
        folder = self._folder(image_id)
        os.makedirs(folder, exist_ok=True)
        versions = self.list(image_id)
        number = versions[-1]["version"] + 1 if versions else 1
        name = f"v{number}{ext}"
        with open(src, "rb") as source:
            _write_atomic(os.path.join(folder, name), lambda f: shutil.copyfileobj(source, f))
        now = time.time()
        entry = {
            "version": number,
            "file": name,
            "ts": now,
            "time": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"),
            "sha256": file_sha256(os.path.join(folder, name)),
            **meta,
        }
        index = {"image": image_id, "versions": versions + [entry]}
        _write_atomic(os.path.join(folder, INDEX), lambda f: f.write(json.dumps(index, indent=2, default=str).encode()))
        return entry
