"""Overlap metrics between label maps: what training, postprocessing and benchmarks all score with.

Below every pipeline step, so that postprocessing and side assignment can score their
choices on validation without importing the training loop.
"""
from __future__ import annotations

import numpy as np


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """2|A and B| / (|A| + |B|) of two masks; 1.0 when both are empty."""
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 2.0 * float(np.count_nonzero(np.logical_and(a, b))) / total if total else 1.0


def dice_per_label(pred: np.ndarray, truth: np.ndarray, labels: dict[str, int]) -> dict[str, float]:
    """2|P and T| / (|P| + |T|) per label; 1.0 when the label is absent from both."""
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} are not on the same grid")
    out = {}
    for name, idx in labels.items():
        p, t = pred == idx, truth == idx
        denom = p.sum() + t.sum()
        out[name] = 1.0 if denom == 0 else float(2.0 * np.logical_and(p, t).sum() / denom)
    return out


def mean_dice_per_label(preds: list[np.ndarray], truths: list[np.ndarray], labels: dict[str, int]) -> dict[str, float]:
    scores = [dice_per_label(p, t, labels) for p, t in zip(preds, truths)]
    return {name: float(np.mean([s[name] for s in scores])) for name in labels}
