"""The labeling workflow without Slicer: which image, which steps are possible, what to send.

next sample -> image file (shared disk or download) -> segment -> correct -> submit -> (train)
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

from .client import MedSegClient
from .info import ServerInfo
from .labels import LabelSet


def shared_image_path(sample: dict, exists: Callable[[str], bool] = os.path.isfile) -> Optional[str]:
    """The server's own path of the image when this machine sees the same file (shared studies folder)."""
    path = sample.get("path") if isinstance(sample, dict) else None
    if isinstance(path, str) and path and not path.startswith(("http://", "https://")) and exists(path):
        return path
    return None


def fetch_sample_image(client: MedSegClient, sample: dict, dest_dir: str, cancel=None) -> Tuple[str, str]:
    """(local file, "shared" or "downloaded") for a next-sample answer; ``cancel`` stops a download."""
    path = shared_image_path(sample)
    if path:
        return path, "shared"
    return client.download_image(str(sample["id"]), dest_dir, cancel=cancel), "downloaded"


@dataclass
class SubmitResult:
    image_id: str
    label_id: Optional[str]
    version: Optional[int]  # MedSeg's stored version of the final label; None on stock servers
    answer: dict = field(default_factory=dict)

    def describe(self) -> str:
        stored = f"version {self.version}" if self.version is not None else "stored"
        return f"Label of {self.image_id} saved ({stored})."


def submit_label(client: MedSegClient, image_id: str, label_path: str, labels: LabelSet,
                 names: Optional[List[str]] = None, effort: Optional[dict] = None) -> SubmitResult:
    """``PUT /datastore/label`` with tag ``final`` and an explicit name -> index mapping.

    ``label_info`` lists every label of the app (not only the ones painted), so the server
    knows that a missing structure is absent rather than unnamed. ``effort`` (interactions,
    seconds) is what the label cost; MedSeg keeps it with the label version.
    """
    params: dict = {"label_info": labels.label_info(names)}
    if effort:
        params["effort"] = effort
    answer = client.save_label(image_id, label_path, tag="final", params=params) or {}
    version = None
    try:
        version = client.label_info(image_id, "final").get("version")
    except Exception:  # a stock server's label info has no version; the label is stored anyway
        version = None
    return SubmitResult(image_id=image_id, label_id=answer.get("label"), version=version, answer=answer)


@dataclass
class LabelingSession:
    """What the module is working on; the widget enables its buttons from this."""

    info: Optional[ServerInfo] = None
    image_id: Optional[str] = None  # the datastore id of the loaded image; None: not on the server
    image_source: str = ""  # shared, downloaded, uploaded
    segmented_with: Optional[str] = None
    model_version: Optional[int] = None
    submitted_version: Optional[int] = None
    dirty: bool = False  # edited since the last submit

    @property
    def connected(self) -> bool:
        return self.info is not None

    def sample_loaded(self, image_id: Optional[str], source: str) -> None:
        self.image_id, self.image_source = image_id, source
        self.segmented_with = self.model_version = self.submitted_version = None
        self.dirty = False

    def segmented(self, model: str, version: Optional[int]) -> None:
        self.segmented_with, self.model_version, self.dirty = model, version, True

    def submitted(self, version: Optional[int]) -> None:
        self.submitted_version, self.dirty = version, False

    def can_segment(self) -> bool:
        return self.connected and self.image_id is not None and bool(self.info.segmentation_models())

    def can_submit(self) -> bool:
        return self.connected and self.image_id is not None

    def can_upload(self, has_volume: bool) -> bool:
        # A volume that came from the server is there already; uploading makes a duplicate.
        return self.connected and has_volume and self.image_id is None

    def can_train(self) -> bool:
        return self.connected and bool(self.info.trainers)


def describe_version(version: dict) -> str:
    """One line per stored label version, for the module's version list (newest shown first)."""
    number = version.get("version", "?")
    when = str(version.get("time") or "").replace("T", " ")[:16]
    who = version.get("client_id") or ""
    effort = version.get("effort") if isinstance(version.get("effort"), dict) else {}
    parts = [f"v{number}", when, f"by {who}" if who else ""]
    if version.get("source") == "restore":
        parts.append(f"restored from v{version.get('restored_from')}")
    if effort.get("interactions") is not None:
        parts.append(f"{effort['interactions']} interactions")
    return ", ".join(p for p in parts if p)


def connect(client: MedSegClient) -> Tuple[bool, Optional[ServerInfo]]:
    """(whether the server needs a login, its app description or None until logged in)."""
    auth_enabled = client.auth_enabled()
    if auth_enabled and not client.token:
        return True, None
    return auth_enabled, client.server_info()
