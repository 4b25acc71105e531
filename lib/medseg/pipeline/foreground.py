"""The body (or head) in a scan: what preprocessing crops to and normalizes within.

Scanner images are not zero outside the patient: MR has Rician noise everywhere
and CT has air at -1000 HU, the table and sometimes a padding value. Cropping to
"nonzero" then keeps the whole field of view, and a z-score over it is dominated
by the background. So the foreground is found from the intensities instead:

* MR (and anything not CT): Otsu's threshold on a lightly smoothed copy, halved so
  that dark tissue at the surface (CSF, cortical bone under the scalp) stays in;
* CT: everything above -500 HU (air and lung are below, soft tissue above);

then holes are filled (skull, sinuses, lungs; slice by slice as well, because an
airway that leaves the field of view opens the lungs to the outside in 3D), the
connected components smaller than a tenth of the largest are dropped (noise
specks, the CT table) and the mask is dilated a little.

The work is done on a strided copy of at most ``MAX_WORK_VOXELS`` voxels, so a
512x512x300 CT costs about as much as a brain MR; the mask is then blown back up
to the image grid.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

MAX_WORK_VOXELS = 2_000_000
CT_BODY_THRESHOLD_HU = -500.0
OTSU_FRACTION = 0.5
MIN_COMPONENT_FRACTION = 0.1
# A mask covering less than this share of the image is not believed (a nearly empty
# image, or a threshold that failed): the whole image is the foreground then.
MIN_FOREGROUND_FRACTION = 0.005


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut that maximizes the between-class variance of a histogram."""
    hist, edges = np.histogram(values, bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(hist).astype(np.float64)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(hist * centers)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = (weight_low * weight_high * (mean_low - mean_high) ** 2)[:-1]
    # Every cut inside an empty gap between the classes scores the same: take the gap's middle.
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return float(centers[best].mean())


def _work_step(shape) -> int:
    return max(1, math.ceil((float(np.prod(shape)) / MAX_WORK_VOXELS) ** (1 / len(shape))))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    filled = ndimage.binary_fill_holes(mask)
    for axis in range(mask.ndim):
        moved = np.moveaxis(filled, axis, 0)
        for i in range(moved.shape[0]):
            moved[i] = ndimage.binary_fill_holes(moved[i])
    return filled


def _big_components(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(sizes >= MIN_COMPONENT_FRACTION * sizes.max()) + 1
    return np.isin(labels, keep)


def foreground_mask(image: np.ndarray, modality: str = "MR") -> np.ndarray:
    """Boolean mask of the body or head, on the image's grid."""
    step = _work_step(image.shape)
    small = np.asarray(image[(slice(None, None, step),) * image.ndim], dtype=np.float32)
    small = ndimage.gaussian_filter(small, 1.0)
    if modality.upper() == "CT":
        mask = small > CT_BODY_THRESHOLD_HU
    else:
        # Otsu over the values above the minimum, so a large exact-zero background
        # (brain-extracted images) does not decide the cut on its own.
        low = float(small.min())
        above = small[small > low]
        if above.size == 0:
            return np.ones(image.shape, dtype=bool)
        mask = small > low + OTSU_FRACTION * (otsu_threshold(above) - low)
    mask = _big_components(_fill_holes(mask))
    mask = ndimage.binary_dilation(mask, iterations=1)
    if mask.mean() < MIN_FOREGROUND_FRACTION:
        return np.ones(image.shape, dtype=bool)
    if step > 1:
        for axis in range(image.ndim):
            mask = np.repeat(mask, step, axis=axis)
        mask = mask[tuple(slice(0, n) for n in image.shape)]
    return np.ascontiguousarray(mask)


def mask_bbox(mask: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Bounding box [start, stop) of a mask's true voxels (the whole grid if it has none)."""
    if not mask.any():
        return tuple((0, s) for s in mask.shape)
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        box.append((int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)
