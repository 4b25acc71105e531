"""The two-stage cascade: a low-resolution U-Net sees the whole image, a full-resolution
U-Net refines its prediction patch by patch.

Following nnU-Net's cascade (Isensee et al., Nature Methods 2021, supplementary
note 2): the first stage's segmentation is resampled to the full-resolution grid,
one-hot encoded (foreground classes only) and concatenated to the image as extra
input channels of the second stage.

The second stage must not learn to trust a perfect first stage. nnU-Net trains it
on five-fold cross-validated first-stage predictions and perturbs them further
(random morphological operators and removal of connected components). A 5-fold
first stage is too expensive for training on a clinician's workstation after every
few corrections, so we train it on *perturbed ground truth*: each patch's label
is degraded the way the first stage degrades it (its resolution lost by the down-
and up-sampling to the low-resolution grid), then per class a random binary
operator (dilation, erosion, opening, closing) and random removal of connected
components. Validation uses the real first stage's predictions on the validation
images, which that stage never trained on (they come from the same persistent split).
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from medseg.pipeline.plan import Plan
from medseg.pipeline.postprocess import class_argmax
from medseg.pipeline.predictor import Predictor
from medseg.pipeline.preprocess import PreprocessedCase, preprocess
from medseg.volume import Volume

# nnU-Net v1 cascade augmentation: binary operators with p=0.4 per class and
# structuring elements of 1-8 voxels, component removal with p=0.2; we keep the
# probabilities and use radii of 1-3 voxels, which fit patches of 64-128 voxels.
BINARY_OPERATOR_PROBABILITY = 0.4
BINARY_OPERATOR_MAX_RADIUS = 3
REMOVE_COMPONENT_PROBABILITY = 0.2
REMOVE_COMPONENT_MAX_FRACTION = 0.15  # only components smaller than this share of the class are dropped


def onehot_foreground(label: np.ndarray | torch.Tensor, n_classes: int) -> torch.Tensor:
    """(*spatial) label map -> (n_classes - 1, *spatial) float one-hot of the foreground classes."""
    label = torch.as_tensor(np.asarray(label), dtype=torch.long)
    onehot = F.one_hot(label.clamp(0, n_classes - 1), n_classes).movedim(-1, 0)
    return onehot[1:].float()


def with_previous_stage(case: PreprocessedCase, previous: np.ndarray, n_classes: int) -> PreprocessedCase:
    """The case with the first stage's prediction (on the same grid) as extra channels."""
    channels = onehot_foreground(previous, n_classes).numpy()
    image = np.concatenate([np.asarray(case.image, dtype=np.float32), channels], axis=0)
    return PreprocessedCase(image=image, label=case.label, original_shape=case.original_shape, bbox=case.bbox,
                            cropped_shape=case.cropped_shape, foreground_vox=case.foreground_vox, ornt=case.ornt)


def _ball(radius: int, dims: int) -> np.ndarray:
    grid = np.indices((2 * radius + 1,) * dims) - radius
    return (grid**2).sum(0) <= radius**2


def _lose_resolution(label: torch.Tensor, factors: list[float], n_classes: int) -> np.ndarray:
    """What resampling to the coarser grid and back does to a label: blunted, shifted edges."""
    shape = label.shape
    small = [max(1, int(round(n / f))) for n, f in zip(shape, factors)]
    onehot = F.one_hot(label.long(), n_classes).movedim(-1, 0)[None].float()
    mode = "trilinear" if label.ndim == 3 else "bilinear"
    down = F.interpolate(onehot, size=small, mode=mode, align_corners=False)
    return class_argmax(F.interpolate(down, size=tuple(shape), mode=mode, align_corners=False)[0])


def _perturb_channel(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < BINARY_OPERATOR_PROBABILITY:
        op = rng.choice(["dilation", "erosion", "opening", "closing"])
        ball = _ball(int(rng.integers(1, BINARY_OPERATOR_MAX_RADIUS + 1)), mask.ndim)
        mask = getattr(ndimage, f"binary_{op}")(mask, structure=ball)
    if rng.random() < REMOVE_COMPONENT_PROBABILITY and mask.any():
        components, n = ndimage.label(mask)
        if n > 1:
            sizes = np.bincount(components.ravel())[1:]
            small = np.flatnonzero(sizes < REMOVE_COMPONENT_MAX_FRACTION * sizes.sum()) + 1
            if len(small):
                mask = mask & (components != rng.choice(small))
    return mask


class PerturbedPreviousStage:
    """Training input for the second stage: a degraded copy of the ground truth.

    Called on a batch of (augmented) label patches ``(B, *spatial)``; returns the
    one-hot foreground channels ``(B, n_classes - 1, *spatial)`` to concatenate to
    the image. Picklable, so it travels to distributed training workers.
    """

    def __init__(self, plan: Plan, seed: int = 0):
        self.n_classes = plan.n_classes
        coarse = plan.previous_stage_spacing_mm or plan.target_spacing_mm
        self.factors = [c / f for c, f in zip(coarse, plan.target_spacing_mm)]
        self.rng = np.random.default_rng(seed + 7919)

    def __call__(self, labels: torch.Tensor) -> torch.Tensor:
        out = []
        for label in labels:
            degraded = _lose_resolution(label, self.factors, self.n_classes)
            channels = [_perturb_channel(degraded == c, self.rng) for c in range(1, self.n_classes)]
            out.append(np.stack(channels).astype(np.float32))
        return torch.from_numpy(np.stack(out))


def previous_stage_on_grid(first_stage: Predictor, volume: Volume, plan: Plan, tta: bool = False) -> PreprocessedCase:
    """``volume`` preprocessed for the second stage, its ``label`` the first stage's prediction.

    The first stage predicts on the input grid; ``preprocess`` then takes its labels to
    the second stage's grid exactly as it takes a ground-truth label in training.
    """
    labels = first_stage(volume, tta=tta).labels
    return preprocess(volume.array, volume.spacing_mm, plan, labels, affine=volume.affine)


class CascadePredictor(Predictor):
    """First stage on the whole image, then the second stage on its resampled prediction."""

    def __init__(self, first_stage: Predictor, network: torch.nn.Module, plan: Plan, device: torch.device,
                 largest_component_labels: list[int] | None = None, side_pairs: list[list[int]] | None = None):
        super().__init__(network, plan, device, largest_component_labels, side_pairs)
        self.first_stage = first_stage

    def prepare(self, volume: Volume, tta: bool) -> tuple[PreprocessedCase, dict]:
        t0 = time.perf_counter()
        case = previous_stage_on_grid(self.first_stage, volume, self.plan, tta)
        t1 = time.perf_counter()
        case = with_previous_stage(case, case.label, self.plan.n_classes)
        return case, {"first_stage": round(t1 - t0, 3), "pre": round(time.perf_counter() - t1, 3)}
