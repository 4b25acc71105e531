"""Training-time data augmentation on batches of patches (torch, CPU or GPU).

Transforms and probabilities follow nnU-Net's default list (Isensee et al. 2021,
supplementary note 4): rotation and scaling (p=0.2 each), Gaussian noise (p=0.1),
Gaussian blur (p=0.2), brightness (p=0.15), contrast (p=0.15), simulated low
resolution (p=0.25), gamma (p=0.3, also on the inverted image p=0.1) and
mirroring along every axis (p=0.5). Added from V-Net (Milletari et al. 2016,
section 3): a random nonlinear (B-spline-like) deformation and histogram matching
to another training image, both at p=0.2.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _rotation(dims: int, max_deg: float, gen: torch.Generator) -> torch.Tensor:
    def angle():
        return math.radians((torch.rand(1, generator=gen).item() * 2 - 1) * max_deg)

    if dims == 2:
        a = angle()
        return torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    rot = torch.eye(3)
    for i, j in ((1, 2), (0, 2), (0, 1)):
        a = angle()
        r = torch.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = math.cos(a), -math.sin(a), math.sin(a), math.cos(a)
        rot = r @ rot
    return rot


def spatial_transform(image: torch.Tensor, label: torch.Tensor, gen: torch.Generator, p_rot=0.2, p_scale=0.2):
    """Random rotation (+-30 deg) and scaling (0.7-1.4) of one sample (C, *spatial), label (*spatial)."""
    dims = image.ndim - 1
    rotate = torch.rand(1, generator=gen).item() < p_rot
    scale = torch.rand(1, generator=gen).item() < p_scale
    if not (rotate or scale):
        return image, label
    matrix = _rotation(dims, 30.0, gen) if rotate else torch.eye(dims)
    if scale:
        matrix = matrix / (0.7 + torch.rand(1, generator=gen).item() * 0.7)
    theta = torch.cat([matrix, torch.zeros(dims, 1)], dim=1)[None].to(image)
    size = (1, 1, *image.shape[1:])
    grid = F.affine_grid(theta, size, align_corners=False)
    img = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    lab = F.grid_sample(label[None, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return img, lab[0, 0].to(label.dtype)


def elastic_transform(image: torch.Tensor, label: torch.Tensor, gen: torch.Generator, p=0.2, max_vox=4.0,
                      control_points=4):
    """Smooth random displacement: a coarse random grid, upsampled (cubic-like) to the patch."""
    if torch.rand(1, generator=gen).item() >= p:
        return image, label
    dims = image.ndim - 1
    spatial = image.shape[1:]
    coarse = torch.randn((1, dims, *([control_points] * dims)), generator=gen)
    mode = "trilinear" if dims == 3 else "bilinear"
    field = F.interpolate(coarse, size=spatial, mode=mode, align_corners=True)[0]
    magnitude = torch.rand(1, generator=gen).item() * max_vox
    # grid_sample wants normalized [-1, 1] coordinates in x, y(, z) order (reversed axes).
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in spatial]).view(dims, *([1] * dims))
    field = (field * magnitude * scale).to(image)
    theta = torch.cat([torch.eye(dims), torch.zeros(dims, 1)], dim=1)[None].to(image)
    grid = F.affine_grid(theta, (1, 1, *spatial), align_corners=True)
    grid = grid + field.flip(0).movedim(0, -1)[None]
    img = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="border", align_corners=True)[0]
    lab = F.grid_sample(label[None, None].float(), grid, mode="nearest", padding_mode="border", align_corners=True)
    return img, lab[0, 0].to(label.dtype)


HISTOGRAM_QUANTILES = torch.linspace(0.0, 1.0, 101)


def intensity_quantiles(image) -> torch.Tensor:
    """Reference quantiles of an image's nonzero voxels, for histogram matching."""
    x = torch.as_tensor(image).float().flatten()
    x = x[x != 0] if (x != 0).any() else x
    if x.numel() > 200_000:
        x = x[torch.randperm(x.numel(), generator=torch.Generator().manual_seed(0))[:200_000]]
    return torch.quantile(x, HISTOGRAM_QUANTILES)


def histogram_match(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear mapping of the image's quantiles onto the reference quantiles."""
    source = torch.quantile(image.flatten().float(), HISTOGRAM_QUANTILES.to(image.device))
    source = source + torch.arange(source.numel(), device=image.device) * 1e-6  # strictly increasing
    idx = torch.searchsorted(source, image.flatten().contiguous()).clamp(1, source.numel() - 1)
    lo, hi = source[idx - 1], source[idx]
    w = ((image.flatten() - lo) / (hi - lo)).clamp(0, 1)
    ref = reference.to(image)
    return (ref[idx - 1] + w * (ref[idx] - ref[idx - 1])).view_as(image)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (C, *spatial)."""
    radius = max(1, int(round(3 * sigma)))
    k = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (k / sigma) ** 2)
    k = k / k.sum()
    dims = x.ndim - 1
    conv = F.conv3d if dims == 3 else F.conv2d
    out = x[:, None]
    for axis in range(dims):
        shape = [1] * dims
        shape[axis] = k.numel()
        pad = [0, 0] * dims
        pad[2 * (dims - 1 - axis)] = radius
        pad[2 * (dims - 1 - axis) + 1] = radius
        out = conv(F.pad(out, pad, mode="replicate"), k.view(1, 1, *shape))
    return out[:, 0]


def intensity_transform(image: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    def chance(p):
        return torch.rand(1, generator=gen).item() < p

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(1, generator=gen).item()

    x = image
    if chance(0.1):
        x = x + torch.randn(x.shape, generator=gen).to(x) * math.sqrt(uniform(0.0, 0.1))
    if chance(0.2):
        x = _gaussian_blur(x, uniform(0.5, 1.0))
    if chance(0.15):
        x = x * uniform(0.75, 1.25)
    if chance(0.15):
        mean = x.mean()
        lo, hi = x.min(), x.max()
        x = ((x - mean) * uniform(0.75, 1.25) + mean).clamp(lo, hi)
    if chance(0.25):
        shape = x.shape[1:]
        factor = uniform(0.5, 1.0)
        small = [max(1, int(round(s * factor))) for s in shape]
        mode = "trilinear" if x.ndim == 4 else "bilinear"
        x = F.interpolate(F.interpolate(x[None], size=small, mode="nearest"), size=shape, mode=mode, align_corners=False)[0]
    for invert, p in ((True, 0.1), (False, 0.3)):
        if chance(p):
            x = _gamma(-x if invert else x, uniform(0.7, 1.5))
            x = -x if invert else x
    return x


def _gamma(x: torch.Tensor, gamma: float) -> torch.Tensor:
    """Gamma on the [min, max] range, keeping mean and std (nnU-Net's retain_stats)."""
    mean, std = x.mean(), x.std()
    lo, hi = x.min(), x.max()
    span = (hi - lo).clamp_min(1e-7)
    y = ((x - lo) / span) ** gamma * span + lo
    return (y - y.mean()) / y.std().clamp_min(1e-7) * std + mean


def mirror(image: torch.Tensor, label: torch.Tensor, gen: torch.Generator, axes=None):
    """Flip each spatial axis (0-based; None: all) with probability 0.5."""
    for axis in range(1, image.ndim):
        if torch.rand(1, generator=gen).item() < 0.5 and (axes is None or axis - 1 in axes):
            image = torch.flip(image, (axis,))
            label = torch.flip(label, (axis - 1,))
    return image, label


def augment_sample(image: torch.Tensor, label: torch.Tensor, gen: torch.Generator,
                   references: list[torch.Tensor] | None = None, p_histogram=0.2, mirror_axes=None):
    image, label = spatial_transform(image, label, gen)
    image, label = elastic_transform(image, label, gen)
    if references and torch.rand(1, generator=gen).item() < p_histogram:
        ref = references[int(torch.randint(len(references), (1,), generator=gen))]
        image = histogram_match(image, ref)
    image = intensity_transform(image, gen)
    image, label = mirror(image, label, gen, mirror_axes)
    return image.contiguous(), label.contiguous()
