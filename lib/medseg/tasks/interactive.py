"""MONAI Label infer task of type ``deepgrow``: clicks, a box or scribbles -> one object's label.

The request's guidance is checked against the image grid (``medseg.interaction``), and the
object is found by one of two methods:
- ``learned``: the class-agnostic interactive network (``medseg.pipeline.interactive_model``),
  when its weights are there (shipped, or trained here by ``POST /train/interactive``);
- ``seeded``: learning-free (``medseg.pipeline.seeded``: intensity-band growing from the clicks,
  split geodesically by background guidance), for a cold start and for scribbles.
``seeded`` is the default: on the benchmark (bench/interactive.py) the shipped learned weights
beat it on brain-atlas regions but not on large or high-contrast objects; ``learned`` is asked for.
A request that continues an edit starts from that edit's last answer (``medseg.edit_sessions``),
so only the new clicks are worked on. The answer is a label on the image's exact grid with the
object as 1, which is what MONAI Label's Slicer plugin writes into the segment being edited.
"""
from __future__ import annotations

import math
import os
import re
import tempfile
import time
from dataclasses import replace

import numpy as np
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from medseg.checkpoint import ModelStore
from medseg.edit_sessions import EditSessions
from medseg.errors import EditNotRememberedError, MedSegInputError, UnknownImageError
from medseg.imageio import cropped_grid, read_volume, write_like
from medseg.interaction import (
    LABEL_KINDS,
    MONAI_SCRIBBLE_VALUES,
    check_not_empty,
    deepen_flat_box,
    interaction_from_request,
    scribbles_from,
)
from medseg.ids import label_tag
from medseg.labels import check_label_against_image
from medseg.pipeline.click_rules import apply_click_rules
from medseg.pipeline.interactive_model import InteractiveModel, network_from_checkpoint
from medseg.pipeline.seeded import REFINE_RADIUS_MM, segment_object
from medseg.pipeline.training import pick_device
from medseg.request_options import choice, flag, number
from medseg.volume_cache import VolumeCache

INTERACTIVE_MODEL = "interactive"
METHODS = ("seeded", "learned")
DEFAULT_METHOD = "seeded"
# Measured on held-out real objects (bench/results/interactive_brats_cpu.json, interactive_cpu.json):
# on MR the learned model leads on gliomas (clicks alone or after a box), brain-atlas regions and
# an automatic white matter being corrected; the learning-free method leads on the chest CT's
# organs and bones and on clinical-size CT organs, with or without a box. So MR goes to learned.
DEFAULT_METHOD_ON_MR = "learned"
# Every MR measured with learned ahead is 1 mm. On 2.5 mm slices a learned first click overshoots a
# small object by slices and reached a neighbour 4 mm away (tests/e2e/test_interactive_learned.py,
# the browser test's phantom), so clicks without a box on thicker slices stay with seeded. A click
# that corrects a prior is another matter: learned changes the prior only near the click and only
# in the click's direction, while seeded clicks lowered automatic predictions on MR (a white
# matter at 1 mm, gliomas at 2 mm in bench/loop.py), so corrections on MR go to learned at any
# slice thickness.
LEARNED_CLICKS_MAX_SLICE_MM = 1.5
CT_AIR_HU = -500  # an image with voxels this low is taken for a CT (air in Hounsfield units)
DEFAULT_METHOD_WHY = (
    f"learned on an MR image (clicks that start a new object without a box only where no voxel side exceeds "
    f"{LEARNED_CLICKS_MAX_SLICE_MM} mm; clicks that correct a prior on any MR), seeded on a CT "
    "(an image with air in Hounsfield units), for scribbles and for new-object clicks on thicker MR slices. "
    "On the held-out real gliomas (MR) learned had the higher area under the Dice curve for every object, "
    "clicked alone or after a 3D or 2D box, and no click of it lowered the Dice; it also leads on "
    "brain-atlas regions, which have no edge of their own, and on correcting automatic predictions "
    "(a white matter at 1 mm; whole gliomas at 2 mm in the loop benchmark, where seeded clicks lowered them). "
    "seeded leads on the chest CT's organs and bones and on clinical-size CT organs, with or without a box, "
    "and on the whole brain (ask for it with method seeded there). Figures: docs/interactive.md#measured "
    "(bench/results/interactive_brats_cpu.json, bench/results/interactive_cpu.json, "
    "bench/results/loop_brats_whole_tumour_seeded.json and _learned.json)")
# Keys an interactive request may carry besides the label-named click lists (DeepEdit) and
# the generic infer options. "reset_state" and "slice" come from MONAI Label's Slicer plugin
# (its 2D models' state); they do not apply to a 3D walk and are ignored.
INTERACTIVE_KEYS = ("foreground", "background", "box", "roi", "label", "prior_tag", "prior_path", "label_kind",
                    "foreground_scribble", "background_scribble", "label_file", "reset_state", "slice", "method",
                    "changed_region_only", "edit_id", "continue_edit")
EDIT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


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
    if "method" in ours:
        choice("method", ours["method"], METHODS)
    if "changed_region_only" in ours:
        ours["changed_region_only"] = flag("changed_region_only", ours["changed_region_only"])
    if "edit_id" in ours and not (isinstance(ours["edit_id"], str) and EDIT_ID.fullmatch(ours["edit_id"])):
        raise MedSegInputError("edit_id must be 1-64 letters, digits, '_' or '-'")
    if "continue_edit" in ours:
        ours["continue_edit"] = flag("continue_edit", ours["continue_edit"])
        if ours["continue_edit"] and "edit_id" not in ours:
            raise MedSegInputError("continue_edit needs the edit_id of the edit to continue")
    return ours, rest


def _uploaded_label(path: str, image, what: str):
    label = read_volume(path, what=what)
    if label.shape != image.shape or not np.allclose(label.affine, image.affine, atol=1e-2):
        raise MedSegInputError(f"{what} is not on the image's grid (size {list(label.shape)} against "
                               f"{list(image.shape)}, or another spacing, origin or direction)")
    return np.rint(label.array).astype(np.int64)


class InteractiveInferTask(InferTask):
    def __init__(self, labels: dict[str, int], cache: VolumeCache, store: ModelStore | None = None,
                 device: str = "auto"):
        super().__init__(
            type=InferType.DEEPGROW,
            labels=list(labels),
            dimension=3,
            description="Guided editing from foreground/background clicks, a box or scribbles: one object of any "
            "anatomy, by a class-agnostic network (method learned) or learning-free (method seeded)",
            # Only options a request may carry: MONAI Label's Slicer module sends this config back with
            # every click (the first of each list), and an informational entry there was refused as unknown.
            config={"method": METHODS},
        )
        self.app_labels = dict(labels)
        self.cache = cache
        self.store = store
        self.device = device
        self.edits = EditSessions()
        self._model: tuple[int, InteractiveModel] | None = None

    def is_valid(self) -> bool:
        return True  # the learning-free method needs no weights

    def info(self):
        checkpoint = self.store.load() if self.store else None
        return {**super().info(), "methods": {"learned": checkpoint is not None, "seeded": True},
                "default_method": DEFAULT_METHOD, "default_method_on_mr": DEFAULT_METHOD_ON_MR,
                "learned_clicks_max_slice_mm": LEARNED_CLICKS_MAX_SLICE_MM,
                "default_method_why": DEFAULT_METHOD_WHY,
                "weights_version": (checkpoint or {}).get("version"), "cache": self.cache.stats(),
                "edits": self.edits.stats()}

    def learned_model(self) -> tuple[InteractiveModel, int] | None:
        """The network of the current weights (re-read when they change), and their version."""
        checkpoint = self.store.load() if self.store else None
        if checkpoint is None:
            return None
        if self._model is None or self._model[0] != id(checkpoint):
            self._model = (id(checkpoint), InteractiveModel(network_from_checkpoint(checkpoint),
                                                            pick_device(self.device)))
        return self._model[1], int(checkpoint.get("version") or 0)

    def _object_of(self, label_map: np.ndarray, label: str | None) -> np.ndarray:
        return label_map == self.app_labels[label] if label else label_map > 0

    def guidance(self, request: dict, volume):
        """The checked interaction and prior of a request (422 before any work)."""
        interaction = interaction_from_request(request, volume.shape, self.app_labels)
        if interaction.box_vox is not None:
            interaction.box_vox = deepen_flat_box(interaction.box_vox, volume.spacing_mm, volume.shape)
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
        asked_to_continue = bool(request.get("continue_edit"))
        # A continued edit keeps its method: the default may differ without the edit's first prior.
        asked = request.get("method") or (asked_to_continue and self.edits.method_of(
            VolumeCache.key(image_path), interaction.label, request.get("edit_id")))
        method, learned = self._method(asked or self.default_method(interaction, volume, prior), interaction)
        # A client's edit_id keeps its edit apart from another client's with the same clicks.
        edit_key = (VolumeCache.key(image_path), interaction.label,
                    (method, learned[1] if learned else None, request.get("edit_id")),
                    None if interaction.box_vox is None else [b.tolist() for b in interaction.box_vox])
        # The learning-free method starts a new object from all its clicks each time (1-2 s); an
        # edit of a prior continues from its last answer, which saves redoing every earlier click.
        # continue_edit: the client sent no prior, as its segment is this edit's last answer (on a
        # 512x512x300 CT writing and reading the prior cost seconds per click).
        continues = interaction.scribbles is None and (method == "learned" or prior is not None or asked_to_continue)
        continued = self.edits.find(*edit_key, interaction.foreground_vox,
                                    interaction.background_vox) if continues else None
        if asked_to_continue and continued is None:
            raise EditNotRememberedError(
                f"the server does not remember edit {request.get('edit_id')!r} with these clicks (it keeps the "
                "latest edits only, and forgets them on a restart): send the segment again as the prior")
        previous = continued.previous if continued else prior
        if method == "learned":
            result = learned[0].segment(volume.array, volume.spacing_mm, interaction.foreground_vox,
                                        interaction.background_vox, interaction.box_vox, previous,
                                        focus_vox=continued.new_vox if continued else None,
                                        correction_radius_mm=self._correction_radius_mm(prior, asked_to_continue,
                                                                                        continued))
            details = {"zoom_outs": result.zoom_outs, "patch_spacing_mm": result.patch_spacing_mm,
                       "weights_version": learned[1]}
        else:
            todo = interaction if not continued else replace(
                interaction, foreground_vox=_among(continued.new_vox, interaction.foreground_vox),
                background_vox=_among(continued.new_vox, interaction.background_vox))
            result = segment_object(volume.array, volume.spacing_mm, todo, previous)
            details = {"region_growths": result.growths}
        # Whatever the method answered, each click's own tissue is in (foreground) or out (background).
        ruled, window = apply_click_rules(volume.array, result.mask, volume.spacing_mm, interaction.foreground_vox,
                                          interaction.background_vox)
        if window is not None:
            result = replace(result, mask=ruled, region_vox=_bounding(result.region_vox, window))
        self.edits.remember(*edit_key, interaction.foreground_vox, interaction.background_vox, result.mask)
        t = time.perf_counter()
        fd, out_path = tempfile.mkstemp(suffix=".nii.gz", prefix="medseg_interactive_")
        os.close(fd)
        # On a 512x512x300 CT the whole label costs more to write and send than a click's region;
        # a client that asks for the region gets a crop that still lies where it belongs.
        region_only = bool(request.get("changed_region_only")) and all(s.stop > s.start for s in result.region_vox)
        grid = cropped_grid(volume, result.region_vox) if region_only else volume
        write_like(out_path, result.mask[result.region_vox] if region_only else result.mask, grid)
        name = interaction.label or "object"
        return out_path, {
            "label_names": {name: 1},
            "method": method,
            "latencies": {"pre": round(read_s, 3), "infer": round(result.seconds, 3),
                          "post": round(time.perf_counter() - t, 3)},
            "region_vox": [[int(s.start), int(s.stop)] for s in result.region_vox],
            **details,
            "refined": previous is not None,
            "continued_edit": continued is not None,
            "object_voxels": int(result.mask.sum()),
            "output": "labels",
            "label_grid": "changed_region" if region_only else "image",
        }

    @staticmethod
    def _correction_radius_mm(prior, asked_to_continue: bool, continued) -> float | None:
        """How far the learned answer may change the object it starts from (see local_correction)."""
        if prior is not None or asked_to_continue:
            return REFINE_RADIUS_MM  # someone's segmentation: corrected near the clicks, as the seeded method does
        if continued is not None:
            return math.inf  # the edit's own answer: any extent, but a click never works against itself
        return None  # a new object

    def default_method(self, interaction, volume, prior: np.ndarray | None = None) -> str:
        """The method that answers a request that names none (see DEFAULT_METHOD_WHY); ``prior``:
        the segmentation being corrected, if any."""
        if interaction.scribbles is not None or self.learned_model() is None or looks_like_ct(volume.array):
            return DEFAULT_METHOD
        starts_an_object = interaction.box_vox is None and (prior is None or not prior.any())
        if starts_an_object and max(volume.spacing_mm) > LEARNED_CLICKS_MAX_SLICE_MM:
            return DEFAULT_METHOD
        return DEFAULT_METHOD_ON_MR

    def _method(self, asked: str, interaction) -> tuple[str, tuple | None]:
        if choice("method", asked, METHODS) == "seeded":
            return "seeded", None
        learned = self.learned_model()
        if learned is None:
            raise MedSegInputError("method learned needs the interactive model's weights, which this server "
                                   "does not have; use method seeded, or train it with POST /train/interactive")
        if interaction.scribbles is not None:
            raise MedSegInputError("the learned model takes clicks and a box; scribbles need method seeded")
        return "learned", learned


def looks_like_ct(image: np.ndarray) -> bool:
    """Whether the image holds air in Hounsfield units (a strided sample: a CT's air is everywhere around the body)."""
    step = max(1, int(round((image.size / 1_000_000) ** (1 / 3))))
    return bool(np.min(image[::step, ::step, ::step]) <= CT_AIR_HU)


def _bounding(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...]:
    """The smallest box holding two boxes (an empty one counts as nothing)."""
    if any(s.stop <= s.start for s in a):
        return b
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def _among(points: np.ndarray, of: np.ndarray) -> np.ndarray:
    """The rows of ``points`` that are in ``of``."""
    keep = {tuple(p) for p in np.asarray(of).reshape(-1, 3).tolist()}
    return np.array([p for p in points.tolist() if tuple(p) in keep], np.int64).reshape(-1, 3)
