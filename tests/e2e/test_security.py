"""Hostile input through a real server: ids and tags that look like paths, bombs, bad geometry, bad options.

Every test here reproduces a defect found by attacking the landed server (issue 14); each
must answer 4xx and change nothing: a canary file outside the studies folder, the final
label and its stored versions stay byte-identical.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import threading
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pytest
import requests

from tests.conftest import Server, make_studies
from tests.e2e.helpers import put_label

pytestmark = pytest.mark.e2e

BAD_IDS = ["../canary", "../../canary", "/tmp/medseg-abs", "labels/final/subject_000",
           "labels/versions/subject_000/v1", "sub/dir", "a\\b", "nul\x00byte", "x" * 300, "ünïcødé", "..", ".",
           ".hidden", "labels", ""]
BAD_TAGS = ["../../../x", "/abs/dir", "sub/dir", "a\\b", "nul\x00byte", "t" * 300, "ünïcødé", "..", ".hidden",
            "versions"]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, sample_sets):
    """A server with a final label (two versions) and a canary file beside its studies folder."""
    root = tmp_path_factory.mktemp("security")
    studies = make_studies(root, sample_sets)
    (root / "canary").write_text("canary")
    srv = Server(studies, {"models": "unet3d", "max_upload_mb": "40", "max_image_voxels": str(300 * 300 * 300)})
    truth = sample_sets["studies"] / "labels" / "subject_000.nii.gz"
    for _ in range(2):
        assert put_label(srv.url, "subject_000", truth).status_code == 200
    srv.root = root
    yield srv
    srv.stop()


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))
            if p.is_file() and ".medseg" not in p.parts and p.name != ".lock" and p.suffix != ".log"}


@pytest.fixture
def untouched(guarded):
    """Nothing on disk changes: studies folder (labels, versions, index) and everything beside it."""
    before = _digest(guarded.root)
    yield
    after = _digest(guarded.root)
    assert after == before
    assert (guarded.root / "canary").read_text() == "canary"
    assert not Path("/tmp/medseg-abs").exists()


def _nifti(path: Path, data: np.ndarray, affine=None) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def _put_image(url, image_id, path, params=None, filename=None):
    with open(path, "rb") as f:
        return requests.put(f"{url}/datastore/image", params=None if image_id is None else {"image": image_id},
                            files={"file": (filename or path.name, f)},
                            data={"params": json.dumps(params or {})}, timeout=120)


@pytest.mark.parametrize("bad", BAD_IDS)
def test_path_like_image_ids_are_refused_on_every_route(guarded, untouched, tmp_path, bad):
    url = guarded.url
    image = _nifti(tmp_path / "x.nii.gz", np.random.default_rng(0).random((16, 16, 16), np.float32))
    label = guarded.studies / "labels" / "final" / "subject_000.nii.gz"
    answers = {
        "put image": _put_image(url, bad, image) if bad else None,
        "delete image": requests.delete(f"{url}/datastore/image", params={"id": bad}, timeout=30),
        "get image": requests.get(f"{url}/datastore/image", params={"image": bad}, timeout=30),
        "image info": requests.get(f"{url}/datastore/image/info", params={"image": bad}, timeout=30),
        "put image info": requests.put(f"{url}/datastore/image/info", params={"image": bad},
                                       data={"info": "{}"}, timeout=30),
        "put label": put_label(url, bad, label),
        "delete label": requests.delete(f"{url}/datastore/label", params={"id": bad, "tag": "final"}, timeout=30),
        "get label": requests.get(f"{url}/datastore/label", params={"label": bad, "tag": "final"}, timeout=30),
        "label info": requests.get(f"{url}/datastore/label/info", params={"label": bad, "tag": "final"}, timeout=30),
        "infer": requests.post(f"{url}/infer/unet3d", params={"image": bad}, timeout=60),
        "infer params": requests.post(f"{url}/infer/unet3d", data={"params": json.dumps({"image": bad})}, timeout=60),
        "versions": requests.get(f"{url}/medseg/labels/{requests.utils.quote(bad, safe='')}/versions", timeout=30),
    }
    for route, r in answers.items():
        if r is not None:
            assert 400 <= r.status_code < 500, (route, r.status_code, r.text[:200])


def test_active_learning_still_works_after_the_bad_ids(guarded):
    r = requests.post(f"{guarded.url}/activelearning/random", json={}, timeout=30)
    assert r.status_code == 200 and r.json()["id"]


@pytest.mark.parametrize("bad", BAD_TAGS)
def test_path_like_label_tags_are_refused(guarded, untouched, bad):
    url = guarded.url
    label = guarded.studies / "labels" / "final" / "subject_000.nii.gz"
    assert 400 <= put_label(url, "subject_000", label, tag=bad).status_code < 500
    r = requests.post(f"{url}/infer/unet3d", params={"image": "subject_000"},
                      data={"params": json.dumps({"save_label": True, "label_tag": bad})}, timeout=60)
    assert r.status_code == 422, r.text
    for method, route, params in (("delete", "label", {"id": "subject_000", "tag": bad}),
                                  ("get", "label", {"label": "subject_000", "tag": bad}),
                                  ("get", "label/info", {"label": "subject_000", "tag": bad})):
        r = getattr(requests, method)(f"{url}/datastore/{route}", params=params, timeout=30)
        assert 400 <= r.status_code < 500, (route, r.status_code)


def test_infer_never_writes_the_final_label(guarded, untouched):
    r = requests.post(f"{guarded.url}/infer/unet3d", params={"image": "subject_000"},
                      data={"params": json.dumps({"save_label": True, "label_tag": "final"})}, timeout=60)
    assert r.status_code == 422 and "final" in r.json()["detail"]


def test_infer_reads_only_datastore_images(guarded, untouched):
    """A path answers like any unknown id, whether the file exists or not (no existence oracle)."""
    answers = [requests.post(f"{guarded.url}/infer/unet3d", params={"image": path}, timeout=60)
               for path in ("/etc/passwd", "/no/such/file.nii.gz", str(guarded.studies / "subject_000.nii.gz"))]
    assert {r.status_code for r in answers} == {422}
    assert len({r.json()["detail"].split(" is not")[1] for r in answers}) == 1


@pytest.mark.parametrize("options", [{"tta": "maybe"}, {"device": "nonsense"}, {"no_such_option": 1},
                                     {"save_label": "sometimes"}, {"model": "other"}])
def test_invalid_infer_options_are_refused(guarded, untouched, options):
    r = requests.post(f"{guarded.url}/infer/unet3d", params={"image": "subject_000"},
                      data={"params": json.dumps(options)}, timeout=60)
    assert r.status_code == 422, r.text


@pytest.mark.parametrize("params", ["not json", "[1]", "5", '{"label_info": 5}', '{"label_info": [{"x": 1}]}'])
def test_malformed_params_are_4xx(guarded, untouched, params):
    url = guarded.url
    label = guarded.studies / "labels" / "final" / "subject_000.nii.gz"
    with open(label, "rb") as f:
        r = requests.put(f"{url}/datastore/label", params={"image": "subject_000"},
                         files={"label": ("l.nii.gz", f)}, data={"params": params}, timeout=60)
    assert r.status_code == 422, r.text
    for route, key, query in (("image/info", "info", {"image": "subject_000"}),
                              ("label/info", "info", {"label": "subject_000", "tag": "final"})):
        if params.startswith("{"):
            continue  # a valid object: stored as info, not an error
        r = requests.put(f"{url}/datastore/{route}", params=query, data={key: params}, timeout=30)
        assert r.status_code == 422, (route, r.text)
    if not params.startswith("{"):  # infer takes label_info only to pass it on, as MONAI Label does
        r = requests.post(f"{url}/infer/unet3d", params={"image": "subject_000"}, data={"params": params}, timeout=60)
        assert r.status_code == 422


def test_other_defects_answer_4xx(guarded, untouched):
    url = guarded.url
    assert requests.post(f"{url}/activelearning/no_such_strategy", json={}, timeout=30).status_code == 404
    assert requests.get(f"{url}/logs/gpu", timeout=30).status_code == 404  # no GPU here
    assert requests.post(f"{url}/infer/unet3d", timeout=30).status_code == 422  # no image
    assert requests.put(f"{url}/model/unet3d", files={"file": ("m.pt", b"x")}, timeout=30).status_code == 405
    assert requests.put(f"{url}/session/", files={"files": ("a.zip", b"x")}, timeout=30).status_code == 404


def test_label_upload_errors_name_the_clients_file(guarded, untouched, tmp_path):
    bad = tmp_path / "my_label.txt"
    bad.write_text("not an image")
    with open(bad, "rb") as f:
        r = requests.put(f"{guarded.url}/datastore/label", params={"image": "subject_000"},
                         files={"label": ("my_label.txt", f)}, timeout=30)
    assert r.status_code == 415 and "my_label.txt" in r.json()["detail"] and "tmp" not in r.json()["detail"]


# ---------------------------------------------------------------- geometry and bombs


def _memory_watch(pid: int):
    """Peak RSS growth (bytes) of the server process tree while the block runs."""
    proc = psutil.Process(pid)
    base = proc.memory_info().rss
    peak = {"rss": base, "stop": False}

    def poll():
        while not peak["stop"]:
            try:
                peak["rss"] = max(peak["rss"], proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.02)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    return base, peak, thread


@pytest.mark.parametrize("case", ["nan_affine", "nan_pixdim", "tiny_spacing", "two_voxels", "constant"])
def test_images_that_cannot_be_inferred_are_refused(guarded, untouched, tmp_path, case):
    data = np.random.default_rng(1).random((24, 24, 24)).astype(np.float32)
    affine = np.eye(4)
    if case == "nan_affine":
        affine[0, 3] = np.nan
    elif case == "tiny_spacing":
        affine[:3, :3] *= 1e-9
    elif case == "two_voxels":
        data = data[:2, :2, :2]
    elif case == "constant":
        data[:] = 7
    path = _nifti(tmp_path / f"{case}.nii.gz", data, affine)
    if case == "nan_pixdim":
        img = nib.load(path)
        img.header["pixdim"][1] = np.nan
        img.header.set_sform(None, code=0)
        img.header.set_qform(None, code=0)
        nib.save(nib.Nifti1Image(data, None, img.header), path)
    r = _put_image(guarded.url, case, path)
    assert r.status_code == 422, r.text


def _bomb_header(shape) -> nib.Nifti1Header:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    header["vox_offset"] = 352  # single-file NIfTI: the data right after the header and its 4-byte extension flag
    return header


def _header_bomb(path: Path, shape) -> Path:
    header = _bomb_header(shape)
    path.write_bytes(header.binaryblock + b"\0" * 4)
    return path


def _gzip_bomb(path: Path, shape) -> Path:
    header = _bomb_header(shape)
    zeros = b"\0" * (1 << 24)
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(header.binaryblock + b"\0" * 4)
        left = int(np.prod(shape))
        while left > 0:
            f.write(zeros[:min(left, len(zeros))])
            left -= len(zeros)
    return path


def _zip_bomb(path: Path, n_bytes: int) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("slice0001.dcm", "w", force_zip64=True) as member:
            zeros = b"\0" * (1 << 24)
            for _ in range(n_bytes // len(zeros)):
                member.write(zeros)
    return path


def test_upload_bombs_are_refused_in_bounded_time_and_memory(guarded, untouched, tmp_path):
    bombs = {
        "header": _header_bomb(tmp_path / "header.nii", (1000, 1000, 1000)),  # 10^9 voxels, 352 bytes
        # 2e8 voxels, over this server's 2.7e7 cap: refused from the header.
        "gzip": _gzip_bomb(tmp_path / "gzip.nii.gz", (600, 600, 556)),
        # Under the cap (2.6e7 voxels) but one value everywhere: streamed and refused, never held whole.
        "gzip_under_cap": _gzip_bomb(tmp_path / "gzip2.nii.gz", (296, 296, 296)),
        "zip": _zip_bomb(tmp_path / "series.zip", 1 << 30),  # 1 GiB of zeros in 1 MB
    }
    pid = guarded.proc.pid
    for name, path in bombs.items():
        base, peak, thread = _memory_watch(pid)
        start = time.time()
        r = _put_image(guarded.url, f"bomb_{name}", path)
        seconds = time.time() - start
        peak["stop"] = True
        thread.join()
        growth_mb = (peak["rss"] - base) / 2**20
        print(f"bomb {name}: {path.stat().st_size} bytes -> {r.status_code} in {seconds:.2f} s, "
              f"server memory +{growth_mb:.0f} MB")
        assert r.status_code == 422, (name, r.text)
        assert seconds < 30 and growth_mb < 200, (name, seconds, growth_mb)


def test_upload_over_the_size_limit_is_413(guarded, untouched):
    big = b"\0" * (41 * 2**20)
    r = requests.put(f"{guarded.url}/datastore/image", params={"image": "big"},
                     files={"file": ("big.nii", big)}, timeout=120)
    assert r.status_code == 413 and "max_upload_mb" in r.json()["detail"]


# ---------------------------------------------------------------- replacing an image, training options


def test_upload_over_an_existing_id_needs_replace(guarded, tmp_path):
    url = guarded.url
    image = guarded.studies / "subject_001.nii.gz"
    r = _put_image(url, "subject_001", image)
    assert r.status_code == 409 and "replace" in r.json()["detail"]
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    # A label first, so there is something drawn on the old image.
    old = nib.load(image)
    data = np.asarray(old.dataobj, dtype=np.float32)
    label = _nifti(tmp_path / "label.nii.gz", (data > np.percentile(data, 70)).astype(np.uint8), old.affine)
    assert put_label(url, "subject_001", label).status_code == 200
    new = _nifti(tmp_path / "new.nii.gz", data + 1, old.affine)
    r = _put_image(url, "subject_001", new, params={"replace": True})
    assert r.status_code == 200, r.text
    info = requests.get(f"{url}/datastore/image/info", params={"image": "subject_001"}, timeout=30).json()
    assert info["image_version"] == 2
    kept = guarded.studies / info["previous_images"][0]["file"]
    assert hashlib.sha256(kept.read_bytes()).hexdigest() == before
    label_info = requests.get(f"{url}/datastore/label/info", params={"label": "subject_001", "tag": "final"},
                              timeout=30).json()
    assert label_info["drawn_on_previous_image"] is True and label_info["drawn_on_image_version"] == 1
    train = requests.get(f"{url}/datastore/", params={"output": "train"}, timeout=30).json()
    assert not any("subject_001" in pair["image"] for pair in train)


@pytest.mark.parametrize("options", [{"max_iterations": -1}, {"max_iterations": "abc"}, {"learning_rate": -1},
                                     {"publish": "bogus"}, {"max_iterations": 1e12}, {"batch_size": -1},
                                     {"val_fraction": 5}, {"multi_gpu": True, "world_size": 100000},
                                     {"max_epochs": 1, "max_iterations": 2}, {"no_such_option": 1},
                                     {"augment": "perhaps"}])
def test_invalid_training_options_are_refused_before_submitting(guarded, options):
    r = requests.post(f"{guarded.url}/train/unet3d", json=options, timeout=30)
    assert r.status_code == 422, r.text
    assert requests.post(f"{guarded.url}/train/no_such_model", json={}, timeout=30).status_code == 404


def test_max_epochs_is_honoured_and_stop_is_recorded(guarded):
    """MONAI Label's clients ask for epochs: one epoch is one pass over the training cases."""
    url = guarded.url
    r = requests.post(f"{url}/train/unet3d", json={"max_epochs": 1, "batch_size": 1, "augment": False,
                                                  "model_selection": False, "publish": "always"}, timeout=30)
    assert r.status_code == 200, r.text
    status = guarded.wait_for_training(600)
    assert status["status"] == "DONE", status
    stats = requests.get(f"{url}/info/", timeout=30).json()["train_stats"]["unet3d"]
    # The progress counts epochs as iterations x batch / training cases: exactly one at the end.
    assert stats["iteration"] == stats["max_iterations"] and stats["epoch"] == 1.0, stats
    # A long run, stopped: its progress record says so.
    assert requests.post(f"{url}/train/unet3d", json={"max_iterations": 5000, "batch_size": 1},
                         timeout=30).status_code == 200
    deadline = time.time() + 300
    while time.time() < deadline:
        stats = requests.get(f"{url}/info/", timeout=30).json()["train_stats"]["unet3d"]
        if stats.get("status") == "RUNNING" and stats.get("iteration"):
            break
        time.sleep(1)
    # The training process runs at low priority, the server at normal: infer requests come first.
    server = psutil.Process(guarded.proc.pid)
    tasks = [p for p in server.children(recursive=True) if "monailabel.interfaces.utils.app" in " ".join(p.cmdline())]
    assert tasks and all(p.nice() == server.nice() + 10 for p in tasks), [(p.cmdline()[:4], p.nice()) for p in tasks]
    requests.delete(f"{url}/train/", timeout=60)
    record = json.loads((guarded.studies / ".medseg" / "unet3d" / "train_progress.json").read_text())
    assert record["status"] == "STOPPED"
