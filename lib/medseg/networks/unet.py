"""nnU-Net-style U-Net ("PlainConvUNet") in 2D or 3D.

Design follows Isensee et al., "nnU-Net: a self-configuring method for deep
learning-based biomedical image segmentation", Nature Methods 18 (2021), and its
supplementary note 2 ("network topology"):

* every resolution stage has two blocks of conv(3) -> InstanceNorm -> LeakyReLU(0.01);
* downsampling is the first conv of a stage with a stride (no pooling layers);
* upsampling is a transposed convolution whose kernel equals its stride;
* skip connections concatenate encoder features to the decoder;
* deep supervision: in training mode every decoder stage but the lowest gets a
  1x1 segmentation head, and the network returns the outputs from the finest to
  the coarsest resolution (the loss weights them by halving, see pipeline.loss).

Shape contract: input ``(B, in_channels, *spatial)`` with ``len(spatial) ==
spatial_dims``. Any spatial size is accepted: the input is padded up to a
multiple of the total stride per axis and the output cropped back, so the
(first) output is always ``(B, out_channels, *spatial)``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from medseg.networks.blocks import check_spatial_dims, pad_to_multiple, pointwise_conv, stride_product


def _conv(dims: int):
    return nn.Conv3d if dims == 3 else nn.Conv2d


def _norm(dims: int):
    return nn.InstanceNorm3d if dims == 3 else nn.InstanceNorm2d


def _transposed_conv(dims: int):
    return nn.ConvTranspose3d if dims == 3 else nn.ConvTranspose2d


class ConvNormAct(nn.Sequential):
    """conv -> InstanceNorm(affine) -> LeakyReLU(0.01), the nnU-Net building block."""

    def __init__(self, dims: int, in_ch: int, out_ch: int, kernel: Sequence[int], stride: Sequence[int]):
        padding = [k // 2 for k in kernel]
        super().__init__(
            _conv(dims)(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=True),
            _norm(dims)(out_ch, eps=1e-5, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
        )


class Stage(nn.Sequential):
    """Two ConvNormAct blocks; the first one carries the stage's downsampling stride."""

    def __init__(self, dims: int, in_ch: int, out_ch: int, kernel: Sequence[int], stride: Sequence[int]):
        super().__init__(
            ConvNormAct(dims, in_ch, out_ch, kernel, stride),
            ConvNormAct(dims, out_ch, out_ch, kernel, [1] * dims),
        )


def default_topology(dims: int, n_stages: int) -> tuple[list[list[int]], list[list[int]]]:
    """Isotropic kernels and strides: 3 everywhere, stride 1 at stage 0 and 2 afterwards."""
    kernels = [[3] * dims for _ in range(n_stages)]
    strides = [[1] * dims] + [[2] * dims for _ in range(n_stages - 1)]
    return kernels, strides


class UNet(nn.Module):
    """Plain-convolution U-Net with optional deep supervision.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels (e.g. 1 for a T1 MRI).
        out_channels: number of classes including background.
        features: channels per stage, e.g. ``(32, 64, 128, 256, 320)``.
        kernel_sizes: per stage, per axis conv kernel; default 3 everywhere.
        strides: per stage, per axis downsampling stride of the stage's first conv;
            stage 0 must be all ones. Default 2 everywhere below stage 0. Anisotropic
            plans pass e.g. ``[1, 2, 2]`` to keep a coarse axis from being pooled.
        deep_supervision: return one output per decoder stage in training mode.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (32, 64, 128, 256, 320),
        kernel_sizes: Sequence[Sequence[int]] | None = None,
        strides: Sequence[Sequence[int]] | None = None,
        deep_supervision: bool = True,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        n_stages = len(features)
        if n_stages < 2:
            raise ValueError("a U-Net needs at least two stages")
        default_k, default_s = default_topology(spatial_dims, n_stages)
        kernel_sizes = [list(k) for k in (kernel_sizes or default_k)]
        strides = [list(s) for s in (strides or default_s)]
        if len(kernel_sizes) != n_stages or len(strides) != n_stages:
            raise ValueError("kernel_sizes and strides need one entry per stage")
        if any(s != 1 for s in strides[0]):
            raise ValueError("the first stage must not downsample")
        self.spatial_dims = spatial_dims
        self.deep_supervision = deep_supervision
        self.strides = strides

        self.encoder = nn.ModuleList()
        ch = in_channels
        for f, k, s in zip(features, kernel_sizes, strides):
            self.encoder.append(Stage(spatial_dims, ch, f, k, s))
            ch = f

        self.upsamplers = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.heads = nn.ModuleList()
        for i in range(n_stages - 1, 0, -1):
            below, skip = features[i], features[i - 1]
            self.upsamplers.append(_transposed_conv(spatial_dims)(below, skip, strides[i], stride=strides[i]))
            self.decoder.append(Stage(spatial_dims, 2 * skip, skip, kernel_sizes[i - 1], [1] * spatial_dims))
            self.heads.append(pointwise_conv(spatial_dims, skip, out_channels))

    @property
    def size_divisor(self) -> list[int]:
        """Per-axis factor every input size is padded up to."""
        return stride_product(self.strides, [1] * self.spatial_dims)

    def forward(self, x: torch.Tensor):
        spatial = x.shape[2:]
        check_spatial_dims(x, self.spatial_dims)
        x = pad_to_multiple(x, self.size_divisor)

        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        # The coarse heads only serve the deep-supervision loss: in inference each would write
        # another set of class maps per window (121 of them for a 120-label CT) for nothing.
        with_aux = self.training and self.deep_supervision
        outputs = []
        for level, (up, stage, head) in enumerate(zip(self.upsamplers, self.decoder, self.heads)):
            x = stage(torch.cat([up(x), skips.pop()], dim=1))
            if with_aux or level == len(self.decoder) - 1:
                outputs.append(head(x))
        outputs.reverse()  # finest first

        crop = tuple(slice(None, s) for s in spatial)
        full = outputs[0][(Ellipsis, *crop)]
        if with_aux:
            return [full] + outputs[1:]
        return full
