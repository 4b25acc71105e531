"""Run a 2D network slice by slice on 3D input.

The 2D U-Net of nnU-Net segments a volume one slice at a time along its coarsest
axis; that is the right choice for anisotropic scans (through-plane spacing far
coarser than in-plane), where 3D kernels mix slices that are far apart.

Shape contract: input ``(B, C, *spatial3d)``; the slices along ``slice_axis``
(0, 1 or 2 of the spatial axes) are stacked into the batch, passed through the
2D network, and put back, so the output is ``(B, K, *spatial3d)`` (a list of such
tensors when the 2D network returns deep-supervision outputs).
"""
from __future__ import annotations

import torch
from torch import nn


class SliceWise(nn.Module):
    def __init__(self, network2d: nn.Module, slice_axis: int):
        super().__init__()
        if slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
        self.network = network2d
        self.slice_axis = slice_axis

    def forward(self, x: torch.Tensor):
        if x.ndim != 5:
            raise ValueError(f"expected (B, C, D, H, W) input, got shape {tuple(x.shape)}")
        axis = 2 + self.slice_axis
        b, n_slices = x.shape[0], x.shape[axis]
        slices = x.movedim(axis, 1)  # (B, S, C, h, w)
        out = self.network(slices.reshape(b * n_slices, *slices.shape[2:]))

        def restore(o: torch.Tensor) -> torch.Tensor:
            return o.reshape(b, n_slices, *o.shape[1:]).movedim(1, axis)

        return [restore(o) for o in out] if isinstance(out, list) else restore(out)
