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

A save that spans several files (version, history, current label, datastore index)
first writes an intent, ``<root>/<image_id>/pending.json``, and removes it last; after
a kill, the datastore finds the intent at start-up and finishes or undoes that save
(``medseg.datastore.local``), so the current label, its info and the history agree.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import datetime, timezone
from typing import Any

from medseg import crashpoints, durable
from medseg.errors import MedSegInputError
from medseg.ids import image_id as checked_image_id
from medseg.ids import is_valid_name

INDEX = "index.json"
PENDING = "pending.json"


class UnknownVersionError(MedSegInputError):
    http_status = 404


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class LabelVersionStore:
    def __init__(self, root: str):
        self.root = root

    def _folder(self, image_id: str) -> str:
        return os.path.join(self.root, checked_image_id(image_id))

    def image_ids(self) -> list[str]:
        """Images that have a history folder (any valid id; other names are not ours)."""
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        return [n for n in names if os.path.isdir(os.path.join(self.root, n)) and is_valid_name(n)]

    # ---------------------------------------------------------------- intents of multi-file saves

    def begin(self, image_id: str, intent: dict[str, Any]) -> None:
        folder = self._folder(image_id)
        os.makedirs(folder, exist_ok=True)
        durable.write_bytes_atomic(os.path.join(folder, PENDING), json.dumps(intent, default=str).encode())

    def pending(self, image_id: str) -> dict[str, Any] | None:
        try:
            with open(os.path.join(self._folder(image_id), PENDING)) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except ValueError:
            return {}  # written atomically, so unreadable means hand-edited: nothing to finish

    def finish(self, image_id: str) -> None:
        durable.remove_durably(os.path.join(self._folder(image_id), PENDING))

    def discard_unlisted(self, image_id: str, version: int, ext: str) -> bool:
        """Remove version ``version``'s file when the history does not list it (a save killed midway)."""
        if any(e["version"] == version for e in self.list(image_id)):
            return False
        path = os.path.join(self._folder(image_id), f"v{int(version)}{ext}")
        if os.path.exists(path):
            durable.remove_durably(path)
            return True
        return False

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

    def next_version(self, image_id: str) -> int:
        versions = self.list(image_id)
        return versions[-1]["version"] + 1 if versions else 1

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
        durable.copy_atomic(src, os.path.join(folder, name))
        crashpoints.reached("label.version_file_written")
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
        durable.write_bytes_atomic(os.path.join(folder, INDEX), json.dumps(index, indent=2, default=str).encode())
        return entry
