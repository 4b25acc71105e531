"""DICOM series in the local datastore (listing, zipped uploads, labels) and modality from the tags in planning."""
import json
import zipfile

import nibabel as nib
import numpy as np
import pytest

from medseg.data.dicom_series import ct_like_from_mr, write_series
from medseg.datastore.local import MedSegLocalDatastore
from medseg.errors import MedSegInputError
from medseg.imageio import read_volume
from medseg.pipeline.fingerprint import fingerprint_files
from medseg.pipeline.plan import CaseFingerprint, make_plan, modality_of_cases
from medseg.volume import Volume
from tests.unit.test_dicom import ecg_waveform

LABELS = {"grey_matter": 1, "white_matter": 2}


def mr_volume(shape=(8, 7, 6), seed=0):
    rng = np.random.default_rng(seed)
    affine = np.diag([1.5, 1.2, 2.0, 1.0])
    affine[:3, 3] = [-5.0, 3.0, 7.0]
    return Volume((rng.random(shape) * 800 + 100).astype(np.float32), affine)


def zip_folder(folder, path, skip=()):
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted(folder.iterdir()):
            if f.name not in skip:
                zf.write(f, arcname=f"{folder.name}/{f.name}")  # a sub-folder, as zipping a folder gives
    return path


def make_store(tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    v = mr_volume()
    nib.save(nib.Nifti1Image(v.array, v.affine), str(studies / "nifti_case.nii.gz"))
    write_series(v, studies / "mr_case", modality="MR")
    write_series(ct_like_from_mr(v), studies / "ct_case", modality="CT")
    (studies / "notes").mkdir()  # a folder that is not a series
    (studies / "notes" / "readme.txt").write_text("not DICOM")
    return studies, MedSegLocalDatastore(str(studies), labels=LABELS, auto_reload=False)


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != ".lock")


def test_series_folders_are_listed_beside_nifti_and_read_through_their_uri(tmp_path):
    studies, store = make_store(tmp_path)
    assert sorted(store.list_images()) == ["ct_case", "mr_case", "nifti_case"]
    uri = store.get_image_uri("ct_case")
    assert uri == str((studies / "ct_case").resolve())
    volume = read_volume(uri)
    assert volume.modality == "CT" and volume.shape == (8, 7, 6)
    assert store.get_image_info("mr_case")["format"] == "dicom"


def test_a_final_label_for_a_series_is_stored_as_nifti_on_its_grid(tmp_path):
    studies, store = make_store(tmp_path)
    image = read_volume(store.get_image_uri("mr_case"))
    label = np.zeros(image.shape, np.uint8)
    label[2:5, 2:5, 1:4] = 2
    src = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(label, image.affine), str(src))
    result = store.save_label("mr_case", str(src), "final", {"client_id": "me"})
    assert result == "mr_case"
    stored = store.get_label_uri("mr_case", "final")
    assert stored.endswith("labels/final/mr_case.nii.gz")
    np.testing.assert_array_equal(np.asarray(nib.load(stored).dataobj), label)
    assert store.datalist() == [{"image": str((studies / "mr_case").resolve()), "label": stored}]
    # Off the series grid: refused.
    shifted = image.affine.copy()
    shifted[:3, 3] += 2
    nib.save(nib.Nifti1Image(label, shifted), str(src))
    with pytest.raises(MedSegInputError, match="geometry"):
        store.save_label("mr_case", str(src), "final", {})


def test_a_zipped_series_upload_is_validated_then_stored_whole(tmp_path):
    studies, store = make_store(tmp_path)
    write_series(mr_volume(seed=3), tmp_path / "new_series", modality="MR")
    archive = zip_folder(tmp_path / "new_series", tmp_path / "new_series.zip")
    assert store.add_image("uploaded", str(archive), {"user": "me"}) == "uploaded"
    assert "uploaded" in store.list_images()
    info = store.get_image_info("uploaded")
    assert info["modality"] == "MR" and info["n_slices"] == 6 and info["user"] == "me"
    np.testing.assert_allclose(read_volume(studies / "uploaded").array, read_volume(tmp_path / "new_series").array)
    # A new store over the same folder finds it again.
    again = MedSegLocalDatastore(str(studies), labels=LABELS, auto_reload=False)
    assert "uploaded" in again.list_images()
    assert not [p for p in studies.iterdir() if p.name.startswith((".upload", ".replaced"))]


def test_bad_uploads_store_nothing(tmp_path):
    studies, store = make_store(tmp_path)
    before_files, before_index = files_under(studies), json.dumps(store.json(), sort_keys=True)
    files = write_series(mr_volume(seed=4), tmp_path / "s", modality="CT")

    missing = zip_folder(tmp_path / "s", tmp_path / "missing.zip", skip={files[2].name})
    with pytest.raises(MedSegInputError, match="missing 1 slice"):
        store.add_image("missing", str(missing), {})

    (tmp_path / "ecg").mkdir()
    ecg_waveform(tmp_path / "ecg" / "ecg.dcm")
    with pytest.raises(MedSegInputError, match="ECG"):
        store.add_image("ecg", str(zip_folder(tmp_path / "ecg", tmp_path / "ecg.zip")), {})
    with pytest.raises(MedSegInputError, match="ECG"):
        store.add_image("ecg", str(tmp_path / "ecg" / "ecg.dcm"), {})
    with pytest.raises(MedSegInputError, match="single slice"):
        store.add_image("one", str(files[0]), {})

    not_zip = tmp_path / "fake.zip"
    not_zip.write_bytes(b"PK but not really a zip")
    with pytest.raises(MedSegInputError, match="not a valid .zip"):
        store.add_image("fake", str(not_zip), {})
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(MedSegInputError, match="not a NIfTI file"):
        store.add_image("notes", str(text), {})
    with zipfile.ZipFile(tmp_path / "text.zip", "w") as zf:
        zf.writestr("a.txt", "not DICOM")
        zf.writestr("b.txt", "not DICOM")
    with pytest.raises(MedSegInputError, match="a.txt is not a DICOM file"):
        store.add_image("text", str(tmp_path / "text.zip"), {})
    # Image ids that cannot name a series folder, or that a NIfTI image holds.
    good = zip_folder(tmp_path / "s", tmp_path / "good.zip")
    for bad_id in (".hidden", "labels", "a/b"):
        with pytest.raises(MedSegInputError, match="is not a valid image id"):
            store.add_image(bad_id, str(good), {})
    with pytest.raises(MedSegInputError, match="already used by a NIfTI image") as e:
        store.add_image("nifti_case", str(good), {})
    assert e.value.status_code == 409
    nifti = tmp_path / "mr_case.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(64, dtype=np.float32).reshape(4, 4, 4), np.eye(4)), str(nifti))
    with pytest.raises(MedSegInputError, match="already used by a DICOM series"):
        store.add_image("mr_case", str(nifti), {})

    assert files_under(studies) == before_files
    assert json.dumps(store.json(), sort_keys=True) == before_index


def test_modality_from_dicom_tags_decides_the_normalization(tmp_path):
    cases = [CaseFingerprint("a", [1, 1, 1], [20, 20, 20], [1.0], modality=m) for m in ("CT", "CT", "MR")]
    assert modality_of_cases(cases, "MR") == ("CT", "dicom")
    assert modality_of_cases([CaseFingerprint("n", [1, 1, 1], [20, 20, 20], [1.0])], "MR") == ("MR", "conf")
    tie = [CaseFingerprint("a", [1, 1, 1], [20] * 3, [1.0], modality=m) for m in ("CT", "MR")]
    assert modality_of_cases(tie, "MR") == ("MR", "dicom")

    studies, store = make_store(tmp_path)
    image = read_volume(store.get_image_uri("ct_case"))
    label = (image.array > np.median(image.array)).astype(np.uint8)
    nib.save(nib.Nifti1Image(label, image.affine), str(tmp_path / "l.nii.gz"))
    fingerprints = fingerprint_files([{"image": store.get_image_uri("ct_case"), "label": str(tmp_path / "l.nii.gz")}])
    assert fingerprints[0].modality == "CT"
    plan = make_plan(fingerprints, {"x": 1}, modality="MR", gpu_memory_budget_gb=0.05, base_features=4)
    assert plan.modality == "CT" and plan.normalization == "ct" and plan.modality_source == "dicom"
