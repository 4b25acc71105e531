"""The learned interactive model through a real server: shipped weights, continued edits, and
``POST /train/interactive`` on the datastore's final labels.

The phantom holds an object no weights were trained on (an ellipsoid of its own contrast next
to a block of another), stored in LPS with 0.8 x 0.8 x 2.5 mm voxels, and again on an oblique
grid: a click on the object selecting it shows the indices reach the network unconverted.
"""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import requests

from medseg.pipeline.seeded import REFINE_RADIUS_MM
from tests.conftest import Server
from tests.e2e.helpers import datastore_state, parse_multipart_label, put_label
from tests.e2e.test_interactive import AFFINE, CLICK, ISLAND, SHAPE, dice, phantom, store_liver_with_an_island

ISLAND_CLICK = [40, 12, 10]  # inside ISLAND

OBLIQUE = np.array([[0.0, -1.0, 0.2, 10.0], [0.9, 0.0, 0.0, -5.0], [0.0, 0.3, 2.4, 7.0], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    studies = tmp_path_factory.mktemp("interactive_learned") / "studies"
    studies.mkdir()
    image, obj = phantom()
    nib.save(nib.Nifti1Image(image, AFFINE), str(studies / "phantom.nii.gz"))
    nib.save(nib.Nifti1Image(image, OBLIQUE), str(studies / "oblique.nii.gz"))
    as_ct = np.where(image < 150, -1000.0, image - 60)  # the same objects in air, as Hounsfield units
    nib.save(nib.Nifti1Image(as_ct.astype(np.float32), AFFINE), str(studies / "as_ct.nii.gz"))
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(studies / "one_mm.nii.gz"))
    server = Server(studies, {"models": "unet3d", "labels": "lesion=1,liver=2"})
    server.obj = obj
    yield server
    server.stop()


def post(srv, params, image="phantom"):
    return requests.post(f"{srv.url}/infer/interactive", params={"image": image},
                         data={"params": json.dumps({"method": "learned", **params})}, timeout=120)


@pytest.mark.parametrize("image", ["phantom", "oblique"])
def test_one_click_on_an_unseen_object_selects_it_with_the_shipped_weights(srv, image):
    info = requests.get(f"{srv.url}/info/", timeout=30).json()["models"]["interactive"]
    assert info["methods"] == {"learned": True, "seeded": True}
    r = post(srv, {"foreground": [CLICK], "label": "lesion"}, image)
    assert r.status_code == 200, r.text
    label, params = parse_multipart_label(r)
    assert params["method"] == "learned" and label.shape == SHAPE
    mask = np.asarray(label.dataobj) == 1
    # The clicked object, and not its neighbour: a click converted on the way would miss both.
    # (On these 2.5 mm slices the shipped weights overshoot it by a slice or two at each end; the
    # weights retrained on gliomas, whose whole tumours are large, overshoot further and reach
    # into the neighbouring block 4 mm away: about 4% of its voxels, measured 2026-12-07.)
    assert (mask & srv.obj).sum() > 0.9 * srv.obj.sum() and mask[30:44, 8:32, 4:20].mean() < 0.1
    assert dice(mask, srv.obj) > 0.6


def test_a_request_that_names_no_method_gets_the_one_measured_best_for_it(srv, tmp_path):
    """learned on MR (clicks that start an object without a box only on slices of at most 1.5 mm;
    clicks that correct a prior on any), seeded on CT and for scribbles; GET /info/ says which and why."""
    info = requests.get(f"{srv.url}/info/", timeout=30).json()["models"]["interactive"]
    assert (info["default_method"], info["default_method_on_mr"]) == ("seeded", "learned")
    assert info["learned_clicks_max_slice_mm"] == 1.5 and "1.5 mm" in info["default_method_why"]
    box = [[7, 12, 6], [25, 28, 18]]
    store_liver_with_an_island(srv, tmp_path)  # a stored "liver" and no "lesion": a prior, and an empty one
    asked = {"1 mm MR, a click": ("one_mm", {"foreground": [CLICK]}),
             "2.5 mm MR, a click": ("phantom", {"foreground": [CLICK]}),
             "2.5 mm MR, a box": ("phantom", {"box": box}),
             "2.5 mm MR, a click correcting a prior": ("phantom", {"background": [ISLAND_CLICK], "label": "liver",
                                                                   "prior_tag": "final"}),
             "2.5 mm MR, a click on an empty prior": ("phantom", {"foreground": [CLICK], "prior_tag": "final"}),
             "CT, a click": ("as_ct", {"foreground": [CLICK]}),
             "CT, a box": ("as_ct", {"box": box})}
    answered = {}
    for case, (image, params) in asked.items():
        r = requests.post(f"{srv.url}/infer/interactive", params={"image": image},
                          data={"params": json.dumps({"label": "lesion", **params})}, timeout=120)
        assert r.status_code == 200, (case, r.text)
        answered[case] = parse_multipart_label(r)[1]["method"]
    scribbles = np.zeros(SHAPE, np.uint8)
    scribbles[15:18, 19:22, 11:14] = 3  # MONAI Label's foreground scribble value
    path = tmp_path / "scribbles.nii.gz"
    nib.save(nib.Nifti1Image(scribbles, np.eye(4)), str(path))
    with open(path, "rb") as f:
        r = requests.post(f"{srv.url}/infer/interactive", params={"image": "one_mm"},
                          data={"params": json.dumps({"label": "lesion"})}, files={"label": f}, timeout=120)
    assert r.status_code == 200, r.text
    answered["1 mm MR, scribbles"] = parse_multipart_label(r)[1]["method"]
    assert answered == {"1 mm MR, a click": "learned", "2.5 mm MR, a click": "seeded", "2.5 mm MR, a box": "learned",
                        "2.5 mm MR, a click correcting a prior": "learned", "2.5 mm MR, a click on an empty prior": "seeded",
                        "CT, a click": "seeded", "CT, a box": "seeded", "1 mm MR, scribbles": "seeded"}


def test_an_edit_that_corrects_a_prior_keeps_its_method_when_it_continues_without_it(srv, tmp_path):
    """The browser's way: the label map as the prior with the first click, then continue_edit and
    no prior. On 2.5 mm slices the default for a correction (learned) is not the default for
    clicks without a prior (seeded), so the continued request must go on with the edit's method,
    not answer 409 on every click."""
    stored = store_liver_with_an_island(srv, tmp_path)
    prior = tmp_path / "prior.nii.gz"
    nib.save(nib.Nifti1Image(stored, AFFINE), str(prior))
    first = {"background": [ISLAND_CLICK], "label": "liver", "label_kind": "prior", "edit_id": "browser-edit"}
    with open(prior, "rb") as f:
        r = requests.post(f"{srv.url}/infer/interactive", params={"image": "phantom"},
                          data={"params": json.dumps(first)}, files={"label": ("prior.nii.gz", f)}, timeout=120)
    assert r.status_code == 200, r.text
    assert parse_multipart_label(r)[1]["method"] == "learned"
    second = {**first, "foreground": [CLICK], "continue_edit": True}
    del second["label_kind"]
    r = requests.post(f"{srv.url}/infer/interactive", params={"image": "phantom"},
                      data={"params": json.dumps(second)}, timeout=120)
    assert r.status_code == 200, r.text
    _, params = parse_multipart_label(r)
    assert params["method"] == "learned" and params["continued_edit"] is True


def test_a_continued_edit_starts_from_its_last_answer(srv):
    first = parse_multipart_label(post(srv, {"foreground": [CLICK], "label": "liver"}))
    second = post(srv, {"foreground": [CLICK], "background": [[37, 20, 12]], "label": "liver"})
    label, params = parse_multipart_label(second)
    assert params["continued_edit"] and not first[1]["continued_edit"]
    region = tuple(slice(a, b) for a, b in params["region_vox"])
    outside = np.ones(SHAPE, bool)
    outside[region] = False
    before = np.asarray(first[0].dataobj) == 1
    assert np.array_equal((np.asarray(label.dataobj) == 1)[outside], before[outside])


def test_scribbles_ask_for_the_seeded_method_and_bad_methods_get_422(srv, tmp_path):
    scribbles = tmp_path / "scribbles.nii.gz"
    values = np.zeros(SHAPE, np.uint8)
    values[14:19, 20, 12] = 3
    nib.save(nib.Nifti1Image(values, AFFINE), str(scribbles))
    with open(scribbles, "rb") as f:
        r = requests.post(f"{srv.url}/infer/interactive", params={"image": "phantom"},
                          data={"params": json.dumps({"method": "learned"})},
                          files={"label": ("scribbles.nii.gz", f)}, timeout=120)
    assert r.status_code == 422 and "scribbles need method seeded" in r.json()["detail"]
    r = post(srv, {"foreground": [CLICK], "method": "magic"})
    assert r.status_code == 422 and "method" in r.json()["detail"]


def test_a_learned_correction_of_the_stored_label_only_takes_away_near_a_background_click(srv, tmp_path):
    stored = store_liver_with_an_island(srv, tmp_path)
    click = [40, 12, 10]
    r = post(srv, {"background": [click], "label": "liver", "prior_tag": "final"})
    assert r.status_code == 200, r.text
    label, params = parse_multipart_label(r)
    mask, before = np.asarray(label.dataobj) == 1, stored == 2
    assert params["refined"] and params["zoom_outs"] == 0
    assert not (mask & ~before).any()  # a background click never adds
    spacing = np.abs(np.diag(AFFINE)[:3])
    distance_mm = np.sqrt((((np.indices(SHAPE).transpose(1, 2, 3, 0) - click) * spacing) ** 2).sum(-1))
    far = distance_mm > REFINE_RADIUS_MM
    assert np.array_equal(mask[far], before[far])  # a prediction is corrected where it was clicked, nowhere else
    assert mask[ISLAND].sum() < 0.5 * 64  # and the clicked island is mostly gone


def test_the_interactive_model_trains_on_the_final_labels_through_rest(srv, tmp_path):
    before = datastore_state(srv.url)
    for bad in ({"max_iterations": -1}, {"max_epochs": 3}, {"publish": "sometimes"}):
        r = requests.post(f"{srv.url}/train/interactive", json=bad, timeout=30)
        assert r.status_code == 422, (bad, r.text)
    assert datastore_state(srv.url) == before

    label = np.where(srv.obj, 1, 0).astype(np.uint8)
    label[30:44, 8:32, 4:20] = 2
    path = tmp_path / "final.nii.gz"
    nib.save(nib.Nifti1Image(label, AFFINE), str(path))
    assert put_label(srv.url, "phantom", path).status_code == 200
    shipped = requests.get(f"{srv.url}/info/", timeout=30).json()["models"]["interactive"]["weights_version"]
    r = requests.post(f"{srv.url}/train/interactive", json={"max_iterations": 3}, timeout=60)
    assert r.status_code == 200, r.text
    status = srv.wait_for_training(600)
    assert status.get("status") == "DONE", status
    stats = requests.get(f"{srv.url}/info/", timeout=30).json()["train_stats"]["interactive"]
    assert stats["status"] == "DONE" and stats["objects"] == 2 and stats["iterations"] == 3
    assert stats["published"] and not stats["held_out_validation"]  # one image: no gate, and it says so
    now = requests.get(f"{srv.url}/info/", timeout=30).json()["models"]["interactive"]["weights_version"]
    assert now == stats["version"] and now > (shipped or 0)
    r = post(srv, {"foreground": [CLICK], "label": "lesion"})
    assert r.status_code == 200 and parse_multipart_label(r)[1]["weights_version"] == now


def test_the_slicer_logic_lists_the_methods_and_sends_the_chosen_one(srv, tmp_path):
    from MedSegLib import INTERACTIVE_MODEL, GuidedEdit, MedSegClient

    client = MedSegClient(srv.url, client_id="medseg-slicer")
    # The module's method menu: what the server's interactive task says it can use now.
    assert client.server_info().interactive_methods(INTERACTIVE_MODEL) == ["learned", "seeded"]
    edit = GuidedEdit(client, "phantom", label="lesion", dest_dir=str(tmp_path), method="learned")
    edit.add_click(CLICK)
    result = edit.run()
    assert result.params["method"] == "learned"
    assert dice(np.asarray(nib.load(result.path).dataobj) == 1, srv.obj) > 0.6
