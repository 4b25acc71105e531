"""MONAI Label infer task of type ``deepgrow``: clicks, a box or scribbles -> one object's label.

The request's guidance is checked against the image grid (``medseg.interaction``), the object
is found learning-free (``medseg.pipeline.seeded``: intensity-band growing from the clicks, split
geodesically by background guidance) in a region around the
guidance, and the answer is a label on the image's exact grid with the object as 1, which is
what MONAI Label's Slicer plugin writes into the segment being edited.
"""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from medseg.errors import MedSegInputError, UnknownImageError
from medseg.imageio import read_volume, write_like
from medseg.interaction import (
    LABEL_KINDS,
    MONAI_SCRIBBLE_VALUES,
    check_not_empty,
    interaction_from_request,
    scribbles_from,
)
from medseg.ids import label_tag
from medseg.labels import check_label_against_image
from medseg.pipeline.seeded import CLICK_RADIUS_MM, segment_object
from medseg.request_options import choice, number
from medseg.volume_cache import VolumeCache

INTERACTIVE_MODEL = "interactive"
METHOD = "seeded_geodesic"  # learning-free; a learned model will be another method
# Keys an interactive request may carry besides the label-named click lists (DeepEdit) and
# the generic infer options. "reset_state" and "slice" come from MONAI Label's Slicer plugin
# (its 2D models' state); they do not apply to a 3D walk and are ignored.
INTERACTIVE_KEYS = ("foreground", "background", "box", "roi", "label", "prior_tag", "prior_path", "label_kind",
                    "foreground_scribble", "background_scribble", "label_file", "reset_state", "slice")


def split_interactive_options(params: dict, labels: dict[str, int]) -> tuple[dict, dict]:
    """(the interactive keys of an infer request, the rest, for the generic infer options).

    What can be checked without the image is checked here; the clicks and boxes are checked
    against its grid when the task reads it, still before any work or write.
    """
    ours = {k: v for k, v in params.items() if k in INTERACTIVE_KEYS or k in labels}
    rest = {k: v for k, v in params.items() if k not in ours}
    if "prior_path" in ours:
        raise MedSegInputError("prior_path is set by the server from prior_tag, not by clients")
    if "prior_tag" in ours:
        ours["prior_tag"] = label_tag(ours["prior_tag"])
    if "label_kind" in ours:
        choice("label_kind", ours["label_kind"], LABEL_KINDS)
    return ours, rest


def _uploaded_label(path: str, image, what: str):
    label = read_volume(path, what=what)
    if label.shape != image.shape or not np.allclose(label.affine, image.affine, atol=1e-2):
        raise MedSegInputError(f"{what} is not on the image's grid (size {list(label.shape)} against "
                               f"{list(image.shape)}, or another spacing, origin or direction)")
    return np.rint(label.array).astype(np.int64)


class InteractiveInferTask(InferTask):
    def __init__(self, labels: dict[str, int], cache: VolumeCache):
        super().__init__(
            type=InferType.DEEPGROW,
            labels=list(labels),
            dimension=3,
            description="Guided editing from foreground/background clicks, a box or scribbles: one object, "
            "learning-free (intensity growing and geodesic split), on any anatomy",
            config={"click_radius_mm": CLICK_RADIUS_MM},
        )
        self.app_labels = dict(labels)
        self.cache = cache

    def is_valid(self) -> bool:
        return True  # needs no weights

    def info(self):
        return {**super().info(), "method": METHOD, "cache": self.cache.stats()}

    def _object_of(self, label_map: np.ndarray, label: str | None) -> np.ndarray:
        return label_map == self.app_labels[label] if label else label_map > 0

    def guidance(self, request: dict, volume):
        """The checked interaction and prior of a request (422 before any work)."""
        interaction = interaction_from_request(request, volume.shape, self.app_labels)
        prior = None
        if request.get("label_file"):
            kind = choice("label_kind", request.get("label_kind", "scribbles"), LABEL_KINDS)
            uploaded = _uploaded_label(request["label_file"], volume, f"the uploaded {kind}")
            if kind == "scribbles":
                values = {k: int(number(k, request.get(k, v), int, 0, 65535)) for k, v in MONAI_SCRIBBLE_VALUES.items()}
                interaction.scribbles = scribbles_from(uploaded, values["foreground_scribble"],
                                                       values["background_scribble"])
            else:
                prior = self._object_of(uploaded, interaction.label)
        if request.get("prior_path"):
            if prior is not None:
                raise MedSegInputError("give the prior segmentation as prior_tag or as an uploaded label, not both")
            if interaction.label is None:
                raise MedSegInputError("prior_tag needs \"label\": the name of the label to refine in it")
            stored = self.cache.get(request["prior_path"])  # the same stored label on every click
            check_label_against_image(stored, volume, self.app_labels)
            prior = self._object_of(np.rint(stored.array).astype(np.int64), interaction.label)
        check_not_empty(interaction)
        return interaction, prior

    def __call__(self, request):
        image_path = request.get("image")
        if not isinstance(image_path, str) or not os.path.exists(image_path):
            raise UnknownImageError(f"image {request.get('image')!r} is not in the datastore")
        start = time.perf_counter()
        volume = self.cache.get(image_path)
        read_s = time.perf_counter() - start
        interaction, prior = self.guidance(request, volume)
        result = segment_object(volume.array, volume.spacing_mm, interaction, prior)
        t = time.perf_counter()
        fd, out_path = tempfile.mkstemp(suffix=".nii.gz", prefix="medseg_interactive_")
        os.close(fd)
        write_like(out_path, result.mask.astype(np.uint8), volume)
        name = interaction.label or "object"
        return out_path, {
            "label_names": {name: 1},
            "method": METHOD,
            "latencies": {"pre": round(read_s, 3), "infer": round(result.seconds, 3),
                          "post": round(time.perf_counter() - t, 3)},
            "region_vox": [[s.start, s.stop] for s in result.region_vox],
            "region_growths": result.growths,
            "refined": prior is not None,
            "object_voxels": int(result.mask.sum()),
            "output": "labels",
        }
