"""Segmentation objectives: soft Dice, Dice + cross-entropy, and deep supervision.

Dice + CE and deep supervision weights that halve per resolution (normalized to
sum to 1, lowest resolution dropped) follow nnU-Net (Isensee et al. 2021).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """1 - mean foreground soft Dice, computed over the whole batch ("batch Dice")."""
    n_classes = logits.shape[1]
    probs = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(target.long(), n_classes).movedim(-1, 1).float()
    dims = (0, *range(2, logits.ndim))
    intersection = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * intersection + smooth) / (denom + smooth)
    return 1 - dice[1:].mean()


def inverse_sqrt_frequency_weights(voxels_per_class: np.ndarray) -> torch.Tensor:
    """Cross-entropy weights 1/sqrt(frequency), scaled so the mean weight per voxel is 1.

    Cross-entropy's pull on a class grows with its voxel count, so from random weights the
    largest labels are learnt first and a label of 0.2% of the voxels may not be learnt at all
    within a CPU budget. The square root halves that imbalance on a log scale without letting a
    handful of voxels dominate the loss."""
    frequency = np.maximum(np.asarray(voxels_per_class, float), 1.0)
    frequency = frequency / frequency.sum()
    weights = 1 / np.sqrt(frequency)
    return torch.tensor(weights / (frequency * weights).sum(), dtype=torch.float32)


class DiceCELoss(nn.Module):
    def __init__(self, use_ce: bool = True, class_weights: torch.Tensor | None = None):
        super().__init__()
        self.use_ce = use_ce
        self.class_weights = class_weights

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = soft_dice_loss(logits, target)
        if self.use_ce:
            weights = None if self.class_weights is None else self.class_weights.to(logits.device)
            loss = loss + F.cross_entropy(logits.float(), target.long(), weight=weights)
        return loss


def deep_supervision_weights(n_outputs: int) -> list[float]:
    if n_outputs == 1:
        return [1.0]
    w = [1 / 2**i for i in range(n_outputs)]
    w[-1] = 0.0  # nnU-Net ignores the lowest resolution output
    s = sum(w)
    return [x / s for x in w]


def downsample_target(target: torch.Tensor, shape) -> torch.Tensor:
    """Nearest-neighbour downsampling of a (B, *spatial) label to a coarser output."""
    if tuple(target.shape[1:]) == tuple(shape):
        return target
    return F.interpolate(target[:, None].float(), size=tuple(shape), mode="nearest")[:, 0].long()


class DeepSupervisionLoss(nn.Module):
    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base

    def forward(self, outputs, target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.base(outputs, target)
        weights = deep_supervision_weights(len(outputs))
        total = outputs[0].new_zeros(())
        for w, out in zip(weights, outputs):
            if w > 0:
                total = total + w * self.base(out, downsample_target(target, out.shape[2:]))
        return total
