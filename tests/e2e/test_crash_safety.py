"""kill -9 inside a final-label save, at every step, then restart: the records agree and leftovers go.

The server kills itself with SIGKILL at a named point (``medseg.crashpoints``) during the
second save; the restarted server must show the first label (the save never answered)
or the second (it was past its point of no return), with the label file, its info and
the version history saying the same thing, and no temporary files left.
"""
from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pytest
import requests

from medseg.crashpoints import ENV, LABEL_SAVE
from tests.conftest import Server, make_studies
from tests.e2e.helpers import put_label

pytestmark = pytest.mark.e2e


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _records(url: str, studies) -> dict:
    info = requests.get(f"{url}/datastore/label/info", params={"label": "subject_000", "tag": "final"},
                        timeout=30).json()
    versions = requests.get(f"{url}/medseg/labels/subject_000/versions", timeout=30).json()["versions"]
    return {"info_version": info.get("version"), "versions": versions,
            "final_sha": _sha(studies / "labels" / "final" / "subject_000.nii.gz")}


@pytest.mark.parametrize("point", LABEL_SAVE)
def test_a_kill_inside_a_label_save_leaves_consistent_records(tmp_path, sample_sets, point):
    studies = make_studies(tmp_path, sample_sets)
    truth = sample_sets["studies"] / "labels" / "subject_000.nii.gz"
    second = tmp_path / "second.nii.gz"
    img = nib.load(truth)
    data = np.asarray(img.dataobj).astype(np.uint8)
    data[data == 2] = 1  # another label, so the two versions differ
    nib.save(nib.Nifti1Image(data, img.affine), second)

    srv = Server(studies, {"models": "unet3d"}, env={ENV: f"{point}:2"}, log_name="crash.log")
    try:
        assert put_label(srv.url, "subject_000", truth).status_code == 200
        first = _records(srv.url, studies)
        with pytest.raises(requests.ConnectionError):
            put_label(srv.url, "subject_000", second)
        srv.proc.wait(30)
        assert srv.proc.returncode == -9
    finally:
        srv.stop()
    # What a kill in the middle of a copy or an upload leaves (the points above fall between writes).
    (studies / "labels" / "final" / ".subject_000.nii.gz.4242.tmp").write_bytes(b"\0" * (5 << 20))
    (studies / ".upload-case-abc").mkdir()
    (studies / ".upload-case-abc" / "slice1.dcm").write_bytes(b"\0" * 1024)

    srv = Server(studies, {"models": "unet3d"}, log_name="restart.log")
    try:
        after = _records(srv.url, studies)
        latest = after["versions"][-1]
        assert after["info_version"] == latest["version"], after
        assert after["final_sha"] == latest["sha256"], after
        assert latest["version"] in (1, 2) and len(after["versions"]) == latest["version"]
        if latest["version"] == 1:
            assert after["final_sha"] == first["final_sha"]
        leftovers = [p for p in studies.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name
                     or p.name == "pending.json"]
        leftovers = [p for p in leftovers if ".medseg" not in p.parts]
        assert not leftovers and not (studies / ".upload-case-abc").exists(), leftovers
        # The next save continues the history: no "found_on_disk" copy of the old label.
        assert put_label(srv.url, "subject_000", truth).status_code == 200
        versions = requests.get(f"{srv.url}/medseg/labels/subject_000/versions", timeout=30).json()["versions"]
        assert versions[-1]["version"] == latest["version"] + 1, versions
        assert "found_on_disk" not in [v["source"] for v in versions]
        index = json.loads((studies / "datastore_v2.json").read_text())
        assert index["objects"]["subject_000"]["labels"]["final"]["info"]["version"] == latest["version"] + 1
    finally:
        srv.stop()
