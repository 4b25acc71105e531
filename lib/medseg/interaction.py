"""The guidance of one interactive request, checked against the grid of the image it edits.

Clicks and boxes are voxel indices of the image as stored (i, j, k in the file's own index
order), which is what MONAI Label's Slicer plugin sends after its RAS -> IJK conversion. Because
nothing here goes through world coordinates, a click lands on the voxel the user clicked on
any grid: oblique, LPS or RAS, flipped, anisotropic (MONAI Label #1407 came from converting
twice). Every check happens here, before any work or write, and fails with a 422.

Request keys (MONAI Label's conventions):
- DeepGrow: ``foreground`` and ``background``: lists of [i, j, k];
- DeepEdit: one key per label name holding that label's clicks, and ``label``: the one being
  edited; the other labels' clicks count as its background;
- ``box``: two opposite corners [[i, j, k], [i, j, k]], or the stock plugin's ``roi``
  [i0, i1, j0, j1, k0, k1]; both corners are inside the object's box (inclusive);
- scribbles: a label volume on the image grid uploaded with the request, foreground where it
  holds ``foreground_scribble`` (default 3) and background where ``background_scribble``
  (default 2): the values MONAI Label's Slicer plugin gives its scribble layers;
- the prior segmentation of the object: the image's stored label ``prior_tag`` (the object is
  the voxels of ``label`` in it), or an uploaded label volume (``label_kind: prior``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medseg.errors import MedSegInputError

MAX_CLICKS = 1000  # per request, all kinds together
DEEPGROW_KEYS = ("foreground", "background")
LABEL_KINDS = ("scribbles", "prior")
MONAI_SCRIBBLE_VALUES = {"foreground_scribble": 3, "background_scribble": 2}


@dataclass
class Interaction:
    """One object's guidance, in voxel indices of the stored image."""

    foreground_vox: np.ndarray  # (n, 3) int64
    background_vox: np.ndarray  # (m, 3) int64
    box_vox: tuple[np.ndarray, np.ndarray] | None = None  # inclusive (low corner, high corner)
    scribbles: np.ndarray | None = None  # int8 on the image grid: 1 foreground, 2 background, 0 none
    prior: np.ndarray | None = None  # bool on the image grid: the object before this request
    label: str | None = None  # the edited label's name (None: an unnamed object)

    @property
    def is_empty(self) -> bool:
        scribbled = self.scribbles is not None and bool(self.scribbles.any())
        return not (len(self.foreground_vox) or len(self.background_vox) or self.box_vox is not None or scribbled)


def _index(value, what: str) -> int:
    """An integer voxel index: ints, or floats that are whole numbers (JSON often sends 12.0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MedSegInputError(f"{what} must be a number, got {value!r}")
    if isinstance(value, float) and (not math.isfinite(value) or value != int(value)):
        raise MedSegInputError(f"{what} must be a whole voxel index, got {value!r}")
    return int(value)


def _point(value, shape: tuple[int, ...], what: str) -> list[int]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise MedSegInputError(f"{what} must be [i, j, k], got {str(value)[:80]}")
    point = [_index(v, f"{what}[{axis}]") for axis, v in enumerate(value)]
    if any(p < 0 or p >= n for p, n in zip(point, shape)):
        raise MedSegInputError(f"{what} {point} is outside the image, whose voxel indices run to "
                               f"{[n - 1 for n in shape]}")
    return point


def points(value, shape: tuple[int, ...], what: str) -> np.ndarray:
    """(n, 3) indices from a JSON list of [i, j, k]; every one inside ``shape``."""
    if value is None:
        return np.zeros((0, 3), dtype=np.int64)
    if not isinstance(value, (list, tuple)):
        raise MedSegInputError(f"{what} must be a list of [i, j, k] voxel indices")
    if len(value) > MAX_CLICKS:
        raise MedSegInputError(f"{what} has {len(value)} points; at most {MAX_CLICKS}")
    return np.array([_point(p, shape, f"{what}[{n}]") for n, p in enumerate(value)], dtype=np.int64).reshape(-1, 3)


def box(value, shape: tuple[int, ...], what: str = "box") -> tuple[np.ndarray, np.ndarray]:
    """Inclusive (low, high) corners from [[i, j, k], [i, j, k]] or [i0, i1, j0, j1, k0, k1]."""
    if isinstance(value, (list, tuple)) and len(value) == 6 and not any(isinstance(v, (list, tuple)) for v in value):
        value = [value[0::2], value[1::2]]
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise MedSegInputError(f"{what} must be two opposite corners [[i, j, k], [i, j, k]]")
    a, b = (np.array(_point(c, shape, f"{what} corner {n}")) for n, c in enumerate(value))
    low, high = np.minimum(a, b), np.maximum(a, b)
    if np.sum(high == low) > 1:
        raise MedSegInputError(f"{what} {low.tolist()}-{high.tolist()} is flat along two axes: it is a line or a point")
    return low, high  # flat along one axis: a box drawn on one slice (deepen_flat_box gives it depth)


def deepen_flat_box(box_vox: tuple[np.ndarray, np.ndarray], spacing_mm, shape) -> tuple[np.ndarray, np.ndarray]:
    """A box drawn on one slice, as clinicians draw it, made a 3D box: through the slice it reaches as
    far as the larger of its sides, on each side, clamped to the image (an object's depth is not
    known, and gliomas and organs are about as deep as they are wide). A 3D box is returned as it is."""
    low, high = (np.array(c, dtype=np.int64) for c in box_vox)
    flat = np.flatnonzero(high == low)
    if not len(flat):
        return low, high
    axis = int(flat[0])
    spacing = np.asarray(spacing_mm, dtype=float)
    side_mm = max(float((high[a] - low[a] + 1) * spacing[a]) for a in range(3) if a != axis)
    reach = int(np.ceil(side_mm / 2 / spacing[axis]))
    low[axis], high[axis] = max(low[axis] - reach, 0), min(high[axis] + reach, int(shape[axis]) - 1)
    return low, high


def scribbles_from(label: np.ndarray, foreground_value: int, background_value: int) -> np.ndarray:
    out = np.zeros(label.shape, dtype=np.int8)
    out[label == foreground_value] = 1
    out[label == background_value] = 2
    return out


def interaction_from_request(request: dict, shape: tuple[int, ...], labels: dict[str, int]) -> Interaction:
    """The checked guidance of one request (``labels``: the app's label names) on an image of ``shape``."""
    label = request.get("label")
    if label is not None:
        if not isinstance(label, str) or label not in labels:
            raise MedSegInputError(f"label {str(label)[:80]!r} is not one of this app's labels: {', '.join(labels)}")
    foreground = points(request.get("foreground"), shape, "foreground")
    background = points(request.get("background"), shape, "background")
    named = {name: points(request[name], shape, name) for name in labels if name in request}
    if named:
        # DeepEdit: the edited label's clicks are foreground, every other label's are background.
        if label is None:
            raise MedSegInputError("label-named clicks need \"label\": the name of the label being edited")
        foreground = np.concatenate([foreground, named.get(label, np.zeros((0, 3), np.int64))])
        others = [p for name, p in named.items() if name != label]
        background = np.concatenate([background, *others])
    corners = request.get("box", request.get("roi"))
    found = Interaction(foreground, background, box(corners, shape) if corners not in (None, []) else None,
                        label=label)
    if len(foreground) + len(background) > MAX_CLICKS:
        raise MedSegInputError(f"at most {MAX_CLICKS} clicks per request")
    return found


def check_not_empty(interaction: Interaction) -> None:
    if interaction.is_empty:
        raise MedSegInputError("an interactive request needs guidance: foreground or background clicks "
                               "([[i, j, k], ...]), a box, or scribbles")
