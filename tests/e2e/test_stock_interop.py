"""MONAI Label's contract both ways, with the real stock components the monailabel wheel ships.

- MONAI Label's own 3D Slicer module talks to our server: its client library
  (``<venv>/monailabel/plugins/slicer/MONAILabel/MONAILabelLib/client.py``, the code the
  stock module runs) asks for info, the next sample, a prediction, submits a label the
  way the stock module does (segments numbered in the editor's order, with
  ``label_info`` names), and starts and follows a training run.
- Our Slicer module's client (``MedSegLib``) talks to MONAI Label's stock radiology
  sample app (``<venv>/monailabel/sample-apps/radiology``, model ``segmentation``, from
  scratch: nothing is downloaded): info, next sample, infer, submit.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests

from medseg.server_process import LabelServer
from tests.conftest import REPO, Server, make_studies
from tests.e2e.helpers import TINY_TRAINING

STOCK = Path(sys.prefix) / "monailabel"
STOCK_SLICER_MODULE = STOCK / "plugins" / "slicer" / "MONAILabel"
STOCK_RADIOLOGY_APP = STOCK / "sample-apps" / "radiology"
for folder in (STOCK_SLICER_MODULE, REPO / "slicer_extension" / "MedSeg"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # the stock client imports cgi
    from MONAILabelLib.client import MONAILabelClient  # noqa: E402

from MedSegLib import LabelSet, MedSegClient, fetch_sample_image, submit_label  # noqa: E402



@pytest.fixture(scope="module")
def our_server(tmp_path_factory, sample_sets):
    srv = Server(make_studies(tmp_path_factory.mktemp("stock-client"), sample_sets), {"models": "unet3d"})
    yield srv
    srv.stop()


def test_monai_labels_own_slicer_client_works_with_our_server(our_server, tmp_path):
    client = MONAILabelClient(our_server.url, tmpdir=str(tmp_path), client_id="stock-slicer")
    info = client.info()
    assert info["labels"] == {"grey_matter": 1, "white_matter": 2} and "unet3d" in info["models"]
    assert "unet3d" in info["trainers"] and "random" in info["strategies"]

    sample = client.next_sample("first", {})
    image_id = sample["id"]
    assert Path(sample["path"]).exists()
    result_path, params = client.infer("unet3d", image_id, {})
    image = nib.load(sample["path"])
    predicted = nib.load(result_path)
    assert predicted.shape == image.shape and np.allclose(predicted.affine, image.affine, atol=1e-4)
    assert params["label_names"] == {"grey_matter": 1, "white_matter": 2}
    assert set(np.unique(np.asarray(predicted.dataobj)).astype(int)) == {0, 1, 2}

    # The stock module numbers segments in the editor's order: here white matter first (1), grey
    # matter second (2), the opposite of the app's indices; label_info says which is which.
    pred = np.asarray(predicted.dataobj).astype(np.uint8)
    editor_order = np.where(pred == 2, 1, np.where(pred == 1, 2, 0)).astype(np.uint8)
    label_file = tmp_path / "submitted.nii.gz"
    nib.save(nib.Nifti1Image(editor_order, image.affine), str(label_file))
    client.save_label(image_id, str(label_file), tag="final",
                      params={"label_info": [{"name": "white_matter", "idx": 1}, {"name": "grey_matter", "idx": 2}]})
    stored = our_server.studies / "labels" / "final" / f"{image_id}.nii.gz"
    assert np.array_equal(np.asarray(nib.load(str(stored)).dataobj), pred)  # mapped back to the app's indices

    client.train_start("unet3d", TINY_TRAINING)
    # Follow the task itself, not check_if_running: MONAI Label answers "not running" while the
    # task is still SUBMITTED (its process not yet started), which on a loaded machine made the
    # loop end before training began.
    deadline = time.time() + 600
    status = client.train_status()
    while status["status"] in ("SUBMITTED", "RUNNING") and time.time() < deadline:
        time.sleep(2)
        status = client.train_status()
    assert status["status"] == "DONE", status
    assert client.info()["train_stats"]["unet3d"]["published"] is True


def slicer_module_echo(info: dict, section: str, name: str) -> dict:
    """What MONAI Label's Slicer module sends as a task's options: the task's /info config, the
    first entry of each list (MONAILabel.py, ``getParamsFromConfig``)."""
    config = info[section][name].get("config", {})
    return {k: v[0] if isinstance(v, list) else v for k, v in config.items()}


def test_every_stock_client_default_is_accepted(our_server, tmp_path):
    """The requests MONAI Label 0.8.5's own clients send with their defaults, through the real server:
    its Python client (no client_id: it sends ``"client_id": null``), its Slicer module (task configs
    echoed back, ``result_extension``/``result_dtype``) and its OHIF v3 extension (no client_id)."""
    from monailabel.client import MONAILabelClient as PythonClient

    client = PythonClient(our_server.url, tmpdir=str(tmp_path))
    info = client.info()
    sample = client.next_sample("random", {})  # {"client_id": null}
    image_id = sample["id"]
    image = nib.load(str(our_server.studies / f"{image_id}.nii.gz"))
    result_path, params = client.infer("unet3d", image_id, {})  # {"client_id": null}
    assert nib.load(result_path).shape == image.shape and params["label_names"] == info["labels"]

    # The Slicer module's click on its SmartEdit (deepgrow) model: the interactive task's config
    # echoed back with the clicks, through the module's own client library.
    slicer_client = MONAILabelClient(our_server.url, tmpdir=str(tmp_path), client_id="user-xyz")
    click = [int(n) // 2 for n in image.shape]
    smart_edit = {"label": "white_matter", "foreground": [click], "background": [],
                  **slicer_module_echo(info, "models", "interactive"),
                  "result_extension": ".nrrd", "result_dtype": "uint8"}
    edited_path, edited = slicer_client.infer("interactive", image_id, smart_edit)
    assert nib.load(edited_path).shape == image.shape and edited["label_names"] == {"white_matter": 1}

    # OHIF v3's segmentation request (output=image, its four result options, no client_id).
    ohif = {"result_extension": ".nrrd", "result_dtype": "uint8", "result_compress": False,
            "restore_label_idx": False}
    r = requests.post(f"{our_server.url}/infer/unet3d", params={"image": image_id, "output": "image"},
                      files={"params": (None, json.dumps(ohif))}, timeout=600)
    assert r.status_code == 200, r.text
    assert requests.post(f"{our_server.url}/activelearning/random", json={}, timeout=60).status_code == 200

    # A label and an image from the Python client (tag "" means final), client_id null in both.
    label_file = tmp_path / "stock_label.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(nib.load(result_path).dataobj).astype(np.uint8), image.affine), str(label_file))
    client.save_label(image_id, str(label_file), params={"label_info": [{"name": "grey_matter", "idx": 1},
                                                                         {"name": "white_matter", "idx": 2}]})
    assert (our_server.studies / "labels" / "final" / f"{image_id}.nii.gz").exists()
    client.upload_image(str(our_server.studies / f"{image_id}.nii.gz"), image_id="uploaded_by_stock_client")
    assert "uploaded_by_stock_client" in requests.get(f"{our_server.url}/datastore/?output=all", timeout=60).json()["objects"]

    # Training: the Python client's {"client_id": null}, and the Slicer module's Train button, which
    # sends the trainer's whole config back (max_iterations and max_epochs: 0 together).
    for start in (lambda: client.train_start("unet3d", dict(TINY_TRAINING)),
                  lambda: slicer_client.train_start("unet3d", {**slicer_module_echo(info, "trainers", "unet3d"),
                                                               **TINY_TRAINING})):
        start()
        status = our_server.wait_for_training(600)
        assert status["status"] == "DONE", status


@pytest.fixture(scope="module")
def stock_app_server(tmp_path_factory, sample_sets):
    if not (STOCK_RADIOLOGY_APP / "main.py").exists():
        pytest.fail(f"MONAI Label's radiology sample app is not at {STOCK_RADIOLOGY_APP}")
    root = tmp_path_factory.mktemp("stock-app")
    app = root / "radiology"
    shutil.copytree(STOCK_RADIOLOGY_APP, app, ignore=shutil.ignore_patterns("__pycache__", "model"))
    studies = make_studies(root, sample_sets)
    # From scratch (use_pretrained_model false), so nothing is downloaded; our labels and indices.
    conf = {"models": "segmentation", "labels": "grey_matter,white_matter", "use_pretrained_model": "false",
            "scribbles": "false", "sam2": "false"}
    srv = LabelServer(app, studies, conf, root, timeout_s=300)
    srv.studies = studies
    yield srv
    srv.stop()


def test_our_slicer_client_works_with_the_stock_radiology_app(stock_app_server, tmp_path):
    client = MedSegClient(stock_app_server.url, client_id="medseg-slicer")
    info = client.server_info()
    assert "segmentation" in info.segmentation_models()
    assert info.labels_for("segmentation") == LabelSet({"grey_matter": 1, "white_matter": 2})
    assert (info.labeled, info.total) == (0, 4)

    sample = client.next_sample("random")
    path, _ = fetch_sample_image(client, sample, str(tmp_path / "downloads"))
    result = client.infer("segmentation", sample["id"], dest_dir=str(tmp_path))
    image, predicted = nib.load(path), nib.load(result.path)
    assert predicted.shape == image.shape and np.allclose(predicted.affine, image.affine, atol=1e-3)
    assert set(np.unique(np.asarray(predicted.dataobj)).astype(int)) <= {0, 1, 2}  # untrained: any of them

    truth = np.zeros(image.shape, np.uint8)
    truth[10:30, 10:30, 10:30] = 1
    truth[40:50, 40:50, 40:50] = 2
    label_file = tmp_path / "final.nii.gz"
    nib.save(nib.Nifti1Image(truth, image.affine), str(label_file))
    submit_label(client, sample["id"], str(label_file), info.labels_for("segmentation"))
    stored = stock_app_server.studies / "labels" / "final" / f"{sample['id']}.nii.gz"
    assert np.array_equal(np.asarray(nib.load(str(stored)).dataobj), truth)
    assert client.server_info().labeled == 1
