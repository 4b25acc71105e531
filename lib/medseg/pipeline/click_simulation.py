"""Simulated clicks, as the interactive benchmarks (and the CVPR 2025 challenge) place them.

The first click goes at the object's deepest point: the voxel farthest, in millimetres, from
its surface. Each next one goes at the deepest point of the largest error: a foreground click
where the object is missed, a background click where the answer is wrong. The deepest point
of an error is the least ambiguous place to click, as a person would.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def _bbox(mask: np.ndarray) -> tuple[slice, ...]:
    nz = np.argwhere(mask)
    return tuple(slice(int(a), int(b) + 1) for a, b in zip(nz.min(0), nz.max(0)))


def deepest_point(mask: np.ndarray, spacing_mm) -> list[int]:
    """The voxel of ``mask`` farthest from its border (its bounding box padded by one voxel)."""
    box = _bbox(mask)
    local = np.pad(mask[box], 1)
    depth = ndimage.distance_transform_edt(local, sampling=spacing_mm)
    index = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return [int(i) - 1 + s.start for i, s in zip(index, box)]


def largest_component(mask: np.ndarray) -> np.ndarray:
    components, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def next_click(truth: np.ndarray, predicted: np.ndarray | None, spacing_mm) -> tuple[str, list[int]] | None:
    """("foreground" | "background", [i, j, k]) for the next click; None when nothing is wrong."""
    if predicted is None or not predicted.any():
        return ("foreground", deepest_point(truth, spacing_mm)) if truth.any() else None
    missed, wrong = truth & ~predicted, predicted & ~truth
    candidates = [(kind, largest_component(m)) for kind, m in (("foreground", missed), ("background", wrong))
                  if m.any()]
    if not candidates:
        return None
    kind, error = max(candidates, key=lambda c: int(c[1].sum()))
    return kind, deepest_point(error, spacing_mm)


def clicks_to_reach(dice_per_click: list[float], threshold: float, max_clicks: int) -> int:
    """NoC@threshold: clicks until the Dice first reaches ``threshold``; ``max_clicks`` when it never does."""
    for n, d in enumerate(dice_per_click, start=1):
        if d >= threshold:
            return n
    return max_clicks
