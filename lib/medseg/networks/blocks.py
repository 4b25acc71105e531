"""Helpers shared by the networks."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def pad_to_multiple(x: torch.Tensor, divisor: Sequence[int]) -> torch.Tensor:
    """Zero-pad the spatial dims of (B, C, *spatial) at the far end up to multiples of ``divisor``.

    Networks accept any input size this way; they crop their output back to the input size.
    """
    pad = []
    for size, div in zip(reversed(x.shape[2:]), reversed(divisor)):
        pad += [0, (-size) % div]
    return F.pad(x, pad) if any(pad) else x


class _PointwiseOnCpu:
    """A 1x1 convolution computed as one batched matrix product on the CPU.

    The segmentation heads are 1x1 convolutions from a few features to one map per
    class. On the CPU, oneDNN's convolution for them was several times slower than the
    same product as ``baddbmm``, and with 100+ labels the head was the slowest layer of
    a U-Net (the request-level before/after is the clinical-CT table in bench/README.md).
    Weights and state-dict keys are those of the convolution, so existing checkpoints
    load unchanged; other devices keep the conv.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        batch, out_ch = x.shape[0], self.out_channels
        weight = self.weight.reshape(out_ch, -1).expand(batch, out_ch, self.in_channels)
        bias = self.bias[None, :, None] if self.bias is not None else torch.zeros((), dtype=x.dtype)
        product = torch.baddbmm(bias, weight, x.reshape(batch, self.in_channels, -1))
        return product.reshape(batch, out_ch, *x.shape[2:])


class PointwiseConv3d(_PointwiseOnCpu, nn.Conv3d):
    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, 1, bias=bias)


class PointwiseConv2d(_PointwiseOnCpu, nn.Conv2d):
    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, 1, bias=bias)


def pointwise_conv(dims: int, in_channels: int, out_channels: int) -> nn.Module:
    """A 1x1 convolution (a segmentation head) of ``dims`` spatial dimensions."""
    return (PointwiseConv3d if dims == 3 else PointwiseConv2d)(in_channels, out_channels)


def stride_product(strides: Sequence[Sequence[int]], start: Sequence[int]) -> list[int]:
    """Per-axis product of all stage strides, times ``start`` (e.g. ones, or patch x window)."""
    div = list(start)
    for s in strides:
        div = [a * b for a, b in zip(div, s)]
    return div


def check_spatial_dims(x: torch.Tensor, spatial_dims: int) -> None:
    if x.ndim - 2 != spatial_dims:
        raise ValueError(f"expected {spatial_dims} spatial dims, got input of shape {tuple(x.shape)}")


def decode(x: torch.Tensor, skips: list[torch.Tensor], upsamplers, decoder, aux_heads, head, spatial,
           with_aux: bool):
    """U-Net decoder pass shared by networks whose coarser decoder stages have auxiliary heads.

    ``skips`` holds the encoder outputs above ``x`` (consumed from the end). Returns the
    full-resolution logits cropped to ``spatial``, or, with ``with_aux``, the list of
    deep-supervision outputs finest first.
    """
    aux = []
    for level, (up, stage) in enumerate(zip(upsamplers, decoder)):
        x = stage(torch.cat([up(x), skips.pop()], dim=1))
        if with_aux and level < len(aux_heads):
            aux.append(aux_heads[level](x))
    full = head(x)[(Ellipsis, *(slice(None, s) for s in spatial))]
    return [full] + aux[::-1] if with_aux else full
