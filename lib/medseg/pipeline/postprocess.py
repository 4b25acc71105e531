"""Largest-connected-component postprocessing and the validation-driven decision to use it.

nnU-Net (Isensee et al. 2021, supplementary note 6) removes all but the largest
connected component of a class only when that does not hurt validation Dice;
the decision is stored with the model so inference applies exactly what was
validated.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from medseg.pipeline.metrics import mean_dice_per_label


def class_argmax(scores, axis: int = 0) -> np.ndarray:
    """Index of the highest class score along ``axis`` as uint8, or uint16 beyond 256 classes
    (ties go to the lower index).

    Same result as ``argmax`` for finite scores (softmax and resampling give NaN in every
    class of a voxel or in none; such a voxel gets 0 here and from argmax). torch's CPU
    argmax over a leading (strided) class axis reduces one voxel at a time and was the
    slowest step of an infer request on a 1 mm volume; comparing whole class maps is
    vectorized. Every prediction path turns probabilities into labels through here.
    """
    scores = torch.as_tensor(scores).movedim(axis, 0)
    if scores.shape[0] > 65536:
        raise ValueError(f"{scores.shape[0]} classes do not fit uint16 labels")
    best = scores[0].clone()
    # torch has no uint16 masked_fill on every version: int32 there, narrowed at the end.
    index = torch.zeros(scores.shape[1:], dtype=torch.uint8 if scores.shape[0] <= 256 else torch.int32)
    for c in range(1, scores.shape[0]):
        higher = scores[c] > best
        index.masked_fill_(higher, c)
        torch.maximum(best, scores[c], out=best)
    return index.numpy() if index.dtype == torch.uint8 else index.numpy().astype(np.uint16)


def keep_largest_component(labels: np.ndarray, value: int) -> np.ndarray:
    """Set every voxel of ``value`` outside its largest 26-connected component to background."""
    mask = labels == value
    if not mask.any():
        return labels
    structure = ndimage.generate_binary_structure(labels.ndim, labels.ndim)
    components, n = ndimage.label(mask, structure=structure)
    if n <= 1:
        return labels
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    out = labels.copy()
    out[mask & (components != int(np.argmax(sizes)))] = 0
    return out


def apply_postprocessing(labels: np.ndarray, largest_component_labels: list[int]) -> np.ndarray:
    for value in largest_component_labels:
        labels = keep_largest_component(labels, value)
    return labels


# A label whose ground truth has a second component this large (as a fraction of the label's
# voxels) is made of pieces (ribs, vessels, bilateral structures): keeping the largest would cut true parts.
MANY_PIECES_FRACTION = 0.05


def is_many_pieces(truths: list[np.ndarray], value: int, fraction: float = MANY_PIECES_FRACTION) -> bool:
    for truth in truths:
        mask = np.asarray(truth) == value
        total = int(mask.sum())
        if not total:
            continue
        components, count = ndimage.label(mask)
        if count > 1 and np.sort(np.bincount(components.ravel())[1:])[-2] >= fraction * total:
            return True
    return False


def decide_largest_component(
    predictions: list[np.ndarray], truths: list[np.ndarray], label_values: dict[str, int]
) -> tuple[list[int], dict]:
    """Label values for which keeping the largest component helps, as validation shows.

    A label is a candidate only when the model found it at all (its Dice is above zero)
    and its ground truth is one piece (``is_many_pieces``); it is chosen when the step
    raises that label's mean Dice and lowers no other's. Returns the chosen values and
    the evidence (mean Dice per label with and without the step for each candidate, or
    why it was not tried), which is stored beside the weights.
    """

    def mean_dice(preds):
        return mean_dice_per_label(preds, truths, label_values)

    chosen: list[int] = []
    current = list(predictions)
    baseline = mean_dice(current)
    evidence = {"baseline": baseline, "candidates": {}}
    for name, value in label_values.items():
        if baseline[name] <= 0:
            evidence["candidates"][name] = {"accepted": False, "reason": "not found on validation (Dice 0)"}
            continue
        if is_many_pieces(truths, value):
            evidence["candidates"][name] = {"accepted": False, "reason": "many pieces in the ground truth"}
            continue
        trial = [keep_largest_component(p, value) for p in current]
        scores = mean_dice(trial)
        accepted = scores[name] > baseline[name] and all(scores[k] >= baseline[k] for k in label_values)
        evidence["candidates"][name] = {"dice": scores, "accepted": accepted}
        if accepted:
            chosen.append(value)
            current, baseline = trial, scores
    return chosen, evidence
