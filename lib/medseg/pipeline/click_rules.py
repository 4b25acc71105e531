"""Every click counts: what a click says about its own neighbourhood is true of every answer.

On real tumours both methods ignored clicks (five to eight in a row on the same missed region,
each answer the same) or let one click undo earlier work. A click is a plain statement about
where it lands: a foreground click says "this voxel, and the tissue like it joined to it, is the
object"; a background click says the opposite. So after any method has answered (the learned
network, the learning-free walk, a correction of a prior), these rules are applied to the answer:

- every click's own ball (``CLICK_RADIUS_MM``) is in the object (foreground) or out (background);
- a click the method *ignored* (its voxel on the wrong side of the answer) also brings its *own
  tissue* in or out: the connected part, within ``RULE_RADIUS_MM`` of the click, of the voxels
  within ``EXPAND_SIGMAS`` noise levels of the intensity where it landed (the seed growth of
  ``medseg.pipeline.seeded``). A click the method obeyed is left to the method: on objects with
  no edge of their own (brain-atlas regions) the own tissue runs past the object's border, and
  forcing it after every click lowered the learned model's Dice there;
- where a foreground and a background click's parts meet, each voxel goes to the nearer click,
  so neither kind of click can cancel the other beyond half way between them;
- nothing else changes: the radius bounds what a rule can do, so the rules never redraw far
  edges.

Later clicks are not given priority over earlier ones: every request carries all the clicks of
an edit, and a click the user still has placed is still meant.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medseg.pipeline.seeded import CLICK_RADIUS_MM, EXPAND_SIGMAS, _ball_offsets, noise_sigma

RULE_RADIUS_MM = 8.0  # a click decides its own tissue this far at most (a fraction of a 70 mm glioma)


@dataclass
class OwnTissue:
    mask: np.ndarray  # bool, on the window ``box`` of the image
    box: tuple[slice, ...]


def own_tissue(image: np.ndarray, point_vox: np.ndarray, spacing_mm, sigma: float,
               radius_mm: float = RULE_RADIUS_MM) -> OwnTissue:
    """The click's own tissue: like voxels joined to it, within ``radius_mm`` (a ball), and its ball."""
    spacing = np.asarray(spacing_mm, dtype=float)
    reach = np.ceil(radius_mm / spacing).astype(int)
    lo = np.maximum(point_vox - reach, 0)
    hi = np.minimum(point_vox + reach + 1, image.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    local = image[box].astype(np.float32)
    centre = point_vox - lo
    grid = np.ogrid[tuple(slice(0, n) for n in local.shape)]
    within = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing)) <= radius_mm ** 2
    ball = _ball_offsets(spacing, max(CLICK_RADIUS_MM, float(spacing.max()))) + centre
    ball = ball[np.all((ball >= 0) & (ball < local.shape), axis=1)]
    value = float(np.median(local[ball[:, 0], ball[:, 1], ball[:, 2]]))
    like = within & (np.abs(local - value) <= EXPAND_SIGMAS * sigma)
    components, _ = ndimage.label(like)
    mask = components == components[tuple(centre)] if components[tuple(centre)] else np.zeros(like.shape, bool)
    click_ball = _ball_offsets(spacing, CLICK_RADIUS_MM) + centre
    click_ball = click_ball[np.all((click_ball >= 0) & (click_ball < local.shape), axis=1)]
    mask[click_ball[:, 0], click_ball[:, 1], click_ball[:, 2]] = True
    return OwnTissue(mask, box)


def click_ball(point_vox: np.ndarray, spacing_mm, shape) -> OwnTissue:
    """A click's own ball (CLICK_RADIUS_MM), clipped to the image."""
    offsets = _ball_offsets(np.asarray(spacing_mm, dtype=float), CLICK_RADIUS_MM)
    lo = np.maximum(point_vox + offsets.min(0), 0)
    hi = np.minimum(point_vox + offsets.max(0) + 1, shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    mask = np.zeros([int(b - a) for a, b in zip(lo, hi)], bool)
    inside = offsets + point_vox - lo
    inside = inside[np.all((inside >= 0) & (inside < mask.shape), axis=1)]
    mask[inside[:, 0], inside[:, 1], inside[:, 2]] = True
    return OwnTissue(mask, box)


def apply_click_rules(image: np.ndarray, mask: np.ndarray, spacing_mm, foreground_vox: np.ndarray,
                      background_vox: np.ndarray) -> tuple[np.ndarray, tuple[slice, ...] | None]:
    """The answer with every click's rule applied, and the box of voxels the rules may have set
    (None without clicks). ``mask`` is not modified."""
    clicks = [(np.asarray(p, dtype=np.int64), True) for p in np.asarray(foreground_vox).reshape(-1, 3)]
    clicks += [(np.asarray(p, dtype=np.int64), False) for p in np.asarray(background_vox).reshape(-1, 3)]
    if not clicks:
        return mask, None
    spacing = np.asarray(spacing_mm, dtype=float)
    tissues = [own_tissue(image, p, spacing, _local_sigma(image, p, spacing)) if mask[tuple(p)] != foreground
               else click_ball(p, spacing, image.shape) for p, foreground in clicks]
    lo = np.min([[s.start for s in t.box] for t in tissues], axis=0)
    hi = np.max([[s.stop for s in t.box] for t in tissues], axis=0)
    window = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    shape = tuple(int(b - a) for a, b in zip(lo, hi))
    # Per voxel of the window: the nearest click (mm) whose own tissue covers it, and its kind.
    nearest_mm = np.full(shape, np.inf, dtype=np.float32)
    says_object = np.zeros(shape, bool)
    for (point, foreground), tissue in zip(clicks, tissues):
        local = tuple(slice(s.start - a, s.stop - a) for s, a in zip(tissue.box, lo))
        axes_mm = [(np.arange(sl.start, sl.stop) - c) * s for sl, c, s in zip(local, point - lo, spacing)]
        distance = np.sqrt(axes_mm[0][:, None, None] ** 2 + axes_mm[1][None, :, None] ** 2
                           + axes_mm[2][None, None, :] ** 2)
        closer = tissue.mask & (distance < nearest_mm[local])
        nearest_mm[local][closer] = distance[closer]
        says_object[local][closer] = foreground
    covered = np.isfinite(nearest_mm)
    out = mask.copy()
    out[window][covered] = says_object[covered]
    return out, window


def _local_sigma(image: np.ndarray, point_vox: np.ndarray, spacing: np.ndarray) -> float:
    """The noise level around a click (a 30 mm window): an image's noise differs from region to region."""
    reach = np.ceil(15.0 / spacing).astype(int)
    lo, hi = np.maximum(point_vox - reach, 0), np.minimum(point_vox + reach + 1, image.shape)
    return noise_sigma(image[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))].astype(np.float32))
