"""MONAI Label's local datastore with validation before every write and atomic writes.

MONAI Label's ``LocalDatastore`` copies uploads straight into the studies folder
and rewrites its index file in place. Here every upload is read and checked
first (a corrupt or non-image file, a label off the image's grid or with
undeclared values is refused with a 4xx and nothing is stored), and files and
the index are replaced atomically, so a crash mid-save leaves the previous
version intact.

DICOM series live next to the NIfTI files: a sub-folder of the studies folder that
holds one series' DICOM files (one file per slice) is an image whose id is the
folder name and whose URI is the folder (``medseg.imageio.read_volume`` reads it);
its labels are NIfTI files on its grid, like every other label. ``PUT
/datastore/image`` takes a series as a ``.zip`` of its files: it is unpacked into a
hidden staging folder inside the studies folder, read and checked as a series
(``medseg.dicom.series``) and only then renamed into place, so a bad series stores
nothing and a good one appears whole.

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
import zipfile
from contextlib import contextmanager
from typing import Any

import numpy as np
from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore, LocalDatastoreModel
from monailabel.interfaces.datastore import DefaultLabelTag

from medseg.datastore.versions import LabelVersionStore, file_sha256
from medseg.errors import MedSegInputError, UnknownImageError, UnsupportedMediaError
from medseg.imageio import Volume, is_dicom_file, read_volume, write_like
from medseg.labels import check_label_against_image, nifti_suffix, read_uploaded_label

logger = logging.getLogger(__name__)

FINAL = DefaultLabelTag.FINAL.value
ORIGINAL = DefaultLabelTag.ORIGINAL.value
VERSIONS_DIR = "versions"  # <studies>/labels/versions/<image_id>/; not a label tag
SERIES_EXT = ""  # a DICOM series image: its file name is the folder name, the image id
# Limits on an uploaded series archive (a zip bomb must not fill the disk).
MAX_SERIES_FILES = 10000
MAX_SERIES_BYTES = 8 * 1024**3


class ImageIdConflictError(MedSegInputError):
    http_status = 409


def _atomic_copy(src: str, dest: str) -> None:
    tmp = os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.{os.getpid()}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def _is_series_folder(path: str) -> bool:
    """A folder whose first (visible) file is DICOM; read_series checks the rest when it is read."""
    try:
        names = sorted(n for n in os.listdir(path) if not n.startswith("."))
    except OSError:
        return False
    return any(is_dicom_file(os.path.join(path, n)) for n in names[:1] if os.path.isfile(os.path.join(path, n)))


def _unpack_series_zip(archive: str, dest: str) -> None:
    """Unpack every file of ``archive`` flat into ``dest`` (sub-folders dropped, so no path escapes dest)."""
    if not zipfile.is_zipfile(archive):
        raise UnsupportedMediaError("the upload is not a valid .zip archive; zip the series' DICOM files")
    total, count, used = 0, 0, set()
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            base = os.path.basename(member.filename.replace("\\", "/"))
            # Folders, and what archivers add beside the files (macOS resource forks, dot files).
            if member.is_dir() or not base or base.startswith(".") or member.filename.startswith("__MACOSX/"):
                continue
            count += 1
            if count > MAX_SERIES_FILES:
                raise MedSegInputError(f"the archive holds more than {MAX_SERIES_FILES} files; upload one series")
            name = base if base not in used else f"{count:05d}_{base}"
            used.add(name)
            with zf.open(member) as src, open(os.path.join(dest, name), "wb") as out:
                while chunk := src.read(1 << 20):
                    total += len(chunk)
                    if total > MAX_SERIES_BYTES:
                        raise MedSegInputError(f"the archive unpacks to more than {MAX_SERIES_BYTES >> 30} GiB")
                    out.write(chunk)


class MedSegLocalDatastore(LocalDatastore):
    def __init__(self, path: str, labels: dict[str, int], **kwargs):
        self.labels = dict(labels)
        self._lock_held = threading.local()  # before super(): its __init__ already reads the index
        super().__init__(path, **kwargs)
        self.versions = LabelVersionStore(os.path.join(self._datastore.label_path(None), VERSIONS_DIR))

    # ---------------------------------------------------------------- images

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        lower = os.path.basename(image_filename).lower()
        if lower.endswith(".zip"):
            return self._add_series(image_id, image_filename, image_info)
        if lower.endswith(".dcm") or is_dicom_file(image_filename):
            # One file: a single slice (refused as such), a multi-frame or a non-image object,
            # each with its own message from the series reader.
            from medseg.dicom.series import read_series

            read_series([image_filename], what="the uploaded DICOM file")
        nifti_suffix(image_filename)
        read_volume(image_filename, what="the uploaded image")  # raises a 4xx for anything that is not a readable 3D volume
        self._sync()  # the base class writes its in-memory index back; start from the file's
        id_from_name, _ = self._to_id(os.path.basename(image_filename))
        self._check_image_id_free(image_id or id_from_name, SERIES_EXT, "a DICOM series")
        return super().add_image(image_id, image_filename, image_info)

    def _add_series(self, image_id: str, archive: str, image_info: dict[str, Any]) -> str:
        """Store a zipped DICOM series as the folder ``<studies>/<image_id>/``, validated first."""
        from medseg.dicom.series import read_series

        image_id = image_id or os.path.basename(archive)[: -len(".zip")]
        self._check_series_id(image_id)
        images_dir = self._datastore.image_path()
        # Staged inside the studies folder (one filesystem, so the final rename is atomic) under
        # a hidden name, which the index reconcile and the file watcher both ignore.
        staging = tempfile.mkdtemp(prefix=f".upload-{image_id}-", dir=images_dir)
        try:
            _unpack_series_zip(archive, staging)
            volume = read_series(staging, what="the uploaded series")
            first = volume.dicom[0]
            info = {
                **(image_info or {}),
                "format": "dicom",
                "modality": volume.modality,
                "series_instance_uid": str(first.get("SeriesInstanceUID", "")),
                "study_instance_uid": str(first.get("StudyInstanceUID", "")),
                "n_slices": volume.shape[2],
            }
            dest = os.path.join(images_dir, image_id)
            with self._locked():
                self._reload_if_changed()
                self._check_image_id_free(image_id, None, "a NIfTI image")
                replaced = None
                if os.path.isdir(dest):  # a new upload of the same id replaces the series, as for NIfTI
                    replaced = tempfile.mkdtemp(prefix=f".replaced-{image_id}-", dir=images_dir)
                    os.replace(dest, os.path.join(replaced, "series"))
                os.replace(staging, dest)
                info["ts"] = int(time.time())
                info["name"] = image_id
                self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=SERIES_EXT))
                self._update_datastore_file(lock=False)
            if replaced:
                shutil.rmtree(replaced, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename
        logger.info("added DICOM series %s (%s, %d slices)", image_id, info["modality"], info["n_slices"])
        return image_id

    def _check_series_id(self, image_id: str) -> None:
        labels_dir = os.path.basename(os.path.normpath(self._datastore.label_path(None)))
        if (not image_id or image_id.startswith(".") or "/" in image_id or os.sep in image_id
                or image_id == labels_dir):
            raise MedSegInputError(f"{image_id!r} cannot name a series folder; pick an image id without '/', "
                                   f"not starting with '.' and other than '{labels_dir}'")

    def _check_image_id_free(self, image_id: str, other_ext: str | None, other_kind: str) -> None:
        """Refuse an id held by an image of the other kind (NIfTI vs series); same kind replaces."""
        obj = self._datastore.objects.get(image_id)
        if obj is None:
            return
        if (other_ext is None and obj.image.ext != SERIES_EXT) or (other_ext is not None and obj.image.ext == other_ext):
            raise ImageIdConflictError(f"image id '{image_id}' is already used by {other_kind}; "
                                       "pick another id (?image=...) or remove that image first")

    def _add_non_existing_images(self) -> int:
        """NIfTI files (the base class), then series folders found in the studies folder."""
        invalidate = super()._add_non_existing_images()
        images_dir = self._datastore.image_path()
        skip = {os.path.realpath(self._datastore.label_path(None))}
        for name in sorted(os.listdir(images_dir)):
            path = os.path.join(images_dir, name)
            if name.startswith(".") or not os.path.isdir(path) or os.path.realpath(path) in skip:
                continue
            if name in self._datastore.objects:
                continue  # listed already (or a NIfTI image holds the id: uploads refuse such pairs)
            if not _is_series_folder(path):
                continue
            logger.info("Adding new DICOM series: %s", name)
            info = {"ts": int(time.time()), "name": name, "format": "dicom"}
            self._datastore.objects[name] = ImageLabelModel(image=DataModel(info=info, ext=SERIES_EXT))
            invalidate += 1
        return invalidate

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
        label_ext = nifti_suffix(label_filename)
        label_info = dict(label_info or {})
        label = read_uploaded_label(label_filename, label_info, self.labels)
        mapping = label_info.get("label_info")
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
        ext = nifti_suffix(entry["file"])
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
        self.versions.add(image_id, path, current.ext or nifti_suffix(path), meta)
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
