"""The table of models the app offers: one row per model, read by the app and the tools.

A row says what the model is (network factory, dimensions, objective) and the
planning defaults it is trained with; everything data-dependent comes from the plan.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from medseg.networks.unet import UNet
from medseg.pipeline.plan import Plan


def build_unet(plan: Plan, deep_supervision: bool = True) -> nn.Module:
    return UNet(
        spatial_dims=plan.spatial_dims,
        in_channels=1,
        out_channels=plan.n_classes,
        features=plan.features,
        kernel_sizes=plan.kernel_sizes,
        strides=plan.strides,
        deep_supervision=deep_supervision,
    )


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    spatial_dims: int
    build: Callable[[Plan], nn.Module]
    dice_only: bool = False  # V-Net style objective: soft Dice without cross-entropy
    planning: dict = field(default_factory=dict)  # keyword defaults for plan.make_plan


MODELS: dict[str, ModelSpec] = {
    "unet3d": ModelSpec(
        name="unet3d",
        description="nnU-Net-style 3D U-Net (conv-InstanceNorm-LeakyReLU, strided conv down, "
        "transposed conv up, deep supervision)",
        spatial_dims=3,
        build=build_unet,
    ),
}


def select_models(names: str) -> list[ModelSpec]:
    """Parse the ``models`` conf value: a comma list of names, or ``all``."""
    from medseg.errors import ConfigError

    names = (names or "all").strip()
    if names == "all":
        return list(MODELS.values())
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in MODELS]
    if unknown:
        raise ConfigError(f"unknown model(s) {unknown}; available: {', '.join(MODELS)} or 'all'")
    return [MODELS[n] for n in chosen]
