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
