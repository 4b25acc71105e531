"""Dataset fingerprint and the plan derived from it (nnU-Net's "experiment planning").

The plan is the single artifact that carries every data-dependent decision from
planning to preprocessing, training and inference. It is stored as JSON beside
the weights and inside each checkpoint, so a model is always run with the plan
it was trained with.

Rules follow Isensee et al., Nature Methods 2021, supplementary note 2, and the
nnU-Net v2 ``ExperimentPlanner``:
* target spacing = median spacing per axis; for anisotropic data (coarsest axis
  more than 3x the next one) the coarsest axis takes the 10th percentile instead;
* patch size starts from the median image shape (at target spacing) and shrinks
  its largest axis until the estimated GPU memory fits the budget;
* an axis is pooled only while it has at least 8 voxels and its spacing is within
  2x of the finest axis (so anisotropic axes are pooled later);
* CT: clip to foreground 0.5/99.5 percentiles, z-score with dataset foreground
  statistics; everything else: per-image z-score. The modality is the one most
  training images carry in their DICOM Modality tag (0008,0060) when they are
  DICOM series with CT or MR; otherwise the configured one (conf ``modality``);
* the low-resolution stage of the cascade coarsens the spacing in steps of 3%,
  on anisotropic data only the fine axes until they are within 2x of the coarse
  one (nnU-Net v2's 3d_lowres rule), and re-plans the patch at each step.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from medseg.pipeline.sides import mirror_axes_for

ANISOTROPY_RATIO = 3.0
MIN_AXIS_VOX_TO_POOL = 8
MAX_SPACING_RATIO_TO_POOL = 2.0
# Bytes per (voxel x feature channel) of a stage, counting stored activations of
# both conv blocks, norms and activations in encoder and decoder, forward and
# backward, in mixed precision. Calibrated so that nnU-Net's default 3D plan
# (6 stages, 32..320 features, 128^3 patch, batch 2) lands near its 8 GB target.
BYTES_PER_FEATURE_VOXEL = 28.0
# nnU-Net v2 adds a low-resolution configuration when the full-resolution patch holds
# less than 25% of the median image, and coarsens until it holds that much. Our cascade
# is offered on every dataset, so its first stage goes further: it coarsens until one
# patch holds the whole median image (global context is what the stage is for), but
# never beyond LOWRES_MAX_SPACING_FACTOR times the full-resolution spacing.
LOWRES_SPACING_STEP = 1.03
LOWRES_MIN_PATCH_COVERAGE = 1.0
LOWRES_MAX_SPACING_FACTOR = 4.0
STAGES = ("fullres", "lowres", "cascade_fullres")

# Plans fit the machine they train and serve on. nnU-Net's rules size a plan for a GPU's
# memory; on a CPU such a plan (patch 128^3, up to 320 features) does not finish one
# iteration in minutes and a clinical CT at its native 0.6 mm takes tens of minutes to
# segment. So on a CPU the plan gets a small network (8 to 64 features), a target spacing
# coarse enough that the median image holds at most 4 M voxels (fine axes coarsened first,
# as for the cascade's first stage), and a patch sized for iterations per minute rather
# than for memory: a CPU iteration costs about its activation volume, and a CPU budget is
# minutes. With the 0.25 GB budget the shipped brain models were planned with
# (scripts/train_shipped_model.py), the slicerio chest CT gets a 104x104x32 patch and 450
# iterations from scratch (over 20 minutes here) learn the lungs but no vertebra
# (bench/results/chest_ct_cpu_patch104x104x32.json); at 0.06 GB (64x64x20 there) an
# iteration is about 4x cheaper and 2000 of them, in 12 minutes, learn the spine too
# (bench/results/chest_ct_cpu.json).
# A user who wants more sets --conf gpu_memory_gb, which is then used as is.
CPU_ACTIVATION_BUDGET_GB = 0.06
CPU_PLANNING = {"gpu_memory_budget_gb": CPU_ACTIVATION_BUDGET_GB, "base_features": 8, "max_features": 64,
                "max_stages": 5, "max_median_voxels": 4_000_000, "planned_for": "cpu"}
GPU_DEFAULT_MEMORY_GB = 8.0


def machine_planning(device_type: str, gpu_memory_gb: float | None) -> dict:
    """``make_plan`` keywords for a training device ("cpu" or "cuda") and the configured budget (None: not set)."""
    if gpu_memory_gb is not None:
        return {"gpu_memory_budget_gb": float(gpu_memory_gb),
                "planned_for": "gpu" if device_type == "cuda" else "cpu (gpu_memory_gb set)"}
    if device_type == "cuda":
        return {"gpu_memory_budget_gb": GPU_DEFAULT_MEMORY_GB, "planned_for": "gpu"}
    return dict(CPU_PLANNING)


@dataclass
class CaseFingerprint:
    name: str
    spacing_mm: list[float]
    shape_after_crop_vox: list[int]
    foreground_samples: list[float] = field(default_factory=list, repr=False)
    modality: str | None = None  # DICOM Modality of the image ("CT", "MR", ...); None for NIfTI


@dataclass
class Plan:
    spatial_dims: int
    labels: dict[str, int]
    modality: str
    target_spacing_mm: list[float]
    median_shape_vox: list[int]
    patch_size_vox: list[int]
    batch_size: int
    features: list[int]
    kernel_sizes: list[list[int]]
    strides: list[list[int]]
    normalization: str  # "zscore_per_image" or "ct"
    ct_clip: list[float] | None = None
    ct_mean: float | None = None
    ct_std: float | None = None
    gpu_memory_budget_gb: float = 8.0
    estimated_memory_gb: float = 0.0
    # nnU-Net's rule: the patch holds under a quarter of the median image, so a low-resolution
    # first stage would add context. A recommendation only; the served models are in /info.
    cascade_recommended: bool = False
    n_training_cases: int = 0
    slice_axis: int | None = None  # 2D plans: the axis slices are taken along (patch size 1 there)
    # Fingerprint summary: foreground intensity statistics sampled from labeled voxels.
    foreground_intensity: dict | None = None
    # Cascade: "lowres" is the first stage; "cascade_fullres" takes the one-hot foreground
    # of the first stage's prediction as previous_stage_channels extra input channels.
    stage: str = "fullres"
    previous_stage_channels: int = 0
    previous_stage_spacing_mm: list[float] | None = None
    modality_source: str = "conf"  # "dicom": the training images' Modality tags decided; "conf": --conf modality
    planned_for: str = "gpu"  # the machine the plan was sized for: "gpu", "cpu" or "cpu (gpu_memory_gb set)"
    data_spacing_mm: list[float] | None = None  # the data's own target spacing, when the machine coarsened it
    # Axes mirroring may flip (augmentation and TTA); None: all. Arrays are in RAS order, so
    # axis 0 is left-right, which lateralized labels (left lung, right kidney) must keep, and
    # axis 2 is the level, which "cervical" / "lumbar" labels must keep (sides.mirror_axes_for).
    mirror_axes: list[int] | None = None

    @property
    def n_classes(self) -> int:
        return max(self.labels.values()) + 1

    def summary(self) -> dict:
        """What a user checks first: resolution, patch, network size, and the machine it was sized for."""
        return {"target_spacing_mm": self.target_spacing_mm, "data_spacing_mm": self.data_spacing_mm,
                "patch_size_vox": self.patch_size_vox, "batch_size": self.batch_size, "features": self.features,
                "normalization": self.normalization, "planned_for": self.planned_for,
                "estimated_memory_gb": self.estimated_memory_gb}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        d = dict(d)
        if "use_cascade" in d:  # plans written before the field said what it is
            d["cascade_recommended"] = d.pop("use_cascade")
        return cls(**d)

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        return cls.from_dict(json.loads(Path(path).read_text()))


def target_spacing(spacings: np.ndarray) -> list[float]:
    """Median spacing, with the 10th percentile on a strongly anisotropic coarsest axis."""
    spacings = np.asarray(spacings, dtype=float)
    target = np.median(spacings, axis=0)
    order = np.argsort(target)
    coarsest, next_coarsest = order[-1], order[-2]
    if target[coarsest] > ANISOTROPY_RATIO * target[next_coarsest]:
        target[coarsest] = np.percentile(spacings[:, coarsest], 10)
    return [float(x) for x in target]


def pooling_topology(patch: list[int], spacing: list[float], max_stages: int) -> tuple[list[list[int]], list[list[int]]]:
    """Per-stage strides and kernels for a patch, following nnU-Net's pooling rules.

    An axis is pooled at a stage while halving it leaves at least MIN_AXIS_VOX_TO_POOL
    voxels and its current spacing is within MAX_SPACING_RATIO_TO_POOL of the finest
    current spacing. Axes too coarse to
    pool also get kernel 1 (as in nnU-Net) until their spacing catches up.
    """
    dims = len(patch)
    size = list(patch)
    sp = list(spacing)
    strides = [[1] * dims]
    kernels = [[3 if sp[a] <= MAX_SPACING_RATIO_TO_POOL * min(sp) else 1 for a in range(dims)]]
    while len(strides) < max_stages:
        finest = min(sp)
        stride = [
            2 if size[a] // 2 >= MIN_AXIS_VOX_TO_POOL and sp[a] <= MAX_SPACING_RATIO_TO_POOL * finest else 1
            for a in range(dims)
        ]
        if not any(s == 2 for s in stride):
            break
        size = [s // st for s, st in zip(size, stride)]
        sp = [s * st for s, st in zip(sp, stride)]
        finest = min(sp)
        strides.append(stride)
        kernels.append([3 if sp[a] <= MAX_SPACING_RATIO_TO_POOL * finest else 1 for a in range(dims)])
    return kernels, strides


def features_per_stage(n_stages: int, base: int, cap: int) -> list[int]:
    return [min(base * 2**i, cap) for i in range(n_stages)]


def estimate_memory_bytes(patch: list[int], strides: list[list[int]], features: list[int], batch: int) -> float:
    vox = float(np.prod(patch))
    total = 0.0
    for st, f in zip(strides, features):
        vox /= float(np.prod(st))
        total += vox * f
    return BYTES_PER_FEATURE_VOXEL * total * batch


def _divisor(strides: list[list[int]]) -> list[int]:
    return [int(np.prod([s[a] for s in strides])) for a in range(len(strides[0]))]


def plan_patch_and_topology(
    median_shape: list[int],
    spacing: list[float],
    budget_bytes: float,
    base_features: int,
    max_features: int,
    max_stages: int,
    min_batch: int = 2,
):
    """Largest patch (aspect ~ 1/spacing, <= median shape) whose min_batch fits the budget."""
    # Start from 256 voxels along the finest axis, shaped by 1/spacing (as nnU-Net v2's
    # planner does) and clipped to the median image; then shrink until it fits.
    finest = min(spacing)
    patch = [min(int(m), int(round(256 * finest / s))) for m, s in zip(median_shape, spacing)]
    while True:
        kernels, strides = pooling_topology(patch, spacing, max_stages)
        div = _divisor(strides)
        patch = [max(d, int(math.ceil(p / d)) * d) for p, d in zip(patch, div)]
        features = features_per_stage(len(strides), base_features, max_features)
        mem = estimate_memory_bytes(patch, strides, features, min_batch)
        if mem <= budget_bytes or all(p <= 2 * d for p, d in zip(patch, div)):
            return patch, kernels, strides, features, mem
        # Shrink the axis that is largest in millimetres relative to the median image.
        ratios = [p * s for p, s in zip(patch, spacing)]
        axis = int(np.argmax(ratios))
        patch[axis] = max(div[axis], patch[axis] - div[axis])


def _shapes_at(cases: list[CaseFingerprint], spacing) -> np.ndarray:
    return np.array([[n * s / t for n, s, t in zip(c.shape_after_crop_vox, c.spacing_mm, spacing)] for c in cases])


def lowres_spacing(cases: list[CaseFingerprint], spacing: list[float], budget_bytes: float, base_features: int,
                   max_features: int, max_stages: int) -> list[float]:
    """Coarsest-needed spacing for the cascade's first stage (see LOWRES_MIN_PATCH_COVERAGE)."""
    full = np.asarray(spacing, dtype=float)
    sp = full.copy()
    while True:
        median = np.median(_shapes_at(cases, sp), axis=0)
        patch = plan_patch_and_topology([int(round(m)) for m in median], list(sp), budget_bytes, base_features,
                                        max_features, max_stages)[0]
        if np.prod(patch) >= LOWRES_MIN_PATCH_COVERAGE * np.prod(median):
            return [float(x) for x in sp]
        coarser = coarser_step(sp)
        if np.any(coarser > LOWRES_MAX_SPACING_FACTOR * full):
            return [float(x) for x in sp]
        sp = coarser


def coarser_step(spacing: np.ndarray) -> np.ndarray:
    """One 3% coarsening step; on anisotropic data only the fine axes, towards the coarse one."""
    coarser = np.asarray(spacing, dtype=float).copy()
    ratio = coarser.max() / coarser
    if np.any(ratio > 2):
        coarser[ratio > 2] *= LOWRES_SPACING_STEP
    else:
        coarser *= LOWRES_SPACING_STEP
    return coarser


def coarsen_to_voxels(cases: list[CaseFingerprint], spacing: list[float], max_voxels: float) -> list[float]:
    """The finest spacing (from ``spacing``, in 3% steps, fine axes first) whose median image fits ``max_voxels``."""
    sp = np.asarray(spacing, dtype=float)
    if np.prod(np.median(_shapes_at(cases, sp), axis=0)) <= max_voxels:
        return list(spacing)
    while np.prod(np.median(_shapes_at(cases, sp), axis=0)) > max_voxels:
        sp = coarser_step(sp)
    return [round(float(x), 4) for x in sp]


def modality_of_cases(cases: list[CaseFingerprint], configured: str) -> tuple[str, str]:
    """(modality, source): the majority of the cases' DICOM modalities among CT and MR, else ``configured``.

    The tags describe the data itself, while the conf value is one setting for the
    whole server; NIfTI images carry no modality, so a NIfTI-only dataset keeps the
    conf value. A tie keeps the conf value when it is among the tied ones.
    """
    counts: dict[str, int] = {}
    for c in cases:
        m = (c.modality or "").upper()
        if m in ("CT", "MR"):
            counts[m] = counts.get(m, 0) + 1
    if not counts:
        return configured.upper(), "conf"
    top = max(counts.values())
    winners = sorted(m for m, n in counts.items() if n == top)
    return (configured.upper() if configured.upper() in winners else winners[0]), "dicom"


def make_plan(
    cases: list[CaseFingerprint],
    labels: dict[str, int],
    modality: str = "MR",
    spatial_dims: int = 3,
    gpu_memory_budget_gb: float = 8.0,
    base_features: int = 32,
    max_features: int | None = None,
    max_stages: int = 6,
    patch_divisor: int = 1,
    stage: str = "fullres",
    max_median_voxels: float | None = None,
    planned_for: str = "gpu",
) -> Plan:
    """Plan from fingerprints. ``patch_divisor`` rounds the patch down to multiples a
    network needs (transformers: patch size x window x merges), at least one multiple.
    ``stage`` plans a single network ("fullres"), or a cascade stage ("lowres", or
    "cascade_fullres", whose input adds the first stage's one-hot prediction)."""
    if not cases:
        raise ValueError("planning needs at least one labeled case")
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; one of {STAGES}")
    if stage != "fullres" and spatial_dims != 3:
        raise ValueError("the cascade is 3D only")
    modality, modality_source = modality_of_cases(cases, modality)
    spacings = np.array([c.spacing_mm for c in cases])
    spacing = data_spacing = target_spacing(spacings)
    if max_median_voxels:
        spacing = coarsen_to_voxels(cases, spacing, max_median_voxels)
    max_features = max_features or (320 if spatial_dims == 3 else 512)
    budget = gpu_memory_budget_gb * 1024**3
    lowres = None
    if stage != "fullres":
        lowres = lowres_spacing(cases, spacing, budget, base_features, max_features, max_stages)
        if stage == "lowres":
            spacing = lowres
    shapes_at_target = _shapes_at(cases, spacing)
    median_shape = [int(round(x)) for x in np.median(shapes_at_target, axis=0)]
    slice_axis = None
    if spatial_dims == 2:
        # Slices along the coarsest axis (the first one when isotropic); the 2D patch and
        # topology are planned in-plane, and the 3D patch has size 1 along the slice axis.
        slice_axis = int(np.argmax(spacing))
        inplane = [a for a in range(3) if a != slice_axis]
        patch2d, kernels, strides, features, mem = plan_patch_and_topology(
            [median_shape[a] for a in inplane], [spacing[a] for a in inplane], budget, base_features,
            max_features, max_stages
        )
        if patch_divisor > 1:
            patch2d = [max(patch_divisor, p // patch_divisor * patch_divisor) for p in patch2d]
        network_patch = patch2d
        patch = list(patch2d)
        patch.insert(slice_axis, 1)
    else:
        patch, kernels, strides, features, mem = plan_patch_and_topology(
            median_shape, spacing, budget, base_features, max_features, max_stages
        )
        if patch_divisor > 1:
            patch = [max(patch_divisor, p // patch_divisor * patch_divisor) for p in patch]
        network_patch = patch
    batch = max(2, int(budget // max(estimate_memory_bytes(network_patch, strides, features, 1), 1)))
    # nnU-Net caps the batch so that one batch covers at most 5% of the dataset's voxels.
    dataset_vox = float(np.sum(np.prod(shapes_at_target, axis=1)))
    batch = int(max(2, min(batch, math.floor(0.05 * dataset_vox / np.prod(patch)))))

    fg = np.concatenate([np.asarray(c.foreground_samples, dtype=np.float64) for c in cases] or [np.zeros(1)])
    plan = Plan(
        spatial_dims=spatial_dims,
        labels=dict(labels),
        modality=modality.upper(),
        target_spacing_mm=spacing,
        median_shape_vox=median_shape,
        patch_size_vox=patch,
        batch_size=batch,
        features=features,
        kernel_sizes=kernels,
        strides=strides,
        normalization="ct" if modality.upper() == "CT" else "zscore_per_image",
        gpu_memory_budget_gb=gpu_memory_budget_gb,
        estimated_memory_gb=round(estimate_memory_bytes(network_patch, strides, features, batch) / 1024**3, 3),
        cascade_recommended=spatial_dims == 3 and bool(np.prod(patch) < 0.25 * np.prod(median_shape)),
        n_training_cases=len(cases),
        slice_axis=slice_axis,
        stage=stage,
        previous_stage_channels=len(labels) if stage == "cascade_fullres" else 0,
        modality_source=modality_source,
        previous_stage_spacing_mm=lowres if stage == "cascade_fullres" else None,
        planned_for=planned_for,
        data_spacing_mm=data_spacing if spacing != data_spacing else None,
        mirror_axes=mirror_axes_for(labels),
    )
    if fg.size > 1:
        p005, p995 = np.percentile(fg, [0.5, 99.5])
        plan.foreground_intensity = {"mean": float(fg.mean()), "std": float(fg.std()),
                                     "percentile_00_5": float(p005), "percentile_99_5": float(p995)}
    if plan.normalization == "ct" and fg.size > 1:
        lo, hi = np.percentile(fg, [0.5, 99.5])
        clipped = np.clip(fg, lo, hi)
        plan.ct_clip = [float(lo), float(hi)]
        plan.ct_mean = float(clipped.mean())
        plan.ct_std = float(max(clipped.std(), 1e-8))
    return plan
