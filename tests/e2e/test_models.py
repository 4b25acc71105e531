"""Every model with shipped weights, through a real server serving all models."""
import nibabel as nib
import numpy as np
import pytest
import requests
from scipy import ndimage

from medseg.models import MODELS
from tests.conftest import APP_DIR, Server, make_studies
from tests.e2e.helpers import infer

SHIPPED = sorted(name for name in MODELS if (APP_DIR / "model" / name / "model.pt").exists())


@pytest.fixture(scope="module")
def all_models_server(tmp_path_factory, sample_sets):
    studies = make_studies(tmp_path_factory.mktemp("all-models"), sample_sets)
    # An anisotropic study: 1 x 1 x 4 mm, as thick-slice clinical MR often is.
    source = nib.load(sample_sets["studies"] / "images" / "subject_002.nii.gz")
    spacing = np.array(source.header.get_zooms()[:3], dtype=float)
    target = np.array([1.0, 1.0, 4.0])
    data = ndimage.zoom(np.asarray(source.dataobj, dtype=np.float32), spacing / target, order=1)
    affine = source.affine.copy()
    affine[:3, :3] = source.affine[:3, :3] / spacing * target
    nib.save(nib.Nifti1Image(data, affine), studies / "aniso_1x1x4.nii.gz")
    srv = Server(studies, {"models": "all"})
    yield srv
    srv.stop()


def test_info_lists_every_model_as_trainer_and_shipped_ones_as_infer_tasks(all_models_server):
    info = requests.get(f"{all_models_server.url}/info/", timeout=30).json()
    assert set(MODELS) <= set(info["trainers"])
    assert "unet3d" in SHIPPED
    for name in SHIPPED:
        assert info["models"][name]["weights"]["source"] == "shipped"
    assert info["models"]["ensemble"]["members"] == SHIPPED or set(info["models"]["ensemble"]["members"]) == set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED + ["ensemble", "auto"])
def test_every_model_segments_an_anisotropic_image_on_its_grid(all_models_server, name):
    image = nib.load(all_models_server.studies / "aniso_1x1x4.nii.gz")
    label, params = infer(all_models_server.url, name, "aniso_1x1x4")
    assert label.shape == image.shape
    assert np.allclose(label.affine, image.affine, atol=1e-4)
    values = np.unique(np.asarray(label.dataobj))
    assert set(values.tolist()) <= {0, 1, 2} and len(values) == 3, values


@pytest.fixture(scope="module")
def labeled_once(all_models_server, sample_sets):
    from tests.e2e.helpers import put_label

    r = put_label(all_models_server.url, "subject_000", sample_sets["studies"] / "labels" / "subject_000.nii.gz")
    assert r.status_code == 200, r.text
    return all_models_server


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_trains_with_a_tiny_budget_and_publishes_new_weights(labeled_once, name):
    """Runs after the infer tests above (pytest keeps file order), so they saw the shipped weights."""
    import torch

    url = labeled_once.url
    before = requests.get(f"{url}/info/", timeout=30).json()["models"].get(name, {}).get("weights", {})
    r = requests.post(f"{url}/train/{name}", json={"max_iterations": 1, "batch_size": 1, "augment": False,
                                                   "model_selection": False, "publish": "always"}, timeout=60)
    assert r.status_code == 200, r.text
    status = labeled_once.wait_for_training()
    assert status["status"] == "DONE", status
    weights = requests.get(f"{url}/info/", timeout=30).json()["models"][name]["weights"]
    assert weights["version"] == (before.get("version") or 0) + 1 and weights["source"] == "trained"
    published = torch.load(labeled_once.studies / ".medseg" / "models" / name / "model.pt", weights_only=False)
    shipped_path = APP_DIR / "model" / name / "model.pt"
    if shipped_path.exists():
        shipped = torch.load(shipped_path, weights_only=False)
        changed = [k for k, v in published["state_dict"].items()
                   if v.is_floating_point() and not torch.allclose(v.float(), shipped["state_dict"][k].float())]
        assert changed, "training left every weight as shipped"
