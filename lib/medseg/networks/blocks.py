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
