"""MONAI Label's local datastore with validation before every write and atomic writes.

MONAI Label's ``LocalDatastore`` copies uploads straight into the studies folder
and rewrites its index file in place. Here every upload is read and checked
first (a corrupt or non-image file, a label off the image's grid or with
undeclared values is refused with a 4xx and nothing is stored), and files and
the index are replaced atomically, so a crash mid-save leaves the previous
version intact.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from typing import Any

import numpy as np
from filelock import FileLock
from monailabel.datastore.local import DataModel, LocalDatastore

from medseg.errors import UnknownImageError, UnsupportedMediaError
from medseg.imageio import NIFTI_SUFFIXES, Volume, read_volume, write_like
from medseg.labels import check_label_against_image, remap_label_values

logger = logging.getLogger(__name__)


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
        super().__init__(path, **kwargs)

    # ---------------------------------------------------------------- images

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        _nifti_suffix(image_filename)
        read_volume(image_filename, what="the uploaded image")  # raises a 4xx for anything that is not a readable 3D volume
        return super().add_image(image_id, image_filename, image_info)

    # ---------------------------------------------------------------- labels

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        obj = self._datastore.objects.get(image_id)
        if not obj:
            raise UnknownImageError(f"image '{image_id}' is not in the datastore; upload it before its label")
        label_ext = _nifti_suffix(label_filename)
        image = read_volume(self.get_image_uri(image_id))
        label = read_volume(label_filename, what="the uploaded label")
        label_info = dict(label_info or {})
        mapping = label_info.get("label_info")
        if mapping:
            label = Volume(remap_label_values(label.array, mapping, self.labels), label.affine, label.header)
        check_label_against_image(label, image, self.labels)

        label_path = self._datastore.label_path(label_tag)
        os.makedirs(label_path, exist_ok=True)
        name = self._filename(image_id, label_ext)
        dest = os.path.join(label_path, name)
        with FileLock(self._lock_file):
            if mapping:
                write_like(dest, label.array.astype(np.uint8), label, dtype=np.uint8)
            else:
                _atomic_copy(label_filename, dest)
            label_info["ts"] = int(time.time())
            label_info["name"] = name
            obj.labels[label_tag] = DataModel(info=label_info, ext=label_ext)
            self._update_datastore_file(lock=False)
        logger.info("saved label %s for %s (%s)", label_tag, image_id, name)
        return image_id

    def _update_datastore_file(self, lock=True):
        def write():
            self._ignore_event_config = True
            tmp = f"{self._datastore_config_path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write(json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._datastore_config_path)
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

        if lock:
            with FileLock(self._lock_file):
                write()
        else:
            write()
