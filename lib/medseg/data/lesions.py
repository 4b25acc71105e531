"""Synthetic lesions pasted into real scans: objects of any size, contrast and shape.

A lesion is a blob (an ellipsoid whose surface is wobbled by smooth noise) of 3-20 mm radius,
placed inside the body, brighter or darker than what surrounds it by 1-3 of the scan's local
standard deviations, with a soft edge and the scan's own texture left on top. They give the
interactive model objects that no atlas has: a clinician's next structure is often one.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def _blob(shape, centre_vox, radii_mm, spacing_mm, rng) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float32).transpose(1, 2, 3, 0)
    axes = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    offset_mm = (grid - centre_vox) * np.asarray(spacing_mm, np.float32)
    r = np.sqrt((((offset_mm @ axes) / np.asarray(radii_mm, np.float32)) ** 2).sum(-1))
    wobble = ndimage.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), 3)
    return r + 0.25 * wobble / max(float(wobble.std()), 1e-6) < 1


def paste_lesions(image: np.ndarray, spacing_mm, body: np.ndarray, n: int, seed: int,
                  crop_vox: int = 96) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` crops of ``image`` around points of ``body``, each with one to three lesions.

    Returns [(crop image, crop label)], the label holding 1, 2, 3 for the lesions of that crop.
    """
    rng = np.random.default_rng(seed)
    inside = np.argwhere(ndimage.binary_erosion(body, iterations=3))
    out = []
    for _ in range(n):
        centre = inside[rng.integers(len(inside))]
        box = tuple(slice(max(0, c - crop_vox // 2), min(s, c + crop_vox // 2)) for c, s in zip(centre, image.shape))
        crop = np.array(image[box], np.float32)
        crop_body = body[box]
        label = np.zeros(crop.shape, np.uint8)
        local_std = float(crop[crop_body].std()) if crop_body.any() else float(crop.std())
        candidates = np.argwhere(ndimage.binary_erosion(crop_body, iterations=2))
        if not len(candidates):
            continue
        for value in range(1, int(rng.integers(1, 4)) + 1):
            where = candidates[rng.integers(len(candidates))]
            blob = _blob(crop.shape, where, rng.uniform(3, 20, 3), spacing_mm, rng) & crop_body & (label == 0)
            if blob.sum() < 8:
                continue
            soft = ndimage.gaussian_filter(blob.astype(np.float32), 0.8)
            contrast = rng.choice([-1, 1]) * rng.uniform(1, 3) * local_std
            surround = float(crop[blob].mean())
            crop = crop + soft * (surround + contrast - crop) * rng.uniform(0.6, 0.9)
            label[blob] = value
        if label.any():
            out.append((crop, label))
    return out
