"""Guided editing of one segment: clicks and a box, the request they make, and an undo stack.

The widget turns markups into voxel indices with ``ras_to_ijk`` (the volume's RAS-to-IJK
matrix, exactly as MONAI Label's module does), adds them here, and writes the returned
label into the segment being edited. Each state sends every click so far, so the server
keeps no per-client state to lose and undo is a step back in this list.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from .client import InferResult, MedSegClient

INTERACTIVE_MODEL = "interactive"


def ras_to_ijk(ras_to_ijk_matrix: Sequence[Sequence[float]], ras: Sequence[float]) -> List[int]:
    """The voxel (i, j, k) nearest a RAS point, by the volume's 4x4 RAS-to-IJK matrix (row-major)."""
    point = [float(ras[0]), float(ras[1]), float(ras[2]), 1.0]
    return [int(round(sum(ras_to_ijk_matrix[r][c] * point[c] for c in range(4)))) for r in range(3)]


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


class GuidedEdit:
    """One object on one image: ``add_click``/``set_box`` then ``run``; ``undo`` steps back."""

    def __init__(self, client: MedSegClient, image_id: str, label: Optional[str] = None,
                 prior_tag: Optional[str] = None, model: str = INTERACTIVE_MODEL, dest_dir: Optional[str] = None,
                 method: Optional[str] = None):
        self.client = client
        self.method = method  # "learned", "seeded", or None: the server's choice
        self.image_id = image_id
        self.label = label
        self.prior_tag = prior_tag  # refine this stored label's segment instead of starting empty
        self.model = model
        self.dest_dir = dest_dir
        self.state = EditState()
        self._history: List[tuple] = []  # (state, result) before each interaction
        self.result: Optional[InferResult] = None
        self.interactions = 0
        self.seconds_waited = 0.0
        self.last_latency_s: Optional[float] = None

    def _push(self) -> None:
        self._history.append((self.state.copy(), self.result))

    def add_click(self, ijk: Sequence[int], foreground: bool = True) -> None:
        self._push()
        (self.state.foreground if foreground else self.state.background).append([int(v) for v in ijk])
        self.interactions += 1

    def set_box(self, corner_a: Sequence[int], corner_b: Sequence[int]) -> None:
        self._push()
        self.state.box = [[int(v) for v in corner_a], [int(v) for v in corner_b]]
        self.interactions += 1

    def undo(self) -> Optional[InferResult]:
        """Back to before the last click or box; the result shown then (None: nothing yet)."""
        if not self._history:
            return self.result
        self.state, self.result = self._history.pop()
        return self.result

    def params(self) -> dict:
        params: dict = {"foreground": self.state.foreground, "background": self.state.background}
        if self.state.box:
            params["box"] = self.state.box
        if self.label:
            params["label"] = self.label
        if self.prior_tag:
            params["prior_tag"] = self.prior_tag
        if self.method:
            params["method"] = self.method
        return params

    def run(self) -> Optional[InferResult]:
        """The object for the current clicks (None when there are none, e.g. after undoing them all)."""
        if self.state.is_empty():
            self.result = None
            return None
        start = time.perf_counter()
        self.result = self.client.infer(self.model, self.image_id, self.params(), dest_dir=self.dest_dir)
        self.last_latency_s = time.perf_counter() - start
        self.seconds_waited += self.last_latency_s
        return self.result

    def effort(self) -> dict:
        """What this edit cost the user, for the submitted label's params."""
        return {"interactions": self.interactions, "seconds_waited": round(self.seconds_waited, 2)}
