"""Uncertainty for active learning: entropy math, MC-dropout hooks, TTA variants, cache, reservations, ranking."""
import math
import random
import time

import numpy as np
import pytest
import torch
from medseg.activelearning.reservations import Reservations
from medseg.activelearning.scores import ScoreCache
from medseg.activelearning.strategies import rank
from medseg.activelearning.uncertainty import (
    dropout_targets,
    epistemic_score,
    foreground_mean,
    mc_dropout,
    tta_score,
    tta_variants,
)
from medseg.checkpoint import load_checkpoint
from medseg.config import AppConfig
from medseg.errors import ConfigError
from medseg.imageio import read_volume
from medseg.models import MODELS
from medseg.pipeline.plan import Plan
from medseg.pipeline.predictor import voxel_entropy
from medseg.volume import Volume

from tests.conftest import APP_DIR


@pytest.fixture(scope="module")
def unet3d():
    torch.manual_seed(0)
    ckpt = load_checkpoint(APP_DIR / "model" / "unet3d" / "model.pt")
    return MODELS["unet3d"].predictor(ckpt, torch.device("cpu"))


def test_entropy_of_certain_uniform_and_mixed_softmax():
    probs = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]])
    h = voxel_entropy(probs, axis=-1)
    assert h.dtype == np.float32
    assert h[0] == pytest.approx(0.0, abs=1e-6)
    assert h[1] == pytest.approx(math.log(3), rel=1e-5)  # the maximum for 3 classes
    assert h[2] == pytest.approx(math.log(2), rel=1e-5)
    # Channels-first maps (C, *spatial) along axis 0 give the same numbers.
    assert np.allclose(voxel_entropy(probs.T.reshape(3, 3, 1, 1), axis=0).ravel(), h, atol=1e-6)


def test_foreground_mean_uses_predicted_foreground_and_falls_back_to_all():
    probs = np.zeros((2, 4))
    probs[0] = [0.9, 0.9, 0.2, 0.3]  # background wins on the first two voxels
    probs[1] = 1 - probs[0]
    values = np.array([10.0, 10.0, 1.0, 3.0])
    assert foreground_mean(values, probs) == pytest.approx(2.0)
    all_background = np.stack([np.ones(4), np.zeros(4)])
    assert foreground_mean(values, all_background) == pytest.approx(6.0)


def test_every_model_has_layers_for_mc_dropout():
    for name, spec in MODELS.items():
        if spec.cascade:
            continue  # both of its networks are U-Nets built like cascade_lowres (checked here)
        shipped = APP_DIR / "model" / name / "model.pt"
        # Models without shipped weights are built on unet3d's plan.
        plan = Plan.from_dict(load_checkpoint(shipped if shipped.exists() else APP_DIR / "model/unet3d/model.pt")["plan"])
        assert len(dropout_targets(spec.build(plan))) > 0, name


def test_mc_dropout_hooks_make_passes_differ_and_are_removed(unet3d):
    net = unet3d.network.eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        before = net(x)
        with mc_dropout(net, p=0.2) as n_hooks:
            a, b = net(x), net(x)
        after = net(x)
    assert n_hooks == len(dropout_targets(net)) > 0
    assert not torch.allclose(a, b)  # stochastic while the hooks are in place
    assert not torch.allclose(a, before)
    assert torch.equal(before, after)  # deterministic again: hooks removed, weights untouched
    assert all(not m._forward_hooks for m in net.modules())
    assert not net.training


def test_hooks_are_removed_even_when_the_forward_fails(unet3d):
    net = unet3d.network
    with pytest.raises(RuntimeError), mc_dropout(net):
        net(torch.randn(1, 5, 8, 8, 8))  # wrong channel count
    assert all(not m._forward_hooks for m in net.modules())


def small_volume(seed=0):
    """A 40^3 bright ellipsoid in noise at 1 mm: small enough to score in seconds."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:40, :40, :40]
    blob = (((x - 20) / 14) ** 2 + ((y - 20) / 12) ** 2 + ((z - 20) / 10) ** 2 < 1).astype(np.float32)
    image = blob * 100 + rng.normal(0, 5, blob.shape).astype(np.float32)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    return Volume(array=image, affine=affine, header=None)


def test_epistemic_and_tta_scores_are_finite_and_non_negative(unet3d):
    volume = small_volume()
    torch.manual_seed(1)
    epi = epistemic_score(unet3d, volume, passes=2, p=0.2)
    assert epi["passes"] == 2 and 0 <= epi["score"] <= math.log(3) + 1e-6
    assert epi["mutual_information"] >= -1e-6
    tta = tta_score(unet3d, volume, passes=3)
    assert tta["passes"] == 3 and 0 <= tta["score"] <= 1
    # More dropout means more disagreement between passes.
    torch.manual_seed(1)
    strong = epistemic_score(unet3d, volume, passes=2, p=0.5)
    assert strong["mutual_information"] > epi["mutual_information"]


def test_tta_variants_start_with_identity_and_flip_back(unet3d, sample_sets):
    variants = tta_variants(unet3d, 8)
    assert len(variants) == 8  # identity, 3 flips, 4 intensity changes
    # A brain the weights segment with confidence: on a bare ellipsoid (no brain) a network has no
    # reason to be mirror-symmetric, and the agreement would measure that, not the mapping back.
    brain = read_volume(sample_sets["heldout"] / "images" / "heldout_000.nii.gz")
    case, _ = unet3d.prepare(brain, tta=False)
    image = torch.from_numpy(case.image)
    plain, flipped = variants[0](image), variants[1](image)
    assert plain.shape == flipped.shape
    # A flipped pass is mapped back: it agrees with the plain pass on most voxels.
    assert (plain.argmax(0) == flipped.argmax(0)).float().mean() > 0.9


def test_reservations_keep_clients_apart_and_expire(tmp_path):
    res = Reservations(tmp_path / "r.json", timeout_s=60)
    ranked = ["a", "b", "c"]
    assert res.reserve_first(ranked, "alice", now=1000) == "a"
    assert res.reserve_first(ranked, "bob", now=1001) == "b"
    assert res.reserve_first(ranked, "alice", now=1002) == "c"  # asks again: the next free one
    assert res.reserve_first(ranked, "carol", now=1003) is None  # all held by others
    assert res.reserve_first(ranked, "alice", now=1004) == "a"  # all held: her own first one
    assert res.reserve_first(ranked, "carol", now=1061.5) == "b"  # bob's reservation expired
    assert set(res.active(now=1061.5)) == {"a", "b", "c"}
    assert res.active(now=5000) == {}


def test_reservations_survive_a_new_instance_and_a_corrupt_file(tmp_path):
    path = tmp_path / "r.json"
    Reservations(path, 60).reserve_first(["a", "b"], "alice")
    assert Reservations(path, 60).reserve_first(["a", "b"], "bob") == "b"
    path.write_text("{not json")
    assert Reservations(path, 60).reserve_first(["a", "b"], "bob") == "a"


def test_rank_puts_highest_scores_first_then_unscored_randomly():
    scores = {"a": {"score": 0.1}, "b": {"score": 0.5}, "c": {"score": 0.5}, "gone": {"score": 9.0}}
    ranked = rank(["a", "b", "c", "d", "e"], scores, random.Random(0))
    assert ranked[:3] == ["b", "c", "a"]  # the cached "gone" image is not in the datastore
    assert sorted(ranked[3:]) == ["d", "e"]
    orders = {tuple(rank(["x", "y", "z"], {}, random.Random(s))) for s in range(20)}
    assert len(orders) > 1


def test_score_cache_is_per_model_version_and_ranks_100_images_fast(tmp_path):
    cache = ScoreCache(tmp_path, "unet3d", 2, "epistemic")
    assert cache.path == tmp_path / "uncertainty" / "unet3d_v2_epistemic.json"
    for i in range(100):
        cache.put(f"img_{i:03d}", {"score": i / 100})
    assert ScoreCache(tmp_path, "unet3d", 3, "epistemic").load() == {}
    assert cache.missing(["img_000", "new"]) == ["new"]
    images = [f"img_{i:03d}" for i in range(100)] + ["new"]
    res = Reservations(tmp_path / "r.json", 600)
    t0 = time.perf_counter()
    first = res.reserve_first(rank(images, cache.load(), random.Random()), "alice")
    assert time.perf_counter() - t0 < 0.5
    assert first == "img_099"


def test_active_learning_conf_keys(tmp_path):
    cfg = AppConfig.from_conf({"models": "unet3d"}, str(tmp_path), str(tmp_path))
    assert (cfg.al_model, cfg.al_passes, cfg.al_dropout, cfg.al_reservation_s, cfg.al_auto_scoring) == \
        ("", 5, 0.1, 600.0, True)
    cfg = AppConfig.from_conf({"models": "unet3d", "al_model": "unet3d", "al_passes": "3", "al_dropout": "0.2",
                               "al_reservation_s": "30", "al_auto_scoring": "false"}, str(tmp_path), str(tmp_path))
    assert (cfg.al_model, cfg.al_passes, cfg.al_dropout, cfg.al_reservation_s, cfg.al_auto_scoring) == \
        ("unet3d", 3, 0.2, 30.0, False)
    for bad in ({"al_model": "vnet"}, {"al_passes": "1"}, {"al_passes": "x"}, {"al_dropout": "0.9"},
                {"al_reservation_s": "-1"}, {"al_auto_scoring": "maybe"}):
        with pytest.raises(ConfigError):
            AppConfig.from_conf({"models": "unet3d", **bad}, str(tmp_path), str(tmp_path))


def test_pick_model_first_with_weights_named_or_auto(tmp_path):
    from medseg.activelearning.scores import cache_for, pick_model
    from medseg.checkpoint import ModelStore
    from medseg.tasks.infer import AutoInferTask, EnsembleInferTask, MedSegInferTask

    labels = {"grey_matter": 1, "white_matter": 2}
    # vnet listed first but without weights (its store looks in an empty folder), unet3d with its shipped ones.
    shipped = {"vnet": tmp_path / "no-weights", "unet3d": APP_DIR / "model"}
    tasks = {name: MedSegInferTask(MODELS[name], ModelStore(name, shipped[name], tmp_path / "models"),
                                   labels, "cpu", False)
             for name in ("vnet", "unet3d")}
    members = list(tasks.values())
    ensemble = EnsembleInferTask(members, labels, False)
    infers = {**tasks, "ensemble": ensemble, "auto": AutoInferTask(members, labels, False, ensemble, tmp_path)}
    assert pick_model(infers, "").spec.name == "unet3d"
    assert pick_model(infers, "unet3d").spec.name == "unet3d"
    assert pick_model(infers, "vnet") is None
    assert pick_model(infers, "auto").spec.name == "unet3d"
    cache = cache_for(pick_model(infers, ""), tmp_path, "tta")
    assert cache.path.name == "unet3d_v1_tta.json"
