"""The server on a real PACS: Orthanc with its DICOMweb plugin as the datastore (``--studies <DICOMweb URL>``).

A CT-like and an MR-like series made from a held-out pseudo-subject by the sample-data
script are pushed into Orthanc (one over Orthanc's REST API, one over STOW-RS), with
an SR document, an ECG and a SEG of another app that must not count as images or
labels. Then: listing, infer (label and DICOM SEG), final labels stored as SEG series
that reference their image, invalid labels refused with nothing stored, and the
labels found again by a restarted server with an empty cache.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import requests

from tests.conftest import Server
from tests.e2e.helpers import gunzip_if_needed, infer, put_label
from tests.e2e.orthanc import INSTALL_HINT, Orthanc, find_orthanc

LABELS = {"grey_matter": 1, "white_matter": 2}
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
CROP_VOX = (72, 80, 60)  # a block of the brain with both tissues: small enough to infer in seconds on a CPU


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    _, _, missing = find_orthanc()
    if missing:
        message = f"Orthanc is not installed (missing {missing}); {INSTALL_HINT}"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"CI must run the PACS tests: {message}")
        # Outside CI a developer machine may lack the Debian packages (or root to install them);
        # CI installs them in .ci/run and fails just above instead of skipping.
        pytest.skip(message)
    with Orthanc(tmp_path_factory.mktemp("orthanc")) as pacs:
        yield pacs


class DicomwebServer(Server):
    """``Server`` over a DICOMweb URL with a work_dir of its own: it holds the datastore's cache, so a
    new one per server proves the labels come from the PACS."""

    def __init__(self, url: str, workdir: Path, conf: dict[str, str]):
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(url, {"work_dir": str(workdir / "work"), **conf}, log_dir=workdir)


def central_crop(volume, size_vox):
    """The middle ``size_vox`` block of a volume, with its affine moved along (inference costs by extent)."""
    from medseg.volume import Volume

    start = [max((n - m) // 2, 0) for n, m in zip(volume.shape, size_vox)]
    block = tuple(slice(a, a + m) for a, m in zip(start, size_vox))
    affine = volume.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ np.asarray(start, dtype=float)
    return Volume(np.ascontiguousarray(volume.array[block]), affine)


def other_document(modality: str, sop_class: str, patient_id: str) -> pydicom.Dataset:
    """A minimal non-image instance (SR document, ECG waveform) in a study of its own."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = patient_id, "MedSeg^Other", modality
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.is_little_endian, ds.is_implicit_VR = True, False
    return ds


@pytest.fixture(scope="module")
def pacs(orthanc, sample_sets, tmp_path_factory):
    """Series in Orthanc: {"mr", "ct"} -> SeriesInstanceUID, their local folders, and the non-image series."""
    from dicomweb_client import DICOMwebClient

    from medseg.data.dicom_series import ct_like_from_mr, write_series
    from medseg.dicom.seg import write_seg
    from medseg.imageio import read_volume

    root = tmp_path_factory.mktemp("pacs-series")
    nifti = sorted((sample_sets["heldout"] / "images").glob("*.nii.gz"))[0]
    volume = central_crop(read_volume(nifti), CROP_VOX)
    mr_files = write_series(volume, root / "mr", modality="MR", patient_id="MEDSEG-MR")
    ct_files = write_series(ct_like_from_mr(volume), root / "ct", modality="CT", patient_id="MEDSEG-CT")
    orthanc.upload(mr_files)  # Orthanc's REST API
    stow = DICOMwebClient(url=orthanc.dicomweb_url)
    stow.store_instances([pydicom.dcmread(str(f)) for f in ct_files])  # STOW-RS, as a modality or viewer would
    uids = {"mr": str(pydicom.dcmread(str(mr_files[0])).SeriesInstanceUID),
            "ct": str(pydicom.dcmread(str(ct_files[0])).SeriesInstanceUID)}
    others = [other_document("SR", "1.2.840.10008.5.1.4.1.1.88.11", "MEDSEG-SR"),
              other_document("ECG", "1.2.840.10008.5.1.4.1.1.9.1.1", "MEDSEG-ECG")]
    # A SEG of another app (a segment MedSeg does not declare) on the CT: neither an image nor a label here.
    ct = read_volume(root / "ct")
    foreign = write_seg((ct.array > 40).astype(np.uint8), ct, {"spleen": 1}, root / "foreign-seg.dcm",
                        series_description="Another app")
    others.append(pydicom.dcmread(str(foreign)))
    stow.store_instances(others)
    return {**uids, "folders": {"mr": root / "mr", "ct": root / "ct"},
            "others": {str(d.SeriesInstanceUID) for d in others}}


@pytest.fixture(scope="module")
def pacs_server(orthanc, pacs, tmp_path_factory):
    srv = DicomwebServer(orthanc.dicomweb_url, tmp_path_factory.mktemp("pacs-server"), {"models": "unet3d"})
    yield srv
    srv.stop()


def seg_series(orthanc, referencing: str | None = None) -> list[pydicom.Dataset]:
    """Every SEG instance in Orthanc (one per series), optionally only those referencing a series."""
    found = []
    for series in orthanc.series_by_modality("SEG"):
        ds = pydicom.dcmread(io.BytesIO(orthanc.instance_file(series)))
        if referencing is None or ds.ReferencedSeriesSequence[0].SeriesInstanceUID == referencing:
            found.append(ds)
    return sorted(found, key=lambda d: (d.ContentDate, d.ContentTime))


def as_array(content: bytes) -> np.ndarray:
    fh = nib.FileHolder(fileobj=io.BytesIO(gunzip_if_needed(content)))
    return np.asarray(nib.Nifti1Image.from_file_map({"header": fh, "image": fh}).dataobj)


def final_label(url: str, image_id: str) -> np.ndarray:
    r = requests.get(f"{url}/datastore/label", params={"label": image_id, "tag": "final"}, timeout=120)
    r.raise_for_status()
    return as_array(r.content)


STATE: dict = {}  # what earlier tests of this module made (tests run in file order)


def test_lists_image_series_only(pacs_server, pacs):
    state = requests.get(f"{pacs_server.url}/datastore/", params={"output": "all"}, timeout=60).json()
    assert set(state["objects"]) == {pacs["mr"], pacs["ct"]}
    assert not set(state["objects"]) & pacs["others"]  # no SR, ECG or SEG
    assert state["objects"][pacs["mr"]]["image"]["info"]["Modality"] == "MR"
    assert state["objects"][pacs["ct"]]["image"]["info"]["Modality"] == "CT"
    stats = requests.get(f"{pacs_server.url}/datastore/", timeout=60).json()
    assert stats["total"] == 2 and stats["completed"] == 0  # the other app's SEG is not a label
    info = requests.get(f"{pacs_server.url}/info/", timeout=60).json()
    assert info["datastore"]["total"] == 2


def test_infer_on_a_pacs_image_is_on_its_grid(pacs_server, pacs):
    from medseg.imageio import read_volume

    image, params = infer(pacs_server.url, "unet3d", pacs["mr"], save_label=True)  # kept as tag original
    source = read_volume(pacs["folders"]["mr"])
    assert image.shape == source.shape
    assert np.allclose(image.affine, source.affine, atol=1e-3)
    values = set(np.unique(np.asarray(image.dataobj)).astype(int))
    assert values <= {0, 1, 2} and {1, 2} <= values
    STATE["mr_prediction"] = np.asarray(image.dataobj).astype(np.uint8)


def test_a_pacs_series_downloads_as_one_nifti_on_its_grid(pacs_server, pacs, tmp_path):
    # What the Slicer extension does when it cannot see the server's disk.
    from medseg.imageio import read_volume

    r = requests.get(f"{pacs_server.url}/datastore/image", params={"image": pacs["mr"]}, timeout=120)
    assert r.status_code == 200, r.text
    (tmp_path / "mr.nii.gz").write_bytes(r.content)
    downloaded, source = read_volume(tmp_path / "mr.nii.gz"), read_volume(pacs["folders"]["mr"])
    assert np.allclose(downloaded.affine, source.affine, atol=1e-4)
    assert np.array_equal(downloaded.array, source.array)


def test_infer_returns_a_dicom_seg(pacs_server, pacs, orthanc):
    from medseg.dicom.seg import read_seg
    from medseg.imageio import read_volume

    r = requests.post(f"{pacs_server.url}/infer/unet3d", params={"image": pacs["mr"], "output": "dicom_seg"},
                      data={"params": json.dumps({})}, timeout=600)
    assert r.status_code == 200, r.text[:500]
    ds = pydicom.dcmread(io.BytesIO(r.content))
    assert ds.SOPClassUID == SEG_STORAGE
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == pacs["mr"]
    assert [s.SegmentLabel for s in ds.SegmentSequence] == list(LABELS)
    if "mr_prediction" in STATE:  # inference is deterministic: the SEG holds the same label map
        assert np.array_equal(read_seg(ds, read_volume(pacs["folders"]["mr"]), LABELS), STATE["mr_prediction"])
    assert len(seg_series(orthanc)) == 1  # infer stores nothing in the PACS (the one SEG is the other app's)


def corrected_label(pacs, tmp_path, name: str, box_value: int) -> tuple[Path, np.ndarray]:
    """The clinician's label for the MR: the prediction (or nothing) with a box painted over."""
    from medseg.imageio import read_volume, write_like

    source = read_volume(pacs["folders"]["mr"])
    label = STATE.get("mr_prediction", np.zeros(source.shape, np.uint8)).copy()
    label[10:30, 20:40, 15:35] = box_value
    path = tmp_path / f"{name}.nii.gz"
    write_like(path, label, source)
    return path, label


def test_final_label_is_stored_as_a_seg_of_the_source_series(pacs_server, pacs, orthanc, tmp_path):
    path, label = corrected_label(pacs, tmp_path, "final1", 2)
    r = put_label(pacs_server.url, pacs["mr"], path, params={"client_id": "annotator-1"})
    assert r.status_code == 200, r.text
    segs = seg_series(orthanc, referencing=pacs["mr"])
    assert len(segs) == 1
    seg = segs[0]
    assert seg.SOPClassUID == SEG_STORAGE
    assert seg.StudyInstanceUID == pydicom.dcmread(str(next(pacs["folders"]["mr"].iterdir()))).StudyInstanceUID
    assert {s.SegmentLabel for s in seg.SegmentSequence} == set(LABELS)
    assert all("RecommendedDisplayCIELabValue" in s for s in seg.SegmentSequence)
    stats = requests.get(f"{pacs_server.url}/datastore/", timeout=60).json()
    assert stats["completed"] == 1 and stats["label_tags"]["final"] == 1
    assert np.array_equal(final_label(pacs_server.url, pacs["mr"]), label)
    info = requests.get(f"{pacs_server.url}/datastore/label/info", params={"label": pacs["mr"], "tag": "final"},
                        timeout=60).json()
    assert info["SeriesInstanceUID"] == seg.SeriesInstanceUID and info["version"] == 1
    STATE["final1"] = label


def test_invalid_labels_are_refused_and_nothing_reaches_the_pacs(pacs_server, pacs, orthanc, tmp_path):
    from medseg.imageio import read_volume, write_like

    source = read_volume(pacs["folders"]["mr"])
    before = {s.SeriesInstanceUID for s in seg_series(orthanc)}

    undeclared = np.zeros(source.shape, np.uint8)
    undeclared[5:9, 5:9, 5:9] = 7
    write_like(tmp_path / "undeclared.nii.gz", undeclared, source)
    r = put_label(pacs_server.url, pacs["mr"], tmp_path / "undeclared.nii.gz")
    assert r.status_code == 422 and "7" in r.text

    cropped = nib.Nifti1Image(np.zeros(np.array(source.shape) - 1, np.uint8), source.affine)
    nib.save(cropped, tmp_path / "cropped.nii.gz")
    r = put_label(pacs_server.url, pacs["mr"], tmp_path / "cropped.nii.gz")
    assert r.status_code == 422 and "size" in r.text

    shifted_affine = source.affine.copy()
    shifted_affine[:3, 3] += 5.0  # right size, 5 mm off
    shifted = nib.Nifti1Image(np.zeros(source.shape, np.uint8), shifted_affine)
    nib.save(shifted, tmp_path / "shifted.nii.gz")
    r = put_label(pacs_server.url, pacs["mr"], tmp_path / "shifted.nii.gz")
    assert r.status_code == 422 and "geometry" in r.text

    (tmp_path / "notes.txt").write_text("not an image")
    r = put_label(pacs_server.url, pacs["mr"], tmp_path / "notes.txt")
    assert r.status_code == 415

    r = put_label(pacs_server.url, "1.2.3.4.5.6.7", tmp_path / "undeclared.nii.gz")
    assert r.status_code == 404

    r = requests.put(f"{pacs_server.url}/datastore/image", params={"image": "x"},
                     files={"file": ("x.nii.gz", (tmp_path / "undeclared.nii.gz").read_bytes())}, timeout=60)
    assert r.status_code == 405  # images come from the PACS

    assert {s.SeriesInstanceUID for s in seg_series(orthanc)} == before
    if "final1" in STATE:
        assert np.array_equal(final_label(pacs_server.url, pacs["mr"]), STATE["final1"])


def test_a_newer_final_label_wins_and_the_older_one_stays(pacs_server, pacs, orthanc, tmp_path):
    path, label = corrected_label(pacs, tmp_path, "final2", 1)
    r = put_label(pacs_server.url, pacs["mr"], path, params={"client_id": "annotator-2"})
    assert r.status_code == 200, r.text
    segs = seg_series(orthanc, referencing=pacs["mr"])
    assert len(segs) == 2  # the first SEG is still in the PACS
    assert np.array_equal(final_label(pacs_server.url, pacs["mr"]), label)
    versions = requests.get(f"{pacs_server.url}/datastore/image/info", params={"image": pacs["mr"]},
                            timeout=60).json()["label_versions"]
    assert [v["SeriesInstanceUID"] for v in versions] == [s.SeriesInstanceUID for s in segs]
    STATE["final2"] = label


def test_dice_scoring_runs_in_a_task_process_on_the_pacs_labels(pacs_server, pacs):
    """Scoring runs in a process of its own, which opens the datastore anew (its settings come from the server)."""
    r = requests.post(f"{pacs_server.url}/scoring/dice", timeout=60)
    assert r.status_code == 200, r.text
    task = pacs_server.wait_for_task("scoring", timeout_s=300)
    assert task["status"] == "DONE", "\n".join(task.get("details", [])[-30:])
    info = requests.get(f"{pacs_server.url}/datastore/image/info", params={"image": pacs["mr"]}, timeout=60).json()
    assert info["dice"]["final_version"] == len(info["label_versions"])  # scored against the newest SEG
    assert set(info["dice"]["per_label"]) == set(LABELS)


def test_a_restarted_server_finds_the_labels_in_the_pacs(pacs_server, pacs, orthanc, tmp_path_factory):
    pacs_server.stop()
    # A new work dir: an empty cache, so everything below comes from Orthanc.
    srv = DicomwebServer(orthanc.dicomweb_url, tmp_path_factory.mktemp("pacs-server-restarted"), {"models": "unet3d"})
    try:
        state = requests.get(f"{srv.url}/datastore/", params={"output": "all"}, timeout=60).json()
        assert set(state["objects"]) == {pacs["mr"], pacs["ct"]}
        assert "final" in state["objects"][pacs["mr"]]["labels"]
        assert "final" not in state["objects"][pacs["ct"]]["labels"]  # the other app's SEG is not a label
        expected = STATE.get("final2", STATE.get("final1"))
        if expected is not None:
            assert np.array_equal(final_label(srv.url, pacs["mr"]), expected)  # voxel for voxel
        first = requests.post(f"{srv.url}/activelearning/first", json={}, timeout=120).json()
        assert first["id"] == pacs["ct"]  # the only image without a final label
    finally:
        srv.stop()


def test_the_browser_client_labels_a_pacs_image(orthanc, pacs, tmp_path_factory):
    """/viewer/ on a DICOMweb datastore: the series opens, a brush stroke is submitted, and Orthanc
    holds it as a SEG whose label is, voxel for voxel, what the page showed."""
    from tests.e2e.test_browser import (ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, idle, label_values, open_page, ready,
                                        require_browser, stroke)

    require_browser()
    from playwright.sync_api import sync_playwright

    srv = DicomwebServer(orthanc.dicomweb_url, tmp_path_factory.mktemp("pacs-viewer"), {"models": "unet3d"})
    segs_before = len(seg_series(orthanc, referencing=pacs["ct"]))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = open_page(browser, srv.url)
            ready(page)
            idle(page)
            page.click(f"#images-table tr[data-image='{pacs['ct']}']")
            idle(page, 300)
            assert page.evaluate("window.medsegViewer.state.grid.dims") == list(CROP_VOX), page.text_content("#error")
            page.fill("#brush-mm", "3")
            page.check("input[name=tool][value=brush]")
            stroke(page, (30, 40, 30), (40, 40, 30))
            shown = label_values(page)
            assert (shown > 0).sum() > 20
            page.click("#submit")
            idle(page, 300)
            assert "Submitted" in page.text_content("#status"), page.text_content("#error")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "pacs-submitted.png"))
            browser.close()
        assert len(seg_series(orthanc, referencing=pacs["ct"])) == segs_before + 1
        assert np.array_equal(final_label(srv.url, pacs["ct"]), shown)
    finally:
        srv.stop()
