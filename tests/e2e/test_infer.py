"""GET /info and POST /infer through a real monailabel server with the shipped unet3d."""
import nibabel as nib
import numpy as np
import requests

from medseg.data.template import TISSUE_LABELS
from tests.e2e.helpers import dice, infer


def test_info_lists_unet3d_labels_and_strategies(server):
    info = requests.get(f"{server.url}/info/", timeout=30).json()
    assert info["labels"] == {"grey_matter": 1, "white_matter": 2}
    assert "unet3d" in info["models"] and "unet3d" in info["trainers"]
    assert info["models"]["unet3d"]["labels"] == {"grey_matter": 1, "white_matter": 2}
    assert info["models"]["unet3d"]["weights"]["source"] == "shipped"
    assert {"random", "first"} <= set(info["strategies"])
    assert info["datastore"]["total"] >= 4


def test_infer_returns_label_on_exact_grid_with_real_tissue_segmentation(server, sample_sets):
    image_file = sample_sets["heldout"] / "images" / "heldout_000.nii.gz"
    truth = np.asarray(nib.load(sample_sets["heldout"] / "labels" / "heldout_000.nii.gz").dataobj)
    source = nib.load(image_file)

    label, params = infer(server.url, "unet3d", "heldout_000")

    assert label.shape == source.shape
    assert np.allclose(label.header.get_zooms()[:3], source.header.get_zooms()[:3])
    assert np.allclose(label.affine, source.affine, atol=1e-4)  # origin and direction
    values = set(np.unique(np.asarray(label.dataobj)).tolist())
    assert values <= {0, 1, 2}
    pred = np.asarray(label.dataobj)
    for name, value in TISSUE_LABELS.items():
        assert dice(pred, truth, value) > 0.8, (name, dice(pred, truth, value))
    assert params["label_names"] == TISSUE_LABELS
    assert params["model_version"] == 1
    assert params["latencies"]["total"] > 0


def test_next_sample_strategies_return_unlabeled_images(server):
    first = requests.post(f"{server.url}/activelearning/first", json={}, timeout=30).json()
    assert first["id"] == sorted(["heldout_000", "subject_000", "subject_001", "subject_002"])[0]
    rnd = requests.post(f"{server.url}/activelearning/random", json={}, timeout=30).json()
    assert rnd["id"] in {"heldout_000", "subject_000", "subject_001", "subject_002"}


def test_uploaded_small_image_with_tta_and_probabilities(server, sample_sets, tmp_path):
    source = nib.load(sample_sets["studies"] / "images" / "subject_001.nii.gz")
    data = np.asarray(source.dataobj)[30:70, 40:80, 30:66]
    affine = source.affine.copy()
    affine[:3, 3] = source.affine[:3, :3] @ [30, 40, 30] + source.affine[:3, 3]
    path = tmp_path / "crop.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    with open(path, "rb") as f:
        r = requests.put(f"{server.url}/datastore/image", params={"image": "crop"},
                         files={"file": ("crop.nii.gz", f)}, timeout=60)
    assert r.status_code == 200, r.text
    try:
        label, params = infer(server.url, "unet3d", "crop", tta=True)
        assert params["tta"] is True and label.shape == data.shape
        assert np.allclose(label.affine, affine, atol=1e-4)
        probs, params = infer(server.url, "unet3d", "crop", probabilities=True)
        p = np.asarray(probs.dataobj)
        assert p.shape == (*data.shape, 3) and params["output"] == "probabilities"
        assert np.allclose(p.sum(-1), 1.0, atol=1e-3)
    finally:
        requests.delete(f"{server.url}/datastore/image", params={"id": "crop"}, timeout=60)


def test_auto_and_ensemble_use_the_models_with_weights(server):
    info = requests.get(f"{server.url}/info/", timeout=30).json()
    assert info["models"]["auto"]["chosen"] == "unet3d"
    assert info["models"]["ensemble"]["members"] == ["unet3d"]
    single, _ = infer(server.url, "unet3d", "subject_002")
    auto, params = infer(server.url, "auto", "subject_002")
    assert params["model"] == "unet3d" and params["chosen_by"] == "validation dice"
    assert np.array_equal(np.asarray(auto.dataobj), np.asarray(single.dataobj))
