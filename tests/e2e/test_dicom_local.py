"""Local DICOM series through a real server: listing, infer (NIfTI and DICOM SEG answers), uploads, labels."""
import io
import zipfile

import nibabel as nib
import numpy as np
import pydicom
import pytest
import requests

from medseg.data.dicom_series import ct_like_from_mr, write_series
from medseg.dicom.seg import read_seg
from medseg.imageio import read_volume
from tests.conftest import Server
from tests.e2e.helpers import datastore_state, dice, infer, put_label
from tests.unit.test_dicom import ecg_waveform

LABELS = {"grey_matter": 1, "white_matter": 2}


@pytest.fixture(scope="module")
def dicom_server(tmp_path_factory, sample_sets):
    """Studies: the held-out subject as an MR-like series, a CT-like series, and the MR series' values as NIfTI."""
    root = tmp_path_factory.mktemp("dicom-server")
    studies = root / "studies"
    studies.mkdir()
    heldout = read_volume(sample_sets["heldout"] / "images" / "heldout_000.nii.gz")
    write_series(heldout, studies / "heldout_mr", modality="MR", patient_id="HELDOUT-0")
    write_series(ct_like_from_mr(heldout), studies / "heldout_ct", modality="CT", patient_id="HELDOUT-0")
    # The same voxel values as the MR series (after its rounding), as NIfTI: infer must give the same label.
    mr = read_volume(studies / "heldout_mr")
    nib.save(nib.Nifti1Image(mr.array, mr.affine), str(studies / "heldout_nifti.nii.gz"))
    # Material for uploads, outside the studies folder.
    write_series(read_volume(sample_sets["studies"] / "images" / "subject_000.nii.gz"), root / "upload_series",
                 modality="MR")
    srv = Server(studies, {"models": "unet3d"})
    srv.root = root
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def mr_label(dicom_server):
    label, params = infer(dicom_server.url, "unet3d", "heldout_mr")
    return np.asarray(label.dataobj), label.affine, params


def zip_bytes(folder, skip=()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for f in sorted(folder.iterdir()):
            if f.name not in skip:
                zf.write(f, arcname=f"{folder.name}/{f.name}")
    return buffer.getvalue()


def put_image(url, image_id, name, content: bytes):
    return requests.put(f"{url}/datastore/image", params={"image": image_id}, files={"file": (name, content)},
                        timeout=120)


def test_series_are_listed_next_to_nifti(dicom_server):
    objects = datastore_state(dicom_server.url)["objects"]
    assert {"heldout_mr", "heldout_ct", "heldout_nifti"} <= set(objects)
    assert objects["heldout_ct"]["image"]["info"]["format"] == "dicom"
    info = requests.get(f"{dicom_server.url}/datastore/image/info", params={"image": "heldout_ct"}, timeout=30).json()
    assert info["path"].endswith("/heldout_ct")


def test_a_series_downloads_as_one_nifti_on_the_grid_the_server_uses(dicom_server, tmp_path):
    # Clients that cannot see the server's disk (Slicer, curl) get the series as the pipeline reads it.
    r = requests.get(f"{dicom_server.url}/datastore/image", params={"image": "heldout_ct"}, timeout=120)
    assert r.status_code == 200, r.text
    (tmp_path / "ct.nii.gz").write_bytes(r.content)
    downloaded, source = read_volume(tmp_path / "ct.nii.gz"), read_volume(dicom_server.studies / "heldout_ct")
    np.testing.assert_allclose(downloaded.affine, source.affine, atol=1e-4)
    np.testing.assert_array_equal(downloaded.array, source.array)
    # NIfTI images still come from MONAI Label's own handler, byte for byte.
    r = requests.get(f"{dicom_server.url}/datastore/image", params={"image": "heldout_nifti"}, timeout=120)
    assert r.content == (dicom_server.studies / "heldout_nifti.nii.gz").read_bytes()
    assert requests.get(f"{dicom_server.url}/datastore/image", params={"image": "nope"}, timeout=30).status_code == 404


def test_infer_on_a_series_gives_the_label_of_the_same_volume_as_nifti(dicom_server, mr_label, sample_sets):
    pred, affine, params = mr_label
    source = read_volume(dicom_server.studies / "heldout_mr")
    assert pred.shape == source.shape
    np.testing.assert_allclose(affine, source.affine, atol=1e-4)
    nifti_label, _ = infer(dicom_server.url, "unet3d", "heldout_nifti")
    np.testing.assert_array_equal(np.asarray(nifti_label.dataobj), pred)
    # And it is a real segmentation: the series has the held-out subject's grid.
    truth = np.asarray(nib.load(sample_sets["heldout"] / "labels" / "heldout_000.nii.gz").dataobj)
    for name, value in LABELS.items():
        assert dice(pred, truth, value) > 0.8, name
    assert params["model"] == "unet3d"


def test_output_dicom_seg_reads_back_into_the_same_label(dicom_server, mr_label):
    pred, _, _ = mr_label
    r = requests.post(f"{dicom_server.url}/infer/unet3d", params={"image": "heldout_mr", "output": "dicom_seg"},
                      timeout=600)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom"
    seg = pydicom.dcmread(io.BytesIO(r.content))
    source = read_volume(dicom_server.studies / "heldout_mr")
    assert seg.Modality == "SEG"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.dicom[0].SeriesInstanceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["grey_matter", "white_matter"]
    np.testing.assert_array_equal(read_seg(seg, source, LABELS), pred)


def test_a_dicom_seg_submitted_as_a_label_is_stored_as_its_label_map(dicom_server, mr_label, tmp_path):
    pred, _, _ = mr_label
    r = requests.post(f"{dicom_server.url}/infer/unet3d", params={"image": "heldout_mr", "output": "dicom_seg"},
                      timeout=600)
    (tmp_path / "seg.dcm").write_bytes(r.content)
    with open(tmp_path / "seg.dcm", "rb") as f:
        r = requests.put(f"{dicom_server.url}/datastore/label", params={"image": "heldout_mr", "tag": "seg_upload"},
                         files={"label": ("seg.dcm", f)}, data={"params": "{}"}, timeout=120)
    assert r.status_code == 200, r.text
    stored = dicom_server.studies / "labels" / "seg_upload" / "heldout_mr.nii.gz"
    np.testing.assert_array_equal(np.asarray(nib.load(stored).dataobj), pred)


def test_output_dicom_seg_on_a_ct_series(dicom_server):
    r = requests.post(f"{dicom_server.url}/infer/unet3d", params={"image": "heldout_ct", "output": "dicom_seg"},
                      timeout=600)
    assert r.status_code == 200, r.text
    seg = pydicom.dcmread(io.BytesIO(r.content))
    source = read_volume(dicom_server.studies / "heldout_ct")
    assert source.modality == "CT"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.dicom[0].SeriesInstanceUID
    assert read_seg(seg, source, LABELS).shape == source.shape


def test_output_dicom_seg_for_a_nifti_image_is_refused_before_inference(dicom_server):
    r = requests.post(f"{dicom_server.url}/infer/unet3d", params={"image": "heldout_nifti", "output": "dicom_seg"},
                      timeout=60)
    assert r.status_code == 422
    assert "not a DICOM series" in r.json()["detail"]
    r = requests.post(f"{dicom_server.url}/infer/unet3d", params={"image": "no_such", "output": "dicom_seg"},
                      timeout=60)
    assert r.status_code == 404


def test_bad_uploads_are_refused_and_change_nothing(dicom_server, tmp_path):
    def snapshot():
        files = sorted(str(p.relative_to(dicom_server.studies)) for p in dicom_server.studies.rglob("*")
                       if p.is_file() and ".medseg" not in p.parts and p.name != ".lock")
        return datastore_state(dicom_server.url), files

    before = snapshot()
    (tmp_path / "ecg").mkdir()
    ecg_waveform(tmp_path / "ecg" / "ecg.dcm")
    r = put_image(dicom_server.url, "ecg", "ecg.zip", zip_bytes(tmp_path / "ecg"))
    assert r.status_code == 422 and "12-lead ECG" in r.json()["detail"], r.text

    series = dicom_server.root / "upload_series"
    middle = sorted(p.name for p in series.iterdir())[10]
    r = put_image(dicom_server.url, "gap", "gap.zip", zip_bytes(series, skip={middle}))
    assert r.status_code == 422 and "missing 1 slice" in r.json()["detail"], r.text

    r = put_image(dicom_server.url, "text", "notes.txt", b"not an image at all")
    assert 400 <= r.status_code < 500, r.text
    r = put_image(dicom_server.url, "slice", "slice.dcm", (series / middle).read_bytes())
    assert r.status_code == 422 and "single slice" in r.json()["detail"], r.text
    assert snapshot() == before


def test_zipped_series_upload_and_a_final_label_for_a_series(dicom_server, mr_label, tmp_path):
    series = dicom_server.root / "upload_series"
    r = put_image(dicom_server.url, "uploaded_mr", "series.zip", zip_bytes(series))
    assert r.status_code == 200, r.text
    objects = datastore_state(dicom_server.url)["objects"]
    assert objects["uploaded_mr"]["image"]["info"]["modality"] == "MR"
    assert (dicom_server.studies / "uploaded_mr").is_dir()

    # A final label for a DICOM image: NIfTI on the series grid, versioned like any other.
    pred, affine, _ = mr_label
    path = tmp_path / "final.nii.gz"
    nib.save(nib.Nifti1Image(pred.astype(np.uint8), affine), str(path))
    r = put_label(dicom_server.url, "heldout_mr", path, params={"client_id": "e2e"})
    assert r.status_code == 200, r.text
    info = requests.get(f"{dicom_server.url}/datastore/label/info", params={"label": "heldout_mr", "tag": "final"},
                        timeout=30).json()
    assert info["version"] == 1
    stored = nib.load(dicom_server.studies / "labels" / "final" / "heldout_mr.nii.gz")
    np.testing.assert_array_equal(np.asarray(stored.dataobj), pred)
    # A label off the series grid is refused.
    nib.save(nib.Nifti1Image(pred[:, :, :-1].astype(np.uint8), affine), str(path))
    assert put_label(dicom_server.url, "heldout_mr", path).status_code == 422
    assert datastore_state(dicom_server.url)["objects"]["heldout_mr"]["labels"]["final"]["info"]["version"] == 1
