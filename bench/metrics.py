"""Overlap and surface-distance metrics of the benchmark suite (one implementation for every model and peer).

Every prediction, ours or a peer's, is scored here on the ground truth's own grid, so
the numbers differ only by the prediction.

* Dice per label: 2|P and T| / (|P| + |T|); 1.0 when the label is absent from both
  (medseg.pipeline.metrics.dice_per_label, the one validation uses).
* HD95 per label, in millimetres: the 95th percentile Hausdorff distance between the
  surfaces of P and T, symmetric as in MONAI's ``compute_hausdorff_distance(percentile=95)``
  (the larger of the two directed 95th percentiles). Surfaces are the voxels of a mask
  with a face neighbour outside it; distances are Euclidean in mm from the voxel
  spacing (``scipy.ndimage.distance_transform_edt`` with ``sampling``). 0.0 when the
  label is absent from both, ``inf`` when it is absent from one only (reported as
  missing in the tables, so a mean is never silently finite).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from medseg.pipeline.metrics import dice_per_label

# Face connectivity: a voxel is on the surface when one of its 6 neighbours is outside.
_FACES = ndimage.generate_binary_structure(3, 1)


def _surface(mask: np.ndarray) -> np.ndarray:
    # border_value=0: a mask touching the volume edge has its surface there too.
    return mask & ~ndimage.binary_erosion(mask, structure=_FACES, border_value=0)


def hd95(pred_mask: np.ndarray, truth_mask: np.ndarray, spacing_mm) -> float:
    """Symmetric 95th-percentile Hausdorff distance (mm) between two boolean masks."""
    pred_mask, truth_mask = np.asarray(pred_mask, bool), np.asarray(truth_mask, bool)
    has_p, has_t = pred_mask.any(), truth_mask.any()
    if not has_p and not has_t:
        return 0.0
    if not has_p or not has_t:
        return math.inf
    # Distances only need the bounding box of both masks (plus one voxel so that the
    # erosion sees the outside): every surface voxel lies inside it, so the distance
    # transform on the crop is exact and far cheaper than on a 1 mm whole head.
    both = np.argwhere(pred_mask | truth_mask)
    lo = np.maximum(both.min(0) - 1, 0)
    hi = np.minimum(both.max(0) + 2, pred_mask.shape)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    sp, st = _surface(pred_mask[crop]), _surface(truth_mask[crop])
    sampling = [float(s) for s in spacing_mm]
    # EDT of the complement gives, at every voxel, the distance to the nearest surface voxel.
    to_truth = ndimage.distance_transform_edt(~st, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~sp, sampling=sampling)
    return float(max(np.percentile(to_truth[sp], 95), np.percentile(to_pred[st], 95)))


def hd95_per_label(pred: np.ndarray, truth: np.ndarray, labels: dict[str, int], spacing_mm) -> dict[str, float]:
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} are not on the same grid")
    return {name: hd95(pred == value, truth == value, spacing_mm) for name, value in labels.items()}


def score(pred: np.ndarray, truth: np.ndarray, labels: dict[str, int], spacing_mm) -> dict:
    return {"dice": dice_per_label(pred, truth, labels), "hd95_mm": hd95_per_label(pred, truth, labels, spacing_mm)}


def mean_scores(cases: list[dict], labels: dict[str, int]) -> dict:
    """Mean over cases of each label's Dice and HD95 (inf stays inf: a missed label is not averaged away)."""
    return {metric: {name: float(np.mean([c[metric][name] for c in cases])) for name in labels}
            for metric in ("dice", "hd95_mm")}


def json_number(x: float) -> float | None:
    """JSON has no inf or nan: a missed label's HD95 is written as null."""
    return None if x is None or not math.isfinite(x) else round(float(x), 4)
