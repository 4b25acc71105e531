"""Sliding-window prediction with Gaussian importance weighting and mirror TTA.

Step 0.5 of the patch and a Gaussian window with sigma = patch/8 follow nnU-Net
(Isensee et al. 2021, supplementary note 2: predictions near the patch border
are less accurate, so the centre is weighted up). Mirroring over every subset of
axes (8 passes in 3D, 4 in 2D) is nnU-Net's test-time augmentation.
"""
from __future__ import annotations

import itertools

import torch
from monai.inferers import sliding_window_inference

WINDOW_OVERLAP = 0.5
GAUSSIAN_SIGMA_SCALE = 0.125


def mirror_axes_subsets(spatial_dims: int, patch_size=None, allowed=None) -> list[tuple[int, ...]]:
    """All subsets of the spatial axes (as tensor dims of a (B, C, *spatial) batch).

    Axes where the patch is a single voxel (the slice axis of a 2D model) are not
    mirrored: 2D models get nnU-Net's 4 in-plane flips. ``allowed`` (spatial axes, the
    plan's ``mirror_axes``) leaves out the others: left-right for lateralized labels.
    """
    axes = [2 + a for a in range(spatial_dims) if (patch_size is None or patch_size[a] > 1)
            and (allowed is None or a in allowed)]
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


@torch.no_grad()
def predict_probabilities(
    network: torch.nn.Module,
    image: torch.Tensor,
    patch_size,
    mirror: bool = False,
    sw_batch_size: int = 2,
    device: torch.device | str = "cpu",
    mirror_axes=None,
) -> torch.Tensor:
    """Softmax probabilities (C, *spatial) for one preprocessed image (channels, *spatial)."""
    device = torch.device(device)
    network.eval()
    batch = image[None].to(device)
    use_amp = device.type == "cuda"
    subsets = mirror_axes_subsets(len(patch_size), patch_size, mirror_axes) if mirror else [()]
    total = None
    for axes in subsets:
        x = torch.flip(batch, axes) if axes else batch
        with torch.autocast(device_type=device.type, enabled=use_amp):
            logits = sliding_window_inference(
                x,
                roi_size=tuple(patch_size),
                sw_batch_size=sw_batch_size,
                predictor=network,
                overlap=WINDOW_OVERLAP,
                mode="gaussian",
                sigma_scale=GAUSSIAN_SIGMA_SCALE,
                padding_mode="constant",
                cval=0.0,
            )
        probs = softmax_(logits.float(), dim=1)
        if axes:
            probs = torch.flip(probs, axes)
        if total is None:
            total = probs
        else:
            total += probs
    if len(subsets) > 1:
        total /= len(subsets)
    return total[0].cpu()


def softmax_(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax computed in place: with 100+ classes on a whole CT the class maps are gigabytes,
    and ``torch.softmax`` plus the averaging would hold two more copies of them."""
    x -= x.amax(dim=dim, keepdim=True)
    x.exp_()
    x /= x.sum(dim=dim, keepdim=True)
    return x
