"""Bad input gets a clear 4xx answer and changes nothing in the datastore."""

import nibabel as nib
import numpy as np
import pytest
import requests

from tests.e2e.helpers import datastore_state, put_label


@pytest.fixture
def unchanged(server):
    """Asserts the datastore index and the files on disk are the same after the test."""
    def snapshot():
        files = sorted(str(p.relative_to(server.studies)) for p in server.studies.rglob("*")
                       if p.is_file() and ".medseg" not in p.parts and p.name != ".lock")
        return datastore_state(server.url), files

    before = snapshot()
    yield
    assert snapshot() == before


def test_unknown_image_id_is_404(server, unchanged):
    r = requests.post(f"{server.url}/infer/unet3d", params={"image": "no_such_image"}, timeout=60)
    assert r.status_code == 404
    assert "no_such_image" in r.json()["detail"]


def test_unknown_model_is_rejected(server, unchanged):
    r = requests.post(f"{server.url}/infer/not_a_model", params={"image": "subject_000"}, timeout=60)
    assert r.status_code == 404
    assert "not_a_model" in r.json()["detail"] and "unet3d" in r.json()["detail"]


def test_corrupt_image_upload_is_rejected(server, tmp_path, unchanged):
    bad = tmp_path / "corrupt.nii.gz"
    bad.write_bytes(b"\x1f\x8b this is not a gzip stream")
    with open(bad, "rb") as f:
        r = requests.put(f"{server.url}/datastore/image", params={"image": "corrupt"},
                         files={"file": ("corrupt.nii.gz", f)}, timeout=60)
    assert r.status_code == 422
    assert "cannot read the uploaded image" in r.json()["detail"]


def test_non_image_upload_is_rejected(server, tmp_path, unchanged):
    notes = tmp_path / "notes.txt"
    notes.write_text("patient notes, not an image")
    with open(notes, "rb") as f:
        r = requests.put(f"{server.url}/datastore/image", files={"file": ("notes.txt", f)}, timeout=60)
    assert r.status_code == 415


def test_label_with_wrong_size_is_rejected(server, sample_sets, tmp_path, unchanged):
    image = nib.load(server.studies / "subject_000.nii.gz")
    small = nib.Nifti1Image(np.zeros([s - 1 for s in image.shape], np.uint8), image.affine)
    path = tmp_path / "small.nii.gz"
    nib.save(small, path)
    r = put_label(server.url, "subject_000", path)
    assert r.status_code == 422
    assert "differs from the image size" in r.json()["detail"]


def test_label_with_undeclared_values_is_rejected(server, sample_sets, tmp_path, unchanged):
    truth = nib.load(sample_sets["studies"] / "labels" / "subject_000.nii.gz")
    data = np.asarray(truth.dataobj).copy()
    data[data == 2] = 7
    path = tmp_path / "bad_values.nii.gz"
    nib.save(nib.Nifti1Image(data, truth.affine), path)
    r = put_label(server.url, "subject_000", path)
    assert r.status_code == 422
    assert "[7]" in r.json()["detail"]


def test_label_for_unknown_image_is_404(server, sample_sets, unchanged):
    r = put_label(server.url, "ghost", sample_sets["studies"] / "labels" / "subject_000.nii.gz")
    assert r.status_code == 404


def test_label_with_unknown_label_name_is_rejected(server, sample_sets, unchanged):
    r = put_label(server.url, "subject_000", sample_sets["studies"] / "labels" / "subject_000.nii.gz",
                  params={"label_info": [{"name": "grey_matter", "idx": 1}, {"name": "tumour", "idx": 2}]})
    assert r.status_code == 422
    assert "tumour" in r.json()["detail"]
