"""Helpers shared by the networks."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, divisor: Sequence[int]) -> torch.Tensor:
    """Zero-pad the spatial dims of (B, C, *spatial) at the far end up to multiples of ``divisor``.

    Networks accept any input size this way; they crop their output back to the input size.
    """
    pad = []
    for size, div in zip(reversed(x.shape[2:]), reversed(divisor)):
        pad += [0, (-size) % div]
    return F.pad(x, pad) if any(pad) else x


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
