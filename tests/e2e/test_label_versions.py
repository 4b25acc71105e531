"""Label versions and Dice scoring through a real server: nothing a clinician submits is lost."""
import io
import time

import nibabel as nib
import numpy as np
import pytest
import requests

from tests.conftest import Server, make_studies
from tests.e2e.helpers import datastore_state, gunzip_if_needed, infer, put_label

LABELS = {"grey_matter": 1, "white_matter": 2}


@pytest.fixture(scope="module")
def versions_server(tmp_path_factory, sample_sets):
    studies = make_studies(tmp_path_factory.mktemp("versions-server"), sample_sets)
    srv = Server(studies, {"models": "unet3d"})
    yield srv
    srv.stop()


def edited_labels(sample_sets, image_id, tmp_path, n=3):
    """``n`` different valid labels for ``image_id``: the ground truth with growing edits."""
    truth = nib.load(sample_sets["studies"] / "labels" / f"{image_id}.nii.gz")
    data = np.asarray(truth.dataobj).astype(np.uint8)
    paths = []
    for i in range(n):
        edited = data.copy()
        edited[: 10 * i] = 0  # the clinician erased a growing slab
        path = tmp_path / f"{image_id}_edit{i}.nii.gz"
        nib.save(nib.Nifti1Image(edited, truth.affine), path)
        paths.append(path)
    return paths


def as_array(content: bytes) -> np.ndarray:
    fh = nib.FileHolder(fileobj=io.BytesIO(gunzip_if_needed(content)))
    return np.asarray(nib.Nifti1Image.from_file_map({"header": fh, "image": fh}).dataobj)


def final_label(url, image_id, tag="final") -> bytes:
    r = requests.get(f"{url}/datastore/label", params={"label": image_id, "tag": tag}, timeout=60)
    r.raise_for_status()
    return r.content


def history(url, image_id) -> list[dict]:
    r = requests.get(f"{url}/datastore/image/info", params={"image": image_id}, timeout=30)
    r.raise_for_status()
    return r.json()["label_versions"]


def version_file(url, image_id, version) -> requests.Response:
    return requests.get(f"{url}/medseg/labels/{image_id}/versions/{version}", timeout=60)


def restore(url, image_id, version, client_id=None) -> requests.Response:
    return requests.post(f"{url}/medseg/labels/{image_id}/versions/{version}/restore",
                         json={"client_id": client_id} if client_id else None, timeout=60)


def studies_files(server) -> dict:
    return {str(p.relative_to(server.studies)): p.read_bytes() for p in sorted(server.studies.rglob("*"))
            if p.is_file() and ".medseg" not in p.parts and p.name != ".lock"}


def test_versions_accumulate_and_can_be_restored(versions_server, sample_sets, tmp_path):
    url, image_id = versions_server.url, "subject_000"
    uploads = edited_labels(sample_sets, image_id, tmp_path)
    for i, path in enumerate(uploads):
        r = put_label(url, image_id, path, params={"client_id": f"slicer-{i}"})
        assert r.status_code == 200, r.text

    versions = history(url, image_id)
    assert [(v["version"], v["client_id"], v["source"]) for v in versions] == [
        (1, "slicer-0", "upload"), (2, "slicer-1", "upload"), (3, "slicer-2", "upload")]
    assert all(v["original_model_version"] is None for v in versions)  # no original label for this image
    listed = requests.get(f"{url}/medseg/labels/{image_id}/versions", timeout=30).json()
    assert listed == {"image": image_id, "tag": "final", "versions": versions}
    for i, path in enumerate(uploads):
        r = version_file(url, image_id, i + 1)
        assert r.status_code == 200 and r.content == path.read_bytes()
    assert final_label(url, image_id) == uploads[2].read_bytes()

    r = restore(url, image_id, 1, client_id="reviewer")
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 4 and r.json()["restored_from"] == 1
    restored = final_label(url, image_id)
    assert restored == uploads[0].read_bytes()
    assert np.array_equal(as_array(restored), np.asarray(nib.load(uploads[0]).dataobj))
    versions = history(url, image_id)
    assert [(v["version"], v["source"], v.get("restored_from"), v["client_id"]) for v in versions][-1] == (
        4, "restore", 1, "reviewer")
    assert version_file(url, image_id, 3).content == uploads[2].read_bytes()  # the replaced label is kept
    state = datastore_state(url)
    assert state["objects"][image_id]["labels"]["final"]["info"]["version"] == 4


def test_unknown_images_and_versions_are_refused_and_change_nothing(versions_server, sample_sets, tmp_path):
    url, image_id = versions_server.url, "subject_001"
    assert put_label(url, image_id, edited_labels(sample_sets, image_id, tmp_path, n=1)[0]).status_code == 200
    before = datastore_state(url), studies_files(versions_server)

    assert restore(url, image_id, 99).status_code == 404
    assert "99" in restore(url, image_id, 99).json()["detail"]
    assert restore(url, image_id, 0).status_code == 404
    assert restore(url, image_id, "latest").status_code == 422
    assert restore(url, "ghost", 1).status_code == 404
    assert version_file(url, image_id, 2).status_code == 404
    assert requests.get(f"{url}/medseg/labels/ghost/versions", timeout=30).status_code == 404
    assert requests.get(f"{url}/datastore/image/info", params={"image": image_id}, timeout=30).status_code == 200

    assert (datastore_state(url), studies_files(versions_server)) == before


def test_invalid_label_adds_no_version_and_changes_nothing(versions_server, sample_sets, tmp_path):
    url, image_id = versions_server.url, "subject_001"
    if not history(url, image_id):
        assert put_label(url, image_id, edited_labels(sample_sets, image_id, tmp_path, n=1)[0]).status_code == 200
    before = history(url, image_id), datastore_state(url), studies_files(versions_server)

    image = nib.load(versions_server.studies / f"{image_id}.nii.gz")
    small = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros([s - 1 for s in image.shape], np.uint8), image.affine), small)
    r = put_label(url, image_id, small, params={"client_id": "slicer"})
    assert r.status_code == 422
    assert "differs from the image size" in r.json()["detail"]
    r = put_label(url, image_id, small, tag="versions")
    assert r.status_code == 422

    assert (history(url, image_id), datastore_state(url), studies_files(versions_server)) == before


def wait_for_scoring(url, task_id=None, timeout_s=300) -> dict | None:
    """Wait until no scoring task runs (the server starts one itself); return task ``task_id``."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        tasks = requests.get(f"{url}/scoring/", params={"all": True}, timeout=30)
        tasks = tasks.json() if tasks.status_code == 200 else []
        running = [t for t in tasks if t["status"] in ("SUBMITTED", "RUNNING")]
        if not running:
            return next((t for t in tasks if t["id"] == task_id), None)
        time.sleep(1)
    raise TimeoutError("scoring did not finish")


def test_dice_scoring_records_how_much_the_clinician_changed(versions_server, sample_sets, tmp_path):
    url, image_id = versions_server.url, "subject_002"
    # The model's label, saved by infer as MONAI Label does it: tag 'original'.
    prediction, params = infer(url, "unet3d", image_id, save_label=True)
    assert params["model_version"] is not None
    original = as_array(final_label(url, image_id, tag="original"))
    assert np.array_equal(original, np.asarray(prediction.dataobj))

    truth_path = sample_sets["studies"] / "labels" / f"{image_id}.nii.gz"
    assert put_label(url, image_id, truth_path, params={"client_id": "slicer"}).status_code == 200
    version = history(url, image_id)[-1]
    assert (version["original_model"], version["original_model_version"]) == ("unet3d", params["model_version"])

    wait_for_scoring(url)
    r = requests.post(f"{url}/scoring/dice", timeout=60)
    assert r.status_code == 200, r.text
    task = wait_for_scoring(url, r.json()["id"])
    assert task["status"] == "DONE", task

    objects = datastore_state(url)["objects"]
    dice = objects[image_id]["image"]["info"]["dice"]
    truth = np.asarray(nib.load(truth_path).dataobj)
    for name, idx in LABELS.items():
        p, t = original == idx, truth == idx
        assert dice["per_label"][name] == pytest.approx(2 * np.logical_and(p, t).sum() / (p.sum() + t.sum()))
        assert 0.5 < dice["per_label"][name] < 1.0
    assert dice["final_version"] == 1 and dice["original_model_version"] == params["model_version"]
    assert "dice" not in objects["subject_000"]["image"]["info"]  # final only, no original: nothing to compare
