"""A user's own CT anatomy from scratch: the real chest CT and its Slicer segmentation through REST.

The slicerio wheel ships CTChest4.nrrd (128x128x34 at 3x3x10 mm, HU) and Segmentation.seg.nrrd
(7 named segments). They go in as Slicer saves them (.nrrd, .seg.nrrd), the server starts with
CT labels of its own, and a tiny training run must plan for this CPU, say that one image gives
no held-out validation, and segment the CT on its own grid.
"""
import json
from importlib import resources

import nibabel as nib
import numpy as np
import pytest
import requests

from tests.e2e.helpers import TINY_TRAINING, infer, put_label

pytestmark = pytest.mark.e2e
DATA = resources.files("slicerio") / "data"
# Written without quotes or spaces: segment names match with '_' for ' ' (see medseg.nrrd_files).
CHEST_LABELS = ("ribs=1,cervical_vertebral_column=2,thoracic_vertebral_column=3,lumbar_vertebral_column=4,"
                "right_lung=5,left_lung=6,tissue=7")


@pytest.fixture(scope="module")
def ct_server(tmp_path_factory):
    from tests.conftest import Server

    studies = tmp_path_factory.mktemp("ct") / "studies"
    studies.mkdir()
    srv = Server(studies, {"models": "unet3d", "labels": CHEST_LABELS, "modality": "CT",
                           "shipped_weights": "false"})
    yield srv
    srv.stop()


def test_slicer_files_train_from_scratch_and_segment_the_ct_on_its_grid(ct_server):
    url = ct_server.url
    with open(DATA / "CTChest4.nrrd", "rb") as f:
        r = requests.put(f"{url}/datastore/image", params={"image": "chest_ct"},
                         files={"file": ("CTChest4.nrrd", f)}, timeout=120)
    assert r.status_code == 200, r.text
    r = put_label(url, "chest_ct", DATA / "Segmentation.seg.nrrd")
    assert r.status_code == 200, r.text
    stored = nib.load(ct_server.studies / "labels" / "final" / "chest_ct.nii.gz")
    image = nib.load(ct_server.studies / "chest_ct.nii.gz")
    assert stored.shape == image.shape == (128, 128, 34) and np.allclose(stored.affine, image.affine)
    counts = np.bincount(np.asarray(stored.dataobj).ravel(), minlength=8)
    assert (counts[1:8] > 0).all()  # every segment arrived under its name's index

    # A segmentation is not an image, and a segment this server has no label for is refused.
    with open(DATA / "Segmentation.seg.nrrd", "rb") as f:
        r = requests.put(f"{url}/datastore/image", params={"image": "seg_as_image"},
                         files={"file": ("Segmentation.seg.nrrd", f)}, timeout=60)
    assert r.status_code == 422 and "segmentation" in r.text

    r = requests.post(f"{url}/train/unet3d", json={**TINY_TRAINING, "max_iterations": 3}, timeout=60)
    assert r.status_code == 200, r.text
    status = ct_server.wait_for_training()
    assert status["status"] == "DONE", status
    stats = requests.get(f"{url}/info/", timeout=30).json()["train_stats"]["unet3d"]
    assert stats["held_out_validation"] is False and "not held out" in stats["validation_note"]
    assert stats["from_scratch"] is True
    plan = stats["plan"]
    assert plan["planned_for"] == "cpu" and plan["normalization"] == "ct" and max(plan["features"]) <= 64

    label, params = infer(url, "unet3d", "chest_ct")
    assert label.shape == image.shape and np.allclose(label.affine, image.affine)
    assert set(np.unique(np.asarray(label.dataobj))) <= set(range(8))
    assert sorted(params["label_names"].values()) == list(range(1, 8))


def test_a_segment_without_a_label_is_refused_and_nothing_is_stored(ct_server, tmp_path):
    import nrrd

    header = nrrd.read_header(str(DATA / "Segmentation.seg.nrrd"))
    data, _ = nrrd.read(str(DATA / "Segmentation.seg.nrrd"))
    header["Segment6_Name"] = "liver"
    nrrd.write(str(tmp_path / "other.seg.nrrd"), data, header)
    before = (ct_server.studies / "labels" / "final" / "chest_ct.nii.gz").read_bytes()
    r = put_label(ct_server.url, "chest_ct", tmp_path / "other.seg.nrrd")
    assert r.status_code == 422 and "liver" in r.text, r.text
    assert (ct_server.studies / "labels" / "final" / "chest_ct.nii.gz").read_bytes() == before
    assert json.loads(r.text)  # a JSON error, as every 4xx
