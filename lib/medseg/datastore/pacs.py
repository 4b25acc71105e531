"""The PACS side of the DICOMweb datastore: what its QIDO-RS answers say is there.

A ``PacsListing`` asks the PACS for its image series and its SEG series, keeps which
SEG references which image (a SEG never changes, so that is read once and cached on
disk), and decides which SEGs are this app's labels. Answers are reused for a few
seconds (``LISTING_TTL_S``). ``medseg.datastore.dicomweb`` builds MONAI Label's
datastore interface on top of it.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import requests

from medseg.activelearning.jsonstore import locked, read_json, write_json
from medseg.errors import MedSegInputError
from medseg.label_map import norm_label_name

logger = logging.getLogger(__name__)

# Modalities whose series are volumes the pipeline segments; SEG, SR, RTSTRUCT, ECG, KO, PR... are not.
IMAGE_MODALITIES = ("CT", "MR", "PT")
# How long one answer of the PACS is reused: long enough that listing the datastore does not
# query the PACS per image, short enough that series and SEGs stored by others appear quickly.
LISTING_TTL_S = 5.0
# Connect / read timeouts of every PACS request: a PACS that stops answering must not hang the server.
PACS_TIMEOUT_S = (10.0, 120.0)
SERIES_FIELDS = ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "PatientID", "StudyDate", "StudyDescription",
                 "SeriesDate", "SeriesTime", "SeriesDescription", "SeriesNumber", "NumberOfSeriesRelatedInstances",
                 "BodyPartExamined")


class PacsError(MedSegInputError):
    """The PACS did not answer or refused a request (HTTP 502: the fault is upstream, not the client's)."""

    http_status = 502


def _tag(keyword: str) -> str:
    from pydicom.datadict import tag_for_keyword

    return f"{tag_for_keyword(keyword):08X}"


def _value(js: dict, keyword: str, default=None):
    """First value of ``keyword`` in a DICOM JSON object (PS3.18 F.2), as str/number; PN as its text."""
    values = (js.get(_tag(keyword)) or {}).get("Value") or []
    if not values:
        return default
    value = values[0]
    if isinstance(value, dict) and "Alphabetic" in value:
        return value["Alphabetic"]
    return value


def _sequence(js: dict, keyword: str) -> list[dict]:
    return (js.get(_tag(keyword)) or {}).get("Value") or []


@dataclass
class ImageSeries:
    uid: str
    study_uid: str
    n_instances: int | None
    info: dict[str, Any]


@dataclass
class SegSeries:
    uid: str
    study_uid: str
    sop_uid: str
    referenced_series: str
    content_datetime: str  # DICOM DA + TM, sortable as text
    segment_labels: list[str]
    series_description: str = ""

    @property
    def ts(self) -> int | None:
        try:
            return int(datetime.strptime(self.content_datetime[:14], "%Y%m%d%H%M%S").timestamp())
        except ValueError:
            return None


@dataclass
class Snapshot:
    """One look at the PACS: its image series and, per image, its SEGs (oldest first)."""

    images: dict[str, ImageSeries]
    segs: dict[str, list[SegSeries]] = field(default_factory=dict)
    taken: float = field(default_factory=time.monotonic)


class TimeoutSession(requests.Session):
    """A session whose requests time out (dicomweb-client passes none)."""

    def request(self, *args, **kwargs):
        kwargs.setdefault("timeout", PACS_TIMEOUT_S)
        return super().request(*args, **kwargs)


class PacsListing:
    """The PACS's image series and, per image, the SEGs that are its labels (one ``Snapshot``)."""

    def __init__(self, client, labels: dict[str, int], modalities, search_filter: dict[str, Any], seg_refs_path):
        self.client = client
        self.labels = labels
        self.modalities = modalities
        self.search_filter = search_filter
        self.seg_refs_path = seg_refs_path  # what each SEG references (never changes)
        self._lock = threading.RLock()
        self._snapshot: Snapshot | None = None
        self._ignored_segs: set[str] = set()

    def call(self, what: str, call, *args, **kwargs):
        try:
            return call(*args, **kwargs)
        except requests.RequestException as e:
            raise PacsError(f"the PACS at {self.client.base_url} failed to {what}: {e}") from e

    def snapshot(self, fresh: bool = False) -> Snapshot:
        with self._lock:
            snap = self._snapshot
            if fresh or snap is None or time.monotonic() - snap.taken > LISTING_TTL_S:
                images = self._query_images()
                snap = Snapshot(images=images, segs=self._query_segs(images))
                self._snapshot = snap
            return snap

    def refresh(self) -> None:
        with self._lock:
            self._snapshot = None

    def _query_images(self) -> dict[str, ImageSeries]:
        found = self.call("list series", self.client.search_for_series, search_filters=self.search_filter,
                           fields=list(SERIES_FIELDS), get_remaining=True)
        images = {}
        for js in found:
            modality = str(_value(js, "Modality", "")).upper()
            uid = _value(js, "SeriesInstanceUID")
            if not uid or modality not in self.modalities:
                continue
            n = _value(js, "NumberOfSeriesRelatedInstances")
            info = {k: _value(js, k) for k in SERIES_FIELDS if _value(js, k) is not None}
            images[str(uid)] = ImageSeries(str(uid), str(_value(js, "StudyInstanceUID")),
                                           int(n) if n is not None else None, info)
        return images

    def _query_segs(self, images: dict[str, ImageSeries]) -> dict[str, list[SegSeries]]:
        found = self.call("list SEG series", self.client.search_for_series, search_filters={"Modality": "SEG"},
                           fields=["StudyInstanceUID", "SeriesInstanceUID"], get_remaining=True)
        with locked(self.seg_refs_path):
            known = read_json(self.seg_refs_path, {})
            new = {}
            for js in found:
                uid, study = str(_value(js, "SeriesInstanceUID")), str(_value(js, "StudyInstanceUID"))
                if uid not in known:
                    described = self._describe_seg(study, uid)
                    if described:  # else: not readable yet; asked again next time
                        new[uid] = described
            if new:
                write_json(self.seg_refs_path, {**known, **new})
                known.update(new)
        present = {str(_value(js, "SeriesInstanceUID")) for js in found}  # a SEG deleted in the PACS is gone
        by_image: dict[str, list[SegSeries]] = {}
        for uid in present:
            entry = known.get(uid)
            if not entry:
                continue
            seg = SegSeries(**entry)
            reason = self._why_not_a_label(seg, images)
            if reason:
                if uid not in self._ignored_segs:
                    self._ignored_segs.add(uid)
                    logger.warning("SEG series %s is not used as a label: %s", uid, reason)
                continue
            by_image.setdefault(seg.referenced_series, []).append(seg)
        for segs in by_image.values():
            segs.sort(key=lambda s: (s.content_datetime, s.uid))
        return by_image

    def _describe_seg(self, study_uid: str, series_uid: str) -> dict[str, Any] | None:
        """What a SEG series references and holds, from its metadata (no pixel data)."""
        meta = self.call("read SEG metadata", self.client.retrieve_series_metadata, study_uid, series_uid)
        if not meta:
            return None
        js = meta[0]  # one SEG object per series is what we write and what viewers write
        refs = _sequence(js, "ReferencedSeriesSequence")
        referenced = _value(refs[0], "SeriesInstanceUID", "") if refs else ""
        date = str(_value(js, "ContentDate") or _value(js, "SeriesDate") or "")
        tm = str(_value(js, "ContentTime") or _value(js, "SeriesTime") or "")
        return {
            "uid": series_uid,
            "study_uid": study_uid,
            "sop_uid": str(_value(js, "SOPInstanceUID", "")),
            "referenced_series": str(referenced),
            "content_datetime": date + tm,
            "segment_labels": [str(_value(s, "SegmentLabel", "")) for s in _sequence(js, "SegmentSequence")],
            "series_description": str(_value(js, "SeriesDescription", "")),
        }

    def _why_not_a_label(self, seg: SegSeries, images: dict[str, ImageSeries]) -> str:
        if not seg.referenced_series:
            return "it has no ReferencedSeriesSequence"
        if seg.referenced_series not in images:
            return f"it references series {seg.referenced_series}, which is not a listed image"
        declared = {norm_label_name(n) for n in self.labels}  # the name matching read_seg applies
        unknown = [n for n in seg.segment_labels if norm_label_name(n) not in declared]
        if unknown:
            return f"its segments {unknown} are not this app's labels {sorted(self.labels)}"
        return ""


FILTER_ENV = "MEDSEG_DICOMWEB_SEARCH_FILTER"


def search_filter_from_settings(settings) -> dict[str, Any]:
    """MONAI_LABEL_DICOMWEB_SEARCH_FILTER if the user set one, else none.

    MONAI Label's default, {"Modality": "CT"}, would hide every MR series. Its
    ``start_server`` exports every setting to the environment of the task processes
    (training, scoring) it starts, where the default then looks as if it had been set;
    so the server decides once and hands its decision down in FILTER_ENV.
    """
    if FILTER_ENV in os.environ:
        return json.loads(os.environ[FILTER_ENV])
    explicit = "MONAI_LABEL_DICOMWEB_SEARCH_FILTER" in settings.model_fields_set
    chosen = dict(settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER) if explicit else {}
    os.environ[FILTER_ENV] = json.dumps(chosen)
    return chosen

