"""Whole-volume prediction: preprocess -> sliding window (+TTA) -> inverse -> labels.

This is the one path every prediction takes (REST infer task, model card
evaluation, benchmarks), so what is measured is what is served.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from medseg.pipeline.brain_extraction import brain_mask, extracted
from medseg.pipeline.inference import predict_probabilities
from medseg.pipeline.plan import Plan
from medseg.pipeline.postprocess import apply_postprocessing, class_argmax
from medseg.pipeline.sides import assign_sides, right_of_world_x
from medseg.pipeline.preprocess import (
    PreprocessedCase,
    invert_labels,
    invert_probabilities,
    preprocess,
)
from medseg.volume import Volume


@dataclass
class Prediction:
    labels: np.ndarray  # uint8 on the input grid, values = declared label indices
    latencies_s: dict[str, float]
    probabilities: np.ndarray | None = None  # (*spatial, C) float32 softmax on the input grid, on request


def voxel_entropy(probabilities: np.ndarray | torch.Tensor, axis: int = -1) -> np.ndarray:
    """Shannon entropy (nats) of a softmax along ``axis``: 0 where one class is certain, ln(C) at most.

    Applied to a mean softmax (over TTA passes, MC-dropout passes or ensemble members)
    it is the predictive entropy, the usual voxel-wise uncertainty map.
    """
    p = torch.as_tensor(np.asarray(probabilities), dtype=torch.float64)
    # 0 * log 0 is 0: clamping keeps log finite without changing the sum.
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=axis)
    return entropy.clamp_min(0).numpy().astype(np.float32)


class Predictor:
    def __init__(self, network: torch.nn.Module, plan: Plan, device: torch.device,
                 largest_component_labels: list[int] | None = None, side_pairs: list[list[int]] | None = None):
        self.network = network.to(device).eval()
        self.plan = plan
        self.device = device
        self.largest_component_labels = list(largest_component_labels or [])
        self.side_pairs = [tuple(p) for p in side_pairs or []]
        # For weights that trained on extracted brains: the predictor that finds the brain first
        # (``pipeline.brain_extraction``); None: the volume goes in as it is.
        self.brain_extractor: Predictor | None = None

    def prepare(self, volume: Volume, tta: bool) -> tuple[PreprocessedCase, dict]:
        """The network's input on the plan's grid, and the seconds each step took."""
        t0 = time.perf_counter()
        case = preprocess(volume.array, volume.spacing_mm, self.plan, affine=volume.affine)
        return case, {"pre": round(time.perf_counter() - t0, 3)}

    def postprocess(self, labels: np.ndarray, case: PreprocessedCase, volume: Volume) -> np.ndarray:
        """The validated steps on the image grid: each piece of a left/right pair to its side of
        the body's midline (the centre of the body crop), then the largest piece of a label."""
        if self.side_pairs:
            centre_vox = np.array([(a + b - 1) / 2 for a, b in case.bbox])
            midline_x_mm = float((volume.affine[:3, :3] @ centre_vox + volume.affine[:3, 3])[0])
            labels = assign_sides(labels, self.side_pairs, right_of_world_x(volume.affine, midline_x_mm))
        return apply_postprocessing(labels, self.largest_component_labels)

    def __call__(self, volume: Volume, tta: bool = False, probabilities: bool = False) -> Prediction:
        t0 = time.perf_counter()
        brain, latencies = None, {}
        if self.brain_extractor is not None:
            brain = brain_mask(self.brain_extractor, volume)
            volume = extracted(volume, brain)
            latencies["brain_extraction"] = round(time.perf_counter() - t0, 3)
        case, step_latencies = self.prepare(volume, tta)
        latencies.update(step_latencies)
        t1 = time.perf_counter()
        probs = predict_probabilities(
            self.network, torch.from_numpy(case.image), self.plan.patch_size_vox, mirror=tta, device=self.device,
            mirror_axes=self.plan.mirror_axes,
        )
        t2 = time.perf_counter()
        # Class index c is label value c: plans declare labels as 1..n (see labels.py).
        if probabilities:  # one resampling serves both the labels and the maps returned
            full = invert_probabilities(probs, case)
            labels, full = class_argmax(full), full.movedim(0, -1).numpy()
        else:
            labels, full = invert_labels(probs, case), None
        labels = self.postprocess(labels, case, volume)
        if brain is not None:  # labels only inside the brain that the extractor found
            labels[~brain] = 0
            if full is not None:
                full[~brain] = np.eye(full.shape[-1], dtype=full.dtype)[0]
        t3 = time.perf_counter()
        return Prediction(
            labels=labels,
            probabilities=full,
            latencies_s={**latencies, "infer": round(t2 - t1, 3), "post": round(t3 - t2, 3),
                         "total": round(t3 - t0, 3)},
        )
