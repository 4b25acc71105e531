"""nnFormer-style 3D transformer U-Net.

Design follows Zhou et al., "nnFormer: Volumetric Medical Image Segmentation via a
3D Transformer", IEEE TIP 32 (2023) (arXiv:2109.03201, "nnFormer: Interleaved
Transformer for Volumetric Segmentation"), section 3:

* convolutional embedding: stacked 3x3x3 convolutions (a strided one then a plain
  one per factor 2 of ``patch_size``, with GELU and LayerNorm) instead of a linear
  patch embedding, which keeps fine local detail in the tokens (section 3.1);
* encoder stages of local volume-based multi-head self-attention (LV-MSA):
  attention within non-overlapping 3D windows, every second block on windows
  shifted by half a window (SLV-MSA), Swin-style, each block pre-norm with a GELU MLP;
* convolutional downsampling between stages: LayerNorm then a strided 3x3x3
  convolution (the paper's "down-sampling layer", interleaved with attention);
* the bottleneck attends globally over the coarsest volume (GV-MSA; set
  ``global_bottleneck=False`` for LV-MSA there too);
* decoder stages upsample with a transposed convolution (kernel = stride) and
  replace the U-Net's concatenation by skip attention: in the first block of the
  stage the queries come from the upsampled decoder tokens, the keys and values
  from the encoder tokens of the same windows (section 3.3); the remaining blocks
  are (S)LV-MSA;
* a final transposed convolution with kernel = stride = ``patch_size`` expands to
  full resolution and gives the class logits; with deep supervision (as in the
  paper's nnU-Net-based training) the coarser decoder stages get one each too,
  so the outputs are at 1, 1/2, 1/4, ... of the padded input, finest first.

The window machinery (window partition, shifted-window masks, relative position
bias, Swin blocks) is shared with ``swin_unet``.

Shape contract: 3D only. Input ``(B, in_channels, D, H, W)``. Every local-attention
grid must tile into windows and the bottleneck grid must be whole, so the input is
padded up to ``size_divisor`` per axis (with the global bottleneck the lcm of
``patch_size * window_size * prod(strides[:-1])`` and ``patch_size * prod(strides)``;
64 at the defaults) and the output cropped back: the (first) output is always
``(B, out_channels, D, H, W)``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from medseg.networks.blocks import pad_to_multiple
from medseg.networks.swin_unet import (
    MLP_RATIO,
    Mlp,
    SwinStage,
    WindowAttention,
    as_tuple,
    attend_in_windows,
    init_transformer_weights,
    stage_config,
)


class LayerNorm3d(nn.LayerNorm):
    """LayerNorm over the channels of a channels-first ``(B, C, D, H, W)`` tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


def embedding_strides(patch_size: Sequence[int]) -> list[list[int]]:
    """Split a power-of-two patch size into per-conv strides of 2 (1 on axes already done)."""
    if any(p & (p - 1) for p in patch_size):
        raise ValueError(f"patch_size must be a power of two per axis for stride-2 embedding convs, got {patch_size}")
    n_steps = max(1, max(int(math.log2(p)) for p in patch_size))
    return [[2 if p >> step > 1 else 1 for p in patch_size] for step in range(n_steps)]


class ConvEmbedding(nn.Sequential):
    """Per factor 2: conv3 (stride 2) -> GELU -> LN -> conv3; GELU -> LN between steps, LN at the end."""

    def __init__(self, in_ch: int, dim: int, patch_size: Sequence[int]):
        steps = embedding_strides(patch_size)
        layers = []
        ch = in_ch
        for i, stride in enumerate(steps):
            last = i == len(steps) - 1
            out = dim if last else max(1, dim // 2)  # nnFormer widens to dim/2 first, then dim
            layers += [nn.Conv3d(ch, out, 3, stride=stride, padding=1), nn.GELU(), LayerNorm3d(out)]
            layers += [nn.Conv3d(out, out, 3, padding=1)]
            layers += [LayerNorm3d(out)] if last else [nn.GELU(), LayerNorm3d(out)]
            ch = out
        super().__init__(*layers)


class ConvDownsampling(nn.Sequential):
    """LayerNorm then a strided 3x3x3 convolution to the next width."""

    def __init__(self, in_dim: int, out_dim: int, stride: Sequence[int]):
        super().__init__(LayerNorm3d(in_dim), nn.Conv3d(in_dim, out_dim, 3, stride=stride, padding=1))


class SkipAttentionBlock(nn.Module):
    """Window cross-attention: queries from the decoder, keys/values from the encoder skip; then MLP."""

    def __init__(self, dim: int, heads: int, window: Sequence[int], mlp_ratio: float, position_bias: bool):
        super().__init__()
        self.window = tuple(window)
        # Decoder and encoder tokens come from different layers, so each gets its own norm.
        self.norm_query = nn.LayerNorm(dim)
        self.norm_skip = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window, position_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        no_shift = (0,) * (x.ndim - 2)
        x = x + attend_in_windows(self.attn, self.norm_query(x), self.window, no_shift, None, self.norm_skip(skip))
        return x + self.mlp(self.norm2(x))


class NnFormer(nn.Module):
    """nnFormer-style 3D segmentation transformer (see the module docstring).

    Args:
        spatial_dims: must be 3.
        in_channels: image channels.
        out_channels: number of classes including background.
        features: token width per stage (the paper uses 96 or 192 at stage 0, doubling).
        strides: per stage, per axis downsampling stride (stage 0 all ones, others
            2 by default; e.g. ``[1, 2, 2]`` for thick-slice volumes, as the paper's
            Synapse setting).
        deep_supervision: return one output per decoder stage in training mode.
        patch_size: embedding downsampling per axis, a power of two (int or per axis).
        window_size: LV-MSA window in tokens (int or per axis).
        depths: transformer blocks per stage, encoder and decoder alike; default 2.
        num_heads: attention heads per stage; default ``3 * 2**i``.
        mlp_ratio: hidden width of the MLPs relative to the token width.
        global_bottleneck: GV-MSA (whole-volume attention) in the bottleneck.
        relative_position_bias: add a learned relative position bias in windows.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (48, 96, 192, 384),
        strides: Sequence[Sequence[int]] | None = None,
        deep_supervision: bool = True,
        patch_size: int | Sequence[int] = 4,
        window_size: int | Sequence[int] = 4,
        depths: Sequence[int] | None = None,
        num_heads: Sequence[int] | None = None,
        mlp_ratio: float = MLP_RATIO,
        global_bottleneck: bool = True,
        relative_position_bias: bool = True,
    ):
        super().__init__()
        if spatial_dims != 3:
            raise ValueError(f"nnFormer is 3D only (spatial_dims=3), got {spatial_dims}; use SwinUNet for 2D")
        depths, heads, strides = stage_config(features, depths, num_heads, strides, spatial_dims)
        self.spatial_dims = spatial_dims
        self.deep_supervision = deep_supervision
        self.patch_size = as_tuple(patch_size, 3, "patch_size")
        self.window_size = as_tuple(window_size, 3, "window_size")
        self.strides = strides
        self.global_bottleneck = global_bottleneck
        n = len(features)
        window, bias = self.window_size, relative_position_bias

        self.embed = ConvEmbedding(in_channels, features[0], self.patch_size)
        self.downsamplers = nn.ModuleList(
            [ConvDownsampling(features[i - 1], features[i], strides[i]) for i in range(1, n)]
        )
        self.encoder = nn.ModuleList()
        for i in range(n):
            stage_window = None if (i == n - 1 and global_bottleneck) else window
            self.encoder.append(SwinStage(features[i], depths[i], heads[i], stage_window, mlp_ratio, bias))

        self.upsamplers = nn.ModuleList()
        self.skip_attention = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in range(n - 2, -1, -1):
            up = strides[i + 1]
            self.upsamplers.append(nn.ConvTranspose3d(features[i + 1], features[i], up, stride=up))
            self.skip_attention.append(SkipAttentionBlock(features[i], heads[i], window, mlp_ratio, bias))
            # Block 0 of the stage is the skip attention, so the rest starts on shifted windows.
            rest = SwinStage(features[i], depths[i] - 1, heads[i], window, mlp_ratio, bias, first_shifted=True)
            self.decoder.append(rest)
        self.decoder_norm = nn.LayerNorm(features[0])
        patch = self.patch_size
        self.final_expand = nn.ConvTranspose3d(features[0], out_channels, patch, stride=patch)
        # Auxiliary heads only exist when used, so every parameter is trained.
        self.aux_heads = nn.ModuleList(
            [nn.ConvTranspose3d(features[i], out_channels, patch, stride=patch) for i in range(n - 2, 0, -1)]
            if deep_supervision else []
        )
        self.apply(init_transformer_weights)

    @property
    def size_divisor(self) -> list[int]:
        """Per-axis factor every input size is padded up to (see the module docstring)."""
        divisors = []
        for axis in range(3):
            grid = self.patch_size[axis]  # input voxels per token at the current stage
            div = 1
            for i, s in enumerate(self.strides):
                grid *= s[axis]
                local = not (i == len(self.strides) - 1 and self.global_bottleneck)
                div = math.lcm(div, grid * self.window_size[axis] if local else grid)
            divisors.append(div)
        return divisors

    def forward(self, x: torch.Tensor):
        spatial = x.shape[2:]
        if len(spatial) != 3:
            raise ValueError(f"expected 3 spatial dims, got input of shape {tuple(x.shape)}")
        x = self.embed(pad_to_multiple(x, self.size_divisor)).movedim(1, -1)  # channels-last tokens

        skips = []
        for i, stage in enumerate(self.encoder):
            if i > 0:
                x = self.downsamplers[i - 1](x.movedim(-1, 1)).movedim(1, -1)
            x = stage(x)
            skips.append(x)
        x = skips.pop()

        with_aux = self.training and self.deep_supervision
        aux = []
        for level, (up, skip_attn, stage) in enumerate(zip(self.upsamplers, self.skip_attention, self.decoder)):
            x = up(x.movedim(-1, 1)).movedim(1, -1)
            x = stage(skip_attn(x, skips.pop()))
            if with_aux and level < len(self.aux_heads):
                aux.append(self.aux_heads[level](x.movedim(-1, 1)))

        full = self.final_expand(self.decoder_norm(x).movedim(-1, 1))
        full = full[(Ellipsis, *(slice(None, s) for s in spatial))]
        if with_aux:
            return [full] + aux[::-1]  # finest first
        return full
