"""How unsure a model is about an image: MC-dropout and test-time-augmentation scores.

MC dropout (Gal & Ghahramani 2016, "Dropout as a Bayesian Approximation", ICML):
keeping dropout active at test time and averaging N stochastic passes approximates
sampling from a posterior over the weights; the entropy of the mean softmax is then
the predictive uncertainty. MedSeg's networks have no dropout layers (nnU-Net trains
without them), so the stochastic passes add dropout on feature maps through forward
hooks on every normalization layer (InstanceNorm, BatchNorm, GroupNorm, LayerNorm;
convolutions when a network has none). Every network in medseg.models has such
layers, CNNs and transformers alike, so the same code serves all of them, and the
weights and the deterministic infer path are left untouched: the hooks exist only
inside ``mc_dropout`` and are removed when it exits. The dropout is element-wise
because it does not depend on the tensor layout (channels-first conv maps and
channels-last token maps). The network was not trained with this dropout, so the
scores rank images against each other; they are not calibrated probabilities.

The TTA score (for ranking without any dropout) is the voxel variance of the
softmax across flips and small intensity changes of the input.

Both scores are means over the voxels the model predicts as foreground: the
background far from the anatomy is certain and would only dilute the mean.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from medseg.pipeline.inference import mirror_axes_subsets, predict_probabilities
from medseg.pipeline.postprocess import class_argmax
from medseg.pipeline.predictor import Predictor, voxel_entropy

NORM_TYPES = (torch.nn.modules.batchnorm._NormBase, torch.nn.LayerNorm, torch.nn.GroupNorm)
CONV_TYPES = (torch.nn.modules.conv._ConvNd,)
# Small intensity changes of the z-scored input: (scale, shift).
INTENSITY_CHANGES = ((1.1, 0.0), (0.9, 0.0), (1.0, 0.1), (1.0, -0.1))


def dropout_targets(network: torch.nn.Module) -> list[torch.nn.Module]:
    """Modules whose outputs get dropout: every norm layer, else every convolution."""
    norms = [m for m in network.modules() if isinstance(m, NORM_TYPES)]
    return norms or [m for m in network.modules() if isinstance(m, CONV_TYPES)]


@contextlib.contextmanager
def mc_dropout(network: torch.nn.Module, p: float = 0.1):
    """Within the block, every forward pass of ``network`` is stochastic (feature-map dropout)."""

    def drop(module, inputs, output):
        # training=True: dropout stays active although the network is in eval mode.
        return F.dropout(output, p=p, training=True) if torch.is_tensor(output) else output

    handles = [m.register_forward_hook(drop) for m in dropout_targets(network)]
    try:
        yield len(handles)
    finally:
        for h in handles:
            h.remove()


def foreground_mean(values: np.ndarray, mean_probs: np.ndarray) -> float:
    """Mean of a voxel map over the predicted foreground (whole volume when there is none).

    ``mean_probs`` is (C, *spatial); class 0 is background.
    """
    foreground = class_argmax(mean_probs) > 0
    region = values[foreground] if foreground.any() else values
    return float(region.mean())


def _passes(image: torch.Tensor, variants: list[Callable]) -> np.ndarray:
    """(N, C, *spatial) softmax of the network for each variant of the preprocessed image."""
    return np.stack([variant(image).numpy() for variant in variants])


def epistemic_score(predictor: Predictor, volume, passes: int = 5, p: float = 0.1) -> dict:
    """Mean foreground entropy of the mean softmax over ``passes`` MC-dropout passes."""
    case, _ = predictor.prepare(volume, tta=False)
    image = torch.from_numpy(case.image)

    def stochastic(x):
        with mc_dropout(predictor.network, p):
            return predict_probabilities(predictor.network, x, predictor.plan.patch_size_vox, device=predictor.device)

    probs = _passes(image, [stochastic] * passes)
    mean = probs.mean(0)
    entropy = voxel_entropy(mean, axis=0)
    # Mutual information (BALD): the part of the entropy due to disagreement between passes.
    expected = voxel_entropy(probs, axis=1).mean(0)
    return {"score": foreground_mean(entropy, mean), "mutual_information": foreground_mean(entropy - expected, mean),
            "passes": passes, "dropout": p}


def tta_variants(predictor: Predictor, n: int) -> list[Callable]:
    """The first ``n`` of: identity, single-axis flips (axes the patch spans), intensity changes."""
    patch = predictor.plan.patch_size_vox
    flips = [axes for axes in mirror_axes_subsets(len(patch), patch, predictor.plan.mirror_axes) if len(axes) == 1]

    def run(x):
        return predict_probabilities(predictor.network, x, patch, device=predictor.device)

    def flipped(axes):
        # The image is (channels, *spatial): spatial axis a of a batch (dim 2 + a) is dim 1 + a here.
        dims = tuple(d - 1 for d in axes)
        return lambda x: torch.flip(run(torch.flip(x, dims)), dims)

    def changed(scale, shift):
        def apply(x):
            # Channel 0 is the image; a cascade's extra channels (previous stage) stay as they are.
            x = x.clone()
            x[:1] = x[:1] * scale + shift
            return run(x)

        return apply

    variants = [run] + [flipped(a) for a in flips] + [changed(s, b) for s, b in INTENSITY_CHANGES]
    return variants[:max(2, n)]


def tta_score(predictor: Predictor, volume, passes: int = 5) -> dict:
    """Mean foreground softmax variance (mean over classes) across test-time augmentations."""
    case, _ = predictor.prepare(volume, tta=False)
    probs = _passes(torch.from_numpy(case.image), tta_variants(predictor, passes))
    mean = probs.mean(0)
    variance = probs.var(0).mean(0)
    return {"score": foreground_mean(variance, mean), "passes": len(probs)}
