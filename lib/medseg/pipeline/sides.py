"""Left and right: labels that name a side, and putting each predicted piece on its own side.

A network with a receptive field smaller than the body finds a lung but cannot always tell
which one it is: on the slicerio chest CT the CPU plan's U-Net put both lungs into one
class, and which class changed from one run to the next (earlier runs of bench/chest_ct.py).
The side of a piece is not a matter of appearance but of position, so for every pair of
labels that differ only by their side ("left_lung"/"right_lung") each connected piece of
the pair's union takes the side its centre lies on, against the body's midline. The step is
kept, like the largest-component step, only where validation shows it helps.
"""
from __future__ import annotations

import re
from typing import Callable

import numpy as np
from scipy import ndimage

from medseg.pipeline.metrics import mean_dice_per_label

SIDE_WORDS = {"left": "left", "right": "right", "l": "left", "r": "right"}


def side_of(name: str) -> tuple[str | None, str]:
    """("left" | "right" | None, the name without its side word): "Right kidney" -> ("right", "kidney");
    "hippocampus_l" -> ("left", "hippocampus"). A lone "l"/"r" counts only as the last word."""
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    for i, w in enumerate(words):
        if w in ("left", "right") or (w in ("l", "r") and i == len(words) - 1 and len(words) > 1):
            return SIDE_WORDS[w], " ".join(words[:i] + words[i + 1:])
    return None, " ".join(words)


def is_lateralized(labels: dict[str, int]) -> bool:
    """True when a label names a side ("left_lung", "Right kidney", "hippocampus_l")."""
    return any(side_of(name)[0] for name in labels)


# Words that order labels along the body's other two axes, as arrays are in RAS: a
# mirrored patch would show a lumbar vertebra where the cervical ones are, under its own
# label, and teach the network that the level of a vertebra is not where it lies.
AXIS_ORDER_WORDS = {
    1: ("anterior", "posterior", "ventral", "dorsal", "front", "back"),
    2: ("superior", "inferior", "upper", "lower", "cranial", "caudal", "cervical", "thoracic", "lumbar",
        "sacral", "coccygeal"),
}


def ordered_axes(labels: dict[str, int]) -> set[int]:
    """RAS axes along which label names tell structures apart by position: 0 for sides,
    1 for front/back, 2 for levels ("cervical_vertebral_column" and "lumbar_vertebral_column")."""
    axes = {0} if is_lateralized(labels) else set()
    for name in labels:
        words = set(re.split(r"[^a-z0-9]+", name.lower()))
        axes |= {axis for axis, order in AXIS_ORDER_WORDS.items() if words & set(order)}
    return axes


def mirror_axes_for(labels: dict[str, int]) -> list[int] | None:
    """The axes augmentation and TTA may flip: all (None) unless a label is told apart by its
    position along some axis."""
    ordered = ordered_axes(labels)
    return [axis for axis in range(3) if axis not in ordered] if ordered else None


def lateral_pairs(labels: dict[str, int]) -> list[tuple[int, int]]:
    """(left value, right value) of each pair of labels whose names differ only by the side."""
    by_stem: dict[str, dict[str, int]] = {}
    for name, value in labels.items():
        side, stem = side_of(name)
        if side:
            by_stem.setdefault(stem, {})[side] = value
    return sorted((s["left"], s["right"]) for s in by_stem.values() if len(s) == 2)


def assign_sides(labels: np.ndarray, pairs: list[tuple[int, int]],
                 is_right: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Each 26-connected piece of a pair's union relabelled to the side of its centre.

    ``is_right`` maps (n, 3) voxel centres to a boolean per centre: right of the midline.
    """
    out = labels
    structure = ndimage.generate_binary_structure(labels.ndim, labels.ndim)
    for left, right in pairs:
        union = (labels == left) | (labels == right)
        if not union.any():
            continue
        components, n = ndimage.label(union, structure=structure)
        centres = np.array(ndimage.center_of_mass(union, components, range(1, n + 1))).reshape(-1, labels.ndim)
        right_side = np.asarray(is_right(centres), dtype=bool)
        lookup = np.zeros(n + 1, dtype=labels.dtype)
        lookup[1:] = np.where(right_side, right, left)
        out = out.copy() if out is labels else out
        out[union] = lookup[components[union]]
    return out


def right_of_grid_centre(shape) -> Callable[[np.ndarray], np.ndarray]:
    """``is_right`` on a RAS array cropped to the body (the pipeline's preprocessed grid):
    axis 0 runs towards the patient's right, and the crop's centre is the body's midline."""
    middle = (shape[0] - 1) / 2
    return lambda centres: centres[:, 0] > middle


def right_of_world_x(affine: np.ndarray, midline_x_mm: float) -> Callable[[np.ndarray], np.ndarray]:
    """``is_right`` on any grid: the centre's RAS x (towards the patient's right) beyond the midline's."""
    return lambda centres: (centres @ affine[:3, :3].T + affine[:3, 3])[:, 0] > midline_x_mm


def decide_sides(predictions: list[np.ndarray], truths: list[np.ndarray], label_values: dict[str, int]
                 ) -> tuple[list[list[int]], dict]:
    """The pairs whose side assignment raises validation Dice and lowers no label's; and the evidence."""

    pairs = lateral_pairs(label_values)
    if not pairs or not predictions:
        return [], {"reason": "no left/right label pairs" if not pairs else "no validation images"}
    baseline = mean_dice_per_label(predictions, truths, label_values)
    trial = [assign_sides(p, pairs, right_of_grid_centre(p.shape)) for p in predictions]
    scores = mean_dice_per_label(trial, truths, label_values)
    names = {v: k for k, v in label_values.items()}
    paired = [names[v] for pair in pairs for v in pair]
    # Only the paired labels change; a pair may trade a little on one side for more on the other.
    accepted = sum(scores[k] for k in paired) > sum(baseline[k] for k in paired)
    return ([list(p) for p in pairs] if accepted else []), {"baseline": baseline, "dice": scores,
                                                           "accepted": accepted}
