"""MONAI Label's local datastore with validation before every write and atomic writes.

MONAI Label's ``LocalDatastore`` copies uploads straight into the studies folder
and rewrites its index file in place. Here every upload is read and checked
first (a corrupt or non-image file, a label off the image's grid or with
undeclared values is refused with a 4xx and nothing is stored), and files and
the index are replaced atomically, so a crash mid-save leaves the previous
version intact.

Every ``final`` label is also kept as a numbered version (``versions.py``), so a
new submission never overwrites the clinician's earlier work, and any version can
be restored (as a new version). The index may be rewritten by a task subprocess
(e.g. a scoring run); the server reloads it when the file changed, under the lock,
before reading or changing it, so neither side overwrites the other's entries.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Any

import numpy as np
from filelock import FileLock
from monailabel.datastore.local import DataModel, LocalDatastore, LocalDatastoreModel
from monailabel.interfaces.datastore import DefaultLabelTag

from medseg.datastore.versions import LabelVersionStore, file_sha256
from medseg.errors import MedSegInputError, UnknownImageError, UnsupportedMediaError
from medseg.imageio import NIFTI_SUFFIXES, Volume, read_volume, write_like
from medseg.labels import check_label_against_image, remap_label_values

logger = logging.getLogger(__name__)

FINAL = DefaultLabelTag.FINAL.value
ORIGINAL = DefaultLabelTag.ORIGINAL.value
VERSIONS_DIR = "versions"  # <studies>/labels/versions/<image_id>/; not a label tag


def _atomic_copy(src: str, dest: str) -> None:
    tmp = os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.{os.getpid()}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def _nifti_suffix(filename: str) -> str:
    for suffix in sorted(NIFTI_SUFFIXES, key=len, reverse=True):
        if filename.lower().endswith(suffix):
            return suffix
    raise UnsupportedMediaError(
        f"{os.path.basename(filename) or 'the upload'} is not a NIfTI file (.nii or .nii.gz); "
        "convert it first (DICOM series are read from the studies folder)"
    )


class MedSegLocalDatastore(LocalDatastore):
    def __init__(self, path: str, labels: dict[str, int], **kwargs):
        self.labels = dict(labels)
        self._lock_held = threading.local()  # before super(): its __init__ already reads the index
        super().__init__(path, **kwargs)
        self.versions = LabelVersionStore(os.path.join(self._datastore.label_path(None), VERSIONS_DIR))

    # ---------------------------------------------------------------- images

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        _nifti_suffix(image_filename)
        read_volume(image_filename, what="the uploaded image")  # raises a 4xx for anything that is not a readable 3D volume
        self._sync()  # the base class writes its in-memory index back; start from the file's
        return super().add_image(image_id, image_filename, image_info)

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        self._sync()
        info = super().get_image_info(image_id)
        if image_id in self._datastore.objects:
            info["label_versions"] = self.versions.list(image_id)
        return info

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        with self._locked():
            self._reload_if_changed()
            self._object(image_id).image.info.update(info)
            self._update_datastore_file(lock=False)

    # ---------------------------------------------------------------- labels

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        self._sync()
        self._object(image_id, "upload it before its label")
        if label_tag == VERSIONS_DIR:
            raise MedSegInputError(f"'{VERSIONS_DIR}' is reserved for the label history; use another tag")
        label_ext = _nifti_suffix(label_filename)
        label_info = dict(label_info or {})
        label = read_volume(label_filename, what="the uploaded label")
        mapping = label_info.get("label_info")
        if mapping:
            label = Volume(remap_label_values(label.array, mapping, self.labels), label.affine, label.header)
        self._check(image_id, label)

        # The bytes to store: the upload as sent, or the remapped label. Staged outside the
        # studies folder (the commit copies them in), so the file watcher never sees them.
        with tempfile.TemporaryDirectory(prefix="medseg-label-") as tmp:
            staged = label_filename
            if mapping:
                staged = os.path.join(tmp, f"label{label_ext}")
                write_like(staged, label.array.astype(np.uint8), label, dtype=np.uint8)
            self._commit_label(image_id, label_tag, staged, label_ext, label_info, {"source": "upload"})
        return image_id

    def label_versions(self, image_id: str) -> list[dict[str, Any]]:
        self._sync()
        self._object(image_id)
        return self.versions.list(image_id)

    def label_version_path(self, image_id: str, version: int) -> str:
        self._sync()
        self._object(image_id)
        return self.versions.path(image_id, version)

    def restore_label_version(self, image_id: str, version: int, client_id: str | None = None) -> dict[str, Any]:
        """Make version ``version`` the current final label again, as a new version."""
        self._sync()
        self._object(image_id)
        entry = self.versions.get(image_id, version)
        src = self.versions.path(image_id, version)
        # Versions found on disk were never validated; the current label must always be valid.
        self._check(image_id, read_volume(src, what=f"label version {version}"))
        label_info = {"client_id": client_id, "restored_from": version}
        ext = _nifti_suffix(entry["file"])
        meta = {"source": "restore", "restored_from": version}
        return self._commit_label(image_id, FINAL, src, ext, label_info, meta)

    # ---------------------------------------------------------------- internals

    def _object(self, image_id: str, hint: str = "list images with GET /datastore/?output=all"):
        obj = self._datastore.objects.get(image_id)
        if not obj:
            raise UnknownImageError(f"image '{image_id}' is not in the datastore; {hint}")
        return obj

    def _check(self, image_id: str, label: Volume) -> None:
        check_label_against_image(label, read_volume(self.get_image_uri(image_id)), self.labels)

    def _commit_label(self, image_id, tag, src, ext, label_info, version_meta) -> dict[str, Any]:
        """Store ``src`` (already validated) as the image's ``tag`` label; for ``final`` also as a new version.

        Order: version file and its index entry first, then the label file, then the
        datastore index; a crash at any point leaves every earlier version on disk.
        """
        name = self._filename(image_id, ext)
        dest = os.path.join(self._datastore.label_path(tag), name)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with self._locked():
            self._reload_if_changed()
            obj = self._object(image_id)  # re-read: the index may have been reloaded
            label_info = dict(label_info)
            if tag == FINAL:
                self._archive_untracked_final(image_id, obj)
                entry = self.versions.add(image_id, src, ext, self._version_meta(obj, label_info, version_meta))
                label_info["version"] = entry["version"]
            _atomic_copy(src, dest)
            label_info["ts"] = int(time.time())
            label_info["name"] = name
            obj.labels[tag] = DataModel(info=label_info, ext=ext)
            self._update_datastore_file(lock=False)
        logger.info("saved label %s for %s (%s, %s)", tag, image_id, name, version_meta.get("source"))
        return {"image": image_id, "label": image_id, "tag": tag, "version": label_info.get("version"), **version_meta}

    def _version_meta(self, obj, label_info: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        """Who stored the version, and which model produced the image's current ``original`` label."""
        original = obj.labels.get(ORIGINAL)
        original_info = original.info if original else {}
        params = original_info.get("params") or {}
        return {
            "client_id": label_info.get("client_id"),
            # An ensemble reports the versions of its members instead of one version.
            "original_model": original_info.get("model"),
            "original_model_version": params.get("model_version", params.get("members")),
            "params": {k: v for k, v in label_info.items()
                       if k not in ("ts", "name", "version", "client_id", "restored_from")},
            **extra,
        }

    def _archive_untracked_final(self, image_id: str, obj) -> None:
        """Keep a final label that no version holds yet (saved before versioning, or copied in by hand)."""
        current = obj.labels.get(FINAL)
        path = self.get_label_uri(image_id, FINAL) if current else ""
        if not path or not os.path.isfile(path):
            return
        latest = self.versions.latest(image_id)
        if latest and latest.get("sha256") == file_sha256(path):
            return
        meta = self._version_meta(obj, current.info, {"source": "found_on_disk"})
        self.versions.add(image_id, path, current.ext or _nifti_suffix(path), meta)
        logger.info("kept the untracked final label of %s as a version", image_id)

    def _sync(self) -> None:
        with self._locked():
            self._reload_if_changed()

    @contextmanager
    def _locked(self):
        """The datastore's file lock, re-entrant within a thread.

        Separate FileLock objects on one file do not nest (the inner one waits forever),
        and the base class's reconcile reads and writes the index in separate steps; here
        the whole reconcile holds the lock once, so a task subprocess starting up cannot
        write back an index read before the server's latest save.
        """
        if getattr(self._lock_held, "depth", 0):
            self._lock_held.depth += 1
            try:
                yield
            finally:
                self._lock_held.depth -= 1
            return
        with FileLock(self._lock_file):
            self._lock_held.depth = 1
            try:
                yield
            finally:
                self._lock_held.depth = 0

    def _reconcile_datastore(self):
        with self._locked():
            super()._reconcile_datastore()

    def _init_from_datastore_file(self, throw_exception=False):
        try:
            with self._locked():
                self._reload_if_changed()
        except ValueError as e:  # what the base class does with an unreadable index
            logger.error("failed to load the datastore index: %s", e)
            if throw_exception:
                raise

    def _reload_if_changed(self) -> None:
        """Take the index from disk when another process replaced it. The caller holds the lock.

        (The base class's reload takes the lock itself, and file locks do not nest.) The
        modification time alone can miss a write within the same clock tick; every write
        renames a new file into place, so the inode and size are compared as well.
        """
        st = self._index_stat()
        if st is None or self._signature(st) == getattr(self, "_index_sig", None):
            return
        with open(self._datastore_config_path) as f:
            model = LocalDatastoreModel.model_validate_json(f.read())
        model.base_path = self._datastore_path
        self._datastore = model
        self._config_ts = st.st_mtime  # what the base class's own reload compares
        self._index_sig = self._signature(st)

    def _index_stat(self):
        try:
            return os.stat(self._datastore_config_path)
        except FileNotFoundError:
            return None

    @staticmethod
    def _signature(st) -> tuple[int, int, int]:
        return st.st_mtime_ns, st.st_ino, st.st_size

    def json(self):
        self._sync()
        return super().json()

    def status(self) -> dict[str, Any]:
        self._sync()
        return super().status()

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        with self._locked():
            self._reload_if_changed()
            label = self._datastore.label(label_id, label_tag)
            if not label:
                raise UnknownImageError(f"image '{label_id}' has no '{label_tag}' label")
            label.info.update(info)
            self._update_datastore_file(lock=False)

    def _update_datastore_file(self, lock=True):
        def write():
            self._ignore_event_config = True
            tmp = f"{self._datastore_config_path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write(json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._datastore_config_path)
            st = os.stat(self._datastore_config_path)
            self._config_ts = st.st_mtime
            self._index_sig = self._signature(st)

        if lock:
            with self._locked():
                write()
        else:
            write()
