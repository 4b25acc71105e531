"""Swin-Unet: a pure-transformer U-Net in 2D or 3D.

Design follows Cao et al., "Swin-Unet: Unet-like Pure Transformer for Medical
Image Segmentation", ECCV 2022 workshops (arXiv:2105.05537), section 3, built from
the blocks of Liu et al., "Swin Transformer: Hierarchical Vision Transformer using
Shifted Windows", ICCV 2021 (arXiv:2103.14030), section 3.2:

* patch partition + linear embedding: non-overlapping ``patch_size`` patches are
  flattened and projected to ``features[0]`` channels (then LayerNorm);
* every stage is ``depths[i]`` Swin blocks, pre-norm, alternating window
  multi-head self-attention (W-MSA) and shifted-window attention (SW-MSA, windows
  moved by half a window with a cyclic roll, and an attention mask so that tokens
  rolled in from the opposite border do not attend across it), each followed by a
  2-layer GELU MLP of ratio 4; a learned relative position bias per head is added
  to the attention logits (optional);
* patch merging: the 2x2(x2) neighbours are concatenated, normalized and linearly
  projected to the next width; patch expanding is the inverse (linear projection,
  then the channels are rearranged into a 2x finer grid and normalized);
* the decoder mirrors the encoder: expand, concatenate the encoder stage output
  at that resolution, a linear layer back to the stage width, Swin blocks;
* a final patch expanding by ``patch_size`` returns to full resolution and a
  linear layer (a 1x1 convolution) gives the class logits.

The paper works in 2D with 224^2 inputs, patch 4 and window 7. For 3D volumes the
defaults here are patch 2 and window 4 so that the padding granularity stays at
64 voxels (``patch * window * 2^(stages-1)``).

Shape contract: input ``(B, in_channels, *spatial)`` with ``len(spatial) ==
spatial_dims``. Every stage's token grid must tile into windows, so the input is
padded up to a multiple of ``patch_size * window_size * prod(strides)`` per axis
(``size_divisor``) and the output cropped back: the (first) output is always
``(B, out_channels, *spatial)``. With ``deep_supervision`` (not in the paper)
training mode also returns one output per coarser decoder stage, each expanded by
``patch_size`` (so at 1/2, 1/4, ... of the padded input), finest first.

Tensors inside the transformer are channels-last, ``(B, *grid, C)``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from medseg.networks.blocks import pad_to_multiple, stride_product

MLP_RATIO = 4.0  # Swin Transformer, section 3.1
INIT_STD = 0.02  # Swin Transformer's truncated-normal init of linear layers and bias tables


def as_tuple(value: int | Sequence[int], dims: int, name: str) -> tuple[int, ...]:
    """An int or a per-axis sequence of positive ints, as a ``dims``-tuple."""
    values = (value,) * dims if isinstance(value, int) else tuple(value)
    if len(values) != dims or any(not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{name} must be a positive int or {dims} positive ints, got {value!r}")
    return values


# --- grid rearrangements (channels-last, any number of spatial dims) -------------


def split_blocks(x: torch.Tensor, block: Sequence[int]) -> torch.Tensor:
    """``(B, *S, C) -> (B, *(S / block), *block, C)``: the grid of blocks, then inside a block."""
    b, *spatial, c = x.shape
    d = len(spatial)
    shape = [b]
    for s, k in zip(spatial, block):
        shape += [s // k, k]
    perm = [0] + [1 + 2 * a for a in range(d)] + [2 + 2 * a for a in range(d)] + [2 * d + 1]
    return x.reshape(*shape, c).permute(perm)


def merge_blocks(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`split_blocks`: ``(B, *G, *block, C) -> (B, *(G * block), C)``."""
    d = (x.ndim - 2) // 2
    grid, block = x.shape[1 : 1 + d], x.shape[1 + d : 1 + 2 * d]
    perm = [0] + [i for a in range(d) for i in (1 + a, 1 + d + a)] + [2 * d + 1]
    return x.permute(perm).reshape(x.shape[0], *[g * k for g, k in zip(grid, block)], x.shape[-1])


def space_to_depth(x: torch.Tensor, factor: Sequence[int]) -> torch.Tensor:
    """``(B, *S, C) -> (B, *(S / f), prod(f) * C)``: each f-block becomes one token."""
    blocks = split_blocks(x, factor)
    d = len(factor)
    return blocks.reshape(*blocks.shape[: 1 + d], -1)


def depth_to_space(x: torch.Tensor, factor: Sequence[int]) -> torch.Tensor:
    """``(B, *S, prod(f) * C) -> (B, *(S * f), C)``, the inverse of :func:`space_to_depth`."""
    return merge_blocks(x.reshape(*x.shape[:-1], *factor, x.shape[-1] // math.prod(factor)))


def window_partition(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """``(B, *S, C) -> (B, n_windows, prod(window), C)``."""
    blocks = split_blocks(x, window)
    return blocks.reshape(x.shape[0], -1, math.prod(window), x.shape[-1])


def window_reverse(windows: torch.Tensor, window: Sequence[int], spatial: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`."""
    grid = [s // w for s, w in zip(spatial, window)]
    return merge_blocks(windows.reshape(windows.shape[0], *grid, *window, windows.shape[-1]))


def shifted_window_mask(spatial: Sequence[int], window: Sequence[int], shift: Sequence[int], device=None):
    """Boolean ``(n_windows, N, N)`` mask, True where two tokens of a rolled window must not attend.

    After rolling by ``-shift``, the last window along an axis holds tokens from
    both borders of the image. Each axis is cut into the regions that were
    contiguous before the roll (Swin Transformer, figure 4); tokens attend only
    within their region. ``None`` when nothing is shifted.
    """
    if not any(shift):
        return None
    region = torch.zeros(tuple(spatial), dtype=torch.long, device=device)
    for axis, (s, w, sh) in enumerate(zip(spatial, window, shift)):
        if sh == 0:
            continue
        ids = torch.zeros(s, dtype=torch.long, device=device)
        ids[s - w : s - sh] = 1
        ids[s - sh :] = 2
        shape = [1] * len(spatial)
        shape[axis] = s
        region = region * 3 + ids.view(shape)
    labels = window_partition(region[None, ..., None], window)[0, ..., 0]  # (n_windows, N)
    return labels[:, :, None] != labels[:, None, :]


def relative_position_index(window: Sequence[int]) -> torch.Tensor:
    """``(N, N)`` index into a table of ``prod(2w - 1)`` relative offsets (Swin, section 3.2)."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij")).flatten(1)  # (d, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (d, N, N), each in [-(w-1), w-1]
    index = torch.zeros(rel.shape[1:], dtype=torch.long)
    for axis, w in enumerate(window):
        index = index * (2 * w - 1) + rel[axis] + (w - 1)
    return index


# --- attention blocks ---------------------------------------------------------------


class WindowAttention(nn.Module):
    """Multi-head attention within windows, queries from ``x`` and keys/values from ``context``.

    Without ``context`` it is self-attention (W-MSA); with it, cross-attention between
    the tokens at the same positions of two grids (nnFormer's skip attention).
    ``window=None`` means one window per grid, without position bias.
    """

    def __init__(self, dim: int, heads: int, window: Sequence[int] | None, position_bias: bool = True):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = None
        if window is not None and position_bias:
            self.bias_table = nn.Parameter(torch.zeros(math.prod(2 * w - 1 for w in window), heads))
            nn.init.trunc_normal_(self.bias_table, std=INIT_STD)
            # Derived from the window alone: not part of the state dict.
            self.register_buffer("bias_index", relative_position_index(window), persistent=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        """x, context: ``(B, n_windows, N, C)``; mask: ``(n_windows, N, N)`` bool, True = blocked."""
        b, nw, n, c = x.shape
        heads = self.heads
        q = self.q(x).view(b, nw, n, heads, c // heads).transpose(2, 3)
        k, v = self.kv(x if context is None else context).view(b, nw, n, 2, heads, c // heads).permute(3, 0, 1, 4, 2, 5)
        # Plain softmax attention: windows are small (N = 64 tokens for 4^3), and a fused
        # kernel with an additive mask checks for fully masked rows on every call.
        logits = (q * self.scale) @ k.transpose(-2, -1)  # (B, nW, heads, N, N)
        if self.bias_table is not None:
            logits = logits + self.bias_table[self.bias_index].permute(2, 0, 1)  # (heads, N, N)
        if mask is not None:
            # Every token sees itself, so no row is fully masked and softmax stays finite.
            logits = logits.masked_fill(mask[:, None], float("-inf"))
        out = logits.softmax(dim=-1) @ v  # (B, nW, heads, N, C/heads)
        return self.proj(out.transpose(2, 3).reshape(b, nw, n, c))


def attend_in_windows(attn: WindowAttention, x, window, shift, mask, context=None) -> torch.Tensor:
    """Run ``attn`` on the (shifted) windows of channels-last grids ``x`` (and ``context``)."""
    spatial = x.shape[1:-1]
    axes = tuple(range(1, 1 + len(spatial)))
    if any(shift):
        neg = tuple(-s for s in shift)
        x = torch.roll(x, neg, axes)
        context = None if context is None else torch.roll(context, neg, axes)
    out = attn(
        window_partition(x, window),
        None if context is None else window_partition(context, window),
        mask,
    )
    out = window_reverse(out, window, spatial)
    return torch.roll(out, tuple(shift), axes) if any(shift) else out


class Mlp(nn.Sequential):
    def __init__(self, dim: int, ratio: float):
        hidden = int(dim * ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class SwinBlock(nn.Module):
    """Pre-norm (shifted-)window self-attention and MLP, each with a residual connection."""

    def __init__(self, dim: int, heads: int, window: Sequence[int] | None, mlp_ratio: float, position_bias: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window, position_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, window, shift, mask) -> torch.Tensor:
        x = x + attend_in_windows(self.attn, self.norm1(x), window, shift, mask)
        return x + self.mlp(self.norm2(x))


class SwinStage(nn.Module):
    """``depth`` Swin blocks alternating plain and shifted windows (shifted first if ``first_shifted``).

    ``window=None`` attends over the whole grid (nnFormer's global volume attention).
    """

    def __init__(self, dim: int, depth: int, heads: int, window: Sequence[int] | None, mlp_ratio: float = MLP_RATIO,
                 position_bias: bool = True, first_shifted: bool = False):
        super().__init__()
        self.window = None if window is None else tuple(window)
        self.first_shifted = first_shifted
        self.blocks = nn.ModuleList([SwinBlock(dim, heads, window, mlp_ratio, position_bias) for _ in range(depth)])

    def geometry(self, spatial: Sequence[int], device) -> tuple[tuple[int, ...], tuple[int, ...], torch.Tensor | None]:
        """Window, shift and shifted-window mask for a grid, shared by all blocks of a stage."""
        if self.window is None:
            return tuple(spatial), (0,) * len(spatial), None
        # An axis that is one window wide has nothing to shift across (Swin does the same).
        shift = tuple(w // 2 if s > w else 0 for s, w in zip(spatial, self.window))
        return self.window, shift, shifted_window_mask(spatial, self.window, shift, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not len(self.blocks):
            return x
        window, shift, mask = self.geometry(x.shape[1:-1], x.device)
        no_shift = (0,) * len(shift)
        for i, block in enumerate(self.blocks):
            if (i % 2 == 1) != self.first_shifted:
                x = block(x, window, shift, mask)
            else:
                x = block(x, window, no_shift, None)
        return x


class PatchMerging(nn.Module):
    """Concatenate each ``factor`` block of tokens, LayerNorm, linear to ``out_dim``."""

    def __init__(self, in_dim: int, out_dim: int, factor: Sequence[int]):
        super().__init__()
        self.factor = tuple(factor)
        self.norm = nn.LayerNorm(math.prod(factor) * in_dim)
        self.reduction = nn.Linear(math.prod(factor) * in_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduction(self.norm(space_to_depth(x, self.factor)))


class PatchExpanding(nn.Module):
    """Linear to ``prod(factor) * out_dim`` channels, rearranged into a ``factor``-finer grid, LayerNorm."""

    def __init__(self, in_dim: int, out_dim: int, factor: Sequence[int]):
        super().__init__()
        self.factor = tuple(factor)
        self.expand = nn.Linear(in_dim, math.prod(factor) * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(depth_to_space(self.expand(x), self.factor))


def init_transformer_weights(module: nn.Module) -> None:
    """Swin Transformer's init: truncated normal linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def stage_config(features: Sequence[int], depths, num_heads, strides, dims: int):
    """Defaults and checks shared by the transformer U-Nets; returns depths, heads, strides."""
    n = len(features)
    if n < 2:
        raise ValueError("a U-shaped network needs at least two stages")
    depths = list(depths or [2] * n)
    heads = list(num_heads or [3 * 2**i for i in range(n)])  # Swin-T's 3, 6, 12, 24
    strides = [list(s) for s in (strides or [[1] * dims] + [[2] * dims] * (n - 1))]
    if len(depths) != n or len(heads) != n or len(strides) != n:
        raise ValueError("depths, num_heads and strides need one entry per stage")
    if min(depths) < 1 or min(heads) < 1:
        raise ValueError("every stage needs at least one block and one head")
    bad = [(f, h) for f, h in zip(features, heads) if f % h]
    if bad:
        raise ValueError(f"each stage width must be divisible by its number of heads, got (features, heads) {bad}")
    if any(len(s) != dims or min(s) < 1 for s in strides):
        raise ValueError(f"each stride needs {dims} positive entries")
    if any(s != 1 for s in strides[0]):
        raise ValueError("the first stage must not downsample")
    return depths, heads, strides


class SwinUNet(nn.Module):
    """Swin-Unet: Swin-Transformer encoder, bottleneck and decoder with skip connections.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: number of classes including background.
        features: token width per stage (the paper's C, 2C, 4C, 8C with C = 96).
        strides: per stage, per axis patch-merging factor (stage 0 all ones, the
            others 2 by default; e.g. ``[2, 2, 1]`` keeps a coarse axis).
        deep_supervision: also return coarser decoder outputs in training mode.
        patch_size: patch partition size (int or per axis).
        window_size: attention window in tokens (int or per axis).
        depths: Swin blocks per stage, encoder and decoder alike; default 2.
        num_heads: attention heads per stage; default ``3 * 2**i``.
        mlp_ratio: hidden width of the MLPs relative to the token width.
        relative_position_bias: add Swin's learned relative position bias.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (48, 96, 192, 384),
        strides: Sequence[Sequence[int]] | None = None,
        deep_supervision: bool = False,
        patch_size: int | Sequence[int] = 2,
        window_size: int | Sequence[int] = 4,
        depths: Sequence[int] | None = None,
        num_heads: Sequence[int] | None = None,
        mlp_ratio: float = MLP_RATIO,
        relative_position_bias: bool = True,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        depths, heads, strides = stage_config(features, depths, num_heads, strides, spatial_dims)
        self.spatial_dims = spatial_dims
        self.deep_supervision = deep_supervision
        self.patch_size = as_tuple(patch_size, spatial_dims, "patch_size")
        self.window_size = as_tuple(window_size, spatial_dims, "window_size")
        self.strides = strides
        n = len(features)

        def stage(i: int) -> SwinStage:
            return SwinStage(features[i], depths[i], heads[i], self.window_size, mlp_ratio, relative_position_bias)

        self.embed = nn.Linear(math.prod(self.patch_size) * in_channels, features[0])
        self.embed_norm = nn.LayerNorm(features[0])
        self.encoder = nn.ModuleList([stage(i) for i in range(n)])  # the last one is the bottleneck
        self.merges = nn.ModuleList([PatchMerging(features[i - 1], features[i], strides[i]) for i in range(1, n)])
        self.bottleneck_norm = nn.LayerNorm(features[-1])

        self.expands = nn.ModuleList()
        self.fuse = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in range(n - 2, -1, -1):
            self.expands.append(PatchExpanding(features[i + 1], features[i], strides[i + 1]))
            self.fuse.append(nn.Linear(2 * features[i], features[i]))
            self.decoder.append(stage(i))
        self.decoder_norm = nn.LayerNorm(features[0])
        self.final_expand = PatchExpanding(features[0], features[0], self.patch_size)
        self.head = nn.Linear(features[0], out_channels)
        # Coarser outputs: one linear layer to patch-expanded logits; only built when used.
        prod_patch = math.prod(self.patch_size)
        self.aux_heads = nn.ModuleList(
            [nn.Linear(features[i], prod_patch * out_channels) for i in range(n - 2, 0, -1)] if deep_supervision else []
        )
        self.apply(init_transformer_weights)

    @property
    def size_divisor(self) -> list[int]:
        """Per-axis factor every input size is padded up to: patch * window * prod(strides)."""
        return stride_product(self.strides, [p * w for p, w in zip(self.patch_size, self.window_size)])

    def forward(self, x: torch.Tensor):
        spatial = x.shape[2:]
        if len(spatial) != self.spatial_dims:
            raise ValueError(f"expected {self.spatial_dims} spatial dims, got input of shape {tuple(x.shape)}")
        x = pad_to_multiple(x, self.size_divisor).movedim(1, -1)
        x = self.embed_norm(self.embed(space_to_depth(x, self.patch_size)))

        skips = []
        for i, stage in enumerate(self.encoder):
            if i > 0:
                x = self.merges[i - 1](x)
            x = stage(x)
            skips.append(x)
        x = self.bottleneck_norm(skips.pop())

        with_aux = self.training and self.deep_supervision
        aux = []
        for level, (expand, fuse, stage) in enumerate(zip(self.expands, self.fuse, self.decoder)):
            x = stage(fuse(torch.cat([expand(x), skips.pop()], dim=-1)))
            if with_aux and level < len(self.aux_heads):
                logits = depth_to_space(self.aux_heads[level](x), self.patch_size)
                aux.append(logits.movedim(-1, 1))

        x = self.head(self.final_expand(self.decoder_norm(x))).movedim(-1, 1)
        full = x[(Ellipsis, *(slice(None, s) for s in spatial))]
        if with_aux:
            return [full] + aux[::-1]  # finest first
        return full
