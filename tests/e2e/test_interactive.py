"""Guided editing through a real server: MONAI Label's stock client, plain REST, and MedSegLib.

The image is stored in LPS orientation with anisotropic voxels (as DICOM converters write
it), so a click that selects the right object shows the indices were not converted twice.
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests

from tests.conftest import REPO, Server
from tests.e2e.helpers import datastore_state, parse_multipart_label, put_label

STOCK_SLICER_MODULE = Path(sys.prefix) / "monailabel" / "plugins" / "slicer" / "MONAILabel"
for folder in (STOCK_SLICER_MODULE, REPO / "slicer_extension" / "MedSeg"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # the stock client imports cgi
    from MONAILabelLib.client import MONAILabelClient  # noqa: E402

from MedSegLib import GuidedEdit, MedSegClient, ras_to_ijk  # noqa: E402

SHAPE = (48, 40, 24)
AFFINE = np.array([[-0.8, 0, 0, 20.0], [0, -0.8, 0, 16.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1]])
CLICK = [16, 20, 12]


def phantom():
    rng = np.random.default_rng(7)
    i, j, k = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    obj = ((i - 16) / 9) ** 2 + ((j - 20) / 8) ** 2 + ((k - 12) / 6) ** 2 <= 1
    image = np.full(SHAPE, 100.0)
    image[obj] = 300.0
    image[30:44, 8:32, 4:20] = 200.0
    return (image + rng.normal(0, 15, SHAPE)).astype(np.float32), obj


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    studies = tmp_path_factory.mktemp("interactive") / "studies"
    studies.mkdir()
    image, obj = phantom()
    nib.save(nib.Nifti1Image(image, AFFINE), str(studies / "phantom.nii.gz"))
    server = Server(studies, {"models": "unet3d", "labels": "lesion=1,liver=2", "shipped_weights": "false",
                              "shipped_interactive_weights": "false", "al_auto_scoring": "false"})
    server.obj = obj
    yield server
    server.stop()


def post(srv, params, files=None):
    return requests.post(f"{srv.url}/infer/interactive", params={"image": "phantom"},
                         data={"params": json.dumps(params)}, files=files, timeout=120)


def test_the_stock_client_lists_and_drives_the_interactive_task(srv, tmp_path):
    client = MONAILabelClient(srv.url, tmpdir=str(tmp_path), client_id="stock-slicer")
    model = client.info()["models"]["interactive"]
    assert model["type"] == "deepgrow" and model["dimension"] == 3  # the stock module's SmartEdit section
    assert model["default_method"] in model["methods"] and "bench/" in model["default_method_why"]
    assert model["default_method_on_mr"] in model["methods"]
    # What the stock module sends for a deepgrow model: label, foreground, background.
    result_path, params = client.infer("interactive", "phantom", {"label": "lesion", "foreground": [CLICK],
                                                                   "background": []})
    label = nib.load(result_path)
    assert label.shape == SHAPE and np.allclose(label.affine, AFFINE, atol=1e-4)
    assert dice(np.asarray(label.dataobj) == 1, srv.obj) > 0.85
    assert params["label_names"] == {"lesion": 1}

    # Scribbles as the stock module uploads them (foreground 3, background 2) on the image grid.
    scribbles = np.zeros(SHAPE, np.uint8)
    scribbles[14:19, 20, 12] = 3
    scribbles[36, 10:30, 12] = 2
    scribbles[2, 2:30, 12] = 2
    nib.save(nib.Nifti1Image(scribbles, AFFINE), str(tmp_path / "scribbles.nii.gz"))
    result_path, _ = client.infer("interactive", "phantom", {}, label_in=str(tmp_path / "scribbles.nii.gz"))
    assert dice(np.asarray(nib.load(result_path).dataobj) == 1, srv.obj) > 0.85


@pytest.mark.parametrize("params, message", [
    ({"foreground": [[48, 0, 0]]}, "outside the image"),
    ({"foreground": [[1.5, 0, 0]]}, "whole voxel index"),
    ({"foreground": [], "background": []}, "needs guidance"),
    ({"box": [[2, 2, 2], [9, 2, 2]]}, "a line or a point"),
    ({"foreground": [CLICK], "label": "spleen"}, "not one of this app's labels"),
    ({"foreground": [CLICK], "prior_path": "/etc/passwd"}, "set by the server"),
    ({"foreground": [CLICK], "label": "liver", "prior_tag": "nosuchtag"}, "no label tagged"),
    ({"foreground": [CLICK], "changed_region_only": "maybe"}, "changed_region_only"),
    ({"foreground": [CLICK], "edit_id": "../x"}, "edit_id must be"),
    ({"foreground": [CLICK], "continue_edit": True}, "needs the edit_id"),
])
def test_bad_guidance_gets_422_and_changes_nothing(srv, params, message):
    before = datastore_state(srv.url)
    r = post(srv, params)
    expected = 404 if "prior_tag" in params else 422  # a label that does not exist is not found
    assert r.status_code == expected and message in r.json()["detail"], r.text
    assert datastore_state(srv.url) == before


def test_scribbles_on_another_grid_get_422(srv, tmp_path):
    wrong = tmp_path / "wrong.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((48, 40, 23), np.uint8), AFFINE), str(wrong))
    with open(wrong, "rb") as f:
        r = post(srv, {}, files={"label": ("wrong.nii.gz", f)})
    assert r.status_code == 422 and "not on the image's grid" in r.json()["detail"]


ISLAND = (slice(38, 42), slice(10, 14), slice(8, 12))  # a false piece of "liver" in the neighbouring structure


def store_liver_with_an_island(srv, tmp_path) -> np.ndarray:
    """The phantom's object stored as its final "liver" label, plus ISLAND; the stored label."""
    stored = np.where(srv.obj, 2, 0).astype(np.uint8)
    stored[ISLAND] = 2
    path = tmp_path / "final.nii.gz"
    nib.save(nib.Nifti1Image(stored, AFFINE), str(path))
    assert put_label(srv.url, "phantom", path).status_code == 200
    return stored


def test_a_click_refines_the_stored_label_only_near_it(srv, tmp_path):
    stored = store_liver_with_an_island(srv, tmp_path)
    r = post(srv, {"background": [[40, 12, 10]], "label": "liver", "prior_tag": "final"})
    assert r.status_code == 200, r.text
    label, params = parse_multipart_label(r)
    mask = np.asarray(label.dataobj) == 1
    assert params["refined"] and not mask[ISLAND].any()
    region = tuple(slice(a, b) for a, b in params["region_vox"])
    outside = np.ones(SHAPE, bool)
    outside[region] = False
    assert np.array_equal(mask[outside], (stored == 2)[outside])
    # Only the changed region, when asked: a crop of the same answer that lies where it belongs.
    crop, crop_params = parse_multipart_label(post(srv, {"background": [[40, 12, 10]], "label": "liver",
                                                         "prior_tag": "final", "changed_region_only": True}))
    assert crop_params["label_grid"] == "changed_region" and params["label_grid"] == "image"
    assert crop.shape == tuple(s.stop - s.start for s in region)
    assert np.array_equal(np.asarray(crop.dataobj) == 1, mask[region])
    first_voxel_mm = AFFINE @ np.array([*[s.start for s in region], 1.0])
    assert np.allclose(crop.affine[:, 3], first_voxel_mm, atol=1e-4)
    assert np.allclose(crop.affine[:3, :3], AFFINE[:3, :3], atol=1e-6)
    # The stored label is the clinician's: an edit answers with a new label and stores nothing.
    assert np.array_equal(np.asarray(nib.load(str(srv.studies / "labels" / "final" / "phantom.nii.gz")).dataobj),
                          stored)


def test_an_edit_continues_without_the_prior_when_the_client_says_so(srv, tmp_path, method="seeded"):
    """The browser sends the segment as the prior once per edit, then continue_edit: the same
    answer as sending the prior again, and 409 once the server does not remember the edit. (This
    server has no learned weights; the memory of edits is the same for both methods.)"""
    stored = store_liver_with_an_island(srv, tmp_path)
    prior = tmp_path / "prior.nii.gz"
    nib.save(nib.Nifti1Image(stored, AFFINE), str(prior))
    first = {"background": [[40, 12, 10]], "label": "liver", "label_kind": "prior", "method": method,
             "edit_id": f"edit-{method}"}
    with open(prior, "rb") as f:
        r = post(srv, first, files={"label": ("prior.nii.gz", f)})
    assert r.status_code == 200, r.text
    once, _ = parse_multipart_label(r)
    after_first = np.where(np.asarray(once.dataobj) == 1, 2, 0).astype(np.uint8)
    second = {**first, "foreground": [[20, 20, 12]], "background": [[40, 12, 10], [2, 2, 2]]}
    r = post(srv, {**second, "continue_edit": True})
    assert r.status_code == 200, r.text
    continued, params = parse_multipart_label(r)
    assert params["continued_edit"] and params["refined"]
    mask = np.asarray(continued.dataobj) == 1
    assert not mask[ISLAND].any() and mask[20, 20, 12], "the first click's work kept, the second's added"
    # the same answer as a client that uploads its segment again with the second request
    nib.save(nib.Nifti1Image(after_first, AFFINE), str(prior))
    with open(prior, "rb") as f:
        again, _ = parse_multipart_label(post(srv, second, files={"label": ("prior.nii.gz", f)}))
    assert np.array_equal(np.asarray(continued.dataobj), np.asarray(again.dataobj))
    before = datastore_state(srv.url)
    forgotten = post(srv, {**second, "edit_id": "never-started", "continue_edit": True})
    assert forgotten.status_code == 409 and "send the segment again as the prior" in forgotten.json()["detail"]
    assert datastore_state(srv.url) == before


def test_medseglib_guided_edit_clicks_and_undo(srv, tmp_path):
    client = MedSegClient(srv.url, client_id="medseg-slicer")
    # The widget's conversion: a RAS point of the clicked voxel's centre back to its indices.
    ras_to_ijk_matrix = np.linalg.inv(AFFINE * np.array([-1, -1, 1, 1])[:, None]).tolist()  # LPS file, RAS world
    ras = (np.diag([-1, -1, 1, 1]) @ AFFINE @ np.array([*CLICK, 1.0]))[:3]
    assert ras_to_ijk(ras_to_ijk_matrix, ras) == CLICK

    edit = GuidedEdit(client, "phantom", label="lesion", dest_dir=str(tmp_path))
    edit.add_click(CLICK)
    first = edit.run()
    mask = np.asarray(nib.load(first.path).dataobj) == 1
    assert dice(mask, srv.obj) > 0.85 and edit.last_latency_s is not None
    edit.add_click([16, 20, 17], foreground=False)  # a background click inside: the object shrinks
    second = edit.run()
    assert (np.asarray(nib.load(second.path).dataobj) == 1).sum() < mask.sum()
    assert edit.undo() is first and edit.params()["background"] == []
    assert edit.effort()["interactions"] == 2
    assert edit.undo() is None and edit.run() is None  # nothing left to undo or send


def as_slicer_array(ijk_array: np.ndarray) -> np.ndarray:
    """Slicer's arrayFromVolume order: (k, j, i)."""
    return np.ascontiguousarray(np.asarray(ijk_array).transpose(2, 1, 0))


def test_the_modules_edit_corrects_the_segment_it_starts_from(srv, tmp_path):
    """The Slicer module's guided edit (MedSegLib, as the widget drives it): the segment shown (a
    prediction with a false island) is the prior; a background click on the island removes it and
    keeps the rest; only the changed region comes back and is pasted where it lies; undo restores
    the segment exactly; answers for another target or an undone click are dropped."""
    from MedSegLib import AnswerTarget

    segment_ijk = srv.obj.astype(np.uint8)
    segment_ijk[ISLAND] = 1
    prior = tmp_path / "segment_as_shown.nii.gz"
    nib.save(nib.Nifti1Image(segment_ijk, AFFINE), str(prior))
    segment = as_slicer_array(segment_ijk)  # what the widget holds
    shown = segment.copy()
    target = AnswerTarget("phantom", "vtkMRMLSegmentationNode1", "lesion")
    client = MedSegClient(srv.url, client_id="medseg-slicer")
    edit = GuidedEdit(client, "phantom", label="lesion", dest_dir=str(tmp_path), prior_path=str(prior),
                      target=target, changed_region_only=True)

    edit.add_click([40, 12, 10], foreground=False)  # the island's middle, "where the result is wrong"
    request = edit.request()
    edit.add_click([40, 12, 9], foreground=False)  # placed while the first request runs: not in it
    assert request.params["background"] == [[40, 12, 10]] and request.params["label_kind"] == "prior"
    answer = edit.send(request)
    assert edit.accept(request, answer, AnswerTarget("phantom", "vtkMRMLSegmentationNode2", "lesion")) is None
    result = edit.accept(request, answer, target)  # the later click extends it: still worth showing
    assert result is not None and result.params["label_grid"] == "changed_region" and result.params["refined"]
    crop = as_slicer_array(np.asarray(nib.load(result.path).dataobj))
    assert crop.size < segment.size  # the 25 mm around the click, not the whole volume
    region = edit.apply(segment, crop, result.params)
    after_ijk = segment.transpose(2, 1, 0)
    assert not after_ijk[ISLAND].any()  # the island is gone ...
    assert dice(after_ijk > 0, srv.obj) > 0.95  # ... and the structure kept (it was wiped without the prior)
    outside = np.ones(segment.shape, bool)
    outside[region] = False
    assert np.array_equal(segment[outside], shown[outside])

    # An answer to a click that was undone meanwhile is dropped; undo restores the segment exactly.
    late = edit.request()
    late_answer = edit.send(late)
    edit.undo(segment)  # the second click: the first click's answer stays
    assert edit.accept(late, late_answer, target) is None and not segment.transpose(2, 1, 0)[ISLAND].any()
    edit.undo(segment)  # the first: its pasted answer is taken out
    assert np.array_equal(segment, shown) and edit.request() is None


def test_the_effort_of_a_label_is_kept_with_its_version(srv, tmp_path):
    from MedSegLib import LabelSet, submit_label

    client = MedSegClient(srv.url, client_id="medseg-slicer")
    edit = GuidedEdit(client, "phantom", label="lesion", dest_dir=str(tmp_path))
    edit.add_click(CLICK)
    result = edit.run()
    effort = {"interactions": edit.effort()["interactions"], "seconds": 12.5}
    submit_label(client, "phantom", result.path, LabelSet({"lesion": 1, "liver": 2}), effort=effort)
    versions = requests.get(f"{srv.url}/medseg/labels/phantom/versions", timeout=30).json()
    latest = versions["versions"][-1] if isinstance(versions, dict) else versions[-1]
    assert latest["effort"] == {"interactions": 1, "seconds": 12.5} and latest["structures"] == ["lesion"]
    # the effort report: per structure, in the order the labels were submitted (JSON and a page)
    report = requests.get(f"{srv.url}/medseg/effort", timeout=30).json()
    lesion = report["per_structure"]["lesion"]
    assert lesion[-1]["image"] == "phantom" and lesion[-1]["interactions"] == 1 and lesion[-1]["seconds"] == 12.5
    assert [row["n"] for row in lesion] == list(range(1, len(lesion) + 1))
    assert report["summary"]["lesion"]["latest_interactions"] == 1
    page = requests.get(f"{srv.url}/medseg/effort", params={"format": "html"}, timeout=30)
    assert page.status_code == 200 and "<h2>lesion</h2>" in page.text and "<svg" in page.text
    assert "script-src" not in page.headers["content-security-policy"] and "<script" not in page.text
    assert requests.get(f"{srv.url}/medseg/effort", params={"format": "pdf"}, timeout=30).status_code == 422

    before = datastore_state(srv.url)
    for bad in ({"interactions": -1}, {"interactions": 1.5}, {"minutes": 3}, "lots"):
        r = put_label(srv.url, "phantom", Path(result.path), params={"effort": bad})
        assert r.status_code == 422 and "effort" in r.json()["detail"], r.text
    assert datastore_state(srv.url) == before
