"""U-Net with a residual encoder ("ResEnc U-Net") in 2D or 3D.

Design follows nnU-Net's residual-encoder presets, Isensee et al., "nnU-Net
Revisited: A Call for Rigorous Validation in 3D Medical Image Segmentation",
MICCAI 2024 (ResEnc M/L/XL, blocks per stage ``(1, 3, 4, 6, 6, 6)``), built from
the residual blocks of He et al., "Deep Residual Learning for Image Recognition",
CVPR 2016:

* a stem conv(3) -> InstanceNorm -> LeakyReLU(0.01) lifts the input to ``features[0]``;
* encoder stage ``i`` is ``blocks_per_stage[i]`` residual blocks, the first of which
  carries the stage's downsampling stride (no pooling layers in the main path);
* basic block: conv(3) -> norm -> act -> conv(3) -> norm, plus the shortcut, then act;
  bottleneck block: conv(1) -> conv(3) -> conv(1) with a 4x narrower middle;
* the shortcut is the identity when shapes match; otherwise average pooling by the
  stride then a 1x1 conv + norm (the "ResNet-D" shortcut of He et al., "Bag of
  Tricks for Image Classification", CVPR 2019, used by nnU-Net), so the shortcut
  sees every input voxel instead of a strided 1x1 conv dropping 7 of 8;
* the decoder is the plain one of ``unet.UNet``: transposed-conv upsampling,
  skip concatenation, conv-norm-act blocks (one per stage by default, as in the
  ResEnc presets: the encoder carries the capacity), and deep supervision.

Shape contract: input ``(B, in_channels, *spatial)`` with ``len(spatial) ==
spatial_dims``. Any spatial size is accepted: the input is padded up to a
multiple of the total stride per axis and the output cropped back, so the
(first) output is always ``(B, out_channels, *spatial)``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from medseg.networks.blocks import check_spatial_dims, decode, pad_to_multiple, pointwise_conv, stride_product

from medseg.networks.unet import (
    ConvNormAct,
    _conv,
    _norm,
    _transposed_conv,
    default_topology,
)

# nnU-Net Revisited, table of ResEnc presets; stages beyond the sixth get 6 blocks too.
RESENC_BLOCKS = (1, 3, 4, 6, 6, 6)
BOTTLENECK_EXPANSION = 4  # He et al. 2016, section 4.1 ("deeper bottleneck architectures")


def _conv_norm(dims: int, in_ch: int, out_ch: int, kernel: Sequence[int], stride: Sequence[int]) -> nn.Sequential:
    padding = [k // 2 for k in kernel]
    return nn.Sequential(
        _conv(dims)(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=True),
        _norm(dims)(out_ch, eps=1e-5, affine=True),
    )


def _shortcut(dims: int, in_ch: int, out_ch: int, stride: Sequence[int]) -> nn.Module:
    layers = []
    if any(s != 1 for s in stride):
        pool = nn.AvgPool3d if dims == 3 else nn.AvgPool2d
        layers.append(pool(stride, stride))
    if in_ch != out_ch:
        layers.append(_conv_norm(dims, in_ch, out_ch, [1] * dims, [1] * dims))
    return nn.Sequential(*layers)  # empty Sequential is the identity


class BasicBlock(nn.Module):
    """Two kxk convs with norms, the shortcut added before the last activation."""

    def __init__(self, dims: int, in_ch: int, out_ch: int, kernel: Sequence[int], stride: Sequence[int]):
        super().__init__()
        self.residual = nn.Sequential(
            ConvNormAct(dims, in_ch, out_ch, kernel, stride),
            _conv_norm(dims, out_ch, out_ch, kernel, [1] * dims),
        )
        self.shortcut = _shortcut(dims, in_ch, out_ch, stride)
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.residual(x) + self.shortcut(x))


class BottleneckBlock(nn.Module):
    """1x1 reduce -> kxk (carries the stride, as in ResNet v1.5) -> 1x1 expand, plus shortcut."""

    def __init__(self, dims: int, in_ch: int, out_ch: int, kernel: Sequence[int], stride: Sequence[int]):
        super().__init__()
        mid = max(1, out_ch // BOTTLENECK_EXPANSION)
        ones = [1] * dims
        self.residual = nn.Sequential(
            ConvNormAct(dims, in_ch, mid, ones, ones),
            ConvNormAct(dims, mid, mid, kernel, stride),
            _conv_norm(dims, mid, out_ch, ones, ones),
        )
        self.shortcut = _shortcut(dims, in_ch, out_ch, stride)
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.residual(x) + self.shortcut(x))


BLOCKS = {"basic": BasicBlock, "bottleneck": BottleneckBlock}


class ResEncUNet(nn.Module):
    """U-Net with a residual encoder and a plain-conv decoder, with optional deep supervision.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: number of classes including background.
        features: channels per stage, e.g. ``(32, 64, 128, 256, 320)``.
        strides: per stage, per axis downsampling stride of the stage's first block;
            stage 0 must be all ones. Default 2 everywhere below stage 0.
        deep_supervision: return one output per decoder stage in training mode.
        blocks_per_stage: residual blocks per encoder stage; default the ResEnc
            preset ``(1, 3, 4, 6, 6, 6)`` cut to the number of stages.
        block: ``"basic"`` or ``"bottleneck"``.
        kernel_sizes: per stage, per axis conv kernel; default 3 everywhere.
        decoder_convs_per_stage: conv-norm-act blocks per decoder stage.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (32, 64, 128, 256, 320),
        strides: Sequence[Sequence[int]] | None = None,
        deep_supervision: bool = True,
        blocks_per_stage: Sequence[int] | None = None,
        block: str = "basic",
        kernel_sizes: Sequence[Sequence[int]] | None = None,
        decoder_convs_per_stage: int = 1,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        n = len(features)
        if n < 2:
            raise ValueError("a U-Net needs at least two stages")
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {block!r}")
        default_k, default_s = default_topology(spatial_dims, n)
        kernel_sizes = [list(k) for k in (kernel_sizes or default_k)]
        strides = [list(s) for s in (strides or default_s)]
        blocks = list(blocks_per_stage or [RESENC_BLOCKS[min(i, len(RESENC_BLOCKS) - 1)] for i in range(n)])
        if len(kernel_sizes) != n or len(strides) != n or len(blocks) != n:
            raise ValueError("kernel_sizes, strides and blocks_per_stage need one entry per stage")
        if any(len(s) != spatial_dims or min(s) < 1 for s in strides):
            raise ValueError(f"each stride needs {spatial_dims} positive entries")
        if any(s != 1 for s in strides[0]):
            raise ValueError("the first stage must not downsample")
        if min(blocks) < 1 or decoder_convs_per_stage < 1:
            raise ValueError("every stage needs at least one block or conv")
        self.spatial_dims = spatial_dims
        self.deep_supervision = deep_supervision
        self.strides = strides
        d, ones = spatial_dims, [1] * spatial_dims
        make_block = BLOCKS[block]

        self.stem = ConvNormAct(d, in_channels, features[0], kernel_sizes[0], ones)
        self.encoder = nn.ModuleList()
        ch = features[0]
        for f, k, s, nb in zip(features, kernel_sizes, strides, blocks):
            first = make_block(d, ch, f, k, s)
            self.encoder.append(nn.Sequential(first, *[make_block(d, f, f, k, ones) for _ in range(nb - 1)]))
            ch = f

        self.upsamplers = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in range(n - 1, 0, -1):
            below, skip = features[i], features[i - 1]
            self.upsamplers.append(_transposed_conv(d)(below, skip, strides[i], stride=strides[i]))
            k = kernel_sizes[i - 1]
            convs = [ConvNormAct(d, skip, skip, k, ones) for _ in range(decoder_convs_per_stage - 1)]
            self.decoder.append(nn.Sequential(ConvNormAct(d, 2 * skip, skip, k, ones), *convs))
        self.head = pointwise_conv(d, features[0], out_channels)
        # Auxiliary heads only exist when used, so every parameter is trained.
        self.aux_heads = nn.ModuleList(
            [pointwise_conv(d, features[i], out_channels) for i in range(n - 2, 0, -1)] if deep_supervision else []
        )

    @property
    def size_divisor(self) -> list[int]:
        """Per-axis factor every input size is padded up to."""
        return stride_product(self.strides, [1] * self.spatial_dims)

    def forward(self, x: torch.Tensor):
        spatial = x.shape[2:]
        check_spatial_dims(x, self.spatial_dims)
        x = self.stem(pad_to_multiple(x, self.size_divisor))
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        return decode(x, skips, self.upsamplers, self.decoder, self.aux_heads, self.head, spatial,
                      self.training and self.deep_supervision)
