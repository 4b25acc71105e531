"""Preprocessing shared by training and inference, and its exact inverse.

reorient to RAS -> crop to the body or head -> normalize (MR: within it) -> resample
to the plan's spacing. ``PreprocessedCase`` remembers what the inverse needs to put a
prediction back on the original grid (orientation, size, and through the untouched
source header, spacing, origin and direction), including the border that cropping
removed.

Reorienting first means a network sees anatomy in one axis order whatever the
scanner wrote (RAS, LPS, a sagittal LIA acquisition), as nnU-Net does by
transposing to a fixed axis order; only permutations and flips are applied, never
an interpolation, so an oblique scan keeps its voxels (its closest axes are used).
"""
from __future__ import annotations

import mmap
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from medseg.pipeline.foreground import foreground_mask, mask_bbox
from medseg.pipeline.plan import ANISOTROPY_RATIO, Plan
from medseg.pipeline.postprocess import class_argmax

# Part of the training cache key: cached cases made by an older preprocessing are
# not reused. 2: RAS reorientation and the intensity foreground (was: nonzero).
# 3: foreground coordinates sampled per class.
PREPROCESSING_VERSION = 3


@dataclass
class PreprocessedCase:
    image: np.ndarray  # (C, *spatial) float32 at target spacing, normalized
    label: np.ndarray | None  # (*spatial) uint8 at target spacing, or None
    original_shape: tuple[int, ...]
    bbox: tuple[tuple[int, int], ...]  # crop box in original voxels, [start, stop)
    cropped_shape: tuple[int, ...]
    foreground_vox: np.ndarray | None = None  # (N, 3) sample of foreground coordinates, for patch sampling
    ornt: np.ndarray | None = None  # nibabel orientation taking the original array to RAS; None: not reoriented

    def __getstate__(self):
        # Cached cases are memory-mapped .npy files: send the file name, not the data, to
        # other processes (distributed training), which map the same file again.
        state = dict(self.__dict__)
        for key in ("image", "label"):
            array = state[key]
            # Only a whole mapped file (base is the mmap itself), not a view into one.
            if isinstance(array, np.memmap) and array.filename and isinstance(array.base, mmap.mmap):
                state[key] = ("npy-mmap", array.filename)
        return state

    def __setstate__(self, state):
        for key in ("image", "label"):
            if isinstance(state[key], tuple) and state[key][0] == "npy-mmap":
                state[key] = np.load(state[key][1], mmap_mode="r")
        self.__dict__.update(state)


def nonzero_bbox(image: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Bounding box of voxels != 0 (the whole image if it has none)."""
    return mask_bbox(image != 0)


def ras_orientation(affine: np.ndarray) -> np.ndarray:
    """The axis permutation and flips (nibabel ``ornt``) that bring an array closest to RAS."""
    import nibabel as nib

    return nib.orientations.io_orientation(np.asarray(affine, dtype=float))


def to_ras(array: np.ndarray, ornt: np.ndarray | None) -> np.ndarray:
    """The first three axes of ``array`` permuted and flipped to RAS (a view where possible)."""
    import nibabel as nib

    if ornt is None:
        return array
    return nib.orientations.apply_orientation(array, ornt)


def from_ras(array: np.ndarray, ornt: np.ndarray | None) -> np.ndarray:
    """The inverse of ``to_ras``: back to the original axis order and directions."""
    import nibabel as nib

    if ornt is None:
        return array
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), ornt)
    return np.ascontiguousarray(nib.orientations.apply_orientation(array, back))


def ras_spacing(spacing_mm, ornt: np.ndarray | None) -> tuple[float, ...]:
    """Voxel spacing in the RAS axis order ``to_ras`` produces."""
    if ornt is None:
        return tuple(float(s) for s in spacing_mm)
    out = [0.0] * len(spacing_mm)
    for axis, (target, _flip) in enumerate(ornt):
        out[int(target)] = float(spacing_mm[axis])
    return tuple(out)


def _slices(bbox) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in bbox)


def target_shape(shape, spacing, target_spacing) -> tuple[int, ...]:
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target_spacing))


def _anisotropic_axis(spacing) -> int | None:
    spacing = np.asarray(spacing, dtype=float)
    order = np.argsort(spacing)
    if spacing[order[-1]] > ANISOTROPY_RATIO * spacing[order[-2]]:
        return int(order[-1])
    return None


def resample_image(image: np.ndarray, new_shape, spacing) -> np.ndarray:
    """3rd-order spline in-plane; nearest through-plane when the data is anisotropic."""
    if tuple(image.shape) == tuple(new_shape):
        return image.astype(np.float32, copy=False)
    zoom = [n / s for n, s in zip(new_shape, image.shape)]
    axis = _anisotropic_axis(spacing)
    if axis is None:
        return ndimage.zoom(image, zoom, order=3, mode="nearest", grid_mode=True).astype(np.float32)
    inplane_zoom = [1.0 if a == axis else z for a, z in enumerate(zoom)]
    out = ndimage.zoom(image, inplane_zoom, order=3, mode="nearest", grid_mode=True)
    through_zoom = [zoom[a] if a == axis else 1.0 for a in range(image.ndim)]
    return ndimage.zoom(out, through_zoom, order=0, mode="nearest", grid_mode=True).astype(np.float32)


def resample_probabilities(probs: torch.Tensor, new_shape) -> torch.Tensor:
    """Linear interpolation of (C, *spatial) class maps to a new grid of the same extent."""
    if tuple(probs.shape[1:]) == tuple(new_shape):
        return probs
    mode = "trilinear" if probs.ndim == 4 else "bilinear"
    return F.interpolate(probs[None].float(), size=tuple(new_shape), mode=mode, align_corners=False)[0]


def resample_label(label: np.ndarray, new_shape, n_classes: int) -> np.ndarray:
    """Labels: linear interpolation of the one-hot maps, then argmax (no staircase shrinking).

    One class at a time, keeping the running best on the new grid: the one-hot of a
    512x512x300 label with 20 classes would need 13 GB as int64 (F.one_hot), one class
    map is 300 MB. Classes absent from the label score 0 everywhere and can never win,
    so they are skipped; ties go to the lower class, as in ``class_argmax``.
    """
    dtype = np.uint8 if n_classes <= 256 else np.uint16
    if tuple(label.shape) == tuple(new_shape):
        return label.astype(dtype, copy=False)
    index = np.zeros(tuple(new_shape), dtype=dtype)
    best = None
    for c in (int(v) for v in np.unique(label)):
        if not 0 <= c < n_classes:
            continue
        score = resample_probabilities(torch.from_numpy((label == c).astype(np.float32))[None], new_shape)[0]
        if best is None:
            best = score
            index[:] = c
            continue
        higher = (score > best).numpy()
        index[higher] = c
        torch.maximum(best, score, out=best)
    return index


def normalize(image: np.ndarray, plan: Plan, mask: np.ndarray | None = None) -> np.ndarray:
    """CT: clip and scale with the dataset's foreground statistics. MR: z-score with the
    statistics inside ``mask`` (the head), and 0 outside it, so background noise and
    background level never reach the network (nnU-Net's use_mask_for_norm)."""
    if plan.normalization == "ct":
        lo, hi = plan.ct_clip
        return ((np.clip(image, lo, hi) - plan.ct_mean) / plan.ct_std).astype(np.float32)
    values = image[mask] if mask is not None and mask.any() else image
    mean, std = float(values.mean()), float(values.std())
    out = (image - mean) / max(std, 1e-8)
    if mask is not None:
        out[~mask] = 0.0
    return out.astype(np.float32)


def preprocess(image: np.ndarray, spacing_mm, plan: Plan, label: np.ndarray | None = None,
               affine: np.ndarray | None = None) -> PreprocessedCase:
    """The network's input (and a label's target) on the plan's grid. With ``affine`` the
    arrays are first reoriented to RAS; the inverse functions undo it."""
    ornt = ras_orientation(affine) if affine is not None else None
    original_shape = tuple(image.shape)
    image, spacing_mm = to_ras(image, ornt), ras_spacing(spacing_mm, ornt)
    label = to_ras(label, ornt) if label is not None else None
    foreground = foreground_mask(image, plan.modality)
    bbox = mask_bbox(foreground)
    cropped = image[_slices(bbox)]
    mask = foreground[_slices(bbox)] if plan.normalization != "ct" else None
    new_shape = target_shape(cropped.shape, spacing_mm, plan.target_spacing_mm)
    # Normalize before resampling so that spline overshoot at the mask border is harmless.
    normalized = normalize(cropped, plan, mask)
    resampled = resample_image(normalized, new_shape, spacing_mm)
    out_label = None
    if label is not None:
        out_label = resample_label(label[_slices(bbox)], new_shape, plan.n_classes)
    return PreprocessedCase(
        image=resampled[None],
        label=out_label,
        original_shape=original_shape,
        bbox=bbox,
        cropped_shape=tuple(cropped.shape),
        ornt=ornt,
    )


# Bytes of float32 class maps ``labels_on_grid`` resamples at once (a slab of output rows).
LABEL_SLAB_BYTES = 256 * 2**20


def labels_on_grid(probs: torch.Tensor, shape) -> np.ndarray:
    """``class_argmax(resample_probabilities(probs, shape))`` without the (C, *shape) float maps.

    A 512x512x300 CT with 20 labels would need 6 GB for them. Trilinear interpolation
    is separable, so for each slab of output rows (first spatial axis) the source rows
    it needs are resized over the other two axes, blended pairwise along the first, and
    reduced to labels at once; the source coordinates follow torch's
    ``align_corners=False`` rule, so the labels are the same. The slab runs along the
    first axis because a source row there, probs[c, x], is one contiguous (Y, Z) plane:
    slabs along the last axis read every cache line of the whole maps for each slab
    (the clinical-CT before/after in bench/README.md shows what that cost with 121 maps).
    """
    if probs.ndim != 4 or tuple(probs.shape[1:]) == tuple(shape):
        return class_argmax(resample_probabilities(probs, shape))
    n_classes, rows = probs.shape[:2]
    slab_rows = max(1, LABEL_SLAB_BYTES // (4 * n_classes * shape[1] * shape[2]))
    out = None
    for x0 in range(0, shape[0], slab_rows):
        x = torch.arange(x0, min(shape[0], x0 + slab_rows), dtype=torch.float64)
        source = ((x + 0.5) * (rows / shape[0]) - 0.5).clamp_min(0)
        low = source.floor().long().clamp_max(rows - 1)
        high = (low + 1).clamp_max(rows - 1)
        weight = (source - low).tolist()
        first = int(low[0])
        sources = F.interpolate(probs[:, first:int(high[-1]) + 1].float(), size=tuple(shape[1:]),
                                mode="bilinear", align_corners=False)  # (C, source rows, Y', Z')
        planes = torch.empty((n_classes, len(x), *shape[1:]), dtype=torch.float32)
        for b, (lo, hi, w) in enumerate(zip(low.tolist(), high.tolist(), weight)):
            torch.lerp(sources[:, lo - first], sources[:, hi - first], w, out=planes[:, b])
        slab = class_argmax(planes)  # (B, Y', Z')
        if out is None:
            out = np.empty(tuple(shape), dtype=slab.dtype)
        out[x0:x0 + slab.shape[0]] = slab
    return out


def invert_labels(probs: torch.Tensor, case: PreprocessedCase) -> np.ndarray:
    """(C, *target-spacing grid) class probabilities -> labels on the original grid (uint8, or
    uint16 beyond 256 classes).

    The same labels as the argmax of ``invert_probabilities``, but only the crop box is
    resampled, a slab at a time (``labels_on_grid``); the rest of the image is background.
    """
    inside = labels_on_grid(probs, case.cropped_shape)
    labels = np.zeros(_ras_shape(case), dtype=inside.dtype)
    labels[_slices(case.bbox)] = inside
    return from_ras(labels, case.ornt)


def invert_probabilities(probs: torch.Tensor, case: PreprocessedCase) -> torch.Tensor:
    """(C, *target-spacing grid) class probabilities -> (C, *original grid).

    Outside the crop box the prediction is background with probability 1.
    """
    back = resample_probabilities(probs, case.cropped_shape)
    full = torch.zeros((probs.shape[0], *_ras_shape(case)), dtype=back.dtype)
    full[0] = 1.0
    full[(slice(None), *_slices(case.bbox))] = back
    if case.ornt is None:
        return full
    return torch.from_numpy(from_ras(full.movedim(0, -1).numpy(), case.ornt)).movedim(-1, 0)


def _ras_shape(case: PreprocessedCase) -> tuple[int, ...]:
    """The original grid's shape in RAS axis order (where the crop box lives)."""
    if case.ornt is None:
        return tuple(case.original_shape)
    return tuple(int(n) for n in ras_spacing(case.original_shape, case.ornt))
