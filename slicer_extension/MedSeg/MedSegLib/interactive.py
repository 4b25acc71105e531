"""Guided editing of one segment: clicks and a box, the requests they make, and undo.

The widget turns markups into voxel indices (``geometry``), adds them here and writes each
answer into the segment being edited. The rules that keep a clinician's work safe live here,
so pytest checks them against a real server:
- **The segment is the prior.** An edit starts from the segment as it was (a model's prediction,
  painted corrections), uploaded with each request as ``label_kind: prior``; the server then
  changes only the region around the clicks. Without it, a background click "where the result is
  wrong" started from nothing and emptied the structure.
- **A request is a copy.** ``request()`` snapshots the clicks, box and target on the main thread;
  the worker thread only sends that snapshot, so clicks placed meanwhile cannot change it.
- **An answer lands only where it was asked for.** ``is_current`` drops answers for another
  image, segmentation or segment, answers overtaken by a later request, and answers to clicks
  that were undone meanwhile.
- **Only the changed region travels** (``changed_region_only``) and is pasted where it lies;
  what it replaced is kept, so undo restores the segment exactly.
Each request sends every click so far, so the server keeps no per-client state to lose.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from .client import InferResult, MedSegClient

INTERACTIVE_MODEL = "interactive"


@dataclass
class EditState:
    foreground: List[List[int]] = field(default_factory=list)
    background: List[List[int]] = field(default_factory=list)
    box: Optional[List[List[int]]] = None

    def copy(self) -> "EditState":
        return EditState([list(p) for p in self.foreground], [list(p) for p in self.background],
                         [list(c) for c in self.box] if self.box else None)

    def is_empty(self) -> bool:
        return not (self.foreground or self.background or self.box)

    def extends(self, earlier: "EditState") -> bool:
        """True when this state is ``earlier`` plus later clicks (same box, no click taken back)."""
        return (self.box == earlier.box and self.foreground[:len(earlier.foreground)] == earlier.foreground
                and self.background[:len(earlier.background)] == earlier.background)


@dataclass(frozen=True)
class AnswerTarget:
    """Where an answer belongs: the image, and the segmentation node and segment it edits."""

    image_id: str
    segmentation_id: str = ""
    segment_id: str = ""


@dataclass(frozen=True)
class GuidedRequest:
    """One request as sent: immutable, made on the main thread before the worker starts."""

    sequence: int
    depth: int  # how many interactions it holds (an undo past them makes its answer obsolete)
    target: AnswerTarget
    state: EditState
    params: dict
    prior_path: Optional[str]


@dataclass
class _Patch:
    region_kji: Tuple[slice, ...]
    before: np.ndarray  # the segment's voxels in the region before the answer was pasted
    depth: int  # the interactions of the request it answered


def answer_region_kji(params: dict, shape_kji: Sequence[int]) -> Tuple[slice, ...]:
    """Where an answer's voxels go in a (k, j, i) array of the image (Slicer's array order).

    A ``changed_region_only`` answer is a crop of ``region_vox`` ((i, j, k) ranges of the image as
    stored); any other answer covers the whole image.
    """
    if params.get("label_grid") != "changed_region":
        return tuple(slice(0, int(n)) for n in shape_kji)
    region = params.get("region_vox")
    if not isinstance(region, list) or len(region) != 3:
        raise ValueError(f"a changed-region answer without a valid region_vox: {region!r}")
    slices = []
    for (start, stop), n in zip(reversed(region), shape_kji):
        start, stop = int(start), int(stop)
        if not 0 <= start < stop <= int(n):
            raise ValueError(f"region_vox {region} does not lie in an image of (k, j, i) size {list(shape_kji)}")
        slices.append(slice(start, stop))
    return tuple(slices)


class GuidedEdit:
    """One object on one image: ``add_click``/``set_box``, then ``request`` -> ``send`` -> ``apply``."""

    def __init__(self, client: MedSegClient, image_id: str, label: Optional[str] = None,
                 prior_tag: Optional[str] = None, model: str = INTERACTIVE_MODEL, dest_dir: Optional[str] = None,
                 method: Optional[str] = None, prior_path: Optional[str] = None,
                 target: Optional[AnswerTarget] = None, changed_region_only: bool = False):
        self.client = client
        self.method = method  # "learned", "seeded", or None: the server's choice
        self.image_id = image_id
        self.label = label
        self.prior_tag = prior_tag  # refine this stored label's segment instead of the segment shown
        self.prior_path = prior_path  # the segment as it was when the edit began (a label file), or None
        self.model = model
        self.dest_dir = dest_dir
        self.target = target or AnswerTarget(image_id)
        self.changed_region_only = changed_region_only
        self.state = EditState()
        self._history: List[Tuple[EditState, Optional[InferResult]]] = []  # before each interaction
        self._patches: List[_Patch] = []
        self._accepted_depth = 0
        self._sequence = 0
        self.result: Optional[InferResult] = None
        self.interactions = 0
        self.seconds_waited = 0.0
        self.last_latency_s: Optional[float] = None

    # ---------------------------------------------------------------- guidance
    def _push(self) -> None:
        self._history.append((self.state.copy(), self.result))

    def add_click(self, ijk: Sequence[int], foreground: bool = True) -> None:
        self._push()
        (self.state.foreground if foreground else self.state.background).append([int(v) for v in ijk])
        self.interactions += 1

    def set_box(self, corner_a: Sequence[int], corner_b: Sequence[int]) -> bool:
        """Set (or move) the box; False when it is the box already set (a drag that ended where it began)."""
        box = [[int(v) for v in corner_a], [int(v) for v in corner_b]]
        if box == self.state.box:
            return False
        self._push()
        self.state.box = box
        self.interactions += 1
        return True

    def params(self, state: Optional[EditState] = None) -> dict:
        state = state or self.state
        params: dict = {"foreground": state.foreground, "background": state.background}
        if state.box:
            params["box"] = state.box
        if self.label:
            params["label"] = self.label
        if self.prior_tag:
            params["prior_tag"] = self.prior_tag
        elif self.prior_path:
            params["label_kind"] = "prior"
        if self.method:
            params["method"] = self.method
        if self.changed_region_only:
            params["changed_region_only"] = True
        return params

    # ---------------------------------------------------------------- requests
    def request(self) -> Optional[GuidedRequest]:
        """A snapshot of what to send now (main thread); None when there is no guidance left."""
        if self.state.is_empty():
            return None
        self._sequence += 1
        state = self.state.copy()
        return GuidedRequest(self._sequence, len(self._history), self.target, state, copy.deepcopy(self.params(state)),
                             None if self.prior_tag else self.prior_path)

    def send(self, request: GuidedRequest) -> Tuple[InferResult, float]:
        """Send a snapshot (any thread): (the answer, seconds waited). Reads nothing of ``self`` that changes."""
        start = time.perf_counter()
        result = self.client.infer(self.model, request.target.image_id, request.params, dest_dir=self.dest_dir,
                                   label_path=request.prior_path)
        return result, time.perf_counter() - start

    def is_current(self, request: GuidedRequest, target: Optional[AnswerTarget] = None) -> bool:
        """Whether an answer to ``request`` may be shown now (main thread)."""
        return (request.sequence == self._sequence and (target is None or target == request.target)
                and self.state.extends(request.state))

    def accept(self, request: GuidedRequest, answer: Tuple[InferResult, float],
               target: Optional[AnswerTarget] = None) -> Optional[InferResult]:
        """The answer's result when it is still current, after counting its wait; else None (dropped)."""
        result, seconds = answer
        if not self.is_current(request, target):
            return None
        self.result, self.last_latency_s, self._accepted_depth = result, seconds, request.depth
        self.seconds_waited += seconds
        return result

    def run(self) -> Optional[InferResult]:
        """request + send + accept in one call (scripts and tests; the widget splits them over threads)."""
        request = self.request()
        if request is None:
            self.result = None
            return None
        return self.accept(request, self.send(request))

    # ---------------------------------------------------------------- the segment
    def apply(self, segment_kji: np.ndarray, answer_kji: np.ndarray, params: Optional[dict] = None) -> Tuple[slice, ...]:
        """Paste an answer (1 = object) into the segment's (k, j, i) mask, keeping what it replaced."""
        region = answer_region_kji(params if params is not None else (self.result.params if self.result else {}),
                                   segment_kji.shape)
        expected = tuple(s.stop - s.start for s in region)
        if tuple(answer_kji.shape) != expected:
            raise ValueError(f"the answer has size {list(answer_kji.shape)}, its region {list(expected)}")
        self._patches.append(_Patch(region, segment_kji[region].copy(), self._accepted_depth))
        segment_kji[region] = (np.asarray(answer_kji) == 1).astype(segment_kji.dtype)
        return region

    def undo(self, segment_kji: Optional[np.ndarray] = None) -> Optional[InferResult]:
        """Take back the last click or box; the answers that came after it are taken out of
        ``segment_kji`` (when given) exactly. Returns the result shown before it."""
        if not self._history:
            return self.result
        self.state, self.result = self._history.pop()
        # Answers to requests that held the interaction taken back come out, newest first.
        while self._patches and self._patches[-1].depth > len(self._history):
            patch = self._patches.pop()
            if segment_kji is not None:
                segment_kji[patch.region_kji] = patch.before
        self._sequence += 1  # an answer still on its way belongs to the state just undone
        return self.result

    @property
    def can_undo(self) -> bool:
        return bool(self._history)

    def effort(self) -> dict:
        """What this edit cost the user, for the submitted label's params."""
        return {"interactions": self.interactions, "seconds_waited": round(self.seconds_waited, 2)}


def describe_answer(result: Any) -> str:
    """A short line about an answer: method, recomputed region, object size."""
    params = getattr(result, "params", None) or {}
    parts = [str(params.get("method", ""))]
    if params.get("label_grid") == "changed_region":
        parts.append("region " + "x".join(str(b - a) for a, b in params.get("region_vox", [])))
    if "object_voxels" in params:
        parts.append(f"{params['object_voxels']} voxels")
    return ", ".join(p for p in parts if p)
