"""The table of models the app offers: one row per model, read by the app and the tools.

A row says what the model is (network factory, dimensions, objective) and the
planning defaults it is trained with; everything data-dependent comes from the plan.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from medseg.networks.nnformer import NnFormer
from medseg.networks.resenc_unet import ResEncUNet
from medseg.networks.slicewise import SliceWise
from medseg.networks.swin_unet import SwinUNet
from medseg.networks.unet import UNet
from medseg.networks.vnet import VNet
from medseg.pipeline.brain_extraction import EXTRACTOR_WEIGHTS, expects_extracted_brain
from medseg.pipeline.plan import Plan
from medseg.pipeline.predictor import Predictor

# Transformer widths are not derived from the plan's conv features: a token width
# per stage that keeps the model small enough to train on a CPU in the tests.
TRANSFORMER_FEATURES = (24, 48, 96, 192)


def build_unet(plan: Plan) -> nn.Module:
    return UNet(plan.spatial_dims, 1, plan.n_classes, features=plan.features,
                kernel_sizes=plan.kernel_sizes, strides=plan.strides, deep_supervision=True)


def build_cascade_fullres(plan: Plan) -> nn.Module:
    # The second stage reads the image plus the first stage's one-hot foreground.
    return UNet(3, 1 + plan.previous_stage_channels, plan.n_classes, features=plan.features,
                kernel_sizes=plan.kernel_sizes, strides=plan.strides, deep_supervision=True)


def build_unet2d(plan: Plan) -> nn.Module:
    net = UNet(2, 1, plan.n_classes, features=plan.features, kernel_sizes=plan.kernel_sizes,
               strides=plan.strides, deep_supervision=True)
    return SliceWise(net, plan.slice_axis)


def build_resenc_unet(plan: Plan) -> nn.Module:
    # nnU-Net ResEnc presets grow the blocks per stage (1, 3, 4, 6, 6, ...).
    blocks = [1, 3, 4, 6, 6, 6, 6][: len(plan.features)]
    return ResEncUNet(plan.spatial_dims, 1, plan.n_classes, features=plan.features, strides=plan.strides,
                      kernel_sizes=plan.kernel_sizes, blocks_per_stage=blocks, deep_supervision=True)


def build_vnet(plan: Plan) -> nn.Module:
    return VNet(plan.spatial_dims, 1, plan.n_classes, features=plan.features, strides=plan.strides)


def _transformer_strides(plan: Plan, n: int) -> list[list[int]]:
    return [list(s) for s in plan.strides[:n]] + [[2] * plan.spatial_dims] * max(0, n - len(plan.strides))


def build_swin_unet(plan: Plan) -> nn.Module:
    n = len(TRANSFORMER_FEATURES)
    return SwinUNet(plan.spatial_dims, 1, plan.n_classes, features=TRANSFORMER_FEATURES,
                    strides=_transformer_strides(plan, n), patch_size=2, window_size=4)


# The paper's embedding stride is chosen per dataset ([1,4,4] on ACDC, [2,4,4] on Synapse,
# 4 on brain tumours). Stride 4 at our 1.5 mm plans makes 6 mm tokens, coarser than the
# 2-3 mm cortex: after 1200 CPU iterations white matter reached Dice 0.57 only
# (2026-11-29). Stride 2 keeps 3 mm tokens for the thin structures we segment.
NNFORMER_EMBEDDING_STRIDE = 2


def build_nnformer(plan: Plan) -> nn.Module:
    n = len(TRANSFORMER_FEATURES)
    return NnFormer(3, 1, plan.n_classes, features=TRANSFORMER_FEATURES, strides=_transformer_strides(plan, n),
                    patch_size=NNFORMER_EMBEDDING_STRIDE, window_size=4, deep_supervision=True)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    spatial_dims: int
    build: Callable[[Plan], nn.Module]
    dice_only: bool = False  # V-Net style objective: soft Dice without cross-entropy
    planning: dict = field(default_factory=dict)  # keyword defaults for plan.make_plan
    training: dict = field(default_factory=dict)  # TrainConfig defaults that differ for this model
    cascade: bool = False  # two stages: the checkpoint holds the first stage under "lowres"

    def network(self, checkpoint: dict) -> nn.Module:
        network = self.build(Plan.from_dict(checkpoint["plan"]))
        network.load_state_dict({k: v.float() for k, v in checkpoint["state_dict"].items()})
        return network

    def predictor(self, checkpoint: dict, device: torch.device) -> Predictor:
        """The whole-volume predictor for a checkpoint of this model (both stages for a cascade)."""
        plan = Plan.from_dict(checkpoint["plan"])
        post = checkpoint.get("postprocessing") or {}
        lcc, sides = post.get("largest_component_labels", []), post.get("side_pairs", [])
        if not self.cascade:
            predictor = Predictor(self.network(checkpoint), plan, device, lcc, sides)
        else:
            from medseg.pipeline.cascade import CascadePredictor

            first = MODELS["cascade_lowres"].predictor(checkpoint["lowres"], device)
            predictor = CascadePredictor(first, self.network(checkpoint), plan, device, lcc, sides)
        if expects_extracted_brain(checkpoint) and EXTRACTOR_WEIGHTS.exists():
            predictor.brain_extractor = shared_brain_extractor(device)
        return predictor


_BRAIN_EXTRACTORS: dict[str, Predictor] = {}


def shared_brain_extractor(device: torch.device) -> Predictor:
    """One extractor per device for every model that needs it, so that an ensemble of them finds
    the brain once per image (``brain_extraction.brain_mask`` remembers the last image)."""
    key = str(device)
    if key not in _BRAIN_EXTRACTORS:
        from medseg.checkpoint import load_checkpoint

        _BRAIN_EXTRACTORS[key] = MODELS["unet3d"].predictor(load_checkpoint(EXTRACTOR_WEIGHTS), device)
    return _BRAIN_EXTRACTORS[key]


MODELS: dict[str, ModelSpec] = {
    "unet3d": ModelSpec(
        name="unet3d",
        description="nnU-Net-style 3D U-Net (conv-InstanceNorm-LeakyReLU, strided conv down, "
        "transposed conv up, deep supervision)",
        spatial_dims=3,
        build=build_unet,
    ),
    "unet2d": ModelSpec(
        name="unet2d",
        description="nnU-Net-style 2D U-Net run slice by slice along the coarsest axis (for anisotropic volumes)",
        spatial_dims=2,
        build=build_unet2d,
    ),
    "cascade_lowres": ModelSpec(
        name="cascade_lowres",
        description="The cascade's first stage alone: the 3D U-Net on a downsampled volume that one patch covers",
        spatial_dims=3,
        build=build_unet,
        planning={"stage": "lowres"},
    ),
    "cascade": ModelSpec(
        name="cascade",
        description="Two-stage cascade: low-resolution 3D U-Net, whose upsampled one-hot prediction is extra "
        "input to a full-resolution 3D U-Net",
        spatial_dims=3,
        build=build_cascade_fullres,
        planning={"stage": "cascade_fullres"},
        cascade=True,
    ),
    "resenc_unet": ModelSpec(
        name="resenc_unet",
        description="U-Net with a residual encoder (ResNet basic blocks, 1-3-4-6 per stage) and a plain decoder",
        spatial_dims=3,
        build=build_resenc_unet,
    ),
    "vnet": ModelSpec(
        name="vnet",
        description="V-Net: residual stages of 5x5x5 convolutions with PReLU, strided-conv down, "
        "transposed-conv up, soft Dice objective",
        spatial_dims=3,
        build=build_vnet,
        dice_only=True,
    ),
    "swin_unet": ModelSpec(
        name="swin_unet",
        description="Swin-Unet: pure-transformer U shape (window and shifted-window attention, patch merging "
        "down, patch expanding up)",
        spatial_dims=3,
        build=build_swin_unet,
        planning={"patch_divisor": 64},
        # With nnU-Net's SGD recipe, 300 CPU iterations left nnFormer at white-matter Dice 0
        # (scripts/train_shipped_model.py, 2026-11-29); AdamW converges faster at short budgets.
        training={"optimizer": "adamw", "learning_rate": 3e-4, "weight_decay": 1e-2},
    ),
    "nnformer": ModelSpec(
        name="nnformer",
        description="nnFormer-style 3D transformer: conv patch embedding, local volume attention, "
        "skip attention in the decoder",
        spatial_dims=3,
        build=build_nnformer,
        planning={"patch_divisor": 32},
        training={"optimizer": "adamw", "learning_rate": 3e-4, "weight_decay": 1e-2},
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
