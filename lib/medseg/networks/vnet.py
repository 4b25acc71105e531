"""V-Net in 2D or 3D.

Design follows Milletari, Navab and Ahmadi, "V-Net: Fully Convolutional Neural
Networks for Volumetric Medical Image Segmentation", 3DV 2016 (arXiv:1606.04797),
section 2 and figure 2:

* every resolution stage learns a residual function: one to three 5x5x5 convolutions
  (5x5 in 2D) with PReLU, and the stage input added element-wise to the output of
  its last convolution;
* encoder stages have 1, 2, 3, 3 convolutions, the bottom stage 3 and the decoder
  stages 3, 3, 2, 1 (coarse to fine), i.e. ``min(level + 1, 3)`` at every level;
* downsampling is a 2x2x2 convolution with stride 2 that doubles the channels (no
  pooling layers); upsampling is a 2x2x2 transposed convolution with stride 2;
* skip connections concatenate the encoder features to the upsampled ones, so a
  decoder stage works with twice the channels of the encoder stage at its level;
* a 1x1x1 convolution gives the class logits (the paper's softmax is the loss's job).

The paper uses no normalization layers. ``normalize=True`` (the default) puts an
InstanceNorm before every PReLU, as in MedSeg's other networks: stacks of 5x5x5
convolutions train slowly without it at the batch sizes of 2 the planner picks.
``normalize=False`` gives the network of the paper.

Shape contract: input ``(B, in_channels, *spatial)`` with ``len(spatial) ==
spatial_dims``. Any spatial size is accepted: the input is padded up to a multiple
of the total stride per axis and the output cropped back, so the (first) output is
always ``(B, out_channels, *spatial)``. With ``deep_supervision`` (not in the paper)
training mode returns one output per decoder level, finest first, as UNet does.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from medseg.networks.blocks import check_spatial_dims, decode, pad_to_multiple, pointwise_conv, stride_product

from medseg.networks.unet import _conv, _norm, _transposed_conv, default_topology


def _conv_unit(dims: int, in_ch: int, out_ch: int, kernel, stride, normalize: bool, act: bool) -> nn.Sequential:
    """conv -> [InstanceNorm] -> [PReLU]; kernels of any size keep the size at stride 1."""
    kernel = [kernel] * dims if isinstance(kernel, int) else list(kernel)
    padding = [k // 2 if s == 1 else 0 for k, s in zip(kernel, stride)]
    layers = [_conv(dims)(in_ch, out_ch, kernel, stride=stride, padding=padding)]
    if normalize:
        layers.append(_norm(dims)(out_ch, affine=True))
    if act:
        layers.append(nn.PReLU(out_ch))
    return nn.Sequential(*layers)


class ResidualStage(nn.Module):
    """``n_convs`` convolutions at constant width, the input added before the last PReLU.

    Adding before the last activation (as ResNet does) keeps the output of a stage
    the PReLU of a sum, so the next stage sees the same kind of signal whatever the
    number of convolutions.
    """

    def __init__(self, dims: int, channels: int, n_convs: int, kernel: int, normalize: bool):
        super().__init__()
        ones = [1] * dims
        self.convs = nn.Sequential(*[
            _conv_unit(dims, channels, channels, kernel, ones, normalize, act=i < n_convs - 1) for i in range(n_convs)
        ])
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.convs(x) + x)


class InputStage(nn.Module):
    """First stage: in_channels -> features[0], with the input as the residual.

    The paper adds the single-channel input replicated to all 16 channels; that
    generalizes to replicating whenever the width is a multiple of the input
    channels, and to a 1x1 projection otherwise.
    """

    def __init__(self, dims: int, in_ch: int, out_ch: int, n_convs: int, kernel: int, normalize: bool):
        super().__init__()
        ones = [1] * dims
        widths = [in_ch] + [out_ch] * n_convs
        self.convs = nn.Sequential(
            *[_conv_unit(dims, widths[i], out_ch, kernel, ones, normalize, act=i < n_convs - 1) for i in range(n_convs)]
        )
        self.repeats = out_ch // in_ch if out_ch % in_ch == 0 else 0
        self.project = None if self.repeats else _conv(dims)(in_ch, out_ch, 1)
        self.act = nn.PReLU(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x.repeat_interleave(self.repeats, dim=1) if self.repeats else self.project(x)
        return self.act(self.convs(x) + residual)


class VNet(nn.Module):
    """V-Net with residual 5x5x5 stages, strided-conv downsampling and skip concatenation.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: number of classes including background.
        features: channels per encoder stage, the paper's ``(16, 32, 64, 128, 256)``.
        strides: per stage, per axis downsampling stride (stage 0 all ones); the
            down convolution's kernel equals its stride. Default 2 below stage 0.
        deep_supervision: return one output per decoder level in training mode.
        kernel_size: odd kernel of the stage convolutions, 5 in the paper.
        convs_per_stage: convolutions per level, used by the encoder and decoder
            stage of that level; default ``min(level + 1, 3)`` as in the paper.
        normalize: InstanceNorm before every PReLU (see the module docstring).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (16, 32, 64, 128, 256),
        strides: Sequence[Sequence[int]] | None = None,
        deep_supervision: bool = False,
        kernel_size: int = 5,
        convs_per_stage: Sequence[int] | None = None,
        normalize: bool = True,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        n = len(features)
        if n < 2:
            raise ValueError("a V-Net needs at least two stages")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd so convolutions keep the size, got {kernel_size}")
        strides = [list(s) for s in (strides or default_topology(spatial_dims, n)[1])]
        convs = list(convs_per_stage or [min(i + 1, 3) for i in range(n)])
        if len(strides) != n or len(convs) != n:
            raise ValueError("strides and convs_per_stage need one entry per stage")
        if any(len(s) != spatial_dims or min(s) < 1 for s in strides):
            raise ValueError(f"each stride needs {spatial_dims} positive entries")
        if any(s != 1 for s in strides[0]):
            raise ValueError("the first stage must not downsample")
        if min(convs) < 1 or min(features) < 1:
            raise ValueError("every stage needs at least one convolution and one channel")
        self.spatial_dims = spatial_dims
        self.deep_supervision = deep_supervision
        self.strides = strides
        d = spatial_dims

        self.input_stage = InputStage(d, in_channels, features[0], convs[0], kernel_size, normalize)
        self.downsamplers = nn.ModuleList()
        self.encoder = nn.ModuleList()
        for i in range(1, n):
            # Kernel = stride: each input voxel feeds exactly one output voxel, as in the paper's 2x2x2/2 conv.
            down = _conv_unit(d, features[i - 1], features[i], strides[i], strides[i], normalize, act=True)
            self.downsamplers.append(down)
            self.encoder.append(ResidualStage(d, features[i], convs[i], kernel_size, normalize))

        self.upsamplers = nn.ModuleList()
        self.decoder = nn.ModuleList()
        below = features[-1]
        for i in range(n - 2, -1, -1):
            up = [_transposed_conv(d)(below, features[i], strides[i + 1], stride=strides[i + 1])]
            up += [_norm(d)(features[i], affine=True)] if normalize else []
            self.upsamplers.append(nn.Sequential(*up, nn.PReLU(features[i])))
            # The concatenation doubles the width, and the decoder stage keeps it.
            self.decoder.append(ResidualStage(d, 2 * features[i], convs[i], kernel_size, normalize))
            below = 2 * features[i]
        self.head = pointwise_conv(d, 2 * features[0], out_channels)
        # Auxiliary heads only exist when used, so every parameter is trained.
        self.aux_heads = nn.ModuleList(
            [pointwise_conv(d, 2 * features[i], out_channels) for i in range(n - 2, 0, -1)] if deep_supervision else []
        )

    @property
    def size_divisor(self) -> list[int]:
        """Per-axis factor every input size is padded up to."""
        return stride_product(self.strides, [1] * self.spatial_dims)

    def forward(self, x: torch.Tensor):
        spatial = x.shape[2:]
        check_spatial_dims(x, self.spatial_dims)
        x = self.input_stage(pad_to_multiple(x, self.size_divisor))
        skips = [x]
        for down, stage in zip(self.downsamplers, self.encoder):
            x = stage(down(x))
            skips.append(x)
        x = skips.pop()
        return decode(x, skips, self.upsamplers, self.decoder, self.aux_heads, self.head, spatial,
                      self.training and self.deep_supervision)
