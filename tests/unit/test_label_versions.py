"""Label versions on disk: the store itself, and the datastore that keeps every final label."""
import json

import nibabel as nib
import numpy as np
import pytest

from medseg.activelearning.scoring import DiceScoring
from medseg.datastore.local import MedSegLocalDatastore
from medseg.datastore.versions import LabelVersionStore, UnknownVersionError, file_sha256
from medseg.errors import MedSegInputError, UnknownImageError

LABELS = {"grey_matter": 1, "white_matter": 2}
SHAPE = (6, 5, 4)
AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])


def write_nifti(path, array, affine=AFFINE):
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def label_array(fill_value, seed=0):
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 3, SHAPE).astype(np.uint8)
    array[0] = fill_value
    return array


def make_store(tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    write_nifti(studies / "img.nii.gz", np.random.default_rng(1).random(SHAPE).astype(np.float32))
    return MedSegLocalDatastore(str(studies), labels=LABELS, auto_reload=False)


def files_under(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- the store


def test_store_numbers_versions_and_keeps_each_file(tmp_path):
    store = LabelVersionStore(str(tmp_path / "versions"))
    assert store.list("a") == [] and store.latest("a") is None
    contents = [b"first", b"second", b"third"]
    for i, content in enumerate(contents):
        src = tmp_path / f"in{i}.nii.gz"
        src.write_bytes(content)
        entry = store.add("a", str(src), ".nii.gz", {"client_id": f"c{i}", "source": "upload"})
        assert entry["version"] == i + 1
    versions = store.list("a")
    assert [v["version"] for v in versions] == [1, 2, 3]
    assert [v["client_id"] for v in versions] == ["c0", "c1", "c2"]
    assert all(v["time"].endswith("+00:00") and v["ts"] > 0 for v in versions)
    for i, content in enumerate(contents):
        with open(store.path("a", i + 1), "rb") as f:
            assert f.read() == content
        assert store.get("a", i + 1)["sha256"] == file_sha256(store.path("a", i + 1))
    # The index on disk is plain JSON that names every file, and no temporary file is left.
    index = json.loads((tmp_path / "versions" / "a" / "index.json").read_text())
    assert [v["file"] for v in index["versions"]] == ["v1.nii.gz", "v2.nii.gz", "v3.nii.gz"]
    assert sorted(p.name for p in (tmp_path / "versions" / "a").iterdir()) == [
        "index.json", "v1.nii.gz", "v2.nii.gz", "v3.nii.gz"]


def test_store_refuses_unknown_versions_and_path_like_ids(tmp_path):
    store = LabelVersionStore(str(tmp_path / "versions"))
    src = tmp_path / "in.nii.gz"
    src.write_bytes(b"x")
    store.add("a", str(src), ".nii.gz", {})
    with pytest.raises(UnknownVersionError) as e:
        store.path("a", 2)
    assert e.value.status_code == 404
    with pytest.raises(UnknownVersionError):
        store.get("b", 1)
    with pytest.raises(MedSegInputError):
        store.add("../escape", str(src), ".nii.gz", {})
    assert not (tmp_path / "escape").exists()


# ---------------------------------------------------------------- the datastore


def test_every_final_label_is_kept_and_restoring_adds_a_version(tmp_path):
    ds = make_store(tmp_path)
    uploads = [write_nifti(tmp_path / f"up{i}.nii.gz", label_array(i, seed=i)) for i in range(3)]
    for i, path in enumerate(uploads):
        ds.save_label("img", str(path), "final", {"client_id": f"slicer-{i}"})
    versions = ds.label_versions("img")
    assert [(v["version"], v["client_id"], v["source"]) for v in versions] == [
        (1, "slicer-0", "upload"), (2, "slicer-1", "upload"), (3, "slicer-2", "upload")]
    for i, path in enumerate(uploads):
        with open(ds.label_version_path("img", i + 1), "rb") as f:
            assert f.read() == path.read_bytes()
    assert ds.get_label_info("img", "final")["version"] == 3

    result = ds.restore_label_version("img", 1, client_id="reviewer")
    assert result["version"] == 4 and result["restored_from"] == 1
    with open(ds.get_label_uri("img", "final"), "rb") as f:
        assert f.read() == uploads[0].read_bytes()
    latest = ds.label_versions("img")[-1]
    assert (latest["version"], latest["source"], latest["restored_from"]) == (4, "restore", 1)
    assert latest["client_id"] == "reviewer"
    # Restoring lost nothing: version 3 (the label current before the restore) is still there.
    with open(ds.label_version_path("img", 3), "rb") as f:
        assert f.read() == uploads[2].read_bytes()
    assert ds.get_image_info("img")["label_versions"] == ds.label_versions("img")


def test_invalid_label_or_unknown_version_changes_nothing(tmp_path):
    ds = make_store(tmp_path)
    ds.save_label("img", str(write_nifti(tmp_path / "ok.nii.gz", label_array(1))), "final", {})
    before = files_under(tmp_path / "studies")
    wrong_shape = write_nifti(tmp_path / "small.nii.gz", np.zeros((5, 5, 4), np.uint8))
    with pytest.raises(MedSegInputError, match="size"):
        ds.save_label("img", str(wrong_shape), "final", {})
    bad_values = write_nifti(tmp_path / "bad.nii.gz", np.full(SHAPE, 7, np.uint8))
    with pytest.raises(MedSegInputError, match=r"\[7\]"):
        ds.save_label("img", str(bad_values), "final", {})
    with pytest.raises(UnknownVersionError):
        ds.restore_label_version("img", 9)
    with pytest.raises(UnknownImageError):
        ds.restore_label_version("ghost", 1)
    with pytest.raises(UnknownImageError):
        ds.label_versions("ghost")
    with pytest.raises(MedSegInputError, match="reserved"):
        ds.save_label("img", str(tmp_path / "ok.nii.gz"), "versions", {})
    assert files_under(tmp_path / "studies") == before
    assert len(ds.label_versions("img")) == 1


def test_final_label_found_on_disk_is_kept_before_it_is_replaced(tmp_path):
    ds = make_store(tmp_path)
    ds.save_label("img", str(write_nifti(tmp_path / "a.nii.gz", label_array(1, seed=1))), "final", {})
    # Someone replaces the final label by hand (or a crash left it untracked).
    by_hand = write_nifti(tmp_path / "hand.nii.gz", label_array(2, seed=2))
    (tmp_path / "studies" / "labels" / "final" / "img.nii.gz").write_bytes(by_hand.read_bytes())
    ds.save_label("img", str(write_nifti(tmp_path / "b.nii.gz", label_array(0, seed=3))), "final", {})
    versions = ds.label_versions("img")
    assert [v["source"] for v in versions] == ["upload", "found_on_disk", "upload"]
    with open(ds.label_version_path("img", 2), "rb") as f:
        assert f.read() == by_hand.read_bytes()


def test_label_info_names_are_mapped_and_the_mapped_label_is_versioned(tmp_path):
    ds = make_store(tmp_path)
    client = label_array(0) * 5  # client values 0, 5, 10
    path = write_nifti(tmp_path / "named.nii.gz", client)
    ds.save_label("img", str(path), "final",
                  {"label_info": [{"name": "grey_matter", "idx": 5}, {"name": "white_matter", "idx": 10}]})
    stored = np.asarray(nib.load(ds.label_version_path("img", 1)).dataobj)
    assert np.array_equal(stored, client // 5)
    assert np.array_equal(np.asarray(nib.load(ds.get_label_uri("img", "final")).dataobj), stored)


def test_original_model_version_is_recorded_with_each_final_version(tmp_path):
    ds = make_store(tmp_path)
    final = write_nifti(tmp_path / "f.nii.gz", label_array(1))
    ds.save_label("img", str(final), "final", {})
    # What MONAI Label's infer with save_label stores for the model's output.
    ds.save_label("img", str(write_nifti(tmp_path / "o.nii.gz", label_array(2))), "original",
                  {"model": "unet3d", "params": {"model_version": 7}})
    ds.save_label("img", str(final), "final", {})
    first, second = ds.label_versions("img")
    assert (first["original_model"], first["original_model_version"]) == (None, None)
    assert (second["original_model"], second["original_model_version"]) == ("unet3d", 7)
    assert len(ds.label_versions("img")) == 2  # saving an original adds no final version


def test_index_written_by_another_process_is_seen_and_not_overwritten(tmp_path):
    """A scoring subprocess has its own datastore object over the same folder."""
    server = make_store(tmp_path)
    task = MedSegLocalDatastore(str(tmp_path / "studies"), labels=LABELS, auto_reload=False)
    task.update_image_info("img", {"dice": {"mean": 0.5}})
    assert server.json()["objects"]["img"]["image"]["info"]["dice"] == {"mean": 0.5}
    server.save_label("img", str(write_nifti(tmp_path / "f.nii.gz", label_array(1))), "final", {})
    task.update_image_info("img", {"other": 1})
    info = server.get_image_info("img")
    assert info["dice"] == {"mean": 0.5} and info["other"] == 1
    assert server.get_label_info("img", "final")["version"] == 1


def test_dice_scoring_compares_original_with_final_per_label(tmp_path):
    ds = make_store(tmp_path)
    original, final = label_array(1, seed=4), label_array(2, seed=5)
    ds.save_label("img", str(write_nifti(tmp_path / "o.nii.gz", original)), "original",
                  {"model": "unet3d", "params": {"model_version": 3}})
    result = DiceScoring(LABELS)({}, ds)
    assert result == {}  # no final label yet: nothing to compare
    ds.save_label("img", str(write_nifti(tmp_path / "f.nii.gz", final)), "final", {})
    result = DiceScoring(LABELS)({}, ds)
    for name, idx in LABELS.items():
        p, t = original == idx, final == idx
        expected = 2 * np.logical_and(p, t).sum() / (p.sum() + t.sum())
        assert result["img"]["per_label"][name] == pytest.approx(expected)
    assert 0 < result["img"]["mean"] < 1
    info = ds.get_image_info("img")["dice"]
    assert info["per_label"] == result["img"]["per_label"]
    assert (info["final_version"], info["original_model"], info["original_model_version"]) == (1, "unet3d", 3)


@pytest.mark.timeout(120)
def test_reconcile_holds_the_lock_once_and_keeps_label_info(tmp_path):
    """The base class's reconcile reloads and writes in steps; ours nests them in one lock (no deadlock)."""
    ds = make_store(tmp_path)
    ds.save_label("img", str(write_nifti(tmp_path / "f.nii.gz", label_array(1))), "final", {"client_id": "a"})
    ds.refresh()
    assert ds.get_label_info("img", "final")["version"] == 1
    # A label dropped into the folder by hand is picked up by reconcile and kept before it is replaced.
    (tmp_path / "studies" / "labels" / "final" / "img.nii.gz").unlink()
    ds.refresh()
    assert "final" not in ds.get_labels_by_image_id("img")
    by_hand = write_nifti(tmp_path / "studies" / "labels" / "final" / "img.nii.gz", label_array(2, seed=9)).read_bytes()
    ds.refresh()
    assert ds.get_labels_by_image_id("img") == {"final": "img"}
    ds.save_label("img", str(write_nifti(tmp_path / "g.nii.gz", label_array(0, seed=8))), "final", {})
    assert [v["source"] for v in ds.label_versions("img")] == ["upload", "found_on_disk", "upload"]
    with open(ds.label_version_path("img", 2), "rb") as f:
        assert f.read() == by_hand
