"""The cascade: low-resolution planning, perturbed training input, and the two-stage predictor."""
import numpy as np
import pytest
import torch

from medseg.models import MODELS
from medseg.volume import Volume
from medseg.pipeline.cascade import (
    CascadePredictor,
    PerturbedPreviousStage,
    onehot_foreground,
)
from medseg.pipeline.plan import CaseFingerprint, make_plan
from medseg.pipeline.predictor import Predictor

LABELS = {"a": 1, "b": 2}


def fingerprints(shape=(160, 160, 160), spacing=(1.0, 1.0, 1.0)):
    return [CaseFingerprint("x", list(spacing), list(shape), [1.0, 2.0])]


def test_lowres_stage_coarsens_until_one_patch_holds_the_median_image():
    fps = fingerprints()
    kw = dict(gpu_memory_budget_gb=0.05, base_features=4, max_features=16)
    full = make_plan(fps, LABELS, **kw)
    low = make_plan(fps, LABELS, stage="lowres", **kw)
    assert np.prod(full.patch_size_vox) < np.prod(full.median_shape_vox)  # too big for one full-res patch
    assert all(lo > f for lo, f in zip(low.target_spacing_mm, full.target_spacing_mm))
    assert np.prod(low.patch_size_vox) >= np.prod(low.median_shape_vox)
    second = make_plan(fps, LABELS, stage="cascade_fullres", **kw)
    assert second.target_spacing_mm == full.target_spacing_mm and second.patch_size_vox == full.patch_size_vox
    assert second.previous_stage_channels == 2 and second.previous_stage_spacing_mm == low.target_spacing_mm


def test_lowres_on_anisotropic_data_coarsens_the_fine_axes_first():
    low = make_plan(fingerprints((300, 300, 40), (0.8, 0.8, 5.0)), LABELS, stage="lowres",
                    gpu_memory_budget_gb=0.05, base_features=4, max_features=16)
    fine, coarse = low.target_spacing_mm[0] / 0.8, low.target_spacing_mm[2] / 5.0
    assert fine > 2 * coarse  # the 0.8 mm axes caught up with the 5 mm one before it moved
    assert low.target_spacing_mm[2] / low.target_spacing_mm[0] <= 2.1


def test_cascade_is_3d_only():
    with pytest.raises(ValueError):
        make_plan(fingerprints(), LABELS, spatial_dims=2, stage="lowres")


def test_onehot_foreground_drops_background():
    label = np.array([[0, 1], [2, 2]])
    onehot = onehot_foreground(label, 3)
    assert onehot.shape == (2, 2, 2)
    assert onehot[0].tolist() == [[0, 1], [0, 0]] and onehot[1].tolist() == [[0, 0], [1, 1]]


def test_perturbed_previous_stage_is_close_to_but_not_the_ground_truth():
    fps = fingerprints((64, 64, 64))
    plan = make_plan(fps, LABELS, stage="cascade_fullres", gpu_memory_budget_gb=0.01, base_features=4,
                     max_features=8)
    plan.previous_stage_spacing_mm = [2 * s for s in plan.target_spacing_mm]
    grid = np.indices((32, 32, 32)) - 16
    radius = np.sqrt((grid**2).sum(0))
    label = np.where(radius < 6, 2, np.where(radius < 12, 1, 0)).astype(np.int64)
    labels = torch.from_numpy(np.stack([label] * 8))
    perturbed = PerturbedPreviousStage(plan, seed=0)(labels)
    assert perturbed.shape == (8, 2, 32, 32, 32)
    assert set(torch.unique(perturbed).tolist()) <= {0.0, 1.0}
    truth = onehot_foreground(label, 3)
    dice = [float(2 * (p * truth).sum() / (p.sum() + truth.sum())) for p in perturbed]
    assert min(dice) > 0.6  # still a useful hint...
    assert max(dice) < 1.0  # ...never the perfect answer


def test_cascade_predictor_feeds_the_first_stage_prediction_to_the_second():
    fps = fingerprints((24, 24, 24))
    kw = dict(gpu_memory_budget_gb=0.005, base_features=4, max_features=8)
    low_plan = make_plan(fps, LABELS, stage="lowres", **kw)
    plan = make_plan(fps, LABELS, stage="cascade_fullres", **kw)
    first = Predictor(MODELS["cascade_lowres"].build(low_plan), low_plan, torch.device("cpu"))
    second = MODELS["cascade"].build(plan)
    assert second(torch.zeros(1, 3, 16, 16, 16))[0].shape == (1, 3, 16, 16, 16)  # image + 2 hint channels in
    predictor = CascadePredictor(first, second, plan, torch.device("cpu"))
    image = np.random.default_rng(0).normal(size=(24, 24, 24)).astype(np.float32)
    volume = Volume(array=image, affine=np.eye(4))
    case, _ = predictor.prepare(volume, tta=False)
    assert case.image.shape[0] == 3
    expected = onehot_foreground(first(volume).labels, 3).numpy()
    assert np.array_equal(case.image[1:], expected)  # same grid: the hint is the first stage's answer
    out = predictor(volume)
    assert out.labels.shape == image.shape and "first_stage" in out.latencies_s
