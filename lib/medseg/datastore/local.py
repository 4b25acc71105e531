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

from medseg import crashpoints, durable
from medseg.datastore.versions import LabelVersionStore, file_sha256
from medseg.errors import MedSegInputError, UnknownImageError, UnsupportedMediaError
from medseg.ids import RESERVED_IDS, RULE, is_valid_name
from medseg.ids import image_id as checked_id
from medseg.ids import label_tag as checked_tag
from medseg.imageio import check_image_file, is_dicom_file, read_volume, write_like
from medseg.label_map import label_dtype
from medseg.labels import (
    check_label_against_image,
    nifti_suffix,
    read_uploaded_label,
    stored_as_integers,
    structures_present,
    stored_suffix,
)
from medseg.nrrd_files import is_nrrd
from medseg.request_options import flag, labelling_effort
from medseg.volume import LIMITS, GridLimits, Volume

logger = logging.getLogger(__name__)

FINAL = DefaultLabelTag.FINAL.value
ORIGINAL = DefaultLabelTag.ORIGINAL.value
VERSIONS_DIR = "versions"  # <studies>/labels/versions/<image_id>/; not a label tag
# Files of the studies folder (and of labels/<tag>/) that are images (labels): NIfTI and
# NRRD. A Slicer .seg.nrrd in the images folder is a segmentation and is skipped.
STUDY_FILE_PATTERNS = ["*.nii.gz", "*.nii", "*.nrrd"]
SERIES_EXT = ""  # a DICOM series image: its file name is the folder name, the image id
# Limits on an uploaded series archive (a zip bomb must not fill the disk): files, and bytes
# unpacked per voxel the grid limits allow (16-bit pixels plus headers, with room to spare).
MAX_SERIES_FILES = 10000
SERIES_BYTES_PER_VOXEL = 3
# Hidden folders an upload stages in (".replaced-": earlier releases' series replacement); what a
# kill leaves of them goes at the next start.
STAGING_PREFIXES = (".upload-", ".replaced-")


class ImageIdConflictError(MedSegInputError):
    http_status = 409


def _is_series_folder(path: str) -> bool:
    """A folder whose first (visible) file is DICOM; read_series checks the rest when it is read."""
    try:
        names = sorted(n for n in os.listdir(path) if not n.startswith("."))
    except OSError:
        return False
    return any(is_dicom_file(os.path.join(path, n)) for n in names[:1] if os.path.isfile(os.path.join(path, n)))


def _series_members(zf: zipfile.ZipFile, max_bytes: int) -> list[zipfile.ZipInfo]:
    """The archive's files, checked from its directory before anything is unpacked."""
    members = []
    for member in zf.infolist():
        base = os.path.basename(member.filename.replace("\\", "/"))
        # Folders, and what archivers add beside the files (macOS resource forks, dot files).
        if member.is_dir() or not base or base.startswith(".") or member.filename.startswith("__MACOSX/"):
            continue
        members.append(member)
    if len(members) > MAX_SERIES_FILES:
        raise MedSegInputError(f"the archive holds {len(members)} files, more than {MAX_SERIES_FILES}; upload one series")
    declared = sum(m.file_size for m in members)
    if declared > max_bytes:
        raise MedSegInputError(f"the archive declares {declared:,} bytes unpacked; this server takes at most "
                               f"{max_bytes:,} per series (--conf max_image_voxels)")
    return members


def _unpack_series_zip(archive: str, dest: str, max_bytes: int) -> None:
    """Unpack every file of ``archive`` flat into ``dest`` (sub-folders dropped, so no path escapes dest).

    The sizes in the archive's directory are checked first, and the bytes actually
    inflated are counted too (a directory can lie); each file must start as DICOM
    does, so a bomb of something else stops at its first member.
    """
    if not zipfile.is_zipfile(archive):
        raise UnsupportedMediaError("the upload is not a valid .zip archive; zip the series' DICOM files")
    total, used = 0, set()
    try:
        with zipfile.ZipFile(archive) as zf:
            for count, member in enumerate(_series_members(zf, max_bytes), 1):
                base = os.path.basename(member.filename.replace("\\", "/"))
                name = base if base not in used else f"{count:05d}_{base}"
                used.add(name)
                path = os.path.join(dest, name)
                with zf.open(member) as src, open(path, "wb") as out:
                    while chunk := src.read(1 << 20):
                        total += len(chunk)
                        if total > max_bytes:
                            raise MedSegInputError(f"the archive unpacks to more than {max_bytes:,} bytes")
                        out.write(chunk)
                if not is_dicom_file(path):
                    raise MedSegInputError(f"{member.filename[:120]} is not a DICOM file (in the uploaded archive)")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, OSError) as e:
        raise MedSegInputError(f"cannot unpack the archive: {e}") from e


class MedSegLocalDatastore(LocalDatastore):
    def __init__(self, path: str, labels: dict[str, int], limits: GridLimits = LIMITS, **kwargs):
        self.labels = dict(labels)
        self.limits = limits
        self._lock_held = threading.local()  # before super(): its __init__ already reads the index
        self._skipped_names: set[str] = set()  # and lists the studies folder
        super().__init__(path, **kwargs)
        self.versions = LabelVersionStore(os.path.join(self._datastore.label_path(None), VERSIONS_DIR))

    # ---------------------------------------------------------------- after a kill

    def recover(self) -> dict[str, list[str]]:
        """Finish or undo every save a kill interrupted, and remove what it left behind.

        A final-label save writes an intent first (``versions.begin``) and removes it last.
        An intent whose version the history lists was past its point of no return: the
        current label and the index are brought to that version. One the history does
        not list never got an answer: its partial version file goes, and the previous
        label stays current. The server calls this once at start-up, before it answers
        any request (task subprocesses, which open the datastore too, never do: an upload
        stages its files outside the lock).
        """
        done: dict[str, list[str]] = {"finished": [], "undone": [], "removed": []}
        with self._locked():
            self._reload_if_changed()
            for image_id in self.versions.image_ids():
                intent = self.versions.pending(image_id)
                if intent is None:
                    continue
                finished = self._finish_intent(image_id, intent)
                done["finished" if finished else "undone"].append(image_id)
                self.versions.finish(image_id)
            done["removed"] = durable.remove_leftovers(self._datastore.image_path(), STAGING_PREFIXES)
        for kind, items in done.items():
            if items:
                logger.warning("recovery after an unclean stop: %s %s", kind, items)
        return done

    def _finish_intent(self, image_id: str, intent: dict) -> bool:
        version, ext = intent.get("version"), intent.get("ext", ".nii.gz")
        obj = self._datastore.objects.get(image_id)
        listed = next((e for e in self.versions.list(image_id) if e["version"] == version), None)
        if obj is None or listed is None or listed.get("sha256") != intent.get("sha256"):
            if isinstance(version, int):
                self.versions.discard_unlisted(image_id, version, ext)
            return False
        dest = os.path.join(self._datastore.label_path(FINAL), self._filename(image_id, ext))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if not os.path.isfile(dest) or file_sha256(dest) != listed["sha256"]:
            durable.copy_atomic(self.versions.path(image_id, version), dest)
        info = dict(intent.get("label_info") or {}, version=version, name=os.path.basename(dest))
        obj.labels[FINAL] = DataModel(info=info, ext=ext)
        self._update_datastore_file(lock=False)
        return True

    # ---------------------------------------------------------------- images

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """Store an upload as image ``image_id``, checked first; 409 if the id is taken.

        ``image_info["replace"]`` true replaces an existing image: the old one is kept in
        the image's history folder and its labels are marked as drawn on it (and left out
        of training until a label is submitted for the new image).
        """
        image_info = dict(image_info or {})
        replace = flag("replace", image_info.pop("replace", False))
        lower = os.path.basename(image_filename).lower()
        if lower.endswith(".zip"):
            return self._add_series(checked_id(image_id), image_filename, image_info, replace)
        image_id = checked_id(image_id)
        if lower.endswith(".dcm") or is_dicom_file(image_filename):
            # One file: a single slice (refused as such), a multi-frame or a non-image object,
            # each with its own message from the series reader.
            from medseg.dicom.series import read_series

            read_series([image_filename], what="the uploaded DICOM file", limits=self.limits)
        if is_nrrd(image_filename):
            return self._add_nrrd(image_id, image_filename, image_info, replace)
        ext = nifti_suffix(image_filename)
        shape = check_image_file(image_filename, "the uploaded image", self.limits)
        name = self._filename(image_id, ext)
        dest = os.path.join(self._datastore.image_path(), name)
        with self._locked():
            self._reload_if_changed()
            self._check_image_id_free(image_id, SERIES_EXT, "a DICOM series")
            previous = self._take_over(image_id, replace)
            durable.copy_atomic(image_filename, dest)
            info = {**image_info, **previous, "ts": int(time.time()), "name": name, "shape": list(shape)}
            self._datastore.objects[image_id] = self._replacement(image_id, DataModel(info=info, ext=ext))
            self._update_datastore_file(lock=False)
        logger.info("added image %s (%s)%s", image_id, "x".join(map(str, shape)), " replacing the previous" * bool(previous))
        return image_id

    def _add_nrrd(self, image_id: str, nrrd_filename: str, image_info: dict[str, Any], replace: bool) -> str:
        """A NRRD image (Slicer's volume format), checked, then stored as NIfTI like every upload.

        A ``.seg.nrrd`` is a segmentation, not an image: it is refused here with a pointer
        to the label route.
        """
        from medseg.nrrd_files import is_segmentation, read_header, read_nrrd

        what = "the uploaded image"
        if is_segmentation(nrrd_filename, read_header(nrrd_filename, what)[0]):
            raise MedSegInputError(f"{what} is a segmentation (.seg.nrrd); submit it as the label of its image "
                                   "(PUT /datastore/label)")
        volume = read_nrrd(nrrd_filename, what=what, limits=self.limits)
        with tempfile.TemporaryDirectory(prefix="medseg-image-") as tmp:
            staged = os.path.join(tmp, "image.nii.gz")
            write_like(staged, volume.array, volume, dtype=np.float32)
            return self.add_image(image_id, staged, {**image_info, "replace": replace, "uploaded_format": "nrrd"})

    def _take_over(self, image_id: str, replace: bool) -> dict[str, Any]:
        """Make room for a new image under ``image_id``; what its info records of the old one."""
        obj = self._datastore.objects.get(image_id)
        if obj is None:
            return {}
        if not replace:
            raise ImageIdConflictError(f"image '{image_id}' exists already; upload under another id, or send "
                                       "params {\"replace\": true} to replace it (its labels stay, marked as drawn "
                                       "on the previous image)")
        version = int(obj.image.info.get("image_version", 1))
        folder = os.path.join(self.versions.root, image_id, "images")
        os.makedirs(folder, exist_ok=True)
        kept = os.path.join(folder, f"v{version}{obj.image.ext or ''}")
        os.replace(self.get_image_uri(image_id), kept)
        durable.fsync_dir(folder)
        durable.fsync_dir(self._datastore.image_path())
        history = list(obj.image.info.get("previous_images", []))
        history.append({"image_version": version, "file": os.path.relpath(kept, self._datastore.image_path()),
                        "ts": int(time.time())})
        return {"image_version": version + 1, "previous_images": history}

    def _replacement(self, image_id: str, image: DataModel) -> ImageLabelModel:
        """The new image with the old one's labels, each marked as drawn on the old image."""
        old = self._datastore.objects.get(image_id)
        labels = dict(old.labels) if old else {}
        previous = int(image.info.get("image_version", 1)) - 1
        for label in labels.values():
            label.info.setdefault("drawn_on_image_version", previous)
            label.info["drawn_on_previous_image"] = True
        return ImageLabelModel(image=image, labels=labels)

    def _add_series(self, image_id: str, archive: str, image_info: dict[str, Any], replace: bool = False) -> str:
        """Store a zipped DICOM series as the folder ``<studies>/<image_id>/``, validated first."""
        from medseg.dicom.series import read_series

        images_dir = self._datastore.image_path()
        # Staged inside the studies folder (one filesystem, so the final rename is atomic) under
        # a hidden name, which the index reconcile and the file watcher both ignore.
        staging = tempfile.mkdtemp(prefix=f".upload-{image_id}-", dir=images_dir)
        try:
            _unpack_series_zip(archive, staging, self.limits.max_voxels * SERIES_BYTES_PER_VOXEL)
            volume = read_series(staging, what="the uploaded series", limits=self.limits)
            first = volume.dicom[0]
            info = {
                **image_info,
                "format": "dicom",
                "modality": volume.modality,
                "series_instance_uid": str(first.get("SeriesInstanceUID", "")),
                "study_instance_uid": str(first.get("StudyInstanceUID", "")),
                "n_slices": volume.shape[2],
            }
            dest = os.path.join(images_dir, image_id)
            for path in os.listdir(staging):  # durable before the rename makes the series visible
                with open(os.path.join(staging, path), "rb+") as f:
                    os.fsync(f.fileno())
            durable.fsync_dir(staging)
            with self._locked():
                self._reload_if_changed()
                self._check_image_id_free(image_id, None, "a NIfTI image")
                info.update(self._take_over(image_id, replace))
                os.replace(staging, dest)
                durable.fsync_dir(images_dir)
                info["ts"] = int(time.time())
                info["name"] = image_id
                self._datastore.objects[image_id] = self._replacement(image_id, DataModel(info=info, ext=SERIES_EXT))
                self._update_datastore_file(lock=False)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename
        logger.info("added DICOM series %s (%s, %d slices)", image_id, info["modality"], info["n_slices"])
        return image_id

    def _check_image_id_free(self, image_id: str, other_ext: str | None, other_kind: str) -> None:
        """Refuse an id held by an image of the other kind (NIfTI vs series); same kind replaces."""
        obj = self._datastore.objects.get(image_id)
        if obj is None:
            return
        if (other_ext is None and obj.image.ext != SERIES_EXT) or (other_ext is not None and obj.image.ext == other_ext):
            raise ImageIdConflictError(f"image id '{image_id}' is already used by {other_kind}; "
                                       "pick another id (?image=...) or remove that image first")

    def _add_non_existing_images(self) -> int:
        """NIfTI files (the base class), then series folders found in the studies folder.

        A file whose name is no valid image id (``medseg.ids``) is left out, with a warning
        that says how to rename it: such a name cannot be used safely as an id.
        """
        invalidate = super()._add_non_existing_images()
        for image_id in [i for i in self._datastore.objects if not is_valid_name(i) or i in RESERVED_IDS]:
            obj = self._datastore.objects.pop(image_id)
            self._warn_skipped(obj.image.info.get("name") or image_id)
        for image_id in [i for i, o in self._datastore.objects.items()
                         if str(o.image.info.get("name", "")).lower().endswith(".seg.nrrd")]:
            name = self._datastore.objects.pop(image_id).image.info.get("name")
            if name not in self._skipped_names:
                self._skipped_names.add(name)
                logger.warning("skipped %s in the studies folder: it is a Slicer segmentation, not an image; "
                               "submit it as its image's label (PUT /datastore/label)", name)
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
            if not is_valid_name(name) or name in RESERVED_IDS:
                self._warn_skipped(name)
                continue
            logger.info("Adding new DICOM series: %s", name)
            info = {"ts": int(time.time()), "name": name, "format": "dicom"}
            self._datastore.objects[name] = ImageLabelModel(image=DataModel(info=info, ext=SERIES_EXT))
            invalidate += 1
        return invalidate

    def _warn_skipped(self, name: str) -> None:
        if name not in self._skipped_names:
            self._skipped_names.add(name)
            logger.warning("not serving %r from the studies folder: its name is not a valid image id (%s); "
                           "rename it", name, RULE)

    # Every read by id or tag checks it first (medseg.ids): MONAI Label's routes, tasks and
    # scoring all come through these, so no id or tag reaches a path unchecked.
    def get_image_uri(self, image_id: str) -> str:
        return super().get_image_uri(checked_id(image_id))

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        return super().get_label_uri(checked_id(label_id), checked_tag(label_tag))

    def get_label_info(self, label_id: str, label_tag: str) -> dict[str, Any]:
        self._sync()
        return super().get_label_info(checked_id(label_id), checked_tag(label_tag))

    def get_labels_by_image_id(self, image_id: str) -> dict[str, str]:
        return super().get_labels_by_image_id(checked_id(image_id))

    def remove_image(self, image_id: str) -> None:
        """Remove the image, its labels and its label history (an admin's explicit request)."""
        image_id = checked_id(image_id)
        with self._locked():
            self._reload_if_changed()
            obj = self._object(image_id)
            for tag in list(obj.labels):
                durable.remove_durably(self.get_label_uri(image_id, tag))
            uri = self.get_image_uri(image_id)
            if os.path.isdir(uri):
                shutil.rmtree(uri)
            else:
                durable.remove_durably(uri)
            shutil.rmtree(os.path.join(self.versions.root, image_id), ignore_errors=True)
            del self._datastore.objects[image_id]
            self._update_datastore_file(lock=False)
        logger.info("removed image %s, its labels and their history", image_id)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        label_id, label_tag = checked_id(label_id), checked_tag(label_tag)
        with self._locked():
            self._reload_if_changed()
            obj = self._object(label_id)
            if label_tag not in obj.labels:
                raise UnknownImageError(f"image '{label_id}' has no '{label_tag}' label")
            durable.remove_durably(self.get_label_uri(label_id, label_tag))
            del obj.labels[label_tag]
            self._update_datastore_file(lock=False)

    def datalist(self, full_path=True) -> list[dict[str, Any]]:
        """Image and final label pairs for training; labels drawn on a replaced image are left out."""
        pairs = super().datalist(full_path)
        stale = {i for i, obj in self._datastore.objects.items()
                 if FINAL in obj.labels and obj.labels[FINAL].info.get("drawn_on_previous_image")}
        keep = [p for p in pairs if self._to_id(os.path.basename(p["image"]))[0] not in stale]
        if len(keep) < len(pairs):
            logger.warning("training leaves out %d final labels drawn on a replaced image: %s", len(pairs) - len(keep),
                           sorted(stale))
        return keep

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        image_id = checked_id(image_id)
        self._sync()
        info = super().get_image_info(image_id)
        if image_id in self._datastore.objects:
            info["label_versions"] = self.versions.list(image_id)
        return info

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        image_id = checked_id(image_id)
        with self._locked():
            self._reload_if_changed()
            self._object(image_id).image.info.update(info)
            self._update_datastore_file(lock=False)

    # ---------------------------------------------------------------- labels

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        image_id, label_tag = checked_id(image_id), checked_tag(label_tag)
        if label_info is not None and not isinstance(label_info, dict):
            raise MedSegInputError("label params must be a JSON object")
        self._sync()
        self._object(image_id, "upload it before its label")
        label_ext = stored_suffix(label_filename)
        label_info = dict(label_info or {})
        if "effort" in label_info:
            label_info["effort"] = labelling_effort(label_info["effort"])
        image = self._image_volume(image_id)
        # The header first: a label off the image's grid is refused before its data is read.
        label = read_uploaded_label(label_filename, label_info, self.labels, expect_shape=image.shape,
                                    limits=self.limits, reference=image)
        check_label_against_image(label, image, self.labels)

        # Stored as sent when it holds plain integers (what Slicer sends, byte for byte); rewritten
        # as integers on the label's own header when it does not (float64 labels are common from
        # scripts) or when label_info remapped its values. Staged outside the studies folder (the
        # commit copies it in), so the file watcher never sees it.
        with tempfile.TemporaryDirectory(prefix="medseg-label-") as tmp:
            staged = label_filename
            converted = is_nrrd(label_filename) or is_dicom_file(label_filename)  # stored as NIfTI
            if label_info.get("label_info") or converted or not stored_as_integers(label_filename):
                staged = os.path.join(tmp, f"label{label_ext}")
                dtype = label_dtype(self.labels)
                write_like(staged, label.array.astype(dtype), label, dtype=dtype)
            source = label_info.pop("source", "upload")  # infer's save_label says "infer" (MedSegApp.infer)
            # The structures it holds go with the version, for the effort report per structure (medseg.effort).
            self._commit_label(image_id, label_tag, staged, label_ext, label_info,
                               {"source": source, "structures": structures_present(label.array, self.labels)})
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
        check_label_against_image(label, self._image_volume(image_id), self.labels)

    def _image_volume(self, image_id: str) -> Volume:
        return read_volume(self.get_image_uri(image_id), limits=self.limits)

    def _commit_label(self, image_id, tag, src, ext, label_info, version_meta) -> dict[str, Any]:
        """Store ``src`` (already validated) as the image's ``tag`` label; for ``final`` also as a new version.

        A final label touches four files: the version, the history, the current label and
        the datastore index. An intent naming the version is written before them and
        removed after them, every one durably, so a kill at any point is finished or
        undone at the next start (``recover``); the answer goes out only after all of it.
        """
        name = self._filename(image_id, ext)
        dest = os.path.join(self._datastore.label_path(tag), name)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with self._locked():
            self._reload_if_changed()
            obj = self._object(image_id)  # re-read: the index may have been reloaded
            label_info = dict(label_info, image_version=int(obj.image.info.get("image_version", 1)))
            if tag == FINAL:
                self._archive_untracked_final(image_id, obj)
                version = self.versions.next_version(image_id)
                label_info.update(version=version, ts=int(time.time()), name=name)
                self.versions.begin(image_id, {"version": version, "ext": ext, "sha256": file_sha256(src),
                                               "label_info": label_info})
                crashpoints.reached("label.intent_written")
                entry = self.versions.add(image_id, src, ext, self._version_meta(obj, label_info, version_meta))
                assert entry["version"] == version
                crashpoints.reached("label.version_listed")
            durable.copy_atomic(src, dest)
            crashpoints.reached("label.current_file_written")
            label_info["ts"] = int(time.time())
            label_info["name"] = name
            obj.labels[tag] = DataModel(info=label_info, ext=ext)
            self._update_datastore_file(lock=False)
            if tag == FINAL:
                crashpoints.reached("label.index_written")
                self.versions.finish(image_id)
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
                       if k not in ("ts", "name", "version", "client_id", "restored_from", "effort")},
            "effort": label_info.get("effort"),  # what the label cost its author, when the client says
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
        label_id, label_tag = checked_id(label_id), checked_tag(label_tag)
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
            text = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str)
            durable.write_bytes_atomic(self._datastore_config_path, text.encode())
            st = os.stat(self._datastore_config_path)
            self._config_ts = st.st_mtime
            self._index_sig = self._signature(st)

        if lock:
            with self._locked():
                write()
        else:
            write()
