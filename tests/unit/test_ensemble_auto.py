"""Ensemble and auto infer tasks over real (tiny, randomly initialized) checkpoints on disk."""
import json

import numpy as np
import pytest
import torch

from medseg.checkpoint import ModelStore, save_checkpoint
from medseg.models import MODELS
from medseg.pipeline.plan import CaseFingerprint, make_plan
from medseg.tasks.infer import AutoInferTask, EnsembleInferTask, MedSegInferTask
from medseg.volume import Volume

LABELS = {"grey_matter": 1, "white_matter": 2}


@pytest.fixture
def members(tmp_path):
    plan = make_plan([CaseFingerprint("a", [2.0, 2.0, 2.0], [24, 24, 24], [1.0])], LABELS,
                     gpu_memory_budget_gb=0.01, base_features=4, max_features=8, max_stages=3)
    tasks = []
    for seed, name, dice in ((0, "unet3d", 0.7), (1, "resenc_unet", 0.9)):
        torch.manual_seed(seed)
        net = MODELS[name].build(plan)
        save_checkpoint(tmp_path / "runtime" / name / "model.pt", {
            "state_dict": net.state_dict(), "plan": json.loads(plan.to_json()), "version": 1,
            "val_dice_per_label": {"grey_matter": dice, "white_matter": dice},
        })
        store = ModelStore(name, tmp_path / "shipped", tmp_path / "runtime")
        tasks.append(MedSegInferTask(MODELS[name], store, LABELS, "cpu", tta=False))
    return tasks


def volume():
    rng = np.random.default_rng(0)
    array = np.zeros((20, 22, 18), np.float32)
    array[3:17, 3:19, 2:16] = rng.normal(100, 20, (14, 16, 14))
    return Volume(array, np.diag([2.0, 2.0, 2.0, 1.0]))


def test_ensemble_is_the_mean_of_member_probabilities(members):
    vol = volume()
    ensemble = EnsembleInferTask(members, LABELS, tta=False)
    with torch.inference_mode():
        pred, meta = ensemble.predict(vol, tta=False, probabilities=True)
        singles = [m.predict(vol, False, True)[0].probabilities for m in members]
    assert set(meta["members"]) == {"unet3d", "resenc_unet"}
    assert np.allclose(pred.probabilities, (singles[0] + singles[1]) / 2, atol=1e-5)
    assert np.array_equal(pred.labels, pred.probabilities.argmax(-1))


def test_auto_picks_best_validation_dice_and_first_on_tie(members):
    from medseg.checkpoint import load_checkpoint

    auto = AutoInferTask(members, LABELS, tta=False)
    assert auto.choose().spec.name == "resenc_unet"
    # Same validation Dice: the model listed first in the table wins.
    path = members[1].store.runtime_path
    ckpt = load_checkpoint(path)
    ckpt["val_dice_per_label"] = {"grey_matter": 0.7, "white_matter": 0.7}
    save_checkpoint(path, ckpt)
    assert auto.choose().spec.name == "unet3d"
    # A model without weights is never chosen.
    members[0].store.runtime_path.unlink()
    assert auto.choose().spec.name == "resenc_unet"


def test_best_choice_prefers_single_models_on_a_tie():
    from medseg.selection import best_choice

    sel = {"versions": {"unet3d": 1, "vnet": 2},
           "val_dice_per_label": {"unet3d": {"a": 0.8}, "vnet": {"a": 0.85}, "ensemble": {"a": 0.85}}}
    assert best_choice(sel) == "vnet"
    sel["val_dice_per_label"]["ensemble"] = {"a": 0.9}
    assert best_choice(sel) == "ensemble"
    assert best_choice({"versions": {}, "val_dice_per_label": {}}) is None


def test_selection_after_training_decides_auto_while_weights_match(members, tmp_path):
    import nibabel as nib

    from medseg.selection import evaluate_models, save_selection

    vol = volume()
    nib.save(nib.Nifti1Image(vol.array, vol.affine), tmp_path / "v.nii.gz")
    truth = (vol.array > 90).astype(np.uint8)
    nib.save(nib.Nifti1Image(truth, vol.affine), tmp_path / "v_label.nii.gz")
    peers = [(m.spec, m.store) for m in members]
    selection = evaluate_models(peers, [{"image": str(tmp_path / "v.nii.gz"),
                                         "label": str(tmp_path / "v_label.nii.gz")}], LABELS, "cpu")
    assert set(selection["val_dice_per_label"]) == {"unet3d", "resenc_unet", "ensemble"}
    assert selection["versions"] == {"unet3d": 1, "resenc_unet": 1}
    # Make the recorded selection favour the ensemble: auto follows it.
    selection["val_dice_per_label"]["ensemble"] = {"grey_matter": 1.0, "white_matter": 1.0}
    save_selection(tmp_path / "work", selection)
    ensemble = EnsembleInferTask(members, LABELS, tta=False)
    auto = AutoInferTask(members, LABELS, False, ensemble, tmp_path / "work")
    assert auto.choose() is ensemble
    # New weights for one member make the record stale: back to the weights' own records.
    ckpt = torch.load(members[0].store.runtime_path, weights_only=False)
    ckpt["version"] = 2
    save_checkpoint(members[0].store.runtime_path, ckpt)
    assert auto.choose().spec.name == "resenc_unet"
