"""A DICOMweb PACS (e.g. Orthanc) as MONAI Label's datastore: ``--studies http://host:8042/dicom-web``.

Images are the PACS's CT and MR series (id: SeriesInstanceUID); the ``final`` label
of an image is the newest DICOM SEG series in the PACS that references it. So the
PACS is the only source of truth for images and final labels, and several servers
(or a restart with an empty cache) see the same labels.

How this differs from MONAI Label's ``DICOMWebDatastore`` (which it subclasses, so
MONAI Label's endpoints and clients treat it as a DICOMweb datastore):
- MONAI Label writes SEGs with dcmqi's ``itkimage2segimage``, downloaded from GitHub
  when the server starts (``MONAILabelApp._download_dcmqi_tools``); here
  ``medseg.dicom.seg`` writes them in-process, so nothing is downloaded at run time.
- Its default search filter (``MONAI_LABEL_DICOMWEB_SEARCH_FILTER``) lists CT only,
  and without one it would list SEG, SR or ECG series as images; here every series
  of an image modality is listed, never anything else (a filter set explicitly in
  the environment is still applied on top).
- It caches the image and label lists for two hours, so series pushed later and
  SEGs from other servers stay unseen; here for a few seconds.
- It stores whatever label file it is sent and turns it into a SEG; here a label
  goes through the same checks as in the local datastore (image grid, declared
  values) and nothing reaches the PACS unless it passed them and its SEG reads back
  into the same label map.
- It takes the first SEG found as an image's label; here the newest (by content
  date and time). Earlier SEGs stay in the PACS: no label is ever lost, and they are
  listed as the image's ``label_versions``.

What the PACS holds (its series, which SEG is whose label) is ``medseg.datastore.pacs``.
The downloaded series (``<cache>/series/<SeriesInstanceUID>/``) is the image file
the pipeline reads (``medseg.imageio.read_volume`` reads a DICOM series folder, and
``medseg.dicom.seg`` needs the source instances). The label map of a SEG is kept as
``<cache>/segs/<SEG SeriesInstanceUID>.nii.gz``; a SEG never changes, so neither
does that file. Labels of other tags (``original``: the model's prediction) and
info that scoring methods add to images stay in the cache folder, like MONAI
Label's own DICOMweb datastore keeps them locally.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import requests
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.interfaces.datastore import DefaultLabelTag

from medseg.activelearning.jsonstore import locked, read_json, write_json
from medseg.datastore.pacs import (IMAGE_MODALITIES, ImageSeries, PacsError, PacsListing, SegSeries, Snapshot,
                                   TimeoutSession, search_filter_from_settings)
from medseg.errors import MedSegInputError, UnknownImageError
from medseg.ids import image_id as checked_id
from medseg.ids import label_tag as checked_tag
from medseg.imageio import read_volume, write_like
from medseg.labels import check_label_against_image, read_uploaded_label
from medseg.volume import Volume

logger = logging.getLogger(__name__)

FINAL = DefaultLabelTag.FINAL.value


class NotInThisDatastoreError(MedSegInputError):
    """An operation a PACS-backed datastore does not offer through MONAI Label's REST API."""

    http_status = 405


def _tag_name(label_tag) -> str:
    """A label tag as plain text, checked (``medseg.ids``): MONAI Label passes DefaultLabelTag members too."""
    return checked_tag(getattr(label_tag, "value", label_tag) or FINAL)


class MedSegDICOMwebDatastore(DICOMWebDatastore):
    def __init__(self, client, labels: dict[str, int], cache_dir: str | os.PathLike,
                 search_filter: dict[str, Any] | None = None, modalities=IMAGE_MODALITIES):
        # DICOMWebDatastore.__init__ is not called: it starts MONAI Label's local datastore (a file
        # watcher and an index) over a cache of NIfTI conversions that this class does not use.
        self._client = client
        self._search_filter = dict(search_filter or {})
        self._fetch_by_frame = False
        self._convert_to_nifti = False
        self.labels = dict(labels)
        self.modalities = tuple(m.upper() for m in modalities)
        self.cache = Path(cache_dir)
        for sub in ("series", "segs", "labels"):
            (self.cache / sub).mkdir(parents=True, exist_ok=True)
        self._index_path = self.cache / "index.json"  # image info and non-final labels (tag -> info)
        self._lock = threading.RLock()
        self.listing = PacsListing(client, self.labels, self.modalities, self._search_filter,
                                   self.cache / "seg_refs.json")
        self._name = client.base_url
        self._description = f"DICOMweb: {client.base_url}"
        logger.info("DICOMweb datastore %s (modalities %s, filter %s), cache %s",
                    client.base_url, "/".join(self.modalities), self._search_filter or "none", self.cache)

    # ------------------------------------------------------------------ names

    def name(self) -> str:
        return self._name

    def set_name(self, name: str):
        self._name = name

    def description(self) -> str:
        return self._description

    def set_description(self, description: str):
        self._description = description

    # ------------------------------------------------------------------ the PACS

    def _pacs(self, what: str, call, *args, **kwargs):
        return self.listing.call(what, call, *args, **kwargs)

    def snapshot(self, fresh: bool = False) -> Snapshot:
        return self.listing.snapshot(fresh)

    def refresh(self) -> None:
        self.listing.refresh()

    def _image(self, image_id: str) -> ImageSeries:
        checked_id(image_id)
        entry = self.snapshot().images.get(image_id) or self.snapshot(fresh=True).images.get(image_id)
        if entry is None:
            raise UnknownImageError(f"image '{image_id}' is not a {'/'.join(self.modalities)} series in the PACS "
                                    f"{self._client.base_url}; "
                                    "list images with GET /datastore/?output=all")
        return entry

    # ------------------------------------------------------------------ images

    def list_images(self) -> list[str]:
        return list(self.snapshot().images)

    def get_labeled_images(self, label_tag: str | None = None, labels=None) -> list[str]:
        tag = _tag_name(label_tag)
        snap = self.snapshot()
        if tag == FINAL:
            return [i for i in snap.images if snap.segs.get(i)]
        local = self._index().get("labels", {})
        return [i for i in snap.images if tag in local.get(i, {})]

    def get_unlabeled_images(self, label_tag: str | None = None, labels=None) -> list[str]:
        labeled = set(self.get_labeled_images(label_tag, labels))
        return [i for i in self.list_images() if i not in labeled]

    def get_image_uri(self, image_id: str) -> str:
        """The series folder in the cache, downloaded first if needed; "" for an unknown image."""
        try:
            entry = self._image(image_id)
        except UnknownImageError:
            return ""
        folder = self.cache / "series" / image_id
        if folder.is_dir() and (entry.n_instances is None or len(os.listdir(folder)) == entry.n_instances):
            return str(folder)
        self._download_series(entry, folder)
        return str(folder)

    def _download_series(self, entry: ImageSeries, folder: Path) -> None:
        # Into a folder of its own, renamed into place when complete: a reader (another
        # thread, a training process) never sees half a series.
        staging = folder.parent / f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        staging.mkdir(parents=True)
        start = time.time()
        try:
            n = 0
            try:
                for ds in self._client.iter_series(entry.study_uid, entry.uid):  # streamed, one instance at a time
                    ds.save_as(str(staging / f"{ds.SOPInstanceUID}.dcm"), write_like_original=False)
                    n += 1
            except requests.RequestException as e:
                raise PacsError(f"the PACS at {self._client.base_url} failed to send series {entry.uid}: {e}") from e
            if n == 0:
                raise PacsError(f"the PACS sent no instances for series {entry.uid}")
            if folder.exists():  # the series grew in the PACS since it was cached
                old = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}.old"
                os.replace(folder, old)
                shutil.rmtree(old, ignore_errors=True)
            try:
                os.replace(staging, folder)
            except OSError:  # another thread or process got there first; its copy is as good
                shutil.rmtree(staging, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        logger.info("downloaded series %s (%d instances) in %.1f s", entry.uid, n, time.time() - start)

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        snap = self.snapshot()
        entry = snap.images.get(image_id)
        if entry is None:
            return {}
        info = {**entry.info, "name": image_id, **self._index().get("images", {}).get(image_id, {})}
        folder = self.cache / "series" / image_id
        if folder.is_dir():
            info["path"] = str(folder)
        info["label_versions"] = [self._version_entry(s, n) for n, s in enumerate(snap.segs.get(image_id, []), 1)]
        return info

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        self._image(image_id)
        with locked(self._index_path):
            index = self._index()
            index.setdefault("images", {}).setdefault(image_id, {}).update(info)
            write_json(self._index_path, index)

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        raise NotInThisDatastoreError(
            f"images come from the PACS {self._client.base_url}; send the DICOM series there "
            "(STOW-RS, C-STORE or the PACS's upload) and it is listed within seconds")

    def remove_image(self, image_id: str) -> None:
        raise NotInThisDatastoreError(f"images belong to the PACS {self._client.base_url}; remove them there")

    def get_dataset_archive(self, limit_cases: int | None) -> str:
        raise NotInThisDatastoreError("no dataset archive for a DICOMweb datastore; export the studies from the PACS")

    # ------------------------------------------------------------------ labels

    def get_labels_by_image_id(self, image_id: str) -> dict[str, str]:
        snap = self.snapshot()
        if image_id not in snap.images:
            return {}
        tags = {tag: image_id for tag in self._index().get("labels", {}).get(image_id, {})}
        if snap.segs.get(image_id):
            tags[FINAL] = image_id
        return tags

    def get_label_by_image_id(self, image_id: str, tag: str) -> str:
        return self.get_labels_by_image_id(image_id).get(tag, "")

    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        """A NIfTI label map on the image's grid; for ``final``, the one of the image's newest SEG."""
        image_id = image_id or label_id  # a label's id is its image's id, as in the local datastore
        tag = _tag_name(label_tag)
        if tag != FINAL:
            path = self._local_label_path(image_id, tag)
            return str(path) if tag in self._index().get("labels", {}).get(image_id, {}) and path.exists() else ""
        segs = self.snapshot().segs.get(image_id)
        if not segs:
            return ""
        return str(self._seg_label_map(image_id, segs[-1]))

    def _seg_label_map(self, image_id: str, seg: SegSeries) -> Path:
        path = self.cache / "segs" / f"{seg.uid}.nii.gz"
        with self._lock:  # one conversion per SEG in this process (write_like's temp name is per process)
            if path.exists():
                return path
            from medseg.dicom.seg import read_seg

            source = read_volume(self.get_image_uri(image_id))
            ds = self._pacs("send the SEG", self._client.retrieve_instance, seg.study_uid, seg.uid, seg.sop_uid)
            write_like(path, read_seg(ds, source, self.labels), source, dtype=np.uint8)
            logger.info("label map of %s from SEG %s", image_id, seg.uid)
        return path

    def get_label_info(self, label_id: str, label_tag: str) -> dict[str, Any]:
        tag = _tag_name(label_tag)
        if tag != FINAL:
            return dict(self._index().get("labels", {}).get(label_id, {}).get(tag, {}))
        segs = self.snapshot().segs.get(label_id)
        if not segs:
            return {}
        entry = self._version_entry(segs[-1], len(segs))
        return {**entry, "name": f"{label_id}.nii.gz", **self._index().get("segs", {}).get(segs[-1].uid, {})}

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        tag = _tag_name(label_tag)
        with locked(self._index_path):
            index = self._index()
            if tag == FINAL:
                segs = self.snapshot().segs.get(label_id)
                if not segs:
                    raise UnknownImageError(f"image '{label_id}' has no final label")
                index.setdefault("segs", {}).setdefault(segs[-1].uid, {}).update(info)
            else:
                labels = index.setdefault("labels", {}).get(label_id, {})
                if tag not in labels:
                    raise UnknownImageError(f"image '{label_id}' has no '{tag}' label")
                labels[tag].update(info)
            write_json(self._index_path, index)

    def _version_entry(self, seg: SegSeries, version: int) -> dict[str, Any]:
        stored = self._index().get("segs", {}).get(seg.uid, {})
        return {"version": version, "SeriesInstanceUID": seg.uid, "StudyInstanceUID": seg.study_uid,
                "ts": seg.ts, "SeriesDescription": seg.series_description,
                "segments": seg.segment_labels, "client_id": stored.get("client_id")}

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any],
                   label_id: str = "") -> str:
        """Check the label, then store it: ``final`` as a new SEG series in the PACS, other tags in the cache."""
        entry = self._image(image_id)
        tag = _tag_name(label_tag)
        label_info = dict(label_info or {})
        source = read_volume(self.get_image_uri(image_id))
        label = read_uploaded_label(label_filename, label_info, self.labels, reference=source)
        check_label_against_image(label, source, self.labels)
        array = np.rint(label.array).astype(np.uint8)
        if tag == FINAL:
            self._store_seg(image_id, entry, array, source, label_info)
        else:
            self._store_local_label(image_id, tag, array, source, label_info)
        return image_id

    def _store_seg(self, image_id: str, entry: ImageSeries, array: np.ndarray, source: Volume,
                   label_info: dict[str, Any]) -> None:
        import pydicom

        from medseg.dicom.seg import read_seg, write_seg

        client_id = label_info.get("client_id")
        description = "MedSeg final label" + (f" ({client_id})" if client_id else "")
        with tempfile.TemporaryDirectory(prefix="medseg-seg-") as tmp:
            path = write_seg(array, source, self.labels, Path(tmp) / "seg.dcm", series_description=description[:64],
                             algorithm_type="SEMIAUTOMATIC")
            ds = pydicom.dcmread(str(path))
            # The PACS keeps what it is sent for good: refuse to send a SEG that does not
            # give back exactly the label that was checked.
            if not np.array_equal(read_seg(ds, source, self.labels), array):
                raise RuntimeError(f"the DICOM SEG written for {image_id} does not read back into the submitted "
                                   "label; nothing was stored")
            self._stow(ds)
        # Who stored it and with which params: the SEG has no place for them, the cache does.
        with locked(self._index_path):
            index = self._index()
            index.setdefault("segs", {})[str(ds.SeriesInstanceUID)] = {
                "client_id": client_id, "image": image_id, "stored": int(time.time()),
                "params": {k: v for k, v in label_info.items() if k not in ("client_id", "label_info")}}
            write_json(self._index_path, index)
        self.refresh()
        logger.info("final label of %s stored in the PACS as SEG series %s", image_id, ds.SeriesInstanceUID)

    def _stow(self, ds) -> None:
        try:
            result = self._client.store_instances([ds])
        except requests.RequestException as e:
            raise PacsError(f"the PACS at {self._client.base_url} refused the SEG: {e}") from e
        failed = result.get("FailedSOPSequence") if result is not None else None
        if failed:
            reasons = [str(item.get("FailureReason", "?")) for item in failed]
            raise PacsError(f"the PACS at {self._client.base_url} refused the SEG (failure reasons {reasons})")

    def _local_label_path(self, image_id: str, tag: str) -> Path:
        return self.cache / "labels" / checked_tag(tag) / f"{checked_id(image_id)}.nii.gz"

    def _store_local_label(self, image_id: str, tag: str, array: np.ndarray, source: Volume,
                           label_info: dict[str, Any]) -> None:
        path = self._local_label_path(image_id, tag)
        path.parent.mkdir(parents=True, exist_ok=True)
        with locked(self._index_path):
            write_like(path, array, source, dtype=np.uint8)
            index = self._index()
            label_info.update({"ts": int(time.time()), "name": path.name})
            index.setdefault("labels", {}).setdefault(image_id, {})[tag] = label_info
            write_json(self._index_path, index)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        tag = _tag_name(label_tag)
        if tag == FINAL:
            raise NotInThisDatastoreError(
                "final labels are SEG series in the PACS and MedSeg never deletes them; "
                "a newer final label replaces this one, or delete the SEG series in the PACS")
        with locked(self._index_path):
            index = self._index()
            index.get("labels", {}).get(label_id, {}).pop(tag, None)
            write_json(self._index_path, index)
        self._local_label_path(label_id, tag).unlink(missing_ok=True)

    # ------------------------------------------------------------------ listings

    def _index(self) -> dict[str, Any]:
        return read_json(self._index_path, {}) or {}

    def datalist(self, full_path=True) -> list[dict[str, Any]]:
        pairs = []
        for image_id in self.get_labeled_images(FINAL):
            try:
                pairs.append({"image": self.get_image_uri(image_id), "label": self.get_label_uri(image_id, FINAL)})
            except MedSegInputError as e:  # one unreadable SEG must not stop training on the others
                logger.error("final label of %s left out of training: %s", image_id, e)
        return pairs

    def json(self) -> dict[str, Any]:
        snap = self.snapshot()
        objects = {}
        for image_id in snap.images:
            labels = {tag: {"ext": ".nii.gz", "info": self.get_label_info(image_id, tag)}
                      for tag in self.get_labels_by_image_id(image_id)}
            objects[image_id] = {"image": {"ext": "", "info": self.get_image_info(image_id)}, "labels": labels}
        return {"name": self.name(), "description": self.description(), "images_dir": "series",
                "labels_dir": "labels", "objects": objects}

    def status(self) -> dict[str, Any]:
        snap = self.snapshot()
        tags: dict[str, int] = {}
        for image_id in snap.images:
            for tag in self.get_labels_by_image_id(image_id):
                tags[tag] = tags.get(tag, 0) + 1
        return {"total": len(snap.images), "completed": len(self.get_labeled_images(FINAL)), "label_tags": tags}

    def _download_labeled_data(self):  # MONAI Label's variant fills its NIfTI cache; nothing to do here
        return None


def dicomweb_datastore(url: str, labels: dict[str, int], work_dir: str | os.PathLike) -> MedSegDICOMwebDatastore:
    """The datastore for ``--studies <DICOMweb URL>``, set up from MONAI Label's settings.

    Used: MONAI_LABEL_DATASTORE_USERNAME/PASSWORD (or the older MONAI_LABEL_DICOMWEB_*),
    MONAI_LABEL_QIDO_PREFIX/WADO_PREFIX/STOW_PREFIX, MONAI_LABEL_DATASTORE_CACHE_PATH
    (or MONAI_LABEL_DICOMWEB_CACHE_PATH; default ``<work_dir>/dicomweb``), and
    MONAI_LABEL_DICOMWEB_SEARCH_FILTER when it is set in the environment.
    """
    from monailabel.config import settings
    from monailabel.datastore.dicom import DICOMwebClientX

    url = url.strip().rstrip("/")
    session = TimeoutSession()
    username = settings.MONAI_LABEL_DATASTORE_USERNAME or settings.MONAI_LABEL_DICOMWEB_USERNAME
    password = settings.MONAI_LABEL_DATASTORE_PASSWORD or settings.MONAI_LABEL_DICOMWEB_PASSWORD
    if username and password:
        session.auth = (username, password)
    client = DICOMwebClientX(url=url, session=session, qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
                             wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
                             stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX)
    cache = (settings.MONAI_LABEL_DATASTORE_CACHE_PATH or settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip()
    cache_dir = Path(cache) / hashlib.sha1(url.encode()).hexdigest()[:12] if cache else Path(work_dir) / "dicomweb"
    return MedSegDICOMwebDatastore(client, labels, cache_dir, search_filter_from_settings(settings))
